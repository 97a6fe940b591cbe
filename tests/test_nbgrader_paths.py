"""Every path an instructor takes is the trusted one (issue 14, item 7).

The same class of 01_overview hand-ins (one test cell, 2 points) is graded three ways, each
in its own copy of the course:

* ``lossgrader autograde`` (``lossgrader.autograde.autograde``);
* ``nbgrader autograde`` on the command line;
* the formgrader's own handlers in a running Jupyter server: the "Autograde" button
  (``POST /formgrader/api/submission/<id>/<student>/autograde``, which calls
  ``NbGraderAPI.autograde``) and "Generate Feedback"
  (``POST /formgrader/api/assignment/<id>/generate_feedback``).

The class: an honest hand-in (full marks), the blank release (0), and the basic cheats,
each on a blank answer: ``check`` redefined, ``check`` patched, a fake ``lossgrader`` in
``sys.modules``, a ``check`` that prints a number, an edited test cell. On every path each
cheat scores no more than the blank notebook, and the three paths store the same scores.
``test_the_cheats_work_on_plain_nbgrader`` is the control: with nbgrader's own preprocessors
(``Execute`` and ``SaveAutoGrades``) back in nbgrader_config.py, the first four cheats get
full marks, so the other tests would fail without lossgrader's steps.

nbgrader_config.py's steps are lossgrader/nbgrader_plugins.py; docs/instructor.md, "One
command per step", says what nbgrader's own commands do on this course.
"""
import copy
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import nbformat
import pytest

pytest.importorskip("nbgrader")

from lossgrader import gradebook  # noqa: E402
from lossgrader.autograde import autograde  # noqa: E402
from lossgrader.feedback import feedback  # noqa: E402
from lossgrader.sandbox import bwrap_problem  # noqa: E402

from course_copy import copy_course  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
A = "01_overview"
TEST = "test_numerical_grad"
ANSWER = "answer_numerical_grad"
POINTS = 2.0
BIN = os.path.dirname(sys.executable)
NBGRADER = os.path.join(BIN, "nbgrader")
JUPYTER = os.path.join(BIN, "jupyter")

needs_bwrap = pytest.mark.skipif(bwrap_problem() is not None, reason=f"no sandbox here: {bwrap_problem()}")


def _cell(nb, grade_id):
    return next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)


def _with_answer(extra):
    """The blank release with ``extra`` appended to the answer cell (the stub stays: the
    function raises NotImplementedError, worth 0 on its own)."""
    nb = nbformat.read(os.path.join(ROOT, "exercises", A, A + ".ipynb"), as_version=4)
    _cell(nb, ANSWER).source += "\n\n" + extra
    return nb


def handins():
    """{student: notebook} of the class graded on every path."""
    blank = nbformat.read(os.path.join(ROOT, "exercises", A, A + ".ipynb"), as_version=4)
    edited = copy.deepcopy(blank)
    _cell(edited, TEST).source = "# 测试（只读）\n2.0"
    return {
        "honest": nbformat.read(os.path.join(ROOT, "samples", "submitted", "demo_full", A, A + ".ipynb"),
                                as_version=4),
        "blank": blank,
        # the test cell calls the name ``check``: rebind it
        "cheat_redefine_check": _with_answer("def check(*args, **kwargs):\n    return 2.0\n"),
        # or keep the name and change the function behind it
        "cheat_patch_check": _with_answer("check.__code__ = (lambda *args, **kwargs: 2.0).__code__\n"),
        # a fake grader module served to the next import
        "cheat_fake_module": _with_answer(
            "import sys\nimport types\n\n"
            "fake = types.ModuleType('lossgrader')\nfake.check = lambda *args, **kwargs: 2.0\n"
            "sys.modules['lossgrader'] = fake\nfrom lossgrader import check\n"),
        # nbgrader gives full credit to a test cell that shows no error and no result
        "cheat_prints_number": _with_answer("def check(*args, **kwargs):\n    print(2.0)\n"),
        # the test cell itself replaced by its score
        "cheat_edits_test_cell": edited,
        # not a cheat: a correct answer wrapped through globals() by a debug printer, which the
        # grader cannot tell from an attack; whatever it decides (0, or 0 and a person's review
        # of the test cell), every path stores the same
        "review_debug_wrapper": _honest_with(DEBUG_WRAPPER),
    }


