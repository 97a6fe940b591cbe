"""No accidental partial credit (docs/grader.md, "Score").

Cases are scored in groups: a group scores only when all its cases pass, every group weighs the
same, and each hidden case joins the group of the visible cases it varies. So:

- every typical mistake an exercise lists loses the same share of the points in the notebook
  (``check``, visible cases) and after autograding (``hidden=True``, what the worker runs);
- a case where a mistake cannot show although the mistake shows on other cases with the same
  parameters (one element, identical inputs: "missing 1/n" at n = 1) never scores on its own:
  its group holds a case where the mistake shows.
"""
from __future__ import annotations

import pytest
import torch

from lossgrader import check, engine
from lossgrader.exercises import EXERCISES
from lossgrader.judge import CaseResult, compare
from lossgrader.runtime import decode_arg
from corpus import as_module

GRADED = [ex_id for ex_id, ex in EXERCISES.items() if ex.kind != "outcome"]


def _shows(ex, mistake, case, expected) -> bool:
    """Whether the mistake's value differs from the reference's on the case."""
    try:
        with torch.no_grad():
            wrong = ex.call_for_value(mistake.fn, case, tuple(decode_arg(a) for a in case.args), dict(case.kwargs))
    except Exception:
        return True
    if not isinstance(wrong, torch.Tensor) or wrong.shape != expected[0].shape:
        return True
    return compare(wrong, expected[0], case.float_dtype(), ex.tol) is not None


@pytest.mark.parametrize("exercise", list(EXERCISES))
def test_every_case_is_in_a_group_and_hidden_cases_join_visible_groups(exercise):
    ex = EXERCISES[exercise]
    visible, _ = ex.cases(None, False)
    hidden, _ = ex.cases(None, True)
    for case in hidden:
        assert any(t.startswith("group:") for t in case.tags), f"{exercise} {case.name!r}: no scoring group"
    extra = {ex.group_of(c) for c in hidden} - {ex.group_of(c) for c in visible}
    assert not extra, f"{exercise}: groups with hidden cases only: {extra}"


@pytest.mark.parametrize("exercise", GRADED)
def test_each_listed_mistake_loses_the_same_share_in_the_notebook_and_after_autograding(exercise):
    ex = EXERCISES[exercise]
    shares = {}
    for hidden in (False, True):
        cases, expectations = ex.cases(None, hidden)
        groups = {ex.group_of(c) for c in cases}
        for mistake in ex.mistakes:
            lost = {ex.group_of(c) for c, e in zip(cases, expectations) if _shows(ex, mistake, c, e)}
            shares.setdefault(mistake.hint, []).append(len(lost) / len(groups))
    unequal = {hint[:50]: s for hint, s in shares.items() if abs(s[0] - s[1]) > 1e-12}
    assert not unequal, f"{exercise}: share lost (notebook, autograder) differs: {unequal}"
    assert all(s[0] > 0 for s in shares.values()), f"{exercise}: a listed mistake never shows"


@pytest.mark.parametrize("exercise", GRADED)
def test_the_scores_of_the_listed_mistakes_agree_end_to_end(exercise):
    """The same, measured on the reports: each listed mistake, handed in as the student's code,
    scores the same fraction of the points in the notebook and with the hidden cases."""
    ex = EXERCISES[exercise]
    for mistake in ex.mistakes:
        impl = as_module(mistake.fn) if ex.kind == "module" else mistake.fn
        notebook = check(exercise, impl, points=ex.points, device="cpu")
        autograded = check(exercise, impl, points=ex.points, device="cpu", hidden=True)
        assert notebook.score == autograded.score, (f"{exercise} {mistake.hint[:40]}: {notebook.score} in the notebook, "
                                                    f"{autograded.score} after autograding\n{autograded}")


