"""The gradebook writer (lossgrader.gradebook): one writer, nothing lost.

A temporary course holds nbgrader_config.py and solutions/01_overview, to which two
manually graded cells are added (a written answer worth 1 point and a task worth 1 point)
so that the manual-grading rules are exercised.  The assignment is registered once per
module (nbgrader's generate_assignment is slow); each test works on a copy."""
import hashlib
import json
import os
import shutil
import sqlite3

import nbformat
import pytest

pytest.importorskip("nbgrader")

from lossgrader import gradebook as G  # noqa: E402
from lossgrader.results import HandinResult  # noqa: E402
from lossgrader.course import STATUS_FILE  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
A = "01_overview"
TEST = "test_numerical_grad"          # autograded test cell, 2 points
WRITTEN = "answer_explain"            # manually graded written answer (grade + solution), 1 point
TASK = "task_compare"                 # manually graded task, 1 point
MAX = 4.0


def _nbgrader_meta(grade_id, grade=False, solution=False, task=False, locked=False, points=None):
    meta = {"grade": grade, "grade_id": grade_id, "locked": locked, "schema_version": 3,
            "solution": solution, "task": task}
    if points is not None:
        meta["points"] = points
    return {"nbgrader": meta}


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("course"))
    for name in ("nbgrader_config.py", "_config.yml"):
        shutil.copy2(os.path.join(ROOT, name), os.path.join(root, name))
    os.makedirs(os.path.join(root, "tools"))
    shutil.copy2(os.path.join(ROOT, "tools", "stamp_repository.py"), os.path.join(root, "tools"))
    src = os.path.join(root, "solutions", A)
    shutil.copytree(os.path.join(ROOT, "solutions", A), src)
    path = os.path.join(src, A + ".ipynb")
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_markdown_cell(
        "用一句话说明中心差分为什么比单侧差分更精确。",
        metadata=_nbgrader_meta(WRITTEN, grade=True, solution=True, points=1)))
    nb.cells.append(nbformat.v4.new_markdown_cell(
        "任务：比较你的数值梯度与 autograd 的梯度。",
        metadata=_nbgrader_meta(TASK, task=True, locked=True, points=1)))
    nbformat.write(nb, path)
    assert G.register(root, [A]) == [A]
    return root


@pytest.fixture
def course(template, tmp_path):
    root = str(tmp_path / "course")
    shutil.copytree(template, root)
    return root


def _released_notebook(root):
    with open(os.path.join(root, G.SCRATCH_DIR, "release", A, A + ".ipynb"), encoding="utf-8") as fh:
        return fh.read()


def _handed_in(root, answer="中心差分的误差是二阶小量。"):
    """The released notebook, its written answer filled in (answer=None: left as released)."""
    nb = nbformat.reads(_released_notebook(root), as_version=4)
    if answer is not None:
        for cell in nb.cells:
            if cell.metadata.get("nbgrader", {}).get("grade_id") == WRITTEN:
                cell.source = answer
    return nbformat.writes(nb)


def _graded(root, student="alice", test=1.5, written=None, answer="中心差分的误差是二阶小量。", **extra):
    scores = {TEST: test}
    if written is not None:
        scores[WRITTEN] = written
    return HandinResult(student, A, scores=scores, max_scores={TEST: 2.0, WRITTEN: 1.0, TASK: 1.0},
                        notebooks={A: _handed_in(root, answer)}, **extra)


def _grades(root, student):
    """{grade_id: (auto_score, manual_score, score, max_score, needs_manual_grade)} via nbgrader."""
    from nbgrader.api import Gradebook

    with Gradebook(G.db_url(root), "loss-functions-zh") as gb:
        sub = gb.find_submission(A, student)
        return {g.name: (g.auto_score, g.manual_score, g.score, g.max_score, g.needs_manual_grade)
                for nb in sub.notebooks for g in nb.grades}


def _digest(path):
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def test_register_records_the_assignment_once(course):
    assert G.registered_assignments(course) == {A}
    assert G.register(course, [A]) == []                 # already there: nothing written
    assert G.list_backups(course) == []