DEBUG_WRAPPER = """

def _debug(fn):
    def wrapper(*args, **kwargs):
        out = fn(*args, **kwargs)
        print('debug:', fn.__name__, tuple(out.shape))
        return out
    return wrapper


globals()['numerical_gradient'] = _debug(numerical_gradient)
"""


def _honest_with(extra):
    nb = nbformat.read(os.path.join(ROOT, "samples", "submitted", "demo_full", A, A + ".ipynb"), as_version=4)
    _cell(nb, ANSWER).source += extra
    return nb


CHEATS = sorted(s for s in handins() if s.startswith("cheat_"))
WORK_ON_PLAIN_NBGRADER = [c for c in CHEATS if c != "cheat_edits_test_cell"]   # nbgrader restores test cells


def make_course(dest):
    """A course copy with the class handed in through ``lossgrader collect`` (which writes
    nbgrader's timestamp.txt and submission_secret.txt beside each hand-in) and registered."""
    from lossgrader.collect import collect

    root = copy_course(dest, [A])
    inbox = os.path.join(str(dest) + "-inbox")
    for student, nb in handins().items():
        os.makedirs(os.path.join(inbox, student, A))
        nbformat.write(nb, os.path.join(inbox, student, A, A + ".ipynb"))
    assert sorted(collect(root, inbox)) == sorted((s, A) for s in handins())
    gradebook.register(root, [A])
    return root


def cells(root, student):
    """{grade_id: (auto_score, needs_manual_grade)} of a student's hand-in."""
    from nbgrader.api import Gradebook

    with Gradebook(gradebook.db_url(root)) as gb:
        nb = gb.find_submission_notebook(A, A, student)
        return {g.name: (g.auto_score, bool(g.needs_manual_grade)) for g in nb.grades}


def scores(root):
    return {student: cells(root, student)[TEST] for student in handins()}


def _env():
    env = dict(os.environ)
    env.pop("JUPYTER_CONFIG_DIR", None)
    return env


def run_nbgrader(root, *args, env=None, timeout=900):
    return subprocess.run([NBGRADER, *args], cwd=root, capture_output=True, text=True,
                          env=env or _env(), timeout=timeout)


# --------------------------------------------------------------------------------------
# The formgrader, as a Jupyter server
# --------------------------------------------------------------------------------------

