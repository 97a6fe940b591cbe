"""``lossgrader export``: the grades CSV and the plain-text grade table."""
from __future__ import annotations

import csv
import os

from .gradebook import grade_rows

GRADES_CSV = "grades.csv"
FIELDS = ["student_id", "assignment", "score", "max_score", "status", "reason"]


def export(root, to=None):
    """Write the grades CSV (default grades.csv in the course directory); returns its path and rows."""
    rows = grade_rows(root)
    path = os.path.join(root, to or GRADES_CSV) if not (to and os.path.isabs(to)) else to
    tmp = path + ".tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
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
