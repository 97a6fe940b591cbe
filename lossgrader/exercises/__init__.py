"""The exercise registry: every loss of the course, with its cases, reference, forbidden
built-ins, typical mistakes and feedback plot.

One module per assignment (``ch01_overview.py`` … ``ch06_code.py``) lists its exercises as
entries with keyword fields; ``common.py`` holds what the entries are made of (the kinds of
exercise, case factories, mistake and library-variant formulas). ``EXERCISES`` maps an
exercise id to its Exercise (id, title, func_name, signature, points, assignment, kind). The
ids and signatures are fixed: notebooks and the book rely on them.
"""
from __future__ import annotations

from . import ch01_overview, ch02_regression, ch03_classification, ch04_other, ch05_selection, ch06_code
from .common import _VARIANTS
from .common import (AUTOGRAD, CURVE_BATCH, Exercise, Forbidden, GradExercise, Mistake,  # noqa: F401  (public)
                     ModuleExercise, OutcomeExercise)

_list = ch01_overview.ENTRIES + ch02_regression.ENTRIES + ch03_classification.ENTRIES + ch04_other.ENTRIES + ch05_selection.ENTRIES + ch06_code.ENTRIES

for _ex in _list:
    _ex.mistakes += tuple(_VARIANTS.get(_ex.id, ()))

EXERCISES = {ex.id: ex for ex in _list}


def plot_label_characters() -> str:
    """Every character the feedback plots draw outside mathtext (the legends and each
    exercise's axis label): what the course's font subset must hold."""
    import re
    from ..plots import LEGEND_REFERENCE, LEGEND_STUDENT
    texts = [LEGEND_REFERENCE, LEGEND_STUDENT] + [ex.curve.xlabel for ex in EXERCISES.values() if ex.curve]
    plain = "".join(re.sub(r"\$[^$]*\$", "", t) for t in texts)
    return "".join(sorted(set(plain) | {chr(c) for c in range(32, 127)}))
