"""Instructor pipeline over nbgrader: register, autograde, feedback, export, demo.

The repository root is the nbgrader course directory (``nbgrader_config.py``,
``solutions/`` as source directory, ``exercises/`` as release directory,
``submitted/<student>/<assignment>/`` for hand-ins, SQLite ``gradebook.db``).

What this module adds to plain ``nbgrader autograde`` (see docs/instructor.md):

* ``NormalizeSubmission`` (first sanitize preprocessor): nbgrader metadata in a
  submission is rebuilt from the gradebook.  Cells claiming grade ids the
  gradebook does not know lose their nbgrader metadata (nbgrader would abort the
  whole notebook on them), tampered points/flags are reset, and deleted test
  cells or read-only cells are put back where they were (nbgrader's own
  ``add_missing_cells`` is off by default and crashes when the neighbouring
  answer cell was deleted as well).
* ``ResilientExecute`` (replaces nbgrader's ``Execute``): when the kernel dies
  in a cell (``os._exit``, ``exit()``, a crash) or stops answering even to an
  interrupt, that cell gets an error output (so a test cell scores 0), a fresh
  kernel is started, the cells that ran before are replayed, and execution goes
  on with the next cell.  nbgrader alone fails the whole notebook.
* Each submission is autograded in a worker process under a wall-clock limit;
  a worker that exceeds it is killed together with its kernels and the batch
  goes on.  A submission nbgrader cannot grade (not valid JSON, time limit,
  anything else) gets an explicit 0 for every test cell in the gradebook and a
  reason in ``lossgrader-status.json`` and in the exported CSV.
"""
import contextlib
import copy
import csv
import datetime
import glob
import html
import json
import logging
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
import types

from traitlets import Bool, Integer, Unicode

STATUS_FILE = "lossgrader-status.json"
SCRATCH_DIR = ".lossgrader"          # scratch release directory used to register assignments
GRADES_CSV = "grades.csv"
DEFAULT_SUBMISSION_TIMEOUT = 900      # seconds for one (student, assignment), kernel restarts included


# --------------------------------------------------------------------------------------
# nbgrader preprocessors (importable by name from nbgrader_config.py as well)
# --------------------------------------------------------------------------------------

try:  # nbgrader is an instructor-only dependency; students never import this part
    from nbgrader.preprocessors import NbGraderPreprocessor
    from nbgrader.preprocessors.execute import Execute
except ImportError:  # pragma: no cover - exercised only without nbgrader installed
    NbGraderPreprocessor = object
    Execute = None


def _canonical_nbgrader_metadata(kind, source_cell, max_score=None):
    meta = {
        "grade": kind in ("grade", "grade+solution"),
        "grade_id": source_cell.name,
        "locked": bool(source_cell.locked),
        "schema_version": 3,
        "solution": kind in ("solution", "grade+solution"),
        "task": kind == "task",
        "checksum": source_cell.checksum,
        "cell_type": source_cell.cell_type,
    }
    if max_score is not None:
        meta["points"] = float(max_score)
    return meta


_HIDDEN_TESTS = re.compile(r"^[ \t]*### BEGIN HIDDEN TESTS.*?^[ \t]*### END HIDDEN TESTS[ \t]*\n?",
                           re.MULTILINE | re.DOTALL)
_DEFINED = re.compile(r"^(?:def|class)[ \t]+([A-Za-z_][A-Za-z0-9_]*)", re.MULTILINE)


