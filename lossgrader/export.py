"""``lossgrader export``: the grades CSV and the plain-text grade table."""
from __future__ import annotations

import csv
import os
import re
import time

from .csvfile import Numeral, write_csv
from .gradebook import NO_NOTEBOOK, NOT_GRADED, grade_rows

GRADES_CSV = "grades.csv"
FIELDS = ["student_id", "assignment", "score", "max_score", "status", "reason"]


def export(root, to=None):
    """Write the grades CSV (default grades.csv in the course directory); returns its path and rows."""
    rows = grade_rows(root)
    path = _target(root, to, GRADES_CSV)
    write_csv(path, FIELDS, rows)
    return path, rows


def format_table(rows):
    """Plain-text grade table: one line per student, one column per assignment (score/max)."""
    students = sorted({r["student_id"] for r in rows})
    aids = sorted({r["assignment"] for r in rows})
    cell = {(r["student_id"], r["assignment"]): r for r in rows}

    def fmt(r):
        if r is None:
            return "-"
        text = f"{r['score']:g}/{r['max_score']:g}"
        if r["status"] == "failed":
            text += " !"
        elif r["status"] == "missing":
            text = "-"
        return text

    header = ["student"] + aids + ["total"]
    body = []
    for s in students:
        line = [s]
        total = total_max = 0.0
        for a in aids:
            r = cell.get((s, a))
            line.append(fmt(r))
            if r is not None:
                total += r["score"]
                total_max += r["max_score"]
        line.append(f"{total:g}/{total_max:g}")
        body.append(line)
    widths = [max(len(row[i]) for row in [header] + body) for i in range(len(header))]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in body]
    failed = [r for r in rows if r["status"] == "failed" and not r["reason"].startswith(NO_NOTEBOOK)]
    if failed:
        out.append("")
        out.append("! autograding failed (0 points):")
        out += [f"  {r['student_id']}/{r['assignment']}: {r['reason']}" for r in failed]
    no_notebook = [r for r in rows if r["status"] == "failed" and r["reason"].startswith(NO_NOTEBOOK)]
    if no_notebook:
        out.append("")
        out.append("! no notebook handed in (0 points):")
        out += [f"  {r['student_id']}/{r['assignment']}: {r['reason']}" for r in no_notebook]
    waiting = [r for r in rows if r["status"] == "missing" and r["reason"] == NOT_GRADED]
    if waiting:
        out.append("")
        out.append("- handed in, not graded (no grade in the gradebook; lossgrader autograde grades them):")
        out += [f"  {r['student_id']}/{r['assignment']}" for r in waiting]
    return "\n".join(out)


# ---------------------------------------------------------------- learning platforms
# Canvas: Grades > Import (Canvas's GradebookImporter) reads a CSV whose header starts with
# Student, ID, [SIS User ID, SIS Login ID,] Section; every later column is an assignment,
# recognised by the id in parentheses at the end of its title ("作业 2 (12345)"), else by
# its exact title, else created as a new assignment. A row whose first cell says "Points
# Possible" (Canvas's own export has one under the header) gives the assignments' points
# and is no student. Students are matched by ID (Canvas user id), then the SIS ids, then
# the name. An empty cell leaves a grade as it is.
# Moodle: Assignment > View all submissions > "Upload grading worksheet" (the offline grading
# worksheet, assignfeedback_offline) finds three columns by their names in the teacher's
# interface language, get_string('recordid', 'assign'), get_string('grade') and
# get_string('lastmodifiedgrade', 'assign'): Identifier, Grade, "Last modified (grade)" in
# English, 标识符, 成绩, 上次修改（评分） in Simplified Chinese. It takes the participant
# number from the identifier by cutting off as many bytes as get_string('hiddenuser',
# 'assign') has ("Participant " in English, "参与人" in Chinese), so "Participant 501"
# matches nobody in a zh_cn Moodle, nor "参与人501" in an English one. The time is read
# with PHP's strtotime; a grade changed in Moodle more than 60 s after it is kept unless
# "Allow updating records that have been modified more recently in Moodle than in the
# spreadsheet" is ticked. One assignment per worksheet.

