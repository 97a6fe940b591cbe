"""Hints are typed and evidenced (docs/grader.md, "Hints").

Every hint states its premise (judge.PREMISES), a condition the judge measured on the case; a
hint whose premise was not measured is not shown and the neutral message (expected, got,
where) stands alone. For every hint a wrong implementation whose bug is something else shows
that it does not fire; the hints the issue found false (a factor of 1, a factor from two
classes, "值正确" in a gradient exercise, a graph in numerical_grad, a piecewise or ε hint for
code with neither, the generic ε in label smoothing) are tested here by name. The corpus
(tests/corpus/heldout.py, tests/test_heldout_corpus.py) checks the same on 150+ implementations.
"""
from __future__ import annotations

import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lossgrader import check, judge
from lossgrader.exercises import EXERCISES
from corpus import as_module
from corpus.heldout import FocalLossNoGrad


def _keys(report) -> set:
    return {r.hint_key for r in report.results if r.hint_key}


def _run(exercise, impl, hidden=True):
    ex = EXERCISES[exercise]
    return check(exercise, impl, points=ex.points, device="cpu", hidden=hidden)


# ----------------------------------------------------------------------------- typical mistakes
@pytest.mark.parametrize("exercise", [e for e, ex in EXERCISES.items() if ex.mistakes])
def test_each_mistake_hint_fires_on_its_mistake_and_on_no_other(exercise):
    """Every listed mistake, handed in as the student's code, gets its own hint; the
    implementations of the exercise's other mistakes (wrong for another reason) do not get it,
    unless the two are the same function on every case."""
    ex = EXERCISES[exercise]
    cases, expectations = ex.cases(None, True)
    values = {}
    for m in ex.mistakes:
        with torch.no_grad():
            values[m] = [ex.call_for_value(m.fn, c, c.args, dict(c.kwargs)) for c in cases]
    for m in ex.mistakes:
        impl = as_module(m.fn) if ex.kind == "module" else m.fn
        report = _run(exercise, impl)
        shown = _keys(report)
        own = ex.mistake_hint(m).key
        assert own in shown or report.results[0].status == "forbidden", f"{exercise}: {m.hint[:40]} not named:\n{report}"
        for other in ex.mistakes:
            key = ex.mistake_hint(other).key
            if other is m or key not in shown:
                continue
            same = all(judge.compare(a, b, c.float_dtype()) is None for a, b, c in zip(values[m], values[other], cases))
            assert same, f"{exercise}: the hint of {other.hint[:30]} fired on {m.hint[:30]}"


# ----------------------------------------------------------------------------- premises
def test_every_hint_states_a_known_premise():
    with pytest.raises(ValueError):
        judge.Hint("x", "文本", "a premise nobody measures")
    for ex in EXERCISES.values():
        for m in ex.mistakes:
            assert ex.mistake_hint(m).premise == "mistake"


def test_gradient_exercises_never_claim_a_value_was_right():
    """No "损失值…一致" / "值正确" in exercises that return a gradient (there is no loss value)."""
    def mse_grad(pred, target):                      # wrong where |r| > 1 only: no factor
        r = pred - target
        return 2 * r.clamp(-1, 1) / pred.numel()
    for exercise, impl in (("mse_grad", mse_grad), ("numerical_grad", _numgrad_squared)):
        report = _run(exercise, impl)
        text = str(report)
        assert not report.passed
        assert "损失值" not in text and "值正确" not in text, text
        assert not {k for k in _keys(report) if k == judge.VALUE_EQUAL_HINT.key}


def _numgrad_squared(f, x, eps=1e-6):
    work = x.detach().clone().reshape(-1)
    grad = torch.empty_like(work)
    for i in range(work.numel()):
        a, b = work.clone(), work.clone()
        a[i] += eps
        b[i] -= eps
        grad[i] = (float(f(a.reshape(x.shape))) - float(f(b.reshape(x.shape)))) / (2 * eps)
    return grad.reshape(x.shape) ** 2


def test_numerical_grad_never_speaks_of_a_graph():
    """numerical_grad has no autograd graph: a zero result, a Python number, a detach are
    never explained by "计算图"."""
    cases = [lambda f, x, eps=1e-6: torch.zeros_like(x), lambda f, x, eps=1e-6: float(f(x)),
             lambda f, x, eps=1e-6: x.detach() * 0]
    for impl in cases:
        text = str(_run("numerical_grad", impl))
        assert "计算图" not in text, text


def test_a_factor_needs_two_cases_and_is_never_one():
    """A gradient wrong only on the N=1, C=2 case looks like a factor there (its row is (a, −a)):
    one case is no evidence, and no factor is named. A gradient c×1.00001 off is no factor either."""
    def ce_grad(logits, target):
        p = torch.softmax(logits, 1)
        onehot = F.one_hot(target, logits.shape[1]).to(logits.dtype)
        return (p - onehot) / max(logits.shape[0], 2)        # right except when N = 1
    report = _run("cross_entropy_grad", ce_grad)
    failed = [r for r in report.results if not r.passed]
    assert [r.name for r in failed] == ["N=1, C=2（隐藏用例）"], str(report)
    assert not any(k.startswith("factor") for k in _keys(report)) and "倍" not in failed[0].message, str(report)

    def mse(pred, target):
        v = ((pred - target) ** 2).mean()
        return v + 1e-3 * (v - v.detach())               # every gradient 1.001×: near, but no factor
    report = _run("mse", mse)
    assert not report.passed and not any(k.startswith("factor") for k in _keys(report)), str(report)
    assert "1 倍" not in str(report) and "常数因子" not in str(report)


