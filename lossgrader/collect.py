"""``lossgrader collect``: hand-ins into submitted/<student>/<assignment>/<assignment>.ipynb.

The source is a folder or a .zip file as a learning platform hands it out:

- ``nbgrader``: ``<student>/<id>/<id>.ipynb`` (with any other files of that folder),
  ``<student>/<id>.ipynb`` or ``<student>_<id>.ipynb``;
- ``canvas`` ("Download Submissions"): ``<sortablename>_<userid>_<submissionid>_<file>``,
  with ``late_`` after the name for late hand-ins; Canvas adds ``-1``, ``-2`` ... to the
  file name of a re-submission with the same name;
- ``moodle`` ("Download all submissions"): ``<Full name>_<participant id>_assignsubmission_file/<file>``
  (folders, Moodle 3.1 and later; older folders end in ``_``) or
  ``<Full name>_<participant id>_assignsubmission_file_<file>`` (flat);
- a regular expression (``pattern``) searched in the path of each file relative to the
  download, with the named group ``student`` (or nbgrader's ``student_id``) and optionally
  ``assignment`` and ``timestamp`` (any sortable text: the larger is the newer hand-in), like
  nbgrader's ``zip_collect`` ``FileNameCollectorPlugin.named_regexp``.

A roster (CSV, see ``Roster``) maps platform ids and names to student ids. Without one, a
Canvas student is named by the Canvas user id, a Moodle student by the full name (spaces as
``_``), a pattern's student by the captured text. The platform ids seen are remembered in
``.lossgrader/lms-ids.json`` so that ``lossgrader export --format canvas|moodle`` can map the
grades back.

Several hand-ins of one student for one assignment: the latest is kept (highest submission
id, then Canvas re-submission number, then timestamp/file time); the others are reported as
superseded. A hand-in already in submitted/ that differs from the one collected is replaced,
its previous copy kept under ``.lossgrader/replaced/`` and the replacement reported. Every
file of the source gets one row in the report: copied, replaced, unchanged, superseded,
unmatched, skipped (assignment not selected) or ignored (not a notebook).
"""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import tempfile
import time
import zipfile
from dataclasses import dataclass, field

from .course import STATE_DIR, assignments

FORMATS = ("auto", "nbgrader", "canvas", "moodle")
REPORT_CSV = "collect-report.csv"
REPORT_FIELDS = ["file", "status", "student_id", "assignment", "platform_id", "detail"]
LMS_IDS = "lms-ids.json"
MAX_FILE_BYTES = 200 * 2 ** 20       # a notebook larger than this is not a hand-in
SKIP_NAMES = {"__MACOSX", ".DS_Store", "Thumbs.db", ".ipynb_checkpoints"}

CANVAS_RE = re.compile(r"^(?P<name>[^_/]*)_(?:(?P<late>late)_)?(?P<uid>\d+)_(?P<sub>\d+)_(?P<file>[^/]+)$",
                       re.IGNORECASE)
MOODLE_RE = re.compile(r"(?:^|/)(?P<name>[^/_]+)_(?P<pid>\d+)_assignsubmission_file(?:_?/(?P<path>.+)|_(?P<flat>[^/]+))$")
RESUBMIT_RE = re.compile(r"^(?P<stem>.*?)(?:-(?P<n>\d+)| \((?P<m>\d+)\))$")


class CollectError(ValueError):
    """The source, pattern or roster cannot be used."""


def _norm_name(text):
    """Names compared across platforms: case-folded, letters and digits only
    (Canvas writes "Smith, John" as "smithjohn" in file names)."""
    return "".join(ch for ch in str(text).casefold() if ch.isalnum())


def _slug(text):
    """A student id made from a name: word characters kept, the rest as single '_'."""
    return re.sub(r"[^\w.-]+", "_", str(text).strip(), flags=re.UNICODE).strip("._") or "unnamed"


