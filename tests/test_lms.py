"""Learning platforms in and out: ``lossgrader collect`` on synthetic Canvas, Moodle,
pattern and nbgrader downloads (zip or folder), ``lossgrader export --format canvas|moodle``
on a tiny gradebook.

The downloads hold fake notebooks (a marker says which copy arrived); nothing is
autograded. The export tests register one assignment once per module (nbgrader's
generate_assignment) and write graded hand-ins with gradebook.write_result."""
import csv
import json
import os
import re
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
    # Li Si typed text into Moodle beside her notebook: reported as Moodle's online text
    online = rows["Li Si_1002_assignsubmission_onlinetext_/onlinetext.html"]
    assert online["status"] == "ignored" and "online-text entry" in online["detail"]
    # Zhao Liu handed in no notebook at all; without --assignment the assignment cannot be told
    lonely = rows["Zhao Liu_1004_assignsubmission_file/data.csv"]
    assert lonely["status"] == "no notebook" and "pass --assignment" in lonely["detail"]
    # several notebooks of one student: the newest file wins when both are named after the assignment
    assert _marker(_submitted(course, "Li_Si", A)) == "li new"
    assert rows[f"Li Si_1002_assignsubmission_file_/{A}.ipynb"]["status"] == "superseded"
    assert os.path.isfile(os.path.join(course, "r.csv"))
    # a Moodle download is one assignment's: with --assignment every notebook belongs to it
    got = collect(course, src, [A], fmt="moodle")
    assert ("Zhang_San", A) in got and _marker(_submitted(course, "Zhang_San", A)) == "zhang"
    assert got.no_notebook == [("Zhao_Liu", A)]
    assert set(os.listdir(os.path.join(course, "submitted", "Zhao_Liu", A))) == {
        "data.csv", "timestamp.txt", "submission_secret.txt"}
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
    with open(path, newline="", encoding="utf-8-sig") as fh:
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
    # Canvas's own export has the points under the header; its import reads them and skips the row
    assert table[1] == ["    Points Possible", "", "", "", "", "2"]
    body = {row[1]: row for row in table[2:]}
    assert body["12001"] == ["Zhang, San", "12001", "S1", "zs", "A", "1.5"]
    assert body["12003"][0] == "12003" and float(body["12003"][5]) == 0.5   # collected without a roster
    assert set(body) == {"12001", "12003"}
    # rescaled to the platform's points, one column per assignment by default
    from lossgrader.export import export_lms

    path, rows, _ = export_lms(graded, "canvas", to=out, roster=roster, points=10)
    table = _read(path)
    assert table[0][-1] == B and {r[1]: r[-1] for r in table[2:]} == {"12001": "7.5", "12003": "2.5"}
    assert table[1][-1] == "10"


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


# ---------------------------------------------------------------- Moodle in the teacher's language

MOODLE_STRINGS = {
    # what Moodle's worksheet upload (assignfeedback_offline's grade importer) looks for, per
    # interface language: get_string('recordid', 'assign'), get_string('grade'),
    # get_string('lastmodifiedgrade', 'assign'), get_string('hiddenuser', 'assign')
    "en": ("Identifier", "Grade", "Last modified (grade)", "Participant "),
    "zh_cn": ("标识符", "成绩", "上次修改（评分）", "参与人"),
}
# a worksheet as Moodle 4.x writes it (UTF-8 with a byte-order mark): identifier, the
# identity fields, status, grade, maximum grade, "grade can be changed", the submission's
# time, the online text, the grade's time, feedback comments
EN_SHEET = [["Identifier", "Full name", "Email address", "Status", "Grade", "Maximum grade", "Grade can be changed",
             "Last modified (submission)", "Online text", "Last modified (grade)", "Feedback comments"],
            ["Participant 88", "Zhang San", "zs@example.edu", "Submitted for grading", "", "100.00", "Yes",
             "Friday, 20 November 2026, 10:00 AM", "", "-", ""],
            ["Participant 90", "Stu Dent", "sd@example.edu", "No submission", "", "100.00", "Yes", "-", "", "-", ""],
            ["Participant 91", "Li Si", "ls@example.edu", "Submitted for grading", "", "100.00", "Yes",
             "Friday, 20 November 2026, 11:00 AM", "", "-", ""]]
