"""Reference implementations: what every student implementation is compared against.

Where PyTorch has the loss, the reference *is* PyTorch's (torch.nn.functional), so the
course teaches exactly what students will later call. Where it does not, the reference
is written out from the formula in the book and tested against hand-computed values.

Student code may not call these: they raise a ReferenceUsed error when called from
inside a check (see lossgrader.guards.student_code).
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from .guards import in_student_code


class ReferenceUsed(RuntimeError):
    """Student code called one of lossgrader's reference implementations."""


def _reference(fn):
    @functools.wraps(fn)
    def guarded(*args, **kwargs):
        if in_student_code():
            raise ReferenceUsed(fn.__name__)
        return fn(*args, **kwargs)
    guarded.__wrapped_reference__ = fn
    return guarded


# ------------------------------------------------------------------ regression
@_reference
def mse_loss(pred, target):
    r"""$$\text{MSE} = \frac{1}{n} \sum_{i=1}^{n} (y_i - \hat{y}_i)^2$$ over all n elements (pred = ŷ)."""
    return F.mse_loss(pred, target)


@_reference
def mse_grad(pred, target):
    r"""$$\frac{\partial \text{MSE}}{\partial \hat{y}_i} = \frac{2}{n}(\hat{y}_i - y_i)$$ (the seed's −2(y − ŷ) without 1/n is errata #1)."""
    return 2 * (pred - target) / pred.numel()


@_reference
def mae_loss(pred, target):
    r"""$$\text{MAE} = \frac{1}{n} \sum_{i=1}^{n} |y_i - \hat{y}_i|$$"""
    return F.l1_loss(pred, target)


@_reference
def mae_grad(pred, target):
    r"""$$\frac{\partial \text{MAE}}{\partial \hat{y}_i} = \frac{1}{n}\operatorname{sign}(\hat{y}_i - y_i)$$ (0 where ŷᵢ = yᵢ; any value in [−1/n, 1/n] is a valid subgradient there)."""
    return torch.sign(pred - target) / pred.numel()


@_reference
def huber_loss(pred, target, delta=1.0):
    r"""$$L_\delta(y, \hat{y}) = \begin{cases} 0.5(y - \hat{y})^2 & |y - \hat{y}| \leq \delta \\ \delta|y - \hat{y}| - 0.5\delta^2 & |y - \hat{y}| > \delta \end{cases}$$ averaged over the elements."""
    return F.huber_loss(pred, target, delta=delta)


@_reference
def smooth_l1_loss(pred, target, beta=1.0):
    r"""$$\text{SmoothL1}_\beta(x) = \begin{cases} 0.5x^2/\beta & |x| < \beta \\ |x| - 0.5\beta & |x| \geq \beta \end{cases},\quad x = y - \hat{y}$$ averaged (β = 0: |x|); SmoothL1_β = L_β/β."""
    return F.smooth_l1_loss(pred, target, beta=beta)


# ------------------------------------------------------------------ classification
@_reference
def binary_cross_entropy(probs, target):
    r"""$$\text{BCE} = -\frac{1}{n}\sum_i \big(y_i \log \hat{y}_i + (1-y_i)\log(1-\hat{y}_i)\big)$$ with each log clamped at −100 (PyTorch), so p = 0 or 1 gives a finite value."""
    return F.binary_cross_entropy(probs, target)


@_reference
def bce_with_logits(logits, target):
    r"""$$\frac{1}{n}\sum_i \max(x_i, 0) - x_i y_i + \log(1 + e^{-|x_i|})$$ = BCE(σ(x), y), computed without overflow."""
    return F.binary_cross_entropy_with_logits(logits, target)


@_reference
def bce_with_logits_grad(logits, target):
    r"""$$\frac{\partial}{\partial x_i} = \frac{1}{n}(\sigma(x_i) - y_i)$$"""
    return (torch.sigmoid(logits) - target) / logits.numel()


@_reference
def cross_entropy(logits, target):
    r"""$$\text{CE} = -\frac{1}{N}\sum_{i=1}^{N} \log \operatorname{softmax}(x_i)_{y_i}$$ (the seed's $-\sum_i y_i \log \hat{y}_i$ with one-hot y, averaged over the N samples)."""
    return F.cross_entropy(logits, target)


@_reference
def cross_entropy_grad(logits, target):
    r"""$$\frac{\partial \text{CE}}{\partial x_{ic}} = \frac{1}{N}\big(\operatorname{softmax}(x_i)_c - [c = y_i]\big)$$"""
    onehot = F.one_hot(target, logits.shape[1]).to(logits.dtype)
    return (torch.softmax(logits, dim=1) - onehot) / logits.shape[0]


@_reference
def weighted_cross_entropy(logits, target, weight):
    r"""$$\frac{\sum_i w_{y_i}\,(-\log \operatorname{softmax}(x_i)_{y_i})}{\sum_i w_{y_i}}$$ (PyTorch's weight=: divided by the summed weights of the targets, not by N)."""
    return F.cross_entropy(logits, target, weight=weight)


@_reference
def label_smoothing_cross_entropy(logits, target, smoothing=0.1):
    r"""$$-\frac{1}{N}\sum_i \sum_{k=1}^{K} y^{\text{smooth}}_{ik} \log \operatorname{softmax}(x_i)_k,\quad y_{\text{smooth}} = (1-\varepsilon) \cdot y + \frac{\varepsilon}{K}$$"""
    return F.cross_entropy(logits, target, label_smoothing=smoothing)