class NormalizeSubmission(NbGraderPreprocessor):
    """Rebuild a submission's nbgrader metadata from the gradebook (see module docstring)."""

    def preprocess(self, nb, resources):
        from nbformat.v4 import new_code_cell, new_markdown_cell
        from nbgrader.api import Gradebook

        info = resources["nbgrader"]
        with Gradebook(info["db_url"]) as gb:
            notebook = gb.find_notebook(info["notebook"], info["assignment"])
            grade_scores = {c.name: c.max_score for c in notebook.grade_cells}
            solution_ids = {c.name for c in notebook.solution_cells}
            task_scores = {c.name: c.max_score for c in notebook.task_cells}
            sources = [(c.name, c.cell_type, c.locked, c.checksum, c.source) for c in notebook.source_cells]
            # source_cells come without a stable order: use the order of the released notebook
            order = self._release_order(info)
            known = {}
            for name, cell_type, locked, checksum, source in sources:
                # a light snapshot, usable after the gradebook session closes
                s = types.SimpleNamespace(name=name, cell_type=cell_type, locked=locked,
                                          checksum=checksum, source=source)
                if name in grade_scores and name in solution_ids:
                    kind, score = "grade+solution", grade_scores[name]
                elif name in grade_scores:
                    kind, score = "grade", grade_scores[name]
                elif name in solution_ids:
                    kind, score = "solution", None
                elif name in task_scores:
                    kind, score = "task", task_scores[name]
                else:
                    kind, score = "locked", None
                known[name] = (kind, s, score)

        self._recover_stripped(nb, known)

        seen = set()
        for cell in nb.cells:
            meta = cell.get("metadata", {}).get("nbgrader")
            if meta is None:
                continue
            grade_id = meta.get("grade_id") if isinstance(meta, dict) else None
            if not isinstance(grade_id, str) or grade_id not in known or grade_id in seen:
                # forged, corrupted or duplicated nbgrader metadata: a plain cell from now on
                del cell.metadata["nbgrader"]
                if grade_id is not None:
                    self.log.warning("Dropping nbgrader metadata of unknown or duplicate cell %r", grade_id)
                continue
            kind, s, score = known[grade_id]
            cell.metadata["nbgrader"] = _canonical_nbgrader_metadata(kind, s, score)
            seen.add(grade_id)

        # Put back test cells and read-only cells that were deleted, after the closest
        # preceding cell (in the released order) that is still there.
        ordered = sorted(known, key=lambda n: order.get(n, len(order)))
        for pos, name in enumerate(ordered):
            kind, s, score = known[name]
            if name in seen or not (kind in ("grade", "task") or s.locked):
                continue
            self.log.warning("Restoring deleted cell %r", name)
            if s.cell_type == "code":
                cell = new_code_cell(s.source)
            else:
                cell = new_markdown_cell(s.source)
            cell.metadata["nbgrader"] = _canonical_nbgrader_metadata(kind, s, score)
            cell.metadata["deletable"] = False
            cell.metadata["editable"] = False
            insert_at = 0
            for prev in reversed(ordered[:pos]):
                idx = self._index_of(nb, prev)
                if idx is not None:
                    insert_at = idx + 1
                    break
            nb.cells.insert(insert_at, cell)
            seen.add(name)
        return nb, resources

    def _recover_stripped(self, nb, known):
        """Give back their grade ids to cells that lost their nbgrader metadata.

        Some editors (and copying the code into a fresh notebook) drop cell metadata.  A
        read-only cell still holding its released source, and an answer cell defining the
        function or class its released version defines, get their id back, so that the
        test cells are restored and re-inserted where they belong."""
        present = set()
        for cell in nb.cells:
            meta = cell.get("metadata", {}).get("nbgrader")
            if isinstance(meta, dict) and isinstance(meta.get("grade_id"), str):
                present.add(meta["grade_id"])
        missing = [name for name in known if name not in present]
        if not missing:
            return
        for cell in nb.cells:
            if "nbgrader" in cell.get("metadata", {}) or not missing:
                continue
            source = cell.get("source", "")
            source = "".join(source) if isinstance(source, list) else str(source)
            for name in list(missing):
                kind, s, _ = known[name]
                if cell.cell_type != s.cell_type:
                    continue
                if s.locked or kind in ("grade", "task"):
                    matched = source.strip() == _HIDDEN_TESTS.sub("", s.source).strip()
                elif kind == "solution" and cell.cell_type == "code":
                    names = set(_DEFINED.findall(s.source))
                    matched = bool(names) and names <= set(_DEFINED.findall(source))
                else:
                    matched = False
                if matched:
                    cell.metadata["nbgrader"] = {"grade_id": name}
                    missing.remove(name)
                    self.log.warning("Recovered the nbgrader id %r of a cell without metadata", name)
                    break

    @staticmethod
    def _index_of(nb, grade_id):
        for i, cell in enumerate(nb.cells):
            meta = cell.get("metadata", {}).get("nbgrader")
            if isinstance(meta, dict) and meta.get("grade_id") == grade_id:
                return i
        return None

    def _release_order(self, info):
        """grade_id -> position in the instructor notebook (solutions/), used to re-insert cells."""
        import nbformat

        course_root = os.path.dirname(os.path.abspath(info["db_url"].replace("sqlite:///", "", 1)))
        path = os.path.join(course_root, _source_dir(course_root), info["assignment"], info["notebook"] + ".ipynb")
        order = {}
        try:
            nb = nbformat.read(path, as_version=4)
        except Exception:
            return order
        for i, cell in enumerate(nb.cells):
            meta = cell.get("metadata", {}).get("nbgrader")
            if isinstance(meta, dict) and meta.get("grade_id"):
                order[meta["grade_id"]] = i
        return order


KERNEL_DIED_MESSAGE = (
    "评分时内核在执行这个单元时退出或失去响应（例如调用了 os._exit()、exit()、进程崩溃，"
    "或者一个无法中断的死循环）。本单元记 0 分；评分器重启了内核，重新运行了前面的单元，并继续评分后面的单元。"
)


# Run silently in the kernel before every test cell (never shown, never in the notebook):
# undo the import-system tricks that would hand the test cell a fake lossgrader.  The test
# cells then drop the lossgrader modules from sys.modules and import a fresh lossgrader
# themselves (hidden part of every test cell), which this guard makes the genuine one.  @GENUINE@ is the package directory the
# grader itself imports; @FINDERS@ the import finders the kernel had before any cell ran.
GUARD_CODE = r"""
def __lossgrader_guard():
    import os, sys
    genuine = os.path.realpath(@GENUINE@)
    allowed = @FINDERS@

    def shadows(entry):
        if not isinstance(entry, str):
            return True
        base = os.path.abspath(entry or ".")
        for candidate in (os.path.join(base, "lossgrader"), os.path.join(base, "lossgrader.py")):
            if os.path.exists(candidate) and os.path.realpath(candidate) != genuine:
                return True
        return False

    sys.path[:] = [p for p in sys.path if not shadows(p)]

    def finder_name(f):
        kind = f if isinstance(f, type) else type(f)
        return "%s.%s" % (getattr(kind, "__module__", "?"), getattr(kind, "__qualname__", "?"))

    roots = [os.path.realpath(p) + os.sep for p in {sys.prefix, sys.base_prefix, sys.exec_prefix}]

    def legitimate(f):
        # a finder the kernel started with, or one installed by a library of the Python installation
        if finder_name(f) in allowed:
            return True
        kind = f if isinstance(f, type) else type(f)
        module = sys.modules.get(getattr(kind, "__module__", None))
        path = os.path.realpath(getattr(module, "__file__", None) or "/nonexistent")
        return any(path.startswith(r) for r in roots)

    sys.meta_path[:] = [f for f in sys.meta_path if legitimate(f)]
    sys.path_importer_cache.clear()
    # The previous test cell imported a fresh lossgrader; point the notebook's `check` at it, so
    # that the visible check line does not mix the setup cell's (older) modules with new ones.
    module = sys.modules.get("lossgrader")
    module_file = os.path.realpath(getattr(module, "__file__", None) or "/nonexistent")
    if module_file.startswith(genuine + os.sep) and callable(getattr(module, "check", None)):
        try:
            get_ipython().user_ns["check"] = module.check
        except Exception:
            pass
    try:
        shell = get_ipython()
        shell.ast_node_interactivity = "last_expr"     # the test cell's last expression is its score
        formatters = shell.display_formatter.formatters.values()
    except Exception:
        formatters = []
    for formatter in formatters:
        for key in [k for k in list(formatter.deferred_printers) if str(k[0]).startswith("lossgrader")]:
            del formatter.deferred_printers[key]
        for key in [k for k in list(formatter.type_printers)
                    if str(getattr(k, "__module__", "")).startswith("lossgrader")]:
            del formatter.type_printers[key]
__lossgrader_guard()
del __lossgrader_guard
"""
FINDERS_EXPRESSION = ("[('%s.%s' % (getattr(f if isinstance(f, type) else type(f), '__module__', '?'), "
                      "getattr(f if isinstance(f, type) else type(f), '__qualname__', '?'))) "
                      "for f in __import__('sys').meta_path]")


