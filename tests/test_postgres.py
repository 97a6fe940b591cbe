"""The gradebook on a real PostgreSQL server (issue 10, item 2).

A throw-away server (tests/pgserver.py: initdb + pg_ctl from Debian's ``postgresql`` package
in a temporary folder) holds the gradebook of a course copy whose nbgrader_config.py sets
``c.CourseDirectory.db_url``.  Two hand-ins of 02_regression are graded on it and on the
SQLite default; autograde, feedback, export, the status file and ``grade_rows`` (what the
class report reads) must agree.  A server that cannot be reached or a garbage URL is a clear
error that writes nothing; a second write of a hand-in replaces its scores; backups are
pg_dump archives; restore refuses.  Skipped only when the PostgreSQL binaries are missing.
"""
import csv
import os
import re
import shutil
import subprocess
import sys

import pytest

pytest.importorskip("nbgrader")

import pgserver  # noqa: E402
from course_copy import copy_course  # noqa: E402
from lossgrader import course, gradebook  # noqa: E402
from lossgrader.autograde import autograde, record  # noqa: E402
from lossgrader.cli import main as cli_main  # noqa: E402
from lossgrader.export import export  # noqa: E402
from lossgrader.feedback import feedback  # noqa: E402
from lossgrader.results import HandinResult  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
A = "02_regression"
STUDENTS = ("demo_full", "demo_bugs")
BROKEN = "x_broken"                 # a hand-in that is not a notebook: an explicit 0 and a failed page
HANDINS = STUDENTS + (BROKEN,)
CELL_TIMEOUT = 60

if pgserver.find_binaries() is None:
    pytestmark = pytest.mark.skip(reason=pgserver.MISSING)


def _sandbox():
    """Grade in the sandbox unless bubblewrap is not installed at all."""
    return shutil.which("bwrap") is not None


@pytest.fixture(scope="module")
def server():
    srv = pgserver.PostgresServer().start()
    try:
        yield srv
    finally:
        gradebook.dispose_engines()
        srv.stop()


def _course(root, url=None):
    """A course copy with 02_regression and the two sample hand-ins; db_url set when given."""
    copy_course(root, [A], db_url=url)
    for student in STUDENTS:
        shutil.copytree(os.path.join(ROOT, "samples", "submitted", student, A),
                        os.path.join(root, "submitted", student, A))
    os.makedirs(os.path.join(root, "submitted", BROKEN, A))
    with open(os.path.join(root, "submitted", BROKEN, A, A + ".ipynb"), "w", encoding="utf-8") as fh:
        fh.write('{"cells": [')
    return root


def _grade(root):
    return autograde(root, cell_timeout=CELL_TIMEOUT, progress=False, jobs=2, sandbox=_sandbox())


def _cells(root):
    return {s: gradebook.submission_scores(gradebook.db_url(root), A, s) for s in HANDINS}


def _same(found, expected):
    """Equal submission_scores: every cell's score exactly, the totals up to rounding (the
    database sums the cells, and PostgreSQL's sum of floats depends on the rows' order)."""
    return (found is not None and found[2] == expected[2]
            and found[:2] == pytest.approx(expected[:2], rel=0, abs=1e-9))


def _files(root):
    found = set()
    for top, dirs, files in os.walk(root):
        found |= {os.path.relpath(os.path.join(top, f), root) for f in files}
    return found


@pytest.fixture(scope="module")
def graded(server, tmp_path_factory):
    """The same two hand-ins graded with the SQLite default and with PostgreSQL."""
    url = server.create_database("course")
    sqlite_root = _course(str(tmp_path_factory.mktemp("sqlite")))
    pg_root = _course(str(tmp_path_factory.mktemp("pg")), url)
    results = {"sqlite": _grade(sqlite_root), "pg": _grade(pg_root)}
    return {"url": url, "sqlite": sqlite_root, "pg": pg_root, "results": results}


