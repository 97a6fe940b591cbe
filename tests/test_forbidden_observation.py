"""Forbidden built-ins (issue 14, item 3): the verdict does not rest on what the student's
process could rewrite unseen. Signals: the back-door scan (read outside, before anything
runs), the spies in every thread started through ``threading``, the autograd nodes, and
torch's functions known by identity (not by their writable names); where they cannot
decide, the test cell is flagged for a person (tests/test_review_flag.py follows the flag
into the gradebook).

Each defence is tested with the attack it stops; see docs/instructor.md, "Forbidden built-ins"."""
import os
import subprocess
import sys
import textwrap

import nbformat
import pytest
import torch
import torch.nn.functional as F

import hostile_notebooks as H
from course_copy import copy_course
from lossgrader import check, guards, judge, runtime
from lossgrader.backdoors import scan_handin, scan_source
from lossgrader.exercises import EXERCISES
from lossgrader.normalize import is_test_cell

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
A = "02_regression"


class _ByHand(torch.autograd.Function):
    """The value from ``value_fn``, the MSE gradient written by hand: no built-in node."""

    @staticmethod
    def forward(ctx, pred, target, value_fn):
        ctx.save_for_backward(pred, target)
        return value_fn(pred, target)

    @staticmethod
    def backward(ctx, g):
        pred, target = ctx.saved_tensors
        d = g * 2 * (pred - target) / pred.numel()
        return d, -d, None


# ----------------------------------------------------------------------------- in the student's process
def test_a_call_on_a_pool_thread_is_seen():
    """A TorchFunctionMode is per thread: the built-in on a concurrent.futures pool inside a
    custom autograd.Function left no node and was not seen. Threads started while a check runs
    now carry a spy that reports to it."""
    import concurrent.futures

    def on_a_thread(pred, target):
        def value(p, t):
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                return pool.submit(F.mse_loss, p, t).result()
        return _ByHand.apply(pred, target, value)

    report = check("mse", on_a_thread, device="cpu")
    assert report.score == 0.0 and report.results[0].status == "forbidden", str(report)


def test_a_renamed_builtin_is_known_by_identity():
    """``__qualname__`` and ``__module__`` of a Python function are writable: the runtime names
    torch's functions by identity, with the name they had when it was imported."""
    ex = EXERCISES["mse"]
    cases, _ = ex.cases(None)
    names = (F.mse_loss.__qualname__, F.mse_loss.__module__)
    F.mse_loss.__qualname__, F.mse_loss.__module__ = "helper", "__main__"
    try:
        ran = runtime.run(ex.request(cases[:1], "cpu"), lambda p, t: _ByHand.apply(p, t, F.mse_loss))
    finally:
        F.mse_loss.__qualname__, F.mse_loss.__module__ = names
    called = [name for name, _ in ran["cases"][0]["calls"]]
    assert "torch.nn.functional.mse_loss" in called and "__main__.helper" not in called, called
    # the judge computes the forbidden names in its own process: they match the genuine name
    with pytest.raises(judge.CaseFailure) as failure:
        judge.check_forbidden(ran["cases"][0]["calls"], ex.forbidden)
    assert failure.value.status == "forbidden"


def test_autograd_backward_with_inputs_is_forbidden_in_a_gradient_exercise():
    def mse_grad(pred, target):
        leaf = pred.detach().clone().requires_grad_(True)
        torch.autograd.backward(((leaf - target) ** 2).mean(), inputs=[leaf])
        return leaf.grad

    report = check("mse_grad", mse_grad, device="cpu", hidden=True)
    assert report.score == 0.0 and report.results[0].status == "forbidden", str(report)


GAP_SCRIPT = textwrap.dedent("""
    import _thread, json, os, sys, time
    import torch
    from lossgrader import guards, runtime
    from lossgrader.exercises import EXERCISES

    ex = EXERCISES["mse"]
    cases, _ = ex.cases(None)
    request = ex.request(cases[:1], "cpu")

    def honest(p, t):
        return ((p - t) ** 2).mean()

    def forks(p, t):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        return honest(p, t)

    def gaps(fn):
        return [c[0] for c in runtime.run(request, fn)["cases"][0]["calls"] if c[0] in guards.GAPS]

    out = {"outside a grading kernel": gaps(honest)}
    guards.kernel_started()
    out["honest"] = gaps(honest)
    out["forks"] = gaps(forks)
    pid = os.fork()
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    out["child alive"] = gaps(honest)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    def waits():
        while True:
            time.sleep(0.05)

    _thread.start_new_thread(waits, ())     # not through threading: no spy follows it
    time.sleep(0.2)
    out["unfollowed thread"] = gaps(honest)
    print(json.dumps(out))
""")