def test_released_lists_every_cell_in_the_instructor_order(course):
    info = G.released(course, A)
    json.dumps(info)                                      # plain data for a worker
    assert info["max_score"] == MAX
    cells = info["notebooks"][A]["cells"]
    by_name = {c["name"]: c for c in cells}
    assert [c["name"] for c in cells] == ["setup", "answer_numerical_grad", TEST, WRITTEN, TASK]
    assert [c["position"] for c in cells] == sorted(c["position"] for c in cells)
    assert by_name["setup"]["kind"] == "locked" and by_name["setup"]["locked"]
    assert "@REPOSITORY_URL@" not in by_name["setup"]["source"]      # the stamped, released source
    assert by_name["answer_numerical_grad"]["kind"] == "solution"
    assert by_name["answer_numerical_grad"]["points"] is None
    assert by_name[TEST]["kind"] == "grade" and by_name[TEST]["points"] == 2.0
    assert "### BEGIN HIDDEN TESTS" in by_name[TEST]["source"]       # the worker restores hidden tests
    assert by_name[WRITTEN]["kind"] == "grade+solution" and by_name[WRITTEN]["cell_type"] == "markdown"
    assert by_name[TASK]["kind"] == "task" and by_name[TASK]["points"] == 1.0
    assert all(len(c["checksum"]) == 32 for c in cells)


def test_written_result_reads_back_through_nbgrader(course):
    from nbgrader.api import Gradebook

    G.write_result(G.db_url(course), _graded(course, test=1.5), timestamp="2026-11-20 10:00:00 UTC")
    grades = _grades(course, "alice")
    assert grades[TEST] == (1.5, None, 1.5, 2.0, False)
    # the written answer was filled in and the result gives it no score: the instructor grades it
    assert grades[WRITTEN][0] is None and grades[WRITTEN][4] is True and grades[WRITTEN][3] == 1.0
    assert grades[TASK][0] is None and grades[TASK][4] is True
    with Gradebook(G.db_url(course), "loss-functions-zh") as gb:
        sub = gb.find_submission(A, "alice")
        assert (sub.score, sub.max_score, sub.needs_manual_grade) == (1.5, MAX, True)
        assert sub.timestamp.isoformat() == "2026-11-20T10:00:00"
        comment = gb.find_comment("answer_numerical_grad", A, A, "alice")
        assert comment.auto_comment == "No response."     # the released stub was handed in unchanged
        assert gb.find_comment(WRITTEN, A, A, "alice").auto_comment is None
    assert G.submission_scores(G.db_url(course), A, "alice") == (1.5, MAX, {TEST: 1.5, WRITTEN: 0.0, TASK: 0.0})


def test_an_unanswered_written_question_gets_zero_as_nbgrader_gives(course):
    from nbgrader import utils
    from nbgrader.api import Gradebook

    G.write_result(G.db_url(course), _graded(course, test=2.0, answer=None))
    nb = nbformat.reads(_handed_in(course, None), as_version=4)
    cell = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == WRITTEN)
    assert utils.determine_grade(cell) == (0, 1.0)        # nbgrader's own verdict on this cell
    assert _grades(course, "alice")[WRITTEN] == (0.0, None, 0.0, 1.0, False)
    with Gradebook(G.db_url(course), "loss-functions-zh") as gb:
        assert gb.find_comment(WRITTEN, A, A, "alice").auto_comment == "No response."
    nb.cells.remove(cell)                                 # a deleted answer is no answer either
    G.write_result(G.db_url(course), HandinResult("alice", A, scores={TEST: 2.0}, notebooks={A: nbformat.writes(nb)}))
    assert _grades(course, "alice")[WRITTEN][0] == 0.0


