"""check(): runs a student's implementation on an exercise's cases and scores it.

In a notebook everything happens in the student's process: the runtime
(``lossgrader.runtime``) calls the student's code on the cases' inputs inside the
in-process guards (time limit, captured output, guarded exits, torch call spies) and
reports what it returned; the judge (``lossgrader.judge`` and the exercise) compares that
with the reference and scores it. The autograder runs the very same two halves, the
runtime in a sandboxed kernel and the judge outside (``lossgrader.worker``), so honest
code gets the same score both ways.
"""
from __future__ import annotations

import os
import time

import torch

from . import guards, runtime
from .exercises import EXERCISES
from .judge import BOOK_LOCAL, BOOK_ONLINE, CaseResult, judge_cases, scoring_groups
from .report import Report


def resolve_device(device=None) -> torch.device:
    if device is None:
        device = os.environ.get("LOSSGRADER_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def grade(ex, cases, expectations, responses, captured, device, points, hidden, started, probe=None,
          book_base=BOOK_LOCAL) -> Report:
    """Judge the runtime's responses and build the Report. ``probe(points, seconds)`` asks
    the runtime for the student's curve when a failing element-wise loss is plotted.
    ``book_base``: where the hints' book links point (the local build, seen from a feedback
    page, unless ``check`` says online)."""
    results = judge_cases(ex, cases, expectations, responses, device)
    return report_for(ex, results, captured, device, points, hidden, started, probe, book_base)


def score(points, results) -> float:
    """``points`` × the share of scoring groups whose cases all pass (``judge.scoring_groups``).
    Each hidden case joins the group of the visible cases it varies, so a typical mistake loses
    the same share in the notebook and after autograding, and a case where a mistake cannot
    show never scores on its own (docs/grader.md, "Score")."""
    passed, total = scoring_groups(results)
    return round(points * passed / total, 4) if total else 0.0


def report_for(ex, results, captured, device, points, hidden, started, probe=None, book_base=BOOK_LOCAL) -> Report:
    plot = None
    if probe is not None and ex.curve is not None and any(r.status == "fail" for r in results):
        xs, point_requests, expected = ex.curve.points()
        ys = probe(point_requests, ex.curve.seconds)
        if len(ys) == len(xs):
            plot = ex.curve.data(xs, expected, ys)
    return Report(exercise=ex, points=points, score=score(points, results), results=results, captured=captured,
                  plot=plot, device=str(device), hidden=hidden, seconds=time.perf_counter() - started,
                  book_base=book_base)


def check(exercise: str, solution, *, points: float = 1.0, device=None, seed=None, hidden: bool = False):
    """Grade ``solution`` on ``exercise``; see the package docstring for the contract."""
    if exercise not in EXERCISES:
        raise ValueError(f"未知的练习 {exercise!r}。可用的练习：{', '.join(EXERCISES)}")
    ex = EXERCISES[exercise]
    device = resolve_device(device)
    if points < 0:
        raise ValueError("points must be non-negative")
    started = time.perf_counter()
    problem = ex.validate_solution(solution)
    if problem is not None:
        results = [CaseResult("提交的对象", "", "notimpl" if solution is None else "fail", problem)]
        return report_for(ex, results, guards.Captured(), device, points, hidden, started, book_base=BOOK_ONLINE)
    cases, expectations = ex.cases(seed, hidden)
    ran = runtime.run(ex.request(cases, device, hidden), solution)

    def probe(point_requests, seconds):
        with guards.single_thread():
            return runtime.probe(point_requests, solution, device, seconds)
    return grade(ex, cases, expectations, ran["cases"], ran["captured"], device, points, hidden, started, probe,
                 book_base=BOOK_ONLINE)
