"""nbgrader's own commands on this course grade and give feedback through lossgrader.

``nbgrader autograde`` (command line) and the formgrader's "Autograde" button
(``NbGraderAPI.autograde``) run nbgrader's ``Autograde`` converter; ``nbgrader
generate_feedback`` and the formgrader's "Generate Feedback" (``NbGraderAPI.generate_feedback``)
run ``GenerateFeedback``. Left as nbgrader ships them, the first runs the hand-in and its
test cells in one unconfined process and reads the score from what that process prints
(patching ``check`` or printing ``2.0`` earns full marks), the second renders nbgrader's
English page with the hidden tests' code. ``nbgrader_config.py`` swaps their steps for the
classes below, so every path an instructor takes is the one ``lossgrader autograde`` and
``lossgrader feedback`` take:

* ``c.Autograde.sanitize_preprocessors = [RequireSandbox, ClearOutput]``: nbgrader's first
  pass (submitted/ -> autograded/) refuses to start where bubblewrap cannot run
  (``SandboxRequired``, a ``SystemExit`` that stops the whole command with the reason;
  nothing runs unconfined, there is no fallback). nbgrader's own sanitizers are not needed:
  the grading step reads the hand-in's bytes in submitted/, not this copy.
* ``c.Autograde.autograde_preprocessors = [GradeInSandbox, SaveJudgedGrades,
  AssignLatePenalties]``: ``GradeInSandbox`` (in place of nbgrader's ``Execute``) builds the
  task as ``lossgrader autograde`` does (``lossgrader.autograde.make_task``: the bytes in
  submitted/ and what the gradebook says was released) and grades it with
  ``lossgrader.worker.grade_handin``: normalisation against the release, back-door scan,
  answer cells in the sandbox, test cells judged outside. The notebook nbgrader goes on
  with, and writes to autograded/, is the judged one (the test cells' outputs are the
  judge's). ``SaveJudgedGrades`` (in place of ``SaveAutoGrades``) stores the judge's scores,
  never a number parsed from an output, through ``lossgrader.autograde.record``: the same
  gradebook transaction, status entry (``lossgrader-status.json``) and log as ``lossgrader
  autograde``. A test cell the judge marked for review (``metadata["lossgrader"]["review"]``
  = ``{"reason": str, "auto_score": float}``) is stored with auto score 0.0 and
  ``needs_manual_grade`` set, so that a person decides.
* ``c.Autograde.pre_convert_hook``: nbgrader reads a hand-in before any step above runs
  and only reports an error for a file that is not a notebook; ``record_unreadable``
  records it first as ``lossgrader autograde`` does (0 with the reason), so that an earlier
  grade of the hand-in does not survive.
* ``c.GenerateFeedback.exporter_class = FeedbackExporter``: the page is the one ``lossgrader
  feedback`` writes (``lossgrader.feedback.feedback``: Chinese frame, sanitised, offline,
  size-capped, hidden tests removed, a failure page for a hand-in that could not be
  graded). An exporter rather than a preprocessor list, because ``NbGraderAPI.generate_feedback``
  forces nbgrader's ``feedback`` template whatever the configuration says.

Names are given to nbgrader as strings (the hook imports this module when called), so
loading ``nbgrader_config.py`` imports neither this module nor torch.
"""
from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
import time

try:  # nbgrader is an instructor-only dependency
    from nbgrader.preprocessors import NbGraderPreprocessor as _Preprocessor
except ImportError:  # pragma: no cover - only without nbgrader, when nothing here is used
    from nbconvert.preprocessors import Preprocessor as _Preprocessor
from nbconvert.exporters import HTMLExporter
from traitlets import Float

NO_SANDBOX = (
    "nbgrader autograde on this course grades every hand-in in lossgrader's bubblewrap sandbox "
    "(nbgrader_config.py: c.Autograde.*_preprocessors), and it cannot run here: {problem}\n"
    "Install bubblewrap (Debian/Ubuntu: sudo apt-get install bubblewrap) and make sure unprivileged "
    "user namespaces are enabled. Nothing was graded: student code is never run outside the sandbox. "
    "(`lossgrader autograde --no-sandbox` grades without it, for hand-ins you trust.)")


# nbgrader's own autograde steps as nbgrader ships them (unconfined, in the student's
# process): appended to a course copy's nbgrader_config.py by use_stock_autograde, for the
# benchmarks' anchor ("plain nbgrader") and the tests' control
STOCK_AUTOGRADE = """
# nbgrader's own autograde steps, as nbgrader ships them (lossgrader.nbgrader_plugins.STOCK_AUTOGRADE)
from nbgrader.converters import Autograde as _Autograde
c.Autograde.sanitize_preprocessors = _Autograde.class_traits()["sanitize_preprocessors"].default()
c.Autograde.autograde_preprocessors = _Autograde.class_traits()["autograde_preprocessors"].default()
"""