LMS_FORMATS = ("canvas", "moodle")
CANVAS_FIELDS = ["Student", "ID", "SIS User ID", "SIS Login ID", "Section"]
CANVAS_POINTS_POSSIBLE = "    Points Possible"          # as Canvas's own export writes it
CANVAS_TITLE_ID = re.compile(r"\((\d+)\)\s*$")

MOODLE_LANGUAGES = {
    # Moodle reads identifier, grade and modified; status, maximum grade, "can be changed"
    # and the submission time are Moodle's own strings too; the name and e-mail headers of
    # the zh_cn file are lossgrader's (Moodle does not read them)
    "en": {"identifier": "Identifier", "grade": "Grade", "modified": "Last modified (grade)",
           "participant": "Participant ", "status": "Status", "yes": "Yes",
           "fields": ["Identifier", "Full name", "Email address", "Status", "Grade", "Maximum grade",
                      "Grade can be changed", "Last modified (submission)", "Last modified (grade)"]},
    "zh_cn": {"identifier": "标识符", "grade": "成绩", "modified": "上次修改（评分）",
              "participant": "参与人", "status": "状态", "yes": "是",
              "fields": ["标识符", "全名", "电子邮件地址", "状态", "成绩", "最高分", "允许更改成绩",
                         "上次修改（作业）", "上次修改（评分）"]},
}
MOODLE_FIELDS = MOODLE_LANGUAGES["en"]["fields"]
_EN_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_EN_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
              "October", "November", "December")


class ExportError(ValueError):
    """The platform export cannot be written as asked."""


class ExportNotes(list):
    """What ``export_lms`` has to say besides the file. The list: the students left out (no
    platform id, not in the worksheet). ``marked``: the hand-ins exported as 0 that did not
    earn it (failed to grade, no notebook) and those left empty though handed in (not
    graded). ``notes``: the rest (a column Canvas will create, rescaling, merged rows)."""

    def __init__(self):
        super().__init__()
        self.marked = []
        self.notes = []


def _number(x):
    """A score as a plain decimal number (no exponent, at most 4 decimals); a Numeral, so
    that the CSV's formula rule leaves a negative score a number."""
    text = ("%.4f" % float(x)).rstrip("0").rstrip(".")
    return Numeral("0" if text in ("", "-0") else text)


def _scaled(row, points):
    if points is None:
        return row["score"], row["max_score"]
    if not row["max_score"]:
        return 0.0, float(points)
    return row["score"] / row["max_score"] * float(points), float(points)


def _moodle_time(now, language="en"):
    """The grade's time as Moodle writes it in English (userdate with strftimedatetime, read
    back by PHP's strtotime), or as an ISO date and time for zh_cn (Moodle's Chinese dates
    do not read back through strtotime); local time, whatever the locale of this machine."""
    t = time.localtime(now)
    if language != "en":
        return time.strftime("%Y-%m-%d %H:%M", t)
    hour = t.tm_hour % 12 or 12
    return (f"{_EN_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_EN_MONTHS[t.tm_mon - 1]} {t.tm_year}, "
            f"{hour:02d}:{t.tm_min:02d} {'AM' if t.tm_hour < 12 else 'PM'}")


def _mark(row, where):
    """The line ``export`` lists for a hand-in that the platform file cannot tell apart
    (a 0 that was not earned, an empty cell though it was handed in), or None."""
    if row["status"] == "failed":
        what = "no notebook" if row["reason"].startswith(NO_NOTEBOOK) else "failed to grade"
        return f"{where} {row['assignment']}: {what}, exported as 0: {row['reason']}"
    if row["status"] == "missing" and row["reason"] == NOT_GRADED:
        return f"{where} {row['assignment']}: handed in but not graded, left empty: {row['reason']}"
    return None


