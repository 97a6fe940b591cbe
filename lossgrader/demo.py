"""``lossgrader demo``: the instructor pipeline on the bundled sample class, in a scratch course.

The demo never writes into the course it is started from: it builds a course of its own,
``_build/demo-course/`` under the course folder (``DEMO_DIR``; ``--dir`` elsewhere), holding
a copy of what grading needs (``nbgrader_config.py``, ``_config.yml``, ``tools/`` which the
configuration imports, the source and release folders: ``solutions/`` and ``exercises/``),
collects ``samples/submitted/`` into its ``submitted/`` and runs autograde, feedback, export
and the class report there, with its own gradebook. The course's ``submitted/``,
``gradebook.db``, ``grades.csv``, ``feedback/`` and ``report/`` are not touched.

Each run starts from a fresh copy: the previous demo course is removed first, and only a
folder this module made (it holds the ``.lossgrader-demo`` marker) is ever removed.
``_build/`` is the book's build folder: not committed, and not part of the book (only the
files of ``_toc.yml`` are built).
"""
from __future__ import annotations

import os
import shutil
import sys
import time

from . import course

DEMO_DIR = os.path.join("_build", "demo-course")
MARKER = ".lossgrader-demo"
COURSE_FILES = ("nbgrader_config.py", "_config.yml")
CONFIG_DIRS = ("tools",)            # nbgrader_config.py imports tools/stamp_repository.py
_IGNORE = shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints")


class DemoError(SystemExit):
    """The demo course cannot be made where asked."""


def _shown(path) -> str:
    """A path as printed: relative to the working directory when under it."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def demo_course(root, dest=None) -> str:
    """Make a fresh scratch course for the demo (default ``<root>/_build/demo-course``) and
    return its path: the course's configuration, source and release folders, nothing else."""
    root = os.path.abspath(root)
    dest = os.path.abspath(dest or os.path.join(root, DEMO_DIR))
    if dest == root or root.startswith(dest + os.sep):
        raise DemoError(f"lossgrader demo: {dest} holds the course itself; choose another folder for the demo")
    if os.path.lexists(dest):
        if not os.path.isfile(os.path.join(dest, MARKER)) or os.path.islink(dest):
            raise DemoError(f"lossgrader demo: {dest} exists and is not a demo course made by lossgrader demo "
                            f"(no {MARKER} in it); move it away or pass --dir")
        shutil.rmtree(dest)
    os.makedirs(dest)
    with open(os.path.join(dest, MARKER), "w", encoding="utf-8") as fh:
        fh.write(f"A scratch course made by `lossgrader demo` from {root}; removed and made again by the next demo.\n")
    for name in COURSE_FILES:
        if os.path.isfile(os.path.join(root, name)):
            shutil.copy2(os.path.join(root, name), os.path.join(dest, name))
    folders = list(CONFIG_DIRS)
    for setting, default in (("source_directory", "source"), ("release_directory", "release")):
        folders.append(course.directory(root, setting, default))
    for name in folders:
        src = os.path.join(root, name)
        if os.path.isdir(src) and not os.path.isabs(name):
            shutil.copytree(src, os.path.join(dest, name), ignore=_IGNORE)
    return dest


def demo(root, cell_timeout=None, stream=None, jobs=1, dest=None):
    """Grade the sample class in a scratch course (``demo_course``): autograde, feedback,
    export and the class report; returns the grade table's text. The samples are the
    course's own, trusted: where bubblewrap cannot run, the demo says so and grades them
    without the sandbox."""
    from .autograde import autograde
    from .classreport import class_report
    from .collect import collect
    from .export import export, format_table
    from .feedback import feedback
    from .sandbox import bwrap_problem

    stream = stream or sys.stderr
    t0 = time.monotonic()
    root = os.path.abspath(root)
    samples = course.samples_dir(root)
    if not os.path.isdir(samples):
        raise DemoError(f"lossgrader demo: no sample class in {samples}")
    where = demo_course(root, dest)
    stream.write(f"demo: grading the sample class in a scratch course, {_shown(where)}/ (made afresh on every "
                 f"run; the course's own submitted/ and gradebook are not touched)\n")
    copied = collect(where, samples)
    students = sorted({s for s, _ in copied})
    stream.write(f"demo: {len(copied)} sample submissions from samples/submitted/ -> "
                 f"{_shown(os.path.join(where, 'submitted'))}/\n")
    problem = bwrap_problem()
    if problem:
        stream.write(f"demo: no sandbox here ({problem}); grading the bundled, trusted samples without it. "
                     "Install bubblewrap before grading real hand-ins.\n")
    autograde(where, only_students=students, cell_timeout=cell_timeout, stream=stream, jobs=jobs,
              sandbox=problem is None)
    pages = feedback(where, only_students=students, stream=stream)
    path, rows = export(where)
    report = class_report(where)
    stream.write(f"demo: done in {time.monotonic() - t0:.0f} s. Written in the scratch course {_shown(where)}/:\n"
                 f"  grades        {_shown(path)}\n"
                 f"  class report  {_shown(report)}\n"
                 f"  feedback      {len(pages)} pages:\n")
    for page in pages:
        stream.write(f"    {_shown(page)}\n")
    stream.write(f"  (any lossgrader command works on it: lossgrader --course {_shown(where)} export)\n")
    return format_table([r for r in rows if r["student_id"] in students])
