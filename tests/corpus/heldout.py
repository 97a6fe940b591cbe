"""Held-out implementations in the styles the rest of the corpus lacks, with their verdicts and the
hints each must and must not get (issue 15).

Styles: torch.where / clamp forms, einsum, a hand-written logsumexp, float64 inside,
torch.special, JAX / Keras idioms (optax, jax.nn, tf.keras written with torch), blog and LLM
styles (docstrings, type hints, asserts, reduction arguments), subtle bugs, and forbidden
built-ins in disguise. Each entry says:

- ``verdict``: "right" (full marks, hidden cases included), "wrong" (less than full marks, no
  case refused as forbidden) or "forbidden" (refused on its first case, 0 points);
- ``hints``: hint keys the feedback must show (``judge.Hint.key``; a trailing ``*`` is a
  prefix: "mistake-*" is any typical mistake of the exercise), and ``expect``: a text it must
  contain;
- ``allowed``: for a wrong entry, every hint shown must match ``hints`` or ``allowed``: any
  other hint names a cause the code does not have (a misleading hint);
- ``not_hints``: hints that would mislead here, named explicitly (also counted for the grader
  before this round: ``MISLEADING_TEXT`` gives their old wording).

tests/test_heldout_corpus.py runs every entry.
"""
from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class Held:
    exercise: str
    name: str
    impl: Any
    verdict: str                 # "right", "wrong", "forbidden"
    style: str
    why: str = ""
    hints: tuple = ()
    allowed: tuple = ()
    not_hints: tuple = ()
    expect: str = ""

    @property
    def id(self) -> str:
        return f"{self.exercise}-{self.name}"


HELD: list = []


def _register(exercise, verdict, style, why="", hints=(), allowed=(), not_hints=(), expect="", name=None):
    def register(impl):
        HELD.append(Held(exercise, name or impl.__name__, impl, verdict, style, why, tuple(hints), tuple(allowed),
                         tuple(not_hints), expect))
        return impl
    return register


def right(exercise, style, why="", name=None):
    return _register(exercise, "right", style, why, name=name)


def wrong(exercise, style, why, hints=(), allowed=(), not_hints=(), expect="", name=None):
    return _register(exercise, "wrong", style, why, hints, allowed, not_hints, expect, name)


def forbidden(exercise, style, why, name=None):
    return _register(exercise, "forbidden", style, why, name=name)


# Hints that would name a cause these bugs do not have, by key, and how the grader before this
# round worded them (to count its misleading hints on this corpus).
MISLEADING_TEXT = {
    "factor-*": ("相差一个常数因子", "值正确而梯度差一个常数倍", "正好是参考梯度的"),
    "value-equal-gradient-differs": ("要么你的公式与课程的公式是不同的函数",),   # the old text guessed a detach
    "epsilon": ("只差一点点",),
    "graph-cut": ("某处切断了计算图", "检查是否在计算中用了 .detach()"),
    "graph-no-grad": ("torch.no_grad()",),
    "piecewise": ("检查分段函数的条件",),
    "kink": ("次梯度超出了有效范围",),
}
# Every wrong entry must not get these unless it names them in ``hints``.
GENERIC_MISLEADING = ("factor-*", "epsilon", "graph-cut", "graph-no-grad", "piecewise", "kink")


def _ls(logits):
    """log-softmax written out (the blog way)."""
    m = logits.max(dim=1, keepdim=True).values
    return logits - m - torch.log(torch.exp(logits - m).sum(dim=1, keepdim=True))


def _onehot(logits, target):
    return F.one_hot(target, logits.shape[1]).movedim(-1, 1).to(logits.dtype)


# =========================================================================== numerical_grad
@right("numerical_grad", "float64 inside", "central differences in float64, cast back")
def numgrad_float64(f, x, eps=1e-6):
    base = x.detach().to(torch.float64).reshape(-1).clone()
    grad = torch.empty_like(base)
    for i in range(base.numel()):
        step = torch.zeros_like(base)
        step[i] = eps
        grad[i] = (f((base + step).reshape(x.shape)) - f((base - step).reshape(x.shape))) / (2 * eps)
    return grad.reshape(x.shape).to(dtype=x.dtype, device=x.device)


@right("numerical_grad", "einsum / one-hot steps", "perturbations built from an identity matrix")
def numgrad_identity(f, x, eps=1e-6):
    flat = x.detach().reshape(-1)
    eye = torch.eye(flat.numel(), dtype=x.dtype, device=x.device)
    out = [(float(f((flat + eps * e).reshape(x.shape))) - float(f((flat - eps * e).reshape(x.shape)))) / (2 * eps)
           for e in eye]
    return torch.tensor(out, dtype=x.dtype, device=x.device).reshape(x.shape)


