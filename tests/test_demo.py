"""``lossgrader demo`` grades the sample class in a scratch course of its own (issue 14, item 8).

The course the demo is started from keeps every file as it was (its submitted/, gradebook,
grades.csv, feedback/, report/: nothing is added, changed or removed outside _build/); the
scratch course, _build/demo-course/, holds the grades, the feedback pages and the class
report, which the demo names; the command ends with the grade table.
"""
import hashlib
import os
import shutil

import pytest

pytest.importorskip("nbgrader")

from lossgrader import gradebook  # noqa: E402
from lossgrader.cli import main as cli_main  # noqa: E402
from lossgrader.demo import DEMO_DIR, MARKER, DemoError, demo_course  # noqa: E402

from course_copy import copy_course  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
A = "01_overview"
SAMPLES = ("demo_bugs", "demo_full", "demo_unfinished")


def _course(dest):
    """A course with the sample class of one assignment, a gradebook and a hand-in of its own."""
    root = copy_course(dest, [A])
    for student in SAMPLES:
        shutil.copytree(os.path.join(ROOT, "samples", "submitted", student, A),
                        os.path.join(root, "samples", "submitted", student, A))
    shutil.copytree(os.path.join(ROOT, "samples", "submitted", "demo_bugs", A),
                    os.path.join(root, "submitted", "li_lei", A))
    gradebook.register(root, [A])
    return root


def _snapshot(root):
    """{path: sha256} of every file of the course outside _build/."""
    files = {}
    for folder, dirs, names in os.walk(root):
        if os.path.relpath(folder, root) == ".":
            dirs[:] = [d for d in dirs if d != "_build"]
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as fh:
                files[os.path.relpath(path, root)] = hashlib.sha256(fh.read()).hexdigest()
    return files


def test_demo_grades_in_a_scratch_course_and_leaves_the_course_alone(tmp_path, capsys, monkeypatch):
    root = _course(tmp_path / "course")
    before = _snapshot(root)
    assert "gradebook.db" in before and f"submitted/li_lei/{A}/{A}.ipynb" in before
    monkeypatch.chdir(root)

    assert cli_main(["demo", "-j", "2"]) == 0
    out, err = capsys.readouterr()

    assert _snapshot(root) == before                      # nothing added, changed or removed
    where = os.path.join(root, DEMO_DIR)
    assert f"{DEMO_DIR}/" in err and "not touched" in err
    # the scratch course: its own gradebook with the sample class, and what the demo says it wrote
    assert sorted(os.listdir(os.path.join(where, "submitted"))) == list(SAMPLES)
    rows = {r["student_id"]: r for r in gradebook.grade_rows(where)}
    assert sorted(rows) == list(SAMPLES) and rows["demo_full"]["score"] == 2.0
    written = [os.path.join(DEMO_DIR, "grades.csv"), os.path.join(DEMO_DIR, "report", "index.html")]
    written += [os.path.join(DEMO_DIR, "feedback", s, A, A + ".html") for s in SAMPLES]
    for path in written:
        assert os.path.isfile(os.path.join(root, path)), path
        assert path in err, path
    # the command ends with the grade table
    table = out.strip().splitlines()
    assert table[0].split()[:2] == ["student", A] and [line.split()[0] for line in table[2:5]] == list(SAMPLES)
    assert "demo_full" in table[3] and "2/2" in table[3]

    # every run starts from a fresh scratch course
    with open(os.path.join(where, "stray.txt"), "w", encoding="utf-8") as fh:
        fh.write("left from an earlier run")
    assert demo_course(root) == where
    assert not os.path.exists(os.path.join(where, "stray.txt")) and os.path.isfile(os.path.join(where, MARKER))
    assert not os.path.exists(os.path.join(where, "gradebook.db"))
    assert _snapshot(root) == before


def test_demo_never_removes_a_folder_it_did_not_make(tmp_path):
    root = _course(tmp_path / "course")
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "keep.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(DemoError, match="not a demo course"):
        demo_course(root, str(mine))
    assert (mine / "keep.txt").read_text(encoding="utf-8") == "mine"
    with pytest.raises(DemoError, match="holds the course"):
        demo_course(root, str(tmp_path))
    assert os.path.isfile(os.path.join(root, "gradebook.db"))