def _parameters(case) -> tuple:
    out = {}
    for k, v in {**case.kwargs, **(case.init_kwargs or {})}.items():
        out[k] = tuple(v.reshape(-1).tolist()) if isinstance(v, torch.Tensor) else v
    return tuple(sorted(out.items()))


def _regime(case) -> tuple:
    """The case's parameters and its regime tags (large, edge, noncontiguous, prob01)."""
    return _parameters(case), frozenset(t for t in case.tags if not t.startswith("group:"))


def _degenerate(case) -> bool:
    """One element (n = 1, or one sample N = 1) or identical inputs (pred == target, the same
    boxes): a case where a typical mistake may be unable to show."""
    tensors = [a for a in case.args if isinstance(a, torch.Tensor)]
    if not tensors:
        return False
    first = tensors[0]
    if first.numel() == 1 or (first.dim() > 0 and first.shape[0] == 1):
        return True
    return any(a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
               for i, a in enumerate(tensors) for b in tensors[i + 1:])


@pytest.mark.parametrize("exercise", GRADED)
def test_a_degenerate_case_never_scores_on_its_own(exercise):
    """A case with one element or identical inputs shares its group with a case where each
    listed mistake it cannot show does show: it carries no points on its own."""
    ex = EXERCISES[exercise]
    cases, expectations = ex.cases(None, True)
    degenerate = [k for k, c in enumerate(cases) if _degenerate(c)]
    for k in degenerate:
        assert any(j not in degenerate and ex.group_of(c) == ex.group_of(cases[k]) for j, c in enumerate(cases)), \
            f"{exercise} {cases[k].name!r}: a degenerate case alone in its group"
    for mistake in ex.mistakes:
        shown = [_shows(ex, mistake, c, e) for c, e in zip(cases, expectations)]
        for k in degenerate:
            siblings = [j for j, c in enumerate(cases) if j not in degenerate and _regime(c) == _regime(cases[k])]
            if shown[k] or not any(shown[j] for j in siblings):
                continue        # it shows here, or the parameters or the regime hide it (δ = 1, ε = 0)
            partners = [j for j, c in enumerate(cases) if j != k and ex.group_of(c) == ex.group_of(cases[k])]
            assert any(shown[j] for j in partners), (
                f"{exercise} {cases[k].name!r}: {mistake.hint[:40]} cannot show here and the case scores on its own")


def test_the_degenerate_cases_are_found():
    """Control for the detection: the one-element, one-sample and identical-box cases."""
    names = {ex_id: [c.name for c in EXERCISES[ex_id].cases(None, True)[0] if _degenerate(c)]
             for ex_id in ("mse_grad", "cross_entropy", "weighted_ce", "box_iou")}
    assert any("单个元素" in n for n in names["mse_grad"])
    assert any("N=1" in n for n in names["cross_entropy"]) and any("N=1" in n for n in names["weighted_ce"])
    assert any("完全相同的框" in n for n in names["box_iou"])


def test_missing_one_over_n_scores_zero_both_ways():
    """The issue's case: the seed's MSE gradient without 1/n got 0 in the notebook and a
    fraction after autograding, from the one-element hidden case."""
    def mse_grad(pred, target):
        return -2 * (target - pred)
    for exercise, impl in (("mse_grad", mse_grad), ("mae_grad", lambda p, t: torch.sign(p - t))):
        assert check(exercise, impl, device="cpu").score == 0
        report = check(exercise, impl, device="cpu", hidden=True)
        assert report.score == 0, str(report)
        assert any(r.passed for r in report.results), "control: the one-element case itself passes"


def test_a_group_scores_only_when_all_its_cases_pass():
    results = [CaseResult("a", "", "pass", group="g1"), CaseResult("b", "", "fail", group="g1"),
               CaseResult("c", "", "pass", group="g2"), CaseResult("d", "", "pass")]
    assert engine.score(3.0, results) == 2.0
    assert engine.score(1.0, [CaseResult("x", "", "fail")]) == 0.0