def test_a_factor_consistent_across_cases_is_named():
    def mse(pred, target):
        v = ((pred - target) ** 2).mean()
        return v + 2.7 * (v - v.detach())                  # 3.7× on every case
    report = _run("mse", mse)
    assert "factor-const" in _keys(report) and "3.7 倍" in str(report), str(report)


def test_few_wrong_elements_get_no_piecewise_or_epsilon_guess():
    """A bug that shows on a few elements, not at a kink, without an ε: the old "检查分段函数的
    条件（< 还是 <=）…如果加了 ε" guess is gone; the message says where, and that is all."""
    def huber(pred, target, delta=1.0):
        r = (pred - target).abs()
        out = torch.where(r <= delta, 0.5 * r ** 2, delta * r - 0.5 * delta ** 2)
        return (out + (r > 2.5 * delta) * 0.3 * (r - 2.5 * delta)).mean()      # a third segment
    report = _run("huber", huber)
    text = str(report)
    assert not report.passed and "分段函数" not in text and "ε" not in text and "常数因子" not in text, text
    assert not report.hints, text


def test_label_smoothing_near_miss_does_not_call_the_smoothing_an_epsilon():
    def ls(logits, target, smoothing=0.1):
        p = torch.softmax(logits, 1) + 1e-5
        log_p = torch.log(p)
        nll = -log_p.gather(1, target[:, None])[:, 0]
        return ((1 - smoothing) * nll - smoothing * log_p.mean(1)).mean()
    report = _run("label_smoothing_ce", ls)
    text = str(report)
    assert not report.passed and "epsilon-label-smoothing" in _keys(report), text
    assert "减小到 1e-6" not in text and judge.EPSILON_HINT.text not in text


def test_no_epsilon_hint_where_the_formula_has_no_place_for_one():
    def mse(pred, target):
        return ((pred - target) ** 2).mean() * (1 + 3e-4)
    report = _run("mse", mse)
    assert not report.passed and not report.hints, str(report)
    assert "非常接近" in str(report)


# ----------------------------------------------------------------------------- graph: no_grad, cuts
def _mse_no_grad(pred, target):
    with torch.no_grad():
        return ((pred - target) ** 2).mean()


@torch.no_grad()
def _mse_decorated(pred, target):
    return ((pred - target) ** 2).mean()


def _mse_set_grad(pred, target):
    torch.set_grad_enabled(False)
    try:
        return ((pred - target) ** 2).mean()
    finally:
        torch.set_grad_enabled(True)


def _mse_inference(pred, target):
    with torch.inference_mode():
        return ((pred - target) ** 2).mean()


NO_GRAD = [("mse", _mse_no_grad), ("mse", _mse_decorated), ("mse", _mse_set_grad), ("mse", _mse_inference),
           ("focal_module", FocalLossNoGrad)]


@pytest.mark.parametrize("exercise,impl", NO_GRAD, ids=[f"{e}-{getattr(f, '__name__', '')}" for e, f in NO_GRAD])
def test_no_grad_is_named(exercise, impl):
    report = _run(exercise, impl, hidden=False)
    assert _keys(report) == {"graph-no-grad"}, str(report)
    assert "torch.no_grad()" in str(report)


GRAPH_BUGS = [
    ("detach", lambda p, t: ((p.detach() - t) ** 2).mean(), {"graph-cut"}, ".detach()"),
    ("item", lambda p, t: torch.tensor(((p - t) ** 2).mean().item(), dtype=p.dtype), {"graph-cut"}, ".item()"),
    ("data", lambda p, t: ((p.data - t) ** 2).mean() + 0 * p.sum(), {"graph-cut"}, ".data"),
    ("round", lambda p, t: ((p - t) ** 2).mean().detach() + 0 * p.round().sum(), {"graph-cut"}, ".round()"),
]


@pytest.mark.parametrize("name,impl,keys,word", GRAPH_BUGS, ids=[g[0] for g in GRAPH_BUGS])
def test_a_cut_graph_names_the_call_and_never_no_grad(name, impl, keys, word):
    report = _run("mse", impl, hidden=False)
    assert _keys(report) == keys and word in str(report), str(report)
    assert "torch.no_grad()" not in str(report)


def test_graph_hints_need_their_premise():
    """A wrong formula with an intact graph (sum instead of mean), an unobserved cut (a custom
    autograd.Function whose backward returns zeros) and a Python float: no graph-cut or
    no_grad hint."""
    class ZeroBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, p, t):
            return ((p - t) ** 2).mean()

        @staticmethod
        def backward(ctx, g):
            return None, None
    for impl in (lambda p, t: ((p - t) ** 2).sum(), ZeroBackward.apply, lambda p, t: float(((p - t) ** 2).mean())):
        keys = _keys(_run("mse", impl, hidden=False))
        assert not keys & {"graph-cut", "graph-no-grad"}, keys


