"""``lossgrader restore`` as an instructor uses it: ``--list`` says when each backup was
taken and which batch it preceded, oldest first and newest last (as its help says), and
after a restore that took grades away every command gives a message, never a traceback
(``lossgrader feedback`` printed a 60-line ``MissingEntry`` traceback).

A real course: two hand-ins of the sample class collected from a shared folder, graded by
``lossgrader autograde`` (a batch for both, then one for alice alone), every command run
as the instructor runs it (``python -m lossgrader.cli`` in a child process)."""
import csv
import os
import re
import shutil
import subprocess
import sys

import pytest

from course_copy import copy_course

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
B = "01_overview"
LINE = re.compile(r"^(gradebook-\d{8}T\d{6}\.\d{6}Z(?:-\d+)?\.db)  (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \S+)  (.*)$")


def _cli(root, *args, timeout=600):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), LOSSGRADER_DEVICE="cpu")
    return subprocess.run([sys.executable, "-m", "lossgrader.cli", "--course", root, *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _ok(proc):
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-4000:]
    return proc


def _listing(root):
    proc = _ok(_cli(root, "restore", "--list"))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "oldest first" in lines[0]
    return [LINE.match(line).groups() for line in lines[1:]]


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    pytest.importorskip("nbgrader")
    base = tmp_path_factory.mktemp("restore")
    root = copy_course(base / "course", [B], exercises=False)
    shared = base / "shared"
    for student, sample in (("alice", "demo_bugs"), ("bob", "demo_full")):
        os.makedirs(shared / student / B)
        shutil.copy2(os.path.join(ROOT, "samples", "submitted", sample, B, B + ".ipynb"), shared / student / B)
    assert _ok(_cli(root, "collect", str(shared))).returncode == 0
    assert _ok(_cli(root, "autograde", "--quiet")).returncode == 0
    assert _ok(_cli(root, "autograde", "--quiet", "--student", "alice")).returncode == 0
    assert _ok(_cli(root, "feedback")).returncode == 0
    return root


def test_list_shows_each_backups_time_and_the_batch_it_preceded_oldest_first(course):
    listing = _listing(course)
    assert len(listing) == 2
    (first, t1, what1), (second, t2, what2) = listing
    assert first < second and t1 <= t2              # oldest first, newest last
    assert what1 == f"before an autograde batch; graded after it: 2 hand-ins (alice/{B}, bob/{B})"
    assert what2 == f"before an autograde batch; graded after it: 1 hand-in (alice/{B})"
    proc = _cli(course, "restore", "--help")
    assert "oldest first and newest last" in " ".join(proc.stdout.split())


def test_no_command_gives_a_traceback_after_a_restore_that_took_grades_away(course):
    (first, _, _), _ = _listing(course)
    proc = _ok(_cli(course, "restore", first))
    assert proc.returncode == 0 and f"restored {os.path.join(course, '.lossgrader', 'backups', first)}" in proc.stdout
    assert "before an autograde batch" in proc.stdout
    # the gradebook of before the first batch: alice and bob have no grades there
    proc = _ok(_cli(course, "feedback"))
    assert proc.returncode == 0
    for student in ("alice", "bob"):
        assert f"feedback: {student}/{B} skipped: its grades are not in the gradebook" in proc.stderr
        assert f"lossgrader autograde {B} --student {student}" in proc.stderr
    proc = _ok(_cli(course, "export"))
    assert proc.returncode == 0
    with open(os.path.join(course, "grades.csv"), newline="", encoding="utf-8") as fh:
        rows = {r["student_id"]: r for r in csv.DictReader(fh)}
    assert rows["alice"]["status"] == "missing" and rows["alice"]["reason"].startswith("not graded: in submitted/")
    for args in (("export", "--format", "canvas"), ("export", "--format", "moodle"), ("report",),
                 ("restore", "--list")):
        proc = _ok(_cli(course, *args))
        assert proc.returncode in (0, 1), (args, proc.stderr)
    # the restore's own backup says so, and nothing was graded after it
    last = _listing(course)[-1]
    assert last[2] == f"before lossgrader restore {first}; nothing graded after it"
    # grading again brings everything back
    assert _ok(_cli(course, "autograde", "--quiet")).returncode == 0
    proc = _ok(_cli(course, "feedback"))
    assert proc.returncode == 0 and "skipped" not in proc.stderr
    assert _listing(course)[-1][2] == f"before an autograde batch; graded after it: 2 hand-ins (alice/{B}, bob/{B})"