def _genuine_lossgrader_dir():
    import importlib.util

    spec = importlib.util.find_spec("lossgrader")
    return os.path.dirname(os.path.abspath(spec.origin))


if Execute is not None:
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from nbclient.client import NotebookClient
    from nbformat import NotebookNode

    class ResilientExecute(Execute):
        """nbgrader's Execute that survives a dying or unresponsive kernel (see module docstring)."""

        max_kernel_restarts = Integer(
            8, help="Give up on the notebook after this many kernel restarts").tag(config=True)
        lossgrader_guard = Bool(
            True, help="Before each test cell, silently undo import tricks that fake lossgrader").tag(config=True)

        def preprocess(self, nb, resources=None, km=None):
            NotebookClient.__init__(self, nb, km)
            self.reset_execution_trackers()
            self._check_assign_resources(resources)
            done = []          # code cells that ran to completion in the current kernel's history
            index = 0
            restarts = 0
            while True:
                replaying = None
                try:
                    with self.setup_kernel():
                        info_msg = self.wait_for_reply(self.kc.kernel_info())
                        self.nb.metadata["language_info"] = info_msg["content"]["language_info"]
                        guard = self._prepare_guard()
                        for replay in list(done):
                            replaying = replay
                            self.execute_cell(copy.deepcopy(self.nb.cells[replay]), replay, store_history=True)
                        replaying = None
                        while index < len(self.nb.cells):
                            cell = self.nb.cells[index]
                            if guard and cell.cell_type == "code" and cell.metadata.get("nbgrader", {}).get("grade"):
                                self._silent(guard)
                            self.preprocess_cell(cell, resources, index)
                            if cell.cell_type == "code" and not self._timed_out(cell):
                                done.append(index)
                            index += 1
                    break
                except (DeadKernelError, CellTimeoutError) as exc:
                    restarts += 1
                    if restarts > self.max_kernel_restarts:
                        raise
                    if replaying is not None:
                        # a cell that ran before does not survive a replay: leave it out from now on
                        done.remove(replaying)
                        self.log.warning("Kernel died replaying cell %d; leaving it out", replaying)
                        continue
                    self.log.warning("Kernel died or hung in cell %d (%s); restarting it", index, exc.__class__.__name__)
                    self._mark_dead(self.nb.cells[index], exc)
                    index += 1
            self.set_widgets_metadata()
            return self.nb, self.resources

        def _silent(self, code, user_expressions=None):
            """Run code in the kernel without recording it anywhere; returns the reply content."""
            msg_id = self.kc.execute(code, silent=True, store_history=False, allow_stdin=False,
                                     stop_on_error=False, user_expressions=user_expressions or {})
            reply = self.wait_for_reply(msg_id)
            return reply["content"] if reply else {}

        def _prepare_guard(self):
            """The guard code for this kernel, or "" when the guard cannot be set up."""
            import ast

            if not self.lossgrader_guard:
                return ""
            try:
                content = self._silent("", {"finders": FINDERS_EXPRESSION})
                text = content["user_expressions"]["finders"]["data"]["text/plain"]
                finders = sorted(set(ast.literal_eval(text)))
                return (GUARD_CODE.replace("@GENUINE@", repr(_genuine_lossgrader_dir()))
                        .replace("@FINDERS@", repr(finders)))
            except Exception as exc:
                self.log.warning("lossgrader guard unavailable: %s", exc)
                return ""

        @staticmethod
        def _timed_out(cell):
            return any(o.get("output_type") == "error" and o.get("ename") == "CellTimeoutError"
                       for o in cell.get("outputs", []))

        @staticmethod
        def _mark_dead(cell, exc):
            if cell.cell_type != "code":
                return
            cell.outputs.append(NotebookNode(
                output_type="error",
                ename=exc.__class__.__name__,
                evalue=KERNEL_DIED_MESSAGE,
                traceback=[f"\x1b[0;31m{exc.__class__.__name__}\x1b[0m: {KERNEL_DIED_MESSAGE}"],
            ))
else:  # pragma: no cover
    ResilientExecute = None


NO_SCORE_MESSAGE = ("这个测试单元没有显示 lossgrader 的评分结果（可能是前面的代码改变了 Jupyter 的显示方式），"
                    "因此记 0 分。")


