"""Reading nbgrader notebooks without a kernel: the answers a notebook defines.

Used by the tests and the benchmark to grade the instructor's model solutions (the
answer cells of solutions/<id>/<id>.ipynb are the single source of those solutions)
and by instructors to self-check an assignment: ``python -m lossgrader.notebooks``.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import sys


HIDDEN_BEGIN, HIDDEN_END = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"


def graded_cell_source(ex) -> str:
    """The instructor version of an exercise's test cell, generated from the registry: the
    visible check students run and, between nbgrader's hidden-test markers (removed from
    exercises/), the same check on the hidden cases. The autograder grades the hidden cases
    from outside the student's kernel whatever this cell holds; the hidden line is what plain
    nbgrader runs and what tells a reader the cell is graded on hidden cases too."""
    call = f'check("{ex.id}", {ex.func_name}, points={ex.points!r}'
    return f"# 测试（只读）\n{call})\n{HIDDEN_BEGIN}\n{call}, hidden=True)\n{HIDDEN_END}"


def code_cells(path):
    with open(path, encoding="utf-8") as f:
        nb = json.load(f)
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            meta = cell.get("metadata", {}).get("nbgrader", {})
            yield "".join(cell.get("source", [])), meta


def load_answers(path) -> dict:
    """Execute every code cell of the notebook except its test cells (nbgrader grade
    cells) and return the resulting namespace. Output is swallowed."""
    namespace = {"__name__": "__notebook__"}
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        for source, meta in code_cells(path):
            if meta.get("grade") and not meta.get("solution"):
                continue
            if source.lstrip().startswith(("%", "!")):
                continue
            exec(compile(source, path, "exec"), namespace)
    return namespace


def assignment_notebook(root, assignment, kind="solutions") -> str:
    return os.path.join(root, kind, assignment, f"{assignment}.ipynb")


def main(argv=None) -> int:
    """Grade the model solutions of every assignment (hidden cases) and print a table."""
    from . import EXERCISES, check

    root = (argv or sys.argv[1:] or ["."])[0]
    failed = 0
    by_assignment = {}
    for ex in EXERCISES.values():
        by_assignment.setdefault(ex.assignment, []).append(ex)
    for assignment, exercises in sorted(by_assignment.items()):
        answers = load_answers(assignment_notebook(root, assignment))
        for ex in exercises:
            report = check(ex.id, answers.get(ex.func_name), points=ex.points, hidden=True)
            failed += not report.passed
            print(f"{assignment:18s} {ex.id:24s} {report.score:g}/{report.max_score:g}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
