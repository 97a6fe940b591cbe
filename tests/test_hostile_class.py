"""End-to-end: a hostile class graded with the instructor's commands, sandbox on (issue 7).

A temporary course (nbgrader_config.py, _config.yml, tools/, solutions/, exercises/ and a copy of
the grader package at its root, as in the repository whose editable install is the course) gets
one 02_regression hand-in per attack family (tests/hostile_class.py) next to two honest students
(the model answers of solutions/) and a blank one (the released notebook unchanged). One honest
student is graded once before the batch, so that a grade history exists to be attacked. Then

    python -m lossgrader.cli --course DIR autograde -j 2
    python -m lossgrader.cli --course DIR feedback
    python -m lossgrader.cli --course DIR export

run as subprocesses, and every test below checks one promise of issue 7 against what those
commands leave behind (exit status, gradebook.db, grades.csv, autograded/, feedback/, the course
files, the processes and the network), a few seconds after the batch as well, for what a
detached process could still do.

LOSSGRADER_HOSTILE_ONLY=x_stack_walk,x_network (comma-separated) grades only those attackers
(next to the honest and blank students): to study one family at a time.
"""
import compileall
import csv
import hashlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from html.parser import HTMLParser

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import hostile_class as C  # noqa: E402
import hostile_notebooks as H  # noqa: E402

ROOT = os.path.dirname(HERE)
A = C.A
MAX_SCORE = 6.0

# Seconds per command; the module's own limit (pytest-timeout) covers all of them together.
# (measured with the sandboxed pipeline, 22 hand-ins, 2 cores at load 13: pregrade 42 s, autograde 204 s,
# feedback 65 s, export 29 s)
COMMAND_TIMEOUT = {"pregrade": 240, "autograde": 600, "feedback": 240, "export": 120}
GRACE_S = 8                         # wait after the last command: a detached process would act
FEEDBACK_CAP = 3 * 1024 * 1024      # bytes per feedback page
# What the commands may write in the course directory (top-level names); everything else,
# submitted/ and the grader's package included, must be byte for byte as before the batch.
ALLOWED_OUTPUTS = {"autograded", "feedback", ".lossgrader", "gradebook.db", "gradebook.db-journal",
                   "gradebook.db-wal", "gradebook.db-shm", "grades.csv", "grades.csv.tmp",
                   "lossgrader-status.json", "lossgrader-status.json.tmp"}
COPIED = ("nbgrader_config.py", "_config.yml", "tools", "solutions", "exercises", "lossgrader")

pytestmark = pytest.mark.timeout(sum(COMMAND_TIMEOUT.values()) + GRACE_S + 120)


def _selected_attacks():
    only = os.environ.get("LOSSGRADER_HOSTILE_ONLY", "").strip()
    if not only:
        return list(C.ATTACKS)
    chosen = [a.strip() for a in only.split(",") if a.strip()]
    unknown = [a for a in chosen if a not in C.ATTACKS]
    assert not unknown, f"LOSSGRADER_HOSTILE_ONLY names unknown attacks: {unknown}"
    return chosen


def _bwrap_problem():
    """None when bubblewrap can make a sandbox here, else why not."""
    if shutil.which("bwrap") is None:
        return "bubblewrap (bwrap) is not installed: a hostile class is never graded without the sandbox"
    probe = subprocess.run(["bwrap", "--ro-bind", "/", "/", "--unshare-all", "--die-with-parent", "true"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return "bwrap cannot create a sandbox on this machine: " + (probe.stderr.strip() or f"exit {probe.returncode}")
    return None


# --------------------------------------------------------------------------- course and observation
def _copy_course(dest):
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints")
    for name in COPIED:
        src = os.path.join(ROOT, name)
        if os.path.isdir(src):
            shutil.copytree(src, os.path.join(dest, name), ignore=ignore)
        else:
            shutil.copy2(src, os.path.join(dest, name))
    # bytecode now, so that importing the grader from the copy writes nothing into the course
    for name in ("lossgrader", "tools"):
        compileall.compile_dir(os.path.join(dest, name), quiet=1)


def _submit(root, student, text):
    d = os.path.join(root, "submitted", student, A)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, A + ".ipynb"), "w", encoding="utf-8") as fh:
        fh.write(text)


