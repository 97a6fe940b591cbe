"""nbgrader configuration: the repository root is the course directory.

Instructor notebooks live in solutions/<id>/<id>.ipynb, the generated student
notebooks in exercises/<id>/<id>.ipynb (committed; regenerate them with
``python tools/generate_exercises.py``).  The gradebook is nbgrader's SQLite
default (gradebook.db in this directory, not committed).
"""
import os
import sys

from nbgrader.preprocessors import (
    CheckCellMetadata,
    ClearHiddenTests,
    ClearMarkScheme,
    ClearOutput,
    ClearSolutions,
    ComputeChecksums,
    IncludeHeaderFooter,
    InstantiateTests,
    LockCells,
    SaveCells,
)

c = get_config()  # noqa: F821 (provided by traitlets when it loads this file)

_ROOT = os.path.dirname(os.path.abspath(__file__))

c.CourseDirectory.course_id = "loss-functions-zh"
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "exercises"

# Student stub that replaces everything between ### BEGIN SOLUTION / ### END SOLUTION.
c.ClearSolutions.code_stub = {"python": "# 在此处编写你的代码\nraise NotImplementedError()"}
c.ClearSolutions.text_stub = "在此处写下你的回答"

# Per-cell timeout (seconds) for autograde/validate.  The longest cells are the
# 05_selection test cells, which train small models on grader-generated data
# (a few seconds on a CPU); 300 s leaves room for slow CI machines and the
# hidden cases that run the training again.
c.Execute.timeout = 300
c.ExecutePreprocessor.timeout = 300

# nbgrader gives 0 to an autograded cell with any stderr output.  lossgrader
# captures what student code prints, but a library may still emit a Python
# warning (torch/numpy deprecation notices, CUDA initialisation notes) from a
# test cell.  Second line of defence: drop a stderr chunk when it consists of
# nothing but standard warnings.warn() records ("file:line: XxxWarning: msg"
# followed by indented source lines).  Anything else on stderr is kept (and
# still zeroes the cell).
c.IgnorePattern.enabled = True
c.IgnorePattern.pattern = (
    r"\A(?:[^\n]*:\d+: [A-Za-z]*Warning: [^\n]*\n(?:[ \t][^\n]*\n)*)+\Z"
)
# Released notebooks never carry outputs (also nbgrader's default).
c.ClearOutput.enabled = True

# Stamp the repository URL/branch from _config.yml (the single place it is
# written) into the generated notebooks: Colab badge + install cell.  The
# stamping runs first so that the gradebook stores the stamped locked cells.
sys.path.insert(0, os.path.join(_ROOT, "tools"))
from stamp_repository import StampRepository  # noqa: E402

c.StampRepository.config_file = os.path.join(_ROOT, "_config.yml")
c.StampRepository.release_directory = "exercises"
c.GenerateAssignment.preprocessors = [
    StampRepository,
    IncludeHeaderFooter,
    InstantiateTests,
    LockCells,
    ClearSolutions,
    ClearOutput,
    CheckCellMetadata,
    ComputeChecksums,
    SaveCells,
    ClearHiddenTests,
    ClearMarkScheme,
    ComputeChecksums,
    CheckCellMetadata,
]

# nbgrader's own autograde and feedback (the command line and the formgrader's buttons)
# take lossgrader's path (lossgrader/nbgrader_plugins.py, docs/instructor.md): every
# hand-in is graded in the bubblewrap sandbox with the test cells judged outside it, or
# not at all where bubblewrap cannot run; the scores stored are the judge's, never a
# number the hand-in printed; feedback pages are lossgrader's (Chinese, sanitised, hidden
# tests removed). Given as names (the hook imports when called): loading this file imports
# neither lossgrader nor torch.
c.Autograde.sanitize_preprocessors = [
    "lossgrader.nbgrader_plugins.RequireSandbox",
    "nbgrader.preprocessors.ClearOutput",
]
c.Autograde.autograde_preprocessors = [
    "lossgrader.nbgrader_plugins.GradeInSandbox",       # in place of nbgrader's Execute
    "lossgrader.nbgrader_plugins.SaveJudgedGrades",     # in place of SaveAutoGrades
    "nbgrader.preprocessors.AssignLatePenalties",
]
c.GenerateFeedback.exporter_class = "lossgrader.nbgrader_plugins.FeedbackExporter"


def _record_unreadable(**handin):
    """A file nbgrader cannot read gets 0 and the reason, as with lossgrader autograde."""
    from lossgrader.nbgrader_plugins import record_unreadable

    record_unreadable(**handin)


c.Autograde.pre_convert_hook = _record_unreadable
