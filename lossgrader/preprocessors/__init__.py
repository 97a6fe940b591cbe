"""nbgrader/nbconvert preprocessors of the feedback pages, one per file.

The order they run in is written once, in ``lossgrader.feedback.FEEDBACK_PREPROCESSORS``.
"""
try:  # nbgrader is an instructor-only dependency
    from nbgrader.preprocessors import NbGraderPreprocessor as Preprocessor
except ImportError:  # pragma: no cover - exercised only without nbgrader installed
    from nbconvert.preprocessors import Preprocessor

__all__ = ["Preprocessor"]