def test_what_the_spies_cannot_see_is_reported_as_a_gap():
    """In a grading kernel (guards.kernel_started), a process forked by the check, a child
    process alive, or a thread running Python that no spy follows makes the runtime report a
    gap; the judge turns it into a reason for a person. A child forked during a check exits
    for real when it calls os._exit (guard_exits would otherwise carry it back into the
    grader's code, where it could answer in the runtime's place). Run in a fresh interpreter:
    the kernel's thread hook stays for the process's life."""
    import json

    env = {**os.environ, "PYTHONPATH": ROOT}
    done = subprocess.run([sys.executable, "-c", GAP_SCRIPT], capture_output=True, text=True, timeout=120,
                          env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, lines      # the forked child's os._exit ended it, not the grader's code
    out = json.loads(lines[0])
    assert out["outside a grading kernel"] == [] and out["honest"] == []
    assert out["forks"] == [guards.GAP_FORK]
    assert out["child alive"] == [guards.GAP_CHILD]
    assert out["unfollowed thread"] == [guards.GAP_THREAD]
    reasons = judge.observation_gaps([{"calls": [[guards.GAP_THREAD, {}]]},
                                      {"runs": [{"calls": [[guards.GAP_FORK, {}], ["torch.add", {}]]}]}])
    assert reasons == [guards.GAP_THREAD, guards.GAP_FORK]


def test_a_module_exercise_is_judged_on_both_runs():
    """A module is run with itself on the CPU, then after module.to(device): each run must be
    right, not the better of the two."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from corpus import good

    class Moved(good.FocalLoss):
        def to(self, *args, **kwargs):
            self.moved = True
            return super().to(*args, **kwargs)

    class WrongAfterMove(Moved):
        def forward(self, logits, target):
            out = super().forward(logits, target)
            return out * 2 if getattr(self, "moved", False) else out

    class WrongBeforeMove(Moved):
        def forward(self, logits, target):
            out = super().forward(logits, target)
            return out if getattr(self, "moved", False) else out * 2

    assert check("focal_module", Moved, device="cpu").passed
    after = check("focal_module", WrongAfterMove, device="cpu")
    before = check("focal_module", WrongBeforeMove, device="cpu")
    assert after.score == 0.0 and before.score == 0.0
    assert all("之后" in r.message for r in after.results), str(after)
    assert all("模块在 CPU 上" in r.message for r in before.results), str(before)


# ----------------------------------------------------------------------------- the back-door scan
ATTACKS = [
    "from sys import _getframe",
    "from inspect import currentframe",
    "from gc import get_objects",
    "import inspect\nf = inspect.stack()",
    "import concurrent.futures",
    "from concurrent.futures import ThreadPoolExecutor",
    "import _thread",
    "pool = torch.multiprocessing.Pool(2)",
    "torch.save = lambda *a, **k: None",
    "import torch as T\nT.save = None",
    "setattr(torch, 'save', None)",
    "vars(torch)['save'] = None",
    "F.mse_loss.__qualname__ = 'mine'",
    "torch.Tensor.__torch_function__ = None",
    "import lossgrader as lg\nlg.runtime.call = None",
    "import lossgrader as lg\nr = getattr(lg, 'runtime')",
    "import lossgrader as lg\nserve = lg.runtime.serve",
    "import lossgrader.runtime as r",
    "from lossgrader import runtime",
    "from lossgrader import guards as g",
    "import os\nos.posix_spawn('/bin/true', ['true'], {})",
    "e = torch.autograd.Variable._execution_engine",
]
REVIEWS = [
    "print(sorted(globals()))",
    "globals()['mse_loss'] = debug(mse_loss)",
    "import inspect\nprint(inspect.signature(mse_loss))",
    "def wrap(fn):\n    def w(*a):\n        return fn(*a)\n    w.__name__ = fn.__name__\n    return w",
    "@torch.jit.script\ndef f(x: torch.Tensor) -> torch.Tensor:\n    return x",
    "g = torch.compile(f)",
    "type(x).mean = f",
    "d = loss.grad_fn(torch.ones(()))",
]
HONEST = [
    "torch.backends.cudnn.deterministic = True",
    "print(loss.grad_fn)",
    "self.weight = torch.ones(3)",
    "import functools\n@functools.wraps(f)\ndef g(*a):\n    return f(*a)",
    "from lossgrader import check\ncheck('mse', mse_loss)",
    "import lossgrader\nlossgrader.check('mse', mse_loss)",
]


@pytest.mark.parametrize("source", ATTACKS)
def test_clear_attacks_zero_the_notebook(source):
    findings = scan_source(source, 0)
    assert any(not f.review for f in findings), source


@pytest.mark.parametrize("source", REVIEWS)
def test_unclear_constructs_go_to_a_person(source):
    findings = scan_source(source, 0)
    assert findings and all(f.review for f in findings), (source, findings)


@pytest.mark.parametrize("source", HONEST)
def test_honest_habits_are_not_flagged(source):
    assert scan_source(source, 0) == []


def _nb(*cells):
    nb = nbformat.v4.new_notebook()
    for source, meta in cells:
        c = nbformat.v4.new_code_cell(source)
        if meta:
            c.metadata["nbgrader"] = meta
        nb.cells.append(c)
    return nb


def test_a_review_flags_the_test_cells_whose_function_reaches_it():
    nb = _nb(("def helper(p, t):\n    return (p - t).abs()\n\nhelper.__qualname__ = 'h'", None),
             ("def mae_loss(p, t):\n    return helper(p, t).mean()", None),
             ("def mse_loss(p, t):\n    return ((p - t) ** 2).mean()\n\nglobals()['mse_loss'] = dbg(mse_loss)", None),
             ("def mse_grad(p, t):\n    return 2 * (p - t) / p.numel()", None))
    scan = scan_handin(nb)
    assert not scan.attacks and len(scan.reviews) == 2
    assert [f.what for f in scan.touching("mae_loss")] == ["helper.__qualname__ = …"]
    assert [f.what for f in scan.touching("mse_loss")] == ["globals"]
    assert scan.touching("mse_grad") == []
    # at the top level with an effect that cannot be told: every test cell
    nb.cells.append(nbformat.v4.new_code_cell("for n in ('mse_grad',):\n    globals()[n] = dbg(globals()[n])"))
    assert [(f.cell, f.what) for f in scan_handin(nb).touching("mse_grad")] == [(4, "globals")]


def test_a_module_the_setup_cell_imported_is_refused_where_it_is_used():
    """The setup cell (not the student's, not scanned) imports importlib and subprocess: an
    answer handing them around is read with the notebook's imports."""
    setup_meta = {"grade": False, "grade_id": "setup", "locked": True, "solution": False}
    setup = "import importlib.util\nimport subprocess\nfrom lossgrader import check"
    nb = _nb((setup, setup_meta), ("m = importlib\nrt = m.import_module('lossgrader.' + 'runtime')", None))
    scan = scan_handin(nb, [{"name": "setup", "source": setup}], is_test_cell)
    assert [(f.cell, f.what) for f in scan.attacks] == [(1, "importlib")]


def test_a_read_only_cell_is_scanned_unless_it_is_the_released_one():
    """Normalisation gives read-only cells their released source back; should that fail, code
    placed in one is still read. The instructor's own setup cell (importlib, subprocess) is not."""
    setup_meta = {"grade": False, "grade_id": "setup", "locked": True, "solution": False}
    released_setup = "import importlib.util\nimport subprocess\nfrom lossgrader import check"
    released = [{"name": "setup", "source": released_setup}]
    assert scan_handin(_nb((released_setup, setup_meta)), released, is_test_cell).attacks == []
    planted = _nb((released_setup + "\ntorch.save = None", setup_meta))
    assert [f.what for f in scan_handin(planted, released, is_test_cell).attacks
            if f.line == 4] == ["torch.save = …"]
    test_meta = {"grade": True, "grade_id": "test_mse", "locked": True, "solution": False, "points": 1}
    assert scan_handin(_nb(("import subprocess", test_meta)), released, is_test_cell).attacks == []


# ----------------------------------------------------------------------------- graded hand-ins, sandboxed
@pytest.fixture(scope="module")
def released(tmp_path_factory):
    pytest.importorskip("nbgrader")
    from lossgrader import gradebook
    root = str(tmp_path_factory.mktemp("course"))
    copy_course(root, [A], exercises=False)
    gradebook.register(root, [A])
    return gradebook.released(root, A)["notebooks"][A]


def _full():
    return nbformat.read(os.path.join(ROOT, "samples", "submitted", "demo_full", A, A + ".ipynb"), as_version=4)


def _grade(released, text):
    from lossgrader.sandbox import bwrap_problem
    from lossgrader.worker import grade_handin
    problem = bwrap_problem()
    if problem:
        pytest.skip(f"no sandbox here: {problem}")
    return grade_handin({"student": "s", "assignment": A, "released": {A: released}, "notebooks": {A: text},
                         "sandbox": True, "device": "cpu", "cell_timeout": 60, "timeout": 300, "hide": [ROOT]})


def _statuses(result, grade_id):
    return [c.status for c in result.cases if c.grade_id == grade_id]


@pytest.mark.timeout(300)
def test_forbidden_builtins_the_runtime_must_see_get_no_marks(released):
    """tests/hostile_notebooks.py forbidden_unobserved, graded: a renamed built-in, one on a
    thread the scan cannot tell from a debug habit, autograd's backward(inputs=...) in a
    gradient exercise are forbidden; TorchScript and a DataLoader worker process (unobservable)
    go to a person; a helper planted in the read-only setup cell is gone."""
    text, expected = H.forbidden_unobserved(_full())
    result = _grade(released, text)
    assert result.status == "graded", result.reason
    assert result.scores == expected
    for grade_id in ("test_mse", "test_mse_grad", "test_mae"):
        assert _statuses(result, grade_id)[0] == "forbidden", (grade_id, result.log)
    assert result.review.keys() == H.REVIEWED["forbidden_unobserved"].keys()
    assert result.review["test_huber"]["auto_score"] == 1.0
    assert "torch.jit.script" in result.review["test_huber"]["reason"]
    assert result.review["test_smooth_l1"]["auto_score"] == 1.0
    reasons = result.review["test_smooth_l1"]["reason"].split("; ")
    assert reasons[0] == judge.GAP_REASONS[guards.GAP_FORK]
    # and the source read outside names the built-in the process did not report
    assert reasons[1:] == ["the answer names torch.nn.functional.smooth_l1_loss, which smooth_l1 forbids "
                           "(F.smooth_l1_loss / F.huber_loss), but its process reported no call to it"]
    mae_grad = [c for c in result.cases if c.grade_id == "test_mae_grad"]
    assert mae_grad[0].status == "error" and "_planted" in mae_grad[0].message
    graded = nbformat.reads(result.notebooks[A], as_version=4)
    flagged = {c.metadata["nbgrader"]["grade_id"]: c.metadata["lossgrader"]["review"]
               for c in graded.cells if "lossgrader" in c.metadata}
    assert flagged == result.review
    assert "_planted" not in next(c for c in graded.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "setup").source


@pytest.mark.timeout(300)
def test_forbidden_builtins_behind_clear_attacks_zero_the_notebook(released):
    """tests/hostile_notebooks.py forbidden_scanned, graded: a pool thread, a scrubbing
    torch.save, F.huber_loss renamed in place and the runtime replaced through every spelling
    of ``import lossgrader`` are each found by the scan before anything runs."""
    text, expected = H.forbidden_scanned(_full())
    result = _grade(released, text)
    assert result.status == "graded", result.reason
    assert result.scores == expected and result.review == {}
    for construct in H.FORBIDDEN_SCANNED_CONSTRUCTS:
        assert f": {construct}" in result.log, (construct, result.log)


def test_a_hand_in_cannot_bring_its_own_review_flag(released):
    """The flag lives in the autograded notebook's cell metadata: a hand-in carrying one (to
    zero a cell pending review, or to put its own words before the instructor) loses it."""
    from lossgrader.gradebook import _flagged_cells
    from lossgrader.normalize import normalize
    nb = _full()
    test_cell = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "test_mse")
    test_cell.metadata["lossgrader"] = {"review": {"reason": "ignore the scan", "auto_score": 1.0}}
    assert _flagged_cells(nb) == {"test_mse"}
    normalize(nb, released)
    assert "lossgrader" not in test_cell.metadata and _flagged_cells(nb) == set()
