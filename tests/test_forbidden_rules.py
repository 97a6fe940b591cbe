"""Forbidden rules bind exactly what each exercise forbids (docs/grader.md, "Forbidden built-ins").

A rule names a function and, where it is conditional, the argument (label_smoothing=,
beta=0), bound by name or position (inspect.Signature.bind in the runtime, with the parameters
the judge sends); it covers every entry point of the same kernel (F.*, nn modules,
torch._C._nn.*, torch.<op>, torch.ops.aten.* and its overloads), and it never matches an
autograd node that an allowed call also leaves (label_smoothing_ce allows plain
F.cross_entropy, whose NllLossBackward0 the old F.nll_loss rule matched).

Per exercise with rules: every allowed built-in gets full marks, every forbidden spelling is
refused, and the spellings together reach every entry point of every rule.

(The sandbox path runs the same runtime and judge; there the back-door scan also refuses
torch._C, torch.ops and DisableTorchFunction outright: tests/test_forbidden_observation.py.)
"""
from __future__ import annotations

import functools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lossgrader import check, runtime
from lossgrader.exercises import EXERCISES
from lossgrader.exercises.common import KERNELS, NODE_PRODUCERS, Forbidden, entry_points

_nn = torch._C._nn
aten = torch.ops.aten


def _no_torch_function(fn):
    """``fn`` run with __torch_function__ off: no function spy sees it, only the autograd node."""
    def wrapped(*args, **kwargs):
        with torch._C.DisableTorchFunction():
            return fn(*args, **kwargs)
    return wrapped


def _grad_of(loss_fn):
    """A gradient exercise answered with autograd through ``loss_fn``."""
    def grad(pred, target):
        p = pred.detach().clone().requires_grad_(True)
        return torch.autograd.grad(loss_fn(p, target), p)[0]
    return grad


def _ls_rest(x, smoothing):
    return smoothing * (-F.log_softmax(x, 1).mean(1)).mean()