class Roster:
    """roster.csv: one row per student. Columns (header names, any case, any order):

    ``student_id`` (required: the id in submitted/ and the gradebook), ``canvas_id`` (Canvas
    user id: the number in download file names, "ID" in Canvas's gradebook export),
    ``moodle_id`` (Moodle participant id, "Participant N"; Moodle numbers participants per
    assignment, so this is only a fallback for the ids collect records), ``platform_id``
    (what a ``--pattern``'s student group captures), ``name`` (as the platform shows it:
    Canvas "Last, First", Moodle full name), ``email``, ``sis_user_id``, ``sis_login_id``,
    ``section``. Empty cells are allowed."""

    COLUMNS = ("student_id", "canvas_id", "moodle_id", "platform_id", "name", "email",
               "sis_user_id", "sis_login_id", "section")

    def __init__(self, rows):
        self.rows = rows
        self.by = {}
        twice = set()           # (column, value) of two different students: never matched
        for row in rows:
            for col in ("canvas_id", "moodle_id", "platform_id", "student_id", "email", "name"):
                if row.get(col):
                    key = _norm_name(row[col]) if col == "name" else row[col].strip().casefold()
                    seen = self.by.setdefault(col, {}).setdefault(key, row)
                    if seen["student_id"] != row["student_id"]:
                        twice.add((col, key))
        for col, key in twice:
            del self.by[col][key]
        self.students = {row["student_id"]: row for row in rows}

    @classmethod
    def load(cls, path):
        try:
            with open(path, newline="", encoding="utf-8-sig") as fh:
                reader = csv.DictReader(fh)
                header = {(h or "").strip().lower(): h for h in reader.fieldnames or []}
                if "student_id" not in header:
                    raise CollectError(f"{path}: the roster needs a 'student_id' column "
                                       f"(found: {', '.join(reader.fieldnames or []) or 'nothing'})")
                rows = []
                for raw in reader:
                    row = {key: (raw.get(orig) or "").strip() for key, orig in header.items()}
                    if row["student_id"]:
                        rows.append(row)
        except OSError as exc:
            raise CollectError(f"roster {path} cannot be read: {exc}") from exc
        return cls(rows)

    def find(self, **keys):
        """The roster row of the first key that matches (keys: column=value), or None."""
        for col, value in keys.items():
            if value in (None, ""):
                continue
            value = _norm_name(value) if col == "name" else str(value).strip().casefold()
            row = self.by.get(col, {}).get(value)
            if row is not None:
                return row
        return None


@dataclass
class Candidate:
    """One hand-in found in the source (a notebook, plus the other files of an nbgrader folder)."""
    rel: str                          # path of the notebook relative to the source
    path: str                         # where it is on disk
    student: str = None               # student id (after the roster)
    assignment: str = None
    platform_id: str = ""
    name: str = ""
    rank: tuple = ()                  # larger = newer
    extras: list = field(default_factory=list)   # (rel, path) copied along (nbgrader folders)
    note: str = ""
    explicit: bool = False            # the assignment comes from a pattern's own group


def load_lms_ids(root):
    try:
        with open(os.path.join(root, STATE_DIR, LMS_IDS), encoding="utf-8") as fh:
            data = json.load(fh)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _save_lms_ids(root, data):
    path = os.path.join(root, STATE_DIR, LMS_IDS)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, ensure_ascii=False, indent=1, sort_keys=True)
    os.replace(tmp, path)


def _extract(zpath, dest, rows):
    """Unpack a zip safely: no absolute paths, no '..', nothing above MAX_FILE_BYTES;
    file times from the archive (they order re-submissions)."""
    try:
        zf = zipfile.ZipFile(zpath)
    except (OSError, zipfile.BadZipFile) as exc:
        raise CollectError(f"{zpath} is not a readable zip file: {exc}") from exc
    with zf:
        for info in zf.infolist():
            if info.is_dir():
                continue
            name = info.filename.replace("\\", "/")
            parts = [p for p in name.split("/") if p not in ("", ".")]
            if name.startswith("/") or ".." in parts or not parts:
                rows.append(_row(name, "ignored", detail="unsafe path in the zip file"))
                continue
            if any(p in SKIP_NAMES for p in parts):
                continue
            if info.file_size > MAX_FILE_BYTES:
                rows.append(_row(name, "ignored", detail=f"larger than {MAX_FILE_BYTES >> 20} MiB"))
                continue
            target = os.path.join(dest, *parts)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
            try:
                stamp = time.mktime(info.date_time + (0, 0, -1))
                os.utime(target, (stamp, stamp))
            except (OverflowError, ValueError):
                pass