ZH_SHEET = [["标识符", "全名", "电子邮件地址", "状态", "成绩", "最高分", "允许更改成绩", "上次修改（作业）", "在线文本",
             "上次修改（评分）", "反馈评语"],
            ["参与人88", "Zhang San", "zs@example.edu", "已提交请评分", "", "100.00", "是",
             "2026年11月20日 星期五 10:00", "", "-", ""],
            ["参与人90", "Stu Dent", "sd@example.edu", "没有作业", "", "100.00", "是", "-", "", "-", ""],
            ["参与人91", "Li Si", "ls@example.edu", "已提交请评分", "", "100.00", "是",
             "2026年11月20日 星期五 11:00", "", "-", ""]]


def _write_sheet(path, table):
    with open(path, "w", newline="", encoding="utf-8-sig") as fh:
        csv.writer(fh).writerows(table)
    return str(path)


def _moodle_upload(path, language):
    """What Moodle's worksheet upload in ``language`` takes from a file: {participant number:
    (grade, time text)}, found as its grade importer finds them (columns by exact name, the
    participant number after as many bytes as 'hiddenuser' has); {} when a column is missing
    (Moodle refuses the file)."""
    ident, grade, modified, hidden = MOODLE_STRINGS[language]
    with open(path, "rb") as fh:
        text = fh.read().decode("utf-8")
    table = list(csv.reader(text.lstrip("\ufeff").splitlines()))     # Moodle trims the byte-order mark
    header = table[0]
    if not {ident, grade, modified} <= set(header):
        return {}
    got = {}
    for row in table[1:]:
        number = row[header.index(ident)].encode("utf-8")[len(hidden.encode("utf-8")):].decode("utf-8", "replace")
        if number.strip().isdigit():
            got[int(number)] = (row[header.index(grade)], row[header.index(modified)])
    return got


@pytest.mark.parametrize("language,sheet", [("en", EN_SHEET), ("zh_cn", ZH_SHEET)])
def test_moodle_worksheet_in_the_teachers_language_is_read_and_written_back(graded, tmp_path, language, sheet):
    from lossgrader.export import export_lms

    src = _write_sheet(tmp_path / "worksheet.csv", sheet)
    path, rows, notes = export_lms(graded, "moodle", to=str(tmp_path / "filled.csv"), points=100, worksheet=src)
    with open(path, "rb") as fh:
        assert fh.read(3) == b"\xef\xbb\xbf"                     # as Moodle wrote it
    table = _read(path)
    assert table[0] == sheet[0]                                 # every column kept, in the teacher's language
    assert [r[0] for r in table[1:]] == [sheet[1][0], sheet[3][0]]    # 88 by its id, 91 by the name
    assert table[1][2] == "zs@example.edu" and table[1][7] == sheet[1][7]
    upload = _moodle_upload(path, language)
    assert {n: g for n, (g, _) in upload.items()} == {88: "75", 91: "100"}
    when = upload[88][1]
    assert when not in ("", "-")
    if language == "zh_cn":                                     # a time PHP's strtotime reads
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d", when)
    else:
        assert re.fullmatch(r"(Mon|Tues|Wednes|Thurs|Fri|Satur|Sun)day, \d\d [A-Z][a-z]+ \d{4}, \d\d:\d\d [AP]M", when)
    assert notes == ["12003: not found in the worksheet worksheet.csv"]


def test_moodle_export_in_chinese_is_what_a_chinese_moodle_reads(graded, tmp_path, capsys):
    from lossgrader.export import MOODLE_LANGUAGES

    out = str(tmp_path / "zh.csv")
    assert cli_main(["--course", graded, "export", "--format", "moodle", "--assignment", B, "--language", "zh_cn",
                     "--to", out]) == 0
    table = _read(out)
    assert table[0] == MOODLE_LANGUAGES["zh_cn"]["fields"]
    assert [r[0] for r in table[1:]] == ["参与人88", "参与人89"]
    assert {n: g for n, (g, _) in _moodle_upload(out, "zh_cn").items()} == {88: "1.5", 89: "2"}
    # the English file means nothing to a Chinese Moodle, nor the Chinese one to an English Moodle
    en = str(tmp_path / "en.csv")
    assert cli_main(["--course", graded, "export", "--format", "moodle", "--assignment", B, "--to", en]) == 0
    assert _read(en)[1][0] == "Participant 88"
    assert {n: g for n, (g, _) in _moodle_upload(en, "en").items()} == {88: "1.5", 89: "2"}
    assert _moodle_upload(en, "zh_cn") == {} and _moodle_upload(out, "en") == {}


