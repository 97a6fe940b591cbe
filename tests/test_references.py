"""Tests of lossgrader's reference implementations and of the exercise registry.

Every student's grade is a comparison against ``lossgrader.references``, so the
references are checked here three ways:

* against an independent formula written out in this file (where the reference is
  itself a torch.nn.functional call, comparing it with F would prove nothing),
* against small examples computed by hand,
* against mathematical properties (hypothesis): non-negativity, zero at a perfect
  prediction, the limits and special cases that relate one loss to another.

The registry tests pin what notebooks and the book rely on (ids, function names,
signatures, points, assignments) and that case generation is deterministic, with the
hidden cases extending the visible ones.
"""
from __future__ import annotations

import dataclasses

import inspect
import math
import re

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import lossgrader
import lossgrader.references as ref
from lossgrader.cases import Case, Rand, SubgradientRange
from lossgrader.exercises import EXERCISES
from lossgrader.guards import student_code

D = torch.float64
PROPS = settings(deadline=None, max_examples=25)
FEW = settings(deadline=None, max_examples=12)


def t64(values):
    return torch.tensor(values, dtype=D)


def close(actual, expected, rtol=1e-10, atol=1e-12):
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), rtol=rtol, atol=atol)


# =========================================================================== strategies
_finite = st.floats(-20.0, 20.0, allow_nan=False, allow_infinity=False, width=64)


@st.composite
def regression_pair(draw, max_n=12, lo=-20.0, hi=20.0):
    """(pred, target), float64, the same shape (1-d or 2-d)."""
    shape = draw(st.sampled_from([(draw(st.integers(1, max_n)),), (draw(st.integers(1, 4)), draw(st.integers(1, 4)))]))
    n = math.prod(shape)
    values = st.floats(lo, hi, allow_nan=False, allow_infinity=False, width=64)
    pred = draw(st.lists(values, min_size=n, max_size=n))
    target = draw(st.lists(values, min_size=n, max_size=n))
    return t64(pred).reshape(shape), t64(target).reshape(shape)


@st.composite
def class_batch(draw, max_n=6, max_c=5, scale=10.0):
    """(logits (N, C) float64, target (N,) int64)."""
    n = draw(st.integers(1, max_n))
    c = draw(st.integers(2, max_c))
    values = st.floats(-scale, scale, allow_nan=False, allow_infinity=False, width=64)
    logits = t64(draw(st.lists(values, min_size=n * c, max_size=n * c))).reshape(n, c)
    target = torch.tensor(draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)), dtype=torch.int64)
    return logits, target


@st.composite
def segmentation_batch(draw):
    """(logits (N, C, *) float64, target (N, *) int64) with 0, 1 or 2 spatial dims."""
    n = draw(st.integers(1, 3))
    c = draw(st.integers(2, 4))
    spatial = draw(st.sampled_from([(), (draw(st.integers(1, 4)),), (draw(st.integers(1, 3)), draw(st.integers(1, 3)))]))
    size = n * c * math.prod(spatial)
    logits = t64(draw(st.lists(st.floats(-8, 8, allow_nan=False, width=64), min_size=size, max_size=size)))
    m = n * math.prod(spatial)
    target = torch.tensor(draw(st.lists(st.integers(0, c - 1), min_size=m, max_size=m)), dtype=torch.int64)
    return logits.reshape(n, c, *spatial), target.reshape(n, *spatial)


@st.composite
def binary_batch(draw, max_n=10, scale=20.0, soft=False):
    """(logits float64, target in {0, 1} or [0, 1] float64), 1-d."""
    n = draw(st.integers(1, max_n))
    logits = draw(st.lists(st.floats(-scale, scale, allow_nan=False, width=64), min_size=n, max_size=n))
    label = st.floats(0.0, 1.0, width=64) if soft else st.sampled_from([0.0, 1.0])
    return t64(logits), t64(draw(st.lists(label, min_size=n, max_size=n)))


@st.composite
def boxes(draw, n):
    """(n, 4) float64 boxes x1, y1, x2, y2 with positive width and height."""
    rows = []
    for _ in range(n):
        x1, y1 = draw(_finite), draw(_finite)
        w, h = draw(st.floats(0.1, 10.0, width=64)), draw(st.floats(0.1, 10.0, width=64))
        rows.append([x1, y1, x1 + w, y1 + h])
    return t64(rows)


@st.composite
def embeddings(draw, count=2, max_n=5, max_d=4, scale=3.0):
    n = draw(st.integers(1, max_n))
    d = draw(st.integers(1, max_d))
    values = st.floats(-scale, scale, allow_nan=False, width=64)
    return tuple(t64(draw(st.lists(values, min_size=n * d, max_size=n * d))).reshape(n, d) for _ in range(count))


# =========================================================================== independent formulas
def huber_formula(pred, target, delta):
    r = (pred - target).abs()
    return torch.where(r <= delta, 0.5 * r ** 2, delta * (r - 0.5 * delta)).mean()


def smooth_l1_formula(pred, target, beta):
    r = (pred - target).abs()
    return torch.where(r < beta, 0.5 * r ** 2 / beta, r - 0.5 * beta).mean()


def nll_rows(logits, target):
    """-log softmax(logits)[target] per row, written with an explicit log-sum-exp."""
    m = logits.max(dim=1, keepdim=True).values
    log_z = m.squeeze(1) + torch.exp(logits - m).sum(dim=1).log()
    return log_z - logits[torch.arange(logits.shape[0]), target]


def log_probs(logits):
    m = logits.max(dim=1, keepdim=True).values
    return logits - m - torch.exp(logits - m).sum(dim=1, keepdim=True).log()


def onehot_like(logits, target):
    """One-hot of class indices (N, *) laid out like logits (N, C, *), by comparison."""
    classes = torch.arange(logits.shape[1]).view(1, -1, *([1] * (logits.dim() - 2)))
    return (target.unsqueeze(1) == classes).to(logits.dtype)


def dice_formula(logits, target, smooth):
    p = torch.exp(logits - logits.max(dim=1, keepdim=True).values)
    p = p / p.sum(dim=1, keepdim=True)
    t = onehot_like(logits, target)
    return 1 - (2 * (p * t).sum() + smooth) / (p.sum() + t.sum() + smooth)


def iou_formula(logits, target, smooth):
    p = torch.softmax(logits, dim=1)
    t = onehot_like(logits, target)
    inter = (p * t).sum()
    return 1 - (inter + smooth) / (p.sum() + t.sum() - inter + smooth)


