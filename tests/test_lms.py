"""Learning platforms in and out: ``lossgrader collect`` on synthetic Canvas, Moodle,
pattern and nbgrader downloads (zip or folder), ``lossgrader export --format canvas|moodle``
on a tiny gradebook.

The downloads hold fake notebooks (a marker says which copy arrived); nothing is
autograded. The export tests register one assignment once per module (nbgrader's
generate_assignment) and write graded hand-ins with gradebook.write_result."""
import csv
import json
import os
import shutil
import zipfile

import nbformat
import pytest

from lossgrader.cli import main as cli_main
from lossgrader.collect import LMS_IDS, REPORT_FIELDS, CollectError, collect
from lossgrader.course import STATE_DIR

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
A = "02_regression"
B = "01_overview"


def _notebook(marker):
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_code_cell(f"# {marker}"))
    return nbformat.writes(nb).encode("utf-8")


def _marker(path):
    return nbformat.read(path, as_version=4).cells[0].source[2:]


def _course(root):
    os.makedirs(os.path.join(root, "tools"))
    for name in ("nbgrader_config.py", "_config.yml"):
        shutil.copy2(os.path.join(ROOT, name), os.path.join(root, name))
    shutil.copy2(os.path.join(ROOT, "tools", "stamp_repository.py"), os.path.join(root, "tools"))
    for aid in (A, B):
        os.makedirs(os.path.join(root, "solutions", aid))
        shutil.copy2(os.path.join(ROOT, "solutions", aid, aid + ".ipynb"), os.path.join(root, "solutions", aid))
    return root


