"""Implementations in the conventions of public libraries get the verdict written beside them.

tests/corpus/library_variants.py holds, per exercise, code written in the style of
torchvision, kornia, segmentation_models_pytorch, mmdetection, timm, fairseq, Keras, ... A
correct formula written in another numerical style (an epsilon up to 1e-6, float64
accumulation, log-space forms, torch.where instead of clamp) must get full marks, hidden
cases included; a library's different convention (per-class Dice, GIoU, the classy label
smoothing, ...) must fail exactly the cases where it differs from the course's formula, and
the feedback must name it.
"""
from __future__ import annotations

import collections
import re
import sys
from pathlib import Path

import pytest

from lossgrader import EXERCISES, check

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import library_variants  # noqa: E402

IMPLS = library_variants.IMPLS


def feedback(report) -> str:
    html = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]*", "data:image/png;base64,", report._repr_html_())
    return str(report) + "\n" + html


def test_corpus_is_large_and_well_formed():
    assert len(IMPLS) >= 40, len(IMPLS)
    assert len({i.id for i in IMPLS}) == len(IMPLS), "duplicate ids"
    unknown = {i.exercise for i in IMPLS} - set(EXERCISES)
    assert not unknown, unknown
    for i in IMPLS:
        assert i.follows.strip(), f"{i.id}: which project's convention does it follow?"
        assert bool(i.fails) == bool(i.expect), f"{i.id}: a failing verdict names its message, a full one none"
    verdicts = collections.Counter("full" if not i.fails else "fails" for i in IMPLS)
    assert verdicts["full"] >= 15 and verdicts["fails"] >= 15, verdicts


@pytest.mark.parametrize("item", IMPLS, ids=[i.id for i in IMPLS])
def test_library_implementation_verdict(item, capfd):
    ex = EXERCISES[item.exercise]
    report = check(item.exercise, item.impl, points=ex.points, device="cpu", hidden=True)
    out, err = capfd.readouterr()
    assert err == "" and out == ""
    if not item.fails:
        assert report.passed and report.score == ex.points, f"{item.id} ({item.follows}) must get full marks:\n{report}"
        return
    assert report.score < ex.points, f"{item.id} ({item.follows}) got full marks"
    wrong = []
    for r in report.results:
        should_fail = any((s[:-1] == r.name) if s.endswith("$") else (s in r.name) for s in item.fails)
        if should_fail == r.passed:
            wrong.append(f"{'passed' if r.passed else 'failed'}: {r.name} {r.message}")
    assert not wrong, f"{item.id}: cases with the wrong verdict:\n" + "\n".join(wrong)
    assert item.expect in feedback(report), f"{item.id}: feedback lacks {item.expect!r}:\n{report}"


def test_every_named_variant_is_exercised_by_the_corpus():
    """Each library variant the grader names has an implementation in the corpus whose
    expected feedback is (part of) that variant's hint, for the exercise or its module twin."""
    expects = collections.defaultdict(set)
    for i in IMPLS:
        expects[i.exercise].add(i.expect)
    missing = []
    for ex in EXERCISES.values():
        for mistake in ex.mistakes:
            if not mistake.source:
                continue
            base = ex.id.removesuffix("_module")
            twins = {ex.id, base, base + "_ce"}      # dice_module -> dice, label_smoothing_module -> label_smoothing_ce
            if not any(e and e in mistake.hint for t in twins for e in expects.get(t, ())):
                missing.append(f"{ex.id}: {mistake.hint[:60]}")
    assert not missing, "variants without a corpus implementation:\n" + "\n".join(missing)