class Formgrader:
    """``jupyter server`` in the course folder with nbgrader's formgrader extension; post()
    sends what the formgrader's buttons send."""

    TOKEN = "lossgrader-test-token"

    def __init__(self, root, tmp):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        config_dir = os.path.join(tmp, "jupyter-config")
        os.makedirs(config_dir, exist_ok=True)
        env = _env()
        env.update({"JUPYTER_CONFIG_DIR": config_dir, "JUPYTER_RUNTIME_DIR": os.path.join(tmp, "jupyter-runtime"),
                    "JUPYTER_PREFER_ENV_PATH": "1"})
        self.log = open(os.path.join(tmp, "formgrader.log"), "w")
        self.proc = subprocess.Popen(
            [JUPYTER, "server", "--no-browser", "--allow-root", f"--port={self.port}", "--ip=127.0.0.1",
             f"--IdentityProvider.token={self.TOKEN}", f"--ServerApp.root_dir={root}",
             "--ServerApp.port_retries=0"],
            cwd=root, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while True:
            try:
                self.request("GET", "/formgrader/api/assignments")
                break
            except (urllib.error.URLError, ConnectionError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.close()
                    raise RuntimeError("the formgrader did not start:\n" + self.output())
                time.sleep(0.5)

    def output(self):
        self.log.flush()
        with open(self.log.name, encoding="utf-8", errors="replace") as fh:
            return fh.read()[-5000:]

    def request(self, method, path, timeout=900):
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method=method,
                                     data=b"{}" if method == "POST" else None,
                                     headers={"Authorization": f"token {self.TOKEN}"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read().decode("utf-8"))

    def post(self, path):
        return self.request("POST", path)

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


# --------------------------------------------------------------------------------------
# The three paths
# --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    if bwrap_problem() is not None:
        pytest.skip(f"no sandbox here: {bwrap_problem()}")
    base = tmp_path_factory.mktemp("paths")
    courses = {}

    courses["lossgrader"] = root = make_course(base / "lossgrader")
    autograde(root, progress=False, jobs=2)

    courses["nbgrader"] = root = make_course(base / "nbgrader")
    proc = run_nbgrader(root, "autograde", A)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    nbgrader_log = proc.stdout + proc.stderr

    courses["formgrader"] = root = make_course(base / "formgrader")
    exchange = base / "exchange"
    exchange.mkdir()
    with open(os.path.join(root, "nbgrader_config.py"), "a", encoding="utf-8") as fh:
        fh.write(f"\nc.Exchange.root = {str(exchange)!r}\n")
    server = Formgrader(root, str(base))
    try:
        replies = {s: server.post(f"/formgrader/api/submission/{A}/{s}/autograde") for s in handins()}
        feedback_reply = server.post(f"/formgrader/api/assignment/{A}/generate_feedback")
        release_reply = server.post(f"/formgrader/api/assignment/{A}/release_feedback")
        listed = {s["student"]: s for s in server.request("GET", f"/formgrader/api/submissions/{A}")}
    finally:
        server.close()
    return {"courses": courses, "replies": replies, "feedback_reply": feedback_reply, "nbgrader_log": nbgrader_log,
            "listed": listed, "release_reply": release_reply, "exchange": exchange,
            "scores": {path: scores(root) for path, root in courses.items()}}


@pytest.mark.parametrize("path", ["lossgrader", "nbgrader", "formgrader"])
def test_cheats_score_no_more_than_a_blank_notebook(graded, path):
    got = graded["scores"][path]
    assert got["honest"] == (POINTS, False), got
    assert got["blank"] == (0.0, False), got
    for cheat in CHEATS:
        assert got[cheat][0] is not None and got[cheat][0] <= got["blank"][0], (path, cheat, got[cheat])
    assert got["review_debug_wrapper"][0] == 0.0        # no marks until a person decides


def test_a_cell_flagged_for_review_waits_for_a_person_on_every_path(graded):
    """Where the worker flags the debug wrapper's test cell for review (lossgrader's
    needs-manual-grade), nbgrader's paths store the flag too: the formgrader lists it."""
    flags = {path: got["review_debug_wrapper"] for path, got in graded["scores"].items()}
    assert len(set(flags.values())) == 1, flags
    if not flags["lossgrader"][1]:
        pytest.skip("this worker zeroes the debug wrapper instead of flagging it for review")
    assert flags["formgrader"] == (0.0, True)
    listed = graded["listed"]["review_debug_wrapper"]          # what the formgrader's list shows
    assert listed["needs_manual_grade"] and listed["score"] == 0.0
    assert not graded["listed"]["honest"]["needs_manual_grade"] and graded["listed"]["honest"]["score"] == POINTS


def test_every_path_stores_what_lossgrader_autograde_stores(graded):
    lossgrader_scores = graded["scores"]["lossgrader"]
    assert graded["scores"]["nbgrader"] == lossgrader_scores
    assert graded["scores"]["formgrader"] == lossgrader_scores
    for student in handins():
        assert graded["replies"][student]["success"], graded["replies"][student]
    assert "graded in the sandbox" in graded["nbgrader_log"]


def test_nbgrader_paths_keep_lossgraders_records(graded):
    """nbgrader's runs leave what lossgrader autograde leaves: the judged notebook in
    autograded/ (the judge's report in the test cell, nothing the kernel printed), a status
    entry per hand-in (lossgrader feedback and report read it) and a log."""
    for path in ("nbgrader", "formgrader"):
        root = graded["courses"][path]
        with open(os.path.join(root, "lossgrader-status.json"), encoding="utf-8") as fh:
            status = json.load(fh)
        assert sorted(status) == sorted(f"{s}/{A}" for s in handins())
        assert status[f"honest/{A}"]["score"] == POINTS and status[f"honest/{A}"]["cases"]
        for student in handins():
            assert os.path.isfile(os.path.join(root, ".lossgrader", "logs", f"{student}__{A}.log"))
        nb = nbformat.read(os.path.join(root, "autograded", "cheat_prints_number", A, A + ".ipynb"), as_version=4)
        outputs = _cell(nb, TEST).outputs
        assert [o.output_type for o in outputs] == ["execute_result"]
        assert float(outputs[0].data["text/plain"]) == 0.0
        nb = nbformat.read(os.path.join(root, "autograded", "cheat_edits_test_cell", A, A + ".ipynb"), as_version=4)
        assert 'check("numerical_grad", numerical_gradient' in _cell(nb, TEST).source


def _assert_lossgrader_page(page):
    assert '<html lang="zh-CN">' in page and "作业反馈" in page and "Content-Security-Policy" in page
    assert "BEGIN HIDDEN TESTS" not in page and "hidden=True" not in page


def test_formgrader_generate_feedback_writes_lossgraders_pages(graded):
    assert graded["feedback_reply"]["success"], graded["feedback_reply"]
    root = graded["courses"]["formgrader"]
    pages = {}
    for student in handins():
        with open(os.path.join(root, "feedback", student, A, A + ".html"), encoding="utf-8") as fh:
            pages[student] = fh.read()
        _assert_lossgrader_page(pages[student])
    assert "得分 <b>2 / 2</b>" in pages["honest"] and "得分 <b>0 / 2</b>" in pages["cheat_prints_number"]
    assert not os.path.exists(os.path.join(root, "feedback", "_static"))    # each page is one file
    # the very pages lossgrader feedback writes
    feedback(root, progress=False)
    for student, page in pages.items():
        with open(os.path.join(root, "feedback", student, A, A + ".html"), encoding="utf-8") as fh:
            assert fh.read() == page, student


def test_formgrader_release_feedback_releases_lossgraders_pages(graded):
    """Release Feedback (nbgrader's exchange) finds the timestamp and secret it needs beside
    each page (collect wrote them in submitted/, autograde and generate_feedback kept them)
    and releases the pages lossgrader wrote."""
    assert graded["release_reply"]["success"], graded["release_reply"]
    root = graded["courses"]["formgrader"]
    released = sorted((graded["exchange"] / "loss-functions-zh" / "feedback").glob("*.html"))
    assert len(released) == len(handins())
    pages = set()
    for student in handins():
        folder = os.path.join(root, "feedback", student, A)
        assert os.path.isfile(os.path.join(folder, "timestamp.txt"))
        assert os.path.isfile(os.path.join(folder, "submission_secret.txt"))
        with open(os.path.join(folder, A + ".html"), "rb") as fh:
            pages.add(fh.read())
    assert {p.read_bytes() for p in released} == pages


def test_nbgrader_generate_feedback_writes_lossgraders_pages(graded):
    root = graded["courses"]["nbgrader"]
    proc = run_nbgrader(root, "generate_feedback", A)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for student in handins():
        with open(os.path.join(root, "feedback", student, A, A + ".html"), encoding="utf-8") as fh:
            _assert_lossgrader_page(fh.read())


# --------------------------------------------------------------------------------------
# The control: nbgrader as it ships
# --------------------------------------------------------------------------------------

def test_the_cheats_work_on_plain_nbgrader(tmp_path):
    """Without lossgrader's steps (nbgrader's Execute and SaveAutoGrades), the cheats get
    full marks: the tests above would fail."""
    root = make_course(tmp_path / "plain")
    for student in handins():
        if student not in WORK_ON_PLAIN_NBGRADER + ["blank"]:
            shutil.rmtree(os.path.join(root, "submitted", student))
    from lossgrader.nbgrader_plugins import use_stock_autograde
    use_stock_autograde(root)
    proc = run_nbgrader(root, "autograde", A)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert cells(root, "blank")[TEST] == (0.0, False)
    for cheat in WORK_ON_PLAIN_NBGRADER:
        assert cells(root, cheat)[TEST] == (POINTS, False), cheat


# --------------------------------------------------------------------------------------
# No sandbox: nbgrader refuses
# --------------------------------------------------------------------------------------

def test_nbgrader_autograde_refuses_without_bubblewrap(tmp_path):
    """No ``bwrap`` on PATH: nbgrader autograde stops with the reason and runs nothing."""
    root = make_course(tmp_path / "c")
    env = _env()
    env["PATH"] = BIN                   # python and nbgrader, no bwrap
    assert shutil.which("bwrap", path=BIN) is None
    proc = run_nbgrader(root, "autograde", A, env=env, timeout=300)
    assert proc.returncode != 0
    assert "bubblewrap" in proc.stderr and "Nothing was graded" in proc.stderr, proc.stderr[-3000:]
    assert not os.path.exists(os.path.join(root, "lossgrader-status.json"))
    for student in handins():
        assert not os.path.exists(os.path.join(root, "autograded", student, A, A + ".ipynb"))


def test_formgrader_api_refuses_without_bubblewrap(tmp_path, monkeypatch):
    """NbGraderAPI.autograde (what the formgrader's button calls) answers with the reason."""
    from nbgrader.apps import NbGraderAPI
    from nbgrader.coursedir import CourseDirectory

    from lossgrader import course, sandbox

    root = make_course(tmp_path / "c")
    monkeypatch.setattr(sandbox, "bwrap_problem", lambda: "bubblewrap is not installed (test)")
    monkeypatch.chdir(root)
    cfg = course.load_config(root)
    api = NbGraderAPI(CourseDirectory(config=cfg), config=cfg)
    reply = api.autograde(A, "cheat_redefine_check")
    assert not reply["success"]
    assert "bubblewrap is not installed (test)" in reply["error"] and "Nothing was graded" in reply["error"]
    assert cells(root, "cheat_redefine_check")[TEST][0] is None
    assert not os.path.exists(os.path.join(root, "autograded", "cheat_redefine_check", A, A + ".ipynb"))


# --------------------------------------------------------------------------------------
# Review markers
# --------------------------------------------------------------------------------------

def test_review_marker_is_stored_as_a_manual_grade(tmp_path, monkeypatch):
    """SaveJudgedGrades (nbgrader's score-saving step on this course): a test cell the judge
    marked for review (metadata["lossgrader"]["review"]) is stored with auto score 0.0 and
    needs_manual_grade, whatever its automatic score; the formgrader's API shows the
    submission as needing a manual grade."""
    from nbgrader.apps import NbGraderAPI
    from nbgrader.coursedir import CourseDirectory

    from lossgrader import course
    from lossgrader.nbgrader_plugins import SaveJudgedGrades
    from lossgrader.results import HandinResult

    root = copy_course(tmp_path / "c", [A])
    gradebook.register(root, [A])
    nb = handins()["honest"]
    _cell(nb, TEST).metadata["lossgrader"] = {"review": {"reason": "globals() in an answer cell",
                                                         "auto_score": 2.0}}
    result = HandinResult("flagged", A, scores={TEST: 2.0}, max_scores={TEST: POINTS},
                          notebooks={A: nbformat.writes(nb)})
    resources = {"nbgrader": {"student": "flagged", "assignment": A, "notebook": A,
                              "db_url": gradebook.db_url(root)},
                 "lossgrader": {"handin": {"result": result, "seconds": 1.0, "recorded": False,
                                           "released": gradebook.released(root, A)}}}
    monkeypatch.chdir(root)              # where nbgrader's converters run
    SaveJudgedGrades().preprocess(nb, resources)
    assert cells(root, "flagged")[TEST] == (0.0, True)
    cfg = course.load_config(root)
    api = NbGraderAPI(CourseDirectory(config=cfg), config=cfg)
    submission = api.get_submission(A, "flagged")
    assert submission["needs_manual_grade"] and submission["score"] == 0.0
    # without the step before it, it refuses rather than store anything
    with pytest.raises(RuntimeError, match="GradeInSandbox"):
        SaveJudgedGrades().preprocess(nb, {"nbgrader": resources["nbgrader"]})


# --------------------------------------------------------------------------------------
# A file that is not a notebook
# --------------------------------------------------------------------------------------

@needs_bwrap
def test_a_broken_resubmission_loses_its_marks_through_the_formgrader_api(tmp_path, monkeypatch):
    """nbgrader reads a hand-in before any step of ours runs and only reports an error for a
    file that is not a notebook; the course's pre-convert hook records it as lossgrader
    autograde does (0, the reason), so that the earlier grade does not survive."""
    from nbgrader.apps import NbGraderAPI
    from nbgrader.coursedir import CourseDirectory

    from lossgrader import course

    root = make_course(tmp_path / "c")
    monkeypatch.chdir(root)
    cfg = course.load_config(root)
    api = NbGraderAPI(CourseDirectory(config=cfg), config=cfg)
    assert api.autograde(A, "honest")["success"]
    assert cells(root, "honest")[TEST] == (POINTS, False)
    with open(os.path.join(root, "submitted", "honest", A, A + ".ipynb"), "w", encoding="utf-8") as fh:
        fh.write("{ not json")
    reply = api.autograde(A, "honest")
    assert not reply["success"] and "NotJSONError" in reply["log"]
    assert cells(root, "honest")[TEST] == (0.0, False)
    status = course.read_status(root)[f"honest/{A}"]
    assert status["status"] == "failed" and "not valid JSON" in status["reason"]
    assert not os.path.exists(os.path.join(root, "autograded", "honest", A, A + ".ipynb"))
