"""The record one graded hand-in produces: plain data from the worker to the coordinator.

A worker (local pool or Dask) grades a hand-in and returns a HandinResult; it never opens
the gradebook. The coordinator, the only writer, stores it in one transaction
(lossgrader.gradebook.write_result), writes the autograded notebook and keeps the
per-case records for the class report.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional


@dataclass
class CaseRecord:
    """One case of one exercise, as the trusted judge saw it."""
    grade_id: str                 # the test cell, e.g. "test_mse"
    exercise: str                 # exercise id, e.g. "mse"
    case: str                     # the case's Chinese name
    status: str                   # "pass", "fail", "error", "notimpl", "timeout", "forbidden", "skipped"
    message: str = ""             # Chinese feedback text
    hint: Optional[str] = None    # the typical-mistake (or other) hint shown


@dataclass
class HandinResult:
    student: str
    assignment: str
    status: str = "graded"        # "graded" or "failed" (could not be graded: 0 with a reason)
    reason: str = ""              # English, technical: why it failed (shown translated to students)
    scores: dict = field(default_factory=dict)       # grade_id -> auto score of every autograded cell
    max_scores: dict = field(default_factory=dict)   # grade_id -> points of every grade cell
    notebooks: dict = field(default_factory=dict)    # notebook name -> autograded notebook (JSON text)
    cases: list = field(default_factory=list)        # CaseRecord for every judged case
    timings: dict = field(default_factory=dict)      # phase -> seconds (kernel start, cells, judge, ...)
    log: str = ""                                    # worker log lines (English), for the instructor
    attempts: int = 1
    # grade_id -> {"reason": English, for the instructor; "auto_score": what the judge computed}
    # for each test cell the signals could not decide (lossgrader.backdoors, judge.observation_gaps):
    # its score above is 0.0 and the gradebook marks it needs_manual_grade until a person grades it
    review: dict = field(default_factory=dict)

    @property
    def score(self) -> float:
        return float(sum(v for v in self.scores.values() if v is not None))

    @property
    def max_score(self) -> float:
        return float(sum(self.max_scores.values()))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "HandinResult":
        data = dict(data)
        data["cases"] = [CaseRecord(**c) if isinstance(c, dict) else c for c in data.get("cases", [])]
        return cls(**data)

    @classmethod
    def failure(cls, student: str, assignment: str, reason: str, max_scores: Optional[dict] = None,
                **extra) -> "HandinResult":
        """An explicit 0 for every grade cell, with the reason."""
        max_scores = dict(max_scores or {})
        return cls(student, assignment, status="failed", reason=reason,
                   scores={gid: 0.0 for gid in max_scores}, max_scores=max_scores, **extra)