def _walk(top):
    """Relative paths (with '/') of the files under top, hidden entries and OS litter skipped."""
    found = []
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in SKIP_NAMES)
        for f in sorted(filenames):
            if f.startswith(".") or f in SKIP_NAMES:
                continue
            found.append(os.path.relpath(os.path.join(dirpath, f), top).replace(os.sep, "/"))
    return found


def _row(rel, status, student="", assignment="", platform_id="", detail=""):
    return {"file": rel, "status": status, "student_id": student or "", "assignment": assignment or "",
            "platform_id": platform_id or "", "detail": detail}


def _mtime(path):
    try:
        return os.path.getmtime(path)
    except OSError:
        return 0.0


def _resubmission(stem):
    """("02_regression", 2) for "02_regression-2" (Canvas) or "02_regression (2)" (browsers)."""
    m = RESUBMIT_RE.match(stem)
    if m:
        return m.group("stem"), int(m.group("n") or m.group("m"))
    return stem, 0


def _assignment_from_name(filename, known):
    """The assignment a file name names: its stem (re-submission suffix removed) is an id,
    or exactly one known id occurs in it; None otherwise."""
    stem = os.path.splitext(os.path.basename(filename))[0]
    base, _ = _resubmission(stem)
    for s in (stem, base):
        if s in known:
            return s
    inside = [a for a in known if a in stem]
    return inside[0] if len(inside) == 1 else None


# ---------------------------------------------------------------- parsers: one per convention
# Each returns (candidates, rows): rows for the files it cannot use.

def _parse_nbgrader(files, top, known):
    cands, rows, folders = [], [], {}
    for rel in files:
        parts = rel.split("/")
        path = os.path.join(top, *parts)
        if len(parts) >= 3 and parts[1] in known:
            folders.setdefault((parts[0], parts[1]), []).append((rel, path))
        elif len(parts) == 2 and parts[1].endswith(".ipynb") and parts[1][:-6] in known:
            cands.append(Candidate(rel, path, student=parts[0], assignment=parts[1][:-6],
                                   platform_id=parts[0], rank=(_mtime(path),)))
        elif len(parts) == 1 and rel.endswith(".ipynb"):
            stem = rel[:-6]
            match = [a for a in known if stem.endswith("_" + a) and len(stem) > len(a) + 1]
            if match:
                aid = max(match, key=len)
                student = stem[: -len(aid) - 1]
                cands.append(Candidate(rel, path, student=student, assignment=aid, platform_id=student,
                                       rank=(_mtime(path),)))
            else:
                rows.append(_row(rel, "unmatched", detail="not <student>_<assignment>.ipynb for a known assignment"))
        else:
            rows.append(_row(rel, "unmatched", detail="not in an nbgrader layout "
                                                      "(<student>/<assignment>/<assignment>.ipynb, "
                                                      "<student>/<assignment>.ipynb, <student>_<assignment>.ipynb)"))
    for (student, aid), entries in sorted(folders.items()):
        notebooks = [e for e in entries if e[0].endswith(".ipynb") and e[0].count("/") == 2]
        exact = [e for e in notebooks if os.path.basename(e[0]) == aid + ".ipynb"]
        pick = exact or sorted(notebooks, key=lambda e: _mtime(e[1]))[-1:]
        extras = [e for e in entries if e not in notebooks]
        for e in notebooks:
            if pick and e is not pick[0]:
                rows.append(_row(e[0], "ignored", student, aid, detail=f"another notebook beside {pick[0][0]}"))
        if not pick:
            for e in entries:
                rows.append(_row(e[0], "unmatched", student, aid, detail="no notebook in this hand-in folder"))
            continue
        cands.append(Candidate(pick[0][0], pick[0][1], student=student, assignment=aid, platform_id=student,
                               rank=(max(_mtime(p) for _, p in entries),), extras=extras))
    return cands, rows