# ----------------------------------------------------------------------------- allowed built-ins
ALLOWED = {
    "mse": {
        "torch.square + mean": lambda p, t: torch.square(p - t).mean(),
        "vector_norm": lambda p, t: torch.linalg.vector_norm(p - t) ** 2 / p.numel(),
        "F.l1_loss of squares": lambda p, t: F.l1_loss((p - t) ** 2, torch.zeros_like(p)),
    },
    "mae": {
        "F.smooth_l1_loss(beta=1) is not L1": lambda p, t: (p - t).abs().mean() + 0 * F.smooth_l1_loss(p, t, beta=1.0),
        "torch.dist": lambda p, t: torch.dist(p, t, 1) / p.numel(),
        "F.pairwise_distance p=1": lambda p, t: F.pairwise_distance(p.reshape(1, -1), t.reshape(1, -1), p=1, eps=0)[0] / p.numel(),
    },
    "mae_grad": {
        "torch.sign": lambda p, t: torch.sign(p - t) / p.numel(),
        "torch.sgn": lambda p, t: torch.sgn(p - t) / p.numel(),
    },
    "mse_grad": {"torch.sub": lambda p, t: 2 * torch.sub(p, t) / p.numel()},
    "huber": {"F.l1_loss + where": lambda p, t, delta=1.0: torch.where(
        (p - t).abs() <= delta, 0.5 * (p - t) ** 2, delta * ((p - t).abs() - 0.5 * delta)).mean()
        + 0 * F.l1_loss(p, t)},
    "smooth_l1": {"F.l1_loss where β = 0": lambda p, t, beta=1.0: torch.where(
        (p - t).abs() < beta, 0.5 * (p - t) ** 2 / max(beta, 1e-30), (p - t).abs() - 0.5 * beta).mean()},
    "bce": {"F.logsigmoid of logit": lambda p, t: -(t * torch.log(p).clamp(min=-100)
                                                    + (1 - t) * torch.log1p(-p).clamp(min=-100)).mean()},
    "bce_logits": {
        "F.softplus": lambda x, t: (F.softplus(x) - x * t).mean(),
        "F.logsigmoid": lambda x, t: -(t * F.logsigmoid(x) + (1 - t) * F.logsigmoid(-x)).mean(),
    },
    "bce_logits_grad": {"torch.sigmoid": lambda x, t: (torch.sigmoid(x) - t) / x.numel()},
    "cross_entropy": {
        "F.log_softmax + gather": lambda x, t: -F.log_softmax(x, 1).gather(1, t[:, None]).mean(),
        "torch.logsumexp": lambda x, t: (torch.logsumexp(x, 1) - x.gather(1, t[:, None])[:, 0]).mean(),
    },
    "cross_entropy_grad": {
        "F.softmax + F.one_hot": lambda x, t: (F.softmax(x, 1) - F.one_hot(t, x.shape[1]).to(x.dtype)) / x.shape[0],
    },
    "weighted_ce": {"F.log_softmax": lambda x, t, w: (w[t] * -F.log_softmax(x, 1).gather(1, t[:, None])[:, 0]).sum()
                    / w[t].sum()},
    "label_smoothing_ce": {
        "plain F.cross_entropy": lambda x, t, smoothing=0.1: (1 - smoothing) * F.cross_entropy(x, t) + _ls_rest(x, smoothing),
        "plain nn.CrossEntropyLoss": lambda x, t, smoothing=0.1: (1 - smoothing) * nn.CrossEntropyLoss()(x, t)
        + _ls_rest(x, smoothing),
        "label_smoothing=0.0 (by keyword)": lambda x, t, smoothing=0.1: (1 - smoothing) * F.cross_entropy(
            x, t, label_smoothing=0.0) + _ls_rest(x, smoothing),
        "label_smoothing=0 (by position)": lambda x, t, smoothing=0.1: (1 - smoothing) * F.cross_entropy(
            x, t, None, None, -100, None, "mean", 0.0) + _ls_rest(x, smoothing),
        "torch._C._nn.cross_entropy_loss, 0.0": lambda x, t, smoothing=0.1: (1 - smoothing) * _nn.cross_entropy_loss(
            x, t, None, 1, -100, 0.0) + _ls_rest(x, smoothing),
        "F.nll_loss + F.log_softmax": lambda x, t, smoothing=0.1: (1 - smoothing) * F.nll_loss(F.log_softmax(x, 1), t)
        + _ls_rest(x, smoothing),
        "F.cross_entropy with probability targets": lambda x, t, smoothing=0.1: F.cross_entropy(
            x, F.one_hot(t, x.shape[1]).to(x.dtype) * (1 - smoothing) + smoothing / x.shape[1]),
    },
    "triplet": {"F.pairwise_distance": lambda a, p, n, margin=1.0: torch.clamp(
        F.pairwise_distance(a, p) - F.pairwise_distance(a, n) + margin, min=0).mean()},
    "mae_api": {"nn.L1Loss": lambda p, t: nn.L1Loss()(p, t)},
}


def _ls_module(builtin):
    class LabelSmoothingCrossEntropy(nn.Module):
        def __init__(self, smoothing=0.1):
            super().__init__()
            self.smoothing = smoothing

        def forward(self, pred, target):
            return builtin(pred, target, self.smoothing)
    return LabelSmoothingCrossEntropy


ALLOWED["label_smoothing_module"] = {name: _ls_module(fn) for name, fn in ALLOWED["label_smoothing_ce"].items()}


# ----------------------------------------------------------------------------- forbidden spellings
def _renamed(fn):
    alias = fn
    return lambda *a, **k: alias(*a, **k)