class ValidateTestOutputs(NbGraderPreprocessor):
    """Make a test cell's score come from the lossgrader Report it displays, and only from it.

    nbgrader reads the first execute_result of a test cell as partial credit and gives FULL
    credit when that output is not a number, is negative, or when the cell shows no result at
    all; a score above the cell's points aborts the whole notebook.  Student code can produce
    any of those (display hooks, ``ast_node_interactivity = "none"``, formatters).  In this
    course every test cell ends with ``check(...)``, whose display carries the score as text and
    the feedback as HTML marked ``lossgrader-report``.  So: every execute_result that is not such
    a Report display with a score in [0, points] counts as 0, several results count as the
    lowest one, and a test cell without any result (and without an error) gets an error: 0."""

    report_marker = Unicode("lossgrader-report", help="Text that the HTML of a genuine Report contains").tag(config=True)

    def preprocess_cell(self, cell, resources, index):
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if cell.cell_type != "code" or not meta.get("grade") or meta.get("solution"):
            return cell, resources
        from nbformat import NotebookNode

        max_points = float(meta.get("points", 0))
        outputs = cell.get("outputs", [])
        results = [o for o in outputs if o.get("output_type") == "execute_result"]
        failed = any(o.get("output_type") == "error" or (o.get("output_type") == "stream" and o.get("name") == "stderr")
                     for o in outputs)
        if not results:
            if not failed:
                cell.outputs.append(NotebookNode(output_type="error", ename="NoScore", evalue=NO_SCORE_MESSAGE,
                                                 traceback=[f"\x1b[0;31mNoScore\x1b[0m: {NO_SCORE_MESSAGE}"]))
            return cell, resources
        scores = []
        for out in results:
            data = out.get("data", {})
            text = data.get("text/plain", "")
            text = "".join(text) if isinstance(text, list) else str(text)
            page = data.get("text/html", "")
            page = "".join(page) if isinstance(page, list) else str(page)
            try:
                value = float(text)
            except ValueError:
                value = None
            if value is None or not (0.0 <= value <= max_points) or self.report_marker not in page:
                self.log.warning("Test cell %s: output %r is not a lossgrader score; counted as 0",
                                 meta.get("grade_id"), text[:40])
                value = 0.0
            scores.append(value)
        score = min(scores)
        for out in results:
            out.setdefault("data", {})["text/plain"] = repr(float(score))
        return cell, resources


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_TB_SOURCE_LINE = re.compile(r"^\s*(?:-+>\s*)?\d+\s(.*)$")


class ScrubHiddenTests(NbGraderPreprocessor):
    """Feedback: remove the hidden tests' source lines that error tracebacks quote as context
    (nbgrader's ClearHiddenTests, which runs after this, removes them from the cell itself)."""

    def preprocess_cell(self, cell, resources, index):
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if cell.cell_type != "code" or not meta.get("grade"):
            return cell, resources
        hidden = set()
        for block in re.findall(r"### BEGIN HIDDEN TESTS.*?### END HIDDEN TESTS", cell.source, re.DOTALL):
            hidden |= {line.strip() for line in block.splitlines() if line.strip()}
        if not hidden:
            return cell, resources
        for out in cell.get("outputs", []):
            if out.get("output_type") != "error":
                continue
            cleaned = []
            for entry in out.get("traceback", []):
                lines = []
                for line in entry.split("\n"):
                    m = _TB_SOURCE_LINE.match(_ANSI.sub("", line))
                    if m and m.group(1).strip() in hidden:
                        continue
                    lines.append(line)
                cleaned.append("\n".join(lines))
            out["traceback"] = cleaned
        return cell, resources


SANITIZE_PREPROCESSORS = [
    "lossgrader.pipeline.NormalizeSubmission",
    "nbgrader.preprocessors.ClearOutput",
    "nbgrader.preprocessors.DeduplicateIds",
    "nbgrader.preprocessors.OverwriteKernelspec",
    "nbgrader.preprocessors.OverwriteCells",
    "nbgrader.preprocessors.CheckCellMetadata",
]
AUTOGRADE_PREPROCESSORS = [
    "lossgrader.pipeline.ResilientExecute",
    "nbgrader.preprocessors.IgnorePattern",
    "lossgrader.pipeline.ValidateTestOutputs",
    "nbconvert.preprocessors.ClearMetadataPreprocessor",
    "nbgrader.preprocessors.LimitOutput",
    "nbgrader.preprocessors.SaveAutoGrades",
    "nbgrader.preprocessors.AssignLatePenalties",
    "nbgrader.preprocessors.CheckCellMetadata",
]
FEEDBACK_PREPROCESSORS = [
    "nbgrader.preprocessors.GetGrades",
    "nbconvert.preprocessors.CSSHTMLHeaderPreprocessor",
    "lossgrader.pipeline.ScrubHiddenTests",
    "nbgrader.preprocessors.ClearHiddenTests",
]


# --------------------------------------------------------------------------------------
# Course directory helpers
# --------------------------------------------------------------------------------------

def find_course_root(start=None):
    """The directory holding nbgrader_config.py: start (default cwd) or one of its parents."""
    path = os.path.abspath(start or os.getcwd())
    while True:
        if os.path.isfile(os.path.join(path, "nbgrader_config.py")):
            return path
        parent = os.path.dirname(path)
        if parent == path:
            raise SystemExit(f"nbgrader_config.py not found in {start or os.getcwd()} or its parents: "
                             "run lossgrader from the course repository")
        path = parent


def load_config(root, cell_timeout=None):
    """nbgrader configuration of the course at root, with the pipeline's preprocessors."""
    from traitlets.config.loader import PyFileConfigLoader

    cfg = PyFileConfigLoader("nbgrader_config.py", path=root).load_config()
    cfg.CourseDirectory.root = root
    cfg.Autograde.sanitize_preprocessors = list(SANITIZE_PREPROCESSORS)
    cfg.Autograde.autograde_preprocessors = list(AUTOGRADE_PREPROCESSORS)
    cfg.GenerateFeedback.preprocessors = list(FEEDBACK_PREPROCESSORS)
    if cell_timeout:
        cfg.Execute.timeout = int(cell_timeout)
        cfg.ResilientExecute.timeout = int(cell_timeout)
    return cfg


def _source_dir(root):
    return _dir_setting(root, "source_directory", "source")


def _dir_setting(root, name, default):
    """Read a CourseDirectory directory setting without importing nbgrader (cheap)."""
    cache = _dir_setting.__dict__.setdefault("cache", {})
    key = (root, name)
    if key not in cache:
        try:
            cfg = load_config(root)
            value = cfg.CourseDirectory.get(name, default)
        except Exception:
            value = default
        cache[key] = value if isinstance(value, str) else default
    return cache[key]


