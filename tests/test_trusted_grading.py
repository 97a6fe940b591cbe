"""The trusted grading unit, piece by piece: what the judge accepts from the runtime, what
the back-door scan finds, how a hand-in is normalised, and one sandboxed hand-in end to end.

Each defence is tested with the attack it stops (see docs/instructor.md, threat model)."""
import glob
import os

import nbformat
import pytest
import torch
import torch.nn.functional as F

from course_copy import copy_course
from lossgrader import check, runtime
from lossgrader.backdoors import scan_notebook, scan_source
from lossgrader.engine import grade
from lossgrader.exercises import EXERCISES
from lossgrader.guards import Captured
from lossgrader.normalize import normalize
from lossgrader.worker import _student_cell, grade_handin

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
A = "02_regression"


def mse_loss(pred, target):
    return ((pred - target) ** 2).mean()


# ----------------------------------------------------------------------------- judge
def _judge(exercise, responses):
    ex = EXERCISES[exercise]
    cases, expectations = ex.cases(None, hidden=False)
    return grade(ex, cases, expectations, responses, Captured(), torch.device("cpu"), 1.0, False, 0.0)


def test_honest_runtime_responses_pass_the_judge():
    ex = EXERCISES["mse"]
    cases, _ = ex.cases(None, hidden=False)
    ran = runtime.run(ex.request(cases, "cpu"), mse_loss)
    assert _judge("mse", ran["cases"]).passed


@pytest.mark.parametrize("forged", [
    "not a dict",
    {"status": "ok", "out": {"type": "tensor", "value": "1.0", "shape": [], "dtype": "float32", "device": "cpu"}},
    {"status": "ok", "out": {"type": "tensor", "value": torch.tensor(0.5), "shape": [], "dtype": "float32",
                             "device": "cpu", "requires_grad": True}, "grads": ["x"]},
    {"status": "ok", "out": {"type": "tensor", "value": torch.tensor([1.0, 2.0]), "shape": [],
                             "dtype": "float32", "device": "cpu"}},
    {"status": "ok", "out": None},
    {"status": "who knows"},
])
def test_forged_or_malformed_responses_fail_the_case_without_crashing(forged):
    """A kernel can write anything into its response file: no full marks, no exception."""
    report = _judge("mse", [forged] * 4)
    assert report.score == 0.0
    assert all(r.status in ("fail", "error", "notimpl") for r in report.results)


def test_a_correct_value_without_its_gradient_does_not_pass():
    ex = EXERCISES["mse"]
    cases, _ = ex.cases(None, hidden=False)
    ran = runtime.run(ex.request(cases, "cpu"), mse_loss)
    for response in ran["cases"]:
        response.pop("grads", None)
    assert _judge("mse", ran["cases"]).score == 0.0


@pytest.mark.parametrize("route", [
    lambda p, t: F.mse_loss(p, t),
    lambda p, t: torch._C._nn.mse_loss(p, t),
    lambda p, t: torch.ops.aten.mse_loss(p, t),
])
def test_forbidden_builtin_is_caught_by_any_route(route):
    report = check("mse", route, device="cpu")
    assert report.score == 0.0 and report.results[0].status == "forbidden"


def test_composite_builtin_through_torch_ops_is_caught():
    """F.l1_loss decomposes into abs/mean: only the function-level name gives it away."""
    import operator
    report = check("mae", lambda p, t: operator.attrgetter("ops.aten.l1_loss")(torch)(p, t, 1), device="cpu")
    assert report.results[0].status == "forbidden"


def test_forbidden_builtin_under_disable_torch_function_is_caught():
    def sneaky(pred, target):
        with torch._C.DisableTorchFunction():
            return F.mse_loss(pred, target)
    report = check("mse", sneaky, device="cpu")
    assert report.results[0].status == "forbidden"


# ----------------------------------------------------------------------------- back doors
def _answer_sources():
    for path in sorted(glob.glob(os.path.join(ROOT, "solutions", "*", "*.ipynb"))
                       + glob.glob(os.path.join(ROOT, "samples", "submitted", "*", "*", "*.ipynb"))):
        yield path, nbformat.read(path, as_version=4)


def test_no_course_notebook_trips_the_back_door_scan():
    """Honest answers (the model solutions, the sample class) must never be flagged."""
    for path, nb in _answer_sources():
        assert scan_notebook(nb, _student_cell) == [], path