def sigmoid_focal_formula(x, y, alpha, gamma):
    """torchvision.ops.sigmoid_focal_loss (reduction="mean"), written with probabilities."""
    p = 1 / (1 + torch.exp(-x))
    ce = -(y * torch.log(p) + (1 - y) * torch.log(1 - p))
    p_t = p * y + (1 - p) * (1 - y)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * y + (1 - alpha) * (1 - y)) * loss
    return loss.mean()


def row_dist(a, b):
    return ((a - b) ** 2).sum(dim=1).sqrt()


# =========================================================================== regression
def test_mse_hand_example():
    # residuals 1, 0, -2 -> (1 + 0 + 4) / 3
    close(ref.mse_loss(t64([1.0, 2.0, 3.0]), t64([0.0, 2.0, 5.0])), 5 / 3)


def test_mae_hand_example():
    close(ref.mae_loss(t64([1.0, 2.0, 3.0]), t64([0.0, 2.0, 5.0])), 1.0)


def test_huber_hand_example():
    # |r| = 0.5 -> 0.5 * 0.25 = 0.125 ; |r| = 2 > delta=1 -> 1 * (2 - 0.5) = 1.5 ; mean = 0.8125
    close(ref.huber_loss(t64([0.5, 2.0]), t64([0.0, 0.0])), 0.8125)
    # delta = 3: |r| = 4 -> 3 * (4 - 1.5) = 7.5 ; |r| = 1 -> 0.5
    close(ref.huber_loss(t64([4.0, -1.0]), t64([0.0, 0.0]), delta=3.0), 4.0)


def test_smooth_l1_hand_example():
    # beta = 2: |r| = 1 -> 0.5 * 1 / 2 = 0.25 ; |r| = 3 -> 3 - 1 = 2 ; mean = 1.125
    close(ref.smooth_l1_loss(t64([1.0, -3.0]), t64([0.0, 0.0]), beta=2.0), 1.125)


@PROPS
@given(regression_pair())
def test_regression_losses_match_formulas(pair):
    pred, target = pair
    close(ref.mse_loss(pred, target), ((pred - target) ** 2).mean())
    close(ref.mae_loss(pred, target), (pred - target).abs().mean())
    for delta in (0.3, 1.0, 2.5):
        close(ref.huber_loss(pred, target, delta=delta), huber_formula(pred, target, delta))
        close(ref.smooth_l1_loss(pred, target, beta=delta), smooth_l1_formula(pred, target, delta))
    # defaults: delta = beta = 1
    close(ref.huber_loss(pred, target), huber_formula(pred, target, 1.0))
    close(ref.smooth_l1_loss(pred, target), smooth_l1_formula(pred, target, 1.0))


@PROPS
@given(regression_pair())
def test_regression_losses_non_negative_and_zero_at_perfect_prediction(pair):
    pred, target = pair
    for loss in (ref.mse_loss, ref.mae_loss, ref.huber_loss, ref.smooth_l1_loss):
        assert float(loss(pred, target)) >= 0.0
        assert float(loss(pred, pred.clone())) == 0.0
        assert loss(pred, target).dim() == 0
    if float((pred - target).abs().max()) > 1e-100:   # smaller residuals underflow when squared
        assert float(ref.mse_loss(pred, target)) > 0.0
        assert float(ref.mae_loss(pred, target)) > 0.0


@PROPS
@given(regression_pair(), st.floats(1.0, 10.0))
def test_huber_is_half_mse_when_delta_covers_every_residual(pair, factor):
    pred, target = pair
    delta = factor * float((pred - target).abs().max()) + 1e-12
    close(ref.huber_loss(pred, target, delta=delta), 0.5 * ref.mse_loss(pred, target))


@PROPS
@given(regression_pair(), st.floats(1e-4, 0.5))
def test_huber_over_delta_tends_to_mae(pair, delta):
    # Huber_d(r)/d = |r| - d/2 for |r| > d and 0.5 r^2/d for |r| <= d, so
    # |Huber_d/d - MAE| <= d/2: Huber_d/d -> MAE as d -> 0
    pred, target = pair
    gap = float((ref.huber_loss(pred, target, delta=delta) / delta - ref.mae_loss(pred, target)).abs())
    assert gap <= delta / 2 + 1e-9


@PROPS
@given(regression_pair(lo=5.0, hi=20.0), st.floats(1e-3, 1.0))
def test_huber_is_shifted_delta_mae_when_every_residual_exceeds_delta(pair, delta):
    pred, target = pair
    target = -target  # pred in [5, 20], target in [-20, -5]: every |r| >= 10 > delta
    close(ref.huber_loss(pred, target, delta=delta), delta * ref.mae_loss(pred, target) - 0.5 * delta ** 2)


@PROPS
@given(regression_pair(), st.floats(0.05, 5.0))
def test_smooth_l1_is_huber_over_beta(pair, beta):
    pred, target = pair
    close(ref.smooth_l1_loss(pred, target, beta=1.0), ref.huber_loss(pred, target, delta=1.0))
    close(ref.smooth_l1_loss(pred, target, beta=beta), ref.huber_loss(pred, target, delta=beta) / beta)


# =========================================================================== classification
def test_bce_hand_example_and_log_clamp():
    # -log 0.5 for both ; p = 0.8, y = 1 -> -log 0.8
    close(ref.binary_cross_entropy(t64([0.5, 0.5]), t64([1.0, 0.0])), math.log(2))
    close(ref.binary_cross_entropy(t64([0.8]), t64([1.0])), -math.log(0.8))
    # log clamped at -100: p = 0 with y = 1 costs 100, p = 1 with y = 1 costs 0
    close(ref.binary_cross_entropy(t64([0.0, 1.0]), t64([1.0, 1.0])), 50.0)


@PROPS
@given(binary_batch(soft=True))
def test_bce_matches_formula(batch):
    x, y = batch
    probs = (1 / (1 + torch.exp(-x))).clamp(1e-6, 1 - 1e-6)
    expected = -(y * torch.log(probs) + (1 - y) * torch.log(1 - probs)).mean()
    close(ref.binary_cross_entropy(probs, y), expected, rtol=1e-9)
    assert float(ref.binary_cross_entropy(probs, y)) >= 0.0


@PROPS
@given(binary_batch(soft=True))
def test_bce_with_logits_matches_stable_formula_and_bce_of_sigmoid(batch):
    x, y = batch
    expected = (x.clamp(min=0) - x * y + torch.log1p(torch.exp(-x.abs()))).mean()
    close(ref.bce_with_logits(x, y), expected, rtol=1e-10)
    close(ref.bce_with_logits(x, y), ref.binary_cross_entropy(torch.sigmoid(x), y), rtol=1e-6, atol=1e-8)


