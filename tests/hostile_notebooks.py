"""Broken and hostile hand-ins of 02_regression for tests/test_pipeline.py.

Every builder starts from a sample submission (samples/submitted/<student>/02_regression/)
and returns the text of the .ipynb file a student would hand in, together with the grade
each test cell deserves (None for the whole file: nbgrader cannot grade it at all).
"""
import copy
import json

import nbformat

ASSIGNMENT = "02_regression"
TESTS = ["test_mse", "test_mse_grad", "test_mae", "test_mae_grad", "test_huber", "test_smooth_l1"]
ANSWER_OF = {
    "mse": "answer_mse", "mse_grad": "answer_mse_grad", "mae": "answer_mae",
    "mae_grad": "answer_mae_grad", "huber": "answer_huber", "smooth_l1": "answer_smooth_l1",
}


def cell(nb, grade_id):
    for c in nb.cells:
        if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id:
            return c
    raise KeyError(grade_id)


def answer(nb, exercise):
    return cell(nb, ANSWER_OF[exercise])


def text(nb):
    return nbformat.writes(nb)


def scores(**overrides):
    """Per-test-cell expected scores: 1 everywhere unless overridden (e.g. mae=0)."""
    out = {t: 1.0 for t in TESTS}
    for k, v in overrides.items():
        out["test_" + k] = float(v)
    return out


# Wrong on every case (a value off by 7), so that any mark they get is a mark not earned.
WRONG_MSE = "# 答案\ndef mse_loss(pred, target):\n    return (pred - target).abs().mean() + 7"
WRONG_MAE = "# 答案\ndef mae_loss(pred, target):\n    return ((pred - target) ** 2).mean() + 7"
WRONG_HUBER = "# 答案\ndef huber_loss(pred, target, delta=1.0):\n    return (pred - target).abs().mean() + 7"
WRONG_MSE_GRAD = "# 答案\ndef mse_grad(pred, target):\n    return torch.full_like(pred, 7.0)"


def exits(full):
    """sys.exit() at the top of one answer cell, os._exit() at the top of another and inside a
    student function, exit() inside another function: the other exercises keep their marks."""
    nb = copy.deepcopy(full)
    a = answer(nb, "mae")
    a.source = "import sys\nsys.exit()\n" + a.source
    a = answer(nb, "mae_grad")
    a.source = "import os\nos._exit(0)\n" + a.source
    answer(nb, "huber").source = ("# 答案\nimport os\n\ndef huber_loss(pred, target, delta=1.0):\n"
                                  "    os._exit(3)\n")
    answer(nb, "smooth_l1").source = ("# 答案\ndef smooth_l1_loss(pred, target, beta=1.0):\n"
                                      "    exit()\n")
    return text(nb), scores(mae=0, mae_grad=0, huber=0, smooth_l1=0)


# A loop that swallows the interrupt a cell timeout sends (without the signal module, which
# the back-door scan would flag on its own).
UNINTERRUPTIBLE_LOOP = ("while True:\n    try:\n        while True:\n            pass\n"
                        "    except KeyboardInterrupt:\n        pass\n")


def loops(full):
    """A loop forever inside a student function, and one at the top of an answer cell that
    ignores the interrupt nbgrader sends on a cell timeout."""
    nb = copy.deepcopy(full)
    answer(nb, "mae").source = ("# 答案\ndef mae_loss(pred, target):\n    while True:\n        pass\n")
    a = answer(nb, "huber")
    a.source = (UNINTERRUPTIBLE_LOOP + a.source)
    return text(nb), scores(mae=0, huber=0)


def import_crash(full):
    """An answer cell that fails at import, another one that crashes the interpreter."""
    nb = copy.deepcopy(full)
    a = answer(nb, "mse")
    a.source = "import no_such_module_for_this_course\n" + a.source
    a = answer(nb, "huber")
    a.source = "import faulthandler\nfaulthandler._sigsegv()\n" + a.source
    # mae_loss of the full-marks sample does not call mse_loss, so only mse and huber fail
    return text(nb), scores(mse=0, huber=0)