def assignments(root):
    """Assignment ids: directories of the source directory holding <id>/<id>.ipynb."""
    src = os.path.join(root, _source_dir(root))
    if not os.path.isdir(src):
        return []
    return sorted(d for d in os.listdir(src) if os.path.isfile(os.path.join(src, d, d + ".ipynb")))


def submissions(root, only_assignments=None, only_students=None):
    """(student, assignment) pairs found in submitted/."""
    sub = os.path.join(root, "submitted")
    pairs = []
    if not os.path.isdir(sub):
        return pairs
    known = set(assignments(root))
    for student in sorted(os.listdir(sub)):
        if only_students and student not in only_students:
            continue
        sdir = os.path.join(sub, student)
        if not os.path.isdir(sdir) or student.startswith("."):
            continue
        for aid in sorted(os.listdir(sdir)):
            if aid in known and os.path.isdir(os.path.join(sdir, aid)) and (
                    not only_assignments or aid in only_assignments):
                pairs.append((student, aid))
    return pairs


def db_url(root):
    return "sqlite:///" + os.path.join(root, "gradebook.db")


def read_status(root):
    path = os.path.join(root, STATUS_FILE)
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return {}


def write_status(root, status):
    path = os.path.join(root, STATUS_FILE)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(status, fh, ensure_ascii=False, indent=1, sort_keys=True)
    os.replace(tmp, path)


@contextlib.contextmanager
def _quiet_logger(name):
    """A logger whose records are collected (returned list) rather than printed."""
    records = []

    class _Collect(logging.Handler):
        def emit(self, record):
            try:
                records.append(self.format(record))
            except Exception:
                pass

    log = logging.getLogger(name)
    log.propagate = False
    log.setLevel(logging.INFO)
    handler = _Collect()
    handler.setFormatter(logging.Formatter("[%(levelname)s] %(message)s"))
    log.addHandler(handler)
    try:
        yield log, records
    finally:
        log.removeHandler(handler)


# --------------------------------------------------------------------------------------
# Gradebook operations (run in the calling process)
# --------------------------------------------------------------------------------------

def registered_assignments(root):
    from nbgrader.api import Gradebook

    if not os.path.exists(os.path.join(root, "gradebook.db")):
        return set()
    with Gradebook(db_url(root)) as gb:
        return {a.name for a in gb.assignments if a.notebooks}


def register(root, assignment_ids, force=False):
    """Record assignments (notebooks, test cells, checksums) in the gradebook.

    Runs nbgrader's generate_assignment with the course configuration but writes the
    generated notebooks to a scratch directory: exercises/ is produced by
    tools/generate_exercises.py and must not be touched here."""
    from nbgrader.converters import GenerateAssignment
    from nbgrader.coursedir import CourseDirectory

    done = []
    have = registered_assignments(root)
    for aid in assignment_ids:
        if aid in have and not force:
            continue
        cfg = load_config(root)
        cfg.CourseDirectory.release_directory = os.path.join(SCRATCH_DIR, "release")
        cfg.CourseDirectory.assignment_id = aid
        with _quiet_logger("lossgrader.register") as (log, records):
            coursedir = CourseDirectory(config=cfg)
            converter = GenerateAssignment(coursedir=coursedir, config=cfg, log=log)
            converter.force = True
            try:
                converter.start()
            except Exception as exc:
                raise RuntimeError(f"registering {aid} in the gradebook failed: {exc}\n" + "\n".join(records[-20:]))
        done.append(aid)
    return done


def submission_scores(gb, assignment_id, student_id):
    """(score, max_score, {grade_id: score}) of one submission; None when there is none."""
    from nbgrader.api import MissingEntry

    try:
        sub = gb.find_submission(assignment_id, student_id)
    except MissingEntry:
        return None
    cells = {}
    for nb in sub.notebooks:
        for g in nb.grades:
            cells[g.name] = g.score
    return float(sub.score or 0.0), float(sub.max_score or 0.0), cells


def zero_submission(root, assignment_id, student_id):
    """Explicit 0 for every test cell of a submission nbgrader could not autograde."""
    from nbgrader.api import Gradebook

    with Gradebook(db_url(root)) as gb:
        gb.update_or_create_student(student_id)
        sub = gb.update_or_create_submission(assignment_id, student_id)
        for nb in sub.notebooks:
            for grade in nb.grades:
                grade.auto_score = 0.0
                grade.needs_manual_grade = False
        gb.db.commit()


# --------------------------------------------------------------------------------------
# Worker process: runs nbgrader autograde for one submission at a time
# --------------------------------------------------------------------------------------

def _worker_main(root, cell_timeout):
    """Read {"student", "assignment"} JSON lines on stdin, answer one JSON line each on stdout."""
    from nbgrader.converters import Autograde
    from nbgrader.coursedir import CourseDirectory

    out = sys.stdout
    sys.stdout = sys.stderr            # nothing else may write on the protocol channel
    os.chdir(root)
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        job = json.loads(line)
        cfg = load_config(root, cell_timeout)
        cfg.CourseDirectory.assignment_id = job["assignment"]
        cfg.CourseDirectory.student_id = job["student"]
        with _quiet_logger("lossgrader.autograde") as (log, records):
            coursedir = CourseDirectory(config=cfg)
            converter = Autograde(coursedir=coursedir, config=cfg, log=log)
            converter.force = True
            converter.create_student = True
            try:
                converter.start()
                ok, error = True, ""
            except BaseException:
                ok, error = False, traceback.format_exc()
        reply = {"ok": ok, "reason": _failure_reason(records, error) if not ok else "",
                 "log": "\n".join(records[-200:])}
        out.write(json.dumps(reply) + "\n")
        out.flush()


