"""lossgrader: grades PyTorch implementations of loss functions on values and gradients.

    from lossgrader import check
    check("mse", mse_loss)              # visible cases: what students run
    check("mse", mse_loss, hidden=True) # plus hidden cases: what the autograder runs

``check(exercise, solution, *, points=1.0, device=None, seed=None, hidden=False)``
returns a Report: ``score`` in [0, points], ``max_score``, ``passed`` (full marks),
``float(report) == report.score``. In a notebook its plain-text repr is the score (read
by nbgrader as partial credit) and its HTML repr is the feedback in Chinese. ``device``
None means CUDA when available, else CPU; the environment variable LOSSGRADER_DEVICE
overrides that default. Student code never makes check raise or write to stderr.

``EXERCISES`` lists every exercise: id, title, func_name, signature, points, assignment.
"""
from .engine import check, resolve_device
from .exercises import EXERCISES
from .report import Report

__all__ = ["check", "EXERCISES", "Report", "resolve_device"]
__version__ = "0.1.0"