FORBIDDEN = {
    "mse": {
        "F.mse_loss": lambda p, t: F.mse_loss(p, t),
        "nn.MSELoss": lambda p, t: nn.MSELoss()(p, t),
        "functools.partial": functools.partial(F.mse_loss, reduction="mean"),
        "torch._C._nn.mse_loss": lambda p, t: _nn.mse_loss(p, t, 1),
        "aten.mse_loss": lambda p, t: aten.mse_loss(p, t),
        "aten.mse_loss.default": lambda p, t: aten.mse_loss.default(p, t, 1),
        "DisableTorchFunction": _no_torch_function(lambda p, t: F.mse_loss(p, t)),
        "2·F.huber_loss(δ=1e6)": lambda p, t: 2 * F.huber_loss(p, t, delta=1e6),
        "2β·F.smooth_l1_loss(β=1e6)": lambda p, t: 2e6 * F.smooth_l1_loss(p, t, beta=1e6),
        "torch._C._nn.huber_loss": lambda p, t: 2 * _nn.huber_loss(p, t, 1, 1e6),
        "aten.smooth_l1_loss": lambda p, t: 2e6 * aten.smooth_l1_loss(p, t, 1, 1e6),
        "torch._C._nn.smooth_l1_loss": lambda p, t: 2e6 * _nn.smooth_l1_loss(p, t, 1, 1e6),
        "aten.huber_loss": lambda p, t: 2 * aten.huber_loss(p, t, 1, 1e6),
        "nn.HuberLoss": lambda p, t: 2 * nn.HuberLoss(delta=1e6)(p, t),
    },
    "mse_grad": {
        "Tensor.backward": lambda p, t: _backward_grad(p, t),
        "torch.autograd.grad": _grad_of(lambda p, t: ((p - t) ** 2).mean()),
        "torch.autograd.backward": lambda p, t: _autograd_backward_grad(p, t),
        "torch.func.grad": lambda p, t: torch.func.grad(lambda q: ((q - t) ** 2).mean())(p),
        "torch.autograd.functional.jacobian": lambda p, t: torch.autograd.functional.jacobian(
            lambda q: ((q - t) ** 2).mean(), p),
        "F.mse_loss by hand": lambda p, t: 2 * (p - t) / p.numel() + 0 * F.mse_loss(p, t),
        "aten.mse_loss": lambda p, t: 2 * (p - t) / p.numel() + 0 * aten.mse_loss(p, t),
        "torch._C._nn.mse_loss": lambda p, t: 2 * (p - t) / p.numel() + 0 * _nn.mse_loss(p, t, 1),
    },
    "mae": {
        "F.l1_loss": lambda p, t: F.l1_loss(p, t),
        "nn.L1Loss": lambda p, t: nn.L1Loss()(p, t),
        "torch._C._nn.l1_loss": lambda p, t: _nn.l1_loss(p, t, 1),
        "aten.l1_loss": lambda p, t: aten.l1_loss(p, t),
        "aten.l1_loss.default": lambda p, t: aten.l1_loss.default(p, t, 1),
        "F.smooth_l1_loss(beta=0.0)": lambda p, t: F.smooth_l1_loss(p, t, beta=0.0),
        "F.smooth_l1_loss, β by position": lambda p, t: F.smooth_l1_loss(p, t, None, None, "mean", 0.0),
        "nn.SmoothL1Loss(beta=0)": lambda p, t: nn.SmoothL1Loss(beta=0)(p, t),
        "torch._C._nn.smooth_l1_loss, β by position": lambda p, t: _nn.smooth_l1_loss(p, t, 1, 0.0),
        "aten.smooth_l1_loss, β by keyword": lambda p, t: aten.smooth_l1_loss(p, t, beta=0.0),
        "aten.smooth_l1_loss.default, β by position": lambda p, t: aten.smooth_l1_loss.default(p, t, 1, 0.0),
    },
    "mae_grad": {
        "torch.autograd.grad": _grad_of(lambda p, t: (p - t).abs().mean()),
        "F.l1_loss": _grad_of(lambda p, t: F.l1_loss(p, t)),
        "F.smooth_l1_loss(beta=0)": lambda p, t: torch.sign(p - t) / p.numel() + 0 * F.smooth_l1_loss(p, t, beta=0),
        "aten.smooth_l1_loss(β=0)": lambda p, t: torch.sign(p - t) / p.numel() + 0 * aten.smooth_l1_loss(p, t, 1, 0.0),
        "torch._C._nn.smooth_l1_loss(β=0)": lambda p, t: torch.sign(p - t) / p.numel()
        + 0 * _nn.smooth_l1_loss(p, t, 1, 0.0),
        "torch._C._nn.l1_loss": lambda p, t: torch.sign(p - t) / p.numel() + 0 * _nn.l1_loss(p, t, 1),
        "aten.l1_loss": lambda p, t: torch.sign(p - t) / p.numel() + 0 * aten.l1_loss(p, t),
    },
    "huber": {
        "F.huber_loss": lambda p, t, delta=1.0: F.huber_loss(p, t, delta=delta),
        "nn.HuberLoss": lambda p, t, delta=1.0: nn.HuberLoss(delta=delta)(p, t),
        "F.smooth_l1_loss·δ": lambda p, t, delta=1.0: delta * F.smooth_l1_loss(p, t, beta=delta),
        "torch._C._nn.huber_loss": lambda p, t, delta=1.0: _nn.huber_loss(p, t, 1, delta),
        "aten.huber_loss": lambda p, t, delta=1.0: aten.huber_loss(p, t, 1, delta),
        "torch._C._nn.smooth_l1_loss": lambda p, t, delta=1.0: delta * _nn.smooth_l1_loss(p, t, 1, delta),
        "aten.smooth_l1_loss.default": lambda p, t, delta=1.0: delta * aten.smooth_l1_loss.default(p, t, 1, delta),
        "DisableTorchFunction": _no_torch_function(lambda p, t, delta=1.0: F.huber_loss(p, t, delta=delta)),
    },
    "smooth_l1": {
        "F.smooth_l1_loss": lambda p, t, beta=1.0: F.smooth_l1_loss(p, t, beta=beta),
        "nn.SmoothL1Loss": lambda p, t, beta=1.0: nn.SmoothL1Loss(beta=beta)(p, t),
        "F.huber_loss/β": lambda p, t, beta=1.0: F.huber_loss(p, t, delta=beta) / beta,
        "torch._C._nn.smooth_l1_loss": lambda p, t, beta=1.0: _nn.smooth_l1_loss(p, t, 1, beta),
        "aten.smooth_l1_loss": lambda p, t, beta=1.0: aten.smooth_l1_loss(p, t, 1, beta),
        "torch._C._nn.huber_loss": lambda p, t, beta=1.0: _nn.huber_loss(p, t, 1, beta) / beta,
        "aten.huber_loss.default": lambda p, t, beta=1.0: aten.huber_loss.default(p, t, 1, beta) / beta,
    },
    "bce": {
        "F.binary_cross_entropy": lambda p, t: F.binary_cross_entropy(p, t),
        "nn.BCELoss": lambda p, t: nn.BCELoss()(p, t),
        "torch._C._nn.binary_cross_entropy": lambda p, t: _nn.binary_cross_entropy(p, t, None, 1),
        "aten.binary_cross_entropy": lambda p, t: aten.binary_cross_entropy(p, t),
        "F.binary_cross_entropy_with_logits(logit)": lambda p, t: F.binary_cross_entropy_with_logits(torch.logit(p), t),
        "torch.binary_cross_entropy_with_logits": lambda p, t: torch.binary_cross_entropy_with_logits(
            torch.logit(p), t, None, None, 1),
        "aten.binary_cross_entropy_with_logits": lambda p, t: aten.binary_cross_entropy_with_logits(torch.logit(p), t),
        "DisableTorchFunction": _no_torch_function(lambda p, t: F.binary_cross_entropy(p, t)),
    },
    "bce_logits": {
        "F.binary_cross_entropy_with_logits": lambda x, t: F.binary_cross_entropy_with_logits(x, t),
        "nn.BCEWithLogitsLoss": lambda x, t: nn.BCEWithLogitsLoss()(x, t),
        "torch.binary_cross_entropy_with_logits": lambda x, t: torch.binary_cross_entropy_with_logits(x, t, None, None, 1),
        "aten.binary_cross_entropy_with_logits": lambda x, t: aten.binary_cross_entropy_with_logits(x, t),
        "F.binary_cross_entropy(sigmoid)": lambda x, t: F.binary_cross_entropy(torch.sigmoid(x), t),
        "torch._C._nn.binary_cross_entropy": lambda x, t: _nn.binary_cross_entropy(torch.sigmoid(x), t, None, 1),
        "aten.binary_cross_entropy.default": lambda x, t: aten.binary_cross_entropy.default(torch.sigmoid(x), t),
    },
    "bce_logits_grad": {
        "Tensor.backward": lambda x, t: _backward_grad(x, t, lambda a, b: (F.softplus(a) - a * b).mean()),
        "F.binary_cross_entropy_with_logits": _grad_of(F.binary_cross_entropy_with_logits),
        "torch.binary_cross_entropy_with_logits": lambda x, t: (torch.sigmoid(x) - t) / x.numel()
        + 0 * torch.binary_cross_entropy_with_logits(x, t, None, None, 1),
        "aten.binary_cross_entropy_with_logits": lambda x, t: (torch.sigmoid(x) - t) / x.numel()
        + 0 * aten.binary_cross_entropy_with_logits(x, t),
    },
    "cross_entropy": {
        "F.cross_entropy": lambda x, t: F.cross_entropy(x, t),
        "nn.CrossEntropyLoss": lambda x, t: nn.CrossEntropyLoss()(x, t),
        "torch._C._nn.cross_entropy_loss": lambda x, t: _nn.cross_entropy_loss(x, t, None, 1, -100, 0.0),
        "aten.cross_entropy_loss": lambda x, t: aten.cross_entropy_loss(x, t),
        "F.nll_loss": lambda x, t: F.nll_loss(F.log_softmax(x, 1), t),
        "nn.NLLLoss": lambda x, t: nn.NLLLoss()(F.log_softmax(x, 1), t),
        "torch._C._nn.nll_loss": lambda x, t: _nn.nll_loss(F.log_softmax(x, 1), t, None, 1, -100),
        "torch._C._nn.nll_loss_nd": lambda x, t: _nn.nll_loss_nd(F.log_softmax(x, 1), t, None, 1, -100),
        "torch._C._nn.nll_loss2d": lambda x, t: _nn.nll_loss2d(F.log_softmax(x, 1)[:, :, None, None], t[:, None, None],
                                                               None, 1, -100),
        "aten.nll_loss": lambda x, t: aten.nll_loss(F.log_softmax(x, 1), t),
        "aten.nll_loss_nd.default": lambda x, t: aten.nll_loss_nd.default(F.log_softmax(x, 1), t),
        "aten.nll_loss2d": lambda x, t: aten.nll_loss2d(F.log_softmax(x, 1)[:, :, None, None], t[:, None, None]),
        "DisableTorchFunction": _no_torch_function(lambda x, t: F.cross_entropy(x, t)),
    },
    "cross_entropy_grad": {
        "torch.autograd.grad": _grad_of(lambda x, t: (torch.logsumexp(x, 1) - x.gather(1, t[:, None])[:, 0]).mean()),
        "F.cross_entropy": _grad_of(F.cross_entropy),
        "torch._C._nn.cross_entropy_loss": lambda x, t: (F.softmax(x, 1) - F.one_hot(t, x.shape[1]).to(x.dtype))
        / x.shape[0] + 0 * _nn.cross_entropy_loss(x, t, None, 1, -100, 0.0),
        "aten.cross_entropy_loss": lambda x, t: (F.softmax(x, 1) - F.one_hot(t, x.shape[1]).to(x.dtype))
        / x.shape[0] + 0 * aten.cross_entropy_loss(x, t),
    },
    "weighted_ce": {
        "F.cross_entropy(weight=)": lambda x, t, w: F.cross_entropy(x, t, weight=w),
        "nn.CrossEntropyLoss(weight)": lambda x, t, w: nn.CrossEntropyLoss(w)(x, t),
        "F.nll_loss(weight=)": lambda x, t, w: F.nll_loss(F.log_softmax(x, 1), t, weight=w),
        "torch._C._nn.cross_entropy_loss": lambda x, t, w: _nn.cross_entropy_loss(x, t, w, 1, -100, 0.0),
        "aten.cross_entropy_loss.default": lambda x, t, w: aten.cross_entropy_loss.default(x, t, w),
        "torch._C._nn.nll_loss": lambda x, t, w: _nn.nll_loss(F.log_softmax(x, 1), t, w, 1, -100),
        "aten.nll_loss": lambda x, t, w: aten.nll_loss(F.log_softmax(x, 1), t, w),
        "torch._C._nn.nll_loss_nd": lambda x, t, w: _nn.nll_loss_nd(F.log_softmax(x, 1), t, w, 1, -100),
        "aten.nll_loss_nd": lambda x, t, w: aten.nll_loss_nd(F.log_softmax(x, 1), t, w),
        "torch._C._nn.nll_loss2d": lambda x, t, w: _nn.nll_loss2d(F.log_softmax(x, 1)[:, :, None, None],
                                                                  t[:, None, None], w, 1, -100),
        "aten.nll_loss2d.default": lambda x, t, w: aten.nll_loss2d.default(F.log_softmax(x, 1)[:, :, None, None],
                                                                           t[:, None, None], w),
        "DisableTorchFunction": _no_torch_function(lambda x, t, w: F.cross_entropy(x, t, weight=w)),
    },
    "label_smoothing_ce": {
        "F.cross_entropy, keyword": lambda x, t, smoothing=0.1: F.cross_entropy(x, t, label_smoothing=smoothing),
        "F.cross_entropy, position": lambda x, t, smoothing=0.1: F.cross_entropy(x, t, None, None, -100, None, "mean",
                                                                                smoothing),
        "nn.CrossEntropyLoss, keyword": lambda x, t, smoothing=0.1: nn.CrossEntropyLoss(label_smoothing=smoothing)(x, t),
        "nn.CrossEntropyLoss, position": lambda x, t, smoothing=0.1: nn.CrossEntropyLoss(
            None, None, -100, None, "mean", smoothing)(x, t),
        "functools.partial": lambda x, t, smoothing=0.1: functools.partial(F.cross_entropy, label_smoothing=smoothing)(x, t),
        "renamed F.cross_entropy": lambda x, t, smoothing=0.1: _renamed(F.cross_entropy)(x, t, label_smoothing=smoothing),
        "torch._C._nn.cross_entropy_loss, position": lambda x, t, smoothing=0.1: _nn.cross_entropy_loss(
            x, t, None, 1, -100, smoothing),
        "torch._C._nn.cross_entropy_loss, keyword": lambda x, t, smoothing=0.1: _nn.cross_entropy_loss(
            x, t, label_smoothing=smoothing),
        "aten.cross_entropy_loss, position": lambda x, t, smoothing=0.1: aten.cross_entropy_loss(x, t, None, 1, -100,
                                                                                                 smoothing),
        "aten.cross_entropy_loss.default, keyword": lambda x, t, smoothing=0.1: aten.cross_entropy_loss.default(
            x, t, label_smoothing=smoothing),
    },
    "triplet": {
        "F.triplet_margin_loss": lambda a, p, n, margin=1.0: F.triplet_margin_loss(a, p, n, margin=margin),
        "nn.TripletMarginLoss": lambda a, p, n, margin=1.0: nn.TripletMarginLoss(margin=margin)(a, p, n),
        "torch.triplet_margin_loss": lambda a, p, n, margin=1.0: torch.triplet_margin_loss(a, p, n, margin, 2.0, 1e-6,
                                                                                           False, 1),
        "aten.triplet_margin_loss": lambda a, p, n, margin=1.0: aten.triplet_margin_loss(a, p, n, margin),
        "F.triplet_margin_with_distance_loss": lambda a, p, n, margin=1.0: F.triplet_margin_with_distance_loss(
            a, p, n, margin=margin),
        "nn.TripletMarginWithDistanceLoss": lambda a, p, n, margin=1.0: nn.TripletMarginWithDistanceLoss(
            margin=margin)(a, p, n),
    },
    "mae_api": {
        "nn.MSELoss": lambda p, t: nn.L1Loss()(p, t) + 0 * nn.MSELoss()(p, t),
        "torch._C._nn.mse_loss": lambda p, t: nn.L1Loss()(p, t) + 0 * _nn.mse_loss(p, t, 1),
        "aten.mse_loss": lambda p, t: nn.L1Loss()(p, t) + 0 * aten.mse_loss(p, t),
    },
    "numerical_grad": {
        "Tensor.backward": lambda f, x, eps=1e-6: _backward_grad(x, None, lambda a, _: f(a)),
        "torch.autograd.grad": lambda f, x, eps=1e-6: _grad_of(lambda a, _: f(a))(x, None),
        "torch.func.grad": lambda f, x, eps=1e-6: torch.func.grad(f)(x.detach()),
        "torch.autograd.backward": lambda f, x, eps=1e-6: _autograd_backward_grad(x, None, lambda a, _: f(a)),
    },
}
FORBIDDEN["label_smoothing_module"] = {name: _ls_module(fn) for name, fn in FORBIDDEN["label_smoothing_ce"].items()}

