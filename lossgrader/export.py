"""``lossgrader export``: the grades CSV and the plain-text grade table."""
from __future__ import annotations

import csv
import os
import time

from .csvfile import Numeral, write_csv
from .gradebook import grade_rows

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
    failed = [r for r in rows if r["status"] == "failed"]
    if failed:
        out.append("")
        out.append("! autograding failed (0 points):")
        out += [f"  {r['student_id']}/{r['assignment']}: {r['reason']}" for r in failed]
    return "\n".join(out)


# ---------------------------------------------------------------- learning platforms
# Canvas: Grades > Import takes a CSV with the columns Student, ID, SIS User ID, SIS Login ID,
# Section, then one column per assignment titled "<name> (<assignment id>)" (the id is how
# Canvas recognises an existing assignment; with a title without one Canvas may create a
# new assignment). Students are matched by ID (Canvas user id). Empty cells leave a grade
# as it is.
# Moodle: Assignment > View all submissions > "Upload grading worksheet" (offline grading
# worksheet, assignfeedback_offline) reads the columns Identifier ("Participant <id>",
# per assignment), Grade and "Last modified (grade)"; a row is skipped when Moodle's grade
# is newer than that time, unless "Allow updating records that have been modified more
# recently in Moodle than in the spreadsheet" is ticked. One assignment per worksheet.

LMS_FORMATS = ("canvas", "moodle")
CANVAS_FIELDS = ["Student", "ID", "SIS User ID", "SIS Login ID", "Section"]
MOODLE_FIELDS = ["Identifier", "Full name", "Email address", "Status", "Grade", "Maximum grade",
                 "Grade can be changed", "Last modified (submission)", "Last modified (grade)"]
MOODLE_PARTICIPANT = "Participant "


class ExportError(ValueError):
    """The platform export cannot be written as asked."""


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


def _moodle_time(now):
    # Moodle writes its worksheets with userdate(..., strftimedatetime) and reads them back
    # with PHP's strtotime: the same format, English names (C locale).
    return time.strftime("%A, %d %B %Y, %I:%M %p", time.localtime(now))


