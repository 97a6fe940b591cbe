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


# --------------------------------------------------------------------------- forbidden built-ins
# Each answer below calls the built-in its exercise forbids, by a route the in-kernel spies of
# an earlier grader missed (issue 14): inside a custom autograd.Function, so that no built-in
# autograd node is left behind. test_forbidden_observation.py grades them.
QUIET_FUNCTION = '''
class {name}(torch.autograd.Function):
    """The value from a built-in, the gradient written by hand: no built-in autograd node."""

    @staticmethod
    def forward(ctx, pred, target, *extra):
        ctx.save_for_backward(pred, target)
        ctx.extra = extra
        return {value}

    @staticmethod
    def backward(ctx, g):
        pred, target = ctx.saved_tensors
        d = g * ({grad}) / pred.numel()
        return (d, -d) + (None,) * len(ctx.extra)
'''
MSE_GRAD_EXPR = "2 * (pred - target)"
MAE_GRAD_EXPR = "torch.sign(pred - target)"
SMOOTH_L1_GRAD_EXPR = "torch.where((pred - target).abs() < ctx.extra[0], (pred - target) / ctx.extra[0], torch.sign(pred - target))"
HUBER_GRAD_EXPR = "torch.where((pred - target).abs() <= ctx.extra[0], pred - target, ctx.extra[0] * torch.sign(pred - target))"


def forbidden_unobserved(full):
    """Forbidden built-ins by routes the scan does not refuse, so that the runtime must see them:
    F.mse_loss renamed through an alias (``__qualname__``/``__module__``), the MAE's F.l1_loss
    on a thread started by logging's QueueListener, torch.autograd.backward(inputs=...) in the
    MSE gradient, F.huber_loss through TorchScript and F.smooth_l1_loss in a DataLoader worker
    process (neither observable: flagged for a person, automatic score 1), and a helper planted
    in the read-only setup cell for the MAE gradient (removed with the rest of the cell's
    edits: NameError)."""
    nb = copy.deepcopy(full)
    answer(nb, "mse").source = (
        "# 答案\n_f = F.mse_loss\n_f.__qualname__ = 'helper'\n_f.__module__ = '__main__'\n"
        + QUIET_FUNCTION.format(name="_Quiet", value="_f(pred, target)", grad=MSE_GRAD_EXPR)
        + "\n\ndef mse_loss(pred, target):\n    return _Quiet.apply(pred, target)\n")
    answer(nb, "mse_grad").source = (
        "# 答案\ndef mse_grad(pred, target):\n"
        "    leaf = pred.detach().clone().requires_grad_(True)\n"
        "    torch.autograd.backward(((leaf - target) ** 2).mean(), inputs=[leaf])\n"
        "    return leaf.grad\n")
    answer(nb, "mae").source = (
        "# 答案\nimport logging\nimport logging.handlers\nimport queue\n\n"
        "_jobs, _results = queue.Queue(), queue.Queue()\n\n"
        "class _Worker(logging.Handler):\n"
        "    def handle(self, record):\n"
        "        pred, target = record.msg\n"
        "        _results.put(F.l1_loss(pred, target))\n\n"
        "_listener = logging.handlers.QueueListener(_jobs, _Worker())\n"
        "_listener.start()\n"
        + QUIET_FUNCTION.format(
            name="_Elsewhere", grad=MAE_GRAD_EXPR,
            value="_jobs.put(logging.makeLogRecord({'msg': (pred.detach(), target.detach())})) or "
                  "_results.get(timeout=20)")
        + "\n\ndef mae_loss(pred, target):\n    return _Elsewhere.apply(pred, target)\n")
    answer(nb, "huber").source = (
        "# 答案\n@torch.jit.script\n"
        "def _scripted(pred: torch.Tensor, target: torch.Tensor, delta: float) -> torch.Tensor:\n"
        "    return F.huber_loss(pred, target, delta=delta)\n"
        + QUIET_FUNCTION.format(name="_Script", value="_scripted(pred, target, float(extra[0]))",
                                grad=HUBER_GRAD_EXPR)
        + "\n\ndef huber_loss(pred, target, delta=1.0):\n    return _Script.apply(pred, target, delta)\n")
    cell(nb, "setup").source += ("\n\ndef _planted(pred, target):\n"
                                 "    return torch.sign(pred - target) / pred.numel()\n")
    answer(nb, "mae_grad").source = "# 答案\ndef mae_grad(pred, target):\n    return _planted(pred, target)\n"
    answer(nb, "smooth_l1").source = (
        "# 答案\nfrom torch.utils.data import DataLoader, Dataset\n\n"
        "class _Once(Dataset):\n"
        "    def __init__(self, pred, target, beta):\n"
        "        self.pred, self.target, self.beta = pred, target, beta\n"
        "    def __len__(self):\n        return 1\n"
        "    def __getitem__(self, i):\n"
        "        return F.smooth_l1_loss(self.pred, self.target, beta=self.beta)\n"
        + QUIET_FUNCTION.format(
            name="_InAWorker", grad=SMOOTH_L1_GRAD_EXPR,
            value="next(iter(DataLoader(_Once(pred.detach(), target.detach(), extra[0]), batch_size=None, "
                  "num_workers=1))).to(pred.device)")
        + "\n\ndef smooth_l1_loss(pred, target, beta=1.0):\n    return _InAWorker.apply(pred, target, beta)\n")
    return text(nb), scores(**{k: 0 for k in ANSWER_OF})


