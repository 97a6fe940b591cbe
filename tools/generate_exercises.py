#!/usr/bin/env python
"""Regenerate the student notebooks in exercises/ from the instructor notebooks in solutions/.

Runs ``nbgrader generate_assignment`` for every assignment in a temporary copy
of the course directory (nbgrader needs a gradebook database; the repository
stays clean), with the repository's own ``nbgrader_config.py`` (which stamps
the repository URL from ``_config.yml`` into the Colab badge and the install
cell), then copies the result into ``exercises/``. Before that, every test cell of
``solutions/`` is regenerated from the exercise registry
(``lossgrader.notebooks.graded_cell_source``: the visible check and its hidden twin), so the
30 test cells are data written once, not hand-copied code.

Usage::

    python tools/generate_exercises.py                 # regenerate every assignment into exercises/
    python tools/generate_exercises.py 02_regression   # only some assignments
    python tools/generate_exercises.py --check         # exit 1 when exercises/ or a test cell is stale
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile

import nbformat

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What nbgrader needs to see of the course directory.
COURSE_FILES = ("nbgrader_config.py", "_config.yml")
COURSE_DIRS = ("tools", "solutions")


def assignment_ids(root=ROOT):
    src = os.path.join(root, "solutions")
    return sorted(d for d in os.listdir(src)
                  if os.path.isfile(os.path.join(src, d, d + ".ipynb")))


def sync_test_cells(assignments=None, root=ROOT, write=True):
    """Make every test cell of solutions/ the one the registry generates
    (lossgrader.notebooks.graded_cell_source): returns the cells that differed, as
    "<assignment>/<grade_id>"; with write=False nothing is changed."""
    import json

    sys.path.insert(0, root)
    try:
        from lossgrader.exercises import EXERCISES
        from lossgrader.notebooks import graded_cell_source
    finally:
        sys.path.remove(root)
    stale_cells = []
    for aid in assignments or assignment_ids(root):
        path = os.path.join(root, "solutions", aid, aid + ".ipynb")
        with open(path, encoding="utf-8") as fh:
            nb = json.load(fh)
        changed = False
        for cell in nb["cells"]:
            meta = cell.get("metadata", {}).get("nbgrader", {})
            if cell.get("cell_type") != "code" or not meta.get("grade") or meta.get("solution"):
                continue
            ex = next((e for e in EXERCISES.values() if f'check("{e.id}", ' in "".join(cell["source"])), None)
            if ex is None:
                continue
            wanted = graded_cell_source(ex)
            if "".join(cell["source"]) != wanted:
                stale_cells.append(f"{aid}/{meta.get('grade_id')}")
                cell["source"] = wanted.splitlines(keepends=True)
                changed = True
        if changed and write:
            with open(path, "w", encoding="utf-8", newline="\n") as fh:
                fh.write(json.dumps(nb, ensure_ascii=False, indent=1) + "\n")
    return stale_cells


def generate(out_dir, assignments=None, root=ROOT):
    """Generate the student versions of ``assignments`` (default: all) into ``out_dir/<id>/``."""
    assignments = list(assignments or assignment_ids(root))
    with tempfile.TemporaryDirectory(prefix="lossfn-course-") as tmp:
        for name in COURSE_FILES:
            shutil.copy2(os.path.join(root, name), os.path.join(tmp, name))
        for name in COURSE_DIRS:
            shutil.copytree(os.path.join(root, name), os.path.join(tmp, name),
                            ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))
        # One subprocess for all assignments (importing nbgrader takes seconds); it runs in
        # the temporary course directory so that nbgrader_config.py and gradebook.db are its own.
        proc = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--in-course-dir", tmp] + assignments,
            cwd=tmp, capture_output=True, text=True,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"nbgrader generate_assignment failed:\n{proc.stdout}\n{proc.stderr}")
        for aid in assignments:
            src = os.path.join(tmp, "exercises", aid)
            dst = os.path.join(out_dir, aid)
            if os.path.isdir(dst):
                shutil.rmtree(dst)
            shutil.copytree(src, dst)
            for dirpath, _, files in os.walk(dst):
                for f in files:
                    if f.endswith(".ipynb"):
                        _normalize(os.path.join(dirpath, f))
    return assignments


def _generate_in_course_dir(course_dir, assignments):
    """What ``nbgrader generate_assignment <id> --force`` does, for several ids in one process."""
    from nbgrader.converters import GenerateAssignment
    from nbgrader.coursedir import CourseDirectory
    from traitlets.config.loader import PyFileConfigLoader

    config = PyFileConfigLoader("nbgrader_config.py", path=course_dir).load_config()
    config.CourseDirectory.root = course_dir
    for aid in assignments:
        coursedir = CourseDirectory(config=config)
        coursedir.assignment_id = aid
        converter = GenerateAssignment(coursedir=coursedir, config=config)
        converter.force = True
        converter.start()
        produced = os.path.join(course_dir, "exercises", aid)
        if not os.path.isdir(produced):
            raise RuntimeError(f"nbgrader produced nothing for {aid}")


def _normalize(path):
    """Rewrite a generated notebook in nbformat's canonical form (stable diffs)."""
    nb = nbformat.read(path, as_version=4)
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        nbformat.write(nb, fh)
    os.chmod(path, 0o644)


