"""The tolerance policy, tested from both sides (docs/grader.md, "Tolerance policy").

- Near misses lose points: implementations whose value, or only whose gradient, is off by
  about 10× and 100× the tolerance, in float32 and in float64 cases.
- The accepted forms keep full marks: a stabilising constant up to 1e-6, float64
  accumulation, softplus / logsigmoid / logsumexp forms, torch.where instead of clamp.
- The table is what decides: with judge.TOLERANCES loosened 10×, the 10× near misses pass
  (so the near-miss test would fail: it depends on the table's values).
- The table is the one promised: the near misses are sized from PROMISED (docs/grader.md's
  table, written out here), never from a copy of the source, and the source's table is read
  when each test runs; a table loosened in lossgrader/judge.py fails the pin and the near misses.
- Near the tolerance the feedback prints two different numbers and asks about an epsilon;
  gradient failures are named by cause; hints come only from cases that discriminate.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lossgrader import EXERCISES, check, judge

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import good  # noqa: E402

# The tolerances this course promises (docs/grader.md, "Tolerance policy"): (rtol, atol) per
# dtype. The near misses are sized from these, not from judge.TOLERANCES: a table loosened in
# the source must not loosen the tests that check it.
PROMISED = {
    torch.float16: (1e-2, 1e-3),
    torch.bfloat16: (2e-2, 1e-2),
    torch.float32: (1e-4, 1e-5),
    torch.float64: (1e-5, 1e-5),
}
TABLE = {dtype: judge.Tolerance(rtol, atol) for dtype, (rtol, atol) in PROMISED.items()}


def _source_table():
    """lossgrader.judge.TOLERANCES as it is when the test runs (not a copy made at import)."""
    return judge.TOLERANCES


# Just under k× the allowed error, so that a table loosened k× accepts the near miss.
UNDER = 0.98

NEAR_MISS_EXERCISES = ["mse", "cross_entropy", "label_smoothing_ce", "sigmoid_focal", "dice", "box_iou"]


def _allowed_rel(value: torch.Tensor) -> float:
    """The allowed relative error of a scalar loss value under TABLE."""
    t = TABLE[value.dtype]
    v = abs(float(value.detach()))
    return t.rtol + t.atol * max(1.0, v) / v if v > 0 else 0.0


def value_near_miss(fn, k):
    """fn with its value off by about k× the tolerance and the right gradient."""
    def near(*args, **kwargs):
        v = fn(*args, **kwargs)
        return v + (UNDER * k * _allowed_rel(v) * v).detach()
    return near


def gradient_near_miss(fn, k):
    """fn with the right value and every gradient off by about k× the tolerance."""
    def near(*args, **kwargs):
        v = fn(*args, **kwargs)
        t = TABLE[v.dtype]
        return v + UNDER * k * (t.rtol + t.atol) * (v - v.detach())
    return near


def _reference(exercise):
    """{case name: (value is not 0, some gradient is not 0)}."""
    cases, expectations = EXERCISES[exercise].cases(None, False)
    return {c.name: (float(e[0]) != 0, any(bool((g != 0).any()) for g in e[1])) for c, e in zip(cases, expectations)}


def _run(exercise, impl):
    ex = EXERCISES[exercise]
    return check(exercise, impl, points=ex.points, device="cpu")


def _assert_near_misses_lose_points(exercise, k):
    """Every case whose reference value is not 0 fails the value near miss, every case with a
    non-zero reference gradient fails the gradient near miss; both dtypes are among the failures."""
    fn = getattr(good, EXERCISES[exercise].func_name)
    ref = _reference(exercise)
    for kind, make in (("value", value_near_miss), ("gradient", gradient_near_miss)):
        report = _run(exercise, make(fn, k))
        assert report.score < report.max_score, f"{exercise}: {kind} near miss ×{k} got full marks"
        failed = {r.name for r in report.results if not r.passed}
        must_fail = {name for name, (value, grad) in ref.items() if (value if kind == "value" else grad)}
        assert must_fail <= failed, f"{exercise}: {kind} near miss ×{k} passed {sorted(must_fail - failed)}"
        dtypes = {d for r in report.results if not r.passed for d in ("float32", "float64") if d in r.inputs}
        assert dtypes == {"float32", "float64"}, f"{exercise}: {kind} ×{k} failed only in {dtypes}"
        for r in report.results:
            if r.passed:
                continue
            if k <= judge.NEAR_FACTOR:
                assert "非常接近" in r.message, r.message
                eps = EXERCISES[exercise].epsilon_hint      # None where the formula has no place for an ε
                assert r.hint == (eps.text if eps else None), r.hint
                got = re.search(r"期望 (\S+)，得到 (\S+?)[，；]", r.message)
                assert got and got.group(1) != got.group(2), f"two equal numbers printed: {r.message}"
            else:
                assert "非常接近" not in r.message, r.message


def test_the_table_is_the_promised_one():
    table = _source_table()
    assert {d: (t.rtol, t.atol) for d, t in table.items()} == PROMISED
    for dtype in (torch.float32, torch.float64):       # what judges a case is the table's entry
        assert (judge.tolerance_for(dtype).rtol, judge.tolerance_for(dtype).atol) == PROMISED[dtype]


def test_the_promise_is_the_documented_one():
    """docs/grader.md's table gives the same numbers (float16 / bfloat16 share a row)."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "grader.md").read_text(encoding="utf-8")
    rows = {m[0]: (m[1].strip(), m[2].strip())
            for m in re.findall(r"^\| (float[^|]*?) \| ([^|]+) \| ([^|]+) \|", text, re.M)}
    assert (float(rows["float32"][0]), float(rows["float32"][1])) == PROMISED[torch.float32]
    assert (float(rows["float64"][0]), float(rows["float64"][1])) == PROMISED[torch.float64]
    half = [tuple(float(v) for v in cell.split(" / ")) for cell in rows["float16 / bfloat16"]]
    assert list(zip(*half)) == [PROMISED[torch.float16], PROMISED[torch.bfloat16]]