@right("numerical_grad", "LLM style", "docstring, type hints, torch.no_grad around f (no graph needed)")
def numgrad_llm(f, x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Estimate the gradient of a scalar function with central finite differences."""
    x_copy = x.detach().clone().contiguous()
    grad = torch.zeros_like(x_copy)
    flat_x, flat_g = x_copy.view(-1), grad.view(-1)
    with torch.no_grad():
        for i in range(flat_x.numel()):
            original = flat_x[i].item()
            flat_x[i] = original + eps
            f_plus = f(x_copy).item()
            flat_x[i] = original - eps
            f_minus = f(x_copy).item()
            flat_x[i] = original
            flat_g[i] = (f_plus - f_minus) / (2.0 * eps)
    return grad


@wrong("numerical_grad", "subtle", "the step is eps/2 on each side but the denominator stays 2·eps: ½ the "
       "reference on every case (not exactly the listed mistake, whose step is ε)", hints=("factor-half",),
       expect="1/2", not_hints=("graph-*", "epsilon", "value-equal-gradient-differs"))
def numgrad_half_step(f, x, eps=1e-6):
    flat = x.detach().clone().reshape(-1)
    grad = torch.zeros_like(flat)
    for i in range(flat.numel()):
        a, b = flat.clone(), flat.clone()
        a[i] += eps / 2
        b[i] -= eps / 2
        grad[i] = (float(f(a.reshape(x.shape))) - float(f(b.reshape(x.shape)))) / (2 * eps)
    return grad.reshape(x.shape)


@wrong("numerical_grad", "subtle", "differences taken on a .view(-1) of a transposed x",
       hints=("exception-view",), not_hints=GENERIC_MISLEADING)
def numgrad_view(f, x, eps=1e-6):
    work = x.detach().clone()
    flat = work.view(-1)
    grad = torch.zeros_like(flat)
    for i in range(flat.numel()):
        old = flat[i].item()
        flat[i] = old + eps
        plus = float(f(work))
        flat[i] = old - eps
        minus = float(f(work))
        flat[i] = old
        grad[i] = (plus - minus) / (2 * eps)
    return grad.view(x.shape)


@wrong("numerical_grad", "blog", "returns a Python list", expect="应为 torch.Tensor", allowed=("result-*",),
       not_hints=("graph-*",))
def numgrad_list(f, x, eps=1e-6):
    flat = x.detach().reshape(-1)
    out = []
    for i in range(flat.numel()):
        e = torch.zeros_like(flat)
        e[i] = eps
        out.append((float(f((flat + e).reshape(x.shape))) - float(f((flat - e).reshape(x.shape)))) / (2 * eps))
    return out


@forbidden("numerical_grad", "disguised", "torch.func.grad under another name")
def numgrad_func(f, x, eps=1e-6):
    differentiate = getattr(importlib.import_module("torch.func"), "grad")
    return differentiate(f)(x.detach())


# =========================================================================== mse
@right("mse", "einsum", "sum of squares by einsum")
def mse_einsum(pred, target):
    r = (pred - target).reshape(-1)
    return torch.einsum("i,i->", r, r) / r.numel()


@right("mse", "Keras", "K.mean(K.square(y_pred - y_true), axis=-1) and then the mean of the batch")
def mse_keras(pred, target):
    per_sample = torch.mean(torch.square(pred - target), dim=-1)
    return torch.mean(per_sample)


@right("mse", "float64 inside", "accumulated in float64")
def mse_float64(pred, target):
    return ((pred.double() - target.double()) ** 2).mean().to(pred.dtype)


@right("mse", "LLM style", "validates shapes, reduction argument with a default")
def mse_llm(pred: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Mean squared error between predictions and targets."""
    assert pred.shape == target.shape, f"shape mismatch: {pred.shape} vs {target.shape}"
    sq = (pred - target).pow(2)
    return sq.mean() if reduction == "mean" else sq.sum()


@wrong("mse", "blog", "divides the sum by len(pred): the number of rows, not of elements",
       not_hints=GENERIC_MISLEADING)
def mse_len(pred, target):
    return torch.sum((pred - target) ** 2) / len(pred)


@wrong("mse", "subtle", "casts to float32 (a float64 case comes back in float32)", hints=("result-dtype",))
def mse_float_cast(pred, target):
    return ((pred.float() - target.float()) ** 2).mean()


@wrong("mse", "subtle", "computed under torch.no_grad()", hints=("graph-no-grad",), not_hints=("graph-cut",))
def mse_no_grad(pred, target):
    with torch.no_grad():
        diff = pred - target
    return (diff ** 2).mean()


@forbidden("mse", "disguised", "F.mse_loss fetched by getattr with a built name")
def mse_getattr(pred, target):
    return getattr(F, "mse" + "_loss")(pred, target)


@forbidden("mse", "disguised", "twice the Huber loss with a threshold above every residual")
def mse_huber(pred, target):
    return 2 * F.huber_loss(pred, target, delta=1e9)


# =========================================================================== mse_grad
@right("mse_grad", "torch.where form", "the gradient written with torch.sub")
def mse_grad_sub(pred, target):
    return torch.sub(pred, target).mul(2.0 / pred.numel())


@right("mse_grad", "float64 inside", "in float64, cast back")
def mse_grad_float64(pred, target):
    return (2 * (pred.double() - target.double()) / pred.numel()).to(pred.dtype)


@right("mse_grad", "JAX", "jax.grad(lambda p: jnp.mean((p - t) ** 2)) written out: 2(p − t)/p.size")
def mse_grad_jax(pred, target):
    size = pred.numel()
    return 2.0 / size * (pred - target)


@wrong("mse_grad", "blog", "divides by the batch size (rows) only", not_hints=GENERIC_MISLEADING)
def mse_grad_rows(pred, target):
    return 2 * (pred - target) / pred.shape[0]


@wrong("mse_grad", "subtle", "the seed's −2(y − ŷ) without its minus: −n times the gradient, a factor "
       "that means nothing on its own (n changes with the case)", not_hints=GENERIC_MISLEADING)
def mse_grad_sign_n(pred, target):
    return 2 * (target - pred)


@forbidden("mse_grad", "disguised", "torch.autograd.functional.jacobian of the loss")
def mse_grad_jacobian(pred, target):
    return torch.autograd.functional.jacobian(lambda p: ((p - target) ** 2).mean(), pred)


# =========================================================================== mae
@right("mae", "torch.where form", "|r| as where(r >= 0, r, −r)")
def mae_where(pred, target):
    r = pred - target
    return torch.where(r >= 0, r, -r).mean()


@right("mae", "clamp form", "|r| = relu(r) + relu(−r)")
def mae_relu(pred, target):
    r = pred - target
    return (torch.relu(r) + torch.relu(-r)).mean()


@right("mae", "Keras", "K.mean(K.abs(y_pred - y_true), axis=-1), then mean")
def mae_keras(pred, target):
    return torch.mean(torch.mean(torch.abs(pred - target), dim=-1))


@wrong("mae", "subtle", "|r| smoothed as sqrt(r² + 1e-4): close in value, far in gradient where |r| is small",
       not_hints=("factor-*", "graph-*"), allowed=("kink", "epsilon", "value-equal-gradient-differs"))
def mae_smooth_abs(pred, target):
    return torch.sqrt((pred - target) ** 2 + 1e-4).mean()


@wrong("mae", "blog", "sign(r)·r is |r| but the seed snippet's squared error is returned", hints=("mistake-*",),
       expect="平方误差", not_hints=GENERIC_MISLEADING)
def mae_blog_square(pred, target):
    criterion = lambda a, b: torch.mean((a - b) ** 2)  # noqa: E731
    return criterion(pred, target)


@forbidden("mae", "disguised", "Smooth L1 with β = 0 (PyTorch computes the L1 loss)")
def mae_smooth_l1_beta0(pred, target):
    return F.smooth_l1_loss(pred, target, beta=0.0)


@forbidden("mae", "disguised", "nn.L1Loss reached through torch.nn.modules.loss")
def mae_modules(pred, target):
    return torch.nn.modules.loss.L1Loss()(pred, target)


# =========================================================================== mae_grad
@right("mae_grad", "torch.where form", "where(r > 0, 1, where(r < 0, −1, 0))/n")
def mae_grad_where(pred, target):
    r = pred - target
    one = torch.ones_like(r)
    return torch.where(r > 0, one, torch.where(r < 0, -one, torch.zeros_like(r))) / r.numel()


@right("mae_grad", "subgradient +1 at 0", "(r >= 0)·2 − 1: +1 where r = 0, a valid subgradient")
def mae_grad_ge(pred, target):
    r = pred - target
    return ((r >= 0).to(r.dtype) * 2 - 1) / r.numel()


@right("mae_grad", "torch.special", "sign via torch.sgn")
def mae_grad_sgn(pred, target):
    return torch.sgn(pred - target) / pred.numel()


@wrong("mae_grad", "subtle", "r/|r| with 1e-12 added: 0 at r = 0 but rounds badly? no: the bug is the 2/n of MSE",
       hints=("mistake-*",), expect="MSE 的梯度", not_hints=GENERIC_MISLEADING)
def mae_grad_mse(pred, target):
    return 2 * (pred - target) / pred.numel()


@wrong("mae_grad", "subtle", "+2 at r = 0: outside the subgradient range", hints=("kink",),
       not_hints=("factor-*", "epsilon", "graph-*"))
def mae_grad_kink(pred, target):
    r = pred - target
    return (torch.sign(r) + 2 * (r == 0).to(r.dtype)) / r.numel()


# =========================================================================== huber
@right("huber", "clamp form", "0.5·min(|r|, δ)² + δ·(|r| − min(|r|, δ))")
def huber_clamp(pred, target, delta=1.0):
    r = (pred - target).abs()
    q = torch.clamp(r, max=delta)
    return (0.5 * q ** 2 + delta * (r - q)).mean()


@right("huber", "Keras", "tf.keras.losses.Huber: where(|x| <= d, 0.5x², d|x| − 0.5d²), mean over the last axis")
def huber_keras(pred, target, delta=1.0):
    x = pred - target
    abs_x = torch.abs(x)
    loss = torch.where(abs_x <= delta, 0.5 * torch.square(x), delta * abs_x - 0.5 * delta ** 2)
    return torch.mean(torch.mean(loss, dim=-1))


@right("huber", "float64 inside", "computed in float64")
def huber_float64(pred, target, delta=1.0):
    r = (pred.double() - target.double()).abs()
    return torch.where(r <= delta, 0.5 * r * r, delta * (r - 0.5 * delta)).mean().to(pred.dtype)


@wrong("huber", "LLM style", "the linear branch is δ·(|r| − δ) instead of δ·(|r| − δ/2)", not_hints=GENERIC_MISLEADING)
def huber_llm(pred: torch.Tensor, target: torch.Tensor, delta: float = 1.0) -> torch.Tensor:
    """Huber loss."""
    residual = torch.abs(pred - target)
    quadratic = 0.5 * residual ** 2
    linear = delta * (residual - delta)
    return torch.where(residual <= delta, quadratic, linear).mean()


@wrong("huber", "blog", "a Python if on the whole tensor", hints=("exception-bool",), not_hints=GENERIC_MISLEADING)
def huber_if(pred, target, delta=1.0):
    r = torch.abs(pred - target)
    if r <= delta:
        return (0.5 * r ** 2).mean()
    return (delta * r - 0.5 * delta ** 2).mean()


@forbidden("huber", "disguised", "Smooth L1 times δ through nn.SmoothL1Loss")
def huber_smoothl1(pred, target, delta=1.0):
    return delta * nn.SmoothL1Loss(beta=delta)(pred, target)


# =========================================================================== smooth_l1
@right("smooth_l1", "torch.where form", "with β = 0 handled by a clamp of the denominator")
def smooth_l1_where(pred, target, beta=1.0):
    r = (pred - target).abs()
    if beta == 0:
        return r.mean()
    return torch.where(r < beta, 0.5 * r ** 2 / beta, r - 0.5 * beta).mean()


@right("smooth_l1", "Huber / β", "Huber written out, divided by β (fvcore)")
def smooth_l1_huber_over_beta(pred, target, beta=1.0):
    r = (pred - target).abs()
    if beta < 1e-5:
        return r.mean()
    huber = torch.where(r <= beta, 0.5 * r ** 2, beta * r - 0.5 * beta ** 2)
    return (huber / beta).mean()


@right("smooth_l1", "clamp form", "0.5·min(|r|, β)²/β + (|r| − min(|r|, β))")
def smooth_l1_clamp(pred, target, beta=1.0):
    r = (pred - target).abs()
    q = r.clamp(max=beta)
    return (0.5 * q ** 2 / beta + (r - q)).mean()


@wrong("smooth_l1", "subtle", "β is ignored inside the quadratic branch (right where β = 1)",
       not_hints=GENERIC_MISLEADING, allowed=("value-equal-gradient-differs",))
def smooth_l1_no_beta_quadratic(pred, target, beta=1.0):
    r = (pred - target).abs()
    return torch.where(r < beta, 0.5 * r ** 2, r - 0.5 * beta).mean()


@wrong("smooth_l1", "blog", "the signature lost β", hints=("exception-argcount",), not_hints=GENERIC_MISLEADING)
def smooth_l1_no_beta(pred, target):
    r = (pred - target).abs()
    return torch.where(r < 1, 0.5 * r ** 2, r - 0.5).mean()


# =========================================================================== bce
@right("bce", "torch.special", "xlogy keeps 0·log 0 = 0, the log clamped at −100")
def bce_xlogy(probs, target):
    log_p = torch.log(probs).clamp(min=-100)
    log_q = torch.log1p(-probs).clamp(min=-100)
    return -(target * log_p + (1 - target) * log_q).mean()


@right("bce", "float64 inside", "logs in float64, clamped at −100")
def bce_float64(probs, target):
    p, y = probs.double(), target.double()
    loss = -(y * torch.log(p).clamp(min=-100) + (1 - y) * torch.log(1 - p).clamp(min=-100))
    return loss.mean().to(probs.dtype)


@right("bce", "torch.where form", "log(p) where p > 0 else −100")
def bce_where(probs, target):
    floor = torch.full_like(probs, -100.0)
    log_p = torch.where(probs > 0, torch.log(probs), floor).clamp(min=-100)
    log_q = torch.where(probs < 1, torch.log1p(-probs), floor).clamp(min=-100)
    return -(target * log_p + (1 - target) * log_q).mean()


@wrong("bce", "Keras", "K.binary_crossentropy: probabilities clipped to [1e-7, 1 − 1e-7]", hints=("variant-*",),
       expect="Keras", not_hints=("epsilon", "factor-*", "graph-*"))
def bce_keras(probs, target):
    p = torch.clamp(probs, 1e-7, 1 - 1e-7)
    return torch.mean(-(target * torch.log(p) + (1 - target) * torch.log(1 - p)))


@wrong("bce", "subtle", "the −100 clamp on only one of the two logs", hints=("nonfinite-prob01",),
       not_hints=GENERIC_MISLEADING)
def bce_one_clamp(probs, target):
    return -(target * torch.log(probs).clamp(min=-100) + (1 - target) * torch.log(1 - probs)).mean()


@forbidden("bce", "disguised", "F.binary_cross_entropy_with_logits on logit(p)")
def bce_via_logits(probs, target):
    return F.binary_cross_entropy_with_logits(torch.logit(probs), target)


# =========================================================================== bce_logits
@right("bce_logits", "JAX", "optax.sigmoid_binary_cross_entropy: −y·log_sigmoid(x) − (1 − y)·log_sigmoid(−x)")
def bce_logits_optax(logits, target):
    log_p = F.logsigmoid(logits)
    log_not_p = F.logsigmoid(-logits)
    return (-target * log_p - (1 - target) * log_not_p).mean()


@right("bce_logits", "clamp form", "relu(x) − x·y + log1p(exp(−|x|)) (TensorFlow's formula)")
def bce_logits_tf(logits, target):
    return (torch.relu(logits) - logits * target + torch.log1p(torch.exp(-torch.abs(logits)))).mean()


@right("bce_logits", "torch.special", "softplus written with torch.special.log1p and expit-free logic")
def bce_logits_special(logits, target):
    return (torch.clamp(logits, min=0) - logits * target + torch.special.log1p(torch.exp(-logits.abs()))).mean()


@right("bce_logits", "float64 inside", "the stable formula in float64")
def bce_logits_float64(logits, target):
    x, y = logits.double(), target.double()
    return (x.clamp(min=0) - x * y + torch.log1p(torch.exp(-x.abs()))).mean().to(logits.dtype)


@wrong("bce_logits", "blog", "log(sigmoid) and log(1 − sigmoid): −inf for large logits",
       hints=("nonfinite-large",), not_hints=GENERIC_MISLEADING)
def bce_logits_naive(logits, target):
    p = torch.sigmoid(logits)
    return -(target * torch.log(p) + (1 - target) * torch.log(1 - p)).mean()


@wrong("bce_logits", "subtle", "log(1 + exp(−|x|)) without log1p is fine; the bug is max(x, 0) taken as |x|",
       not_hints=GENERIC_MISLEADING)
def bce_logits_abs(logits, target):
    return (logits.abs() - logits * target + torch.log(1 + torch.exp(-logits.abs()))).mean()


@forbidden("bce_logits", "disguised", "torch.binary_cross_entropy_with_logits from the torch namespace")
def bce_logits_torch_ns(logits, target):
    return torch.binary_cross_entropy_with_logits(logits, target, None, None, 1)


# =========================================================================== bce_logits_grad
@right("bce_logits_grad", "torch.special", "expit(x) − y, over n")
def bce_logits_grad_expit(logits, target):
    return (torch.special.expit(logits) - target) / logits.numel()


@right("bce_logits_grad", "torch.where form", "a sigmoid written stably with where")
def bce_logits_grad_where(logits, target):
    e = torch.exp(-logits.abs())
    sig = torch.where(logits >= 0, 1 / (1 + e), e / (1 + e))
    return (sig - target) / logits.numel()


@right("bce_logits_grad", "float64 inside", "in float64")
def bce_logits_grad_float64(logits, target):
    return ((torch.sigmoid(logits.double()) - target.double()) / logits.numel()).to(logits.dtype)


@wrong("bce_logits_grad", "blog", "1/(1 + exp(−x)) overflows? no, exp(−x) → inf gives 0 correctly; the bug is "
       "the mean over the batch dimension only", not_hints=GENERIC_MISLEADING)
def bce_logits_grad_rows(logits, target):
    return (1 / (1 + torch.exp(-logits)) - target) / logits.shape[0]


@forbidden("bce_logits_grad", "disguised", "torch.autograd.functional.vjp of the loss")
def bce_logits_grad_vjp(logits, target):
    return torch.autograd.functional.vjp(lambda x: (F.softplus(x) - x * target).mean(), logits)[1]


# =========================================================================== cross_entropy
@right("cross_entropy", "manual logsumexp", "max-shifted log-sum-exp written out")
def ce_manual_lse(logits, target):
    m = logits.max(dim=1, keepdim=True).values
    lse = m.squeeze(1) + torch.log(torch.sum(torch.exp(logits - m), dim=1))
    return (lse - logits[torch.arange(logits.shape[0], device=logits.device), target]).mean()


@right("cross_entropy", "einsum", "−Σ onehot·log_softmax by einsum")
def ce_einsum(logits, target):
    onehot = F.one_hot(target, logits.shape[1]).to(logits.dtype)
    return -torch.einsum("nc,nc->n", onehot, torch.log_softmax(logits, dim=1)).mean()


@right("cross_entropy", "JAX", "optax.softmax_cross_entropy_with_integer_labels: take_along_axis of log_softmax")
def ce_optax(logits, target):
    log_probs = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
    return -torch.take_along_dim(log_probs, target[:, None], dim=-1).squeeze(-1).mean()


@right("cross_entropy", "torch.special", "torch.special.log_softmax and gather")
def ce_special(logits, target):
    return -torch.special.log_softmax(logits, dim=1).gather(1, target.unsqueeze(1)).mean()


@wrong("cross_entropy", "subtle", "subtracts the global max, not each row's: rows far below it underflow",
       hints=("nonfinite-*",), not_hints=("factor-*", "graph-*", "value-equal-gradient-differs"))
def ce_global_max(logits, target):
    z = logits - logits.max()
    return (torch.log(torch.exp(z).sum(1)) - z.gather(1, target[:, None])[:, 0]).mean()


@wrong("cross_entropy", "Keras", "categorical_crossentropy(from_logits=False) on softmax: clipped to [1e-7, 1]",
       not_hints=("factor-*", "graph-*", "value-equal-gradient-differs"), allowed=("epsilon",))
def ce_keras_probs(logits, target):
    p = torch.softmax(logits, dim=1).clamp(1e-7, 1 - 1e-7)
    return -torch.log(p.gather(1, target[:, None])).mean()


@forbidden("cross_entropy", "disguised", "F.cross_entropy with probability targets (still the forbidden kernel)")
def ce_soft_targets(logits, target):
    return F.cross_entropy(logits, F.one_hot(target, logits.shape[1]).to(logits.dtype))


@forbidden("cross_entropy", "disguised", "nn.NLLLoss on log_softmax, built through functools.partial")
def ce_nll_partial(logits, target):
    loss = functools.partial(nn.NLLLoss(reduction="mean"))
    return loss(torch.log_softmax(logits, 1), target)


# =========================================================================== cross_entropy_grad
@right("cross_entropy_grad", "scatter", "softmax minus a scattered one-hot")
def ce_grad_scatter(logits, target):
    p = torch.softmax(logits, 1)
    return p.scatter_add(1, target[:, None], -torch.ones_like(p[:, :1])) / logits.shape[0]


@right("cross_entropy_grad", "manual logsumexp", "exp(x − lse) − onehot")
def ce_grad_lse(logits, target):
    p = torch.exp(logits - torch.logsumexp(logits, 1, keepdim=True))
    return (p - F.one_hot(target, logits.shape[1]).to(p.dtype)) / len(target)


@right("cross_entropy_grad", "float64 inside", "in float64")
def ce_grad_float64(logits, target):
    x = logits.double()
    g = (torch.softmax(x, 1) - F.one_hot(target, x.shape[1]).double()) / x.shape[0]
    return g.to(logits.dtype)


@wrong("cross_entropy_grad", "subtle", "one-hot built with the number of classes in the batch (max(target) + 1)",
       not_hints=GENERIC_MISLEADING, allowed=("exception-*",))
def ce_grad_num_classes(logits, target):
    onehot = F.one_hot(target).to(logits.dtype)
    return (torch.softmax(logits, 1) - onehot) / logits.shape[0]


@wrong("cross_entropy_grad", "blog", "divides by N·C", hints=("mistake-*",), expect="N·C", allowed=("factor-*",))
def ce_grad_numel(logits, target):
    return (torch.softmax(logits, 1) - F.one_hot(target, logits.shape[1]).to(logits.dtype)) / logits.numel()


# =========================================================================== weighted_ce
@right("weighted_ce", "einsum", "weighted sums by einsum")
def wce_einsum(logits, target, weight):
    onehot = F.one_hot(target, logits.shape[1]).to(logits.dtype)
    nll = -torch.einsum("nc,nc->n", onehot, torch.log_softmax(logits, 1))
    w = onehot @ weight
    return (w * nll).sum() / w.sum()


@right("weighted_ce", "manual logsumexp", "blog style with indexing")
def wce_blog(logits, target, weight):
    log_probs = _ls(logits)
    picked = log_probs[torch.arange(len(target), device=logits.device), target]
    w = weight[target]
    return -(w * picked).sum() / w.sum()


@right("weighted_ce", "float64 inside", "in float64")
def wce_float64(logits, target, weight):
    x, w = logits.double(), weight.double()[target]
    nll = torch.logsumexp(x, 1) - x.gather(1, target[:, None])[:, 0]
    return ((w * nll).sum() / w.sum()).to(logits.dtype)


@wrong("weighted_ce", "Keras", "class_weight: the weighted mean over N", hints=("mistake-*",), expect="权重之和",
       not_hints=GENERIC_MISLEADING)
def wce_keras(logits, target, weight):
    return torch.mean(weight[target] * -torch.log_softmax(logits, 1).gather(1, target[:, None])[:, 0])


@wrong("weighted_ce", "subtle", "weights indexed by the sample position, not by its class",
       not_hints=GENERIC_MISLEADING, allowed=("exception-*",))
def wce_by_position(logits, target, weight):
    nll = -torch.log_softmax(logits, 1).gather(1, target[:, None])[:, 0]
    w = weight[: len(target)] if len(weight) >= len(target) else weight.repeat(len(target))[: len(target)]
    return (w * nll).sum() / w.sum()


@forbidden("weighted_ce", "disguised", "nn.NLLLoss(weight=...) on log_softmax")
def wce_nllloss(logits, target, weight):
    return nn.NLLLoss(weight=weight)(F.log_softmax(logits, dim=1), target)


# =========================================================================== label_smoothing_ce
@right("label_smoothing_ce", "allowed built-in", "plain F.cross_entropy plus the uniform term")
def ls_plain_ce(logits, target, smoothing=0.1):
    return (1 - smoothing) * F.cross_entropy(logits, target) - smoothing * F.log_softmax(logits, 1).mean(1).mean()


@right("label_smoothing_ce", "soft targets", "F.cross_entropy with the smoothed distribution as probability target")
def ls_soft_target(logits, target, smoothing=0.1):
    k = logits.shape[1]
    soft = F.one_hot(target, k).to(logits.dtype) * (1 - smoothing) + smoothing / k
    return F.cross_entropy(logits, soft)


@right("label_smoothing_ce", "einsum", "the smoothed target by einsum")
def ls_einsum(logits, target, smoothing=0.1):
    k = logits.shape[1]
    soft = torch.full_like(logits, smoothing / k).scatter(1, target[:, None], 1 - smoothing + smoothing / k)
    return -torch.einsum("nk,nk->n", soft, torch.log_softmax(logits, 1)).mean()


@right("label_smoothing_ce", "timm", "timm LabelSmoothingCrossEntropy: confidence·nll + smoothing·mean")
def ls_timm(logits, target, smoothing=0.1):
    logprobs = F.log_softmax(logits, dim=-1)
    nll = -logprobs.gather(dim=-1, index=target.unsqueeze(1)).squeeze(1)
    smooth = -logprobs.mean(dim=-1)
    return ((1.0 - smoothing) * nll + smoothing * smooth).mean()


@wrong("label_smoothing_ce", "subtle", "log(softmax + 1e-8): an ε-sized offset where a probability is tiny",
       not_hints=("epsilon", "factor-*", "graph-*"), allowed=("nonfinite-*", "epsilon-label-smoothing"))
def ls_log_eps(logits, target, smoothing=0.1):
    log_p = torch.log(torch.softmax(logits, 1) + 1e-8)
    return ((1 - smoothing) * -log_p.gather(1, target[:, None])[:, 0] - smoothing * log_p.mean(1)).mean()


@wrong("label_smoothing_ce", "fairseq", "ε over the K − 1 other classes", hints=("mistake-*",), expect="K − 1",
       not_hints=GENERIC_MISLEADING)
def ls_fairseq(logits, target, smoothing=0.1):
    lprobs = torch.log_softmax(logits, 1)
    nll = -lprobs.gather(1, target[:, None])[:, 0]
    smooth = -lprobs.sum(1)
    eps_i = smoothing / (logits.shape[1] - 1)
    return ((1 - smoothing - eps_i) * nll + eps_i * smooth).mean()


@forbidden("label_smoothing_ce", "disguised", "the smoothing passed by position to F.cross_entropy")
def ls_positional(logits, target, smoothing=0.1):
    return F.cross_entropy(logits, target, None, None, -100, None, "mean", smoothing)


@forbidden("label_smoothing_ce", "disguised", "nn.CrossEntropyLoss(label_smoothing=...) through partial")
def ls_module_partial(logits, target, smoothing=0.1):
    make = functools.partial(nn.CrossEntropyLoss, label_smoothing=smoothing)
    return make()(logits, target)


# =========================================================================== focal
@right("focal", "torch.special", "p_t from exp(−CE), −expm1 for 1 − p_t")
def focal_expm1(logits, target, alpha=1.0, gamma=2.0):
    ce = torch.logsumexp(logits, 1) - logits.gather(1, target[:, None])[:, 0]
    return (alpha * (-torch.expm1(-ce)) ** gamma * ce).mean()


@right("focal", "float64 inside", "in float64")
def focal_float64(logits, target, alpha=1.0, gamma=2.0):
    x = logits.double()
    ce = torch.logsumexp(x, 1) - x.gather(1, target[:, None])[:, 0]
    return (alpha * (1 - torch.exp(-ce)) ** gamma * ce).mean().to(logits.dtype)


@right("focal", "allowed built-in", "F.cross_entropy(reduction='none') as the seed tutorial does")
def focal_ce_none(logits, target, alpha=1.0, gamma=2.0):
    ce = F.cross_entropy(logits, target, reduction="none")
    return (alpha * (1 - torch.exp(-ce)) ** gamma * ce).mean()


@wrong("focal", "blog", "p_t from softmax, then log(p_t): −inf for large logits", hints=("nonfinite-*",),
       not_hints=GENERIC_MISLEADING)
def focal_log_softmax_prob(logits, target, alpha=1.0, gamma=2.0):
    p = torch.softmax(logits, 1).gather(1, target[:, None])[:, 0]
    return (-alpha * (1 - p) ** gamma * torch.log(p)).mean()


@wrong("focal", "LLM style", "α applied to the modulating factor only when γ > 0", not_hints=GENERIC_MISLEADING,
       allowed=("mistake-*",))
def focal_llm(logits: torch.Tensor, target: torch.Tensor, alpha: float = 1.0, gamma: float = 2.0) -> torch.Tensor:
    """Multi-class focal loss (Lin et al. 2017)."""
    ce = F.cross_entropy(logits, target, reduction="none")
    p_t = torch.exp(-ce)
    weight = alpha * (1 - p_t) ** gamma if gamma > 0 else torch.ones_like(p_t)
    return (weight * ce).mean()


# =========================================================================== sigmoid_focal
@right("sigmoid_focal", "JAX", "optax.sigmoid_focal_loss written with logsigmoid")
def sfl_optax(logits, target, alpha=0.25, gamma=2.0):
    p = torch.sigmoid(logits)
    ce = -(target * F.logsigmoid(logits) + (1 - target) * F.logsigmoid(-logits))
    p_t = p * target + (1 - p) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return loss.mean()


@right("sigmoid_focal", "allowed built-in", "torchvision's body with F.binary_cross_entropy_with_logits")
def sfl_torchvision(logits, target, alpha=0.25, gamma=2.0):
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    loss = ce * ((1 - p_t) ** gamma)
    if alpha >= 0:
        loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return loss.mean()


@right("sigmoid_focal", "float64 inside", "in float64")
def sfl_float64(logits, target, alpha=0.25, gamma=2.0):
    return sfl_torchvision(logits.double(), target.double(), alpha, gamma).to(logits.dtype)


@wrong("sigmoid_focal", "blog", "BCE as −log(sigmoid): −inf for large logits", hints=("nonfinite-*",),
       not_hints=GENERIC_MISLEADING)
def sfl_naive(logits, target, alpha=0.25, gamma=2.0):
    p = torch.sigmoid(logits)
    ce = -(target * torch.log(p) + (1 - target) * torch.log(1 - p))
    p_t = p * target + (1 - p) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    return ((alpha * target + (1 - alpha) * (1 - target)) * loss if alpha >= 0 else loss).mean()


@wrong("sigmoid_focal", "subtle", "normalised by the number of positives (detectron2)", hints=("variant-*",),
       expect="正样本数", not_hints=GENERIC_MISLEADING)
def sfl_detectron(logits, target, alpha=0.25, gamma=2.0):
    return sfl_torchvision(logits, target, alpha, gamma) * logits.numel() / target.sum().clamp(min=1.0)


# =========================================================================== contrastive
@right("contrastive", "clamp form", "relu(m − d)² for dissimilar pairs")
def contrastive_relu(x1, x2, label, margin=1.0):
    d = torch.linalg.vector_norm(x1 - x2, dim=1)
    return ((1 - label) * d.pow(2) + label * torch.relu(margin - d).pow(2)).mean()


@right("contrastive", "einsum", "d² by einsum, d by vector_norm")
def contrastive_einsum(x1, x2, label, margin=1.0):
    diff = x1 - x2
    d2 = torch.einsum("nd,nd->n", diff, diff)
    d = torch.linalg.vector_norm(diff, dim=1)
    return ((1 - label) * d2 + label * torch.clamp(margin - d, min=0) ** 2).mean()


@right("contrastive", "allowed built-in", "F.pairwise_distance (eps = 1e-6)")
def contrastive_pairwise(x1, x2, label, margin=1.0):
    d = F.pairwise_distance(x1, x2)
    return torch.mean((1 - label) * d ** 2 + label * torch.clamp(margin - d, min=0.0) ** 2)


@wrong("contrastive", "blog", "d = sqrt(Σ diff²): NaN gradient where the points coincide", hints=("nonfinite-kink",),
       not_hints=("factor-*", "graph-*", "epsilon", "value-equal-gradient-differs"))
def contrastive_sqrt(x1, x2, label, margin=1.0):
    d = torch.sqrt(torch.sum((x1 - x2) ** 2, dim=1))
    return ((1 - label) * d ** 2 + label * torch.clamp(margin - d, min=0) ** 2).mean()


@wrong("contrastive", "Siamese repos", "y = 1 taken as similar", hints=("mistake-*",), expect="标签约定",
       not_hints=GENERIC_MISLEADING)
def contrastive_siamese(x1, x2, label, margin=1.0):
    d = F.pairwise_distance(x1, x2)
    return (label * d ** 2 + (1 - label) * torch.clamp(margin - d, min=0) ** 2).mean()


# =========================================================================== triplet
@right("triplet", "clamp form", "relu of the hinge, distances by vector_norm")
def triplet_relu(anchor, positive, negative, margin=1.0):
    d_ap = torch.linalg.vector_norm(anchor - positive, dim=1)
    d_an = torch.linalg.vector_norm(anchor - negative, dim=1)
    return torch.relu(d_ap - d_an + margin).mean()


@right("triplet", "allowed built-in", "F.pairwise_distance for both distances")
def triplet_pairwise(anchor, positive, negative, margin=1.0):
    return torch.clamp(F.pairwise_distance(anchor, positive) - F.pairwise_distance(anchor, negative) + margin,
                       min=0).mean()


@right("triplet", "float64 inside", "in float64")
def triplet_float64(anchor, positive, negative, margin=1.0):
    a, p, n = anchor.double(), positive.double(), negative.double()
    return torch.clamp((a - p).norm(dim=1) - (a - n).norm(dim=1) + margin, min=0).mean().to(anchor.dtype)


@wrong("triplet", "FaceNet", "squared distances", hints=("mistake-*",), expect="平方距离", not_hints=GENERIC_MISLEADING)
def triplet_squared(anchor, positive, negative, margin=1.0):
    return torch.clamp(((anchor - positive) ** 2).sum(1) - ((anchor - negative) ** 2).sum(1) + margin, min=0).mean()


@wrong("triplet", "subtle", "sqrt of the squared distance: NaN where anchor = positive", hints=("nonfinite-kink",),
       not_hints=("factor-*", "graph-*", "epsilon", "value-equal-gradient-differs"))
def triplet_sqrt(anchor, positive, negative, margin=1.0):
    d_ap = ((anchor - positive) ** 2).sum(1).sqrt()
    d_an = ((anchor - negative) ** 2).sum(1).sqrt()
    return torch.clamp(d_ap - d_an + margin, min=0).mean()


@forbidden("triplet", "disguised", "nn.TripletMarginWithDistanceLoss with the default distance")
def triplet_with_distance(anchor, positive, negative, margin=1.0):
    return nn.TripletMarginWithDistanceLoss(margin=margin)(anchor, positive, negative)


# =========================================================================== dice
@right("dice", "einsum", "intersection by einsum over every axis")
def dice_einsum(logits, target, smooth=1.0):
    p = torch.softmax(logits, 1)
    oh = _onehot(logits, target)
    inter = torch.einsum("...,...->", p.reshape(-1), oh.reshape(-1))
    return 1 - (2 * inter + smooth) / (p.sum() + oh.sum() + smooth)


@right("dice", "scatter", "one-hot by scatter_ on zeros_like")
def dice_scatter(logits, target, smooth=1.0):
    p = torch.softmax(logits, 1)
    oh = torch.zeros_like(p).scatter_(1, target.unsqueeze(1), 1.0)
    return 1 - (2 * (p * oh).sum() + smooth) / (p.sum() + oh.sum() + smooth)


@right("dice", "float64 inside", "in float64")
def dice_float64(logits, target, smooth=1.0):
    p = torch.softmax(logits.double(), 1)
    oh = _onehot(p, target)
    return (1 - (2 * (p * oh).sum() + smooth) / (p.sum() + oh.sum() + smooth)).to(logits.dtype)


@wrong("dice", "blog", "class indices multiplied with the probabilities (the seed's DiceLoss)",
       hints=("exception-index-as-onehot",), not_hints=GENERIC_MISLEADING)
def dice_indices(logits, target, smooth=1.0):
    p = torch.softmax(logits, 1)
    t = target.to(p.dtype)
    return 1 - (2 * (p * t).sum() + smooth) / (p.sum() + t.sum() + smooth)


@wrong("dice", "subtle", "the smoothing term only in the numerator: an offset the size of a stabilising constant",
       not_hints=("factor-*", "graph-*"), allowed=("epsilon", "value-equal-gradient-differs"))
def dice_smooth_numerator(logits, target, smooth=1.0):
    p = torch.softmax(logits, 1)
    oh = _onehot(logits, target)
    return 1 - (2 * (p * oh).sum() + smooth) / (p.sum() + oh.sum())


@wrong("dice", "segmentation_models_pytorch", "a Dice per class, averaged", hints=("variant-*",), expect="逐类别",
       not_hints=GENERIC_MISLEADING)
def dice_per_class(logits, target, smooth=1.0):
    p = torch.softmax(logits, 1)
    oh = _onehot(logits, target)
    dims = (0,) + tuple(range(2, p.dim()))
    inter, card = (p * oh).sum(dims), (p + oh).sum(dims)
    loss = 1 - (2 * inter + smooth) / (card + smooth).clamp_min(1e-7)
    return (loss * (oh.sum(dims) > 0).to(loss.dtype)).mean()


# =========================================================================== iou
@right("iou", "einsum", "soft intersection by einsum")
def iou_einsum(logits, target, smooth=1.0):
    p = torch.softmax(logits, 1)
    oh = _onehot(logits, target)
    inter = torch.einsum("i,i->", p.reshape(-1), oh.reshape(-1))
    return 1 - (inter + smooth) / (p.sum() + oh.sum() - inter + smooth)


@right("iou", "float64 inside", "in float64")
def iou_float64(logits, target, smooth=1.0):
    p = torch.softmax(logits.double(), 1)
    oh = _onehot(p, target)
    inter = (p * oh).sum()
    return (1 - (inter + smooth) / (p.sum() + oh.sum() - inter + smooth)).to(logits.dtype)


@right("iou", "clamp form", "union written as Σ max(p, t)? no: Σp + Σt − I, with a clamp on the denominator")
def iou_clamped(logits, target, smooth=1.0):
    p = torch.softmax(logits, 1)
    oh = _onehot(logits, target)
    inter = (p * oh).sum()
    union = (p.sum() + oh.sum() - inter).clamp(min=0)
    return 1 - (inter + smooth) / (union + smooth)


@right("iou", "subtle", "Σ min(p, t) / Σ max(p, t), the fuzzy-set IoU: equal to the soft IoU for one-hot t")
def iou_fuzzy(logits, target, smooth=1.0):
    p = torch.softmax(logits, 1)
    oh = _onehot(logits, target)
    return 1 - ((torch.minimum(p, oh)).sum() + smooth) / (torch.maximum(p, oh).sum() + smooth)


@wrong("iou", "blog", ".view(-1) on a permuted one-hot", hints=("exception-view",), not_hints=GENERIC_MISLEADING)
def iou_view(logits, target, smooth=1.0):
    p = torch.softmax(logits, 1).view(-1)
    oh = F.one_hot(target, logits.shape[1])
    oh = oh.permute(0, oh.dim() - 1, *range(1, oh.dim() - 1)).to(p.dtype).view(-1)
    inter = (p * oh).sum()
    return 1 - (inter + smooth) / (p.sum() + oh.sum() - inter + smooth)


# =========================================================================== box_iou
@right("box_iou", "torch.where form", "one-sided torch.where for the intersection corners")
def box_where(pred_boxes, target_boxes):
    lt = torch.where(pred_boxes[:, :2] > target_boxes[:, :2], pred_boxes[:, :2], target_boxes[:, :2])
    rb = torch.where(pred_boxes[:, 2:] < target_boxes[:, 2:], pred_boxes[:, 2:], target_boxes[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    area = lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])  # noqa: E731
    return (1 - inter / (area(pred_boxes) + area(target_boxes) - inter)).mean()


@right("box_iou", "torchvision", "_loss_inter_union with eps = 1e-7 in the union")
def box_torchvision(pred_boxes, target_boxes):
    x1, y1, x2, y2 = pred_boxes.unbind(-1)
    x1g, y1g, x2g, y2g = target_boxes.unbind(-1)
    xkis1, ykis1 = torch.max(x1, x1g), torch.max(y1, y1g)
    xkis2, ykis2 = torch.min(x2, x2g), torch.min(y2, y2g)
    intsct = torch.zeros_like(x1)
    mask = (ykis2 > ykis1) & (xkis2 > xkis1)
    intsct[mask] = (xkis2[mask] - xkis1[mask]) * (ykis2[mask] - ykis1[mask])
    union = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - intsct + 1e-7
    return (1 - intsct / union).mean()


@right("box_iou", "float64 inside", "in float64")
def box_float64(pred_boxes, target_boxes):
    p, t = pred_boxes.double(), target_boxes.double()
    wh = (torch.min(p[:, 2:], t[:, 2:]) - torch.max(p[:, :2], t[:, :2])).clamp(min=0)
    inter = wh.prod(1)
    union = (p[:, 2:] - p[:, :2]).prod(1) + (t[:, 2:] - t[:, :2]).prod(1) - inter
    return (1 - inter / union).mean().to(pred_boxes.dtype)


@wrong("box_iou", "mmdetection", "IoULoss(mode='log')", hints=("variant-*",), expect="−log IoU", not_hints=GENERIC_MISLEADING)
def box_log(pred_boxes, target_boxes):
    wh = (torch.min(pred_boxes[:, 2:], target_boxes[:, 2:]) - torch.max(pred_boxes[:, :2], target_boxes[:, :2])).clamp(min=0)
    inter = wh.prod(1)
    union = (pred_boxes[:, 2:] - pred_boxes[:, :2]).prod(1) + (target_boxes[:, 2:] - target_boxes[:, :2]).prod(1) - inter
    return -(inter / union).clamp(min=1e-6).log().mean()


@wrong("box_iou", "subtle", "(x, y, w, h) boxes assumed: widths read from columns 2 and 3", not_hints=GENERIC_MISLEADING,
       allowed=("nonfinite",))
def box_xywh(pred_boxes, target_boxes):
    def corners(b):
        return torch.cat([b[:, :2], b[:, :2] + b[:, 2:]], dim=1)
    p, t = corners(pred_boxes), corners(target_boxes)
    wh = (torch.min(p[:, 2:], t[:, 2:]) - torch.max(p[:, :2], t[:, :2])).clamp(min=0)
    inter = wh.prod(1)
    union = pred_boxes[:, 2:].prod(1) + target_boxes[:, 2:].prod(1) - inter
    return (1 - inter / union).mean()


# =========================================================================== combined
@right("combined", "allowed built-in", "F.cross_entropy (allowed here) and a Dice written out")
def combined_builtin_ce(logits, target, alpha=0.5):
    p = torch.softmax(logits, 1)
    oh = _onehot(logits, target)
    dice = 1 - (2 * (p * oh).sum() + 1.0) / (p.sum() + oh.sum() + 1.0)
    return alpha * F.cross_entropy(logits, target) + (1 - alpha) * dice


@right("combined", "manual logsumexp", "both parts written out")
def combined_manual(logits, target, alpha=0.5):
    ce = (torch.logsumexp(logits, 1) - logits.gather(1, target[:, None])[:, 0]).mean()
    p = torch.exp(logits - torch.logsumexp(logits, 1, keepdim=True))
    oh = torch.zeros_like(p).scatter_(1, target[:, None], 1.0)
    return alpha * ce + (1 - alpha) * (1 - (2 * (p * oh).sum() + 1) / (p.sum() + oh.sum() + 1))


@right("combined", "float64 inside", "in float64")
def combined_float64(logits, target, alpha=0.5):
    return combined_manual(logits.double(), target, alpha).to(logits.dtype)


@wrong("combined", "subtle", "Dice with smooth = 0", not_hints=GENERIC_MISLEADING)
def combined_no_smooth(logits, target, alpha=0.5):
    p = torch.softmax(logits, 1)
    oh = _onehot(logits, target)
    return alpha * F.cross_entropy(logits, target) + (1 - alpha) * (1 - 2 * (p * oh).sum() / (p.sum() + oh.sum()))


@wrong("combined", "LLM style", "α on the Dice part", hints=("mistake-*",), expect="α 的位置反了",
       not_hints=GENERIC_MISLEADING)
def combined_llm(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """Combined loss: a weighted sum of cross-entropy and Dice."""
    ce = F.cross_entropy(logits, target)
    p = F.softmax(logits, dim=1)
    oh = _onehot(logits, target)
    dice = 1 - (2 * (p * oh).sum() + 1.0) / (p.sum() + oh.sum() + 1.0)
    return (1 - alpha) * ce + alpha * dice


# =========================================================================== mae_api
@right("mae_api", "LLM style", "the corrected snippet with a docstring")
def mae_api_llm(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MAE with nn.L1Loss, as the seed snippet should have been."""
    mae_loss = nn.L1Loss(reduction="mean")
    return mae_loss(pred, target)


@right("mae_api", "functional", "F.l1_loss is the same kernel as nn.L1Loss")
def mae_api_functional(pred, target):
    return F.l1_loss(pred, target)


@wrong("mae_api", "subtle", "nn.L1Loss on the flattened views (.view(-1))", hints=("exception-view",),
       not_hints=GENERIC_MISLEADING)
def mae_api_view(pred, target):
    return nn.L1Loss()(pred.view(-1), target.view(-1))


@forbidden("mae_api", "disguised", "both losses computed, the MSE one returned")
def mae_api_both(pred, target):
    mae_loss, mse_loss = nn.L1Loss(), nn.MSELoss()
    _ = mae_loss(pred, target)
    return mse_loss(pred, target)


# =========================================================================== robust_fit
@right("robust_fit", "IRLS", "iteratively reweighted least squares with Huber weights")
def fit_irls(x, y):
    w, b = 0.0, 0.0
    xd, yd = x.double(), y.double()
    for _ in range(50):
        r = yd - (w * xd + b)
        weight = torch.where(r.abs() <= 1.0, torch.ones_like(r), 1.0 / r.abs())
        a = torch.stack([xd, torch.ones_like(xd)], 1) * weight.sqrt()[:, None]
        sol = torch.linalg.lstsq(a, (yd * weight.sqrt())[:, None]).solution
        w, b = float(sol[0]), float(sol[1])
    return w, b


@right("robust_fit", "allowed built-in", "Adam on F.smooth_l1_loss")
def fit_smooth_l1(x, y):
    w = torch.zeros((), dtype=x.dtype, device=x.device, requires_grad=True)
    b = torch.zeros((), dtype=x.dtype, device=x.device, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=0.1)
    for _ in range(300):
        opt.zero_grad()
        F.smooth_l1_loss(w * x + b, y).backward()
        opt.step()
    return w.item(), b.item()


@wrong("robust_fit", "subtle", "(b, w) returned in the wrong order", hints=("outcome-robust-fit",))
def fit_swapped(x, y):
    w, b = fit_irls(x, y)
    return b, w


# =========================================================================== imbalanced_recall
@right("imbalanced_recall", "allowed built-in", "nn.CrossEntropyLoss(weight=inverse frequencies)")
def train_weighted_module(x, y):
    torch.manual_seed(0)
    model = nn.Linear(2, 2).to(x.device)
    counts = torch.bincount(y, minlength=2).float()
    criterion = nn.CrossEntropyLoss(weight=(counts.sum() / (2 * counts)).to(x.device))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        criterion(model(x), y).backward()
        opt.step()
    return model


@wrong("imbalanced_recall", "blog", "focal loss with a scalar α only", hints=("outcome-minority",))
def train_focal_scalar(x, y):
    torch.manual_seed(0)
    model = nn.Linear(2, 2).to(x.device)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        ce = F.cross_entropy(model(x), y, reduction="none")
        (0.25 * (1 - torch.exp(-ce)) ** 2 * ce).mean().backward()
        opt.step()
    return model


# =========================================================================== focal_module
class FocalLossSpecial(nn.Module):
    """torch.special.log_softmax inside, α and γ kept as plain attributes."""

    def __init__(self, alpha=1, gamma=2):
        super().__init__()
        self.alpha, self.gamma = alpha, gamma

    def forward(self, inputs, targets):
        log_pt = torch.special.log_softmax(inputs, dim=1).gather(1, targets[:, None])[:, 0]
        return (-self.alpha * (1 - log_pt.exp()) ** self.gamma * log_pt).mean()


right("focal_module", "torch.special", name="FocalLoss-special")(FocalLossSpecial)


class FocalLossFloat64(nn.Module):
    def __init__(self, alpha=1, gamma=2):
        super().__init__()
        self.alpha, self.gamma = alpha, gamma

    def forward(self, inputs, targets):
        ce = F.cross_entropy(inputs.double(), targets, reduction="none")
        return (self.alpha * (1 - torch.exp(-ce)) ** self.gamma * ce).mean().to(inputs.dtype)


right("focal_module", "float64 inside", name="FocalLoss-float64")(FocalLossFloat64)


class FocalLossAlphaBuffer(nn.Module):
    """α stored as a registered buffer tensor (moves with .to(device), not a parameter)."""

    def __init__(self, alpha=1, gamma=2):
        super().__init__()
        self.register_buffer("alpha", torch.tensor(float(alpha)))
        self.gamma = gamma

    def forward(self, inputs, targets):
        ce = F.cross_entropy(inputs, targets, reduction="none")
        return (self.alpha.to(inputs.dtype) * (1 - torch.exp(-ce)) ** self.gamma * ce).mean()


right("focal_module", "LLM style", name="FocalLoss-alpha-buffer")(FocalLossAlphaBuffer)


class FocalLossNoGrad(nn.Module):
    def __init__(self, alpha=1, gamma=2):
        super().__init__()
        self.alpha, self.gamma = alpha, gamma

    @torch.no_grad()
    def forward(self, inputs, targets):
        ce = F.cross_entropy(inputs, targets, reduction="none")
        return (self.alpha * (1 - torch.exp(-ce)) ** self.gamma * ce).mean()


wrong("focal_module", "subtle", "forward decorated with @torch.no_grad() (copied from an evaluation helper)",
      hints=("graph-no-grad",), not_hints=("graph-cut",), name="FocalLoss-no-grad")(FocalLossNoGrad)


class FocalLossGammaPt(nn.Module):
    def __init__(self, alpha=1, gamma=2):
        super().__init__()
        self.alpha, self.gamma = alpha, gamma

    def forward(self, inputs, targets):
        ce = F.cross_entropy(inputs, targets, reduction="none")
        return (self.alpha * torch.exp(-ce) ** self.gamma * ce).mean()


wrong("focal_module", "blog", "p_t^γ", hints=("mistake-*",), expect="p_t^γ", not_hints=GENERIC_MISLEADING,
      name="FocalLoss-pt-gamma-blog")(FocalLossGammaPt)


# =========================================================================== dice_module
class DiceLossEinsum(nn.Module):
    def __init__(self, smooth=1.0):
        super().__init__()
        self.smooth = smooth

    def forward(self, inputs, targets):
        p = torch.softmax(inputs, 1)
        oh = F.one_hot(targets, inputs.shape[1]).movedim(-1, 1).to(p.dtype)
        inter = torch.einsum("i,i->", p.reshape(-1), oh.reshape(-1))
        return 1 - (2 * inter + self.smooth) / (p.sum() + oh.sum() + self.smooth)


right("dice_module", "einsum", name="DiceLoss-einsum")(DiceLossEinsum)


class DiceLossReshape(nn.Module):
    """The seed's DiceLoss, corrected: one-hot targets and .reshape instead of .view."""

    def __init__(self, smooth=1.0):
        super().__init__()
        self.smooth = smooth

    def forward(self, inputs, targets):
        inputs = F.softmax(inputs, dim=1)
        onehot = F.one_hot(targets, inputs.shape[1]).permute(0, -1, *range(1, targets.dim())).to(inputs.dtype)
        inputs_flat, targets_flat = inputs.reshape(-1), onehot.reshape(-1)
        intersection = (inputs_flat * targets_flat).sum()
        return 1 - (2.0 * intersection + self.smooth) / (inputs_flat.sum() + targets_flat.sum() + self.smooth)


right("dice_module", "blog", name="DiceLoss-reshape")(DiceLossReshape)


class DiceLossSigmoid(nn.Module):
    def __init__(self, smooth=1.0):
        super().__init__()
        self.smooth = smooth

    def forward(self, inputs, targets):
        p = torch.sigmoid(inputs)
        oh = F.one_hot(targets, inputs.shape[1]).movedim(-1, 1).to(p.dtype)
        return 1 - (2 * (p * oh).sum() + self.smooth) / (p.sum() + oh.sum() + self.smooth)


wrong("dice_module", "subtle", "sigmoid instead of softmax over the classes", not_hints=GENERIC_MISLEADING,
      name="DiceLoss-sigmoid")(DiceLossSigmoid)


class DiceLossCpuOnehot(nn.Module):
    def __init__(self, smooth=1.0):
        super().__init__()
        self.smooth = smooth

    def forward(self, inputs, targets):
        p = torch.softmax(inputs, 1)
        oh = F.one_hot(targets, inputs.shape[1]).movedim(-1, 1).float()      # float32 for float64 inputs
        return 1 - (2 * (p * oh).sum() + self.smooth) / (p.sum() + oh.sum() + self.smooth)


right("dice_module", "type promotion", "a float32 one-hot is promoted by the product", name="DiceLoss-float32-onehot")(
    DiceLossCpuOnehot)


# =========================================================================== combined_module
class CombinedLossManual(nn.Module):
    def __init__(self, alpha=0.5):
        super().__init__()
        self.alpha = alpha

    def forward(self, inputs, targets):
        return combined_manual(inputs, targets, self.alpha)


right("combined_module", "manual logsumexp", name="CombinedLoss-manual")(CombinedLossManual)


class CombinedLossSubmodules(nn.Module):
    def __init__(self, alpha=0.5):
        super().__init__()
        self.alpha = alpha
        self.ce_loss = nn.CrossEntropyLoss()
        self.dice_loss = DiceLossEinsum()

    def forward(self, inputs, targets):
        return self.alpha * self.ce_loss(inputs, targets) + (1 - self.alpha) * self.dice_loss(inputs, targets)


right("combined_module", "allowed built-in", name="CombinedLoss-submodules")(CombinedLossSubmodules)


class CombinedLossNoSuper(nn.Module):
    def __init__(self, alpha=0.5):
        self.alpha = alpha
        self.ce_loss = nn.CrossEntropyLoss()

    def forward(self, inputs, targets):
        return self.ce_loss(inputs, targets)


wrong("combined_module", "blog", "super().__init__() forgotten", hints=("exception-super-init",),
      not_hints=GENERIC_MISLEADING, name="CombinedLoss-no-super-blog")(CombinedLossNoSuper)


class CombinedLossAlphaParam(nn.Module):
    def __init__(self, alpha=0.5):
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(alpha))

    def forward(self, inputs, targets):
        return combined_manual(inputs, targets, self.alpha)


wrong("combined_module", "LLM style", "α as a learnable nn.Parameter", hints=("module-parameters",),
      not_hints=GENERIC_MISLEADING, name="CombinedLoss-alpha-learnable")(CombinedLossAlphaParam)


# =========================================================================== label_smoothing_module
class LabelSmoothingPlainCE(nn.Module):
    def __init__(self, smoothing=0.1):
        super().__init__()
        self.smoothing = smoothing

    def forward(self, pred, target):
        return (1 - self.smoothing) * F.cross_entropy(pred, target) - self.smoothing * F.log_softmax(pred, -1).mean(-1).mean()


right("label_smoothing_module", "allowed built-in", "plain F.cross_entropy (no label_smoothing=)",
      name="LabelSmoothing-plain-ce")(LabelSmoothingPlainCE)


class LabelSmoothingSoftTarget(nn.Module):
    def __init__(self, smoothing=0.1):
        super().__init__()
        self.smoothing = smoothing

    def forward(self, pred, target):
        k = pred.shape[-1]
        soft = torch.full_like(pred, self.smoothing / k).scatter_(1, target[:, None], 1 - self.smoothing + self.smoothing / k)
        return torch.sum(-soft * F.log_softmax(pred, dim=-1), dim=-1).mean()


right("label_smoothing_module", "soft targets", name="LabelSmoothing-soft-target")(LabelSmoothingSoftTarget)


class LabelSmoothingBuiltinPositional(nn.Module):
    def __init__(self, smoothing=0.1):
        super().__init__()
        self.criterion = nn.CrossEntropyLoss(None, None, -100, None, "mean", smoothing)

    def forward(self, pred, target):
        return self.criterion(pred, target)


forbidden("label_smoothing_module", "disguised", "nn.CrossEntropyLoss with the smoothing as its 6th positional argument",
          name="LabelSmoothing-positional")(LabelSmoothingBuiltinPositional)


class LabelSmoothingNoGrad(nn.Module):
    def __init__(self, smoothing=0.1):
        super().__init__()
        self.smoothing = smoothing

    def forward(self, pred, target):
        with torch.inference_mode():
            log_prob = F.log_softmax(pred, dim=-1)
        nll = -log_prob.gather(-1, target[:, None])[:, 0]
        return ((1 - self.smoothing) * nll - self.smoothing * log_prob.mean(-1)).mean()


wrong("label_smoothing_module", "subtle", "log-probabilities computed in inference_mode", hints=("graph-no-grad",),
      not_hints=("graph-cut",), allowed=("exception-*",), name="LabelSmoothing-inference-mode")(LabelSmoothingNoGrad)


# =========================================================================== weighted_ce_module
class WeightedCEBufferFloat64(nn.Module):
    def __init__(self, class_weights):
        super().__init__()
        self.register_buffer("class_weights", torch.as_tensor(class_weights, dtype=torch.float64))

    def forward(self, logits, target):
        w = self.class_weights.to(logits.device)[target]
        nll = (torch.logsumexp(logits.double(), 1) - logits.double().gather(1, target[:, None])[:, 0])
        return ((w * nll).sum() / w.sum()).to(logits.dtype)


right("weighted_ce_module", "float64 inside", name="WeightedCE-float64")(WeightedCEBufferFloat64)


class WeightedCEEinsum(nn.Module):
    def __init__(self, class_weights):
        super().__init__()
        self.register_buffer("class_weights", torch.as_tensor(class_weights, dtype=torch.float32))

    def forward(self, logits, target):
        onehot = F.one_hot(target, logits.shape[1]).to(logits.dtype)
        w = onehot @ self.class_weights.to(logits.device, logits.dtype)
        nll = -torch.einsum("nc,nc->n", onehot, F.log_softmax(logits, 1))
        return (w * nll).sum() / w.sum()


right("weighted_ce_module", "einsum", name="WeightedCE-einsum")(WeightedCEEinsum)


class WeightedCEItem(nn.Module):
    def __init__(self, class_weights):
        super().__init__()
        self.register_buffer("class_weights", torch.as_tensor(class_weights, dtype=torch.float32))

    def forward(self, logits, target):
        w = self.class_weights.to(logits.device, logits.dtype)
        loss = F.cross_entropy(logits, target, weight=w)
        return torch.tensor(loss.item(), dtype=logits.dtype, device=logits.device)


wrong("weighted_ce_module", "blog", "the loss re-wrapped with torch.tensor(loss.item())", hints=("graph-cut",),
      not_hints=("graph-no-grad",), name="WeightedCE-item")(WeightedCEItem)