def test_the_course_uses_the_server_and_no_sqlite_file(graded, server):
    assert gradebook.db_url(graded["pg"]) == graded["url"]
    assert not os.path.exists(os.path.join(graded["pg"], "gradebook.db"))
    rows = server.query("course", "SELECT student_id FROM submitted_assignment ORDER BY student_id")
    assert [r[0] for r in rows] == sorted(HANDINS)


def test_grades_are_those_of_the_sqlite_run(graded):
    sqlite_cells, pg_cells = _cells(graded["sqlite"]), _cells(graded["pg"])
    for student in HANDINS:
        assert pg_cells[student] is not None
        assert _same(pg_cells[student], sqlite_cells[student]), student
    full, bugs = pg_cells["demo_full"], pg_cells["demo_bugs"]
    assert full[0] == full[1] > 0                       # the full sample scores everything
    assert 0 < bugs[0] < bugs[1]                        # the buggy one loses points
    assert pg_cells[BROKEN][0] == 0 and set(pg_cells[BROKEN][2].values()) == {0.0}
    for student in HANDINS:
        entry = graded["results"]["pg"][(student, A)]
        assert entry["status"] == ("failed" if student == BROKEN else "autograded"), entry
        assert entry == {**graded["results"]["sqlite"][(student, A)],
                         "seconds": entry["seconds"], "time": entry["time"], "timings": entry["timings"]}


def test_export_and_grade_rows_match_the_sqlite_run(graded):
    def strip(rows):
        return sorted(tuple(sorted(r.items())) for r in rows)

    pg_rows = gradebook.grade_rows(graded["pg"])
    assert {(r["student_id"], r["assignment"]) for r in pg_rows} == {(s, A) for s in HANDINS}
    assert next(r for r in pg_rows if r["student_id"] == BROKEN)["status"] == "failed"
    assert strip(pg_rows) == strip(gradebook.grade_rows(graded["sqlite"]))
    path, rows = export(graded["pg"])
    with open(path, newline="", encoding="utf-8") as fh:
        written = list(csv.DictReader(fh))
    assert len(written) == len(HANDINS)
    assert {r["student_id"]: float(r["score"]) for r in written} == \
        {r["student_id"]: r["score"] for r in rows}
    status = course.read_status(graded["pg"])            # what the class report reads besides grade_rows
    assert {k: v["score"] for k, v in status.items()} == {f"{r['student_id']}/{A}": r["score"] for r in pg_rows}


def _scores_shown(page):
    """Every "score / points" the page shows (total and per test cell), in order."""
    text = re.sub(r"<[^>]+>", " ", page)
    return re.findall(r"(\d+(?:\.\d+)?) / (\d+(?:\.\d+)?)", text)


def test_the_class_report_reads_the_same_class_from_the_server(graded):
    from lossgrader import classreport

    data = {kind: classreport.gather(graded[kind]) for kind in ("sqlite", "pg")}
    assert len(data["pg"].handins) == len(HANDINS)
    for summary in (classreport.assignment_summary, classreport.exercise_summary, classreport.mistakes,
                    classreport.failed_cases):
        assert summary(data["pg"]) == summary(data["sqlite"]), summary.__name__
    failed = {kind: [{k: v for k, v in f.items() if k != "seconds"} for f in classreport.failed_handins(data[kind])]
              for kind in data}
    assert [f["student"] for f in failed["pg"]] == [BROKEN] and failed["pg"] == failed["sqlite"]
    assert {h.student: h.cells for h in data["pg"].handins} == \
        {s: c[2] for s, c in _cells(graded["pg"]).items()}