_LOSS_OF = {
    "bce_logits_grad": lambda x, t: (F.softplus(x) - x * t).mean(),
    "cross_entropy_grad": lambda x, t: (torch.logsumexp(x, 1) - x.gather(1, t[:, None])[:, 0]).mean(),
    "mae_grad": lambda p, t: (p - t).abs().mean(),
}
for _gradient, _loss in _LOSS_OF.items():
    FORBIDDEN[_gradient]["torch.autograd.backward"] = (lambda loss: lambda p, t: _autograd_backward_grad(p, t, loss))(_loss)
    FORBIDDEN[_gradient]["Tensor.backward"] = (lambda loss: lambda p, t: _backward_grad(p, t, loss))(_loss)


def _backward_grad(p, t, loss=lambda a, b: ((a - b) ** 2).mean()):
    q = p.detach().clone().requires_grad_(True)
    loss(q, t).backward()
    return q.grad


def _autograd_backward_grad(p, t, loss=lambda a, b: ((a - b) ** 2).mean()):
    q = p.detach().clone().requires_grad_(True)
    torch.autograd.backward(loss(q, t), inputs=[q])
    return q.grad


RULED = sorted(ex_id for ex_id, ex in EXERCISES.items() if ex.forbidden)


def _params(table):
    for exercise in RULED:
        for name, impl in table.get(exercise, {}).items():
            yield pytest.param(exercise, impl, id=f"{exercise}-{name}")