def export_lms(root, fmt, to=None, roster=None, assignment=None, column=None, points=None,
               worksheet=None, now=None):
    """Write a gradebook-import CSV for Canvas or Moodle; returns (path, rows written, problems).

    roster: Roster or path (lossgrader.collect.Roster): platform ids, names, emails, SIS
    ids and sections of the students; ids that ``lossgrader collect`` saw in a Canvas or
    Moodle download are used too (.lossgrader/lms-ids.json). assignment: the one
    assignment to export (required for Moodle when the gradebook has several; Canvas takes
    every assignment, one column each). column: the Canvas column title, e.g.
    "作业 2 (12345)" copied from a Canvas gradebook export (one assignment only).
    points: rescale every score to this many points (the platform's maximum). worksheet
    (Moodle): the grading worksheet downloaded from Moodle; its rows of graded students
    are written back with Grade filled in, every column kept. Students without a platform id are left out and listed
    in the problems."""
    from .collect import Roster, load_lms_ids

    if fmt not in LMS_FORMATS:
        raise ExportError(f"unknown platform {fmt!r}: one of {', '.join(LMS_FORMATS)}")
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

    problems = []
    if fmt == "canvas":
        known = ids.get("canvas", {})
        cell = {(r["student_id"], r["assignment"]): r for r in rows if r["assignment"] in aids}
        titles = [column] if column else aids
        out = []
        for student in sorted({s for s, _ in cell}):
            r = info(student)
            seen = known.get(student) or {}
            cid = r.get("canvas_id") or seen.get("id") or (student if student.isdigit() else "")
            if not cid:
                problems.append(f"{student}: no Canvas user id (add a canvas_id column to the roster)")
                continue
            line = {"Student": r.get("name") or seen.get("name") or student, "ID": cid,
                    "SIS User ID": r.get("sis_user_id", ""), "SIS Login ID": r.get("sis_login_id", ""),
                    "Section": r.get("section", "")}
            for aid, title in zip(aids, titles):
                g = cell.get((student, aid))
                line[title] = "" if g is None or g["status"] == "missing" else _number(_scaled(g, points)[0])
            out.append(line)
        path = _target(root, to, "canvas-grades.csv")
        write_csv(path, CANVAS_FIELDS + titles, out)
        return path, out, problems

    if len(aids) != 1:
        raise ExportError("a Moodle grading worksheet holds one assignment: pass --assignment ID "
                          f"(one of {', '.join(aids)})")
    aid = aids[0]
    seen = ids.get("moodle", {}).get(aid, {})
    graded = {r["student_id"]: r for r in rows if r["assignment"] == aid and r["status"] != "missing"}

    def participant(student):
        return (seen.get(student) or {}).get("id") or info(student).get("moodle_id", "")

    if worksheet:
        return _fill_worksheet(root, worksheet, to, aid, graded, seen, roster, participant, points, now)
    out = []
    for student, g in sorted(graded.items()):
        pid = participant(student)
        if not pid:
            problems.append(f"{student}: no Moodle participant id for {aid} (collect the Moodle download, "
                            "or add moodle_id to the roster, or pass --worksheet)")
            continue
        score, max_score = _scaled(g, points)
        out.append({"Identifier": MOODLE_PARTICIPANT + str(pid),
                    "Full name": info(student).get("name") or (seen.get(student) or {}).get("name") or student,
                    "Email address": info(student).get("email", ""), "Status": g["status"],
                    "Grade": _number(score), "Maximum grade": _number(max_score),
                    "Grade can be changed": "Yes", "Last modified (submission)": "",
                    "Last modified (grade)": _moodle_time(now)})
    path = _target(root, to, f"moodle-grades-{aid}.csv")
    write_csv(path, MOODLE_FIELDS, out)
    return path, out, problems


def _fill_worksheet(root, worksheet, to, aid, graded, seen, roster, participant, points, now):
    """Moodle's own grading worksheet, its rows limited to the students lossgrader graded,
    with their Grade and "Last modified (grade)" filled in (Moodle keeps the grades of the
    rows left out)."""
    with open(worksheet, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = list(reader.fieldnames or [])
        lines = list(reader)
    for need in ("Identifier", "Grade"):
        if need not in header:
            raise ExportError(f"{worksheet}: no {need!r} column; is it Moodle's grading worksheet?")
    if "Last modified (grade)" not in header:
        header.append("Last modified (grade)")
    by_pid = {str(participant(s)): s for s in graded if participant(s)}
    by_name = {}
    for s in graded:
        r = (roster.students.get(s) if roster is not None else None) or {}
        for key in (r.get("name"), (seen.get(s) or {}).get("name"), r.get("email")):
            if key:
                by_name[key.strip().casefold()] = s
    out, problems, used = [], [], set()
    for line in lines:
        pid = (line.get("Identifier") or "").strip()
        pid = pid[len(MOODLE_PARTICIPANT):] if pid.startswith(MOODLE_PARTICIPANT) else pid
        student = by_pid.get(pid)
        for key in ("Full name", "Email address"):
            if student is None and line.get(key):
                student = by_name.get(line[key].strip().casefold())
        if student is not None:
            score, _ = _scaled(graded[student], points)
            line["Grade"] = _number(score)
            line["Last modified (grade)"] = _moodle_time(now)
            used.add(student)
            out.append(line)
    problems += [f"{s}: not found in the worksheet {os.path.basename(worksheet)}" for s in sorted(set(graded) - used)]
    path = _target(root, to, f"moodle-grades-{aid}.csv")
    write_csv(path, header, out)
    return path, out, problems


def _target(root, to, default):
    return to if to and os.path.isabs(to) else os.path.join(root, to or default)