def test_a_worksheet_moodle_did_not_write_is_refused_with_its_columns(graded, tmp_path, capsys):
    src = _write_sheet(tmp_path / "other.csv", [["学号", "姓名", "分数"], ["1", "张三", "90"]])
    assert cli_main(["--course", graded, "export", "--format", "moodle", "--worksheet", src]) == 2
    err = capsys.readouterr().err
    assert "'Identifier' or '标识符'" in err and "学号" in err


# ---------------------------------------------------------------- Canvas: one row per person, points, marks

def test_canvas_column_title_comes_from_the_roster_and_rows_are_one_per_canvas_id(graded, tmp_path, capsys):
    from lossgrader.export import ExportError, export_lms

    # a roster made from a Canvas gradebook export keeps its assignment columns: they name the title
    roster = _roster(tmp_path / "roster.csv", [
        {"student_id": "Zhang_San", "canvas_id": "12001", "作业 1 (555)": "", "作业 2 (556)": ""},
        {"student_id": "Li_Si", "canvas_id": "12002", "作业 1 (555)": "", "作业 2 (556)": ""}])
    path, rows, notes = export_lms(graded, "canvas", roster=roster, to=str(tmp_path / "c.csv"))
    assert _read(path)[0][-1] == "作业 1 (555)" and not notes.notes
    # without one, the column is the assignment id, and export says Canvas will make a new assignment
    path, rows, notes = export_lms(graded, "canvas", to=str(tmp_path / "c.csv"))
    assert _read(path)[0][-1] == B and "imports as a new assignment" in notes.notes[0]
    # two student ids with one Canvas id and different grades: refused, both named
    twice = _roster(tmp_path / "twice.csv", [{"student_id": "Zhang_San", "canvas_id": "12001"},
                                             {"student_id": "Li_Si", "canvas_id": "12001"}])
    with pytest.raises(ExportError, match=r"Canvas user 12001 is Li_Si and Zhang_San .*Li_Si: 2, Zhang_San: 1\.5"):
        export_lms(graded, "canvas", roster=twice, to=str(tmp_path / "c.csv"))
    assert cli_main(["--course", graded, "export", "--format", "canvas", "--roster", twice,
                     "--to", str(tmp_path / "c.csv")]) == 2
    assert "Canvas user 12001 is Li_Si and Zhang_San" in capsys.readouterr().err


@pytest.fixture(scope="module")
def canvas_class(tmp_path_factory):
    """A Canvas download of 01_overview collected twice (without a roster, then with one that
    calls Canvas user 12001 s001), then ``lossgrader autograde``: 12001 handed in the model
    answer, 12002 only a .py and a .pdf, 12003 a notebook that is not JSON."""
    pytest.importorskip("nbgrader")
    from course_copy import copy_course

    base = tmp_path_factory.mktemp("canvas")
    root = copy_course(base / "course", [B], exercises=False)
    with open(os.path.join(ROOT, "samples", "submitted", "demo_full", B, B + ".ipynb"), "rb") as fh:
        full = fh.read()
    day = (2026, 11, 20, 10, 0, 0)
    src = _zip(base / "submissions.zip", {
        f"zhangsan_12001_500_{B}.ipynb": (full, day),
        "lisi_12002_501_hw.py": (b"def f():\n    return 1\n", day),
        "lisi_12002_502_report.pdf": (b"%PDF-1.4\n", day),
        f"wangwu_late_12003_503_{B}.ipynb": (b'{"cells": [', day)})
    first = collect(root, src, [B])
    assert sorted(first) == [("12001", B), ("12002", B), ("12003", B)] and first.no_notebook == [("12002", B)]
    roster = _roster(base / "roster.csv", [{"student_id": "s001", "canvas_id": "12001", "name": "Zhang, San"}])
    return {"root": root, "src": src, "roster": roster, "first": first, "base": base}