def _tree(root, skip_top=ALLOWED_OUTPUTS):
    """relative path -> sha256 of every file (and symlink target) under root, except skip_top."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        if rel_dir == ".":
            dirnames[:] = [d for d in dirnames if d not in skip_top]
            filenames = [f for f in filenames if f not in skip_top]
        for d in dirnames:
            path = os.path.join(dirpath, d)
            if os.path.islink(path):
                out[os.path.relpath(path, root)] = "link:" + os.readlink(path)
        for f in filenames:
            path = os.path.join(dirpath, f)
            rel = os.path.relpath(path, root)
            if os.path.islink(path):
                out[rel] = "link:" + os.readlink(path)
                continue
            digest = hashlib.sha256()
            try:
                with open(path, "rb") as fh:
                    for block in iter(lambda: fh.read(1 << 20), b""):
                        digest.update(block)
                out[rel] = digest.hexdigest()
            except OSError as exc:
                out[rel] = f"unreadable: {exc}"
    return out


def _tree_diff(before, after):
    changed = sorted(p for p in before.keys() & after.keys() if before[p] != after[p])
    added = sorted(after.keys() - before.keys())
    removed = sorted(before.keys() - after.keys())
    return {k: v for k, v in (("changed", changed), ("added", added), ("removed", removed)) if v}


GRADES_SQL = """
SELECT submitted_assignment.student_id, base_cell.name, grade.auto_score, grade.manual_score,
       grade.extra_credit, grade_cells.max_score
FROM grade
JOIN submitted_notebook ON grade.notebook_id = submitted_notebook.id
JOIN submitted_assignment ON submitted_notebook.assignment_id = submitted_assignment.id
JOIN assignment ON submitted_assignment.assignment_id = assignment.id
JOIN grade_cells ON grade.cell_id = grade_cells.id
JOIN base_cell ON base_cell.id = grade_cells.id
WHERE assignment.name = ?
"""


def _read_gradebook(root):
    """{"integrity": ..., "students": [...], "grades": {student: {cell: (auto, manual, extra, max)}}}
    read without writing (SQLite read-only mode), or {"error": why it cannot be read}."""
    path = os.path.join(root, "gradebook.db")
    if not os.path.isfile(path):
        return {"error": "gradebook.db is missing or not a file"}
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            integrity = con.execute("PRAGMA integrity_check").fetchone()[0]
            students = [r[0] for r in con.execute("SELECT id FROM student")]
            grades = {}
            for student, cell, auto, manual, extra, max_score in con.execute(GRADES_SQL, (A,)):
                grades.setdefault(student, {})[cell] = (auto, manual, extra, max_score)
        finally:
            con.close()
    except sqlite3.Error as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {"integrity": integrity, "students": students, "grades": grades}


def _effective(cell):
    """nbgrader's score of one grade: the manual score when there is one, plus extra credit."""
    auto, manual, extra, _ = cell
    base = manual if manual is not None else auto
    return None if base is None else float(base) + float(extra or 0)


def _read_csv(root):
    path = os.path.join(root, "grades.csv")
    if not os.path.isfile(path):
        return {}
    with open(path, newline="", encoding="utf-8") as fh:
        # a formula-like id is written with a leading quote (OWASP's rule): read as the id
        return {(_unquoted(r["student_id"]), r["assignment"]): r for r in csv.DictReader(fh)}


def _unquoted(cell):
    return cell[1:] if cell[:2] in {"'" + c for c in "=+-@\t\r"} else cell


def _token_processes(token):
    """pids of processes whose command line carries this run's token (the detached attackers)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                if token.encode() in fh.read():
                    found.append(int(entry))
        except OSError:
            pass
    return found


class _Listener:
    """A TCP listener on 127.0.0.1 that records every connection (and what it sent)."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.5)
        self.port = self.sock.getsockname()[1]
        self.seen = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                conn, addr = self.sock.accept()
            except OSError:
                continue
            conn.settimeout(2)
            try:
                data = conn.recv(4096)
            except OSError:
                data = b""
            conn.close()
            self.seen.append((addr, data.decode("utf-8", "replace").strip()))

    def close(self):
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


class _ScriptFinder(HTMLParser):
    """Places of a page where a browser would run the flag: <script> text, on* handlers,
    javascript: URLs and srcdoc documents."""

    URL_ATTRS = {"src", "href", "action", "formaction", "data", "xlink:href", "srcdoc"}

    def __init__(self, flag):
        super().__init__(convert_charrefs=True)
        self.flag = flag
        self.hits = []
        self._script = False

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if value and self.flag in value and (name.startswith("on") or name in self.URL_ATTRS):
                self.hits.append(f"<{tag} {name}={value[:80]!r}>")
        if tag == "script":
            self._script = True

    handle_startendtag = handle_starttag

    def handle_endtag(self, tag):
        if tag == "script":
            self._script = False

    def handle_data(self, data):
        if self._script and self.flag in data:
            self.hits.append(f"<script>{data.strip()[:80]}</script>")


