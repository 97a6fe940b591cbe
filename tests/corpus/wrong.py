"""Plausible wrong student implementations, at least three per exercise.

Each entry pairs an implementation with a substring that the Chinese feedback of
``lossgrader.check`` must contain for it (the message of a failing case, a hint, or a
type/shape/dtype message). The implementations are written here from the kind of code
students hand in (and the mistakes of the seed tutorial), independently of the
``Mistake`` entries in lossgrader/exercises/, so that a hint the grader shows is
tested against code it has not seen.

``WRONG`` is the list of entries; ``PASS_ON_CPU`` lists implementations that are wrong
only on a GPU and must therefore get full marks on the CPU.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import lossgrader.references as lg_ref


@dataclass
class Wrong:
    exercise: str
    name: str
    impl: Any
    expect: str                  # substring of str(report) or report._repr_html_()
    hidden: bool = False         # grade with the hidden cases as well
    why: str = ""                # what the student did wrong
    must_not: tuple = ()         # substrings that would mislead the student here

    @property
    def id(self) -> str:
        return f"{self.exercise}-{self.name}"


WRONG: list = []
PASS_ON_CPU: list = []


def wrong(exercise, expect, *, name=None, hidden=False, why="", must_not=()):
    def register(impl):
        WRONG.append(Wrong(exercise, name or impl.__name__, impl, expect, hidden, why, tuple(must_not)))
        return impl
    return register


# Messages shared by several entries (substrings of lossgrader's feedback).
SUM = "而不是平均"             # "你用了求和（sum）而不是平均（mean）"
FORBIDDEN = "不允许"
UNSTABLE = "数值不稳定"
NO_GRAD = "梯度无法回传"
RESHAPE = "reshape"
WRONG_VALUE = "损失值不对"
INPLACE = "原地修改"
PARAMETER = "可训练参数"
ONE_HOT = "one-hot"           # class-index targets must become one-hot for Dice


def _log_softmax_naive(x):
    e = torch.exp(x)
    return torch.log(e / e.sum(dim=1, keepdim=True))


def _onehot(logits, target):
    return F.one_hot(target, logits.shape[1]).movedim(-1, 1).to(logits.dtype)


def _nll(logits, target):
    return -torch.log_softmax(logits, dim=1).gather(1, target.unsqueeze(1)).squeeze(1)


# =========================================================================== numerical_grad
@wrong("numerical_grad", "前向差分", why="forward differences: O(eps) error")
def numgrad_forward(f, x, eps=1e-6):
    base = float(f(x))
    grad = torch.zeros_like(x)
    flat_x = x.detach().clone().reshape(-1)
    flat_g = grad.reshape(-1)
    for i in range(flat_x.numel()):
        bumped = flat_x.clone()
        bumped[i] += eps
        flat_g[i] = (float(f(bumped.reshape(x.shape))) - base) / eps
    return flat_g.reshape(x.shape)


@wrong("numerical_grad", "少除了 2", why="central difference divided by eps instead of 2 eps")
def numgrad_no_half(f, x, eps=1e-6):
    flat_x = x.detach().clone().reshape(-1)
    grad = torch.zeros_like(flat_x)
    for i in range(flat_x.numel()):
        plus, minus = flat_x.clone(), flat_x.clone()
        plus[i] += eps
        minus[i] -= eps
        grad[i] = (float(f(plus.reshape(x.shape))) - float(f(minus.reshape(x.shape)))) / eps
    return grad.reshape(x.shape)


@wrong("numerical_grad", FORBIDDEN, why="asks autograd instead of differencing")
def numgrad_autograd(f, x, eps=1e-6):
    x = x.detach().clone().requires_grad_(True)
    f(x).backward()
    return x.grad


@wrong("numerical_grad", INPLACE, why="perturbs x itself and never restores it")
def numgrad_mutates_input(f, x, eps=1e-6):
    grad = torch.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        x[idx] += eps
        plus = float(f(x))
        x[idx] -= 2 * eps
        minus = float(f(x))
        grad[idx] = (plus - minus) / (2 * eps)
    return grad


@wrong("numerical_grad", "形状", why="returns the flattened gradient")
def numgrad_flat(f, x, eps=1e-6):
    flat_x = x.detach().clone().reshape(-1)
    grad = torch.zeros_like(flat_x)
    for i in range(flat_x.numel()):
        plus, minus = flat_x.clone(), flat_x.clone()
        plus[i] += eps
        minus[i] -= eps
        grad[i] = (float(f(plus.reshape(x.shape))) - float(f(minus.reshape(x.shape)))) / (2 * eps)
    return grad


# =========================================================================== mse
@wrong("mse", SUM, why="sum instead of mean")
def mse_sum(pred, target):
    return ((pred - target) ** 2).sum()


@wrong("mse", "平均绝对误差", why="computes MAE")
def mse_is_mae(pred, target):
    return torch.abs(pred - target).mean()


@wrong("mse", FORBIDDEN, why="calls F.mse_loss")
def mse_functional(pred, target):
    return F.mse_loss(pred, target)


@wrong("mse", FORBIDDEN, why="calls nn.MSELoss")
def mse_module(pred, target):
    criterion = nn.MSELoss()
    return criterion(pred, target)


@wrong("mse", FORBIDDEN, why="calls lossgrader's reference")
def mse_reference(pred, target):
    return lg_ref.mse_loss(pred, target)


@wrong("mse", "数据类型", why="hard-codes float32, wrong on float64 inputs")
def mse_float32(pred, target):
    return ((pred - target) ** 2).mean().to(torch.float32)


@wrong("mse", "0 维张量", why="returns shape (1,) instead of a 0-dim tensor")
def mse_shape_one(pred, target):
    return ((pred - target) ** 2).mean().reshape(1)


@wrong("mse", NO_GRAD, why=".item(): a Python float, the graph is cut")
def mse_item(pred, target):
    return ((pred - target) ** 2).mean().item()


@wrong("mse", NO_GRAD, why=".detach(): right value, no gradient")
def mse_detach(pred, target):
    return ((pred - target) ** 2).mean().detach()


@wrong("mse", NO_GRAD, why="NumPy round trip")
def mse_numpy(pred, target):
    diff = pred.detach().cpu().numpy() - target.detach().cpu().numpy()
    return torch.tensor(np.mean(diff ** 2), dtype=pred.dtype, device=pred.device)


@wrong("mse", RESHAPE, why=".view(-1) on a transposed input")
def mse_view(pred, target):
    return ((pred.view(-1) - target.view(-1)) ** 2).mean()


# =========================================================================== mse_grad
@wrong("mse_grad", "缺少 1/n", why="the seed's -2(y - y_hat): no 1/n")
def mse_grad_seed(pred, target):
    return -2 * (target - pred)


@wrong("mse_grad", "符号反了", why="sign flipped")
def mse_grad_sign(pred, target):
    return 2 * (target - pred) / pred.numel()


@wrong("mse_grad", FORBIDDEN, why="autograd instead of the formula")
def mse_grad_autograd(pred, target):
    p = pred.detach().clone().requires_grad_(True)
    ((p - target) ** 2).mean().backward()
    return p.grad


@wrong("mse_grad", "梯度值不对", why="divides by the number of rows only (right for 1-d inputs only)")
def mse_grad_rows(pred, target):
    return 2 * (pred - target) / pred.shape[0]


# =========================================================================== mae
@wrong("mae", "平方误差", why="the seed's snippet: nn.L1Loss created, mse_loss called")
def mae_seed_snippet(pred, target):
    mse_loss = lambda a, b: ((a - b) ** 2).mean()  # noqa: E731 (the seed's mse_loss)
    mae_loss = lambda a, b: (a - b).abs().mean()  # noqa: E731,F841 (created, never used)
    loss = mse_loss(pred, target)
    return loss


@wrong("mae", SUM, why="sum instead of mean")
def mae_sum(pred, target):
    return (pred - target).abs().sum()


@wrong("mae", "正负误差相互抵消", why="mean before abs")
def mae_abs_of_mean(pred, target):
    return torch.abs(torch.mean(pred - target))


@wrong("mae", FORBIDDEN, why="calls F.l1_loss")
def mae_functional(pred, target):
    return F.l1_loss(pred, target)


@wrong("mae", "不可导点", why="|r| as sqrt(r^2): NaN gradient at zero residual")
def mae_sqrt(pred, target):
    return torch.sqrt((pred - target) ** 2).mean()


# =========================================================================== mae_grad
@wrong("mae_grad", "缺少 1/n", why="no 1/n")
def mae_grad_no_n(pred, target):
    return torch.sign(pred - target)


@wrong("mae_grad", "符号反了", why="sign flipped")
def mae_grad_sign(pred, target):
    return torch.sign(target - pred) / pred.numel()


@wrong("mae_grad", "MSE 的梯度", why="the MSE gradient")
def mae_grad_is_mse(pred, target):
    return 2 * (pred - target) / pred.numel()


@wrong("mae_grad", "不可导点", why="r/|r|: 0/0 at zero residual")
def mae_grad_divide(pred, target):
    r = pred - target
    return r / r.abs() / pred.numel()


# =========================================================================== huber
@wrong("huber", "缺少 0.5", why="quadratic part r^2 without 1/2")
def huber_no_half(pred, target, delta=1.0):
    r = (pred - target).abs()
    return torch.where(r <= delta, r ** 2, delta * r - 0.5 * delta ** 2).mean()


@wrong("huber", "不连续", why="linear part without -delta^2/2")
def huber_no_shift(pred, target, delta=1.0):
    r = (pred - target).abs()
    return torch.where(r <= delta, 0.5 * r ** 2, delta * r).mean()


@wrong("huber", "Smooth L1", why="divides by delta: that is Smooth L1")
def huber_is_smooth_l1(pred, target, delta=1.0):
    r = (pred - target).abs()
    return torch.where(r < delta, 0.5 * r ** 2 / delta, r - 0.5 * delta).mean()


@wrong("huber", FORBIDDEN, why="calls F.huber_loss")
def huber_functional(pred, target, delta=1.0):
    return F.huber_loss(pred, target, delta=delta)


@wrong("huber", WRONG_VALUE, why="ignores delta")
def huber_ignores_delta(pred, target, delta=1.0):
    r = (pred - target).abs()
    return torch.where(r <= 1.0, 0.5 * r ** 2, r - 0.5).mean()


# =========================================================================== smooth_l1
@wrong("smooth_l1", "你实现的是 Huber 损失", why="Huber with delta = beta")
def smooth_l1_is_huber(pred, target, beta=1.0):
    r = (pred - target).abs()
    return torch.where(r < beta, 0.5 * r ** 2, beta * r - 0.5 * beta ** 2).mean()


@wrong("smooth_l1", "被忽略", why="ignores beta")
def smooth_l1_ignores_beta(pred, target, beta=1.0):
    r = (pred - target).abs()
    return torch.where(r < 1, 0.5 * r ** 2, r - 0.5).mean()


@wrong("smooth_l1", FORBIDDEN, why="calls F.smooth_l1_loss")
def smooth_l1_functional(pred, target, beta=1.0):
    return F.smooth_l1_loss(pred, target, beta=beta)


@wrong("smooth_l1", SUM, why="sum instead of mean")
def smooth_l1_sum(pred, target, beta=1.0):
    r = (pred - target).abs()
    return torch.where(r < beta, 0.5 * r ** 2 / beta, r - 0.5 * beta).sum()


# =========================================================================== bce
@wrong("bce", "缺少负号", why="no minus sign")
def bce_no_minus(probs, target):
    return (target * torch.log(probs) + (1 - target) * torch.log(1 - probs)).mean()


@wrong("bce", "只算了 y = 1", why="only the positive term")
def bce_positive_only(probs, target):
    return -(target * torch.log(probs)).mean()


@wrong("bce", FORBIDDEN, why="calls F.binary_cross_entropy")
def bce_functional(probs, target):
    return F.binary_cross_entropy(probs, target)


@wrong("bce", "NaN 或 Inf", why="log(0) unclamped: 0 * -inf = NaN",
       must_not=("大 logits",))  # BCE takes probabilities: the fix is clamping log at -100
def bce_unclamped(probs, target):
    return -(target * torch.log(probs) + (1 - target) * torch.log(1 - probs)).mean()


@wrong("bce", WRONG_VALUE, why="clamps probabilities to [1e-7, 1 - 1e-7] instead of log to -100")
def bce_eps_clamp(probs, target):
    p = probs.clamp(1e-7, 1 - 1e-7)
    return -(target * torch.log(p) + (1 - target) * torch.log(1 - p)).mean()


# =========================================================================== bce_logits
@wrong("bce_logits", UNSTABLE, why="sigmoid then log: log(0) for large logits")
def bce_logits_naive(logits, target):
    p = torch.sigmoid(logits)
    return -(target * torch.log(p) + (1 - target) * torch.log(1 - p)).mean()


@wrong("bce_logits", UNSTABLE, why="log(1 + exp(x)) overflows")
def bce_logits_softplus_naive(logits, target):
    return (torch.log(1 + torch.exp(logits)) - target * logits).mean()


@wrong("bce_logits", "符号错误", why="+x*y instead of -x*y")
def bce_logits_sign(logits, target):
    return (torch.clamp(logits, min=0) + logits * target + torch.log1p(torch.exp(-logits.abs()))).mean()


@wrong("bce_logits", SUM, why="sum instead of mean")
def bce_logits_sum(logits, target):
    return (torch.clamp(logits, min=0) - logits * target + torch.log1p(torch.exp(-logits.abs()))).sum()


@wrong("bce_logits", FORBIDDEN, why="calls F.binary_cross_entropy_with_logits")
def bce_logits_functional(logits, target):
    return F.binary_cross_entropy_with_logits(logits, target)


# =========================================================================== bce_logits_grad
@wrong("bce_logits_grad", "缺少 1/n", why="no 1/n")
def bce_logits_grad_no_n(logits, target):
    return torch.sigmoid(logits) - target


@wrong("bce_logits_grad", "符号反了", why="sign flipped")
def bce_logits_grad_sign(logits, target):
    return (target - torch.sigmoid(logits)) / logits.numel()


@wrong("bce_logits_grad", "σ(x)(1 − σ(x))", why="chain rule through sigmoid applied twice")
def bce_logits_grad_extra_factor(logits, target):
    s = torch.sigmoid(logits)
    return (s - target) * s * (1 - s) / logits.numel()


@wrong("bce_logits_grad", FORBIDDEN, why="autograd instead of the formula")
def bce_logits_grad_autograd(logits, target):
    x = logits.detach().clone().requires_grad_(True)
    loss = (x.clamp(min=0) - x * target + torch.log1p(torch.exp(-x.abs()))).mean()
    return torch.autograd.grad(loss, x)[0]


# =========================================================================== cross_entropy
@wrong("cross_entropy", UNSTABLE, why="softmax without subtracting the max: exp overflows")
def ce_naive_softmax(logits, target):
    probs = torch.exp(logits) / torch.exp(logits).sum(dim=1, keepdim=True)
    return -torch.log(probs[torch.arange(len(target)), target]).mean()


@wrong("cross_entropy", SUM, why="sum over the batch")
def ce_sum(logits, target):
    return _nll(logits, target).sum()


@wrong("cross_entropy", FORBIDDEN, why="calls F.cross_entropy")
def ce_functional(logits, target):
    return F.cross_entropy(logits, target)


@wrong("cross_entropy", FORBIDDEN, why="calls F.nll_loss")
def ce_nll(logits, target):
    return F.nll_loss(F.log_softmax(logits, dim=1), target)


@wrong("cross_entropy", FORBIDDEN, why="calls lossgrader's reference")
def ce_reference(logits, target):
    return lg_ref.cross_entropy(logits, target)


@wrong("cross_entropy", "dim=1", why="softmax over the batch dimension")
def ce_dim0(logits, target):
    log_p = logits - torch.logsumexp(logits, dim=0, keepdim=True)
    return -log_p.gather(1, target.unsqueeze(1)).mean()


# =========================================================================== cross_entropy_grad
@wrong("cross_entropy_grad", "缺少 1/N", why="no 1/N")
def ce_grad_no_n(logits, target):
    return torch.softmax(logits, dim=1) - F.one_hot(target, logits.shape[1]).to(logits.dtype)


@wrong("cross_entropy_grad", "N·C", why="divides by N*C")
def ce_grad_numel(logits, target):
    return (torch.softmax(logits, dim=1) - F.one_hot(target, logits.shape[1]).to(logits.dtype)) / logits.numel()


@wrong("cross_entropy_grad", "符号反了", why="sign flipped")
def ce_grad_sign(logits, target):
    return (F.one_hot(target, logits.shape[1]).to(logits.dtype) - torch.softmax(logits, dim=1)) / len(target)


@wrong("cross_entropy_grad", UNSTABLE, why="naive softmax: inf/inf = NaN for large logits")
def ce_grad_naive(logits, target):
    e = torch.exp(logits)
    return (e / e.sum(dim=1, keepdim=True) - F.one_hot(target, logits.shape[1]).to(logits.dtype)) / len(target)


@wrong("cross_entropy_grad", FORBIDDEN, why="autograd instead of the formula")
def ce_grad_autograd(logits, target):
    x = logits.detach().clone().requires_grad_(True)
    loss = (torch.logsumexp(x, 1) - x.gather(1, target.unsqueeze(1)).squeeze(1)).mean()
    loss.backward()
    return x.grad


# =========================================================================== weighted_ce
@wrong("weighted_ce", "权重之和", why="weighted sum averaged over N")
def wce_over_n(logits, target, weight):
    return (weight[target] * _nll(logits, target)).mean()


@wrong("weighted_ce", "权重没有起作用", why="weights ignored")
def wce_unweighted(logits, target, weight):
    return _nll(logits, target).mean()


@wrong("weighted_ce", "所有类别权重之和", why="divides by the sum of all class weights")
def wce_over_all_weights(logits, target, weight):
    return (weight[target] * _nll(logits, target)).sum() / weight.sum()


@wrong("weighted_ce", FORBIDDEN, why="calls F.cross_entropy(weight=)")
def wce_functional(logits, target, weight):
    return F.cross_entropy(logits, target, weight=weight)


@wrong("weighted_ce", FORBIDDEN, why="calls F.nll_loss(weight=)")
def wce_nll(logits, target, weight):
    return F.nll_loss(torch.log_softmax(logits, 1), target, weight=weight)


# =========================================================================== label_smoothing_ce
@wrong("label_smoothing_ce", "K − 1", why="eps spread over the K - 1 other classes")
def ls_k_minus_1(logits, target, smoothing=0.1):
    k = logits.shape[1]
    log_p = torch.log_softmax(logits, dim=1)
    onehot = F.one_hot(target, k).to(logits.dtype)
    soft = onehot * (1 - smoothing) + (1 - onehot) * smoothing / (k - 1)
    return -(soft * log_p).sum(dim=1).mean()


@wrong("label_smoothing_ce", "平滑没有起作用", why="plain cross-entropy")
def ls_no_smoothing(logits, target, smoothing=0.1):
    return _nll(logits, target).mean()


@wrong("label_smoothing_ce", "均匀分布", why="forgets the uniform term")
def ls_no_uniform(logits, target, smoothing=0.1):
    return ((1 - smoothing) * _nll(logits, target)).mean()


@wrong("label_smoothing_ce", FORBIDDEN, why="calls F.cross_entropy(label_smoothing=)")
def ls_functional(logits, target, smoothing=0.1):
    return F.cross_entropy(logits, target, label_smoothing=smoothing)


@wrong("label_smoothing_ce", UNSTABLE, why="log of a naive softmax")
def ls_naive(logits, target, smoothing=0.1):
    log_p = _log_softmax_naive(logits)
    nll = -log_p.gather(1, target.unsqueeze(1)).squeeze(1)
    return ((1 - smoothing) * nll - smoothing * log_p.mean(dim=1)).mean()


# =========================================================================== focal
@wrong("focal", "不是 p_t^γ", why="p_t^gamma instead of (1 - p_t)^gamma")
def focal_pt_gamma(logits, target, alpha=1.0, gamma=2.0):
    ce = _nll(logits, target)
    return (alpha * torch.exp(-ce) ** gamma * ce).mean()


@wrong("focal", "缺少调制因子", why="alpha * CE")
def focal_no_modulation(logits, target, alpha=1.0, gamma=2.0):
    return (alpha * _nll(logits, target)).mean()


@wrong("focal", SUM, why="sum over the batch")
def focal_sum(logits, target, alpha=1.0, gamma=2.0):
    ce = _nll(logits, target)
    return (alpha * (1 - torch.exp(-ce)) ** gamma * ce).sum()


@wrong("focal", "最大概率", why="p_t taken as the largest probability")
def focal_max_prob(logits, target, alpha=1.0, gamma=2.0):
    ce = _nll(logits, target)
    p_max = torch.softmax(logits, dim=1).max(dim=1).values
    return (alpha * (1 - p_max) ** gamma * ce).mean()


@wrong("focal", UNSTABLE, why="log of a naive softmax")
def focal_naive(logits, target, alpha=1.0, gamma=2.0):
    p = torch.exp(logits) / torch.exp(logits).sum(dim=1, keepdim=True)
    p_t = p.gather(1, target.unsqueeze(1)).squeeze(1)
    return (-alpha * (1 - p_t) ** gamma * torch.log(p_t)).mean()


# =========================================================================== sigmoid_focal
def _sfl_parts(logits, target):
    p = torch.sigmoid(logits)
    ce = logits.clamp(min=0) - logits * target + torch.log1p(torch.exp(-logits.abs()))
    p_t = p * target + (1 - p) * (1 - target)
    return p, ce, p_t


@wrong("sigmoid_focal", "α_t 反了", why="alpha on negatives, 1 - alpha on positives")
def sfl_alpha_swapped(logits, target, alpha=0.25, gamma=2.0):
    p, ce, p_t = _sfl_parts(logits, target)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * (1 - target) + (1 - alpha) * target) * loss
    return loss.mean()


@wrong("sigmoid_focal", "alpha < 0", why="applies alpha_t even for alpha < 0")
def sfl_always_alpha(logits, target, alpha=0.25, gamma=2.0):
    p, ce, p_t = _sfl_parts(logits, target)
    return ((alpha * target + (1 - alpha) * (1 - target)) * ce * (1 - p_t) ** gamma).mean()


@wrong("sigmoid_focal", "(1 − p)^γ", why="modulates with p instead of p_t")
def sfl_uses_p(logits, target, alpha=0.25, gamma=2.0):
    p, ce, p_t = _sfl_parts(logits, target)
    loss = ce * (1 - p) ** gamma
    if alpha >= 0:
        loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return loss.mean()


@wrong("sigmoid_focal", SUM, why="sum instead of mean")
def sfl_sum(logits, target, alpha=0.25, gamma=2.0):
    p, ce, p_t = _sfl_parts(logits, target)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return loss.sum()


@wrong("sigmoid_focal", UNSTABLE, why="BCE as -log(sigmoid): log(0) for large logits")
def sfl_naive(logits, target, alpha=0.25, gamma=2.0):
    p = torch.sigmoid(logits)
    ce = -(target * torch.log(p) + (1 - target) * torch.log(1 - p))
    p_t = p * target + (1 - p) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return loss.mean()


# =========================================================================== contrastive
@wrong("contrastive", "标签约定", why="y = 1 taken as similar (the library convention)")
def contrastive_swapped(x1, x2, label, margin=1.0):
    d = torch.linalg.vector_norm(x1 - x2, dim=1)
    return (label * d ** 2 + (1 - label) * torch.clamp(margin - d, min=0) ** 2).mean()


@wrong("contrastive", "你用了 d", why="d instead of d^2 for similar pairs")
def contrastive_d_not_squared(x1, x2, label, margin=1.0):
    d = torch.linalg.vector_norm(x1 - x2, dim=1)
    return ((1 - label) * d + label * torch.clamp(margin - d, min=0) ** 2).mean()


@wrong("contrastive", "max(0, margin − d)", why="no hinge on the dissimilar term")
def contrastive_no_hinge(x1, x2, label, margin=1.0):
    d = torch.linalg.vector_norm(x1 - x2, dim=1)
    return ((1 - label) * d ** 2 + label * (margin - d) ** 2).mean()


@wrong("contrastive", "平方距离", why="squared distance used as d")
def contrastive_squared_distance(x1, x2, label, margin=1.0):
    d = ((x1 - x2) ** 2).sum(dim=1)
    return ((1 - label) * d ** 2 + label * torch.clamp(margin - d, min=0) ** 2).mean()


@wrong("contrastive", "不可导点", why="hand-written sqrt: NaN gradient where the points coincide")
def contrastive_sqrt(x1, x2, label, margin=1.0):
    d = torch.sqrt(((x1 - x2) ** 2).sum(dim=1))
    return ((1 - label) * d ** 2 + label * torch.clamp(margin - d, min=0) ** 2).mean()


# =========================================================================== triplet
@wrong("triplet", "铰链", why="no max(0, .)")
def triplet_no_hinge(anchor, positive, negative, margin=1.0):
    d_ap = (anchor - positive).norm(dim=1)
    d_an = (anchor - negative).norm(dim=1)
    return (d_ap - d_an + margin).mean()


@wrong("triplet", "平方距离", why="squared distances")
def triplet_squared(anchor, positive, negative, margin=1.0):
    d_ap = ((anchor - positive) ** 2).sum(dim=1)
    d_an = ((anchor - negative) ** 2).sum(dim=1)
    return torch.relu(d_ap - d_an + margin).mean()


@wrong("triplet", "正负样本反了", why="positive and negative swapped")
def triplet_swapped(anchor, positive, negative, margin=1.0):
    d_ap = (anchor - positive).norm(dim=1)
    d_an = (anchor - negative).norm(dim=1)
    return torch.clamp(d_an - d_ap + margin, min=0).mean()


@wrong("triplet", FORBIDDEN, why="calls F.triplet_margin_loss")
def triplet_functional(anchor, positive, negative, margin=1.0):
    return F.triplet_margin_loss(anchor, positive, negative, margin=margin)


# =========================================================================== dice
@wrong("dice", "忘了对 logits 做 softmax", why="Dice on raw logits")
def dice_no_softmax(logits, target, smooth=1.0):
    onehot = _onehot(logits, target)
    inter = (logits * onehot).sum()
    return 1 - (2 * inter + smooth) / (logits.sum() + onehot.sum() + smooth)


@wrong("dice", "平滑项", why="ignores smooth")
def dice_no_smooth(logits, target, smooth=1.0):
    p = torch.softmax(logits, dim=1)
    onehot = _onehot(logits, target)
    return 1 - 2 * (p * onehot).sum() / (p.sum() + onehot.sum())


@wrong("dice", "系数 2", why="no factor 2 in the numerator")
def dice_no_two(logits, target, smooth=1.0):
    p = torch.softmax(logits, dim=1)
    onehot = _onehot(logits, target)
    return 1 - ((p * onehot).sum() + smooth) / (p.sum() + onehot.sum() + smooth)


@wrong("dice", "逐元素 sigmoid", why="element-wise sigmoid instead of softmax over classes")
def dice_sigmoid(logits, target, smooth=1.0):
    p = torch.sigmoid(logits)
    onehot = _onehot(logits, target)
    return 1 - (2 * (p * onehot).sum() + smooth) / (p.sum() + onehot.sum() + smooth)


@wrong("dice", RESHAPE, why="the seed's .view(-1) on a permuted one-hot tensor")
def dice_view(logits, target, smooth=1.0):
    p = torch.softmax(logits, dim=1).view(-1)
    onehot = F.one_hot(target, logits.shape[1])
    onehot = onehot.permute(0, onehot.dim() - 1, *range(1, onehot.dim() - 1)).to(logits.dtype).view(-1)
    return 1 - (2 * (p * onehot).sum() + smooth) / (p.sum() + onehot.sum() + smooth)


# =========================================================================== iou
@wrong("iou", "减去交集", why="union = sum p + sum t")
def iou_union_no_subtract(logits, target, smooth=1.0):
    p = torch.softmax(logits, dim=1)
    onehot = _onehot(logits, target)
    inter = (p * onehot).sum()
    return 1 - (inter + smooth) / (p.sum() + onehot.sum() + smooth)


@wrong("iou", "你计算的是 Dice 损失", why="computes Dice")
def iou_is_dice(logits, target, smooth=1.0):
    p = torch.softmax(logits, dim=1)
    onehot = _onehot(logits, target)
    inter = (p * onehot).sum()
    return 1 - (2 * inter + smooth) / (p.sum() + onehot.sum() + smooth)


@wrong("iou", "忘了对 logits 做 softmax", why="IoU on raw logits")
def iou_no_softmax(logits, target, smooth=1.0):
    onehot = _onehot(logits, target)
    inter = (logits * onehot).sum()
    return 1 - (inter + smooth) / (logits.sum() + onehot.sum() - inter + smooth)


@wrong("iou", WRONG_VALUE, why="ignores smooth")
def iou_no_smooth(logits, target, smooth=1.0):
    p = torch.softmax(logits, dim=1)
    onehot = _onehot(logits, target)
    inter = (p * onehot).sum()
    return 1 - inter / (p.sum() + onehot.sum() - inter)


# =========================================================================== box_iou
def _box_parts(pred, tgt, clamp=True):
    w = torch.min(pred[:, 2], tgt[:, 2]) - torch.max(pred[:, 0], tgt[:, 0])
    h = torch.min(pred[:, 3], tgt[:, 3]) - torch.max(pred[:, 1], tgt[:, 1])
    if clamp:
        w, h = w.clamp(min=0), h.clamp(min=0)
    area_p = (pred[:, 2] - pred[:, 0]) * (pred[:, 3] - pred[:, 1])
    area_t = (tgt[:, 2] - tgt[:, 0]) * (tgt[:, 3] - tgt[:, 1])
    return w * h, area_p, area_t


@wrong("box_iou", "减去交集", why="union = area_p + area_t")
def box_union_no_subtract(pred_boxes, target_boxes):
    inter, ap, at = _box_parts(pred_boxes, target_boxes)
    return (1 - inter / (ap + at)).mean()


@wrong("box_iou", "clamp(min=0)", why="negative overlap of disjoint boxes not clamped")
def box_no_clamp(pred_boxes, target_boxes):
    inter, ap, at = _box_parts(pred_boxes, target_boxes, clamp=False)
    return (1 - inter / (ap + at - inter)).mean()


@wrong("box_iou", "1 − IoU", why="returns the mean IoU")
def box_returns_iou(pred_boxes, target_boxes):
    inter, ap, at = _box_parts(pred_boxes, target_boxes)
    return (inter / (ap + at - inter)).mean()


@wrong("box_iou", SUM, why="sum over boxes")
def box_sum(pred_boxes, target_boxes):
    inter, ap, at = _box_parts(pred_boxes, target_boxes)
    return (1 - inter / (ap + at - inter)).sum()


# =========================================================================== combined
def _dice_probs(logits, target, smooth=1.0, softmax=True):
    p = torch.softmax(logits, dim=1) if softmax else logits
    onehot = _onehot(logits, target)
    return 1 - (2 * (p * onehot).sum() + smooth) / (p.sum() + onehot.sum() + smooth)


@wrong("combined", "α 的位置反了", why="(1 - alpha) CE + alpha Dice")
def combined_alpha_swapped(logits, target, alpha=0.5):
    return (1 - alpha) * _nll(logits, target).mean() + alpha * _dice_probs(logits, target)


@wrong("combined", "忘了对 logits 做 softmax", why="Dice part on raw logits")
def combined_dice_no_softmax(logits, target, alpha=0.5):
    return alpha * _nll(logits, target).mean() + (1 - alpha) * _dice_probs(logits, target, softmax=False)


@wrong("combined", "没有按 α 加权", why="CE + Dice, no weighting")
def combined_unweighted(logits, target, alpha=0.5):
    return _nll(logits, target).mean() + _dice_probs(logits, target)


@wrong("combined", ONE_HOT, why="the seed's bug: class indices fed to a Dice that needs one-hot")
def combined_seed_indices(logits, target, alpha=0.5):
    ce = _nll(logits, target).mean()
    p = torch.softmax(logits, dim=1)
    t = target.to(p.dtype)
    dice = 1 - (2 * (p * t).sum() + 1.0) / (p.sum() + t.sum() + 1.0)
    return alpha * ce + (1 - alpha) * dice


# =========================================================================== robust_fit
def _gd_line(x, y, loss_fn, steps=300, lr=0.1):
    w = torch.zeros((), dtype=x.dtype, device=x.device, requires_grad=True)
    b = torch.zeros((), dtype=x.dtype, device=x.device, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(w * x + b, y).backward()
        opt.step()
    return w.item(), b.item()


@wrong("robust_fit", "离群点", why="fits with MSE: the outliers pull the slope")
def fit_line_mse(x, y):
    return _gd_line(x, y, lambda p, t: ((p - t) ** 2).mean())


@wrong("robust_fit", "离群点", why="closed-form least squares")
def fit_line_lstsq(x, y):
    a = torch.stack([x, torch.ones_like(x)], dim=1)
    sol = torch.linalg.lstsq(a.double().cpu(), y.double().cpu().unsqueeze(1)).solution
    return float(sol[0]), float(sol[1])


@wrong("robust_fit", "应返回 (w, b)", why="returns only the slope")
def fit_line_slope_only(x, y):
    w, b = _gd_line(x, y, lambda p, t: F.huber_loss(p, t))
    return w


@wrong("robust_fit", "离群点", why="Huber loss but far too few steps")
def fit_line_too_few_steps(x, y):
    return _gd_line(x, y, lambda p, t: F.huber_loss(p, t), steps=5)


# =========================================================================== imbalanced_recall
def _train_linear(x, y, loss_fn, steps=200, lr=0.05):
    torch.manual_seed(0)
    model = nn.Linear(x.shape[1], 2).to(x.device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    return model


@wrong("imbalanced_recall", "少数类召回率", why="plain cross-entropy ignores the minority class")
def train_plain_ce(x, y):
    return _train_linear(x, y, F.cross_entropy)


@wrong("imbalanced_recall", "减小权重", why="minority weight far too large")
def train_overweighted(x, y):
    weight = torch.tensor([1.0, 1000.0], device=x.device)
    return _train_linear(x, y, lambda out, t: F.cross_entropy(out, t, weight=weight))


@wrong("imbalanced_recall", "应返回训练好的模型", why="returns the training predictions, not the model")
def train_returns_predictions(x, y):
    counts = torch.bincount(y, minlength=2).float()
    weight = (counts.sum() / (2 * counts)).to(x.device)
    model = _train_linear(x, y, lambda out, t: F.cross_entropy(out, t, weight=weight))
    with torch.no_grad():
        return model(x).argmax(dim=1)


@wrong("imbalanced_recall", "(N, 2) 的 logits", why="a one-logit model")
def train_one_logit(x, y):
    model = nn.Linear(x.shape[1], 1).to(x.device)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    pos_weight = ((y == 0).sum() / (y == 1).sum()).float().to(x.device)
    for _ in range(200):
        opt.zero_grad()
        F.binary_cross_entropy_with_logits(model(x).squeeze(1), y.float(), pos_weight=pos_weight).backward()
        opt.step()
    return model


# =========================================================================== mae_api
@wrong("mae_api", "mae_loss(pred, target)", why="the seed's snippet verbatim: calls the MSE loss")
def mae_api_seed(pred, target):
    mae_loss = nn.L1Loss()  # noqa: F841 (created, never used: the seed's bug)
    mse_loss = nn.MSELoss()
    loss = mse_loss(pred, target)
    return loss


@wrong("mae_api", "要求使用", why="hand-written MAE: the exercise asks for nn.L1Loss")
def mae_api_by_hand(pred, target):
    return (pred - target).abs().mean()


@wrong("mae_api", "原教程", why="hand-written MSE, no nn.L1Loss")
def mae_api_squared_by_hand(pred, target):
    return ((pred - target) ** 2).mean()


@wrong("mae_api", WRONG_VALUE, why="nn.L1Loss(reduction='sum')")
def mae_api_sum(pred, target):
    mae_loss = nn.L1Loss(reduction="sum")
    return mae_loss(pred, target)


@wrong("mae_api", RESHAPE, why=".view(-1) before the loss")
def mae_api_view(pred, target):
    mae_loss = nn.L1Loss()
    return mae_loss(pred.view(-1), target.view(-1))


# =========================================================================== focal_module
@wrong("focal_module", PARAMETER, name="FocalLoss-alpha-parameter", why="alpha stored as an nn.Parameter")
class FocalLossParam(nn.Module):
    def __init__(self, alpha=1, gamma=2):
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))
        self.gamma = gamma

    def forward(self, inputs, targets):
        ce = F.cross_entropy(inputs, targets, reduction="none")
        return (self.alpha * (1 - torch.exp(-ce)) ** self.gamma * ce).mean()


@wrong("focal_module", "p_t^γ", name="FocalLoss-pt-gamma", why="p_t^gamma")
class FocalLossPtGamma(nn.Module):
    def __init__(self, alpha=1, gamma=2):
        super().__init__()
        self.alpha, self.gamma = alpha, gamma

    def forward(self, inputs, targets):
        ce = F.cross_entropy(inputs, targets, reduction="none")
        return (self.alpha * torch.exp(-ce) ** self.gamma * ce).mean()


@wrong("focal_module", UNSTABLE, name="FocalLoss-naive-softmax", why="log of a naive softmax")
class FocalLossNaive(nn.Module):
    def __init__(self, alpha=1, gamma=2):
        super().__init__()
        self.alpha, self.gamma = alpha, gamma

    def forward(self, inputs, targets):
        p = torch.exp(inputs) / torch.exp(inputs).sum(dim=1, keepdim=True)
        p_t = p.gather(1, targets.unsqueeze(1)).squeeze(1)
        return (-self.alpha * (1 - p_t) ** self.gamma * torch.log(p_t)).mean()


@wrong("focal_module", "super().__init__()", name="FocalLoss-no-super-init", why="forgets super().__init__()")
class FocalLossNoSuper(nn.Module):
    def __init__(self, alpha=1, gamma=2):
        self.alpha, self.gamma = alpha, gamma

    def forward(self, inputs, targets):
        ce = F.cross_entropy(inputs, targets, reduction="none")
        return (self.alpha * (1 - torch.exp(-ce)) ** self.gamma * ce).mean()


# =========================================================================== dice_module
@wrong("dice_module", "忘了对 logits 做 softmax", name="DiceLoss-no-softmax", why="Dice on raw logits")
class DiceLossNoSoftmax(nn.Module):
    def __init__(self, smooth=1.0):
        super().__init__()
        self.smooth = smooth

    def forward(self, inputs, targets):
        onehot = _onehot(inputs, targets)
        inter = (inputs * onehot).sum()
        return 1 - (2 * inter + self.smooth) / (inputs.sum() + onehot.sum() + self.smooth)


@wrong("dice_module", RESHAPE, name="DiceLoss-seed-view", why="the seed's .view(-1), on a permuted one-hot")
class DiceLossView(nn.Module):
    def __init__(self, smooth=1.0):
        super().__init__()
        self.smooth = smooth

    def forward(self, inputs, targets):
        inputs = F.softmax(inputs, dim=1)
        onehot = F.one_hot(targets, inputs.shape[1])
        onehot = onehot.permute(0, onehot.dim() - 1, *range(1, onehot.dim() - 1)).to(inputs.dtype)
        inputs_flat = inputs.view(-1)
        targets_flat = onehot.view(-1)
        inter = (inputs_flat * targets_flat).sum()
        return 1 - (2 * inter + self.smooth) / (inputs_flat.sum() + targets_flat.sum() + self.smooth)


@wrong("dice_module", ONE_HOT, name="DiceLoss-seed-indices", why="the seed's DiceLoss: class indices, no one-hot")
class DiceLossIndices(nn.Module):
    def __init__(self, smooth=1.0):
        super().__init__()
        self.smooth = smooth

    def forward(self, inputs, targets):
        inputs = F.softmax(inputs, dim=1)
        inputs_flat = inputs.reshape(-1)
        targets_flat = targets.reshape(-1)
        inter = (inputs_flat * targets_flat).sum()
        return 1 - (2 * inter + self.smooth) / (inputs_flat.sum() + targets_flat.sum() + self.smooth)


@wrong("dice_module", PARAMETER, name="DiceLoss-smooth-parameter", why="smooth as an nn.Parameter")
class DiceLossParam(nn.Module):
    def __init__(self, smooth=1.0):
        super().__init__()
        self.smooth = nn.Parameter(torch.tensor(float(smooth)))

    def forward(self, inputs, targets):
        p = F.softmax(inputs, dim=1)
        onehot = _onehot(inputs, targets)
        return 1 - (2 * (p * onehot).sum() + self.smooth) / (p.sum() + onehot.sum() + self.smooth)


# =========================================================================== combined_module
class _DiceOK(nn.Module):
    def forward(self, inputs, targets):
        p = F.softmax(inputs, dim=1)
        onehot = _onehot(inputs, targets)
        return 1 - (2 * (p * onehot).sum() + 1.0) / (p.sum() + onehot.sum() + 1.0)


@wrong("combined_module", "α 的位置反了", name="CombinedLoss-alpha-swapped", why="alpha on the Dice part")
class CombinedLossSwapped(nn.Module):
    def __init__(self, alpha=0.5):
        super().__init__()
        self.alpha = alpha
        self.ce_loss = nn.CrossEntropyLoss()
        self.dice_loss = _DiceOK()

    def forward(self, inputs, targets):
        return (1 - self.alpha) * self.ce_loss(inputs, targets) + self.alpha * self.dice_loss(inputs, targets)


class _SeedDice(nn.Module):
    def forward(self, inputs, targets, smooth=1):
        inputs = F.softmax(inputs, dim=1)
        inputs_flat = inputs.view(-1)
        targets_flat = targets.view(-1)
        intersection = (inputs_flat * targets_flat).sum()
        return 1 - (2. * intersection + smooth) / (inputs_flat.sum() + targets_flat.sum() + smooth)


@wrong("combined_module", ONE_HOT, name="CombinedLoss-seed", why="the seed's CombinedLoss verbatim")
class CombinedLossSeed(nn.Module):
    def __init__(self, alpha=0.5):
        super().__init__()
        self.alpha = alpha
        self.ce_loss = nn.CrossEntropyLoss()
        self.dice_loss = _SeedDice()

    def forward(self, inputs, targets):
        ce = self.ce_loss(inputs, targets)
        dice = self.dice_loss(inputs, targets)
        return self.alpha * ce + (1 - self.alpha) * dice


@wrong("combined_module", PARAMETER, name="CombinedLoss-alpha-parameter", why="alpha as an nn.Parameter")
class CombinedLossParam(nn.Module):
    def __init__(self, alpha=0.5):
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))
        self.dice_loss = _DiceOK()

    def forward(self, inputs, targets):
        return self.alpha * F.cross_entropy(inputs, targets) + (1 - self.alpha) * self.dice_loss(inputs, targets)


@wrong("combined_module", "super().__init__()", name="CombinedLoss-no-super-init",
       why="forgets super().__init__(): assigning a submodule raises")
class CombinedLossNoSuper(nn.Module):
    def __init__(self, alpha=0.5):
        self.alpha = alpha
        self.ce_loss = nn.CrossEntropyLoss()
        self.dice_loss = _DiceOK()

    def forward(self, inputs, targets):
        return self.alpha * self.ce_loss(inputs, targets) + (1 - self.alpha) * self.dice_loss(inputs, targets)


# =========================================================================== label_smoothing_module
@wrong("label_smoothing_module", "K − 1", name="LabelSmoothing-k-minus-1", why="eps over the K - 1 other classes")
class LabelSmoothingKMinus1(nn.Module):
    def __init__(self, smoothing=0.1):
        super().__init__()
        self.smoothing = smoothing

    def forward(self, pred, target):
        k = pred.shape[-1]
        log_prob = F.log_softmax(pred, dim=-1)
        true_dist = torch.full_like(log_prob, self.smoothing / (k - 1))
        true_dist.scatter_(1, target.unsqueeze(1), 1 - self.smoothing)
        return torch.mean(torch.sum(-true_dist * log_prob, dim=-1))


@wrong("label_smoothing_module", FORBIDDEN, name="LabelSmoothing-builtin", why="F.cross_entropy(label_smoothing=)")
class LabelSmoothingBuiltin(nn.Module):
    def __init__(self, smoothing=0.1):
        super().__init__()
        self.smoothing = smoothing

    def forward(self, pred, target):
        return F.cross_entropy(pred, target, label_smoothing=self.smoothing)


@wrong("label_smoothing_module", PARAMETER, name="LabelSmoothing-parameter", why="smoothing as an nn.Parameter")
class LabelSmoothingParam(nn.Module):
    def __init__(self, smoothing=0.1):
        super().__init__()
        self.smoothing = nn.Parameter(torch.tensor(float(smoothing)))

    def forward(self, pred, target):
        log_prob = F.log_softmax(pred, dim=-1)
        nll = -log_prob.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        return ((1 - self.smoothing) * nll - self.smoothing * log_prob.mean(dim=-1)).mean()


@wrong("label_smoothing_module", UNSTABLE, name="LabelSmoothing-naive-softmax", why="log of a naive softmax")
class LabelSmoothingNaive(nn.Module):
    def __init__(self, smoothing=0.1):
        super().__init__()
        self.smoothing = smoothing

    def forward(self, pred, target):
        log_prob = _log_softmax_naive(pred)
        nll = -log_prob.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        return ((1 - self.smoothing) * nll - self.smoothing * log_prob.mean(dim=-1)).mean()


# =========================================================================== weighted_ce_module
@wrong("weighted_ce_module", PARAMETER, name="WeightedCE-parameter", why="class weights as an nn.Parameter")
class WeightedCEParam(nn.Module):
    def __init__(self, class_weights):
        super().__init__()
        self.class_weights = nn.Parameter(torch.as_tensor(class_weights, dtype=torch.float32))

    def forward(self, logits, target):
        w = self.class_weights.to(logits.dtype)[target]
        return (w * _nll(logits, target)).sum() / w.sum()


@wrong("weighted_ce_module", "权重之和", name="WeightedCE-over-n", why="weighted sum averaged over N")
class WeightedCEOverN(nn.Module):
    def __init__(self, class_weights):
        super().__init__()
        self.register_buffer("class_weights", torch.as_tensor(class_weights, dtype=torch.float32))

    def forward(self, logits, target):
        w = self.class_weights.to(logits.device, logits.dtype)[target]
        return (w * _nll(logits, target)).mean()


@wrong("weighted_ce_module", "数据类型", name="WeightedCE-float32-weights", hidden=True,
       why="weights left in float32: F.cross_entropy refuses float64 logits (hidden float64 cases)")
class WeightedCEFloat32(nn.Module):
    def __init__(self, class_weights):
        super().__init__()
        self.register_buffer("class_weights", torch.as_tensor(class_weights, dtype=torch.float32))

    def forward(self, logits, target):
        return F.cross_entropy(logits, target, weight=self.class_weights.to(logits.device))


@wrong("weighted_ce_module", WRONG_VALUE, name="WeightedCE-ignores-weights", why="weights ignored")
class WeightedCEIgnored(nn.Module):
    def __init__(self, class_weights):
        super().__init__()
        self.register_buffer("class_weights", torch.as_tensor(class_weights, dtype=torch.float32))

    def forward(self, logits, target):
        return F.cross_entropy(logits, target)


class WeightedCEStaysOnCPU(nn.Module):
    """Wrong only on a GPU: the weights are a plain attribute created on the CPU, so
    .to(device) does not move them and indexing them with CUDA targets fails. On the
    CPU it is correct, and must get full marks there."""

    def __init__(self, class_weights):
        super().__init__()
        self.class_weights = torch.as_tensor(class_weights, dtype=torch.float32)

    def forward(self, logits, target):
        w = self.class_weights[target].to(logits.dtype)
        return (w * _nll(logits, target)).sum() / w.sum()


PASS_ON_CPU.append(("weighted_ce_module", WeightedCEStaysOnCPU))