@pytest.mark.parametrize("k", [10, 100])
@pytest.mark.parametrize("exercise", NEAR_MISS_EXERCISES)
def test_near_misses_lose_points(exercise, k):
    _assert_near_misses_lose_points(exercise, k)


@pytest.mark.parametrize("exercise", ["mse", "dice"])
def test_loosening_the_table_lets_the_near_misses_through(exercise, monkeypatch):
    """The near-miss test depends on the table: loosened 10×, the 10× near misses pass."""
    monkeypatch.setattr(judge, "TOLERANCES", {d: t.loosened(10) for d, t in TABLE.items()})
    fn = getattr(good, EXERCISES[exercise].func_name)
    for make in (value_near_miss, gradient_near_miss):
        report = _run(exercise, make(fn, 10))
        assert report.passed, str(report)
    with pytest.raises(AssertionError):
        _assert_near_misses_lose_points(exercise, 10)


# ----------------------------------------------------------------------------- accepted forms
def mse_float64_accumulation(pred, target):
    return ((pred.double() - target.double()) ** 2).mean().to(pred.dtype)


def mae_where(pred, target):
    d = pred - target
    return torch.where(d >= 0, d, -d).mean()


def huber_clamp(pred, target, delta=1.0):
    r = (pred - target).abs()
    quad = torch.clamp(r, max=delta)
    return (0.5 * quad ** 2 + delta * (r - quad)).mean()


def bce_where(probs, target):
    # torch.where instead of clamp for PyTorch's log cut-off at −100
    floor = torch.full_like(probs, -100.0)
    log_p = torch.where(probs > 3.8e-44, torch.log(probs), floor).clamp(min=-100)
    log_q = torch.where(probs < 1, torch.log1p(-probs), floor).clamp(min=-100)
    return -(target * log_p + (1 - target) * log_q).mean()


def bce_logits_softplus(logits, target):
    return (F.softplus(logits) - logits * target).mean()


def bce_logits_logsigmoid(logits, target):
    return -(target * F.logsigmoid(logits) + (1 - target) * F.logsigmoid(-logits)).mean()


def ce_logsumexp(logits, target):
    return (torch.logsumexp(logits, 1) - logits.gather(1, target[:, None])[:, 0]).mean()