def test_every_exercise_with_rules_has_allowed_and_forbidden_spellings():
    assert set(FORBIDDEN) == set(RULED), set(FORBIDDEN) ^ set(RULED)
    missing = [e for e in RULED if not ALLOWED.get(e) and e not in ("numerical_grad", "mse_grad", "bce_logits_grad",
                                                                     "cross_entropy_grad", "mae_grad")]
    assert not missing, missing


@pytest.mark.parametrize("exercise,impl", list(_params(ALLOWED)))
def test_allowed_builtin_passes(exercise, impl):
    ex = EXERCISES[exercise]
    report = check(exercise, impl, points=ex.points, device="cpu", hidden=True)
    assert report.passed and report.score == ex.points, str(report)


@pytest.mark.parametrize("exercise,impl", list(_params(FORBIDDEN)))
def test_forbidden_spelling_is_refused(exercise, impl):
    ex = EXERCISES[exercise]
    report = check(exercise, impl, points=ex.points, device="cpu")
    assert report.score == 0 and report.results[0].status == "forbidden", str(report)


def _reported(exercise, impl) -> set:
    """The names the runtime reports for one call of ``impl`` on the exercise's first case."""
    ex = EXERCISES[exercise]
    cases, _ = ex.cases(None)
    ran = runtime.run(ex.request(cases[:1], "cpu"), impl)["cases"][0]
    calls = [c for run in ran.get("runs", [ran]) for c in run.get("calls", [])]
    return {name for name, _ in calls}