def forbidden_scanned(full):
    """Forbidden built-ins behind constructs the back-door scan refuses outright (each zeroes the
    notebook): F.mse_loss on a concurrent.futures pool, torch.save patched to scrub the
    runtime's record, F.mse_loss renamed in place, and the runtime's own functions replaced
    through ``import lossgrader as lg``, ``from lossgrader import runtime`` and
    ``import lossgrader.runtime as r``."""
    nb = copy.deepcopy(full)
    answer(nb, "mse").source = (
        "# 答案\nimport concurrent.futures\n"
        + QUIET_FUNCTION.format(name="_Pooled", grad=MSE_GRAD_EXPR,
                                value="concurrent.futures.ThreadPoolExecutor(1).submit(F.mse_loss, pred, target).result()")
        + "\n\ndef mse_loss(pred, target):\n    return _Pooled.apply(pred, target)\n")
    answer(nb, "mae").source = (
        "# 答案\n_save = torch.save\n\n"
        "def _scrubbed(obj, *args, **kwargs):\n"
        "    stack = [obj]\n"
        "    while stack:\n"
        "        node = stack.pop()\n"
        "        if isinstance(node, dict):\n"
        "            if isinstance(node.get('calls'), list):\n"
        "                node['calls'] = []\n"
        "            stack.extend(node.values())\n"
        "        elif isinstance(node, list):\n"
        "            stack.extend(node)\n"
        "    return _save(obj, *args, **kwargs)\n\n"
        "torch.save = _scrubbed\n\n"
        "def mae_loss(pred, target):\n    return F.l1_loss(pred, target)\n")
    answer(nb, "huber").source = (
        "# 答案\nF.huber_loss.__qualname__ = 'mine'\nF.huber_loss.__module__ = '__main__'\n\n"
        "def huber_loss(pred, target, delta=1.0):\n    return F.huber_loss(pred, target, delta=delta)\n")
    answer(nb, "smooth_l1").source = (
        "# 答案\nimport lossgrader as lg\nfrom lossgrader import runtime\nimport lossgrader.runtime as r\n\n"
        "lg.runtime.graph_ops = lambda result: []\n"
        "runtime.qualname = lambda func: 'mine'\n"
        "r.guards.CallSpy.__torch_function__ = lambda self, func, types, args=(), kwargs=None: func(*args, **(kwargs or {}))\n\n"
        "def smooth_l1_loss(pred, target, beta=1.0):\n    return F.smooth_l1_loss(pred, target, beta=beta)\n")
    return text(nb), scores(**{k: 0 for k in ANSWER_OF})


# what the scan must name for each construct of forbidden_scanned (worker log: "back door in cell ...")
FORBIDDEN_SCANNED_CONSTRUCTS = ("import concurrent.futures", "torch.save = …", "F.huber_loss.__qualname__ = …",
                                "from lossgrader import runtime", "import lossgrader.runtime", "lg.runtime")

DEBUG_HELPER = '''
import functools


def _debug(fn):
    """Print each call's result: a debugging habit, not an attack."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        out = fn(*args, **kwargs)
        print(f"[调试] {fn.__name__} -> {tuple(out.shape)}")
        return out
    return wrapper
'''


def debug_wrappers(full):
    """Correct answers, each wrapped through globals() by a debug decorator that prints its
    results (a student's habit): not clearly an attack, so every test cell is flagged for a
    person with its automatic score (full marks), and none is zeroed."""
    nb = copy.deepcopy(full)
    first = answer(nb, "mse")
    first.source = first.source + "\n" + DEBUG_HELPER
    for exercise, c in ANSWER_OF.items():
        name = {"mse": "mse_loss", "mse_grad": "mse_grad", "mae": "mae_loss", "mae_grad": "mae_grad",
                "huber": "huber_loss", "smooth_l1": "smooth_l1_loss"}[exercise]
        a = answer(nb, exercise)
        a.source = a.source + f"\n\nglobals()[{name!r}] = _debug({name})\n"
    return text(nb), scores(**{k: 0 for k in ANSWER_OF})


# test cells flagged for a person, with the automatic score they show
REVIEWED = {"forbidden_unobserved": {"test_huber": 1.0, "test_smooth_l1": 1.0},
            "debug_wrappers": {t: 1.0 for t in TESTS}}