# ----------------------------------------------------------------------------- exceptions
def _ce_onehot_float(logits, target):
    return -(F.log_softmax(logits, 1) * F.one_hot(target.float(), logits.shape[1])).sum(1).mean()


def _ce_broadcast(logits, target):
    return -(F.log_softmax(logits, 1) * target).sum(1).mean()


def _mse_numpy(pred, target):
    import numpy as np
    return torch.tensor(np.mean((pred.numpy() - target.numpy()) ** 2))


def _mse_inplace_leaf(pred, target):
    pred -= target
    return (pred ** 2).mean()


def _mse_inplace_version(pred, target):
    r = pred - target
    sq = r ** 2
    r.mul_(1.0)                                   # pow's saved input changed: backward refuses
    return sq.mean()


def _mse_argcount(pred, target, reduction):
    return ((pred - target) ** 2).mean()


def _mse_device(pred, target):
    return ((pred - target.to("meta")) ** 2).mean()


def _mse_view(pred, target):
    return ((pred.view(-1) - target.view(-1)) ** 2).mean()


def _huber_if(pred, target, delta=1.0):
    r = (pred - target).abs()
    return (0.5 * r ** 2 if r <= delta else delta * r - 0.5 * delta ** 2).mean()


def _ce_dim(logits, target):
    return -torch.log_softmax(logits, 2).gather(1, target[:, None]).mean()


def _ce_dtype(logits, target):
    onehot = F.one_hot(target, logits.shape[1]).float()          # float32 even for float64 logits
    return -torch.einsum("nc,nc->n", onehot, F.log_softmax(logits, 1)).mean()


class _FocalNoSuper(nn.Module):
    def __init__(self, alpha=1, gamma=2):
        self.alpha, self.gamma = alpha, gamma

    def forward(self, inputs, targets):
        return F.cross_entropy(inputs, targets)


EXCEPTIONS = [
    ("index", "cross_entropy", _ce_onehot_float, "one_hot is only applicable"),
    ("shape", "cross_entropy", _ce_broadcast, "The size of tensor a"),
    ("numpy-grad", "mse", _mse_numpy, "Can't call numpy()"),
    ("inplace-leaf", "mse", _mse_inplace_leaf, "leaf Variable"),
    ("inplace-version", "mse", _mse_inplace_version, "inplace operation"),
    ("argcount", "mse", _mse_argcount, "required positional argument"),
    ("device", "mse", _mse_device, "device"),
    ("view", "mse", _mse_view, "view size is not compatible"),
    ("bool", "huber", _huber_if, "Boolean value of Tensor"),
    ("dim", "cross_entropy", _ce_dim, "Dimension out of range"),
    ("dtype", "cross_entropy", _ce_dtype, "expected scalar type"),
    ("super-init", "focal_module", _FocalNoSuper, "_parameters"),
]


@pytest.mark.parametrize("kind,exercise,impl,original", EXCEPTIONS, ids=[e[0] for e in EXCEPTIONS])
def test_common_exceptions_are_explained_in_chinese(kind, exercise, impl, original):
    report = _run(exercise, impl, hidden=False)
    failed = [r for r in report.results if not r.passed]
    assert failed, str(report)
    bad = failed[0]
    assert bad.hint_key == f"exception-{kind}", (bad.hint_key, bad.message)
    explanation, _, kept = bad.message.partition("<br>原始错误信息：")
    assert re.search(r"[\u4e00-\u9fff]{6}", explanation.split("：", 1)[-1]), bad.message    # a Chinese sentence
    assert original in kept, bad.message                                             # the original below
    assert bad.book in judge.BOOK_SECTIONS or (bad.book is None and EXERCISES[exercise].book is None)
    others = {k for k, *_ in EXCEPTIONS if k != kind}
    assert not any(f"exception-{o}" == bad.hint_key for o in others)


def test_internal_paths_are_cut_from_the_original_message():
    message = ("expected scalar type Float but found Double (Triggered internally at "
               "/pytorch/aten/src/ATen/native/TensorCompare.cpp:123.)\nException raised from check at "
               "/opt/conda/conda-bld/pytorch_1/work/c10/core/X.cpp:7 (most recent call first):\nframe #0: c10::f")
    text, hint = judge.describe_error({"type": "RuntimeError", "message": message}, None)
    assert "pytorch" not in text and "frame #" not in text and "conda" not in text, text
    assert "expected scalar type Float but found Double" in text and hint.key == "exception-dtype"
    text, hint = judge.describe_error({"type": "RuntimeError", "message": "boom at /usr/lib/python3/site-packages/torch/x.py"})
    assert "site-packages" not in text and hint is None


def test_an_unknown_exception_keeps_the_neutral_message():
    def mse(pred, target):
        raise ValueError("我自己的检查失败了")
    bad = _run("mse", mse, hidden=False).results[0]
    assert bad.hint is None and "ValueError: 我自己的检查失败了" in bad.message