def stale(assignments=None, root=ROOT):
    """Return a list of human-readable differences between exercises/ and a fresh generation."""
    problems = []
    with tempfile.TemporaryDirectory(prefix="lossfn-exercises-") as out:
        assignments = generate(out, assignments, root)
        for aid in assignments:
            fresh_dir = os.path.join(out, aid)
            kept_dir = os.path.join(root, "exercises", aid)
            fresh = sorted(os.listdir(fresh_dir))
            kept = sorted(os.listdir(kept_dir)) if os.path.isdir(kept_dir) else []
            if fresh != kept:
                problems.append(f"{aid}: files {kept} != freshly generated {fresh}")
                continue
            for name in fresh:
                a, b = os.path.join(kept_dir, name), os.path.join(fresh_dir, name)
                if name.endswith(".ipynb"):
                    problems += [f"{aid}/{name}: {d}" for d in _notebook_diff(a, b)]
                else:
                    with open(a, "rb") as fa, open(b, "rb") as fb:
                        if fa.read() != fb.read():
                            problems.append(f"{aid}/{name}: content differs")
    return problems


def _notebook_diff(kept_path, fresh_path):
    kept = nbformat.read(kept_path, as_version=4)
    fresh = nbformat.read(fresh_path, as_version=4)
    diffs = []
    if len(kept.cells) != len(fresh.cells):
        diffs.append(f"{len(kept.cells)} cells, freshly generated {len(fresh.cells)}")
    for i, (k, f) in enumerate(zip(kept.cells, fresh.cells)):
        for field in ("cell_type", "source", "metadata"):
            if k.get(field) != f.get(field):
                diffs.append(f"cell {i} ({f.get('id', '?')}): {field} differs")
        if k.get("outputs") or k.get("execution_count"):
            diffs.append(f"cell {i} ({k.get('id', '?')}): committed notebook has outputs")
    if kept.metadata != fresh.metadata:
        diffs.append("notebook metadata differs")
    return diffs


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--in-course-dir"]:          # internal: the worker started by generate()
        _generate_in_course_dir(argv[1], argv[2:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("assignments", nargs="*", help="assignment ids (default: all in solutions/)")
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 when exercises/ differs from a fresh generation")
    args = parser.parse_args(argv)
    if args.check:
        problems = [f"solutions/{c}: test cell differs from the registry's" for c in
                    sync_test_cells(args.assignments or None, write=False)]
        problems += stale(args.assignments or None)
        for p in problems:
            print("stale:", p)
        if problems:
            print("exercises/ is out of date: run python tools/generate_exercises.py")
            return 1
        print("exercises/ is up to date")
        return 0
    synced = sync_test_cells(args.assignments or None)
    if synced:
        print("test cells of solutions/ regenerated from the registry:", " ".join(synced))
    done = generate(os.path.join(ROOT, "exercises"), args.assignments or None)
    print("generated:", " ".join(f"exercises/{a}/" for a in done))
    return 0


if __name__ == "__main__":
    sys.exit(main())