def test_bce_with_logits_is_stable_for_large_float32_logits():
    x = torch.tensor([1000.0, -1000.0, 100.0, -250.0], dtype=torch.float32)
    y = torch.tensor([0.0, 1.0, 1.0, 1.0], dtype=torch.float32)
    # each term is max(x, 0) - x y + log(1 + exp(-|x|)) = 1000, 1000, ~0, 250
    out = ref.bce_with_logits(x, y)
    assert out.dtype == torch.float32
    close(out, 2250.0 / 4, rtol=1e-6)


def test_cross_entropy_hand_example():
    # row 0: logits [0, ln 3], target 1 -> p = 3/4 ; row 1: [0, 0], target 0 -> p = 1/2
    logits = t64([[0.0, math.log(3)], [0.0, 0.0]])
    close(ref.cross_entropy(logits, torch.tensor([1, 0])), (math.log(4 / 3) + math.log(2)) / 2)


def test_cross_entropy_is_stable_for_large_float32_logits():
    logits = torch.tensor([[1000.0, 0.0, -1000.0], [500.0, 500.0, -400.0]], dtype=torch.float32)
    out = ref.cross_entropy(logits, torch.tensor([2, 1]))
    # row 0: 1000 - (-1000) = 2000 ; row 1: log 2
    close(out, (2000.0 + math.log(2)) / 2, rtol=1e-6)


@PROPS
@given(class_batch(scale=30.0))
def test_cross_entropy_matches_log_sum_exp_formula(batch):
    logits, target = batch
    close(ref.cross_entropy(logits, target), nll_rows(logits, target).mean())
    assert float(ref.cross_entropy(logits, target)) >= 0.0


def test_weighted_cross_entropy_hand_example():
    logits = t64([[0.0, math.log(3)], [0.0, 0.0]])
    target = torch.tensor([1, 0])
    weight = t64([1.0, 3.0])
    # weights of the targets: w[1] = 3, w[0] = 1 -> (3 log(4/3) + 1 log 2) / (3 + 1)
    close(ref.weighted_cross_entropy(logits, target, weight), (3 * math.log(4 / 3) + math.log(2)) / 4)


@PROPS
@given(class_batch(), st.data())
def test_weighted_cross_entropy_is_weighted_mean_over_targets_weights(batch, data):
    logits, target = batch
    c = logits.shape[1]
    weight = t64(data.draw(st.lists(st.floats(0.1, 5.0, width=64), min_size=c, max_size=c)))
    w = weight[target]
    close(ref.weighted_cross_entropy(logits, target, weight), (w * nll_rows(logits, target)).sum() / w.sum())
    # uniform weights give the plain cross-entropy whatever their value
    close(ref.weighted_cross_entropy(logits, target, torch.full((c,), 2.5, dtype=D)), ref.cross_entropy(logits, target))


@PROPS
@given(class_batch(), st.floats(0.0, 1.0))
def test_label_smoothing_is_mixture_of_nll_and_uniform(batch, eps):
    logits, target = batch
    expected = ((1 - eps) * nll_rows(logits, target) + eps * (-log_probs(logits)).mean(dim=1)).mean()
    close(ref.label_smoothing_cross_entropy(logits, target, smoothing=eps), expected)
    close(ref.label_smoothing_cross_entropy(logits, target, smoothing=0.0), ref.cross_entropy(logits, target))
    # the default smoothing is 0.1
    close(ref.label_smoothing_cross_entropy(logits, target),
          ((0.9 * nll_rows(logits, target) + 0.1 * (-log_probs(logits)).mean(dim=1))).mean())


def test_focal_hand_example():
    # p_t = 3/4, CE = log(4/3): focal = alpha (1/4)^gamma log(4/3)
    logits = t64([[0.0, math.log(3)]])
    target = torch.tensor([1])
    close(ref.focal_loss(logits, target), math.log(4 / 3) / 16)
    close(ref.focal_loss(logits, target, alpha=0.25, gamma=1.0), 0.25 * 0.25 * math.log(4 / 3))


@PROPS
@given(class_batch(), st.floats(0.05, 2.0), st.floats(0.0, 5.0))
def test_focal_matches_formula_and_reduces_to_ce(batch, alpha, gamma):
    logits, target = batch
    ce = nll_rows(logits, target)
    p_t = torch.exp(log_probs(logits))[torch.arange(logits.shape[0]), target]
    close(ref.focal_loss(logits, target, alpha=alpha, gamma=gamma), (alpha * (1 - p_t) ** gamma * ce).mean(),
          rtol=1e-9, atol=1e-12)
    close(ref.focal_loss(logits, target, alpha=1.0, gamma=0.0), ref.cross_entropy(logits, target))
    focal = float(ref.focal_loss(logits, target, alpha=alpha, gamma=gamma))
    assert 0.0 <= focal <= alpha * float(ce.mean()) + 1e-12


def test_sigmoid_focal_hand_example():
    # x = 0: p = 1/2, CE = log 2, (1 - p_t)^2 = 1/4 ; alpha_t = 0.25 for y = 1, 0.75 for y = 0
    x = t64([0.0, 0.0])
    y = t64([1.0, 0.0])
    close(ref.sigmoid_focal_loss(x, y), (0.25 + 0.75) / 2 * 0.25 * math.log(2))
    close(ref.sigmoid_focal_loss(x, y, alpha=-1.0), 0.25 * math.log(2))


@PROPS
@given(binary_batch(), st.floats(0.0, 1.0), st.floats(0.0, 4.0))
def test_sigmoid_focal_matches_torchvision_formula(batch, alpha, gamma):
    x, y = batch
    close(ref.sigmoid_focal_loss(x, y, alpha=alpha, gamma=gamma), sigmoid_focal_formula(x, y, alpha, gamma),
          rtol=1e-7, atol=1e-12)
    close(ref.sigmoid_focal_loss(x, y, alpha=-1.0, gamma=gamma), sigmoid_focal_formula(x, y, -1.0, gamma),
          rtol=1e-7, atol=1e-12)


@PROPS
@given(binary_batch(soft=True), st.floats(-5.0, -1e-3))
def test_sigmoid_focal_without_alpha_and_gamma_is_bce_with_logits(batch, alpha):
    x, y = batch
    close(ref.sigmoid_focal_loss(x, y, alpha=alpha, gamma=0.0), ref.bce_with_logits(x, y))