def noisy(full):
    """Correct functions that print to stderr, warn and write to file descriptor 2 (full marks)."""
    nb = copy.deepcopy(full)
    answer(nb, "mse").source = (
        "# 答案\nimport sys\nimport warnings\n\n"
        "def mse_loss(pred, target):\n"
        "    print('debug: computing mse', file=sys.stderr)\n"
        "    warnings.warn('student warning inside mse_loss')\n"
        "    return ((pred - target) ** 2).mean()\n")
    answer(nb, "mae").source = (
        "# 答案\nimport sys\n\n"
        "def mae_loss(pred, target):\n"
        "    sys.stderr.write('mae called\\n')\n"
        "    return (pred - target).abs().mean()\n")
    answer(nb, "huber").source = (
        "# 答案\nimport warnings\n\n"
        "def huber_loss(pred, target, delta=1.0):\n"
        "    warnings.warn('deprecated huber', DeprecationWarning)\n"
        "    warnings.warn('runtime huber', RuntimeWarning)\n"
        "    r = (pred - target).abs()\n"
        "    return torch.where(r <= delta, 0.5 * r ** 2, delta * r - 0.5 * delta ** 2).mean()\n")
    a = answer(nb, "smooth_l1")
    a.source = "import sys\nprint('top-level stderr in an answer cell', file=sys.stderr)\n" + a.source
    return text(nb), scores()


def cheats(full):
    """Wrong answers that try to claim full marks: a redefined check, a patched
    lossgrader.check / Report, a fake lossgrader in sys.modules and next to the notebook.
    Reaching into the grader's modules is a back door (lossgrader/backdoors.py): every test
    of the notebook fails, the correct answers included."""
    nb = copy.deepcopy(full)
    answer(nb, "mse").source = WRONG_MSE + (
        "\n\ndef check(*args, **kwargs):\n    return 1.0\n")
    answer(nb, "mae").source = WRONG_MAE + (
        "\n\nimport lossgrader\nimport lossgrader.engine\n"
        "lossgrader.check = lossgrader.engine.check = lambda *a, **k: 1.0\n"
        "lossgrader.Report.__repr__ = lambda self: '1.0'\n"
        "lossgrader.Report.__float__ = lambda self: 1.0\n")
    answer(nb, "huber").source = WRONG_HUBER + (
        "\n\nimport os\nimport sys\nimport types\n"
        "fake = types.ModuleType('lossgrader')\nfake.check = lambda *a, **k: 1.0\n"
        "sys.modules['lossgrader'] = fake\n"
        "with open('lossgrader.py', 'w') as fh:\n"
        "    fh.write('def check(*a, **k):\\n    return 1.0\\n')\n"
        "sys.path.insert(0, os.getcwd())\n")
    return text(nb), scores(**{k: 0 for k in ANSWER_OF})


WRONG_MAE_GRAD = "# 答案\ndef mae_grad(pred, target):\n    return torch.full_like(pred, 7.0)"
WRONG_SMOOTH_L1 = "# 答案\ndef smooth_l1_loss(pred, target, beta=1.0):\n    return (pred - target).abs().mean() + 7"


def import_tricks(full):
    """Wrong answers behind subtler tricks: a fake lossgrader package in a directory put first on
    sys.path (not the notebook's), an import hook that serves a fake lossgrader, and a plain-text
    formatter that prints every Report as full marks. Import hooks and the IPython shell are
    back doors: every test of the notebook fails."""
    nb = copy.deepcopy(full)
    answer(nb, "mse_grad").source = WRONG_MSE_GRAD + (
        "\n\nimport os\nimport sys\nimport tempfile\n"
        "_d = tempfile.mkdtemp()\nos.makedirs(os.path.join(_d, 'lossgrader'))\n"
        "with open(os.path.join(_d, 'lossgrader', '__init__.py'), 'w') as fh:\n"
        "    fh.write('def check(*a, **k):\\n    return 1.0\\n')\n"
        "sys.path.insert(0, _d)\n")
    answer(nb, "mae_grad").source = WRONG_MAE_GRAD + (
        "\n\nimport importlib.abc\nimport importlib.util\nimport sys\n\n"
        "class FakeGrader(importlib.abc.MetaPathFinder, importlib.abc.Loader):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'lossgrader' or name.startswith('lossgrader.'):\n"
        "            return importlib.util.spec_from_loader(name, self, is_package=True)\n"
        "    def create_module(self, spec):\n"
        "        return None\n"
        "    def exec_module(self, module):\n"
        "        module.check = lambda *a, **k: 1.0\n\n"
        "sys.meta_path.insert(0, FakeGrader())\n")
    answer(nb, "smooth_l1").source = WRONG_SMOOTH_L1 + (
        "\n\nget_ipython().display_formatter.formatters['text/plain'].for_type_by_name(\n"
        "    'lossgrader.report', 'Report', lambda obj, p, cycle: p.text('1.0'))\n")
    return text(nb), scores(**{k: 0 for k in ANSWER_OF})