def _one_row_per_id(by_id, cell, aids, points, platform, notes):
    """{platform id: {assignment: the grade row}}: several student ids with one platform id
    (one person collected under two ids) become one row when their grades agree, and an
    ExportError names them when they do not."""
    out = {}
    for pid, students in sorted(by_id.items()):
        merged = {}
        for aid in aids:
            given = {s: cell[(s, aid)] for s in students if (s, aid) in cell
                     and cell[(s, aid)]["status"] != "missing"}
            values = {s: _number(_scaled(r, points.get(aid))[0]) for s, r in given.items()}
            if len(set(values.values())) > 1:
                raise ExportError(
                    f"{platform} {pid} is {' and '.join(sorted(students))} in the gradebook, with different grades "
                    f"for {aid} ({', '.join(f'{s}: {v}' for s, v in sorted(values.items()))}): one person under "
                    "two student ids (a download collected once with --roster and once without?). Keep one: "
                    "delete the other's folder in submitted/ and run `nbgrader db student remove ID --force`, "
                    "then export again")
            pick = sorted(given)[:1] or [s for s in sorted(students) if (s, aid) in cell][:1]
            if pick:
                merged[aid] = cell[(pick[0], aid)]
        if len(students) > 1:
            notes.notes.append(f"{platform} {pid} is {' and '.join(sorted(students))} in the gradebook: one row "
                               "(their grades agree)")
        out[pid] = (sorted(students), merged)
    return out


def export_lms(root, fmt, to=None, roster=None, assignment=None, column=None, points=None,
               worksheet=None, now=None, language=None):
    """Write a gradebook-import CSV for Canvas or Moodle; returns (path, rows written, notes).

    roster: Roster or path (lossgrader.collect.Roster): platform ids, names, emails, SIS
    ids and sections of the students (its extra columns titled like Canvas's, "作业 2
    (12345)", name Canvas assignments); ids that ``lossgrader collect`` saw in a Canvas or
    Moodle download are used too (.lossgrader/lms-ids.json). assignment: the one
    assignment to export (required for Moodle when the gradebook has several; Canvas takes
    every assignment, one column each). column: the Canvas column title, e.g.
    "作业 2 (12345)" copied from a Canvas gradebook export (one assignment only); by default
    the title of the worksheet's or the roster's column that names the assignment (its id,
    or the title of its notebook), else the assignment id (a new assignment in Canvas).
    points: rescale every score to this many points (the platform's maximum); for Canvas,
    by default the worksheet's "Points Possible" of the column. worksheet: for Moodle, the
    grading worksheet downloaded from Moodle, in English or Chinese (its rows of graded
    students are written back with the grade filled in, every column kept); for Canvas, a
    Canvas gradebook export (column titles, points, names, SIS ids, sections). language:
    "en" or "zh_cn", the Moodle teacher's interface language of a new worksheet (default:
    the worksheet's, else en).

    One row per platform id: student ids that share one (one person collected twice) are
    merged when their grades agree and refused with their names when not. notes
    (ExportNotes): the students left out, and ``.marked``: the 0s that were not earned
    (failed to grade, no notebook) and the hand-ins not graded."""
    from .collect import Roster, load_lms_ids

    if fmt not in LMS_FORMATS:
        raise ExportError(f"unknown platform {fmt!r}: one of {', '.join(LMS_FORMATS)}")
    if language is not None and language not in MOODLE_LANGUAGES:
        raise ExportError(f"unknown Moodle language {language!r}: one of {', '.join(MOODLE_LANGUAGES)}")
    if isinstance(roster, (str, os.PathLike)):
        roster = Roster.load(roster)
    rows = grade_rows(root)
    aids = sorted({r["assignment"] for r in rows})
    if assignment is not None:
        if assignment not in aids:
            raise ExportError(f"assignment {assignment!r} is not in the gradebook "
                              f"(known: {', '.join(aids) or 'none'})")
        aids = [assignment]
    if not aids:
        raise ExportError("the gradebook has no assignments to export")
    if column and len(aids) != 1:
        raise ExportError("--column names one assignment's column: pass --assignment too")
    ids = load_lms_ids(root)
    now = time.time() if now is None else now

    def info(student):
        return (roster.students.get(student) if roster is not None else None) or {}

    notes = ExportNotes()
    if fmt == "canvas":
        return _export_canvas(root, rows, aids, ids.get("canvas", {}), info, roster, to, column, points,
                              worksheet, notes)

    if len(aids) != 1:
        raise ExportError("a Moodle grading worksheet holds one assignment: pass --assignment ID "
                          f"(one of {', '.join(aids)})")
    aid = aids[0]
    seen = ids.get("moodle", {}).get(aid, {})
    cell = {(r["student_id"], aid): r for r in rows if r["assignment"] == aid}

    def participant(student):
        return str((seen.get(student) or {}).get("id") or info(student).get("moodle_id", ""))

    if worksheet:
        return _fill_worksheet(root, worksheet, to, aid, cell, seen, roster, participant, points, now, notes)
    lang = MOODLE_LANGUAGES[language or "en"]
    by_id = {}
    for (student, _), r in sorted(cell.items()):
        if r["status"] == "missing":
            mark = _mark(r, student)
            if mark:
                notes.marked.append(mark)
            continue
        pid = participant(student)
        if not pid:
            notes.append(f"{student}: no Moodle participant id for {aid} (collect the Moodle download, "
                         "or add moodle_id to the roster, or pass --worksheet)")
            continue
        by_id.setdefault(pid, []).append(student)
    out = []
    merged = _one_row_per_id(by_id, cell, [aid], {aid: points}, "Moodle participant", notes)
    for pid, (students, grades) in sorted(merged.items(), key=lambda item: int(item[0]) if item[0].isdigit() else 0):
        g = grades[aid]
        student = students[0]
        mark = _mark(g, f"{lang['participant']}{pid} ({', '.join(students)})")
        if mark:
            notes.marked.append(mark)
        score, max_score = _scaled(g, points)
        status = "no notebook" if g["status"] == "failed" and g["reason"].startswith(NO_NOTEBOOK) else g["status"]
        values = [lang["participant"] + pid,
                  info(student).get("name") or (seen.get(student) or {}).get("name") or student,
                  info(student).get("email", ""), status, _number(score), _number(max_score), lang["yes"], "",
                  _moodle_time(now, language or "en")]
        out.append(dict(zip(lang["fields"], values)))
    path = _target(root, to, f"moodle-grades-{aid}.csv")
    write_csv(path, lang["fields"], out, bom=language == "zh_cn")
    return path, out, notes