# =========================================================================== other losses
def test_contrastive_hand_example_similar_is_label_zero():
    x1 = t64([[0.0, 0.0], [0.0, 0.0]])
    x2 = t64([[3.0, 4.0], [0.3, 0.4]])
    # row 0 similar (y = 0), d = 5 -> 25 ; row 1 dissimilar (y = 1), d = 0.5 -> (1 - 0.5)^2
    close(ref.contrastive_loss(x1, x2, t64([0.0, 1.0])), (25 + 0.25) / 2)
    # swapping the labels: similar close pair costs d^2 = 0.25, dissimilar far pair costs 0
    close(ref.contrastive_loss(x1, x2, t64([1.0, 0.0])), (0.0 + 0.25) / 2)
    close(ref.contrastive_loss(x1, x2, t64([1.0, 1.0]), margin=6.0), (1.0 + 5.5 ** 2) / 2)


@PROPS
@given(embeddings(), st.floats(0.1, 3.0))
def test_contrastive_properties(pair, margin):
    x1, x2 = pair
    n = x1.shape[0]
    d = row_dist(x1, x2)
    similar = torch.zeros(n, dtype=D)
    dissimilar = torch.ones(n, dtype=D)
    close(ref.contrastive_loss(x1, x2, similar, margin=margin), (d ** 2).mean(), rtol=1e-9)
    close(ref.contrastive_loss(x1, x2, dissimilar, margin=margin), ((margin - d).clamp(min=0) ** 2).mean(),
          rtol=1e-9, atol=1e-12)
    assert float(ref.contrastive_loss(x1, x2, dissimilar, margin=margin)) >= 0.0
    # a dissimilar pair at least a margin apart costs nothing
    far = x1 + margin * 1.01 * torch.ones_like(x1) / math.sqrt(x1.shape[1])
    assert float(ref.contrastive_loss(x1, far, dissimilar, margin=margin)) == 0.0


def test_triplet_hand_example():
    a = t64([[0.0, 0.0], [0.0, 0.0]])
    p = t64([[1.0, 0.0], [3.0, 4.0]])
    n = t64([[0.0, 3.0], [0.0, 1.0]])
    # row 0: d(a,p)=1, d(a,n)=3 -> max(1 - 3 + 1, 0) = 0 ; row 1: 5 - 1 + 1 = 5
    close(ref.triplet_loss(a, p, n), 2.5, rtol=1e-5)


@PROPS
@given(embeddings(count=3), st.floats(0.01, 3.0))  # torch requires margin > 0
def test_triplet_matches_hinge_formula(triple, margin):
    a, p, n = triple
    expected = (row_dist(a, p) - row_dist(a, n) + margin).clamp(min=0).mean()
    # F.triplet_margin_loss adds eps = 1e-6 inside the distance: compare to that precision
    close(ref.triplet_loss(a, p, n, margin=margin), expected, rtol=1e-5, atol=1e-5)
    assert float(ref.triplet_loss(a, p, n, margin=margin)) >= 0.0


@PROPS
@given(embeddings(count=2), st.floats(0.1, 3.0), st.floats(0.01, 2.0))
def test_triplet_zero_when_negative_is_a_margin_further(pair, margin, extra):
    a, p = pair
    direction = torch.ones_like(a) / math.sqrt(a.shape[1])
    n = a + (row_dist(a, p) + margin + extra).unsqueeze(1) * direction   # d(a, n) = d(a, p) + margin + extra
    assert float(ref.triplet_loss(a, p, n, margin=margin)) == 0.0
    # and the hinge is active when the negative is the positive: loss = margin
    close(ref.triplet_loss(a, p, p.clone(), margin=margin), margin, rtol=1e-6, atol=1e-6)


def test_dice_and_iou_hand_example():
    # probs [1/4, 3/4], target class 1: I = 3/4, sum p = 1, sum t = 1
    logits = t64([[0.0, math.log(3)]])
    target = torch.tensor([1])
    close(ref.dice_loss(logits, target), 1 - (1.5 + 1) / (2 + 1))          # 1/6
    close(ref.iou_loss(logits, target), 1 - (0.75 + 1) / (2 - 0.75 + 1))    # 2/9
    close(ref.dice_loss(logits, target, smooth=0.0), 0.25)
    close(ref.iou_loss(logits, target, smooth=0.0), 1 - 0.75 / 1.25)


def test_dice_one_hot_is_built_over_the_class_dimension():
    # (N, C, H, W) = (1, 2, 1, 2): pixel 0 is class 0, pixel 1 is class 1, logits equal
    logits = torch.zeros(1, 2, 1, 2, dtype=D)
    target = torch.tensor([[[0, 1]]])
    # p = 1/2 everywhere: I = 1, sum p = 2, sum t = 2
    close(ref.dice_loss(logits, target), 1 - 3 / 5)
    close(ref.iou_loss(logits, target), 1 - 2 / 4)


@PROPS
@given(segmentation_batch(), st.sampled_from([0.0, 0.5, 1.0]))
def test_dice_iou_match_formulas_and_are_ordered(batch, smooth):
    logits, target = batch
    dice = ref.dice_loss(logits, target, smooth=smooth)
    iou = ref.iou_loss(logits, target, smooth=smooth)
    close(dice, dice_formula(logits, target, smooth))
    close(iou, iou_formula(logits, target, smooth))
    assert -1e-12 <= float(dice) <= 1.0
    # (2I+s)(U-I+s) - (I+s)(U+s) = I(U-2I) >= 0 with U = sum p + sum t: IoU loss >= Dice loss
    assert float(iou) >= float(dice) - 1e-12


@PROPS
@given(segmentation_batch())
def test_dice_iou_accept_non_contiguous_logits(batch):
    logits, target = batch
    swapped = logits.transpose(-1, 0).contiguous().transpose(-1, 0)   # same values, other strides
    assert torch.equal(swapped, logits)
    close(ref.dice_loss(swapped, target), ref.dice_loss(logits, target))
    close(ref.iou_loss(swapped, target), ref.iou_loss(logits, target))


@FEW
@given(segmentation_batch())
def test_dice_iou_near_zero_at_perfect_prediction(batch):
    logits, target = batch
    perfect = 60.0 * onehot_like(logits, target)   # softmax -> one-hot as the true logit -> +inf
    assert float(ref.dice_loss(perfect, target)) < 1e-12
    assert float(ref.iou_loss(perfect, target)) < 1e-12
    worse = -60.0 * onehot_like(logits, target)
    assert float(ref.dice_loss(worse, target)) > 0.1


