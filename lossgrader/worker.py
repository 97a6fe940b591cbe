"""Grading one hand-in: ``grade_handin(task) -> HandinResult``, plain data in and out.

A worker (a thread of the local pool, or a Dask task on another machine) never opens the
gradebook and writes nothing shared: the coordinator gives it the hand-in's bytes and
what was released, and writes what it returns. For each notebook of the hand-in it

1. reads it (a file that is not a notebook fails the hand-in with a reason);
2. normalises it (``lossgrader.normalize``: released metadata, read-only and test cells
   restored) and reads its answer cells for back doors (``lossgrader.backdoors``);
3. starts a kernel in its sandbox (``lossgrader.sandbox``, ``lossgrader.kernel``) whose
   ``lossgrader`` is the student-side runtime alone, in a scratch folder of the sandbox's
   own (a size-capped tmpfs: nothing outside reads or writes it);
4. runs every cell except the test cells there, with outputs capped; a kernel that dies
   is restarted and the cells that ran before are replayed;
5. grades each test cell itself: the judge generates the cases (visible and hidden),
   sends their inputs to the kernel's runtime over the socket the kernel inherited, reads
   back tensors within the bounds of ``lossgrader.channel`` (``torch.load(weights_only=
   True)``, then a bounded schema), compares, diagnoses and scores, and writes the
   cell's outputs (score as text, feedback as HTML); nothing the kernel displays counts.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from html import escape as html_escape
import tempfile
import time

import torch

from . import backdoors, channel, engine, guards, privileges
from .exercises import EXERCISES
from .judge import CaseResult
from .normalize import is_test_cell, normalize
from .results import CaseRecord, HandinResult

DEFAULT_CELL_TIMEOUT = 300
DEFAULT_TIMEOUT = 900            # seconds for one hand-in, all notebooks and restarts included
MAX_NOTEBOOK_BYTES = 64 * 2 ** 20      # a hand-in's notebook file; larger is refused before parsing
MAX_RESTARTS = 8
MAX_OUTPUT_FACTOR = 8       # outputs kept for a whole notebook: this many cells' worth (Limits.max_output_bytes)
CHECK_CALL = re.compile(r"""\bcheck\(\s*["']([A-Za-z0-9_]+)["']\s*,\s*([A-Za-z_][A-Za-z0-9_]*)""")
RUNTIME_FILES = ("runtime.py", "guards.py", "zygote.py")
SANDBOX_INIT = '''"""lossgrader inside the grading sandbox: the student-side runtime only.

The references, the exercise registry and the expected values are not here: the
autograder grades the test cells from outside this kernel.
"""
from . import runtime


def check(*args, **kwargs):
    """Visible checks do not run while a hand-in is autograded."""
    return None
'''
KERNEL_DIED_MESSAGE = (
    "评分时内核在执行这个单元时退出或失去响应（例如调用了 os._exit()、exit()、进程崩溃、超出内存限制，"
    "或者一个无法中断的死循环）。本单元记 0 分；评分器重启了内核，重新运行了前面的单元，并继续评分后面的单元。")
TIMEOUT_MESSAGE = "这个单元的运行时间超过了限制（{seconds:g} 秒），已被中断。"


class HandinTimeout(Exception):
    """The whole hand-in ran past its time limit."""


def _error_output(ename: str, evalue: str):
    from nbformat.v4 import new_output
    return new_output("error", ename=ename, evalue=evalue, traceback=[f"{ename}: {evalue}"])


def read_notebook(name: str, text):
    """(notebook, None) or (None, reason) for a hand-in's file content."""
    import nbformat

    if text is None:
        return None, f"{name} was not submitted"
    if len(text) > MAX_NOTEBOOK_BYTES:
        return None, f"{name} is larger than {MAX_NOTEBOOK_BYTES // 2 ** 20} MiB ({len(text) / 2 ** 20:.0f} MiB)"
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            return None, f"{name} is not UTF-8 text"
    try:
        json.loads(text)
    except ValueError as exc:
        return None, f"{name} is not valid JSON ({exc})"
    try:
        nb = nbformat.reads(text, as_version=4)
    except Exception as exc:
        return None, f"{name} is not a Jupyter notebook ({exc.__class__.__name__}: {str(exc)[:120]})"
    if not isinstance(nb.get("cells"), list):
        return None, f"{name} has no list of cells"
    return nb, None


def runtime_package(parent: str) -> str:
    """A folder holding the sandbox's ``lossgrader`` package (runtime and guards only),
    readable by the sandbox's user whoever created it (lossgrader.privileges)."""
    os.chmod(parent, 0o755)
    root = os.path.join(parent, "runtime")
    pkg = os.path.join(root, "lossgrader")
    os.makedirs(pkg)
    here = os.path.dirname(os.path.abspath(__file__))
    for name in RUNTIME_FILES:
        shutil.copyfile(os.path.join(here, name), os.path.join(pkg, name))
    with open(os.path.join(pkg, "__init__.py"), "w", encoding="utf-8") as fh:
        fh.write(SANDBOX_INIT)
    return root


def sandbox_settings(task, scratch, runtime_root) -> dict:
    """The keyword arguments of the hand-in's Sandbox (lossgrader.sandbox.Sandbox)."""
    from .sandbox import Limits, gpu_devices

    device = torch.device(task.get("device") or "cpu")
    genuine = os.path.dirname(os.path.abspath(__file__))
    hide = tuple(sorted(p for p in {*task.get("hide", ()), genuine} if p and os.path.exists(p)))
    env = {"PYTHONPATH": runtime_root, "LOSSGRADER_DEVICE": str(device), "MPLBACKEND": "agg",
           "HOME": scratch, "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}
    return {"limits": Limits(**task.get("limits", {})), "extra_ro": (runtime_root,), "hide": hide, "env": env,
            "devices": tuple(gpu_devices()) if device.type == "cuda" else (), "private_scratch": True}


def _warm_sandbox(task, log):
    """This thread's warm sandbox for the task's settings (lossgrader.warm), or None:
    with --no-sandbox, where bwrap is missing, or where one cannot start."""
    from . import warm
    from .sandbox import bwrap_problem

    if not task.get("sandbox", True) or task.get("warm") is False or bwrap_problem() is not None:
        return None
    # the settings but for the folder, which is the warm sandbox's own
    probe = sandbox_settings(task, "<scratch>", "<runtime>")
    key = json.dumps({**probe, "limits": vars(probe["limits"])}, sort_keys=True, default=str)

    def factory():
        folder = warm.new_folder()
        try:
            root = runtime_package(folder)
            settings = sandbox_settings(task, os.path.join(folder, "handin"), root)
            return warm.WarmSandbox(key, folder, root, settings["limits"], hide=settings["hide"],
                                    env=settings["env"], devices=settings["devices"])
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
    got = warm.acquire(key, factory)
    if got is None:
        log.append(f"no warm sandbox, graded in a fresh one: {warm.unavailable(key)}")
    return got


class _Handin:
    """State of one notebook being graded."""

    def __init__(self, task, scratch, ipc, runtime_root, log, warm=None):
        from .sandbox import Sandbox

        self.task, self.log = task, log
        self.device = torch.device(task.get("device") or "cpu")
        self.cell_timeout = float(task.get("cell_timeout") or DEFAULT_CELL_TIMEOUT)
        self.deadline = task["deadline"]
        settings = sandbox_settings(task, scratch, runtime_root)
        self.output_cap = settings["limits"].max_output_bytes

        def make_sandbox():
            return Sandbox(scratch, enabled=bool(task.get("sandbox", True)), **settings)
        from .kernel import KernelSession
        self.kernel = KernelSession(make_sandbox, ipc, self.output_cap, warm=warm,
                                    output_budget=MAX_OUTPUT_FACTOR * self.output_cap)
        self.done = []          # code cells that ran to completion, replayed after a restart
        self.requests = 0
        self.timings = {}       # phase -> seconds: where a hand-in's time goes

    def timed(self, phase, fn, *args):
        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.timings[phase] = round(self.timings.get(phase, 0.0) + time.perf_counter() - t0, 3)

    def start(self):
        self.timed("kernel start", self.kernel.start)

    def seconds_left(self, wanted: float) -> float:
        """``wanted`` seconds, or what is left of the hand-in's time (HandinTimeout when none)."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise HandinTimeout()
        return min(wanted, left)

    # ------------------------------------------------------------------ kernel
    def restart(self):
        self.kernel.shutdown()
        self.start()
        for index, source in list(self.done):
            status, _, _ = self.kernel.execute(source, self.seconds_left(self.cell_timeout))
            if status == "dead":
                self.seconds_left(0)
                self.done.remove((index, source))
                self.log.append(f"cell {index} kills the kernel when replayed: left out")
                return self.restart()

    def run_cell(self, index, cell):
        source = cell.get("source", "")
        source = "".join(source) if isinstance(source, list) else str(source)
        status, outputs, count = self.kernel.execute(source, self.seconds_left(self.cell_timeout))
        cell["execution_count"] = count
        if status in ("dead", "timeout"):
            self.seconds_left(0)          # the hand-in's own limit ran out: not the cell's fault alone
        if status == "dead":
            outputs.append(_error_output("DeadKernelError", KERNEL_DIED_MESSAGE))
            cell["outputs"] = outputs
            self.log.append(f"kernel died in cell {index}")
            self._restart_or_fail()
            return
        if status == "timeout":
            outputs.append(_error_output("CellTimeoutError", TIMEOUT_MESSAGE.format(seconds=self.cell_timeout)))
        cell["outputs"] = outputs
        if status in ("ok", "error"):
            self.done.append((index, source))

    def _restart_or_fail(self):
        if self.kernel.starts > MAX_RESTARTS:
            raise RuntimeError(f"the kernel died more than {MAX_RESTARTS} times")
        self.restart()

    # ------------------------------------------------------------------ runtime round trip
    def ask(self, request: dict, func_name: str, seconds: float):
        """Send ``request`` to the runtime in the kernel; the response dict (checked and
        copied by lossgrader.channel), or None when the kernel gave none it could read
        (it died, hung, or sent something malformed or out of bounds)."""
        self.requests += 1
        seconds = self.seconds_left(seconds)
        exchange = channel.Exchange(self.kernel.wire, channel.encode(request), time.monotonic() + seconds)
        code = (f"__import__('lossgrader.runtime').runtime.serve("
                f"globals().get({func_name!r}), {func_name!r} in globals())")
        status, _, _ = self.timed("student code in tests", self.kernel.execute, code, seconds, True)
        data, why = exchange.result(2.0 if status in ("ok", "error") else 0.0)
        if status in ("dead", "timeout"):
            self.seconds_left(0)
            self.log.append(f"runtime request {self.requests} ({func_name}): kernel {status}")
            if status == "dead" or not self.kernel.alive():
                self._restart_or_fail()
            return None
        if data is None:
            self.log.append(f"runtime request {self.requests} ({func_name}): {why}")
            return None
        response, why = channel.load(data, request)
        if why:
            self.log.append(f"runtime request {self.requests} ({func_name}): response refused: {why}")
        return response if isinstance(response, dict) else None

    # ------------------------------------------------------------------ judging a test cell
    def grade_test_cell(self, cell, points: float, findings):
        """(score, outputs, CaseRecords) of one test cell.

        ``findings``: the hand-in's back-door scan (a ``backdoors.Scan``, or a list of attack
        findings). An attack zeroes the cell. Where the signals cannot decide (a review
        finding this cell's function can reach, or a gap in the runtime's observation) and
        the judge gave marks, the cell is flagged for a person: its score is 0.0,
        ``cell.metadata["lossgrader"]["review"]`` = {"reason": English, "auto_score": the
        judge's score}, and its feedback starts with a Chinese note showing that score."""
        from nbformat.v4 import new_output

        from . import judge

        meta = cell["metadata"]["nbgrader"]
        match = CHECK_CALL.search(cell["source"])
        started = time.perf_counter()
        if match is None or match.group(1) not in EXERCISES:
            self.log.append(f"test cell {meta['grade_id']}: no check() of a known exercise; not autograded")
            return None, [], []
        ex = EXERCISES[match.group(1)]
        func_name = match.group(2)
        cases, expectations = ex.cases(None, hidden=True)
        scan = findings if isinstance(findings, backdoors.Scan) else None
        attacks = scan.attacks if scan is not None else list(findings or ())
        reasons_en, reasons_zh = [], []
        if attacks:
            text = "；".join(f.message() for f in attacks[:5])
            message = (f"评分时发现你的代码使用了不允许的接口：{text}。损失函数的实现用不到它们，"
                       "而它们可以绕过评分规则，因此本笔记本的所有测试记 0 分。")
            results = [CaseResult(c.name, c.describe_inputs(), "forbidden", message) for c in cases[:1]]
            results += [CaseResult(c.name, c.describe_inputs(), "skipped", "使用了不允许的接口。") for c in cases[1:]]
            report = engine.report_for(ex, results, guards.Captured(), self.device, points, True, started)
        else:
            report, gaps = self._judge(ex, func_name, cases, expectations, points, started)
            if report.score > 0 and not any(r.status == "forbidden" for r in report.results):
                touching = scan.touching(func_name) if scan is not None else []
                reasons_en = [f.reason() for f in touching[:10]] + [judge.GAP_REASONS[g] for g in gaps]
                reasons_zh = [f.message() for f in touching[:10]] + [judge.GAP_ZH[g] for g in gaps]
                # the answer's source names what the exercise forbids, the process reported no call
                for rule, path in _named_forbidden(ex, scan, func_name):
                    reasons_en.append(f"the answer names {path}, which {ex.id} forbids ({rule.name}), "
                                      "but its process reported no call to it")
                    reasons_zh.append(f"你的代码里写了 <code>{html_escape(path)}</code>（本练习不允许调用 "
                                      f"{html_escape(rule.name)}），但评分时没有观察到对它的调用")
        score, html = report.score, report._repr_html_()
        if reasons_en:
            review = {"reason": ("; ".join(reasons_en))[:2000], "auto_score": float(report.score)}
            cell.setdefault("metadata", {}).setdefault("lossgrader", {})["review"] = review
            self.log.append(f"test cell {meta['grade_id']} flagged for manual grading "
                            f"(automatic score {report.score:g}): {review['reason']}")
            score, html = 0.0, judge.review_note(reasons_zh, report.score, points) + html
        outputs = [new_output("execute_result", data={"text/plain": repr(float(score)), "text/html": html},
                              execution_count=cell.get("execution_count"))]
        records = [CaseRecord(meta["grade_id"], ex.id, r.name, r.status, r.message, r.hint) for r in report.results]
        return score, outputs, records

    def _judge(self, ex, func_name, cases, expectations, points, started):
        """(Report, the runtime's observation gaps: judge.observation_gaps)."""
        from . import judge

        request = ex.request(cases, self.device, hidden=True)
        response = self.ask(request, func_name, request["time_limit"] + 30.0)
        problem = _validate_described(ex, func_name, response.get("solution")) if response else None
        if problem is not None:
            results = [CaseResult("提交的对象", "", "notimpl", problem)]
            return engine.report_for(ex, results, guards.Captured(), self.device, points, True, started), []
        if response is None:
            message = ("评分时没有得到你的代码的运行结果：内核在运行这个练习时退出、超时或没有写出结果"
                       "（例如死循环、超出内存限制、调用了 os._exit()）。")
            results = [CaseResult(c.name, c.describe_inputs(), "error", message) for c in cases]
            return engine.report_for(ex, results, guards.Captured(), self.device, points, True, started), []
        captured = _captured(response.get("captured"))
        responses = response.get("cases") if isinstance(response.get("cases"), list) else []

        def probe(point_requests, seconds):
            answer = self.ask({"kind": "probe", "points": point_requests, "device": str(self.device),
                               "time_limit": seconds}, func_name, seconds + 30.0)
            ys = answer.get("ys") if answer else None
            return [float(y) for y in ys] if isinstance(ys, list) and all(isinstance(y, float) for y in ys) else []
        report = engine.grade(ex, cases, expectations, responses, captured, self.device, points, True, started, probe)
        return report, judge.observation_gaps(responses)


def _named_forbidden(ex, scan, func_name) -> list:
    """(rule, path) for each library path the code reachable from ``func_name`` names that a
    forbidden rule of ``ex`` covers (read outside the sandbox, before the code ran)."""
    if scan is None:
        return []
    paths = sorted(scan.library_paths(func_name))
    return [(rule, path) for rule in getattr(ex, "forbidden", ()) for path in paths if rule.named_by(path)][:5]


def _validate_described(ex, func_name, described):
    if not isinstance(described, dict):
        return "评分时无法读取你定义的对象。"
    if not described.get("defined"):
        return (f"尚未实现：没有找到 {func_name}（答案单元是否运行出错、被删除，或者改了名字？）。")
    if described.get("none"):
        return "尚未实现：传给 check 的是 None。"
    if ex.kind == "module":
        if not described.get("module_class"):
            return f"传给 check 的应是继承自 nn.Module 的类 {ex.func_name}（类本身，而不是实例或函数）。"
    elif not described.get("callable"):
        return f"传给 check 的应是函数 {ex.func_name}，而不是 {described.get('typename', '?')}。"
    return None


def _captured(data) -> guards.Captured:
    captured = guards.Captured()
    if isinstance(data, dict):
        captured.stdout = data.get("stdout") if isinstance(data.get("stdout"), str) else ""
        captured.stderr = data.get("stderr") if isinstance(data.get("stderr"), str) else ""
        warns = data.get("warnings")
        captured.warnings = [w for w in warns if isinstance(w, str)] if isinstance(warns, list) else []
    return captured


def _report_output(report, count):
    from nbformat.v4 import new_output
    return new_output("execute_result", data={"text/plain": repr(float(report.score)),
                                              "text/html": report._repr_html_()},
                      execution_count=count)


def _student_cell(cell) -> bool:
    meta = cell.get("metadata", {}).get("nbgrader")
    return not (isinstance(meta, dict) and (meta.get("locked") or is_test_cell(meta)))


def grade_notebook(handin: _Handin, nb, points: dict, result: HandinResult) -> None:
    # every code cell but the test cells, read-only ones too where their source is not the released one
    released_cells = [c for r in (handin.task.get("released") or {}).values() if isinstance(r, dict)
                      for c in r.get("cells", ())]
    scan = backdoors.scan_handin(nb, released_cells, is_test_cell)
    for f in scan.attacks:
        handin.log.append(f"back door in cell {f.cell + 1} line {f.line}: {f.what}")
    for f in scan.reviews:
        handin.log.append(f"for a person (flags the test cells it touches): {f.reason()}")
    handin.start()
    # before any cell of the hand-in: the kernel's own threads are noted, every later one is followed
    # (lossgrader.guards.kernel_started); replayed first after a restart
    kernel_started = "__import__('lossgrader.runtime'); __import__('lossgrader.guards').guards.kernel_started()"
    handin.kernel.execute(kernel_started, handin.seconds_left(handin.cell_timeout), True)
    handin.done.insert(0, (-1, kernel_started))
    for index, cell in enumerate(nb.cells):
        if cell.get("cell_type") != "code":
            continue
        meta = cell.get("metadata", {}).get("nbgrader") or {}
        if is_test_cell(meta):
            score, outputs, records = handin.timed("test cells", handin.grade_test_cell, cell,
                                                   points.get(meta["grade_id"], 0.0), scan)
            cell["outputs"] = outputs
            if score is not None:
                result.scores[meta["grade_id"]] = score
            review = cell.get("metadata", {}).get("lossgrader", {}).get("review")
            if score is not None and isinstance(review, dict):
                result.review[meta["grade_id"]] = dict(review)
            result.cases.extend(records)
        else:
            handin.timed("answer cells", handin.run_cell, index, cell)
    for phase, seconds in handin.timings.items():
        result.timings[phase] = round(result.timings.get(phase, 0.0) + seconds, 3)


def grade_handin(task: dict) -> HandinResult:
    """Grade one hand-in; never raises (a failure is a result with status "failed").

    ``task``: student, assignment, notebooks {name: file text or None}, released {name:
    released notebook (see lossgrader.gradebook.released)}, and options: sandbox (bool),
    limits (lossgrader.sandbox.Limits fields), cell_timeout, timeout, device, hide (paths
    the sandbox must not show: the course folder).

    Run as root, the thread's own file operations run as an unprivileged user meanwhile
    (lossgrader.privileges): only starting sandboxes keeps root."""
    with privileges.dropped():
        return _grade_handin(task)


def _grade_handin(task: dict) -> HandinResult:
    import nbformat

    started = time.monotonic()
    limit = float(task.get("timeout") or DEFAULT_TIMEOUT)
    task = {**task, "deadline": started + limit}
    student, assignment = task["student"], task["assignment"]
    released = task["released"]
    max_scores = {c["name"]: float(c["points"]) for nb in released.values() for c in nb["cells"]
                  if c["kind"] in ("grade", "grade+solution") and c.get("points") is not None}
    result = HandinResult(student, assignment, max_scores=max_scores)
    log = []
    warm = parent = None
    try:
        warm = _warm_sandbox(task, log)
        if warm is not None:
            scratch, ipc, runtime_root = warm.scratch, warm.ipc, warm.runtime_root
        else:
            parent = tempfile.mkdtemp(prefix="lossgrader-")
            scratch, ipc = os.path.join(parent, "handin"), os.path.join(parent, "ipc")
            os.makedirs(scratch)        # only used as such with --no-sandbox (else a tmpfs inside)
            os.makedirs(ipc, mode=0o700)
            runtime_root = runtime_package(parent)
        for name in sorted(released):
            nb, reason = read_notebook(name, task["notebooks"].get(name))
            if reason:
                return HandinResult.failure(student, assignment, reason, max_scores, log="\n".join(log))
            log += normalize(nb, released[name])
            handin = _Handin(task, scratch, ipc, runtime_root, log, warm=warm if warm and not warm.broken else None)
            try:
                grade_notebook(handin, nb, max_scores, result)
            except HandinTimeout:
                return HandinResult.failure(student, assignment,
                                            f"time limit exceeded ({limit:.0f} s for the whole hand-in); "
                                            "its sandbox and kernel were killed", max_scores, log="\n".join(log))
            finally:
                handin.kernel.shutdown()
            result.notebooks[name] = nbformat.writes(nb)
        for gid in max_scores:
            if gid not in result.scores and _is_autograded(released, gid):
                result.scores[gid] = 0.0
        result.timings["total"] = round(time.monotonic() - started, 3)
        result.log = "\n".join(log)
        return result
    except Exception as exc:  # the grader's own failure: an explicit 0 with the reason, the batch goes on
        return HandinResult.failure(student, assignment, f"grading failed: {exc.__class__.__name__}: {exc}"[:300],
                                    max_scores, log="\n".join(log))
    finally:
        if warm is not None:
            from .warm import release
            release(warm)      # every process of the hand-in killed, every writable folder emptied
        if parent is not None:
            shutil.rmtree(parent, ignore_errors=True)


def _is_autograded(released, grade_id) -> bool:
    for nb in released.values():
        for c in nb["cells"]:
            if c["name"] == grade_id:
                return c["kind"] == "grade" and c["cell_type"] == "code"
    return False