def _failure_reason(records, error):
    """One line saying why nbgrader could not autograde a submission."""
    text = "\n".join(records) + "\n" + error
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    interesting = ("Error", "Exception", "Invalid", "failed to validate", "Unreadable", "died", "Timeout")
    for l in reversed(lines):
        if l.startswith("[") and "There was an error processing" in l:
            continue
        if any(k in l for k in interesting) and not l.startswith("File ") and not l.startswith("Traceback"):
            return l.replace("[ERROR] ", "")[:300]
    return (lines[-1] if lines else "autograde failed")[:300]


def _descendants(pid):
    """Process ids of all descendants of pid (Linux /proc, falls back to ps)."""
    children = {}
    try:
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as fh:
                        ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
                    children.setdefault(ppid, []).append(int(entry))
                except (OSError, ValueError, IndexError):
                    pass
    except OSError:
        try:
            out = subprocess.run(["ps", "-A", "-o", "pid=,ppid="], capture_output=True, text=True).stdout
            for line in out.splitlines():
                p, pp = line.split()
                children.setdefault(int(pp), []).append(int(p))
        except Exception:
            return []
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class Worker:
    """A ``python -m lossgrader.pipeline _worker`` child with a per-job wall-clock limit."""

    def __init__(self, root, cell_timeout=None):
        self.root, self.cell_timeout = root, cell_timeout
        self.proc = None
        self._lines = None

    def _start(self):
        cmd = [sys.executable, "-m", "lossgrader.pipeline", "_worker", self.root]
        if self.cell_timeout:
            cmd.append(str(int(self.cell_timeout)))
        os.makedirs(os.path.join(self.root, SCRATCH_DIR), exist_ok=True)
        with open(os.path.join(self.root, SCRATCH_DIR, "worker.log"), "a", encoding="utf-8") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=log, text=True, cwd=self.root,
                                         start_new_session=True)
        self._lines = queue.Queue()

        def pump(stream, q):
            for line in stream:
                q.put(line)
            q.put(None)

        threading.Thread(target=pump, args=(self.proc.stdout, self._lines), daemon=True).start()
        ready = self._read(600)
        if not (ready and ready.get("ready")):
            self.kill()
            raise RuntimeError("the autograde worker did not start: see " +
                               os.path.join(self.root, SCRATCH_DIR, "worker.log"))

    def _read(self, timeout):
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            return "timeout"
        if line is None:
            return None
        try:
            return json.loads(line)
        except ValueError:
            return None

    def run(self, student, assignment, timeout):
        """Autograde one submission; returns the worker's reply or a failure dict."""
        job = json.dumps({"student": student, "assignment": assignment}) + "\n"
        for attempt in range(2):
            if self.proc is None or self.proc.poll() is not None:
                self._start()
            try:
                self.proc.stdin.write(job)
                self.proc.stdin.flush()
                break
            except OSError:            # the worker died between two jobs: start a new one
                self.kill()
                if attempt:
                    return {"ok": False, "reason": "the autograde worker process died"}
        reply = self._read(timeout)
        if reply == "timeout":
            self.kill()
            return {"ok": False, "reason": f"time limit exceeded ({timeout:.0f} s for the whole notebook); "
                                           "the grader process and its kernels were killed"}
        if reply is None:
            self.kill()
            return {"ok": False, "reason": "the autograde worker process died"}
        return reply

    def kill(self):
        if self.proc is None:
            return
        pids = _descendants(self.proc.pid) + [self.proc.pid]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            self.proc.wait(timeout=10)
        except Exception:
            pass
        self.proc = None

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except Exception:
                self.kill()
        self.proc = None


# --------------------------------------------------------------------------------------
# Pipeline steps
# --------------------------------------------------------------------------------------

class Progress:
    """A one-line progress bar on stderr (plain lines when stderr is not a terminal)."""

    def __init__(self, total, label, stream=None):
        self.total, self.label, self.n = total, label, 0
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.monotonic()

    def step(self, text):
        self.n += 1
        width = 24
        filled = int(width * self.n / max(self.total, 1))
        bar = "#" * filled + "." * (width - filled)
        line = f"{self.label} [{bar}] {self.n}/{self.total} {text}"
        if self.tty:
            self.stream.write("\r\x1b[K" + line)
            if self.n == self.total:
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def _validate_submission(root, student, aid):
    """None when the submitted notebook(s) can be read, else a reason string."""
    import nbformat

    sdir = os.path.join(root, "submitted", student, aid)
    src = os.path.join(root, _source_dir(root), aid)
    expected = sorted(os.path.basename(p) for p in glob.glob(os.path.join(src, "*.ipynb")))
    present = [n for n in expected if os.path.isfile(os.path.join(sdir, n))]
    if not present:
        return "no notebook submitted (expected " + ", ".join(expected) + ")"
    for name in present:
        path = os.path.join(sdir, name)
        try:
            with open(path, encoding="utf-8") as fh:
                raw = fh.read()
            json.loads(raw)
        except UnicodeDecodeError:
            return f"{name} is not UTF-8 text"
        except ValueError as exc:
            return f"{name} is not valid JSON ({exc})"
        try:
            nb = nbformat.reads(raw, as_version=4)
        except Exception as exc:
            return f"{name} is not a Jupyter notebook ({exc.__class__.__name__}: {str(exc)[:120]})"
        if not isinstance(nb.get("cells"), list):
            return f"{name} has no list of cells"
    return None


def _retrying(fn, *args, attempts=6):
    """Call fn, retrying while SQLite reports a locked database (parallel workers)."""
    for attempt in range(attempts):
        try:
            return fn(*args)
        except Exception as exc:
            if "database is locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(1 + attempt)


