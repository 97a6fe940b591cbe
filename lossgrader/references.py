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
    return F.mse_loss(pred, target)


@_reference
def mse_grad(pred, target):
    return 2 * (pred - target) / pred.numel()


@_reference
def mae_loss(pred, target):
    return F.l1_loss(pred, target)


@_reference
def mae_grad(pred, target):
    return torch.sign(pred - target) / pred.numel()


@_reference
def huber_loss(pred, target, delta=1.0):
    return F.huber_loss(pred, target, delta=delta)


@_reference
def smooth_l1_loss(pred, target, beta=1.0):
    return F.smooth_l1_loss(pred, target, beta=beta)


# ------------------------------------------------------------------ classification
@_reference
def binary_cross_entropy(probs, target):
    return F.binary_cross_entropy(probs, target)


@_reference
def bce_with_logits(logits, target):
    return F.binary_cross_entropy_with_logits(logits, target)


@_reference
def bce_with_logits_grad(logits, target):
    return (torch.sigmoid(logits) - target) / logits.numel()


@_reference
def cross_entropy(logits, target):
    return F.cross_entropy(logits, target)


@_reference
def cross_entropy_grad(logits, target):
    onehot = F.one_hot(target, logits.shape[1]).to(logits.dtype)
    return (torch.softmax(logits, dim=1) - onehot) / logits.shape[0]


@_reference
def weighted_cross_entropy(logits, target, weight):
    return F.cross_entropy(logits, target, weight=weight)


@_reference
def label_smoothing_cross_entropy(logits, target, smoothing=0.1):
    return F.cross_entropy(logits, target, label_smoothing=smoothing)


@_reference
def focal_loss(logits, target, alpha=1.0, gamma=2.0):
    ce = F.cross_entropy(logits, target, reduction="none")
    p_t = torch.exp(-ce)
    return (alpha * (1 - p_t) ** gamma * ce).mean()


@_reference
def sigmoid_focal_loss(logits, target, alpha=0.25, gamma=2.0):
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
    d = torch.linalg.vector_norm(x1 - x2, dim=1)
    loss = (1 - label) * d ** 2 + label * torch.clamp(margin - d, min=0) ** 2
    return loss.mean()


@_reference
def triplet_loss(anchor, positive, negative, margin=1.0):
    return F.triplet_margin_loss(anchor, positive, negative, margin=margin, p=2)


def _soft_overlap(logits, target):
    probs = torch.softmax(logits, dim=1)
    onehot = F.one_hot(target, logits.shape[1]).movedim(-1, 1).to(probs.dtype)
    return (probs * onehot).sum(), probs.sum(), onehot.sum()


@_reference
def dice_loss(logits, target, smooth=1.0):
    inter, p_sum, t_sum = _soft_overlap(logits, target)
    return 1 - (2 * inter + smooth) / (p_sum + t_sum + smooth)


@_reference
def iou_loss(logits, target, smooth=1.0):
    inter, p_sum, t_sum = _soft_overlap(logits, target)
    return 1 - (inter + smooth) / (p_sum + t_sum - inter + smooth)


@_reference
def box_iou_loss(pred_boxes, target_boxes):
    lt = torch.maximum(pred_boxes[:, :2], target_boxes[:, :2])
    rb = torch.minimum(pred_boxes[:, 2:], target_boxes[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    area_p = (pred_boxes[:, 2] - pred_boxes[:, 0]) * (pred_boxes[:, 3] - pred_boxes[:, 1])
    area_t = (target_boxes[:, 2] - target_boxes[:, 0]) * (target_boxes[:, 3] - target_boxes[:, 1])
    return (1 - inter / (area_p + area_t - inter)).mean()


@_reference
def combined_loss(logits, target, alpha=0.5):
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
    return _finite_differences(f, x, eps)