def test_box_iou_hand_examples():
    # [0,0,2,2] and [1,1,3,3]: intersection 1, union 4 + 4 - 1 = 7 -> IoU 1/7
    close(ref.box_iou_loss(t64([[0, 0, 2, 2]]), t64([[1, 1, 3, 3]])), 1 - 1 / 7)
    # disjoint (and merely touching) boxes: IoU 0 -> loss 1
    close(ref.box_iou_loss(t64([[0, 0, 1, 1]]), t64([[2, 2, 3, 3]])), 1.0)
    close(ref.box_iou_loss(t64([[0, 0, 1, 1]]), t64([[1, 0, 2, 1]])), 1.0)
    # one inside the other: intersection 2, union 16 -> IoU 1/8
    close(ref.box_iou_loss(t64([[0, 0, 4, 4]]), t64([[1, 1, 2, 3]])), 1 - 1 / 8)
    # mean over boxes
    close(ref.box_iou_loss(t64([[0, 0, 2, 2], [0, 0, 1, 1]]), t64([[1, 1, 3, 3], [5, 5, 6, 6]])), (6 / 7 + 1) / 2)


def test_box_iou_disjoint_boxes_offset_on_one_axis_only():
    # overlap in x but not in y: a negative height must not make the intersection positive
    close(ref.box_iou_loss(t64([[0, 0, 2, 1]]), t64([[1, 3, 3, 4]])), 1.0)
    # negative width AND height would give a positive product without clamping
    close(ref.box_iou_loss(t64([[0, 0, 1, 1]]), t64([[3, 3, 4, 4]])), 1.0)


@PROPS
@given(st.integers(1, 4).flatmap(lambda n: st.tuples(boxes(n), boxes(n))))
def test_box_iou_loss_bounds_symmetry_and_identity(pair):
    pred, target = pair
    loss = float(ref.box_iou_loss(pred, target))
    assert 0.0 <= loss <= 1.0
    close(ref.box_iou_loss(pred, target), ref.box_iou_loss(target, pred))
    assert float(ref.box_iou_loss(pred, pred.clone())) == pytest.approx(0.0, abs=1e-12)
    # translating both boxes together changes nothing
    shift = t64([7.0, -3.0, 7.0, -3.0])
    close(ref.box_iou_loss(pred + shift, target + shift), ref.box_iou_loss(pred, target), rtol=1e-9, atol=1e-9)


@PROPS
@given(class_batch(), st.floats(0.0, 1.0))
def test_combined_is_alpha_ce_plus_one_minus_alpha_dice(batch, alpha):
    logits, target = batch
    expected = alpha * nll_rows(logits, target).mean() + (1 - alpha) * dice_formula(logits, target, 1.0)
    close(ref.combined_loss(logits, target, alpha=alpha), expected)
    close(ref.combined_loss(logits, target, alpha=1.0), ref.cross_entropy(logits, target))
    close(ref.combined_loss(logits, target, alpha=0.0), ref.dice_loss(logits, target))
    close(ref.combined_loss(logits, target), 0.5 * ref.cross_entropy(logits, target) + 0.5 * ref.dice_loss(logits, target))


@FEW
@given(class_batch(), binary_batch(), embeddings(count=3))
def test_classification_and_embedding_losses_non_negative(batch, binary, triple):
    logits, target = batch
    x, y = binary
    for value in (ref.cross_entropy(logits, target), ref.focal_loss(logits, target),
                  ref.label_smoothing_cross_entropy(logits, target), ref.dice_loss(logits, target),
                  ref.iou_loss(logits, target), ref.combined_loss(logits, target),
                  ref.bce_with_logits(x, y), ref.sigmoid_focal_loss(x, y), ref.binary_cross_entropy(torch.sigmoid(x), y),
                  ref.contrastive_loss(triple[0], triple[1], (torch.arange(triple[0].shape[0]) % 2).to(D)),
                  ref.triplet_loss(*triple)):
        assert value.dim() == 0
        assert float(value) >= -1e-12


# =========================================================================== gradients
@PROPS
@given(regression_pair())
def test_mse_and_mae_grad_equal_autograd(pair):
    pred, target = pair
    p = pred.clone().requires_grad_(True)
    (g_mse,) = torch.autograd.grad(((p - target) ** 2).mean(), p)
    close(ref.mse_grad(pred, target), g_mse)
    p = pred.clone().requires_grad_(True)
    (g_mae,) = torch.autograd.grad((p - target).abs().mean(), p)
    close(ref.mae_grad(pred, target), g_mae)
    assert ref.mse_grad(pred, target).shape == pred.shape


def test_mse_grad_has_one_over_n():
    # the seed's -2(y - y_hat) lacks the 1/n of the mean
    close(ref.mse_grad(t64([1.0, 0.0, 0.0, 0.0]), t64([0.0, 0.0, 0.0, 0.0])), [0.5, 0.0, 0.0, 0.0])
    close(ref.mae_grad(t64([1.0, -2.0, 0.0, 0.0]), t64([0.0, 0.0, 0.0, 0.0])), [0.25, -0.25, 0.0, 0.0])


@PROPS
@given(binary_batch(soft=True, scale=30.0))
def test_bce_with_logits_grad_equals_autograd(batch):
    x, y = batch
    xx = x.clone().requires_grad_(True)
    loss = -(y * F.logsigmoid(xx) + (1 - y) * F.logsigmoid(-xx)).mean()
    (g,) = torch.autograd.grad(loss, xx)
    close(ref.bce_with_logits_grad(x, y), g, rtol=1e-9, atol=1e-14)


@PROPS
@given(class_batch(scale=30.0))
def test_cross_entropy_grad_equals_autograd(batch):
    logits, target = batch
    x = logits.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(nll_rows(x, target).mean(), x)
    close(ref.cross_entropy_grad(logits, target), g, rtol=1e-9, atol=1e-14)
    # every row of softmax - onehot sums to 0
    close(ref.cross_entropy_grad(logits, target).sum(dim=1), torch.zeros(logits.shape[0], dtype=D), atol=1e-12)


def _smooth(x):
    return (torch.sin(x) * x ** 2).sum() + torch.logsumexp(x.reshape(-1), dim=0)


@FEW
@given(st.lists(st.floats(-3.0, 3.0, width=64), min_size=1, max_size=8), st.booleans())
def test_numerical_gradient_matches_autograd(values, transpose):
    x = t64(values)
    if transpose and x.numel() % 2 == 0:
        x = x.reshape(2, -1).t()          # a non-contiguous view: .view(-1) would fail on it
    before = x.clone()
    xx = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(_smooth(xx), xx)
    got = ref.numerical_gradient(_smooth, x)
    assert got.shape == x.shape and got.dtype == x.dtype
    close(got, expected, rtol=1e-6, atol=1e-7)
    assert torch.equal(x, before), "numerical_gradient must not modify its input"