def autograde(root, only_assignments=None, only_students=None, cell_timeout=None,
              submission_timeout=DEFAULT_SUBMISSION_TIMEOUT, progress=True, stream=None, jobs=1):
    """Autograde every submission in submitted/ (or the selected ones). Returns the status entries.

    jobs > 1 runs that many worker processes (one kernel each) side by side."""
    pairs = submissions(root, only_assignments, only_students)
    register(root, sorted({a for _, a in pairs}))
    status = read_status(root)
    bar = Progress(len(pairs), "autograde", stream) if progress else None
    results = {}
    todo = queue.Queue()
    for pair in pairs:
        todo.put(pair)
    lock = threading.Lock()
    errors = []

    def grade_one(worker, student, aid):
        t0 = time.monotonic()
        reason = _validate_submission(root, student, aid)
        ok = False
        if reason is None:
            for attempt in range(3):
                reply = worker.run(student, aid, submission_timeout)
                ok, reason = reply.get("ok", False), reply.get("reason", "")
                if ok or "database is locked" not in reply.get("log", "") + reason:
                    break
                time.sleep(1 + attempt)      # another worker held the gradebook: grade again
        with lock:
            if not ok:
                _retrying(zero_submission, root, aid, student)
                dest = os.path.join(root, "autograded", student, aid)
                if os.path.isdir(dest):
                    shutil.rmtree(dest)
            entry = {"status": "autograded" if ok else "failed", "reason": "" if ok else reason,
                     "seconds": round(time.monotonic() - t0, 2),
                     "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
            status[f"{student}/{aid}"] = entry
            results[(student, aid)] = entry
            write_status(root, status)
            if bar:
                bar.step(f"{student}/{aid} {entry['seconds']:.1f}s" + ("" if ok else " FAILED: " + reason[:80]))

    def run_worker():
        worker = Worker(root, cell_timeout)
        try:
            while True:
                try:
                    student, aid = todo.get_nowait()
                except queue.Empty:
                    return
                grade_one(worker, student, aid)
        except BaseException as exc:  # keep the other workers going; re-raised below
            errors.append(exc)
        finally:
            worker.close()

    threads = [threading.Thread(target=run_worker, daemon=True) for _ in range(max(1, min(jobs, len(pairs))))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


FAILED_FEEDBACK = """<!DOCTYPE html>
<html lang="zh-CN"><head><meta charset="utf-8"><title>{aid} 反馈</title>
<style>body{{font-family:"Noto Sans CJK SC","Microsoft YaHei",sans-serif;max-width:800px;margin:2em auto;line-height:1.6}}
.box{{border:1px solid #d33;background:#fff5f5;padding:1em 1.5em;border-radius:6px}}</style></head>
<body><h1>{aid}：自动评分失败</h1>
<div class="box"><p>学生：<b>{student}</b></p>
<p>得分：<b>0 / {max_score:g}</b></p>
<p>原因：{reason}</p></div>
<p>提交的笔记本无法被自动评分，因此所有测试单元记 0 分。请检查你提交的文件是否是用 Jupyter 或 Colab
保存的完整 <code>.ipynb</code> 笔记本，并且在“重启内核并运行全部单元”后能在合理时间内运行完毕；然后联系教师重新评分。</p>
</body></html>
"""


def reason_zh(reason):
    """The student-facing (Chinese) wording of an autograde failure reason."""
    known = [
        ("is not valid JSON", "提交的文件不是有效的 JSON（.ipynb 文件已损坏或被截断）"),
        ("is not UTF-8 text", "提交的文件不是 UTF-8 文本（不是 .ipynb 笔记本）"),
        ("is not a Jupyter notebook", "提交的文件不是 Jupyter 笔记本"),
        ("has no list of cells", "提交的文件不是 Jupyter 笔记本（没有单元格列表）"),
        ("no notebook submitted", "没有找到提交的笔记本"),
        ("time limit exceeded", "评分超过了整份作业的时间限制（可能有死循环或运行过慢的代码）"),
        ("worker process died", "评分进程意外退出"),
    ]
    for key, text in known:
        if key in reason:
            return f"{text}。（技术细节：{reason}）"
    return f"自动评分时出错。（技术细节：{reason}）"


def feedback(root, only_assignments=None, only_students=None, progress=True, stream=None):
    """Generate feedback/<student>/<assignment>/<notebook>.html for every graded submission."""
    from nbgrader.api import Gradebook
    from nbgrader.converters import GenerateFeedback
    from nbgrader.coursedir import CourseDirectory

    status = read_status(root)
    pairs = submissions(root, only_assignments, only_students)
    bar = Progress(len(pairs), "feedback ", stream) if progress else None
    written = []
    for student, aid in pairs:
        entry = status.get(f"{student}/{aid}", {})
        dest_dir = os.path.join(root, "feedback", student, aid)
        autograded = os.path.join(root, "autograded", student, aid)
        if entry.get("status") == "failed" or not os.path.isdir(autograded):
            os.makedirs(dest_dir, exist_ok=True)
            with Gradebook(db_url(root)) as gb:
                scores = submission_scores(gb, aid, student)
            max_score = scores[1] if scores else 0.0
            reason = reason_zh(entry["reason"]) if entry.get("reason") else "这份作业尚未自动评分。"
            for nb_path in glob.glob(os.path.join(root, _source_dir(root), aid, "*.ipynb")):
                name = os.path.splitext(os.path.basename(nb_path))[0]
                path = os.path.join(dest_dir, name + ".html")
                with open(path, "w", encoding="utf-8") as fh:
                    fh.write(FAILED_FEEDBACK.format(aid=html.escape(aid), student=html.escape(student),
                                                    max_score=max_score, reason=html.escape(reason)))
                written.append(path)
        else:
            cfg = load_config(root)
            cfg.CourseDirectory.assignment_id = aid
            cfg.CourseDirectory.student_id = student
            cfg.HTMLExporter.template_name = "feedback"
            with _quiet_logger("lossgrader.feedback") as (log, records):
                converter = GenerateFeedback(coursedir=CourseDirectory(config=cfg), config=cfg, log=log)
                converter.force = True
                try:
                    converter.start()
                except Exception as exc:
                    raise RuntimeError(f"feedback for {student}/{aid} failed: {exc}\n" + "\n".join(records[-20:]))
            written += glob.glob(os.path.join(dest_dir, "*.html"))
        if bar:
            bar.step(f"{student}/{aid}")
    return written


def grade_rows(root):
    """One row per (student, assignment) known to the gradebook or found in submitted/."""
    from nbgrader.api import Gradebook

    status = read_status(root)
    rows = []
    with Gradebook(db_url(root)) as gb:
        students = sorted({s.id for s in gb.students} | {s for s, _ in submissions(root)})
        for assignment in sorted(gb.assignments, key=lambda a: a.name):
            if not assignment.notebooks:
                continue
            for student in students:
                scores = submission_scores(gb, assignment.name, student)
                entry = status.get(f"{student}/{assignment.name}", {})
                if scores is None:
                    score, max_score, state, reason = 0.0, float(assignment.max_score), "missing", "no submission"
                else:
                    score, max_score = scores[0], scores[1]
                    state = entry.get("status", "autograded")
                    reason = entry.get("reason", "")
                    if state != "failed" and any(v is None for v in scores[2].values()):
                        state, reason = "needs manual grading", "some cells have no score yet"
                rows.append({"student_id": student, "assignment": assignment.name,
                             "score": round(score, 4), "max_score": round(max_score, 4),
                             "status": state, "reason": reason})
    return rows


def export(root, to=None):
    """Write the grades CSV (default grades.csv in the course directory); returns its path and rows."""
    rows = grade_rows(root)
    path = os.path.join(root, to or GRADES_CSV) if not (to and os.path.isabs(to)) else to
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["student_id", "assignment", "score", "max_score", "status", "reason"])
        writer.writeheader()
        writer.writerows(rows)
    return path, rows


def format_table(rows):
    """Plain-text grade table: one line per student, one column per assignment (score/max)."""
    students = sorted({r["student_id"] for r in rows})
    aids = sorted({r["assignment"] for r in rows})
    cell = {(r["student_id"], r["assignment"]): r for r in rows}

    def fmt(r):
        if r is None:
            return "-"
        text = f"{r['score']:g}/{r['max_score']:g}"
        if r["status"] == "failed":
            text += " !"
        elif r["status"] == "missing":
            text = "-"
        return text

    header = ["student"] + aids + ["total"]
    body = []
    for s in students:
        line = [s]
        total = total_max = 0.0
        for a in aids:
            r = cell.get((s, a))
            line.append(fmt(r))
            if r is not None:
                total += r["score"]
                total_max += r["max_score"]
        line.append(f"{total:g}/{total_max:g}")
        body.append(line)
    widths = [max(len(row[i]) for row in [header] + body) for i in range(len(header))]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in body]
    failed = [r for r in rows if r["status"] == "failed"]
    if failed:
        out.append("")
        out.append("! autograding failed (0 points):")
        out += [f"  {r['student_id']}/{r['assignment']}: {r['reason']}" for r in failed]
    return "\n".join(out)