HONEST = [
    "import gc\ngc.collect()",
    "model.eval()",
    "w = getattr(self, 'weight', None)",
    "from lossgrader import check\ncheck('mse', mse_loss)",
    "import math, numpy as np\nimport torch.nn.functional as F\nF.log_softmax(x, 1)",
    "from IPython.display import display, HTML\ndisplay(HTML('<b>ok</b>'))",
]
ATTACKS = [
    "import sys\nf = sys._getframe(1).f_back",
    "import inspect\ninspect.stack()",
    "import gc\nxs = gc.get_objects()",
    "torch._C._nn.mse_loss(p, t)",
    "torch.ops.aten.mse_loss(p, t)",
    "with torch._C.DisableTorchFunction():\n    pass",
    "from torch.utils._python_dispatch import _disable_current_modes",
    "import lossgrader.runtime",
    "import lossgrader\nlossgrader.runtime.run = None",
    "get_ipython().display_formatter",
    "import sys\nsys.modules['lossgrader'] = None",
    "import ctypes",
    "import importlib.abc",
    "f = mse_loss.__wrapped__",
    "getattr(torch, '_' + 'C')",
    "__import__('gc')",
    "exec('x = 1')",
    "import subprocess",
    "import operator\nf = operator.attrgetter('ops.aten.l1_loss')(torch)",
    "import operator\nf = operator.attrgetter('_C._nn.mse_loss')(torch)",
    "from IPython.core.interactiveshell import InteractiveShell",
]


@pytest.mark.parametrize("source", HONEST)
def test_honest_code_is_not_flagged(source):
    assert scan_source(source, 0) == []


@pytest.mark.parametrize("source", ATTACKS)
def test_back_door_is_flagged(source):
    assert scan_source(source, 0), source


# ----------------------------------------------------------------------------- normalize
def _released():
    from lossgrader import gradebook
    pytest.importorskip("nbgrader")
    return gradebook


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    gb = _released()
    root = str(tmp_path_factory.mktemp("course"))
    copy_course(root, [A], exercises=False)
    gb.register(root, [A])
    return gb.released(root, A)["notebooks"][A]


def _full():
    return nbformat.read(os.path.join(ROOT, "samples", "submitted", "demo_full", A, A + ".ipynb"), as_version=4)


def _cell(nb, grade_id):
    return next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)


def test_deleted_test_cell_of_a_correct_answer_is_restored(released):
    nb = _full()
    original = _cell(nb, "test_mse").source
    nb.cells.remove(_cell(nb, "test_mse"))
    normalize(nb, released)
    restored = _cell(nb, "test_mse")
    assert restored.source.startswith(original)    # the released source: hidden tests included
    assert nb.cells.index(restored) == nb.cells.index(_cell(nb, "answer_mse")) + 1


def test_tampered_test_cell_gets_its_released_source_and_points(released):
    nb = _full()
    _cell(nb, "test_mse").source = "1.0"
    _cell(nb, "test_mse").metadata["nbgrader"]["points"] = 100
    forged = nbformat.v4.new_code_cell("1.0")
    forged.metadata["nbgrader"] = {"grade": True, "solution": False, "grade_id": "bonus", "points": 100}
    nb.cells.append(forged)
    normalize(nb, released)
    assert 'check("mse"' in _cell(nb, "test_mse").source
    assert _cell(nb, "test_mse").metadata["nbgrader"]["points"] == 1.0
    assert "nbgrader" not in nb.cells[-1].metadata


# ----------------------------------------------------------------------------- one hand-in, sandboxed
def _task(released, nb, sandbox):
    return {"student": "s", "assignment": A, "released": {A: released},
            "notebooks": {A: nbformat.writes(nb)}, "sandbox": sandbox, "device": "cpu",
            "cell_timeout": 60, "timeout": 300, "hide": [ROOT]}


def _sandbox_or_skip():
    from lossgrader.sandbox import bwrap_problem
    problem = bwrap_problem()
    if problem:
        pytest.skip(f"no sandbox here: {problem}")


@pytest.mark.timeout(300)
def test_wrong_answer_displaying_a_genuine_passing_report_scores_zero(released):
    """The judge writes the test cell's outputs itself: nothing the kernel shows counts."""
    _sandbox_or_skip()
    honest = check("mse", mse_loss, device="cpu")
    nb = _full()
    _cell(nb, "answer_mse").source = (
        "from IPython.display import display\n"
        f"_PAGE = {honest._repr_html_()!r}\n\n"
        "class _Passing:\n"
        "    def _repr_html_(self):\n        return _PAGE\n"
        "    def __repr__(self):\n        return '1.0'\n\n"
        "def mse_loss(pred, target):\n"
        "    display(_Passing())\n"
        "    return (pred - target).abs().mean() + 7\n"
        "_Passing()\n")
    result = grade_handin(_task(released, nb, True))
    assert result.status == "graded", result.reason
    assert result.scores["test_mse"] == 0.0
    assert result.scores["test_mse_grad"] == 1.0
    graded = nbformat.reads(result.notebooks[A], as_version=4)
    outputs = _cell(graded, "test_mse").outputs
    assert len(outputs) == 1 and outputs[0]["data"]["text/plain"] == "0.0"