@pytest.mark.parametrize("exercise", RULED)
def test_the_spellings_reach_every_entry_point(exercise):
    """Every entry point of every rule (F function, torch._C._nn, torch.<op>, aten operator)
    is reported by some forbidden spelling: no rule has an entry point nobody tested."""
    reported = set()
    for impl in FORBIDDEN[exercise].values():
        reported |= _reported(exercise, impl)
    for rule in EXERCISES[exercise].forbidden:
        unreached = set(rule.points) - reported
        assert not unreached, f"{exercise} {rule.name}: no spelling reaches {sorted(unreached)}"


# ----------------------------------------------------------------------------- nodes
# Built-ins a student may legitimately call in some exercise: the autograd nodes they leave.
_x, _t = torch.randn(4, 3, requires_grad=True), torch.tensor([0, 2, 1, 2])
_p, _y = torch.rand(4, 3).clamp(0.05, 0.95).requires_grad_(True), torch.randint(0, 2, (4, 3)).float()
BUILTIN_CALLS = {
    "mse_loss": lambda: F.mse_loss(_x, _y),
    "l1_loss": lambda: F.l1_loss(_x, _y),
    "huber_loss": lambda: F.huber_loss(_x, _y),
    "smooth_l1_loss": lambda: F.smooth_l1_loss(_x, _y),
    "binary_cross_entropy": lambda: F.binary_cross_entropy(_p, _y),
    "binary_cross_entropy_with_logits": lambda: F.binary_cross_entropy_with_logits(_x, _y),
    "nll_loss": lambda: F.nll_loss(F.log_softmax(_x, 1), _t),
    "cross_entropy": lambda: F.cross_entropy(_x, _t),
    "cross_entropy(label_smoothing)": lambda: F.cross_entropy(_x, _t, label_smoothing=0.1),
    "triplet_margin_loss": lambda: F.triplet_margin_loss(_x, _x.flip(0), _x.roll(1, 0)),
    "log_softmax": lambda: F.log_softmax(_x, 1).sum(),
    "softmax": lambda: F.softmax(_x, 1).sum(),
    "logsigmoid": lambda: F.logsigmoid(_x).sum(),
    "softplus": lambda: F.softplus(_x).sum(),
    "pairwise_distance": lambda: F.pairwise_distance(_x, _x.flip(0)).sum(),
    "logsumexp": lambda: torch.logsumexp(_x, 1).sum(),
}


