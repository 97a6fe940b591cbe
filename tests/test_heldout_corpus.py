"""The held-out corpus (tests/corpus/heldout.py): every implementation gets its verdict, the hints it
must get, and no hint that names a cause its code does not have.

Also the corpus's shape: at least 150 implementations, every graded exercise covered, every
verdict and every style of the issue present.
"""
from __future__ import annotations

import collections
import fnmatch
import re
import sys
from pathlib import Path

import pytest

from lossgrader import EXERCISES, check

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import heldout  # noqa: E402
from corpus.heldout import HELD  # noqa: E402

STYLES = ("torch.where", "clamp", "einsum", "logsumexp", "float64 inside", "torch.special", "JAX", "Keras", "blog",
          "LLM style", "subtle", "disguised")


def feedback(report) -> str:
    html = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]*", "data:image/png;base64,", report._repr_html_())
    return str(report) + "\n" + html


def shown_keys(report) -> set:
    return {r.hint_key for r in report.results if r.hint_key}


def matches(key: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(key, pattern)


def test_the_corpus_is_large_and_covers_every_exercise_and_style():
    assert len(HELD) >= 150, len(HELD)
    assert len({h.id for h in HELD}) == len(HELD), "duplicate ids"
    verdicts = collections.Counter(h.verdict for h in HELD)
    assert verdicts["right"] >= 60 and verdicts["wrong"] >= 50 and verdicts["forbidden"] >= 15, verdicts
    assert {h.exercise for h in HELD} == set(EXERCISES)
    styles = " ".join(h.style for h in HELD)
    assert all(s in styles for s in STYLES), [s for s in STYLES if s not in styles]
    for h in HELD:
        if h.verdict == "wrong":
            assert h.why, h.id


@pytest.mark.parametrize("item", HELD, ids=[h.id for h in HELD])
def test_heldout_verdict_and_hints(item, capfd):
    ex = EXERCISES[item.exercise]
    report = check(item.exercise, item.impl, points=ex.points, device="cpu", hidden=True)
    out, err = capfd.readouterr()
    assert err == "", f"{item.id}: the check wrote to stderr: {err!r}"
    statuses = [r.status for r in report.results]
    if item.verdict == "right":
        assert report.passed and report.score == ex.points, f"{item.id} ({item.why}) must get full marks:\n{report}"
        return
    if item.verdict == "forbidden":
        assert report.score == 0 and statuses[0] == "forbidden", f"{item.id} ({item.why}) not refused:\n{report}"
        return
    assert report.score < ex.points and "forbidden" not in statuses, f"{item.id} ({item.why}):\n{report}"
    keys = shown_keys(report)
    for pattern in item.hints:
        assert any(matches(k, pattern) for k in keys), f"{item.id}: no {pattern!r} among {sorted(keys)}:\n{report}"
    if item.expect:
        assert item.expect in feedback(report), f"{item.id}: feedback lacks {item.expect!r}:\n{report}"
    misleading = [k for k in keys if not any(matches(k, p) for p in item.hints + item.allowed)]
    assert not misleading, f"{item.id} ({item.why}): hints naming a cause the code does not have: {misleading}\n{report}"
    named = [k for k in keys for p in item.not_hints if matches(k, p) and not any(matches(k, q) for q in item.hints)]
    assert not named, f"{item.id}: {named}"


def test_the_misleading_wordings_cover_the_generic_hints():
    assert set(heldout.GENERIC_MISLEADING) <= set(heldout.MISLEADING_TEXT)


def _hint_keys() -> set:
    """Every hint key the grader can show (apart from the per-exercise mistakes)."""
    from lossgrader import judge
    keys = {h.key for h in vars(judge).values() if isinstance(h, judge.Hint)}
    keys |= {f"factor-{label}" for label in judge.FACTOR_HINTS}
    keys |= {f"exception-{kind}" for kind, *_ in judge._EXCEPTIONS}
    keys |= {"result-unreadable", "result-none", "result-number", "result-numpy", "result-scalar", "result-dtype",
             "result-device", "nonfinite-prob01", "nonfinite-log-of-softmax", "nonfinite-large", "nonfinite-kink",
             "nonfinite", "module-parameters", "outcome-robust-fit", "outcome-minority", "outcome-overweighted",
             "epsilon-label-smoothing"}
    return keys


def test_every_hint_has_wrong_entries_it_must_not_fire_on():
    """For every hint, wrong implementations whose bug is something else: entries whose allowed
    hints exclude it, so that the verdict test above fails if it fires there."""
    wrong = [h for h in HELD if h.verdict == "wrong"]
    for key in sorted(_hint_keys()):
        guarded = [h.id for h in wrong if not any(matches(key, p) for p in h.hints + h.allowed)]
        assert len(guarded) >= 10, f"{key}: only {guarded} must not get it"


def test_the_generic_hints_fire_somewhere_in_the_corpus():
    """The other side: the hints with a premise of their own are asked for by some entry."""
    asked = {p for h in HELD for p in h.hints}
    for key in ("graph-no-grad", "graph-cut", "kink", "factor-half", "exception-view", "exception-bool",
                "exception-argcount", "exception-super-init", "exception-index-as-onehot", "result-dtype",
                "module-parameters", "nonfinite-large", "nonfinite-kink", "nonfinite-prob01", "outcome-minority",
                "outcome-robust-fit", "mistake-*", "variant-*"):
        assert key in asked, key