def test_numerical_gradient_is_central_difference():
    # for f = sum x^3 central differences give 3x^2 + eps^2 exactly; forward ones 3x^2 + 3x eps + eps^2
    x = t64([1.0, -2.0])
    got = ref.numerical_gradient(lambda v: (v ** 3).sum(), x, eps=0.1)
    close(got, 3 * x ** 2 + 0.01, rtol=1e-9)


# =========================================================================== sandbox guard
_F32 = torch.float32
_SAMPLE_ARGS = {
    "mse_loss": lambda: (torch.ones(3), torch.zeros(3)),
    "mse_grad": lambda: (torch.ones(3), torch.zeros(3)),
    "mae_loss": lambda: (torch.ones(3), torch.zeros(3)),
    "mae_grad": lambda: (torch.ones(3), torch.zeros(3)),
    "huber_loss": lambda: (torch.ones(3), torch.zeros(3)),
    "smooth_l1_loss": lambda: (torch.ones(3), torch.zeros(3)),
    "binary_cross_entropy": lambda: (torch.full((3,), 0.5), torch.ones(3)),
    "bce_with_logits": lambda: (torch.zeros(3), torch.ones(3)),
    "bce_with_logits_grad": lambda: (torch.zeros(3), torch.ones(3)),
    "cross_entropy": lambda: (torch.zeros(2, 3), torch.tensor([0, 2])),
    "cross_entropy_grad": lambda: (torch.zeros(2, 3), torch.tensor([0, 2])),
    "weighted_cross_entropy": lambda: (torch.zeros(2, 3), torch.tensor([0, 2]), torch.ones(3)),
    "label_smoothing_cross_entropy": lambda: (torch.zeros(2, 3), torch.tensor([0, 2])),
    "focal_loss": lambda: (torch.zeros(2, 3), torch.tensor([0, 2])),
    "sigmoid_focal_loss": lambda: (torch.zeros(3), torch.ones(3)),
    "contrastive_loss": lambda: (torch.zeros(2, 2), torch.ones(2, 2), torch.tensor([0.0, 1.0])),
    "triplet_loss": lambda: (torch.zeros(2, 2), torch.ones(2, 2), -torch.ones(2, 2)),
    "dice_loss": lambda: (torch.zeros(2, 3), torch.tensor([0, 2])),
    "iou_loss": lambda: (torch.zeros(2, 3), torch.tensor([0, 2])),
    "box_iou_loss": lambda: (torch.tensor([[0.0, 0.0, 2.0, 2.0]]), torch.tensor([[1.0, 1.0, 3.0, 3.0]])),
    "combined_loss": lambda: (torch.zeros(2, 3), torch.tensor([0, 2])),
    "numerical_gradient": lambda: (lambda v: (v ** 2).sum(), torch.ones(3, dtype=D)),
}


def _public_references():
    return sorted(name for name, obj in vars(ref).items()
                  if inspect.isfunction(obj) and not name.startswith("_") and obj.__module__ == ref.__name__)


def test_every_public_reference_is_guarded_and_has_sample_inputs():
    names = _public_references()
    assert set(names) == set(_SAMPLE_ARGS), "a reference without a guard test (or a test for a removed reference)"
    for name in names:
        assert hasattr(getattr(ref, name), "__wrapped_reference__"), f"{name} is not wrapped by _reference"


@pytest.mark.parametrize("name", sorted(_SAMPLE_ARGS))
def test_reference_refuses_inside_student_code(name):
    fn = getattr(ref, name)
    args = _SAMPLE_ARGS[name]()
    assert torch.isfinite(torch.as_tensor(fn(*args))).all()           # works outside
    with student_code():
        with pytest.raises(ref.ReferenceUsed) as info:
            fn(*args)
    assert name in str(info.value)
    assert isinstance(info.value, RuntimeError)
    fn(*args)                                                          # and works again afterwards


def test_guard_survives_nesting_and_exceptions():
    args = _SAMPLE_ARGS["mse_loss"]()
    with student_code():
        with student_code():
            pass
        with pytest.raises(ref.ReferenceUsed):   # still inside the outer block
            ref.mse_loss(*args)
    with pytest.raises(ZeroDivisionError):
        with student_code():
            1 / 0
    close(ref.mse_loss(*args), 1.0)              # depth restored after the exception


# =========================================================================== registry
# id: (func_name, signature, points, assignment, kind) -- fixed by the shared brief
REGISTRY = {
    "numerical_grad": ("numerical_gradient", "(f, x, eps=1e-6)", 2, "01_overview", "gradient"),
    "mse": ("mse_loss", "(pred, target)", 1, "02_regression", "loss"),
    "mse_grad": ("mse_grad", "(pred, target)", 1, "02_regression", "gradient"),
    "mae": ("mae_loss", "(pred, target)", 1, "02_regression", "loss"),
    "mae_grad": ("mae_grad", "(pred, target)", 1, "02_regression", "gradient"),
    "huber": ("huber_loss", "(pred, target, delta=1.0)", 1, "02_regression", "loss"),
    "smooth_l1": ("smooth_l1_loss", "(pred, target, beta=1.0)", 1, "02_regression", "loss"),
    "bce": ("binary_cross_entropy", "(probs, target)", 1, "03_classification", "loss"),
    "bce_logits": ("bce_with_logits", "(logits, target)", 2, "03_classification", "loss"),
    "bce_logits_grad": ("bce_with_logits_grad", "(logits, target)", 1, "03_classification", "gradient"),
    "cross_entropy": ("cross_entropy", "(logits, target)", 2, "03_classification", "loss"),
    "cross_entropy_grad": ("cross_entropy_grad", "(logits, target)", 1, "03_classification", "gradient"),
    "weighted_ce": ("weighted_cross_entropy", "(logits, target, weight)", 1, "03_classification", "loss"),
    "label_smoothing_ce": ("label_smoothing_cross_entropy", "(logits, target, smoothing=0.1)", 1,
                           "03_classification", "loss"),
    "focal": ("focal_loss", "(logits, target, alpha=1.0, gamma=2.0)", 2, "03_classification", "loss"),
    "sigmoid_focal": ("sigmoid_focal_loss", "(logits, target, alpha=0.25, gamma=2.0)", 2, "03_classification", "loss"),
    "contrastive": ("contrastive_loss", "(x1, x2, label, margin=1.0)", 1, "04_other", "loss"),
    "triplet": ("triplet_loss", "(anchor, positive, negative, margin=1.0)", 1, "04_other", "loss"),
    "dice": ("dice_loss", "(logits, target, smooth=1.0)", 2, "04_other", "loss"),
    "iou": ("iou_loss", "(logits, target, smooth=1.0)", 1, "04_other", "loss"),
    "box_iou": ("box_iou_loss", "(pred_boxes, target_boxes)", 2, "04_other", "loss"),
    "combined": ("combined_loss", "(logits, target, alpha=0.5)", 1, "04_other", "loss"),
    "robust_fit": ("fit_line_robust", "(x, y) -> (w, b)", 2, "05_selection", "outcome"),
    "imbalanced_recall": ("train_imbalanced", "(x, y) -> model", 2, "05_selection", "outcome"),
    "mae_api": ("mae_with_l1loss", "(pred, target)", 1, "06_code", "loss"),
    "focal_module": ("FocalLoss", "(alpha=1, gamma=2)", 1, "06_code", "module"),
    "dice_module": ("DiceLoss", "(smooth=1.0)", 1, "06_code", "module"),
    "combined_module": ("CombinedLoss", "(alpha=0.5)", 1, "06_code", "module"),
    "label_smoothing_module": ("LabelSmoothingCrossEntropy", "(smoothing=0.1)", 1, "06_code", "module"),
    "weighted_ce_module": ("WeightedCrossEntropy", "(class_weights)", 1, "06_code", "module"),
}
ASSIGNMENTS = ("01_overview", "02_regression", "03_classification", "04_other", "05_selection", "06_code")
_CJK = re.compile(r"[\u4e00-\u9fff]")


