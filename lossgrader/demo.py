"""``lossgrader demo``: the instructor pipeline on the bundled sample class."""
from __future__ import annotations

import sys
import time

from . import course
from .autograde import autograde
from .classreport import class_report
from .collect import collect
from .export import export, format_table
from .feedback import feedback


def demo(root, cell_timeout=None, stream=None, jobs=1):
    """Copy the sample class into submitted/, then autograde, feedback, export and the class
    report; returns the table text. The samples are the course's own, trusted: where bubblewrap cannot run, the
    demo says so and grades them without the sandbox."""
    from .sandbox import bwrap_problem

    stream = stream or sys.stderr
    t0 = time.monotonic()
    copied = collect(root, course.samples_dir(root))
    students = sorted({s for s, _ in copied})
    stream.write(f"demo: {len(copied)} sample submissions from samples/submitted/ -> submitted/\n")
    problem = bwrap_problem()
    if problem:
        stream.write(f"demo: no sandbox here ({problem}); grading the bundled, trusted samples without it. "
                     "Install bubblewrap before grading real hand-ins.\n")
    autograde(root, only_students=students, cell_timeout=cell_timeout, stream=stream, jobs=jobs,
              sandbox=problem is None)
    feedback(root, only_students=students, stream=stream)
    path, rows = export(root)
    report = class_report(root)
    rows = [r for r in rows if r["student_id"] in students]
    stream.write(f"demo: done in {time.monotonic() - t0:.0f} s; grades in {path}, "
                 f"feedback in feedback/<student>/<assignment>/, class report in {report}\n")
    return format_table(rows)