def use_stock_autograde(root) -> None:
    """Make ``nbgrader autograde`` in the course copy at ``root`` plain nbgrader again."""
    with open(os.path.join(root, "nbgrader_config.py"), "a", encoding="utf-8") as fh:
        fh.write(STOCK_AUTOGRADE)


class SandboxRequired(SystemExit):
    """Grading cannot be sandboxed here: the nbgrader command stops with this message."""


def require_sandbox() -> None:
    from .sandbox import bwrap_problem

    problem = bwrap_problem()
    if problem:
        raise SandboxRequired(NO_SANDBOX.format(problem=problem))


def _converter(configurable):
    """The nbgrader converter a preprocessor (parent: the exporter) or an exporter runs in."""
    node = getattr(configurable, "parent", None)
    while node is not None and not hasattr(node, "coursedir"):
        node = getattr(node, "parent", None)
    return node


def _course_root(configurable) -> str:
    converter = _converter(configurable)
    coursedir = getattr(converter, "coursedir", None)
    root = getattr(coursedir, "root", None)
    # nbgrader's converters chdir to the course root while they convert
    return os.path.abspath(root or os.getcwd())


def _run_cache(configurable) -> dict:
    """State shared by the steps of one nbgrader run (one converter): nbgrader makes new
    preprocessor instances for every notebook, and a hand-in is graded once for all of them."""
    converter = _converter(configurable)
    if converter is None:
        return {}
    cache = getattr(converter, "_lossgrader_handins", None)
    if cache is None:
        cache = {}
        converter._lossgrader_handins = cache
    return cache


class RequireSandbox(_Preprocessor):
    """nbgrader's sanitizing pass on this course: stop unless the sandbox can run."""

    def preprocess(self, nb, resources):
        require_sandbox()
        return nb, resources


class GradeInSandbox(_Preprocessor):
    """nbgrader's grading step on this course (in place of ``Execute``): the hand-in is
    graded by lossgrader's worker, sandbox and judge, as ``lossgrader autograde`` grades it,
    and the notebook becomes the judged one."""

    timeout = Float(None, allow_none=True,
                    help="Seconds for one whole hand-in (default: lossgrader autograde's, 900).").tag(config=True)
    memory_gib = Float(None, allow_none=True,
                       help="Memory limit of the hand-in's sandbox in GiB (default 4).").tag(config=True)

    def preprocess(self, nb, resources):
        import nbformat

        require_sandbox()      # also here: never grade unconfined, whatever the sanitizers were
        info = resources["nbgrader"]
        student, assignment, name = info["student"], info["assignment"], info["notebook"]
        root = _course_root(self)
        handin = _graded_handin(self, root, student, assignment)
        resources.setdefault("lossgrader", {})["handin"] = handin
        result = handin["result"]
        if result.status == "graded" and name in result.notebooks:
            judged = nbformat.reads(result.notebooks[name], as_version=4)
        else:
            judged = _failed_notebook(nb, result, handin["released"]["notebooks"].get(name))
        self.log.info("lossgrader: %s/%s/%s graded in the sandbox: %s", student, assignment, name,
                      f"{result.score:g}/{result.max_score:g}" if result.status == "graded"
                      else f"FAILED ({result.reason})")
        return judged, resources


def record_unreadable(assignment, student, notebooks, **_):
    """``c.Autograde.pre_convert_hook`` on this course: a hand-in with a file nbgrader cannot
    read (not UTF-8, not JSON, not a notebook) never reaches the grading step, since nbgrader
    reads it first and reports an error; record it as ``lossgrader autograde`` does, 0 with
    the reason, so that no earlier grade of it survives."""
    from . import gradebook
    from .worker import MAX_NOTEBOOK_BYTES, read_notebook

    root = os.path.abspath(os.getcwd())          # nbgrader's converters run in the course root
    for path in notebooks:
        name = os.path.splitext(os.path.basename(path))[0]
        try:
            if os.path.getsize(path) > MAX_NOTEBOOK_BYTES:
                break
            with open(path, "rb") as fh:
                if read_notebook(name, fh.read())[1] is not None:
                    break
        except OSError:
            break
    else:
        return None
    from .autograde import make_task
    from .worker import grade_handin

    gradebook.check_readable(gradebook.db_url(root))
    released = gradebook.released(root, assignment)
    started = time.monotonic()
    result = grade_handin(make_task(root, student, assignment, released,
                                    {"sandbox": True, "warm": False, "hide": [root]}))
    if result.status == "failed":          # a readable hand-in is graded by GradeInSandbox
        store_result(root, result, time.monotonic() - started)
    return result


