"""Every exercise must catch plausible wrong implementations, with the right feedback.

For each wrong implementation in tests/corpus/wrong.py the check must give less than
full marks, its Chinese feedback (plain text or HTML) must contain the message or hint
paired with the implementation, and nothing may reach the real stdout/stderr (nbgrader
gives 0 points to an autograder cell that writes to stderr).
"""
from __future__ import annotations

import collections
import re
import sys
from pathlib import Path

import pytest
import torch

from lossgrader import EXERCISES, check

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import good, wrong  # noqa: E402


def _params():
    for w in wrong.WRONG:
        yield pytest.param(w, id=w.id)


def feedback(report) -> str:
    """Plain text and HTML, without the base64 plot (its letters match anything)."""
    html = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]*", "data:image/png;base64,", report._repr_html_())
    return str(report) + "\n" + html


def test_corpus_covers_every_exercise():
    counts = collections.Counter(w.exercise for w in wrong.WRONG)
    too_few = {ex: counts.get(ex, 0) for ex in EXERCISES if counts.get(ex, 0) < 3}
    assert not too_few, f"exercises with fewer than three wrong implementations: {too_few}"
    unknown = set(counts) - set(EXERCISES)
    assert not unknown, f"corpus entries for unknown exercises: {unknown}"
    assert len({w.id for w in wrong.WRONG}) == len(wrong.WRONG), "duplicate corpus ids"


@pytest.mark.parametrize("exercise", list(EXERCISES))
def test_good_solution_gets_full_marks(exercise, capfd):
    """Control: the wrong implementations below only prove something if the grader gives
    a correct implementation full marks on the same cases."""
    ex = EXERCISES[exercise]
    report = check(exercise, getattr(good, ex.func_name), points=ex.points, device="cpu")
    out, err = capfd.readouterr()
    assert report.passed and report.score == report.max_score == ex.points, str(report)
    assert err == "" and out == ""


@pytest.mark.parametrize("case", list(_params()))
def test_wrong_implementation_is_caught(case, capfd):
    ex = EXERCISES[case.exercise]
    capfd.readouterr()
    report = check(case.exercise, case.impl, points=ex.points, device="cpu", hidden=case.hidden)
    out, err = capfd.readouterr()
    text = feedback(report)
    assert report.score < report.max_score, f"{case.id} ({case.why}) got full marks:\n{report}"
    assert not report.passed
    assert case.expect in text, (f"{case.id} ({case.why}): feedback lacks {case.expect!r}:\n{report}")
    for misleading in case.must_not:
        assert misleading not in text, f"{case.id} ({case.why}): misleading {misleading!r} in:\n{report}"
    assert err == "", f"{case.id}: the check wrote to stderr: {err!r}"
    assert out == "", f"{case.id}: the check wrote to stdout: {out!r}"


@pytest.mark.parametrize("exercise,impl", wrong.PASS_ON_CPU, ids=[e for e, _ in wrong.PASS_ON_CPU])
def test_gpu_only_mistake_passes_on_cpu(exercise, impl, capfd):
    """Class weights left on the CPU break only on CUDA (indexing CPU weights with CUDA
    targets raises there); on the CPU the module is correct and must get full marks.
    On a machine with a GPU the same module must lose points on device='cuda'."""
    ex = EXERCISES[exercise]
    report = check(exercise, impl, points=ex.points, device="cpu")
    out, err = capfd.readouterr()
    assert report.passed and report.score == ex.points, str(report)
    assert err == ""


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("exercise,impl", wrong.PASS_ON_CPU, ids=[e for e, _ in wrong.PASS_ON_CPU])
def test_gpu_only_mistake_fails_on_cuda(exercise, impl, capfd):
    ex = EXERCISES[exercise]
    report = check(exercise, impl, points=ex.points, device="cuda")
    out, err = capfd.readouterr()
    assert report.score < report.max_score, str(report)
    assert "设备" in feedback(report), str(report)
    assert err == ""