def _parse_canvas(files, top, known):
    cands, rows = [], []
    for rel in files:
        path = os.path.join(top, *rel.split("/"))
        m = CANVAS_RE.match(os.path.basename(rel))
        if not m:
            rows.append(_row(rel, "unmatched", detail="not a Canvas download name "
                                                      "(<name>_[late_]<userid>_<submissionid>_<file>)"))
            continue
        stem, ext = os.path.splitext(m.group("file"))
        _, again = _resubmission(stem)
        cands.append(Candidate(rel, path, platform_id=m.group("uid"), name=m.group("name"),
                               assignment=_assignment_from_name(m.group("file"), known),
                               rank=(int(m.group("sub")), again, _mtime(path)),
                               note="late" if m.group("late") else ""))
    return cands, rows


def _parse_moodle(files, top, known):
    cands, rows = [], []
    for rel in files:
        path = os.path.join(top, *rel.split("/"))
        m = MOODLE_RE.search(rel)
        if not m:
            rows.append(_row(rel, "unmatched", detail="not a Moodle download name "
                                                      "(<Full name>_<participant id>_assignsubmission_file/<file>)"))
            continue
        inner = m.group("path") or m.group("flat")
        stem = os.path.splitext(os.path.basename(inner))[0]
        _, again = _resubmission(stem)
        cands.append(Candidate(rel, path, platform_id=m.group("pid"), name=m.group("name"),
                               assignment=_assignment_from_name(inner, known),
                               rank=(_mtime(path), again)))
    return cands, rows


def _parse_pattern(regex, files, top, known):
    cands, rows = [], []
    for rel in files:
        path = os.path.join(top, *rel.split("/"))
        m = regex.search(rel)
        groups = m.groupdict() if m else {}
        student = groups.get("student") or groups.get("student_id")
        if not student:
            rows.append(_row(rel, "unmatched", detail=f"the pattern {regex.pattern!r} does not match"))
            continue
        aid = groups.get("assignment") or _assignment_from_name(rel, known)
        stamp = groups.get("timestamp") or ""
        stem = os.path.splitext(os.path.basename(rel))[0]
        _, again = _resubmission(stem)
        cands.append(Candidate(rel, path, platform_id=student, name=student, assignment=aid,
                               rank=(stamp, again, _mtime(path)), explicit=bool(groups.get("assignment"))))
    return cands, rows


def _detect(files, top, known):
    """The convention most files follow. Ties go to the most specific one: a Canvas name
    also reads as nbgrader's flat <student>_<assignment>.ipynb."""
    scores = {}
    for fmt, parse in (("moodle", _parse_moodle), ("canvas", _parse_canvas), ("nbgrader", _parse_nbgrader)):
        cands, _ = parse(files, top, known)
        scores[fmt] = sum(1 + len(c.extras) for c in cands)
    return max(scores, key=lambda f: (scores[f], -list(scores).index(f)))


def _who(fmt, cand, roster):
    """(student id, None) or (None, why not)."""
    if fmt == "canvas":
        if roster is None:
            return cand.platform_id, None
        row = roster.find(canvas_id=cand.platform_id)
        if row is None:         # by name only someone whose Canvas id the roster does not give
            row = roster.find(name=cand.name)
            row = None if row is not None and row.get("canvas_id") else row
        what = f"Canvas user {cand.platform_id} ({cand.name})"
    elif fmt == "moodle":
        if roster is None:
            if cand.name.casefold() == "participant":      # blind marking hides the name
                return f"participant_{cand.platform_id}", None
            return _slug(cand.name), None
        row = roster.find(name=cand.name, moodle_id=cand.platform_id)
        what = f"Moodle participant {cand.platform_id} ({cand.name})"
    else:
        if roster is None:
            return _slug(cand.platform_id) if fmt == "pattern" else cand.platform_id, None
        row = roster.find(platform_id=cand.platform_id, student_id=cand.platform_id, name=cand.platform_id)
        what = f"student {cand.platform_id!r}"
    if row is None:
        return None, f"{what} is not in the roster"
    return row["student_id"], None