def _assignment_names(root, aid):
    """What a course calls an assignment besides its id: the heading of its notebook
    ("作业 02：回归损失函数") and that heading's parts ("作业 02", "回归损失函数")."""
    import json
    from .course import source_dir

    try:
        with open(os.path.join(source_dir(root), aid, aid + ".ipynb"), encoding="utf-8") as fh:
            cells = json.load(fh).get("cells", [])
    except (OSError, ValueError, AttributeError):
        return []
    for c in cells:
        text = "".join(c.get("source", [])) if isinstance(c.get("source"), list) else str(c.get("source", ""))
        if c.get("cell_type") == "markdown":
            for line in text.splitlines():
                if line.startswith("# "):
                    heading = line[2:].strip()
                    return [heading] + [part.strip() for part in re.split(r"[：:]", heading) if part.strip()]
    return []


def _norm_title(text):
    """A title compared with an assignment's names: case-folded, letters and digits only,
    leading zeros of numbers dropped ("作业 02" and "作业2" are one)."""
    text = "".join(ch for ch in str(text).casefold() if ch.isalnum())
    return re.sub(r"(?<!\d)0+(?=\d)", "", text)


def _title_for(root, aid, titles):
    """The one title among ``titles`` (Canvas column titles, "<name> (<id>)") that names the
    assignment: its id (contained: "Homework 02_regression (123)"), or its notebook's
    heading or a part of it ("作业 02 (123)", "回归损失函数 (123)"). None when none does;
    an ExportError when several do."""
    names = {_norm_title(n) for n in _assignment_names(root, aid)} - {""}
    own = _norm_title(aid)
    found = []
    for title in titles:
        stem = _norm_title(CANVAS_TITLE_ID.sub("", title))
        if stem and (own in stem or stem in names):
            found.append(title)
    if len(found) > 1:
        raise ExportError(f"several Canvas columns name {aid}: {'; '.join(found)}: pass --column with the one to fill")
    return found[0] if found else None