def _nodes(fn) -> set:
    return set(runtime.graph_ops(fn()))


@pytest.mark.parametrize("exercise", RULED)
def test_no_rule_matches_a_node_an_allowed_call_leaves(exercise):
    """For each built-in the exercise allows (not forbidden outright by its rules), none of
    the autograd nodes it leaves is matched by any rule of the exercise."""
    ex = EXERCISES[exercise]
    outright = {f.__name__ for r in ex.forbidden if r.arg is None for f in r.funcs}
    matched = {n for r in ex.forbidden for n in r.names if n.startswith("autograd.")}
    for name, fn in BUILTIN_CALLS.items():
        if name.split("(")[0] in outright:
            continue
        clash = matched & _nodes(fn)
        assert not clash, f"{exercise}: the allowed {name} leaves {sorted(clash)}, which a rule matches"


def test_the_node_table_is_what_torch_does():
    """KERNELS lists each kernel's own nodes: every listed node appears in the graph of the
    function, and NODE_PRODUCERS names every F function in BUILTIN_CALLS that leaves it."""
    for fname, (_, nodes, _) in KERNELS.items():
        if fname in BUILTIN_CALLS:
            got = _nodes(BUILTIN_CALLS[fname])
            assert {"autograd." + n for n in nodes if "2D" not in n} <= got, (fname, got)
    for node, producers in NODE_PRODUCERS.items():
        leave = {name for name, fn in BUILTIN_CALLS.items() if "(" not in name and node in _nodes(fn)}
        assert leave <= producers, f"{node} is also left by {sorted(leave - producers)}"