@_reference
def focal_loss(logits, target, alpha=1.0, gamma=2.0):
    r"""$$\text{FL} = \frac{1}{N}\sum_i -\alpha(1-p_{t,i})^\gamma \log p_{t,i},\quad p_{t,i} = \operatorname{softmax}(x_i)_{y_i}$$"""
    ce = F.cross_entropy(logits, target, reduction="none")
    p_t = torch.exp(-ce)
    return (alpha * (1 - p_t) ** gamma * ce).mean()


@_reference
def sigmoid_focal_loss(logits, target, alpha=0.25, gamma=2.0):
    r"""$$\frac{1}{n}\sum_i \alpha_{t,i}(1-p_{t,i})^\gamma\,\text{BCE}(\sigma(x_i), y_i),\quad p_t = p\,y + (1-p)(1-y),\ \alpha_t = \alpha y + (1-\alpha)(1-y)$$ with p = σ(x); α < 0 means no α_t (torchvision.ops.sigmoid_focal_loss, reduction="mean")."""
    # torchvision.ops.sigmoid_focal_loss, reduction="mean"
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return loss.mean()


# ------------------------------------------------------------------ other
@_reference
def contrastive_loss(x1, x2, label, margin=1.0):
    r"""$$L = \frac{1}{N}\sum_i (1-y_i) \cdot d_i^2 + y_i \cdot \max(0, \text{margin} - d_i)^2,\quad d_i = \lVert x_{1,i} - x_{2,i} \rVert_2$$ (y = 0: similar pair, y = 1: dissimilar)."""
    d = torch.linalg.vector_norm(x1 - x2, dim=1)
    loss = (1 - label) * d ** 2 + label * torch.clamp(margin - d, min=0) ** 2
    return loss.mean()


@_reference
def triplet_loss(anchor, positive, negative, margin=1.0):
    r"""$$L = \frac{1}{N}\sum_i \max(0, d(a_i, p_i) - d(a_i, n_i) + \text{margin})$$ with the Euclidean distance (F.triplet_margin_loss, whose pairwise distance adds eps = 1e-6)."""
    return F.triplet_margin_loss(anchor, positive, negative, margin=margin, p=2)


def _soft_overlap(logits, target):
    probs = torch.softmax(logits, dim=1)
    onehot = F.one_hot(target, logits.shape[1]).movedim(-1, 1).to(probs.dtype)
    return (probs * onehot).sum(), probs.sum(), onehot.sum()


@_reference
def dice_loss(logits, target, smooth=1.0):
    r"""$$\text{Dice Loss} = 1 - \frac{2\sum p\,t + s}{\sum p + \sum t + s}$$ with p = softmax over the class dimension, t the one-hot target, sums over the whole batch (all samples, classes and positions)."""
    inter, p_sum, t_sum = _soft_overlap(logits, target)
    return 1 - (2 * inter + smooth) / (p_sum + t_sum + smooth)


@_reference
def iou_loss(logits, target, smooth=1.0):
    r"""$$\text{IoU Loss} = 1 - \frac{I + s}{\sum p + \sum t - I + s},\quad I = \sum p\,t$$ (soft IoU over the whole batch, p = softmax, t one-hot)."""
    inter, p_sum, t_sum = _soft_overlap(logits, target)
    return 1 - (inter + smooth) / (p_sum + t_sum - inter + smooth)


@_reference
def box_iou_loss(pred_boxes, target_boxes):
    r"""$$\frac{1}{N}\sum_i 1 - \frac{|B_i \cap B^{gt}_i|}{|B_i \cup B^{gt}_i|}$$ for (x1, y1, x2, y2) boxes; the intersection's width and height are clamped at 0."""
    lt = torch.maximum(pred_boxes[:, :2], target_boxes[:, :2])
    rb = torch.minimum(pred_boxes[:, 2:], target_boxes[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    area_p = (pred_boxes[:, 2] - pred_boxes[:, 0]) * (pred_boxes[:, 3] - pred_boxes[:, 1])
    area_t = (target_boxes[:, 2] - target_boxes[:, 0]) * (target_boxes[:, 3] - target_boxes[:, 1])
    return (1 - inter / (area_p + area_t - inter)).mean()


@_reference
def combined_loss(logits, target, alpha=0.5):
    r"""$$\alpha \cdot \text{CE} + (1 - \alpha) \cdot \text{Dice Loss}$$ (Dice with s = 1)."""
    return alpha * F.cross_entropy(logits, target) + (1 - alpha) * dice_loss.__wrapped_reference__(logits, target, 1.0)


# ------------------------------------------------------------------ gradients
def _finite_differences(f, x, eps, forward=False):
    """Central differences (f(x+ε) − f(x−ε))/(2ε) per element, or forward differences
    (f(x+ε) − f(x))/ε (a typical mistake the grader recognises)."""
    work = x.detach().clone().contiguous()
    flat = work.view(-1)
    grad = torch.empty_like(flat)
    base = float(f(work)) if forward else None
    for i in range(flat.numel()):
        old = flat[i].item()
        flat[i] = old + eps
        plus = float(f(work))
        if forward:
            grad[i] = (plus - base) / eps
        else:
            flat[i] = old - eps
            grad[i] = (plus - float(f(work))) / (2 * eps)
        flat[i] = old
    return grad.view(x.shape)


@_reference
def numerical_gradient(f, x, eps=1e-6):
    r"""$$\frac{\partial f}{\partial x_i} \approx \frac{f(x + \varepsilon e_i) - f(x - \varepsilon e_i)}{2\varepsilon}$$ per element (central differences)."""
    return _finite_differences(f, x, eps)