def _run(name, root, args, env, log):
    """One command as a subprocess (its own process group, killed whole on timeout)."""
    cmd = [sys.executable, "-m", "lossgrader.cli", "--course", root] + args
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace", start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=COMMAND_TIMEOUT[name])
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        rc = f"killed after {COMMAND_TIMEOUT[name]} s"
    seconds = time.monotonic() - started
    log[name] = {"rc": rc, "output": out, "seconds": round(seconds, 1), "cmd": " ".join(args)}
    return rc


# --------------------------------------------------------------------------- the graded class
@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    problem = _bwrap_problem()
    if problem:
        pytest.skip(problem)
    pytest.importorskip("nbgrader")
    root = str(tmp_path_factory.mktemp("hostile_course"))
    _copy_course(root)
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.pop("LOSSGRADER_HOSTILE_ONLY", None)
    token = "hostile" + uuid.uuid4().hex[:12]
    listener = _Listener()
    with open("/proc/meminfo") as fh:
        available = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("MemAvailable:"))
    setting = C.Setting(root=root, token=token, port=listener.port,
                        memory_cap=min(6 << 30, available // 3))
    attacks = _selected_attacks()
    handins = C.class_handins(setting, attacks)
    log = {}
    result = {"root": root, "token": token, "attacks": attacks, "students": sorted(handins), "log": log,
              "listener": listener}
    try:
        # a grade history first: the first honest student, graded alone
        _submit(root, C.PREGRADED, handins[C.PREGRADED])
        _run("pregrade", root, ["autograde", "-j", "2"], env, log)
        result["pregraded"] = _read_gradebook(root)
        for student, text in handins.items():
            if student != C.PREGRADED:
                _submit(root, student, text)
        result["tree_before"] = _tree(root)
        started = time.monotonic()
        for name, args in (("autograde", ["autograde", "-j", "2"]), ("feedback", ["feedback"]),
                           ("export", ["export"])):
            _run(name, root, args, env, log)
        result["seconds"] = round(time.monotonic() - started, 1)
        result["tree_after"] = _tree(root)
        result["gradebook_after"] = _read_gradebook(root)
        result["csv"] = _read_csv(root)
        time.sleep(GRACE_S)
        result["tree_late"] = _tree(root)
        result["gradebook_late"] = _read_gradebook(root)
        result["survivors"] = _token_processes(token)
        report = os.path.join(str(tmp_path_factory.mktemp("hostile_report")), "report.json")
        with open(report, "w", encoding="utf-8") as fh:
            json.dump({"course": root, "log": log, "listener": listener.seen, "survivors": result["survivors"],
                       "files_after": _tree_diff(result["tree_before"], result["tree_after"]),
                       "files_late": _tree_diff(result["tree_before"], result["tree_late"]),
                       "csv": {s: r.get("score") for (s, _), r in result["csv"].items()}},
                      fh, ensure_ascii=False, indent=1)
        print(f"\nhostile class: {len(handins)} hand-ins, autograde {log['autograde']['seconds']} s, "
              f"feedback {log['feedback']['seconds']} s, export {log['export']['seconds']} s; "
              f"course in {root}, summary in {report}")
        yield result
    finally:
        for pid in _token_processes(token):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        listener.close()


def _attack_params():
    return [pytest.param(a, id=a) for a in C.ATTACKS]


def _scores(gradebook, student):
    cells = gradebook.get("grades", {}).get(student, {})
    return {cell: _effective(v) for cell, v in cells.items()}


# --------------------------------------------------------------------------- the promises
@pytest.mark.parametrize("command", ["pregrade", "autograde", "feedback", "export"])
def test_every_command_succeeds(graded, command):
    entry = graded["log"][command]
    assert entry["rc"] == 0, f"`lossgrader {entry['cmd']}` -> {entry['rc']}:\n{entry['output'][-3000:]}"


def test_gradebook_opens_and_holds_every_student(graded):
    for when in ("gradebook_after", "gradebook_late"):
        gb = graded[when]
        assert "error" not in gb, f"{when}: the gradebook cannot be read: {gb['error']}"
        assert gb["integrity"] == "ok", f"{when}: {gb['integrity']}"
        missing = [s for s in graded["students"] if s not in gb["students"] or s not in gb["grades"]]
        assert not missing, f"{when}: no row for {missing}"
        for student in graded["students"]:
            cells = gb["grades"][student]
            assert sorted(cells) == sorted(H.TESTS), (student, sorted(cells))
            assert all(v[3] == 1.0 for v in cells.values()), (student, cells)        # max_score as released
            assert all(_effective(v) is not None for v in cells.values()), (student, cells)


def test_every_hand_in_has_a_csv_row_an_autograded_copy_and_a_feedback_page(graded):
    root = graded["root"]
    for student in graded["students"]:
        row = graded["csv"].get((student, A))
        assert row is not None and row["score"] != "", f"{student}: no score in grades.csv"
        assert float(row["max_score"]) == MAX_SCORE, row
        assert os.path.isfile(os.path.join(root, "autograded", student, A, A + ".ipynb")), \
            f"{student}: autograded/{student}/{A}/{A}.ipynb is missing"
        assert os.path.isfile(os.path.join(root, "feedback", student, A, A + ".html")), \
            f"{student}: feedback/{student}/{A}/{A}.html is missing"


def test_honest_students_keep_full_marks(graded):
    for student in C.HONEST:
        row = graded["csv"].get((student, A))
        assert row is not None and float(row["score"]) == MAX_SCORE, f"{student} in grades.csv: {row}"
        for when in ("gradebook_after", "gradebook_late"):
            assert _scores(graded[when], student) == {t: 1.0 for t in H.TESTS}, (when, student)
    before = graded["pregraded"].get("grades", {}).get(C.PREGRADED)
    assert before and all(v == (1.0, None, None, 1.0) for v in before.values()), before
    assert graded["gradebook_late"].get("grades", {}).get(C.PREGRADED) == before, \
        "the grade history of the student graded before the batch changed"


def test_blank_notebook_scores_zero(graded):
    row = graded["csv"].get((C.BLANK, A))
    assert row is not None and float(row["score"]) == 0.0, row
    assert _scores(graded["gradebook_late"], C.BLANK) == {t: 0.0 for t in H.TESTS}


@pytest.mark.parametrize("attack", _attack_params())
def test_attacker_scores_no_more_than_a_blank_notebook(graded, attack):
    if attack not in graded["attacks"]:
        pytest.skip("not selected by LOSSGRADER_HOSTILE_ONLY")
    row, blank_row = graded["csv"].get((attack, A)), graded["csv"].get((C.BLANK, A))
    assert row is not None and blank_row is not None, "grades.csv lacks the attacker's or the blank row"
    assert float(row["score"]) <= float(blank_row["score"]), f"grades.csv: {attack} {row['score']} > blank {blank_row['score']}"
    for when in ("gradebook_after", "gradebook_late"):
        mine, blank = _scores(graded[when], attack), _scores(graded[when], C.BLANK)
        better = {t: mine.get(t) for t in H.TESTS if mine.get(t) is None or mine[t] > (blank.get(t) or 0.0)}
        assert not better, f"{when}: {attack} beats the blank notebook on {better}"


def test_no_manual_score_or_extra_credit_appears(graded):
    """The instructor entered no grade by hand: any manual score or extra credit was forged."""
    gradebook = graded["gradebook_late"]
    assert "error" not in gradebook, f"the gradebook cannot be read: {gradebook['error']}"
    forged = {}
    for student, cells in gradebook["grades"].items():
        for cell, (auto, manual, extra, _) in cells.items():
            if manual is not None or extra:
                forged[f"{student}/{cell}"] = (manual, extra)
    assert not forged, forged


def test_course_files_unchanged_but_for_the_grades(graded):
    for when in ("tree_after", "tree_late"):
        diff = _tree_diff(graded["tree_before"], graded[when])
        assert not diff, f"{when}: files outside {sorted(ALLOWED_OUTPUTS)} changed: {diff}"


def test_installed_grader_and_configuration_unchanged(graded):
    before = graded["tree_before"]
    for when in ("tree_after", "tree_late"):
        diff = _tree_diff({p: h for p, h in before.items() if p.startswith("lossgrader" + os.sep)
                           or p == "nbgrader_config.py"},
                          {p: h for p, h in graded[when].items() if p.startswith("lossgrader" + os.sep)
                           or p == "nbgrader_config.py"})
        assert not diff, f"{when}: the grader the course runs was rewritten: {diff}"


def test_feedback_pages_are_small_and_run_no_script_from_a_hand_in(graded):
    root = graded["root"]
    flag = "__hostile_" + graded["token"]
    problems = []
    for dirpath, _, filenames in os.walk(os.path.join(root, "feedback")):
        for f in filenames:
            path = os.path.join(dirpath, f)
            rel = os.path.relpath(path, root)
            size = os.path.getsize(path)
            if size > FEEDBACK_CAP:
                problems.append(f"{rel}: {size / 2**20:.1f} MiB > {FEEDBACK_CAP / 2**20:.0f} MiB")
            if f.endswith((".html", ".htm", ".svg")):
                with open(path, encoding="utf-8", errors="replace") as fh:
                    finder = _ScriptFinder(flag)
                    finder.feed(fh.read())
                    finder.close()
                if finder.hits:
                    problems.append(f"{rel}: runs the hand-in's script: {finder.hits[:5]}")
    assert not problems, "\n".join(problems)


def test_no_hand_in_reaches_the_network(graded):
    if "x_network" not in graded["attacks"]:
        pytest.skip("x_network not selected by LOSSGRADER_HOSTILE_ONLY")
    assert os.path.isfile(os.path.join(graded["root"], "autograded", "x_network", A, A + ".ipynb")), \
        "x_network was never graded: its attempts were not made"
    listener = graded["listener"]
    assert listener.seen == [], f"connections to the test's listener: {listener.seen}"


def test_no_process_outlives_the_batch(graded):
    assert graded["survivors"] == [], \
        f"processes started by hand-ins still run {GRACE_S} s after the batch: {graded['survivors']}"


def _autograded(graded, student):
    path = os.path.join(graded["root"], "autograded", student, A, A + ".ipynb")
    return path if os.path.isfile(path) else None


def test_what_is_kept_per_hand_in_is_capped(graded):
    """Issue 14: outputs are capped per notebook as well as per cell (x_output_flood), and the
    autograded notebook and the status entry of every hand-in stay within their caps."""
    from lossgrader import autograde
    for student in graded["students"]:
        path = _autograded(graded, student)
        if path:
            assert os.path.getsize(path) <= autograde.MAX_AUTOGRADED_BYTES, student
    with open(os.path.join(graded["root"], "lossgrader-status.json"), encoding="utf-8") as fh:
        status = json.load(fh)
    for key, entry in status.items():
        assert len(json.dumps(entry, ensure_ascii=False, indent=1).encode()) <= autograde.MAX_STATUS_ENTRY_BYTES, key
    if "x_output_flood" in graded["attacks"]:
        with open(_autograded(graded, "x_output_flood"), encoding="utf-8") as fh:
            text = fh.read()
        assert "评分时不再保留后面单元的输出" in text          # the note where outputs were dropped
        assert len(text.encode()) <= 9 * 2 * 2 ** 20         # the per-notebook budget, not 40 cells' worth


def test_the_scratch_folder_is_a_capped_tmpfs_of_the_sandbox(graded):
    """x_scratch_fill writes 32 MiB files until refused: it stops at the sandbox's tmpfs
    size, not at the host disk's."""
    from lossgrader.sandbox import Limits
    if "x_scratch_fill" not in graded["attacks"]:
        pytest.skip("not selected by LOSSGRADER_HOSTILE_ONLY")
    import nbformat
    nb = nbformat.read(_autograded(graded, "x_scratch_fill"), as_version=4)
    printed = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    stopped = [line for line in printed.splitlines() if "stopped after MiB:" in line]
    assert stopped, "the hand-in never ran out of room"
    written = int(stopped[0].split("stopped after MiB:")[1].split()[0])
    assert written * 2 ** 20 <= Limits().tmpfs_bytes()


def test_a_formula_student_id_is_text_in_every_csv(graded):
    """grades.csv: a cell a spreadsheet would run as a formula starts with a quote."""
    with open(os.path.join(graded["root"], "grades.csv"), encoding="utf-8", newline="") as fh:
        cells = [c for row in csv.reader(fh) for c in row]
    assert not [c for c in cells if c[:1] in ("=", "+", "@", "\t", "\r") or
                (c[:1] == "-" and not c.lstrip("-").replace(".", "", 1).isdigit())]
    assert "'" + C.FORMULA_STUDENT in cells