def test_label_smoothing_ce_allows_plain_cross_entropy_and_names_the_call_it_refuses():
    """The issue's case: plain F.cross_entropy was refused as "不允许调用 F.nll_loss"."""
    report = check("label_smoothing_ce", ALLOWED["label_smoothing_ce"]["plain F.cross_entropy"], device="cpu", hidden=True)
    assert report.passed and "nll_loss" not in report._repr_html_()
    report = check("label_smoothing_ce", FORBIDDEN["label_smoothing_ce"]["torch._C._nn.cross_entropy_loss, position"],
                   device="cpu")
    assert "torch._C._nn.cross_entropy_loss" in report.results[0].message
    assert "label_smoothing=0.1" in report.results[0].message


# ----------------------------------------------------------------------------- binding
def test_the_runtime_binds_positional_arguments_only_for_the_entry_points_asked():
    ex = EXERCISES["label_smoothing_ce"]
    cases, _ = ex.cases(None)
    request = ex.request(cases[:1], "cpu")
    assert "torch._C._nn.cross_entropy_loss" in request["bind"]

    def student(x, t, smoothing=0.1):
        torch.clamp(x, -1e9, 1e9)          # a positional scalar of a call nobody asked about
        return _nn.cross_entropy_loss(x, t, None, 1, -100, smoothing)
    calls = runtime.run(request, student)["cases"][0]["calls"]
    bound = [args for name, args in calls if name == "torch._C._nn.cross_entropy_loss"]
    assert bound and bound[0]["label_smoothing"] == 0.1 and bound[0]["reduction"] == 1, calls
    clamp = [args for name, args in calls if name.endswith("clamp")]
    assert clamp and clamp[0] == {}, "only the asked entry points report positional arguments"


def test_named_by_covers_modules_and_operators_but_not_conditional_rules():
    ce = Forbidden("F.cross_entropy", (F.cross_entropy,))
    assert ce.named_by("torch.nn.CrossEntropyLoss") and ce.named_by("torch._C._nn.cross_entropy_loss")
    assert ce.named_by("torch.nn.functional.cross_entropy") and not ce.named_by("torch.nn.functional.nll_loss")
    bce = Forbidden("F.binary_cross_entropy", (F.binary_cross_entropy,))
    assert bce.named_by("torch.nn.BCELoss") and not bce.named_by("torch.nn.BCEWithLogitsLoss")
    conditional = Forbidden("F.cross_entropy(label_smoothing=...)", (F.cross_entropy,), arg="label_smoothing")
    assert not conditional.named_by("torch.nn.functional.cross_entropy")


def test_entry_points_are_real_objects():
    """Every entry point name a rule lists is the name the runtime gives a real object."""
    for ex in EXERCISES.values():
        for rule in ex.forbidden:
            for f in rule.funcs:
                for name in entry_points(f):
                    assert name == runtime.qualname(f) or name.startswith(("torch._C._nn.", "aten.",
                                                                            "torch._VariableFunctionsClass.")), name