@pytest.mark.timeout(120)
def test_references_are_not_importable_in_the_sandbox(tmp_path):
    """Inside the sandbox `lossgrader` is the runtime alone: the references, the registry and
    the genuine package (here: the repository) cannot be imported, even by path."""
    import sys

    from lossgrader.sandbox import Sandbox
    from lossgrader.worker import runtime_package
    _sandbox_or_skip()
    scratch = tmp_path / "handin"
    scratch.mkdir()
    rt = runtime_package(str(tmp_path))
    genuine = os.path.dirname(os.path.abspath(runtime.__file__))
    probe = ("import lossgrader, os\n"
             "print('runtime', hasattr(lossgrader, 'runtime'))\n"
             "for name in ('references', 'exercises', 'engine'):\n"
             "    try:\n        __import__('lossgrader.' + name)\n        print('IMPORTED', name)\n"
             "    except ImportError:\n        print('missing', name)\n"
             f"print('genuine visible', os.path.exists({os.path.join(genuine, 'references.py')!r}))\n"
             f"print('course visible', os.path.exists({os.path.join(ROOT, 'solutions')!r}))\n")
    sb = Sandbox(str(scratch), extra_ro=(rt,), hide=(ROOT, genuine), env={"PYTHONPATH": rt})
    out = sb.run([sys.executable, "-c", probe], timeout=60)
    text = out.stdout.decode()
    assert out.returncode == 0, out.stderr.decode()
    assert "runtime True" in text and "IMPORTED" not in text, text
    assert "genuine visible False" in text and "course visible False" in text, text


# ----------------------------------------------------------------------------- the coordinator refuses
def _course_copy(root):
    import shutil
    copy_course(root, [A], exercises=False)
    shutil.copytree(os.path.join(ROOT, "samples", "submitted", "demo_full", A),
                    os.path.join(root, "submitted", "demo_full", A))


def test_autograde_without_a_sandbox_stops_with_the_reason(tmp_path, monkeypatch, capsys):
    from lossgrader import sandbox
    from lossgrader.cli import main
    _course_copy(str(tmp_path))
    monkeypatch.setattr(sandbox, "bwrap_problem", lambda: "bwrap is not installed")
    with pytest.raises(SystemExit) as stopped:
        main(["--course", str(tmp_path), "autograde"])
    message = str(stopped.value)
    assert "bwrap is not installed" in message and "bubblewrap" in message and "--no-sandbox" in message
    assert not (tmp_path / "gradebook.db").exists() and not (tmp_path / "autograded").exists()


def test_unreadable_gradebook_stops_autograde_and_is_left_untouched(tmp_path, capsys):
    from lossgrader.cli import main
    _course_copy(str(tmp_path))
    garbage = b"this was the gradebook until a hand-in overwrote it\x00" * 100
    (tmp_path / "gradebook.db").write_bytes(garbage)
    assert main(["--course", str(tmp_path), "autograde", "--no-sandbox"]) == 2
    err = capsys.readouterr().err
    assert "gradebook.db" in err and "restore" in err
    assert (tmp_path / "gradebook.db").read_bytes() == garbage
    assert not (tmp_path / "autograded").exists()


@pytest.mark.parametrize("content,words", [
    (None, "was not submitted"),
    (b"\xff\xfe not utf-8", "UTF-8"),
    (b"{ not json", "JSON"),
    (b'{"cells": "no list", "metadata": {}}', "notebook"),
    (b" " * (65 * 2 ** 20), "larger than"),
])
def test_unreadable_hand_in_is_refused_with_a_reason_before_anything_runs(content, words):
    from lossgrader.feedback import reason_zh
    from lossgrader.worker import read_notebook
    nb, reason = read_notebook(A, content)
    assert nb is None and words in reason
    assert not reason_zh(reason).startswith("自动评分时出错")     # a Chinese explanation of its own


def test_unreadable_or_hostile_tensor_results_fail_the_case_without_raising():
    """What the runtime copies from a result runs none of the student's code and never raises."""
    class Looping(torch.Tensor):
        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            while True:
                pass

    meta = check("mse", lambda p, t: ((p - t) ** 2).mean().to("meta"), device="cpu")
    assert meta.score == 0.0 and "无法读取" in meta.results[0].message
    looping = check("mse", lambda p, t: ((p - t) ** 2).mean().as_subclass(Looping), device="cpu")
    assert looping.score == 0.0 and looping.results[0].status == "timeout"
