"""``lossgrader autograde``: the coordinator of a grading batch.

The coordinator is the only process that opens the gradebook or writes course files:

1. it refuses to start when the sandbox cannot run (unless told ``--no-sandbox``) or the
   gradebook is unreadable (never overwriting it), registers the assignments and backs
   the gradebook up (``.lossgrader/backups/``);
2. it builds one task per hand-in, plain data (the hand-in's bytes, what was released,
   the options), and hands the tasks to an executor (``lossgrader.executors``: the local
   pool, ``-j N`` threads each driving one sandboxed kernel at a time, or a Dask cluster);
3. for each result, as it arrives: a hand-in whose grading failed for the grader's own
   reasons (including a worker that died, or a task that gave no result within the
   hand-in's limit plus a margin) is graded once more, then recorded as 0 with its
   reason; the result is written
   in one gradebook transaction, its autograded notebook into ``autograded/`` and its
   status into ``lossgrader-status.json``.
"""
from __future__ import annotations

import datetime
import os
import shutil
import sys
import time

from . import course, executors, gradebook
from .results import HandinResult
from .worker import DEFAULT_TIMEOUT

RETRIED = ("grading failed:",)   # reasons that are the grader's fault: worth a second try
UNSAFE_WARNING = ("WARNING: --no-sandbox: student code runs with YOUR permissions, unconfined: it can read, "
                  "change or delete any file you can (the gradebook, other hand-ins, the grader) and use "
                  "the network. Use it only for hand-ins you trust.\n")


class SandboxUnavailable(SystemExit):
    pass


def require_sandbox() -> None:
    from .sandbox import bwrap_problem

    problem = bwrap_problem()
    if problem:
        raise SandboxUnavailable(
            f"lossgrader autograde: cannot sandbox student code here: {problem}\n"
            "Install bubblewrap (Debian/Ubuntu: sudo apt-get install bubblewrap) and make sure "
            "unprivileged user namespaces are enabled, or pass --no-sandbox to grade without "
            "a sandbox (UNSAFE: only for hand-ins you trust).")


def _read_handin(root, student, aid, names):
    """{notebook name: file bytes or None} of one hand-in (read by the coordinator)."""
    files = {}
    for name in names:
        path = os.path.join(root, "submitted", student, aid, name + ".ipynb")
        try:
            with open(path, "rb") as fh:
                files[name] = fh.read()
        except OSError:
            files[name] = None
    return files


def make_task(root, student, aid, released, options) -> dict:
    notebooks = released["notebooks"]
    return {"student": student, "assignment": aid, "released": notebooks,
            "notebooks": _read_handin(root, student, aid, sorted(notebooks)), **options}