def test_registry_ids_are_exactly_the_fixed_ones():
    assert set(EXERCISES) == set(REGISTRY)
    assert lossgrader.EXERCISES is EXERCISES
    assert all(ex.id == key for key, ex in EXERCISES.items())


@pytest.mark.parametrize("ex_id", sorted(REGISTRY))
def test_exercise_metadata(ex_id):
    ex = EXERCISES[ex_id]
    func_name, signature, points, assignment, kind = REGISTRY[ex_id]
    assert _CJK.search(ex.title), f"title {ex.title!r} is not Chinese"
    assert ex.func_name == func_name and ex.func_name.isidentifier()
    assert ex.signature == signature and ex.signature.startswith("(")
    assert ex.points == points and ex.points > 0
    assert ex.assignment == assignment and ex.assignment in ASSIGNMENTS
    assert ex.kind == kind


@pytest.mark.parametrize("ex_id", sorted(i for i, row in REGISTRY.items() if row[4] in ("loss", "gradient")))
def test_function_exercise_reference_is_the_matching_reference(ex_id):
    ex = EXERCISES[ex_id]
    expected = ref.mae_loss if ex_id == "mae_api" else getattr(ref, ex.func_name)
    assert ex.reference is expected


def _assert_same(a, b, where):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert a.dtype == b.dtype and a.shape == b.shape and a.stride() == b.stride(), where
        assert torch.equal(a, b), f"{where}: tensors differ"
    elif isinstance(a, SubgradientRange):
        for part in ("mask", "lo", "hi"):
            _assert_same(getattr(a, part), getattr(b, part), f"{where}.{part}")
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (tuple, list)):
        assert type(a) is type(b) and len(a) == len(b), where
        for k, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{k}]")
    elif callable(a):
        assert callable(b) and getattr(a, "__code__", a) is getattr(b, "__code__", b), f"{where}: different functions"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _assert_same_case(c1: Case, c2: Case, where):
    assert c1.name == c2.name, f"{where}: {c1.name!r} != {c2.name!r}"
    for field in ("args", "kwargs", "grad_args", "value_only", "subgrad", "tags", "init_kwargs"):
        _assert_same(getattr(c1, field), getattr(c2, field), f"{where} {c1.name!r}.{field}")


def _tensors(cases):
    out = []
    for c in cases:
        out += [a for a in c.args if isinstance(a, torch.Tensor)]
        out += [v for v in (c.init_kwargs or {}).values() if isinstance(v, torch.Tensor)]
    return out


@pytest.mark.parametrize("ex_id", sorted(REGISTRY))
def test_case_generation_is_deterministic(ex_id):
    ex = EXERCISES[ex_id]
    for hidden in (False, True):
        cases, expectations = ex.cases(seed=0, hidden=hidden)
        assert cases and len(cases) == len(expectations)
        # regenerated, not read from the cache: hidden = visible + a new set from seed + 1
        fresh = ex.make_cases(Rand(0), False) + (ex.make_cases(Rand(1), True) if hidden else [])
        n_visible = len(ex.make_cases(Rand(0), False))
        assert all(c.name.endswith("（隐藏用例）") for c in cases[n_visible:])
        fresh = fresh[:n_visible] + [dataclasses.replace(c, name=f"{c.name}（隐藏用例）") for c in fresh[n_visible:]]
        assert len(fresh) == len(cases)
        for c1, c2 in zip(cases, fresh):
            _assert_same_case(c1, c2, f"{ex_id} hidden={hidden}")
    # seed=None means the exercise's default seed
    default = ex.make_cases(Rand(ex.default_seed()), False)
    assert len(ex.cases()[0]) == len(default)
    for c1, c2 in zip(ex.cases()[0], default):
        _assert_same_case(c1, c2, f"{ex_id} default seed")
    # another seed gives other inputs
    seed0, seed1 = _tensors(ex.make_cases(Rand(0), False)), _tensors(ex.make_cases(Rand(1), False))
    assert any(a.shape != b.shape or not torch.equal(a, b) for a, b in zip(seed0, seed1)), f"{ex_id}: seed ignored"


@pytest.mark.parametrize("ex_id", sorted(REGISTRY))
def test_hidden_cases_extend_visible_cases(ex_id):
    ex = EXERCISES[ex_id]
    for seed in (0, ex.default_seed()):
        visible = ex.cases(seed=seed, hidden=False)[0]
        hidden = ex.cases(seed=seed, hidden=True)[0]
        assert len(hidden) > len(visible), f"{ex_id}: no hidden case beyond the visible ones"
        extra = ex.make_cases(Rand(seed + 1), True)
        assert len(extra) > len(ex.make_cases(Rand(seed + 1), False)), f"{ex_id}: no hidden-only case"
        for k, (v, h) in enumerate(zip(visible, hidden)):
            _assert_same_case(v, h, f"{ex_id} seed={seed} case {k}")