def _read_csv_table(path):
    """(header, rows as lists, had a BOM) of a CSV a platform or a spreadsheet wrote: UTF-8
    (with or without BOM), or GB18030 (Excel on a Chinese Windows saves CSV so)."""
    import io

    with open(path, "rb") as fh:
        raw = fh.read()
    bom = raw.startswith(b"\xef\xbb\xbf")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("gb18030")
    table = list(csv.reader(io.StringIO(text, newline="")))
    if not table:
        raise ExportError(f"{path} is empty")
    return [h.strip() for h in table[0]], table[1:], bom


def _canvas_sheet(path):
    """A Canvas gradebook export: (assignment titles, {title: points possible}, {Canvas user
    id: {column: value}})."""
    header, lines, _ = _read_csv_table(path)
    if len(header) < 3 or header[0] != "Student" or header[1] != "ID":
        raise ExportError(f"{path}: not a Canvas gradebook export (its columns begin with Student, ID, ...; "
                          f"found: {', '.join(header[:5])})")
    titles = [h for h in header if CANVAS_TITLE_ID.search(h)]
    possible, students = {}, {}
    for line in lines:
        line = line + [""] * (len(header) - len(line))
        if "Points Possible" in line[0]:
            for title in titles:
                value = line[header.index(title)].strip()
                try:
                    possible[title] = float(value)
                except ValueError:
                    pass
        elif line[1].strip():
            students[line[1].strip()] = dict(zip(header, line))
    return titles, possible, students


def _export_canvas(root, rows, aids, known, info, roster, to, column, points, worksheet, notes):
    titles_seen, possible, sheet = ([], {}, {}) if not worksheet else _canvas_sheet(worksheet)
    roster_titles = [c for c in getattr(roster, "columns", []) if CANVAS_TITLE_ID.search(c)]
    if column:
        titles = [column]
    else:
        titles = []
        for aid in aids:
            title = _title_for(root, aid, titles_seen + [t for t in roster_titles if t not in titles_seen])
            if title is None:
                title = aid
                notes.notes.append(f"{aid}: no column of the worksheet or roster names it, so its column is titled "
                                   f"{aid!r}, which Canvas imports as a new assignment; pass --worksheet with a "
                                   "Canvas gradebook export, or --column 'TITLE (ID)'")
            titles.append(title)
    target = {}
    for aid, title in zip(aids, titles):
        if points is not None:
            target[aid] = float(points)
        elif title in possible:
            target[aid] = possible[title]
            mine = max((r["max_score"] for r in rows if r["assignment"] == aid), default=0.0)
            if abs(mine - possible[title]) > 1e-9:
                notes.notes.append(f"{aid}: scores out of {_number(mine)} rescaled to the {_number(possible[title])} "
                                   f"Points Possible of {title!r} in {os.path.basename(worksheet)}")
        else:
            target[aid] = None
    cell = {(r["student_id"], r["assignment"]): r for r in rows if r["assignment"] in aids}
    by_id = {}
    for student in sorted({s for s, _ in cell}):
        r, seen = info(student), known.get(student) or {}
        cid = str(r.get("canvas_id") or seen.get("id") or (student if student.isdigit() else ""))
        if not cid:
            if any(cell[(student, aid)]["status"] != "missing" for aid in aids if (student, aid) in cell):
                notes.append(f"{student}: no Canvas user id (add a canvas_id column to the roster)")
            continue
        by_id.setdefault(cid, []).append(student)
    merged = _one_row_per_id(by_id, cell, aids, target, "Canvas user", notes)
    out = []
    for cid, (students, grades) in sorted(merged.items(), key=lambda item: (len(item[0]), item[0])):
        student = students[0]
        r, seen, there = info(student), known.get(student) or {}, sheet.get(cid, {})
        line = {"Student": r.get("name") or there.get("Student") or seen.get("name") or student, "ID": cid,
                "SIS User ID": r.get("sis_user_id") or there.get("SIS User ID", ""),
                "SIS Login ID": r.get("sis_login_id") or there.get("SIS Login ID", ""),
                "Section": r.get("section") or there.get("Section", "")}
        for aid, title in zip(aids, titles):
            g = grades.get(aid)
            if g is not None:
                mark = _mark(g, f"Canvas user {cid} ({', '.join(students)})")
                if mark:
                    notes.marked.append(mark)
            line[title] = "" if g is None or g["status"] == "missing" else _number(_scaled(g, target[aid])[0])
        out.append(line)
    possible_row = {"Student": CANVAS_POINTS_POSSIBLE}
    for aid, title in zip(aids, titles):
        mine = max((r["max_score"] for r in rows if r["assignment"] == aid), default=0.0)
        possible_row[title] = _number(target[aid] if target[aid] is not None else mine)
    path = _target(root, to, "canvas-grades.csv")
    write_csv(path, CANVAS_FIELDS + titles, [possible_row] + out)
    return path, out, notes