def ce_float64(logits, target):
    x = logits.double()
    return (torch.logsumexp(x, 1) - x.gather(1, target[:, None])[:, 0]).mean().to(logits.dtype)


def sigmoid_focal_logsigmoid(logits, target, alpha=0.25, gamma=2.0):
    log_p, log_1mp = F.logsigmoid(logits), F.logsigmoid(-logits)
    ce = -(target * log_p + (1 - target) * log_1mp)
    p_t = torch.exp(target * log_p + (1 - target) * log_1mp)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return loss.mean()


def contrastive_eps(x1, x2, label, margin=1.0):
    d = F.pairwise_distance(x1, x2, eps=1e-6)
    return ((1 - label) * d ** 2 + label * torch.clamp(margin - d, min=0) ** 2).mean()


def triplet_eps(anchor, positive, negative, margin=1.0):
    d_ap = F.pairwise_distance(anchor, positive, eps=1e-6)
    d_an = F.pairwise_distance(anchor, negative, eps=1e-6)
    return torch.clamp(d_ap - d_an + margin, min=0).mean()


def dice_union_eps(logits, target, smooth=1.0):
    p = torch.softmax(logits, 1)
    oh = F.one_hot(target, logits.shape[1]).movedim(-1, 1).to(p.dtype) + 1e-6
    return 1 - (2 * (p * oh).sum() + smooth) / (p.sum() + oh.sum() + smooth + 1e-6)


def iou_union_eps(logits, target, smooth=1.0):
    p = torch.softmax(logits, 1)
    oh = F.one_hot(target, logits.shape[1]).movedim(-1, 1).to(p.dtype)
    inter = (p * oh).sum()
    return 1 - (inter + smooth) / (p.sum() + oh.sum() - inter + smooth + 1e-6)


def box_iou_union_eps(pred, target):
    lt = torch.max(pred[:, :2], target[:, :2])
    rb = torch.min(pred[:, 2:], target[:, 2:])
    wh = torch.where(rb > lt, rb - lt, torch.zeros_like(rb))
    inter = wh[:, 0] * wh[:, 1]
    area = lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])  # noqa: E731
    return (1 - inter / (area(pred) + area(target) - inter + 1e-6)).mean()


def label_smoothing_onehot_eps(logits, target, smoothing=0.1):
    k = logits.shape[1]
    dist = (1 - smoothing) * (F.one_hot(target, k).to(logits.dtype) + 1e-6) + smoothing / k
    return -(dist * torch.log_softmax(logits, 1)).sum(1).mean()


ACCEPTED = [
    ("mse", mse_float64_accumulation), ("mae", mae_where), ("huber", huber_clamp), ("bce", bce_where),
    ("bce_logits", bce_logits_softplus), ("bce_logits", bce_logits_logsigmoid), ("cross_entropy", ce_logsumexp),
    ("cross_entropy", ce_float64), ("sigmoid_focal", sigmoid_focal_logsigmoid), ("contrastive", contrastive_eps),
    ("triplet", triplet_eps), ("dice", dice_union_eps), ("iou", iou_union_eps), ("box_iou", box_iou_union_eps),
    ("label_smoothing_ce", label_smoothing_onehot_eps),
]


@pytest.mark.parametrize("exercise,impl", ACCEPTED, ids=[f"{e}-{f.__name__}" for e, f in ACCEPTED])
def test_accepted_forms_keep_full_marks(exercise, impl):
    ex = EXERCISES[exercise]
    report = check(exercise, impl, points=ex.points, device="cpu", hidden=True)
    assert report.passed and report.score == ex.points, str(report)


# ----------------------------------------------------------------------------- diagnosis
def _scaled_gradient(factor):
    def mse(pred, target):
        v = ((pred - target) ** 2).mean()
        return v + (factor - 1) * (v - v.detach())
    return mse


def _messages(report):
    return " ".join(f"{r.message} {r.hint or ''}" for r in report.results if not r.passed)