def collect(root, source, only_assignments=None, fmt="auto", pattern=None, roster=None, report=None):
    """Copy the hand-ins of ``source`` (folder or .zip) into submitted/<student>/<id>/<id>.ipynb.

    fmt: "auto", "nbgrader", "canvas" or "moodle" (ignored with pattern); pattern: a regular
    expression with the named group ``student``; roster: a Roster or the path of a roster
    CSV; only_assignments: assignment ids. With one id, a platform download (canvas, moodle,
    pattern without an ``assignment`` group) is taken to be that assignment's hand-ins
    whatever the files are called; with
    several or none, the file name says which assignment (<id>.ipynb, also with Canvas's
    "-1" suffix) and only the selected ones are collected. nbgrader layouts always name the
    assignment by their folders. report: path of the CSV report to write (None: none).

    Returns a ``Collected`` list of the (student, assignment) pairs in submitted/ now, with
    ``.rows`` (one per source file, REPORT_FIELDS), ``.format`` and ``.report``."""
    root = os.path.abspath(root)
    known = assignments(root)
    selected = list(only_assignments or [])
    if fmt not in FORMATS:
        raise CollectError(f"unknown format {fmt!r}: one of {', '.join(FORMATS)}")
    regex = None
    if pattern:
        try:
            regex = re.compile(pattern)
        except re.error as exc:
            raise CollectError(f"--pattern {pattern!r} is not a regular expression: {exc}") from exc
        if not {"student", "student_id"} & set(regex.groupindex):
            raise CollectError(f"--pattern {pattern!r} needs a named group (?P<student>...)")
    if isinstance(roster, (str, os.PathLike)):
        roster = Roster.load(roster)
    source = os.path.abspath(source)
    rows = []
    with tempfile.TemporaryDirectory(prefix="lossgrader-collect-") as tmp:
        if os.path.isfile(source) and zipfile.is_zipfile(source):
            top = tmp
            _extract(source, top, rows)
        elif os.path.isdir(source):
            top = source
        else:
            raise CollectError(f"{source} is neither a folder nor a zip file")
        files = _walk(top)
        if regex is not None:
            used = "pattern"
            cands, bad = _parse_pattern(regex, files, top, known)
        else:
            used = _detect(files, top, known) if fmt == "auto" else fmt
            parse = {"nbgrader": _parse_nbgrader, "canvas": _parse_canvas, "moodle": _parse_moodle}[used]
            cands, bad = parse(files, top, known)
        rows += bad
        platform = used in ("canvas", "moodle", "pattern")

        groups, namesakes = {}, {}
        for c in cands:
            namesakes.setdefault(c.name, set()).add(c.platform_id)
        for c in cands:
            if not c.rel.endswith(".ipynb"):
                rows.append(_row(c.rel, "ignored", platform_id=c.platform_id, detail="not a notebook (.ipynb)"))
                continue
            if (c.student is None and used == "moodle" and roster is None and len(namesakes[c.name]) > 1
                    and c.name.casefold() != "participant"):
                rows.append(_row(c.rel, "unmatched", platform_id=c.platform_id,
                                 detail=f"participants {', '.join(sorted(namesakes[c.name]))} are all called "
                                        f"{c.name!r}: give a roster (--roster) to tell them apart"))
                continue
            if c.student is None:
                c.student, why = _who(used, c, roster)
                if why:
                    rows.append(_row(c.rel, "unmatched", platform_id=c.platform_id, detail=why))
                    continue
            elif roster is not None:
                c.student, why = _who(used, c, roster)
                if why:
                    rows.append(_row(c.rel, "unmatched", platform_id=c.platform_id, detail=why))
                    continue
            named = c.assignment
            if platform and len(selected) == 1 and not c.explicit:
                c.assignment = selected[0]
                if named and named != c.assignment:
                    c.note = (c.note + "; " if c.note else "") + f"file named after {named}"
            if c.assignment is None:
                rows.append(_row(c.rel, "unmatched", c.student, platform_id=c.platform_id,
                                 detail="cannot tell the assignment: name the file <assignment>.ipynb "
                                        "or pass --assignment ID"))
                continue
            if c.assignment not in known:
                rows.append(_row(c.rel, "unmatched", c.student, c.assignment, c.platform_id,
                                 detail=f"unknown assignment {c.assignment!r} (known: {', '.join(known)})"))
                continue
            if selected and c.assignment not in selected:
                rows.append(_row(c.rel, "skipped", c.student, c.assignment, c.platform_id,
                                 detail="assignment not selected"))
                continue
            # a file named exactly after its assignment beats a stray notebook of the same hand-in
            c.rank = (named == c.assignment,) + tuple(c.rank)
            groups.setdefault((c.student, c.assignment), []).append(c)

        copied = Collected()
        ids = load_lms_ids(root)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for (student, aid), group in sorted(groups.items()):
            group.sort(key=lambda c: c.rank)
            best = group[-1]
            for old in group[:-1]:
                rows.append(_row(old.rel, "superseded", student, aid, old.platform_id,
                                 detail=f"an older hand-in: {best.rel} is kept"))
            status, detail = _put(root, student, aid, best, stamp)
            if best.note:
                detail = "; ".join(filter(None, [detail, best.note]))
            rows.append(_row(best.rel, status, student, aid, best.platform_id, detail))
            for rel, _ in best.extras:
                rows.append(_row(rel, "copied", student, aid, best.platform_id, detail="file beside the notebook"))
            copied.append((student, aid))
            if used == "canvas":
                ids.setdefault("canvas", {})[student] = {"id": best.platform_id, "name": best.name}
            elif used == "moodle":
                ids.setdefault("moodle", {}).setdefault(aid, {})[student] = {"id": best.platform_id,
                                                                             "name": best.name}
        if used in ("canvas", "moodle") and copied:
            _save_lms_ids(root, ids)

    copied.rows = sorted(rows, key=lambda r: (r["status"] not in PROBLEMS, r["file"]))
    copied.format = used
    if report:
        copied.report = report if os.path.isabs(report) else os.path.join(root, report)
        write_report(copied.report, copied.rows)
    return copied