def test_feedback_pages_are_written_from_the_server(graded):
    pages = {}
    for kind in ("sqlite", "pg"):
        root = graded[kind]
        written = feedback(root, progress=False)
        assert sorted(os.path.relpath(p, root) for p in written) == \
            [os.path.join("feedback", s, A, A + ".html") for s in sorted(HANDINS)]
        for student in HANDINS:
            with open(os.path.join(root, "feedback", student, A, A + ".html"), encoding="utf-8") as fh:
                pages[kind, student] = fh.read()
    for student in HANDINS:
        shown = _scores_shown(pages["pg", student])
        score, max_score, cells = _cells(graded["pg"])[student]
        # nbgrader's GetGrades (graded) or Gradebook (failed page) read the scores from the server
        assert (f"{round(score, 2):g}", f"{max_score:g}") in shown, shown
        assert len(shown) >= (len(cells) if student != BROKEN else 1)
        assert shown == _scores_shown(pages["sqlite", student])


def test_nbgrader_itself_reads_the_rows(graded):
    from nbgrader.api import Gradebook

    with Gradebook(graded["url"]) as gb:
        for student in HANDINS:
            sub = gb.find_submission(A, student)
            assert sub.score == _cells(graded["pg"])[student][0]


def _restore_dump(server, dump, database):
    server.create_database(database)
    target = server.url(database).replace("+psycopg", "")             # libpq's own URL
    proc = subprocess.run(["pg_restore", "--no-owner", "--dbname", target, dump], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_batches_are_backed_up_with_pg_dump(graded, server):
    if shutil.which("pg_dump") is None:
        pytest.skip("pg_dump is not installed")
    before_batch = gradebook.list_backups(graded["pg"])
    assert before_batch and all(d.endswith(".pgdump") for d in before_batch)
    # the batch's backup was taken after registering and before any grade was written
    _restore_dump(server, before_batch[0], "before_batch")
    assert server.query("before_batch", "SELECT name FROM assignment") == [(A,)]
    assert server.query("before_batch", "SELECT count(*) FROM grade") == [(0,)]
    # a backup now holds every grade
    dump = gradebook.backup(graded["pg"])
    assert dump == gradebook.list_backups(graded["pg"])[0] and dump not in before_batch
    listing = subprocess.run(["pg_restore", "--list", dump], capture_output=True, text=True)
    assert listing.returncode == 0 and "TABLE DATA public grade " in listing.stdout, listing.stderr
    _restore_dump(server, dump, "now")
    query = "SELECT g.cell_id, g.auto_score FROM grade g ORDER BY g.id"
    assert server.query("now", query) == server.query("course", query) != []


def test_without_pg_dump_the_batch_says_there_is_no_backup(graded, monkeypatch, caplog):
    monkeypatch.setattr(gradebook.shutil, "which", lambda name: None)
    before = gradebook.list_backups(graded["pg"])
    with caplog.at_level("WARNING", logger="lossgrader.gradebook"):
        assert gradebook.backup(graded["pg"]) is None
    assert "no backup for this URL" in caplog.text and "pg_dump is not installed" in caplog.text
    assert gradebook.list_backups(graded["pg"]) == before


def test_restore_refuses_and_names_pg_restore(graded):
    with pytest.raises(gradebook.GradebookError) as err:
        gradebook.restore(graded["pg"])
    text = str(err.value)
    assert "SQLite gradebooks only" in text and "has not changed it" in text
    if gradebook.list_backups(graded["pg"]):
        assert "pg_restore --clean" in text
    assert "@127.0.0.1" in text and "postgres:" not in text       # no password shown (there is none)


def test_a_second_write_replaces_the_scores(graded, server):
    url = graded["url"]
    student = "demo_full"
    score, max_score, cells = gradebook.submission_scores(url, A, student)
    halved = {name: value / 2 for name, value in cells.items()}
    result = HandinResult(student=student, assignment=A, status="graded", scores=halved,
                          max_scores={name: 0.0 for name in cells})
    gradebook.write_result(url, result)
    assert _same(gradebook.submission_scores(url, A, student), (score / 2, max_score, halved))
    gradebook.write_result(url, HandinResult(student=student, assignment=A, status="graded", scores=cells))
    assert _same(gradebook.submission_scores(url, A, student), (score, max_score, cells))
    # one row per cell, not a second set
    count = server.query("course", "SELECT count(*) FROM grade g JOIN submitted_notebook n ON n.id = g.notebook_id "
                                   "JOIN submitted_assignment s ON s.id = n.assignment_id WHERE s.student_id = %s",
                         (student,))[0][0]
    assert count == len(cells)


def test_the_coordinator_recording_a_hand_in_again_replaces_its_scores(graded, server):
    """autograde's single write path (record) twice for one hand-in: the second result wins
    in the gradebook, the status file and grade_rows, with one submission row."""
    root, url, student = graded["pg"], graded["url"], "demo_bugs"
    score, max_score, cells = gradebook.submission_scores(url, A, student)
    status = course.read_status(root)
    kept = dict(status[f"{student}/{A}"])
    zero = HandinResult.failure(student, A, "time limit exceeded (test)", {name: 1.0 for name in cells})
    record(root, zero, status, 1.0, url)
    assert _same(gradebook.submission_scores(url, A, student), (0.0, max_score, {name: 0.0 for name in cells}))
    row = next(r for r in gradebook.grade_rows(root) if r["student_id"] == student)
    assert (row["score"], row["status"], row["reason"]) == (0.0, "failed", "time limit exceeded (test)")
    again = HandinResult(student=student, assignment=A, status="graded", scores=cells,
                         max_scores={name: 1.0 for name in cells})
    record(root, again, status, 1.0, url)
    assert _same(gradebook.submission_scores(url, A, student), (score, max_score, cells))
    row = next(r for r in gradebook.grade_rows(root) if r["student_id"] == student)
    assert (row["score"], row["status"]) == (round(score, 4), "autograded")
    assert course.read_status(root)[f"{student}/{A}"]["status"] == "autograded"
    assert server.query("course", "SELECT count(*) FROM submitted_assignment WHERE student_id = %s",
                        (student,)) == [(1,)]
    status[f"{student}/{A}"] = kept                    # the judge's cases, for the tests that follow
    course.write_status(root, status)


def test_readers_run_read_only_transactions(graded):
    from sqlalchemy import text

    with gradebook._reading(graded["url"]) as db:
        assert db.execute(text("SHOW transaction_read_only")).scalar() == "on"
        with pytest.raises(Exception, match="read-only transaction"):
            db.execute(text("DELETE FROM grade"))
    assert gradebook.submission_scores(graded["url"], A, "demo_full") is not None


def test_a_write_waits_for_another_writer(graded, server):
    """Each write transaction takes the writer's advisory lock: while another session holds
    it (a second coordinator of the course), the write waits, then goes through."""
    import threading

    import psycopg

    url, student = graded["url"], "demo_full"
    expected = gradebook.submission_scores(url, A, student)
    result = HandinResult(student=student, assignment=A, status="graded", scores=expected[2])
    done = []
    writer = threading.Thread(target=lambda: done.append(gradebook.write_result(url, result) or True))
    with psycopg.connect(host="127.0.0.1", port=server.port, user="postgres", dbname="course") as other:
        other.execute("SELECT pg_advisory_xact_lock(%s)", (gradebook.WRITER_LOCK,))
        writer.start()
        writer.join(3)
        assert writer.is_alive() and not done            # waiting for the lock
        waiting = server.query("course", "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
        assert waiting == [(1,)]
    writer.join(30)                                      # the other transaction ended: the write goes on
    assert done == [True]
    assert _same(gradebook.submission_scores(url, A, student), expected)


def test_a_new_database_is_a_new_course(server, tmp_path):
    url = server.create_database("fresh")
    root = _course(str(tmp_path / "c"), url)
    assert gradebook.grade_rows(root) == []             # readers of an empty database create nothing
    assert gradebook.registered_assignments(root) == set()
    assert server.query("fresh", "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]
    assert gradebook.backup(root) is None                # nothing to dump yet
    with pytest.raises(gradebook.GradebookError, match="no nbgrader tables yet"):
        gradebook.write_result(url, HandinResult(student="x", assignment=A, status="failed"))
    assert server.query("fresh", "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]
    assert not os.path.exists(os.path.join(root, gradebook.BACKUP_DIR))


def test_a_database_of_something_else_is_refused(server, tmp_path):
    url = server.create_database("other")
    server.query("other", "CREATE TABLE invoices (id integer)")
    root = _course(str(tmp_path / "c"), url)
    with pytest.raises(gradebook.GradebookError, match="not an nbgrader gradebook.*invoices"):
        gradebook.check_readable(url)
    with pytest.raises(gradebook.GradebookError, match="not an nbgrader gradebook"):
        autograde(root, progress=False, sandbox=_sandbox())
    assert server.query("other", "SELECT tablename FROM pg_tables WHERE schemaname = 'public'") == [("invoices",)]


@pytest.mark.parametrize("make_url, words", [
    (lambda srv: f"postgresql+psycopg://postgres@127.0.0.1:{pgserver._free_port()}/course",
     ["cannot be used", "127.0.0.1", "Check that the server runs"]),
    (lambda srv: srv.url("no_such_database"), ["cannot be used", "no_such_database", "does not exist"]),
    (lambda srv: "postgresql+psycopg://u:secret@127.0.0.1:notaport/x",
     ["cannot be used", "CourseDirectory.db_url", "u:***@127.0.0.1:notaport"]),
    (lambda srv: "this is not a URL", ["cannot be used", "'this is not a URL'", "CourseDirectory.db_url"]),
    (lambda srv: "postgresql+nodriver://u@127.0.0.1/x", ["cannot be used", "driver"]),
], ids=["nothing-listening", "no-such-database", "bad-port", "garbage", "unknown-driver"])
def test_an_unusable_url_is_a_clear_error_and_writes_nothing(server, tmp_path, capsys, make_url, words):
    url = make_url(server)
    root = _course(str(tmp_path / "c"), url)
    before = _files(root)
    code = cli_main(["--course", root, "autograde", "-q"] + ([] if _sandbox() else ["--no-sandbox"]))
    message = capsys.readouterr().err
    assert code == 2, message
    assert message.startswith("lossgrader autograde: The gradebook database ")
    for word in words:
        assert word in message, message
    assert "lossgrader has not changed anything" in message and "secret" not in message
    assert _files(root) == before                       # no status file, backups, autograded/, logs
    for reader in (gradebook.grade_rows, gradebook.registered_assignments, export):
        with pytest.raises(gradebook.GradebookError, match="cannot be used"):
            reader(root)
    for command in ("export", "feedback"):
        assert cli_main(["--course", root, command]) == 2
        assert capsys.readouterr().err.startswith(f"lossgrader {command}: The gradebook database ")
    assert _files(root) == before


def test_student_code_cannot_reach_the_gradebook_server(server, tmp_path):
    """The hand-in's sandbox has no network and no view of /tmp: the database server that
    the coordinator writes to is out of reach, by TCP and by its unix socket."""
    from lossgrader import sandbox

    if sandbox.bwrap_problem():
        pytest.skip(sandbox.bwrap_problem())
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    code = (
        "import psycopg, sys\n"
        "for kw in (dict(host='127.0.0.1', port=%d), dict(host=%r, port=%d)):\n"
        "    try:\n"
        "        psycopg.connect(user='postgres', dbname='course', connect_timeout=3, **kw).close()\n"
        "        print('CONNECTED', kw)\n"
        "    except psycopg.OperationalError as exc:\n"
        "        print('BLOCKED', ' '.join(str(exc).split())[:200])\n"
    ) % (server.port, server.folder, server.port)
    sb = sandbox.Sandbox(str(scratch))
    try:
        run = sb.run([sys.executable, "-c", code], timeout=60)
    finally:
        sb.kill()
    out = run.stdout.decode()
    assert run.returncode == 0, run.stderr.decode()
    assert out.count("BLOCKED") == 2 and "CONNECTED" not in out, out
    # the same code outside the sandbox connects both ways (so the check above can fail)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.count("CONNECTED") == 2, proc.stdout + proc.stderr