def _zip(path, files):
    """files: {name in zip: (bytes, (y, m, d, H, M, S))}."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, (data, when) in files.items():
            zf.writestr(zipfile.ZipInfo(name, date_time=when), data)
    return str(path)


def _tree(top, files):
    """files: {relative path: (bytes, mtime)}."""
    for rel, (data, mtime) in files.items():
        path = os.path.join(top, *rel.split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(data)
        os.utime(path, (mtime, mtime))
    return str(top)


def _roster(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def _submitted(root, student, aid):
    return os.path.join(root, "submitted", student, aid, aid + ".ipynb")


def _by_file(result):
    return {r["file"]: r for r in result.rows}


@pytest.fixture
def course(tmp_path):
    return _course(str(tmp_path / "course"))


# ---------------------------------------------------------------- collect

def test_canvas_zip_keeps_the_late_resubmission_and_maps_the_roster(course, tmp_path, capsys):
    day = (2026, 11, 20, 10, 0, 0)
    later = (2026, 11, 22, 23, 30, 0)
    src = _zip(tmp_path / "submissions.zip", {
        f"zhangsan_12001_500_{A}.ipynb": (_notebook("zhang first"), day),
        f"zhangsan_late_12001_777_{A}-1.ipynb": (_notebook("zhang late"), later),
        f"lisi_12002_600_{A}.ipynb": (_notebook("li"), day),
        "lisi_12002_601_notes.pdf": (b"%PDF-1.4", day),
        f"wangwu_12003_602_{A}.ipynb": (_notebook("wang"), day),
        "readme.txt": (b"not a hand-in", day),
    })
    roster = _roster(tmp_path / "roster.csv", [
        {"student_id": "zhang_san", "canvas_id": "12001", "name": "Zhang, San", "section": "A"},
        {"student_id": "li_si", "canvas_id": "12002", "name": "Li, Si", "section": "B"}])
    assert cli_main(["--course", course, "collect", src, "--roster", roster]) == 0
    out = capsys.readouterr().out
    assert _marker(_submitted(course, "zhang_san", A)) == "zhang late"
    assert _marker(_submitted(course, "li_si", A)) == "li"
    assert sorted(os.listdir(os.path.join(course, "submitted"))) == ["li_si", "zhang_san"]
    assert "(canvas layout)" in out and "2 submissions collected" in out
    # what could not be used is printed and in the report
    assert "Canvas user 12003 (wangwu) is not in the roster" in out
    assert "readme.txt" in out and f"zhangsan_12001_500_{A}.ipynb" in out
    with open(os.path.join(course, "collect-report.csv"), newline="", encoding="utf-8") as fh:
        report = {r["file"]: r for r in csv.DictReader(fh)}
    assert list(next(iter(report.values()))) == REPORT_FIELDS
    assert report[f"zhangsan_late_12001_777_{A}-1.ipynb"]["status"] == "copied"
    assert "late" in report[f"zhangsan_late_12001_777_{A}-1.ipynb"]["detail"]
    assert report[f"zhangsan_12001_500_{A}.ipynb"]["status"] == "superseded"
    assert report[f"wangwu_12003_602_{A}.ipynb"]["status"] == "unmatched"
    assert report["readme.txt"]["status"] == "unmatched"
    assert report["lisi_12002_601_notes.pdf"]["status"] == "ignored"
    assert report[f"lisi_12002_600_{A}.ipynb"]["platform_id"] == "12002"
    with open(os.path.join(course, STATE_DIR, LMS_IDS), encoding="utf-8") as fh:
        assert json.load(fh)["canvas"]["zhang_san"]["id"] == "12001"


def test_canvas_without_roster_names_students_by_user_id_and_says_what_it_replaces(course, tmp_path):
    day = (2026, 11, 20, 10, 0, 0)
    first = _zip(tmp_path / "first.zip", {f"lisi_12002_600_{A}.ipynb": (_notebook("v1"), day)})
    got = collect(course, first)
    assert list(got) == [("12002", A)] and got.format == "canvas"
    assert _marker(_submitted(course, "12002", A)) == "v1"
    again = collect(course, first)
    assert _by_file(again)[f"lisi_12002_600_{A}.ipynb"]["status"] == "unchanged"
    second = _zip(tmp_path / "second.zip", {f"lisi_12002_650_{A}.ipynb": (_notebook("v2"), day)})
    got = collect(course, second)
    row = _by_file(got)[f"lisi_12002_650_{A}.ipynb"]
    assert row["status"] == "replaced" and "previous copy" in row["detail"]
    assert _marker(_submitted(course, "12002", A)) == "v2"
    kept = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(course, STATE_DIR, "replaced")) for f in fs]
    assert len(kept) == 1 and _marker(kept[0]) == "v1"


def test_moodle_folders_and_flat_names(course, tmp_path):
    t0 = 1_790_000_000
    src = _tree(tmp_path / "moodle", {
        "Zhang San_1001_assignsubmission_file/my work.ipynb": (_notebook("zhang"), t0),
        f"Li Si_1002_assignsubmission_file_/{A}.ipynb": (_notebook("li old"), t0),
        f"Li Si_1002_assignsubmission_file_/{A} (1).ipynb": (_notebook("li new"), t0 + 3600),
        "Li Si_1002_assignsubmission_onlinetext_/onlinetext.html": (b"<p>hi</p>", t0),
        f"Wang Wu_1003_assignsubmission_file_{A}.ipynb": (_notebook("wang"), t0),
        "Zhao Liu_1004_assignsubmission_file/data.csv": (b"1,2", t0),
    })
    # without --assignment a file must be called after its assignment
    got = collect(course, src, report="r.csv")
    rows = _by_file(got)
    assert got.format == "moodle"
    assert sorted(got) == [("Li_Si", A), ("Wang_Wu", A)]
    assert rows["Zhang San_1001_assignsubmission_file/my work.ipynb"]["status"] == "unmatched"
    assert "cannot tell the assignment" in rows["Zhang San_1001_assignsubmission_file/my work.ipynb"]["detail"]
    assert rows["Li Si_1002_assignsubmission_onlinetext_/onlinetext.html"]["status"] == "unmatched"
    assert rows["Zhao Liu_1004_assignsubmission_file/data.csv"]["status"] == "ignored"
    # several notebooks of one student: the newest file wins when both are named after the assignment
    assert _marker(_submitted(course, "Li_Si", A)) == "li new"
    assert rows[f"Li Si_1002_assignsubmission_file_/{A}.ipynb"]["status"] == "superseded"
    assert os.path.isfile(os.path.join(course, "r.csv"))
    # a Moodle download is one assignment's: with --assignment every notebook belongs to it
    got = collect(course, src, [A], fmt="moodle")
    assert ("Zhang_San", A) in got and _marker(_submitted(course, "Zhang_San", A)) == "zhang"
    with open(os.path.join(course, STATE_DIR, LMS_IDS), encoding="utf-8") as fh:
        seen = json.load(fh)["moodle"][A]
    assert seen["Zhang_San"] == {"id": "1001", "name": "Zhang San"}
    assert seen["Wang_Wu"]["id"] == "1003"


def test_moodle_namesakes_and_blind_marking(course, tmp_path):
    t0 = 1_790_000_000
    src = _tree(tmp_path / "moodle", {
        f"Wang Fang_3001_assignsubmission_file/{A}.ipynb": (_notebook("wang 1"), t0),
        f"Wang Fang_3002_assignsubmission_file/{A}.ipynb": (_notebook("wang 2"), t0 + 60),
        f"Participant_4001_assignsubmission_file/{A}.ipynb": (_notebook("anon 1"), t0),
        f"Participant_4002_assignsubmission_file/{A}.ipynb": (_notebook("anon 2"), t0)})
    got = collect(course, src)
    # two students of the same name are not merged into one (the newer would replace the other)
    assert sorted(got) == [("participant_4001", A), ("participant_4002", A)]
    unmatched = [r for r in got.rows if r["status"] == "unmatched"]
    assert len(unmatched) == 2 and all("3001, 3002" in r["detail"] for r in unmatched)
    # a roster tells them apart by participant id; a name given twice in the roster matches nobody
    roster = _roster(tmp_path / "roster.csv", [
        {"student_id": "wf1", "moodle_id": "3001", "name": "Wang Fang"},
        {"student_id": "wf2", "moodle_id": "3002", "name": "Wang Fang"}])
    got = collect(course, src, roster=roster)
    assert sorted(got) == [("wf1", A), ("wf2", A)]
    assert _marker(_submitted(course, "wf2", A)) == "wang 2"


def test_moodle_zip_with_roster_by_full_name(course, tmp_path):
    when = (2026, 11, 21, 9, 0, 0)
    src = _zip(tmp_path / "moodle.zip", {
        f"course-作业2-77/张 三_2001_assignsubmission_file/{A}.ipynb": (_notebook("zhang"), when),
        f"course-作业2-77/李 四_2002_assignsubmission_file/{A}.ipynb": (_notebook("li"), when)})
    roster = _roster(tmp_path / "roster.csv", [{"student_id": "s01", "name": "张 三", "email": "z@example.edu"}])
    got = collect(course, src, roster=roster)
    assert list(got) == [("s01", A)]
    assert _marker(_submitted(course, "s01", A)) == "zhang"
    assert "李 四" in [r for r in got.rows if r["status"] == "unmatched"][0]["detail"]


def test_custom_pattern_like_nbgrader_zip_collect(course, tmp_path):
    t0 = 1_790_000_000
    src = _tree(tmp_path / "export", {
        f"hw__s2023001__2026-11-20T10-00__{A}.ipynb": (_notebook("alice 1"), t0 + 100),
        f"hw__s2023001__2026-11-21T08-00__{A}.ipynb": (_notebook("alice 2"), t0),     # newer by its stamp
        f"hw__s2023002__2026-11-20T11-00__{B}.ipynb": (_notebook("bob"), t0),
        f"hw__s2023009__2026-11-20T11-00__{A}.ipynb": (_notebook("stranger"), t0),
        "feedback/hw_template.ipynb": (_notebook("template"), t0),
    })
    pattern = r"hw__(?P<student>s\d+)__(?P<timestamp>[\dT-]+)__(?P<assignment>\d\d_\w+)\.ipynb$"
    roster = _roster(tmp_path / "roster.csv", [{"student_id": "alice", "platform_id": "s2023001"},
                                               {"student_id": "bob", "platform_id": "s2023002"}])
    got = collect(course, src, pattern=pattern, roster=roster)
    rows = _by_file(got)
    assert got.format == "pattern"
    assert sorted(got) == [("alice", A), ("bob", B)]
    assert _marker(_submitted(course, "alice", A)) == "alice 2"
    assert rows[f"hw__s2023001__2026-11-20T10-00__{A}.ipynb"]["status"] == "superseded"
    assert rows[f"hw__s2023009__2026-11-20T11-00__{A}.ipynb"]["status"] == "unmatched"
    assert rows["feedback/hw_template.ipynb"]["status"] == "unmatched"
    # --assignment selects
    got = collect(course, src, [B], pattern=pattern, roster=roster)
    assert list(got) == [("bob", B)]
    assert _by_file(got)[f"hw__s2023001__2026-11-21T08-00__{A}.ipynb"]["status"] == "skipped"
    with pytest.raises(CollectError, match="student"):
        collect(course, src, pattern=r"hw__(?P<who>s\d+)")


def test_nbgrader_layouts_still_work_from_a_zip(course, tmp_path):
    when = (2026, 11, 20, 10, 0, 0)
    src = _zip(tmp_path / "inbox.zip", {
        f"alice/{A}/{A}.ipynb": (_notebook("alice"), when),
        f"alice/{A}/data/points.csv": (b"x,y", when),
        f"bob/{B}.ipynb": (_notebook("bob"), when),
        f"carol_{A}.ipynb": (_notebook("carol"), when),
        "../escape.ipynb": (_notebook("evil"), when),
        "stray.txt": (b"?", when),
    })
    got = collect(course, src)
    assert got.format == "nbgrader"
    assert sorted(got) == [("alice", A), ("bob", B), ("carol", A)]
    assert os.path.isfile(os.path.join(course, "submitted", "alice", A, "data", "points.csv"))
    assert _marker(_submitted(course, "carol", A)) == "carol"
    rows = _by_file(got)
    assert rows["../escape.ipynb"]["status"] == "ignored" and "unsafe" in rows["../escape.ipynb"]["detail"]
    assert rows["stray.txt"]["status"] == "unmatched"
    assert not os.path.exists(os.path.join(os.path.dirname(course), "escape.ipynb"))
    # the filter keeps its meaning for nbgrader layouts
    assert sorted(collect(course, src, [B])) == [("bob", B)]


# ---------------------------------------------------------------- export

@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """A course with 01_overview registered, a Moodle download collected and three hand-ins graded."""
    pytest.importorskip("nbgrader")
    from lossgrader import gradebook as G
    from lossgrader.results import HandinResult

    base = tmp_path_factory.mktemp("lms")
    root = str(base / "course")
    os.makedirs(root)
    for name in ("nbgrader_config.py", "_config.yml"):
        shutil.copy2(os.path.join(ROOT, name), os.path.join(root, name))
    os.makedirs(os.path.join(root, "tools"))
    shutil.copy2(os.path.join(ROOT, "tools", "stamp_repository.py"), os.path.join(root, "tools"))
    shutil.copytree(os.path.join(ROOT, "solutions", B), os.path.join(root, "solutions", B))
    assert G.register(root, [B]) == [B]
    with open(os.path.join(root, G.SCRATCH_DIR, "release", B, B + ".ipynb"), encoding="utf-8") as fh:
        released = fh.read()
    src = _tree(base / "moodle", {
        f"Zhang San_88_assignsubmission_file/{B}.ipynb": (released.encode(), 1_790_000_000),
        f"Li Si_89_assignsubmission_file/{B}.ipynb": (released.encode(), 1_790_000_000)})
    assert sorted(collect(root, src)) == [("Li_Si", B), ("Zhang_San", B)]
    points = {"test_numerical_grad": 2.0}
    for student, score in (("Zhang_San", 1.5), ("Li_Si", 2.0), ("12003", 0.5)):
        G.write_result(G.db_url(root), HandinResult(student, B, scores={"test_numerical_grad": score},
                                                    max_scores=points, notebooks={B: released}))
    return root


def _read(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def test_canvas_export_maps_back_to_canvas_ids(graded, tmp_path, capsys):
    from lossgrader.export import CANVAS_FIELDS

    roster = _roster(tmp_path / "roster.csv", [
        {"student_id": "Zhang_San", "canvas_id": "12001", "name": "Zhang, San", "sis_user_id": "S1",
         "sis_login_id": "zs", "section": "A"}])
    out = str(tmp_path / "canvas.csv")
    assert cli_main(["--course", graded, "export", "--format", "canvas", "--roster", roster, "--to", out,
                     "--column", "Homework 1 (555)", "--assignment", B]) == 0
    printed = capsys.readouterr().out
    assert "Li_Si: no Canvas user id" in printed
    table = _read(out)
    assert table[0] == CANVAS_FIELDS + ["Homework 1 (555)"]
    body = {row[1]: row for row in table[1:]}
    assert body["12001"] == ["Zhang, San", "12001", "S1", "zs", "A", "1.5"]
    assert body["12003"][0] == "12003" and float(body["12003"][5]) == 0.5   # collected without a roster
    assert set(body) == {"12001", "12003"}
    # rescaled to the platform's points, one column per assignment by default
    from lossgrader.export import export_lms

    path, rows, _ = export_lms(graded, "canvas", to=out, roster=roster, points=10)
    table = _read(path)
    assert table[0][-1] == B and {r[1]: r[-1] for r in table[1:]} == {"12001": "7.5", "12003": "2.5"}


def test_moodle_export_uses_the_participant_ids_collect_saw(graded, tmp_path):
    from lossgrader.export import MOODLE_FIELDS, ExportError, export_lms

    path, rows, problems = export_lms(graded, "moodle", to=str(tmp_path / "m.csv"), assignment=B)
    table = _read(path)
    assert table[0] == MOODLE_FIELDS
    body = {row[0]: dict(zip(MOODLE_FIELDS, row)) for row in table[1:]}
    assert set(body) == {"Participant 88", "Participant 89"}
    assert body["Participant 88"]["Full name"] == "Zhang San"
    assert body["Participant 88"]["Grade"] == "1.5" and body["Participant 89"]["Grade"] == "2"
    assert body["Participant 88"]["Maximum grade"] == "2"
    assert body["Participant 88"]["Last modified (grade)"]
    assert problems == ["12003: no Moodle participant id for 01_overview (collect the Moodle download, "
                        "or add moodle_id to the roster, or pass --worksheet)"]
    with pytest.raises(ExportError):
        export_lms(graded, "moodle", assignment="99_nothing")


def test_moodle_worksheet_is_filled_in(graded, tmp_path):
    from lossgrader.export import export_lms

    sheet = tmp_path / "worksheet.csv"
    header = ["Identifier", "Full name", "Email address", "Status", "Grade", "Maximum grade",
              "Grade can be changed", "Last modified (submission)", "Last modified (grade)", "Feedback comments"]
    with open(sheet, "w", newline="", encoding="utf-8-sig") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerow(["Participant 88", "Zhang San", "zs@example.edu", "Submitted for grading", "", "100.00",
                    "Yes", "Friday, 20 November 2026, 10:00 AM", "-", ""])
        w.writerow(["Participant 90", "Stu Dent", "sd@example.edu", "No submission", "", "100.00",
                    "Yes", "-", "-", ""])
        w.writerow(["Participant 91", "Li Si", "ls@example.edu", "Submitted for grading", "", "100.00",
                    "Yes", "Friday, 20 November 2026, 11:00 AM", "-", ""])
    path, rows, problems = export_lms(graded, "moodle", to=str(tmp_path / "filled.csv"), points=100,
                                      worksheet=str(sheet))
    table = _read(path)
    assert table[0] == header
    body = {row[0]: dict(zip(header, row)) for row in table[1:]}
    # 88 by the id collect recorded, 91 by the full name (the worksheet's id differs)
    assert body["Participant 88"]["Grade"] == "75" and body["Participant 91"]["Grade"] == "100"
    assert body["Participant 88"]["Email address"] == "zs@example.edu"
    assert body["Participant 88"]["Last modified (grade)"] not in ("", "-")
    assert "Participant 90" not in body
    assert problems == ["12003: not found in the worksheet worksheet.csv"]