PROBLEMS = ("unmatched", "replaced", "superseded", "ignored", "skipped")


class Collected(list):
    """(student, assignment) pairs collected, with the report rows, the convention used and
    the report path."""
    rows = ()
    format = ""
    report = None

    def problems(self):
        return [r for r in self.rows if r["status"] in PROBLEMS]


def _put(root, student, aid, cand, stamp):
    """Copy one hand-in; returns (status, detail). An existing, different copy is kept under
    .lossgrader/replaced/<stamp>/ before it is replaced."""
    dest = os.path.join(root, "submitted", student, aid)
    target = os.path.join(dest, aid + ".ipynb")
    status, detail = "copied", ""
    if os.path.isfile(target):
        with open(target, "rb") as fh_old, open(cand.path, "rb") as fh_new:
            same = fh_old.read() == fh_new.read()
        if same:
            status = "unchanged"
        else:
            keep = os.path.join(root, STATE_DIR, "replaced", stamp, student, aid)
            os.makedirs(keep, exist_ok=True)
            shutil.copy2(target, os.path.join(keep, aid + ".ipynb"))
            status = "replaced"
            detail = (f"submitted/{student}/{aid}/{aid}.ipynb replaced by this newer hand-in; "
                      f"the previous copy is in {os.path.relpath(keep, root)}/")
    os.makedirs(dest, exist_ok=True)
    if status != "unchanged":
        shutil.copy2(cand.path, target)
    for rel, path in cand.extras:
        inner = rel.split("/", 2)[2]
        out = os.path.join(dest, *inner.split("/"))
        os.makedirs(os.path.dirname(out), exist_ok=True)
        shutil.copy2(path, out)
    return status, detail


def write_report(path, rows):
    tmp = path + ".tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=REPORT_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