def _write_autograded(root, result: HandinResult) -> None:
    """autograded/<student>/<assignment>/: the graded notebooks, or nothing for a failure."""
    dest = os.path.join(root, "autograded", result.student, result.assignment)
    if os.path.isdir(dest):
        shutil.rmtree(dest)
    if result.status != "graded":
        return
    os.makedirs(dest)
    for name, text in result.notebooks.items():
        tmp = os.path.join(dest, f".{name}.ipynb.tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, os.path.join(dest, name + ".ipynb"))
    stamp = os.path.join(root, "submitted", result.student, result.assignment, "timestamp.txt")
    if os.path.isfile(stamp):
        shutil.copyfile(stamp, os.path.join(dest, "timestamp.txt"))


class Progress:
    """Done, failed and remaining hand-ins with an ETA (tqdm on a terminal, one plain line
    per hand-in otherwise, nothing with quiet)."""

    def __init__(self, total, stream=None, quiet=False):
        self.stream = stream or sys.stderr
        self.total, self.done, self.failed, self.quiet = total, 0, 0, quiet
        self.bar = None
        if not quiet and getattr(self.stream, "isatty", lambda: False)():
            from tqdm import tqdm
            self.bar = tqdm(total=total, file=self.stream, unit="份", dynamic_ncols=True, desc="autograde")

    def step(self, result: HandinResult, seconds: float):
        self.done += 1
        self.failed += result.status != "graded"
        if self.quiet:
            return
        text = f"{result.student}/{result.assignment} {result.score:g}/{result.max_score:g} {seconds:.1f}s"
        if result.status != "graded":
            text += " FAILED: " + result.reason[:100]
        if self.bar is not None:
            self.bar.set_postfix_str(f"failed {self.failed}, last {text}"[:120])
            self.bar.update(1)
        else:
            self.stream.write(f"autograde [{self.done}/{self.total}, failed {self.failed}] {text}\n")
            self.stream.flush()

    def close(self):
        if self.bar is not None:
            self.bar.close()


def autograde(root, only_assignments=None, only_students=None, cell_timeout=None,
              submission_timeout=DEFAULT_TIMEOUT, progress=True, stream=None, jobs=1,
              sandbox=True, limits=None, device=None, quiet=False, dask=None, hang_margin=None):
    """Grade every hand-in in submitted/ (or the selected ones); returns {(student, aid): status entry}.

    ``jobs``: threads of the local pool; ``dask``: grade on Dask instead (``local[:N]``,
    ``tcp://HOST:PORT`` or a scheduler file, see lossgrader.executors); ``hang_margin``:
    seconds past ``submission_timeout`` before a task that gave no result is abandoned."""
    import torch

    stream = stream or sys.stderr
    if sandbox:
        require_sandbox()
    else:
        stream.write(UNSAFE_WARNING)
    url = gradebook.db_url(root)
    gradebook.check_readable(url)
    pairs = course.submissions(root, only_assignments, only_students)
    aids = sorted({a for _, a in pairs})
    gradebook.register(root, aids)
    if pairs:
        gradebook.backup(root)
    released = {aid: gradebook.released(root, aid) for aid in aids}
    options = {"sandbox": bool(sandbox), "limits": dict(limits or {}), "timeout": float(submission_timeout),
               "cell_timeout": cell_timeout or course.cell_timeout(root),
               "device": str(device or os.environ.get("LOSSGRADER_DEVICE") or "cpu"),
               "hide": [os.path.abspath(root)]}
    torch.set_num_threads(1)
    status = course.read_status(root)
    executor = executors.open_executor(dask, jobs=min(jobs, len(pairs) or 1), sandbox=sandbox)
    bar = Progress(len(pairs), stream, quiet=quiet or not progress)
    results = {}

    def failure(student, aid, reason, attempts):
        return HandinResult.failure(student, aid, reason[:300], _max_scores(released[aid]), attempts=attempts)

    limit = float(submission_timeout) + (executors.HANG_MARGIN if hang_margin is None else float(hang_margin))
    queue = list(pairs)
    in_flight = {}   # executor handle -> {"pair", "task", "attempt", "t0", "unstarted"}

    def submit(pair, task=None, attempt=1, t0=None, unstarted=0):
        task = task or make_task(root, pair[0], pair[1], released[pair[1]], options)
        handle = executor.submit(task)
        in_flight[handle] = {"pair": pair, "task": task, "attempt": attempt, "t0": t0 or time.monotonic(),
                             "unstarted": unstarted}

    def finish(job, result, reason):
        """Record the hand-in, or grade it once more when this try failed for the grader's reasons."""
        student, aid = job["pair"]
        if result is None or (result.status != "graded" and result.reason.startswith(RETRIED)):
            if job["attempt"] < 2:
                submit(job["pair"], job["task"], job["attempt"] + 1, job["t0"])
                return
            if result is None:
                result = failure(student, aid, reason, job["attempt"])
        result.attempts = job["attempt"]
        seconds = time.monotonic() - job["t0"]
        record(root, result, status, seconds, url)
        results[(student, aid)] = status[f"{student}/{aid}"]
        bar.step(result, seconds)

    try:
        while queue or in_flight:
            while queue and len(in_flight) < executor.capacity():
                submit(queue.pop(0))
            for handle in executor.wait(list(in_flight), timeout=1.0):
                job = in_flight.pop(handle, None)
                if job is None:          # a task given up on before it came back
                    continue
                try:
                    result, reason = executor.outcome(handle), ""
                except executors.WorkerDied as exc:
                    if not exc.started and job["unstarted"] < executors.MAX_UNSTARTED_RETRIES:
                        # it waited behind another hand-in on a worker that died: not its try
                        submit(job["pair"], job["task"], job["attempt"], job["t0"], job["unstarted"] + 1)
                        continue
                    result, reason = None, f"grading failed: worker process died while grading ({exc})"
                except Exception as exc:  # never lose the batch over one hand-in
                    result, reason = None, f"grading failed: {exc.__class__.__name__}: {exc}"
                finish(job, result, reason)
            now = time.monotonic()
            for handle, job in list(in_flight.items()):
                started = executor.started(handle)
                if started is not None and now - started > limit:
                    del in_flight[handle]
                    executor.abandon(handle)
                    finish(job, None, f"grading failed: time limit exceeded: no result within {limit:.0f} s "
                                      "(the hand-in's limit plus a margin); the task was abandoned")
    finally:
        bar.close()
        executor.close()
    return results


def _max_scores(released) -> dict:
    return {c["name"]: c["points"] for nb in released["notebooks"].values() for c in nb["cells"]
            if c["points"] is not None and c["kind"] in ("grade", "grade+solution")}


def record(root, result: HandinResult, status: dict, seconds: float, url=None) -> None:
    """The coordinator's writes for one hand-in: gradebook, autograded/, status file."""
    timestamp = gradebook.submission_timestamp(root, result.student, result.assignment)
    try:
        gradebook.write_result(url or gradebook.db_url(root), result, timestamp=timestamp)
    except gradebook.InvalidResult as exc:   # scores that do not fit the assignment: 0 with the reason
        result = HandinResult.failure(result.student, result.assignment, f"invalid grading result: {exc}"[:300],
                                      result.max_scores, log=result.log)
        gradebook.write_result(url or gradebook.db_url(root), result, timestamp=timestamp)
    _write_autograded(root, result)
    status[f"{result.student}/{result.assignment}"] = {
        "status": "autograded" if result.status == "graded" else "failed",
        "reason": result.reason, "seconds": round(seconds, 2), "attempts": result.attempts,
        "score": round(result.score, 4), "max_score": round(result.max_score, 4),
        "timings": result.timings,
        "cases": [dict(c.__dict__) for c in result.cases],
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    course.write_status(root, status)
    log_dir = os.path.join(root, course.STATE_DIR, "logs")
    os.makedirs(log_dir, exist_ok=True)
    with open(os.path.join(log_dir, f"{result.student}__{result.assignment}.log"), "w", encoding="utf-8") as fh:
        fh.write(result.log)