def collect(root, source, only_assignments=None):
    """Copy hand-ins into submitted/<student>/<assignment>/<assignment>.ipynb.

    Accepted layouts under source: <student>/<assignment>/<assignment>.ipynb (nbgrader's),
    <student>/<assignment>.ipynb, and <student>_<assignment>.ipynb (flat download from an LMS).
    Returns the list of (student, assignment) copied."""
    known = [a for a in assignments(root) if not only_assignments or a in only_assignments]
    copied = []

    def put(student, aid, files):
        dest = os.path.join(root, "submitted", student, aid)
        os.makedirs(dest, exist_ok=True)
        for f in files:
            target = os.path.join(dest, aid + ".ipynb") if f.endswith(".ipynb") else os.path.join(dest, os.path.basename(f))
            shutil.copy2(f, target)
        copied.append((student, aid))

    source = os.path.abspath(source)
    for entry in sorted(os.listdir(source)):
        path = os.path.join(source, entry)
        if os.path.isdir(path):
            for aid in known:
                nested = os.path.join(path, aid)
                if os.path.isdir(nested):
                    files = [os.path.join(nested, f) for f in os.listdir(nested)
                             if os.path.isfile(os.path.join(nested, f))]
                    if files:
                        put(entry, aid, files)
                elif os.path.isfile(os.path.join(path, aid + ".ipynb")):
                    put(entry, aid, [os.path.join(path, aid + ".ipynb")])
        elif entry.endswith(".ipynb"):
            stem = entry[:-len(".ipynb")]
            for aid in known:
                if stem.endswith("_" + aid) and len(stem) > len(aid) + 1:
                    put(stem[: -len(aid) - 1], aid, [path])
                    break
    return copied


def samples_dir(root):
    return os.path.join(root, "samples", "submitted")


def demo(root, cell_timeout=None, stream=None, jobs=1):
    """Copy the sample class into submitted/, then autograde, feedback, export; returns the table text."""
    stream = stream or sys.stderr
    t0 = time.monotonic()
    copied = collect(root, samples_dir(root))
    students = sorted({s for s, _ in copied})
    stream.write(f"demo: {len(copied)} sample submissions from samples/submitted/ -> submitted/\n")
    autograde(root, only_students=students, cell_timeout=cell_timeout, stream=stream, jobs=jobs)
    feedback(root, only_students=students, stream=stream)
    path, rows = export(root)
    rows = [r for r in rows if r["student_id"] in students]
    table = format_table(rows)
    stream.write(f"demo: done in {time.monotonic() - t0:.0f} s; grades in {os.path.relpath(path, root)}, "
                 f"feedback in feedback/<student>/<assignment>/\n")
    return table


# --------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------

if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "_worker":
        _worker_main(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else None)
    else:
        sys.exit("usage: use the lossgrader command (lossgrader --help)")