@pytest.mark.parametrize("factor,expect", [
    (-1.0, "符号反了"), (2.0, "2 倍"), (0.5, "1/2"), (0.0, "全为 0"), (3.7, "3.7 倍"),
])
def test_gradient_failures_are_named_by_cause(factor, expect):
    report = _run("mse", _scaled_gradient(factor))
    assert not report.passed
    assert expect in _messages(report), str(report)
    assert "检查是否在计算中用了 .detach()" not in _messages(report)


def test_gradient_sum_instead_of_mean_is_named():
    def mse(pred, target):
        v = ((pred - target) ** 2).mean()
        return v + (pred.numel() - 1) * (v - v.detach())
    text = _messages(_run("mse", mse))
    assert "元素个数 n" in text and "sum" in text, text


def test_gradient_wrong_only_at_kinks_is_named():
    def mae(pred, target):
        d = pred - target
        return (d.abs() + 5 * d * (d == 0)).mean()   # gradient (1 + 5)/n where d = 0: outside [−1/n, 1/n]
    report = _run("mae", mae)
    bad = [r for r in report.results if not r.passed]
    assert [r.name for r in bad] == ["部分残差恰好为 0（不可导点）"], str(report)
    assert "不可导点" in bad[0].message and "次梯度" in (bad[0].hint or ""), str(report)


def test_gradient_nan_at_a_point_is_located():
    def contrastive(x1, x2, label, margin=1.0):
        d = ((x1 - x2) ** 2).sum(1).sqrt()
        return ((1 - label) * d ** 2 + label * torch.clamp(margin - d, min=0) ** 2).mean()
    report = _run("contrastive", contrastive)
    bad = [r for r in report.results if not r.passed]
    assert bad and all("两点重合" in r.name for r in bad), str(report)
    assert "nan" in bad[0].message and "位置 (" in bad[0].message, bad[0].message


def test_tiny_gradient_error_asks_about_epsilon_only_where_an_epsilon_fits():
    """An ε-sized offset (1 to NEAR_FACTOR times the tolerance) asks about an ε in Dice, whose
    denominator has a place for one; in the MSE there is none, and no hint names one."""
    report = _run("dice", gradient_near_miss(good.dice_loss, 3))
    assert not report.passed
    assert all(r.hint == judge.EPSILON_HINT.text for r in report.results if not r.passed)
    assert "非常接近" in _messages(report)
    report = _run("mse", gradient_near_miss(good.mse_loss, 3))
    assert not report.passed and not report.hints, str(report)
    assert "非常接近" in _messages(report)


def test_hint_only_where_the_mistake_discriminates():
    """A correct focal loss that breaks only on the saturated large-logit case (returns 0
    there, as p_t^γ·CE does) must not be told to use (1 − p_t)^γ: everywhere else the mistake
    differs from the reference and the student matches the reference, not the mistake."""
    def focal(logits, target, alpha=1.0, gamma=2.0):
        if float(logits.abs().max()) > 100:
            return (logits * 0).sum()
        return good.focal_loss(logits, target, alpha, gamma)
    report = check("focal", focal, points=2, device="cpu", hidden=True)
    assert not report.passed
    assert "p_t^γ" not in _messages(report), str(report)
    # control: the mistake itself is still named
    def pt_gamma(logits, target, alpha=1.0, gamma=2.0):
        ce = F.cross_entropy(logits, target, reduction="none")
        return (alpha * torch.exp(-ce) ** gamma * ce).mean()
    assert "p_t^γ" in _messages(check("focal", pt_gamma, points=2, device="cpu"))