def _moodle_language(header, path):
    for code, lang in MOODLE_LANGUAGES.items():
        if lang["identifier"] in header:
            return code, lang
    names = " or ".join(repr(lang["identifier"]) for lang in MOODLE_LANGUAGES.values())
    raise ExportError(f"{path}: no {names} column; is it Moodle's grading worksheet? (found: {', '.join(header[:6])})")


def _participant_id(text):
    """The participant number of a worksheet identifier in any language ("Participant 501",
    "参与人501"), or the text itself."""
    text = (text or "").strip()
    for lang in MOODLE_LANGUAGES.values():
        prefix = lang["participant"].strip()
        if text.startswith(prefix):
            return text[len(prefix):].strip()
    return text


def _fill_worksheet(root, worksheet, to, aid, cell, seen, roster, participant, points, now, notes):
    """Moodle's own grading worksheet, in the teacher's language, its rows limited to the
    students lossgrader graded, with their grade and its time filled in, every column kept
    (Moodle keeps the grades of the rows left out)."""
    header, lines, bom = _read_csv_table(worksheet)
    code, lang = _moodle_language(header, worksheet)
    if lang["grade"] not in header:
        raise ExportError(f"{worksheet}: no {lang['grade']!r} column, which a Moodle worksheet in this language "
                          f"({code}) has; is it Moodle's grading worksheet?")
    if lang["modified"] not in header:
        header.append(lang["modified"])
    at = {name: n for n, name in enumerate(header)}
    first = at[lang["identifier"]] + 1
    # the student's name and e-mail (and other identity fields) come between the identifier and the status
    identity = list(range(first, at[lang["status"]])) if lang["status"] in at else [first]
    graded = {s for (s, _), r in cell.items() if r["status"] != "missing"}
    by_pid = {participant(s): s for s in graded if participant(s)}
    by_name = {}
    for s in graded:
        r = (roster.students.get(s) if roster is not None else None) or {}
        for key in (r.get("name"), (seen.get(s) or {}).get("name"), r.get("email")):
            if key:
                by_name[key.strip().casefold()] = s
    found = {}
    for line in lines:
        line = line + [""] * (len(header) - len(line))
        student = by_pid.get(_participant_id(line[at[lang["identifier"]]]))
        for n in identity:
            if student is None and n < len(line) and line[n].strip():
                student = by_name.get(line[n].strip().casefold())
        if student is not None:
            found.setdefault(_participant_id(line[at[lang["identifier"]]]), []).append((student, line))
    out = []
    for pid, matches in sorted(found.items(), key=lambda item: item[0]):
        students = sorted({s for s, _ in matches})
        merged = _one_row_per_id({pid: students}, cell, [aid], {aid: points}, "Moodle participant", notes)
        g = merged[pid][1][aid]
        line = list(matches[0][1])
        mark = _mark(g, f"{line[at[lang['identifier']]]} ({', '.join(students)})")
        if mark:
            notes.marked.append(mark)
        line[at[lang["grade"]]] = _number(_scaled(g, points)[0])
        line[at[lang["modified"]]] = _moodle_time(now, code)
        out.append(dict(zip(header, line)))
    used = {s for matches in found.values() for s, _ in matches}
    notes += [f"{s}: not found in the worksheet {os.path.basename(worksheet)}" for s in sorted(graded - used)]
    for s in sorted(set(s for s, _ in cell) - graded):
        mark = _mark(cell[(s, aid)], s)
        if mark:
            notes.marked.append(mark)
    path = _target(root, to, f"moodle-grades-{aid}.csv")
    write_csv(path, header, out, bom=bom)
    return path, out, notes


def _target(root, to, default):
    return to if to and os.path.isabs(to) else os.path.join(root, to or default)
