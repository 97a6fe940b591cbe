"""Every CSV lossgrader writes goes through ``write_csv``: one place for the formula rule.

A spreadsheet (Excel, LibreOffice, Google Sheets) opening a CSV runs a cell that starts
with ``=``, ``+``, ``-`` or ``@`` as a formula (``=HYPERLINK(...)``, DDE payloads), and
some also when a tab or carriage return comes first. Student ids, platform names and file
names reach our CSVs (grades.csv, canvas-grades.csv, moodle-grades-*.csv,
collect-report.csv), so OWASP's rule (CSV injection) is applied to every text cell: one
starting with one of those characters gets a leading single quote, which spreadsheets show
as text. Numbers we computed stay numbers: ``int``/``float`` values and ``Numeral`` (the
text of a number we formatted, e.g. ``"-1.5"``) are written as they are.
"""
from __future__ import annotations

import csv
import os

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


class Numeral(str):
    """The text of a number lossgrader formatted itself (a score): written as is."""


def cell(value):
    """One cell as written: text that a spreadsheet would run as a formula gets a leading '."""
    if value is None:
        return ""
    if isinstance(value, (bool, int, float, Numeral)):
        return value
    text = str(value)
    return "'" + text if text.startswith(FORMULA_START) else text


def write_csv(path, fields, rows, bom=False):
    """Write ``rows`` (dicts; keys not in ``fields`` are left out, missing ones empty) under
    the header ``fields``, every cell through ``cell``; atomic (a temporary file replaced
    into place). UTF-8, what Canvas's and Moodle's import pages expect by default; with
    ``bom`` a byte-order mark first, as Moodle writes its own worksheets (Excel then shows
    Chinese text; Moodle's upload drops the mark)."""
    tmp = path + ".tmp"
    with open(tmp, "w", newline="", encoding="utf-8-sig" if bom else "utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow([cell(f) for f in fields])
        for row in rows:
            writer.writerow([cell(row.get(f, "")) for f in fields])
    os.replace(tmp, path)