def test_nbgrader_feedback_and_export_read_the_written_rows(course):
    from nbgrader.api import Gradebook
    from nbgrader.plugins import CsvExportPlugin
    from nbgrader.preprocessors import GetGrades

    G.write_result(G.db_url(course), _graded(course, test=2.0, written=0.5))
    nb = nbformat.reads(_released_notebook(course), as_version=4)
    resources = {"nbgrader": {"notebook": A, "assignment": A, "student": "alice", "db_url": G.db_url(course)}}
    nb, resources = GetGrades().preprocess(nb, resources)
    assert resources["nbgrader"]["score"] == 2.5 and resources["nbgrader"]["max_score"] == MAX
    scored = {c.metadata.nbgrader["grade_id"]: c.metadata.nbgrader.get("score")
              for c in nb.cells if "nbgrader" in c.metadata}
    assert scored[TEST] == 2.0 and scored[WRITTEN] == 0.5
    out = os.path.join(course, "grades.csv")
    with Gradebook(G.db_url(course), "loss-functions-zh") as gb:
        CsvExportPlugin(to=out).export(gb)
    with open(out, encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    header = lines[0].split(",")
    row = dict(zip(header, lines[1].split(",")))
    assert row["student_id"] == "alice" and float(row["raw_score"]) == 2.5 and float(row["max_score"]) == MAX


def test_failed_result_gives_explicit_zeros(course):
    url = G.db_url(course)
    G.write_result(url, _graded(course, test=2.0, written=1.0))
    G.write_result(url, HandinResult.failure("alice", A, "x.ipynb is not valid JSON", {TEST: 2.0}))
    for name, (auto, manual, score, _, needs_manual) in _grades(course, "alice").items():
        assert auto == 0.0 and manual is None and score == 0.0 and needs_manual is False, name
    G.write_result(url, HandinResult.failure("bob", A, "time limit exceeded"))      # a new student
    assert G.submission_scores(url, A, "bob") == (0.0, MAX, {TEST: 0.0, WRITTEN: 0.0, TASK: 0.0})


def test_manual_scores_are_kept(course):
    from nbgrader.api import Gradebook

    url = G.db_url(course)
    G.write_result(url, _graded(course, test=0.5))
    with Gradebook(url, "loss-functions-zh") as gb:
        gb.find_grade(TEST, A, A, "alice").manual_score = 1.75      # the instructor overrides
        gb.find_grade(WRITTEN, A, A, "alice").manual_score = 1.0
        gb.db.commit()
    G.write_result(url, _graded(course, test=1.0))
    grades = _grades(course, "alice")
    assert grades[TEST][:3] == (1.0, 1.75, 1.75) and grades[TEST][4] is True   # flagged for review
    assert grades[WRITTEN][1:3] == (1.0, 1.0)
    G.write_result(url, HandinResult.failure("alice", A, "worker died"))
    assert _grades(course, "alice")[WRITTEN][1:3] == (1.0, 1.0)


def test_second_write_replaces_the_auto_scores(course):
    url = G.db_url(course)
    G.write_result(url, _graded(course, test=2.0, written=1.0))
    G.write_result(url, _graded(course, test=0.25))
    grades = _grades(course, "alice")
    assert grades[TEST][0] == 0.25 and grades[WRITTEN][0] is None
    G.write_result(url, _graded(course, test=1.0, written=0.0))
    assert G.submission_scores(url, A, "alice")[0] == 1.0


def test_a_write_that_fails_midway_leaves_the_previous_grades(course, monkeypatch):
    url = G.db_url(course)
    G.write_result(url, _graded(course, test=2.0, written=1.0), timestamp="2026-11-20 10:00:00 UTC")
    before = _grades(course, "alice")
    calls = []
    real = G._apply_grade

    def fail_on_second_cell(grade, score, failed):
        calls.append(score)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        real(grade, score, failed)

    monkeypatch.setattr(G, "_apply_grade", fail_on_second_cell)
    with pytest.raises(RuntimeError, match="disk full"):
        G.write_result(url, HandinResult.failure("alice", A, "worker died"), timestamp="2026-11-28 10:00:00 UTC")
    assert len(calls) == 2
    assert _grades(course, "alice") == before
    calls.clear()
    with pytest.raises(RuntimeError):                       # a new student: no half-made submission
        G.write_result(url, _graded(course, student="carol", test=1.0))
    assert G.submission_scores(url, A, "carol") is None
    with sqlite3.connect(G.sqlite_path(url)) as con:
        assert con.execute("SELECT count(*) FROM student WHERE id = 'carol'").fetchone()[0] == 0


@pytest.mark.parametrize("scores, words", [
    ({TEST: 2.5}, "outside"),
    ({TEST: -1.0}, "outside"),
    ({TEST: float("nan")}, "outside"),
    ({WRITTEN: 1.0}, "no score for the test cell"),
    ({TEST: 1.0, "test_forged": 1.0}, "does not know"),
    ({TEST: "full"}, "not a number"),
])
def test_a_result_that_does_not_fit_is_refused_whole(course, scores, words):
    url = G.db_url(course)
    G.write_result(url, _graded(course, test=1.0))
    before = _grades(course, "alice")
    with pytest.raises(G.InvalidResult, match=words):
        G.write_result(url, HandinResult("alice", A, scores=scores))
    assert _grades(course, "alice") == before


def test_readers_never_write(course):
    url = G.db_url(course)
    G.write_result(url, _graded(course, test=1.0))
    path = G.sqlite_path(url)
    digest = _digest(path)
    # another connection holds the write lock: readers still answer, and change nothing
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        assert G.registered_assignments(course) == {A}
        assert G.submission_scores(url, A, "alice")[0] == 1.0
        assert G.released(course, A)["max_score"] == MAX
        rows = G.grade_rows(course)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert [(r["student_id"], r["score"], r["status"]) for r in rows] == [("alice", 1.0, "needs manual grading")]
    assert _digest(path) == digest


def test_readers_of_a_new_course_create_nothing(tmp_path):
    root = str(tmp_path)
    shutil.copy2(os.path.join(ROOT, "nbgrader_config.py"), root)
    os.makedirs(os.path.join(root, "tools"))
    shutil.copy2(os.path.join(ROOT, "tools", "stamp_repository.py"), os.path.join(root, "tools"))
    assert G.registered_assignments(root) == set()
    assert G.grade_rows(root) == []
    assert G.submission_scores(G.db_url(root), A, "alice") is None
    assert G.backup(root) is None
    assert not os.path.exists(os.path.join(root, G.GRADEBOOK_FILE))


def test_grade_rows_report_failures_and_missing_hand_ins(course):
    url = G.db_url(course)
    G.write_result(url, _graded(course, test=2.0, written=1.0))
    G.write_result(url, HandinResult.failure("bob", A, "time limit exceeded"))
    os.makedirs(os.path.join(course, "submitted", "dave", A))
    with open(os.path.join(course, STATUS_FILE), "w", encoding="utf-8") as fh:
        json.dump({f"bob/{A}": {"status": "failed", "reason": "time limit exceeded"}}, fh)
    rows = {r["student_id"]: r for r in G.grade_rows(course)}
    assert rows["alice"]["score"] == 3.0 and rows["alice"]["status"] == "needs manual grading"
    assert rows["bob"]["score"] == 0.0 and rows["bob"]["status"] == "failed"
    assert rows["bob"]["reason"] == "time limit exceeded"
    assert rows["dave"]["status"] == "missing" and rows["dave"]["max_score"] == MAX


def test_backup_and_restore_round_trip(course):
    url = G.db_url(course)
    G.write_result(url, _graded(course, test=2.0))
    first = G.backup(course)
    assert os.path.dirname(first) == os.path.join(course, G.BACKUP_DIR)
    assert os.path.basename(first).startswith("gradebook-") and first.endswith("Z.db")
    G.write_result(url, _graded(course, test=0.0))
    assert G.submission_scores(url, A, "alice")[0] == 0.0
    assert G.restore(course) == first
    assert G.submission_scores(url, A, "alice")[0] == 2.0
    backups = G.list_backups(course)
    assert len(backups) == 2 and backups[1] == first       # the replaced gradebook is the newest backup
    G.restore(course)                                       # restore again: undo the restore
    assert G.submission_scores(url, A, "alice")[0] == 0.0
    G.restore(course, os.path.basename(first))              # by name
    assert G.submission_scores(url, A, "alice")[0] == 2.0
    with pytest.raises(G.GradebookError, match="No backup named"):
        G.restore(course, "gradebook-19990101T000000.000000Z.db")


def test_a_deleted_gradebook_is_not_started_afresh(course):
    url = G.db_url(course)
    G.write_result(url, _graded(course, test=2.0))
    G.backup(course)
    os.remove(G.sqlite_path(url))                       # e.g. a hand-in run without the sandbox
    calls = [
        lambda: G.registered_assignments(course),
        lambda: G.register(course, [A]),
        lambda: G.grade_rows(course),
        lambda: G.write_result(url, _graded(course, test=1.0)),
        lambda: G.backup(course),
    ]
    for call in calls:
        with pytest.raises(G.GradebookError, match="is missing, but 1 backup of it is in"):
            call()
        assert not os.path.exists(G.sqlite_path(url))
    G.restore(course)
    assert G.submission_scores(url, A, "alice")[0] == 2.0
    assert G.list_backups(course, broken=True) == []


def test_backups_have_unique_names_and_only_the_newest_are_kept(course):
    made = [G.backup(course, keep=3) for _ in range(5)]
    assert len(set(made)) == 5
    assert G.list_backups(course) == made[:-4:-1]


def _garbage(path):
    with open(path, "wb") as fh:
        fh.write(b'{"cells": []}\n' + bytes(range(256)) * 8)


def _truncated(path):
    size = os.path.getsize(path)
    with open(path, "r+b") as fh:
        fh.truncate(size // 2)


def _zero_bytes(path):
    open(path, "wb").close()


def _empty_sqlite(path):
    os.remove(path)
    sqlite3.connect(path).close()
    with sqlite3.connect(path) as con:          # a valid database without any table
        con.execute("PRAGMA user_version = 1")


def _foreign_sqlite(path):
    os.remove(path)
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
        con.execute("INSERT INTO notes (text) VALUES ('not a gradebook')")


def _btree_page(path):
    """Scramble one b-tree page in the middle of the file: the header, the size and the schema
    (page 1) stay intact, so only SQLite's own check of the pages can tell."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        page_size = con.execute("PRAGMA page_size").fetchone()[0]
        pages = con.execute("PRAGMA page_count").fetchone()[0]
        roots = [r for (r,) in con.execute("SELECT rootpage FROM sqlite_master WHERE rootpage > 1")]
    finally:
        con.close()
    page = min(roots, key=lambda r: abs(r - pages / 2))
    assert 1 < page < pages
    with open(path, "r+b") as fh:
        fh.seek((page - 1) * page_size)
        fh.write(bytes((7 * i + 1) % 256 for i in range(page_size)))     # page type 1: no such b-tree page


@pytest.mark.parametrize("damage, words", [
    (_btree_page, "SQLite reports it damaged"),
    (_garbage, "not an SQLite database"),
    (_truncated, "truncated"),
    (_zero_bytes, "empty"),
    (_empty_sqlite, "without any table"),
    (_foreign_sqlite, "without nbgrader's tables"),
])
def test_an_unreadable_gradebook_is_reported_and_never_touched(course, damage, words):
    url = G.db_url(course)
    G.write_result(url, _graded(course, test=2.0))
    saved = G.backup(course)
    path = G.sqlite_path(url)
    damage(path)
    digest = _digest(path)
    with pytest.raises(G.GradebookError) as info:
        G.check_readable(url)
    message = str(info.value)
    assert words in message and path in message and "lossgrader restore" in message
    calls = [
        lambda: G.registered_assignments(course),
        lambda: G.register(course, [A], force=True),
        lambda: G.released(course, A),
        lambda: G.submission_scores(url, A, "alice"),
        lambda: G.grade_rows(course),
        lambda: G.write_result(url, _graded(course, test=1.0)),
        lambda: G.write_result(url, HandinResult.failure("alice", A, "worker died")),
        lambda: G.backup(course),
    ]
    for call in calls:
        with pytest.raises(G.GradebookError):
            call()
        assert _digest(path) == digest
    assert not any(os.path.exists(path + s) for s in ("-journal", "-wal"))
    assert G.list_backups(course) == [saved]
    # restore brings the backup back and keeps the damaged file, byte for byte
    assert G.restore(course) == saved
    assert G.submission_scores(url, A, "alice")[0] == 2.0
    broken = G.list_backups(course, broken=True)
    assert len(broken) == 1 and _digest(broken[0]) == digest


def test_a_damaged_backup_is_not_restored(course):
    url = G.db_url(course)
    G.write_result(url, _graded(course, test=2.0))
    saved = G.backup(course)
    _garbage(saved)
    digest = _digest(G.sqlite_path(url))
    with pytest.raises(G.GradebookError, match="not a readable gradebook either"):
        G.restore(course)
    assert _digest(G.sqlite_path(url)) == digest


def test_timestamp_comes_from_the_hand_in(course):
    d = os.path.join(course, "submitted", "alice", A)
    os.makedirs(d)
    assert G.submission_timestamp(course, "alice", A) is None
    with open(os.path.join(d, "timestamp.txt"), "w", encoding="utf-8") as fh:
        fh.write("2026-11-21 08:30:00.000000 UTC\n")
    stamp = G.submission_timestamp(course, "alice", A)
    G.write_result(G.db_url(course), _graded(course), timestamp=stamp)
    from nbgrader.api import Gradebook

    with Gradebook(G.db_url(course), "loss-functions-zh") as gb:
        assert gb.find_submission(A, "alice").timestamp.isoformat() == "2026-11-21T08:30:00"
    with open(os.path.join(d, "timestamp.txt"), "w", encoding="utf-8") as fh:
        fh.write("not a date")
    assert G.submission_timestamp(course, "alice", A) is None


def test_nbgrader_generate_feedback_reads_the_written_rows(course):
    from nbgrader.converters import GenerateFeedback
    from nbgrader.coursedir import CourseDirectory

    G.write_result(G.db_url(course), _graded(course, test=1.5, written=1.0))
    autograded = os.path.join(course, "autograded", "alice", A)
    os.makedirs(autograded)
    with open(os.path.join(autograded, A + ".ipynb"), "w", encoding="utf-8") as fh:
        fh.write(_released_notebook(course))
    cfg = G.course_config(course)
    cfg.CourseDirectory.assignment_id = A
    cfg.CourseDirectory.student_id = "alice"
    # nbgrader's own page (the course's config writes lossgrader's: tests/test_nbgrader_paths.py)
    cfg.GenerateFeedback.exporter_class = "nbconvert.exporters.HTMLExporter"
    converter = GenerateFeedback(coursedir=CourseDirectory(config=cfg), config=cfg)
    converter.force = True
    converter.start()
    with open(os.path.join(course, "feedback", "alice", A, A + ".html"), encoding="utf-8") as fh:
        page = fh.read()
    for shown in ("Score: 2.5 / 4.0", "Score: 1.5 / 2.0", "Score: 1.0 / 1.0"):   # total, test, written
        assert shown in page


KILLED_WRITER = r"""
import os, signal, sqlite3, sys
con = sqlite3.connect(sys.argv[1], isolation_level=None)
con.execute("PRAGMA cache_size = 1")              # spill changed pages to the file at once
con.execute("BEGIN IMMEDIATE")
con.execute("UPDATE grade SET auto_score = 0.0")
con.execute("CREATE TABLE junk (x BLOB)")
con.executemany("INSERT INTO junk VALUES (?)", [(b"x" * 1000,) for _ in range(2000)])
os.kill(os.getpid(), signal.SIGKILL)              # killed before COMMIT
"""


def test_a_writer_killed_mid_write_loses_nothing_committed(course):
    import subprocess
    import sys

    url = G.db_url(course)
    G.write_result(url, _graded(course, test=2.0))
    path = G.sqlite_path(url)
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, path])
    assert proc.returncode == -9
    assert os.path.getsize(path + "-journal") > 0           # a hot journal: the file holds half a write
    with pytest.raises(sqlite3.OperationalError):            # what a plain read-only reader would hit
        sqlite3.connect(f"file:{path}?mode=ro", uri=True).execute("SELECT count(*) FROM grade").fetchone()
    G.check_readable(url)
    assert G.submission_scores(url, A, "alice")[0] == 2.0
    assert G.backup(course) is not None
    with sqlite3.connect(path) as con:
        assert con.execute("SELECT count(*) FROM sqlite_master WHERE name = 'junk'").fetchone()[0] == 0


def test_readers_and_the_writer_run_side_by_side(course):
    import subprocess
    import sys

    url = G.db_url(course)
    G.write_result(url, _graded(course, test=0.0))
    reader = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\n"
         "from lossgrader import gradebook as G\n"
         "root = sys.argv[1]; G.grade_rows(root); print('ready', flush=True)\n"
         "n, t = 0, time.monotonic()\n"
         "while time.monotonic() - t < 3:\n"
         "    G.grade_rows(root); G.submission_scores(G.db_url(root), '01_overview', 'alice'); n += 1\n"
         "print(n)\n", course],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert reader.stdout.readline().strip() == "ready", reader.communicate()[1][-2000:]
    written = 0
    while reader.poll() is None and written < 40:      # writes while the reader reads
        G.write_result(url, _graded(course, student=f"s{written % 7}", test=(written % 5) * 0.5))
        written += 1
    out, err = reader.communicate(timeout=120)
    assert reader.returncode == 0, err[-2000:]
    assert int(out) > 0 and written > 5
    assert sorted(r["student_id"] for r in G.grade_rows(course)) == ["alice"] + [f"s{i}" for i in range(7)]