def _options(root, preprocessor) -> dict:
    """The grading options ``lossgrader autograde`` uses by default (sandbox on)."""
    from . import course
    from .worker import DEFAULT_TIMEOUT

    limits = {}
    if preprocessor.memory_gib:
        limits["memory_bytes"] = int(preprocessor.memory_gib * 2 ** 30)
    return {"sandbox": True, "limits": limits, "timeout": float(preprocessor.timeout or DEFAULT_TIMEOUT),
            "cell_timeout": course.cell_timeout(root),
            "device": str(os.environ.get("LOSSGRADER_DEVICE") or "cpu"),
            "hide": [os.path.abspath(root)]}


def _graded_handin(preprocessor, root, student, assignment) -> dict:
    """{"result": HandinResult, "seconds", "recorded"} of the hand-in, graded once per run."""
    import torch

    from . import gradebook
    from .autograde import RETRIED, make_task
    from .worker import grade_handin

    cache = _run_cache(preprocessor)
    key = (root, student, assignment)
    if key in cache:
        return cache[key]
    gradebook.check_readable(gradebook.db_url(root))
    released = gradebook.released(root, assignment)
    task = make_task(root, student, assignment, released, _options(root, preprocessor))
    torch.set_num_threads(1)        # as lossgrader autograde: the judge's numbers do not depend on the path
    started = time.monotonic()
    for attempt in (1, 2):
        result = grade_handin(task)
        result.attempts = attempt
        if result.status == "graded" or not result.reason.startswith(RETRIED):
            break
    cache[key] = {"result": result, "seconds": time.monotonic() - started, "recorded": False,
                  "released": released}
    return cache[key]


FAILED_OUTPUT = "这份作业无法被自动评分，所有测试记 0 分。{reason}"


def _failed_notebook(nb, result, released_notebook):
    """The notebook nbgrader keeps for a hand-in that could not be graded: normalised
    against the release (test cells as released, outputs cleared), each test cell saying
    why (in Chinese)."""
    from nbformat.v4 import new_output

    from .feedback import reason_zh
    from .normalize import is_test_cell, normalize

    if released_notebook is not None:
        normalize(nb, released_notebook)
    text = FAILED_OUTPUT.format(reason=reason_zh(result.reason or "grading failed"))
    for cell in nb.cells:
        if cell.get("cell_type") != "code":
            continue
        cell["outputs"] = []
        cell["execution_count"] = None
        meta = cell.get("metadata", {}).get("nbgrader")
        if isinstance(meta, dict) and is_test_cell(meta):
            cell["outputs"] = [new_output("error", ename="AutogradeFailed", evalue=text,
                                          traceback=[f"AutogradeFailed: {text}"])]
    return nb


# --------------------------------------------------------------------------------------
# Storing the judge's scores
# --------------------------------------------------------------------------------------

def review_marker(cell):
    """The judge's review marker of a test cell, or None. Any value under
    ``metadata["lossgrader"]["review"]`` flags the cell: a malformed marker asks a person
    too rather than letting an automatic score through."""
    meta = cell.get("metadata", {}).get("lossgrader")
    if not isinstance(meta, dict) or meta.get("review") in (None, False):
        return None
    review = meta["review"]
    if not isinstance(review, dict):
        return {"reason": f"malformed review marker ({type(review).__name__})", "auto_score": None}
    auto = review.get("auto_score")
    ok = isinstance(auto, (int, float)) and not isinstance(auto, bool) and math.isfinite(auto)
    return {"reason": str(review.get("reason", "")), "auto_score": float(auto) if ok else None}


def review_markers(result) -> dict:
    """{grade_id: marker} of the test cells of a graded result's notebooks."""
    import nbformat

    from .normalize import is_test_cell

    found = {}
    if result.status != "graded":
        return found
    for text in result.notebooks.values():
        try:
            nb = nbformat.reads(text, as_version=4)
        except Exception:
            continue
        for cell in nb.cells:
            meta = cell.get("metadata", {}).get("nbgrader")
            if not (isinstance(meta, dict) and is_test_cell(meta) and isinstance(meta.get("grade_id"), str)):
                continue
            marker = review_marker(cell)
            if marker is not None:
                found[meta["grade_id"]] = marker
    return found


def store_result(root, result, seconds, log=None) -> dict:
    """Write one graded hand-in as ``lossgrader autograde`` writes it (``autograde.record``:
    gradebook transaction, autograded/, status entry, log), cells marked for review stored
    with auto score 0.0 and needs_manual_grade. Returns the review markers applied."""
    from . import course, gradebook
    from .autograde import record

    markers = review_markers(result)
    for gid in markers:
        if gid in result.scores:
            result.scores[gid] = 0.0       # no marks until a person decides
    url = gradebook.db_url(root)
    record(root, result, course.read_status(root), seconds, url)
    if markers:
        _flag_for_review(url, result, markers)
        if log is not None:
            for gid, marker in sorted(markers.items()):
                log.warning("lossgrader: %s/%s %s needs a manual grade: %s (automatic score %s)",
                            result.student, result.assignment, gid, marker["reason"],
                            "?" if marker["auto_score"] is None else f"{marker['auto_score']:g}")
    return markers