def test_first_mismatch_is_fast():
    """The first failing multi-element comparison must not import sympy (torch.unravel_index)."""
    import subprocess
    code = ("import sys, time, torch; from lossgrader.judge import compare; "
            "a = torch.zeros(3, 4); b = a.clone(); b[1, 2] = 1; t = time.perf_counter(); "
            "m = compare(b, a, torch.float32); dt = time.perf_counter() - t; "
            "assert '位置 (1, 2)' in m, m; assert 'sympy' not in sys.modules; print(dt)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout) < 0.2, out.stdout


# ----------------------------------------------------------------------------- the reference's own error
def _float64_inside(fn):
    """``fn`` computed on float64 copies of the floating inputs, cast back to the input's dtype:
    more precise than a float32 reference, never bit-identical to it."""
    def up(a):
        return a.double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a

    def wrapped(*args, **kwargs):
        dtype = next(a.dtype for a in args if isinstance(a, torch.Tensor) and a.is_floating_point())
        out = fn(*(up(a) for a in args), **{k: up(v) for k, v in kwargs.items()})
        return out.to(dtype)
    return wrapped


def _float64_module(cls):
    class Float64Inside(cls):
        def forward(self, inputs, targets):
            for name, value in list(self._buffers.items()):
                if value is not None and value.is_floating_point():
                    self._buffers[name] = value.double()
            return super().forward(inputs.double(), targets).to(inputs.dtype)
    return Float64Inside


def _float64_implementations():
    for exercise, ex in EXERCISES.items():
        if ex.kind == "outcome":
            continue
        solution = getattr(good, ex.func_name)
        impl = _float64_module(solution) if ex.kind == "module" else _float64_inside(solution)
        yield pytest.param(exercise, impl, id=exercise)


def _float32_cases(exercise):
    cases, _ = EXERCISES[exercise].cases(None, True)
    return [c.name for c in cases if c.float_dtype() == torch.float32]


@pytest.mark.parametrize("exercise,impl", list(_float64_implementations()))
def test_float64_inside_passes_every_float32_case(exercise, impl):
    """An implementation that evaluates in float64 and casts back is more precise than the
    reference; it must get full marks, hidden cases included (numerical_grad's float32 case
    failed before: the bar sat below the reference's own float32 rounding error)."""
    ex = EXERCISES[exercise]
    report = check(exercise, impl, points=ex.points, device="cpu", hidden=True)
    assert report.passed and report.score == ex.points, str(report)


def test_the_reference_error_rule_is_what_lets_float64_inside_pass(monkeypatch):
    """Without the reference's own error (REFERENCE_ERROR_FACTOR = 0: only the table) the
    float64-inside numerical gradient fails the float32 case: the rule is needed."""
    impl = _float64_inside(good.numerical_gradient)
    monkeypatch.setattr(judge, "REFERENCE_ERROR_FACTOR", 0.0)
    report = check("numerical_grad", impl, points=2, device="cpu", hidden=True)
    failed = [r.name for r in report.results if not r.passed]
    assert failed and all(name in _float32_cases("numerical_grad") for name in failed), str(report)


def _extrapolated_numgrad(c):
    """Central differences c× as far from the float64 ones as the float32 reference is:
    (1 − c)·float64 + c·float32. Exactly the reference on float64 inputs."""
    def numerical_gradient(f, x, eps=1e-6):
        exact = good.numerical_gradient(f, x.double(), eps)
        own = good.numerical_gradient(f, x, eps).double()
        return ((1 - c) * exact + c * own).to(x.dtype)
    return numerical_gradient


def test_the_reference_error_bar_is_not_vacuous(monkeypatch):
    """An implementation 3× the stated factor away from float64 (where the reference's own
    error exceeds the table) fails the float32 case; with the factor loosened 10× it gets
    full marks: the factor is what decides."""
    wrong = _extrapolated_numgrad(3 * judge.REFERENCE_ERROR_FACTOR)
    report = check("numerical_grad", wrong, points=2, device="cpu", hidden=True)
    failed = [r.name for r in report.results if not r.passed]
    assert failed and set(failed) <= set(_float32_cases("numerical_grad")), str(report)
    monkeypatch.setattr(judge, "REFERENCE_ERROR_FACTOR", 10 * judge.REFERENCE_ERROR_FACTOR)
    report = check("numerical_grad", wrong, points=2, device="cpu", hidden=True)
    assert report.passed, str(report)


def test_the_reference_error_rule_is_documented():
    text = (Path(__file__).resolve().parents[1] / "docs" / "grader.md").read_text(encoding="utf-8")
    assert "REFERENCE_ERROR_FACTOR" in text
    m = re.search(r"REFERENCE_ERROR_FACTOR[^0-9]*\(([0-9.]+)\)", text)
    assert m and float(m.group(1)) == judge.REFERENCE_ERROR_FACTOR, "docs/grader.md states the factor"