def test_canvas_pdf_only_hand_in_is_collected_as_no_notebook(canvas_class):
    root, first = canvas_class["root"], canvas_class["first"]
    rows = _by_file(first)
    for name in ("lisi_12002_501_hw.py", "lisi_12002_502_report.pdf"):
        assert rows[name]["status"] == "no notebook" and "Canvas user 12002" in rows[name]["detail"]
    assert set(os.listdir(os.path.join(root, "submitted", "12002", B))) == {
        "hw.py", "report.pdf", "timestamp.txt", "submission_secret.txt"}
    with open(os.path.join(root, "submitted", "12002", B, "timestamp.txt"), encoding="utf-8") as fh:
        assert fh.read().startswith("2026-11-20 ")


def test_canvas_round_trip_one_row_per_person_points_possible_and_marks(canvas_class, capsys, tmp_path):
    root = canvas_class["root"]
    # collected again with a roster: 12001 is now s001 as well; collect says so
    assert cli_main(["--course", root, "collect", canvas_class["src"], "--assignment", B,
                     "--roster", canvas_class["roster"]]) == 0
    out = capsys.readouterr().out
    assert "warning: Canvas user 12001 is 12001 and s001 in submitted/" in out
    assert cli_main(["--course", root, "autograde", "--quiet", "--cell-timeout", "120"]) == 0
    capsys.readouterr()
    # Canvas's gradebook export, as Canvas writes it: it names the assignment and its points
    sheet = tmp_path / "canvas-export.csv"
    with open(sheet, "w", newline="", encoding="utf-8-sig") as fh:
        w = csv.writer(fh)
        w.writerow(["Student", "ID", "SIS User ID", "SIS Login ID", "Section", "作业 01 (777)", "作业 02 (778)",
                    "Assignments Current Score", "Current Score", "Final Score"])
        w.writerow(["    Points Possible", "", "", "", "", "10.00", "5.00", "(read only)", "(read only)",
                    "(read only)"])
        w.writerow(["Zhang, San", "12001", "S1", "zs", "LF101-A", "", "", "", "", ""])
        w.writerow(["Li, Si", "12002", "S2", "ls", "LF101-A", "", "", "", "", ""])
        w.writerow(["Wang, Wu", "12003", "S3", "ww", "LF101-B", "", "", "", "", ""])
        w.writerow(["Student, Test", "12999", "", "", "LF101-A", "", "", "", "", ""])
    out_path = str(tmp_path / "canvas.csv")
    assert cli_main(["--course", root, "export", "--format", "canvas", "--worksheet", str(sheet),
                     "--to", out_path]) == 0
    printed = capsys.readouterr().out
    table = _read(out_path)
    assert table[0] == ["Student", "ID", "SIS User ID", "SIS Login ID", "Section", "作业 01 (777)"]
    assert table[1] == ["    Points Possible", "", "", "", "", "10"]
    body = [r for r in table[2:]]
    assert [r[1] for r in body] == ["12001", "12002", "12003"]          # one row per Canvas id
    by_id = {r[1]: r for r in body}
    assert by_id["12001"] == ["Zhang, San", "12001", "S1", "zs", "LF101-A", "10"]
    assert by_id["12002"][-1] == "0" and by_id["12003"][-1] == "0"
    assert by_id["12003"][:5] == ["Wang, Wu", "12003", "S3", "ww", "LF101-B"]
    assert "note: Canvas user 12001 is 12001 and s001 in the gradebook: one row" in printed
    assert f"marked: Canvas user 12002 (12002) {B}: no notebook, exported as 0: no notebook handed in " \
           "(handed in: hw.py, report.pdf)" in printed
    assert re.search(rf"marked: Canvas user 12003 \(12003\) {B}: failed to grade, exported as 0: .*JSON", printed)
    assert "rescaled to the 10 Points Possible of '作业 01 (777)'" in printed
    # the plain export lists the same hand-ins
    assert cli_main(["--course", root, "export", "--to", str(tmp_path / "grades.csv")]) == 0
    printed = capsys.readouterr().out
    assert "! no notebook handed in (0 points):" in printed and f"12002/{B}: no notebook handed in" in printed
    assert "! autograding failed (0 points):" in printed and f"12003/{B}:" in printed