def display_tricks(full):
    """Wrong answers that forge the score nbgrader reads: hide the test cell's result
    (nbgrader gives full credit to a test cell without output), and publish a non-numeric
    result from inside the function (nbgrader gives full credit to a non-numeric result).
    The IPython shell is a back door: every test of the notebook fails."""
    nb = copy.deepcopy(full)
    answer(nb, "mse").source = WRONG_MSE + "\n\nget_ipython().ast_node_interactivity = 'none'\n"
    answer(nb, "mae").source = (
        "# 答案\ndef mae_loss(pred, target):\n"
        "    get_ipython().displayhook('full marks please')\n"
        "    return ((pred - target) ** 2).mean() + 7\n")
    return text(nb), scores(**{k: 0 for k in ANSWER_OF})


def tampered(full):
    """Edited and deleted test cells, changed points, a forged test cell worth 100 points."""
    nb = copy.deepcopy(full)
    answer(nb, "mse_grad").source = WRONG_MSE_GRAD
    answer(nb, "mae").source = WRONG_MAE
    cell(nb, "test_mse").source = "1.0"
    cell(nb, "test_mse_grad").source = "# 测试（只读）\n1.0"
    nb.cells.remove(cell(nb, "test_mae"))
    nb.cells.remove(cell(nb, "test_huber"))
    nb.cells.remove(answer(nb, "huber"))
    cell(nb, "test_mae_grad").metadata["nbgrader"]["points"] = 100
    cell(nb, "test_smooth_l1").metadata["nbgrader"]["points"] = "abc"
    forged = nbformat.v4.new_code_cell("1.0")
    forged.metadata["nbgrader"] = {"grade": True, "solution": False, "locked": True, "task": False,
                                   "grade_id": "bonus", "points": 100, "schema_version": 3}
    nb.cells.append(forged)
    return text(nb), scores(mse_grad=0, mae=0, huber=0)


def stripped(full):
    """The full-marks notebook after an editor dropped every cell's metadata (nbgrader ids
    included) and Colab saved it: graded like the original."""
    nb = copy.deepcopy(full)
    for c in nb.cells:
        c.metadata = nbformat.NotebookNode()
    return as_colab(nb), scores()


def not_json(full):
    return text(full)[:-200] + "\n<<<<<<< conflict marker left by a merge\n", None


def not_notebook(full):
    return json.dumps({"cells": "this is not a list", "metadata": {}}), None


def as_colab(nb, fake_output="99.0"):
    """The file Colab writes when a student opens a notebook there and saves it (File > Save /
    Download .ipynb): nbformat 4.0 without top-level cell ids, the id and colab keys in the
    cell metadata, Colab's notebook metadata and kernelspec, and the outputs kept."""
    data = json.loads(nbformat.writes(nb))
    data["nbformat_minor"] = 0
    data["metadata"] = {
        "colab": {"provenance": [], "gpuType": "T4", "toc_visible": True},
        "accelerator": "GPU",
        "kernelspec": {"name": "python3", "display_name": "Python 3"},
        "language_info": {"name": "python"},
    }
    for i, c in enumerate(data["cells"]):
        cid = c.pop("id", None) or f"cell{i}"
        c["metadata"]["id"] = cid
        if c["cell_type"] == "code":
            c["metadata"]["colab"] = {"base_uri": "https://localhost:8080/", "height": 35}
            c["metadata"]["outputId"] = "5f3c2a1e-0d4b-4c3e-9a7b-%012d" % i
            c["execution_count"] = i + 1
            c["outputs"] = [{"output_type": "execute_result", "execution_count": i + 1, "metadata": {},
                             "data": {"text/plain": [fake_output]}}]
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"