@pytest.mark.parametrize("ex_id", sorted(i for i, row in REGISTRY.items() if row[4] != "outcome"))
def test_reference_expectations_are_finite(ex_id):
    ex = EXERCISES[ex_id]
    cases, expectations = ex.cases(seed=0, hidden=True)
    for case, (value, grads) in zip(cases, expectations):
        assert torch.isfinite(value).all(), f"{ex_id} {case.name!r}: reference value not finite"
        assert value.dtype == case.float_dtype(), f"{ex_id} {case.name!r}: dtype {value.dtype}"
        if ex.kind == "gradient":
            like = next(a for a in case.args if isinstance(a, torch.Tensor))
            assert value.shape == like.shape
        else:
            assert value.dim() == 0
        if case.grad_args and not case.value_only:
            assert len(grads) == len(case.grad_args)
        for i, g in zip(case.grad_args, grads):
            assert g.shape == case.args[i].shape and torch.isfinite(g).all(), f"{ex_id} {case.name!r}: grad {i}"


# =========================================================================== kinks
# Every kink of every reference, found by probing, carries its subgradient range: at an element
# where the one-sided derivatives of the loss differ, the case's SubgradientRange must cover the
# element and contain both one-sided derivatives (docs/grader.md: any valid subgradient at a
# kink gets full marks), and the reference's own gradient must lie in it too.
_LOSS_OF_GRADIENT = {"mse_grad": ref.mse_loss, "mae_grad": ref.mae_loss, "bce_logits_grad": ref.bce_with_logits,
                     "cross_entropy_grad": ref.cross_entropy}
KINK_STEP = 1e-6


def _loss_of(ex):
    fn = _LOSS_OF_GRADIENT.get(ex.id, ex.reference)
    return getattr(fn, "__wrapped_reference__", fn)


def _one_sided(ex, case):
    """{input index: (left, right) derivatives} of the loss, by one-sided differences in float64."""
    fn = _loss_of(ex)
    up = lambda a: a.double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a  # noqa: E731
    args = [up(a) for a in case.args]
    kwargs = {k: up(v) for k, v in {**case.kwargs, **(case.init_kwargs or {})}.items()}
    inputs = case.grad_args or ((0,) if ex.kind == "gradient" else ())
    out = {}
    with torch.no_grad():
        f0 = float(fn(*args, **kwargs))
        for i in inputs:
            flat = args[i].reshape(-1)
            left, right = torch.empty(flat.numel(), dtype=D), torch.empty(flat.numel(), dtype=D)
            for j in range(flat.numel()):
                for sign, into in ((1, right), (-1, left)):
                    moved = flat.clone()
                    moved[j] += sign * KINK_STEP
                    probe = list(args)
                    probe[i] = moved.reshape(args[i].shape)
                    into[j] = sign * (float(fn(*probe, **kwargs)) - f0) / KINK_STEP
            out[i] = (left.reshape(args[i].shape), right.reshape(args[i].shape))
    return out


def _kinks(ex, case):
    """[(input index, kink mask, left, right)] where the one-sided derivatives differ."""
    found = []
    for i, (left, right) in _one_sided(ex, case).items():
        scale = max(float(left.abs().max()), float(right.abs().max()), 1e-12)
        mask = (left - right).abs() > 1e-3 * scale + 1e-7
        if bool(mask.any()):
            found.append((i, mask, left, right))
    return found


KINKED = sorted(ex_id for ex_id, row in REGISTRY.items() if row[4] in ("loss", "gradient", "module")
                and ex_id != "numerical_grad")


@pytest.mark.parametrize("ex_id", KINKED)
def test_every_kink_carries_its_subgradient_range(ex_id):
    ex = EXERCISES[ex_id]
    cases, expectations = ex.cases(None, hidden=True)
    for case, expected in zip(cases, expectations):
        if case.value_only:
            continue
        for i, mask, left, right in _kinks(ex, case):
            where = f"{ex_id} {case.name!r} input {i}"
            sub = case.subgrad.get(0 if ex.kind == "gradient" else i)
            assert sub is not None, f"{where}: {int(mask.sum())} kinks and no subgradient range"
            assert bool(sub.mask[mask].all()), f"{where}: kinks outside the range's mask"
            slack = 1e-6 * max(float(sub.hi.abs().max()), 1.0)
            lo, hi = torch.minimum(left, right), torch.maximum(left, right)
            assert bool((sub.lo.double()[mask] <= lo[mask] + slack).all()), f"{where}: left/right below the range"
            assert bool((hi[mask] <= sub.hi.double()[mask] + slack).all()), f"{where}: left/right above the range"
            ref_grad = expected[0] if ex.kind == "gradient" else expected[1][case.grad_args.index(i)]
            ref_grad = ref_grad.double()
            inside = (ref_grad >= sub.lo.double() - slack) & (ref_grad <= sub.hi.double() + slack)
            assert bool(inside[mask].all()), f"{where}: the reference's own gradient is outside the range"


def test_the_kink_probe_finds_the_known_kinks():
    """Control for the enumeration: it finds the kinks the cases are built around, box IoU at
    identical boxes included, and nothing in a smooth case."""
    expect = {"mae": "部分残差恰好为 0", "contrastive": "两点重合", "triplet": "锚点与正样本重合",
              "box_iou": "完全相同的框", "mae_grad": "部分残差恰好为 0"}
    for ex_id, name in expect.items():
        ex = EXERCISES[ex_id]
        case = next(c for c in ex.cases(None)[0] if name in c.name)
        assert _kinks(ex, case), f"{ex_id} {name}: no kink found"
    smooth = EXERCISES["mse"].cases(None)[0][0]
    assert not _kinks(EXERCISES["mse"], smooth)


def test_one_sided_box_iou_forms_pass_at_identical_boxes():
    """torch.where(p > t, p, t) and torch.max give one-sided subgradients at identical boxes:
    both valid, both full marks (they lost the case before it carried its range)."""
    def one_sided(pred, target, pick):
        lt = pick(pred[:, :2], target[:, :2], True)
        rb = pick(pred[:, 2:], target[:, 2:], False)
        wh = (rb - lt).clamp(min=0)
        inter = wh[:, 0] * wh[:, 1]
        area = lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])  # noqa: E731
        return (1 - inter / (area(pred) + area(target) - inter)).mean()
    picks = {
        "where strict": lambda a, b, hi: torch.where(a > b, a, b) if hi else torch.where(a < b, a, b),
        "where to pred": lambda a, b, hi: torch.where(a >= b, a, b) if hi else torch.where(a <= b, a, b),
    }
    for name, pick in picks.items():
        report = lossgrader.check("box_iou", lambda p, t, pick=pick: one_sided(p, t, pick), points=2, device="cpu",
                                  hidden=True)
        assert report.passed, f"{name}:\n{report}"