def _flag_for_review(url, result, markers) -> None:
    from nbgrader.api import Gradebook

    with Gradebook(url) as gb:
        submission = gb.find_submission(result.assignment, result.student)
        for notebook in submission.notebooks:
            for grade in notebook.grades:
                if grade.name in markers:
                    grade.auto_score = 0.0
                    grade.needs_manual_grade = True
        gb.db.commit()


class SaveJudgedGrades(_Preprocessor):
    """nbgrader's score-saving step on this course (in place of ``SaveAutoGrades``): stores
    the scores ``GradeInSandbox`` got from the judge, once per hand-in, exactly as
    ``lossgrader autograde`` stores them; review markers are honoured."""

    def preprocess(self, nb, resources):
        handin = resources.get("lossgrader", {}).get("handin")
        if handin is None:
            raise RuntimeError("SaveJudgedGrades stores what GradeInSandbox judged: put "
                               "lossgrader.nbgrader_plugins.GradeInSandbox before it in "
                               "c.Autograde.autograde_preprocessors (nbgrader_config.py)")
        if not handin["recorded"]:
            result = handin["result"]
            root = _course_root(self)
            # record() rewrites autograded/<student>/<assignment>/: keep the other files nbgrader
            # copied there (timestamp.txt, submission_secret.txt, the hand-in's and the
            # instructor's data files), which generate_feedback and release_feedback read
            with _other_files_kept(_autograded_dir(self, root, result.student, result.assignment)):
                store_result(root, result, handin["seconds"], log=self.log)
            handin["recorded"] = True
        return nb, resources


def _autograded_dir(configurable, root, student, assignment) -> str:
    coursedir = getattr(_converter(configurable), "coursedir", None)
    if coursedir is not None:
        return os.path.abspath(coursedir.format_path(coursedir.autograded_directory, student, assignment))
    return os.path.join(root, "autograded", student, assignment)


@contextlib.contextmanager
def _other_files_kept(dest):
    """Files of ``dest`` other than notebooks are moved aside while the body runs and put
    back where it left no file of that name."""
    files = []
    if os.path.isdir(dest) and not os.path.islink(dest):
        for folder, dirs, names in os.walk(dest):
            files += [os.path.relpath(os.path.join(folder, n), dest) for n in names if not n.endswith(".ipynb")]
    if not files:
        yield
        return
    aside = tempfile.mkdtemp(prefix=".lossgrader-kept-", dir=os.path.dirname(dest))
    try:
        for rel in files:
            os.makedirs(os.path.dirname(os.path.join(aside, rel)), exist_ok=True)
            os.replace(os.path.join(dest, rel), os.path.join(aside, rel))
        yield
    finally:
        for rel in files:
            target = os.path.join(dest, rel)
            if os.path.lexists(os.path.join(aside, rel)) and not os.path.lexists(target):
                os.makedirs(os.path.dirname(target), exist_ok=True)
                os.replace(os.path.join(aside, rel), target)
        shutil.rmtree(aside, ignore_errors=True)


# --------------------------------------------------------------------------------------
# Feedback
# --------------------------------------------------------------------------------------

class FeedbackExporter(HTMLExporter):
    """nbgrader generate_feedback's exporter on this course: the page is the one ``lossgrader
    feedback`` writes for the hand-in (``lossgrader.feedback.feedback``, called for this
    student and assignment: its template, preprocessors and size cap, formulas typeset
    as MathML in the page, the failure page of a hand-in that could not be graded).
    nbgrader's template and preprocessors, which show the hidden tests, are not used."""

    def from_notebook_node(self, nb, resources=None, **kw):
        from .feedback import feedback

        resources = self._init_resources(resources)
        info = resources.get("nbgrader") or {}
        student, assignment, name = info.get("student"), info.get("assignment"), info.get("notebook")
        if not (student and assignment and name):
            raise RuntimeError("FeedbackExporter renders feedback for nbgrader generate_feedback only "
                               "(no student/assignment/notebook in its resources)")
        pages = feedback(_course_root(self), [assignment], [student], progress=False)
        page = next((p for p in pages if os.path.basename(p) == name + ".html"), None)
        if page is None:
            raise RuntimeError(f"no feedback page for {student}/{assignment}/{name}: lossgrader writes the "
                               f"feedback of the hand-ins in submitted/, and submitted/{student}/{assignment}/ "
                               "is not there")
        with open(page, encoding="utf-8") as fh:
            body = fh.read()
        resources["output_extension"] = self.file_extension
        return body, resources
