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
its previous copy kept under ``.lossgrader/replaced/`` and the replacement reported. A
student who handed in files but no notebook (a .py, a .pdf, Moodle's online text) is a
hand-in without one: the files go to submitted/<student>/<assignment>/ and autograde gives
it 0 with the reason. Every file of the source gets one row in the report: copied,
replaced, unchanged, superseded, no notebook, unmatched, skipped (assignment not selected)
or ignored (not a notebook beside a notebook, a symbolic link or other non-regular file, an
unreadable zip entry, past the extraction cap). One platform id under two student ids in
submitted/ (a download collected with and without a roster) is reported.

A source folder may be shared with the students, so collect never follows a symbolic link
in it: links (to files or folders) and non-regular files (FIFOs, sockets, devices) are
reported and skipped, and every file is opened component by component from the source
folder with ``O_NOFOLLOW | O_NONBLOCK`` (a link or FIFO swapped in after the scan is refused
at open time), checked to be a regular file and read with a size bound. From a zip,
symbolic-link entries and unreadable entries (bad CRC, truncated data, unsupported
compression, encryption) are reported and skipped while the rest is collected, and what one
download may extract is capped (``MAX_EXTRACT_BYTES``, ``MAX_EXTRACT_ENTRIES``): checked from
the archive's headers before anything is extracted, and enforced again while reading.

Each collected hand-in gets nbgrader's ``timestamp.txt`` (the submission time: a pattern's
``timestamp`` group when it reads as a date, the hand-in folder's own nbgrader
``timestamp.txt``, else the file time in the zip or on disk) and a ``submission_secret.txt``,
so that nbgrader's own commands (``release_feedback``) work on them.
"""
from __future__ import annotations

import csv
import datetime
import errno
import json
import lzma
import os
import re
import secrets
import stat
import struct
import tempfile
import time
import zipfile
import zlib
from dataclasses import dataclass, field

from .course import STATE_DIR, assignments
from .csvfile import write_csv

FORMATS = ("auto", "nbgrader", "canvas", "moodle")
REPORT_CSV = "collect-report.csv"
REPORT_FIELDS = ["file", "status", "student_id", "assignment", "platform_id", "detail"]
LMS_IDS = "lms-ids.json"
MAX_FILE_BYTES = 200 * 2 ** 20       # a notebook larger than this is not a hand-in
# What one zip download may extract in all (a zip bomb stops here): checked from the
# archive's headers before extracting, enforced again on the bytes actually read. Raise
# them here for a class whose download is larger.
MAX_EXTRACT_BYTES = 2 * 2 ** 30
MAX_EXTRACT_ENTRIES = 20_000
MAX_ID_CHARS = 64                     # a student id made from a name is cut to this length
TIMESTAMP = "timestamp.txt"           # nbgrader's submission time, in submitted/<student>/<id>/
SECRET = "submission_secret.txt"      # nbgrader's per-submission secret (release_feedback)
TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S.%f %Z"     # nbgrader's Exchange.timestamp_format, in UTC
O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
# what reading one zip entry may raise when the entry (not the disk) is bad
BAD_ENTRY = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, lzma.LZMAError, EOFError,
             NotImplementedError, RuntimeError, ValueError, struct.error, OSError)
SKIP_NAMES = {"__MACOSX", ".DS_Store", "Thumbs.db", ".ipynb_checkpoints"}

CANVAS_RE = re.compile(r"^(?P<name>[^_/]*)_(?:(?P<late>late)_)?(?P<uid>\d+)_(?P<sub>\d+)_(?P<file>[^/]+)$",
                       re.IGNORECASE)
# Moodle names each file <Full name>_<participant id>_assignsubmission_<plugin>_... by the
# submission plugin that holds it: "file" (uploaded files), "onlinetext" (the text typed
# into Moodle's editor, as onlinetext.html, with its images), others for add-on plugins
MOODLE_RE = re.compile(r"(?:^|/)(?P<name>[^/_]+)_(?P<pid>\d+)_assignsubmission_(?P<plugin>[a-z0-9]+)"
                       r"(?:_?/(?P<path>.+)|_(?P<flat>[^/]+))$")
ONLINE_TEXT = "onlinetext"
RESUBMIT_RE = re.compile(r"^(?P<stem>.*?)(?:-(?P<n>\d+)| \((?P<m>\d+)\))$")


class CollectError(ValueError):
    """The source, pattern or roster cannot be used."""


class Refused(Exception):
    """A source file collect will not read (its message is the report's detail)."""


def _norm_name(text):
    """Names compared across platforms: case-folded, letters and digits only
    (Canvas writes "Smith, John" as "smithjohn" in file names)."""
    return "".join(ch for ch in str(text).casefold() if ch.isalnum())


def _slug(text):
    """A student id made from a name (it becomes a folder name in submitted/): letters and
    digits of any script, '_', '.' and '-' kept, every other run of characters (path
    separators, spaces, formula signs) as one '_'; no leading '.', '-' or '_' and no
    trailing '.' or '_' (so never '.', '..', a hidden folder or an option-like name); at
    most MAX_ID_CHARS characters; "unnamed" when nothing is left."""
    s = re.sub(r"[^\w.-]+", "_", str(text).strip(), flags=re.UNICODE)
    s = s.lstrip("._-")[:MAX_ID_CHARS].rstrip("._")
    return s or "unnamed"


def _id_problem(student):
    """Why a student id cannot name a folder in submitted/ (None when it can)."""
    if not student or student in (".", ".."):
        return "empty, '.' or '..'"
    if any(ch in student for ch in "/\\\0"):
        return "a path separator or NUL in it"
    if student.startswith("."):
        return "starts with '.' (a hidden folder)"
    if len(student.encode("utf-8", "surrogateescape")) > 255:
        return "longer than a file name may be"
    return None


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

    def __init__(self, rows, columns=()):
        self.rows = rows
        self.columns = list(columns)     # the header as written (other columns may name Canvas assignments)
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
        bad = [f"{row['student_id']!r} ({why})" for row in rows
               for why in [_id_problem(row["student_id"])] if why]
        if bad:
            raise CollectError(f"{path}: a student_id names a folder in submitted/, these cannot: "
                               + "; ".join(bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else ""))
        return cls(rows, [h.strip() for h in header.values()])

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
    stamp: str = ""                   # a pattern's timestamp group (the submission time when it reads as one)
    inner: str = ""                   # the file's own name, as the student uploaded it
    kind: str = ""                    # "online text" for a Moodle online-text entry


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


def _zip_entry_kind(info):
    """What a zip entry is besides a file or folder, from the Unix mode bits in external_attr
    ("" for a plain file; zips made on Windows carry no mode: plain files)."""
    kind = stat.S_IFMT(info.external_attr >> 16)
    if kind in (0, stat.S_IFREG, stat.S_IFDIR):
        return ""
    return _KINDS.get(kind, "special file")


_KINDS = {stat.S_IFLNK: "symbolic link", stat.S_IFIFO: "FIFO", stat.S_IFSOCK: "socket",
          stat.S_IFCHR: "character device", stat.S_IFBLK: "block device"}


class _TooLong(Exception):
    pass


def _extract(zpath, dest, rows):
    """Unpack a zip safely: no absolute paths, no '..', no symbolic links or other special
    entries, nothing above MAX_FILE_BYTES, at most MAX_EXTRACT_ENTRIES files and
    MAX_EXTRACT_BYTES in all (checked from the headers before anything is extracted, and on
    the bytes read: an entry that inflates past its header's size is dropped, so the total
    stays within what the headers declared); an unreadable entry (bad CRC,
    truncated, unsupported compression, encrypted) is reported and skipped. File times come
    from the archive (they order re-submissions)."""
    try:
        zf = zipfile.ZipFile(zpath)
    except (OSError, zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, struct.error) as exc:
        raise CollectError(f"{zpath} is not a readable zip file: {exc}") from exc
    cap = (f"past the extraction cap of one download ({MAX_EXTRACT_ENTRIES} files, "
           f"{MAX_EXTRACT_BYTES / 2 ** 20:g} MiB uncompressed in all; lossgrader.collect.MAX_EXTRACT_ENTRIES, "
           "MAX_EXTRACT_BYTES)")
    with zf:
        # 1. the headers: what is safe to extract, and the cap on what they declare
        plan, names, declared = [], set(), 0
        for info in zf.infolist():
            name = info.filename.replace("\\", "/")
            kind = _zip_entry_kind(info)
            if kind:
                rows.append(_row(name, "ignored", detail=f"a {kind} in the zip file: not extracted"))
                continue
            if info.is_dir():
                continue
            parts = [p for p in name.split("/") if p not in ("", ".")]
            if name.startswith("/") or ".." in parts or not parts:
                rows.append(_row(name, "ignored", detail="unsafe path in the zip file"))
                continue
            if any(p in SKIP_NAMES for p in parts):
                continue
            if info.file_size > MAX_FILE_BYTES:
                rows.append(_row(name, "ignored", detail=f"larger than {MAX_FILE_BYTES >> 20} MiB"))
                continue
            key = "/".join(parts)
            if key in names:
                rows.append(_row(name, "ignored", detail="a second entry of the same name in the zip file: "
                                                         "the first is kept"))
                continue
            if len(plan) + 1 > MAX_EXTRACT_ENTRIES or declared + info.file_size > MAX_EXTRACT_BYTES:
                rows.append(_row(name, "ignored", detail=cap + " from the zip file's headers: not extracted"))
                continue
            names.add(key)
            declared += info.file_size
            plan.append((info, name, parts))
        # 2. the bytes: never more than an entry's header said (so never more than the cap in
        # all); zipfile stops there too, but this does not rely on it
        for info, name, parts in plan:
            target = os.path.join(dest, *parts)
            limit, size = info.file_size, 0
            try:
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with zf.open(info) as src, open(target, "xb") as out:
                    while True:
                        chunk = src.read(min(2 ** 20, limit + 1 - size))
                        if not chunk:
                            break
                        size += len(chunk)
                        if size > limit:
                            raise _TooLong()
                        out.write(chunk)
            except _TooLong:
                rows.append(_row(name, "ignored", detail=f"inflates to more than its header's {limit} bytes: "
                                                         "not extracted"))
                _unlink(target)
                continue
            except (FileExistsError, NotADirectoryError, IsADirectoryError):
                rows.append(_row(name, "ignored", detail="clashes with another entry of the zip file "
                                                         "(a file and a folder of the same name): not extracted"))
                continue
            except BAD_ENTRY as exc:
                if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
                    raise               # the disk, not the entry
                rows.append(_row(name, "ignored", detail=f"unreadable zip entry ({exc.__class__.__name__}: "
                                                         f"{str(exc)[:200]}): skipped, the rest of the zip "
                                                         "file is collected"))
                _unlink(target)
                continue
            try:
                stamp = time.mktime(info.date_time + (0, 0, -1))
                os.utime(target, (stamp, stamp))
            except (OverflowError, ValueError, OSError):
                pass


def _unlink(path):
    try:
        os.unlink(path)
    except OSError:
        pass


def _walk(top, rows):
    """Relative paths (with '/') of the regular files under top, hidden entries and OS litter
    skipped. Symbolic links (never followed) and other non-regular files get a row in rows."""
    found = []
    stack = [("", top)]
    while stack:
        prefix, folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            rows.append(_row(prefix.rstrip("/") or ".", "ignored",
                             detail=f"folder cannot be read ({exc.strerror}): nothing in it is collected"))
            continue
        subfolders = []
        for entry in entries:
            if entry.name.startswith(".") or entry.name in SKIP_NAMES:
                continue
            rel = prefix + entry.name
            try:
                mode = entry.stat(follow_symlinks=False).st_mode
            except OSError as exc:
                rows.append(_row(rel, "ignored", detail=f"cannot be read ({exc.strerror})"))
                continue
            if stat.S_ISLNK(mode):
                try:
                    to = os.readlink(entry.path)
                except OSError:
                    to = "?"
                rows.append(_row(rel, "ignored", detail=f"a symbolic link (to {to[:200]!r}): never followed, "
                                                        "nothing is collected through it"))
            elif stat.S_ISDIR(mode):
                subfolders.append((rel + "/", entry.path))
            elif stat.S_ISREG(mode):
                found.append(rel)
            else:
                kind = _KINDS.get(stat.S_IFMT(mode), "special file")
                rows.append(_row(rel, "ignored", detail=f"not a regular file (a {kind}): not opened"))
        stack.extend(reversed(subfolders))
    return found


def _open_beneath(top, rel):
    """A read-only descriptor of the regular file top/rel, opened one path component at a
    time from top with O_NOFOLLOW (a folder or file replaced by a symbolic link after the
    scan is refused) and O_NONBLOCK (a FIFO swapped in does not block). Raises Refused."""
    parts = rel.split("/")
    try:
        fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY | O_CLOEXEC)
    except OSError as exc:
        raise Refused(f"cannot be opened ({exc.strerror})") from None
    try:
        for part in parts[:-1]:
            try:
                inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | O_CLOEXEC, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise Refused(f"its folder {part!r} is a symbolic link or not a folder (changed after the "
                                  "scan): not opened") from None
                raise Refused(f"cannot be opened ({exc.strerror})") from None
            os.close(fd)
            fd = inner
        try:
            handle = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | O_CLOEXEC, dir_fd=fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise Refused("a symbolic link (changed after the scan): never followed") from None
            raise Refused(f"cannot be opened ({exc.strerror})") from None
    finally:
        os.close(fd)
    return handle


def _read(top, rel, limit=None):
    """(bytes, mtime) of the regular file top/rel, read with a size bound (MAX_FILE_BYTES by
    default); raises Refused for anything else."""
    limit = MAX_FILE_BYTES if limit is None else limit
    fd = _open_beneath(top, rel)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise Refused(f"not a regular file (a {_KINDS.get(stat.S_IFMT(info.st_mode), 'special file')}, "
                          "changed after the scan): not read")
        if info.st_size > limit:
            raise Refused(f"larger than {limit} bytes: not read")
        chunks, size = [], 0
        while True:
            try:
                chunk = os.read(fd, min(2 ** 20, limit + 1 - size))
            except OSError as exc:
                raise Refused(f"cannot be read ({exc.strerror})") from None
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                raise Refused(f"larger than {limit} bytes (it grew while read): not read")
            chunks.append(chunk)
        return b"".join(chunks), info.st_mtime
    finally:
        os.close(fd)


def _row(rel, status, student="", assignment="", platform_id="", detail=""):
    return {"file": rel, "status": status, "student_id": student or "", "assignment": assignment or "",
            "platform_id": platform_id or "", "detail": detail}


def _mtime(path):
    try:
        return os.lstat(path).st_mtime
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
        if not pick:            # a hand-in folder without a notebook: collect's "no notebook"
            for rel, path in entries:
                cands.append(Candidate(rel, path, student=student, assignment=aid, platform_id=student,
                                       rank=(_mtime(path),), inner=rel.split("/", 2)[2]))
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
                               note="late" if m.group("late") else "", inner=m.group("file")))
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
        online = m.group("plugin") == ONLINE_TEXT
        cands.append(Candidate(rel, path, platform_id=m.group("pid"), name=m.group("name"),
                               assignment=None if online else _assignment_from_name(inner, known),
                               rank=(_mtime(path), again), inner=inner,
                               kind="online text" if online else ""))
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
                               rank=(stamp, again, _mtime(path)), explicit=bool(groups.get("assignment")),
                               stamp=stamp, inner=os.path.basename(rel)))
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
        files = _walk(top, rows)
        if regex is not None:
            used = "pattern"
            cands, bad = _parse_pattern(regex, files, top, known)
        else:
            used = _detect(files, top, known) if fmt == "auto" else fmt
            parse = {"nbgrader": _parse_nbgrader, "canvas": _parse_canvas, "moodle": _parse_moodle}[used]
            cands, bad = parse(files, top, known)
        rows += bad
        platform = used in ("canvas", "moodle", "pattern")

        # without a roster, names become ids: different people whose names give the same id
        # (namesakes, or names that differ only in what the id rule drops) are not merged
        sharing = {}
        if roster is None and used in ("moodle", "pattern"):
            for c in cands:
                if c.student is None:
                    sharing.setdefault(_who(used, c, None)[0], {}).setdefault(c.platform_id, c.name)

        def resolve(c):
            """Set c.student and c.assignment; the report row saying why not, or None."""
            if c.student is None or roster is not None:
                c.student, why = _who(used, c, roster)
                if why:
                    return _row(c.rel, "unmatched", platform_id=c.platform_id, detail=why)
                same = sharing.get(c.student, {})
                if len(same) > 1:
                    who = "participants" if used == "moodle" else "students"
                    names = sorted(set(same.values()))
                    return _row(c.rel, "unmatched", platform_id=c.platform_id,
                                detail=f"{who} {', '.join(sorted(same))}"
                                       + (f" (called {' / '.join(map(repr, names))})" if used == "moodle" else "")
                                       + f" would all get the student id {c.student!r}: give a roster "
                                         "(--roster) to tell them apart")
            bad_id = _id_problem(c.student)
            if bad_id:
                return _row(c.rel, "unmatched", platform_id=c.platform_id,
                            detail=f"student id {c.student!r} cannot name a folder ({bad_id})")
            named = c.assignment
            if platform and len(selected) == 1 and not c.explicit:
                c.assignment = selected[0]
                if named and named != c.assignment:
                    c.note = (c.note + "; " if c.note else "") + f"file named after {named}"
            if c.assignment is None:
                return _row(c.rel, "unmatched", c.student, platform_id=c.platform_id,
                            detail="cannot tell the assignment: name the file <assignment>.ipynb "
                                   "or pass --assignment ID")
            if c.assignment not in known:
                return _row(c.rel, "unmatched", c.student, c.assignment, c.platform_id,
                            detail=f"unknown assignment {c.assignment!r} (known: {', '.join(known)})")
            if selected and c.assignment not in selected:
                return _row(c.rel, "skipped", c.student, c.assignment, c.platform_id,
                            detail="assignment not selected")
            # a file named exactly after its assignment beats a stray notebook of the same hand-in
            c.rank = (named == c.assignment,) + tuple(c.rank)
            return None

        groups, others = {}, []
        for c in cands:
            problem = resolve(c)
            if not c.rel.endswith(".ipynb"):
                others.append((c, problem))
            elif problem is not None:
                rows.append(problem)
            else:
                groups.setdefault((c.student, c.assignment), []).append(c)

        copied = Collected()
        ids = load_lms_ids(root)
        stamp = time.strftime("%Y%m%d-%H%M%S")

        def remember(student, aid, cand):
            if used == "canvas":
                ids.setdefault("canvas", {})[student] = {"id": cand.platform_id, "name": cand.name}
            elif used == "moodle":
                ids.setdefault("moodle", {}).setdefault(aid, {})[student] = {"id": cand.platform_id,
                                                                             "name": cand.name}

        for (student, aid), group in sorted(groups.items()):
            group.sort(key=lambda c: c.rank)
            best = None
            for cand in reversed(group):        # the newest that can be read safely
                if best is not None:
                    rows.append(_row(cand.rel, "superseded", student, aid, cand.platform_id,
                                     detail=f"an older hand-in: {best.rel} is kept"))
                    continue
                try:
                    status, detail, more = _put(root, top, student, aid, cand, stamp)
                except Refused as exc:
                    rows.append(_row(cand.rel, "ignored", student, aid, cand.platform_id, detail=str(exc)))
                    continue
                best = cand
                if cand.note:
                    detail = "; ".join(filter(None, [detail, cand.note]))
                rows.append(_row(cand.rel, status, student, aid, cand.platform_id, detail))
                rows += more
            if best is None:
                continue
            copied.append((student, aid))
            remember(student, aid, best)

        # files that are not notebooks: beside a notebook they are ignored; a student who
        # handed in none (only .py, .pdf, Moodle online text) has a "no notebook" hand-in
        with_notebook = {pair for pair, group in groups.items()}
        students_with_notebook = {student for student, _ in groups}
        lonely = {}
        for c, problem in others:
            what = "a Moodle online-text entry (the text typed into Moodle), not a notebook (.ipynb)" \
                if c.kind == "online text" else "not a notebook (.ipynb)"
            if problem is None and (c.student, c.assignment) not in with_notebook:
                lonely.setdefault((c.student, c.assignment), []).append(c)
            elif (problem is not None and c.student and c.student not in students_with_notebook
                  and problem["detail"].startswith("cannot tell the assignment")):
                rows.append(_row(c.rel, NO_NOTEBOOK, c.student, platform_id=c.platform_id,
                                 detail=f"{what}; {_whose(used, c)} handed in no notebook and which assignment "
                                        "this is cannot be told: pass --assignment ID"))
            elif problem is not None and problem["status"] == "skipped":
                rows.append(problem)
            else:
                rows.append(_row(c.rel, "ignored", c.student or "", c.assignment or "", c.platform_id, what))
        for (student, aid), files in sorted(lonely.items()):
            files.sort(key=lambda c: c.rank)
            copied_files, more = _put_files(root, top, student, aid, files, stamp, _whose(used, files[-1]),
                                            nbgrader_folder=used == "nbgrader")
            rows += more
            if copied_files:
                copied.append((student, aid))
                copied.no_notebook.append((student, aid))
                remember(student, aid, files[-1])
        copied.same_person = _same_person_twice(root, ids, used, copied)
        if used in ("canvas", "moodle") and copied:
            _save_lms_ids(root, ids)

    copied.rows = sorted(rows, key=lambda r: (r["status"] not in PROBLEMS, r["file"]))
    copied.format = used
    if report:
        copied.report = report if os.path.isabs(report) else os.path.join(root, report)
        write_report(copied.report, copied.rows)
    return copied


NO_NOTEBOOK = "no notebook"
PROBLEMS = (NO_NOTEBOOK, "unmatched", "replaced", "superseded", "ignored", "skipped")


class Collected(list):
    """(student, assignment) pairs collected, with the report rows, the convention used, the
    report path, ``no_notebook`` (the pairs collected without a notebook: their files are in
    submitted/, autograde gives 0 with the reason) and ``same_person`` (messages: one
    platform id under two student ids in submitted/)."""
    rows = ()
    format = ""
    report = None

    def __init__(self, *args):
        super().__init__(*args)
        self.no_notebook = []
        self.same_person = []

    def problems(self):
        return [r for r in self.rows if r["status"] in PROBLEMS]


def _put(root, top, student, aid, cand, stamp):
    """Copy one hand-in (read safely from the source: raises Refused before anything is
    written); returns (status, detail, rows of the files beside it). An existing, different
    copy is kept under .lossgrader/replaced/<stamp>/ before it is replaced. Writes nbgrader's
    timestamp.txt and submission_secret.txt beside the notebook."""
    data, mtime = _read(top, cand.rel)
    dest = os.path.join(root, "submitted", student, aid)
    target = os.path.join(dest, aid + ".ipynb")
    status, detail = "copied", ""
    if os.path.lexists(target):
        try:
            old = _read(dest, aid + ".ipynb")[0]
        except Refused:
            old = None
        if old == data:
            status = "unchanged"
        else:
            status = "replaced"
            detail = f"submitted/{student}/{aid}/{aid}.ipynb replaced by this newer hand-in; "
            if old is None:
                detail += "the previous copy was not a readable regular file and is not kept"
            else:
                keep = os.path.join(root, STATE_DIR, "replaced", stamp, student, aid)
                os.makedirs(keep, exist_ok=True)
                _write(os.path.join(keep, aid + ".ipynb"), old)
                detail += f"the previous copy is in {os.path.relpath(keep, root)}/"
    os.makedirs(dest, exist_ok=True)
    if status != "unchanged":
        _write(target, data, mtime)
    rows, when = [], None
    for rel, _ in cand.extras:
        inner = rel.split("/", 2)[2]
        if inner == SECRET:
            rows.append(_row(rel, "ignored", student, aid, cand.platform_id,
                             detail=f"collect writes its own {SECRET}"))
            continue
        try:
            extra, _ = _read(top, rel, limit=1024 if inner == TIMESTAMP else None)
        except Refused as exc:
            rows.append(_row(rel, "ignored", student, aid, cand.platform_id, detail=str(exc)))
            continue
        if inner == TIMESTAMP:        # nbgrader's own hand-in folder: its submission time
            when = _parse_time(extra.decode("utf-8", "replace").strip())
            rows.append(_row(rel, "copied" if when else "ignored", student, aid, cand.platform_id,
                             detail="the hand-in's submission time" if when else
                             "not a time nbgrader can read: the file time is used instead"))
            continue
        _write(os.path.join(dest, *inner.split("/")), extra)
        rows.append(_row(rel, "copied", student, aid, cand.platform_id, detail="file beside the notebook"))
    _nbgrader_files(dest, status != "unchanged", cand.stamp, when, mtime)
    return status, detail, rows


def _whose(fmt, cand):
    """The hand-in's owner as the platform names them, for the report."""
    if fmt == "canvas":
        return f"Canvas user {cand.platform_id} ({cand.name})"
    if fmt == "moodle":
        return f"Moodle participant {cand.platform_id} ({cand.name})"
    return f"student {cand.student or cand.platform_id!r}"


def _file_name(inner, taken):
    """A plain file name for submitted/<student>/<assignment>/ from the name the student
    gave a file: its last component, no leading dot, no path separator, not one of
    nbgrader's files, not a name already taken (then "-2", "-3", ... before the suffix)."""
    name = re.sub(r"[/\\\0]+", "_", inner.replace("\\", "/").rsplit("/", 1)[-1]).lstrip(".") or "file"
    while len(name.encode("utf-8", "surrogateescape")) > 200:     # a file name has at most 255 bytes
        stem, ext = os.path.splitext(name)
        name = stem[:-1] + ext if len(stem) > 1 else name[:-1]
    if name in (TIMESTAMP, SECRET):
        name = "_" + name
    stem, ext = os.path.splitext(name)
    n = 1
    while name in taken:
        n += 1
        name = f"{stem}-{n}{ext}"
    taken.add(name)
    return name


def _put_files(root, top, student, aid, cands, stamp, who, nbgrader_folder=False):
    """A hand-in without a notebook: the student's files (read safely) into
    submitted/<student>/<aid>/, with nbgrader's timestamp.txt and submission_secret.txt,
    so that autograde records it (0, "<aid> was not submitted") and export lists it.
    A folder that already holds a notebook (an earlier collect) is left as it is. Only an
    nbgrader hand-in folder's own timestamp.txt gives the time (as in _put); a file a
    student uploaded to a platform under that name, or as submission_secret.txt, is kept
    as a file of theirs (_timestamp.txt). Returns (whether the hand-in is in submitted/
    now, report rows)."""
    dest = os.path.join(root, "submitted", student, aid)
    rows = []
    if os.path.isdir(dest) and any(n.endswith(".ipynb") for n in os.listdir(dest)):
        for c in cands:
            rows.append(_row(c.rel, NO_NOTEBOOK, student, aid, c.platform_id,
                             detail=f"{who} handed in no notebook (.ipynb) for {aid} in this download; the "
                                    f"notebook an earlier collect brought, in submitted/{student}/{aid}/, is kept "
                                    "and this file is not copied"))
        return False, rows
    read, taken, when = [], set(), None
    for c in cands:
        if nbgrader_folder and c.inner == SECRET:
            rows.append(_row(c.rel, "ignored", student, aid, c.platform_id, detail=f"collect writes its own {SECRET}"))
            continue
        own_time = nbgrader_folder and c.inner == TIMESTAMP
        try:
            data, mtime = _read(top, c.rel, limit=1024 if own_time else None)
        except Refused as exc:
            rows.append(_row(c.rel, "ignored", student, aid, c.platform_id, detail=str(exc)))
            continue
        if own_time:                     # an nbgrader hand-in folder's own submission time
            when = _parse_time(data.decode("utf-8", "replace").strip()) or when
            continue
        read.append((c, data, mtime))
    if not read:
        return False, rows
    os.makedirs(dest, exist_ok=True)
    changed = False
    for c, data, mtime in read:
        name = _file_name(c.inner or c.rel, taken)
        target = os.path.join(dest, name)
        try:
            same = _read(dest, name)[0] == data
        except Refused:
            same = False
        if not same:
            _write(target, data, mtime)
            changed = True
        what = "a Moodle online-text entry (the text typed into Moodle)" if c.kind == "online text" else "the file"
        rows.append(_row(c.rel, NO_NOTEBOOK, student, aid, c.platform_id,
                         detail=f"{who} handed in no notebook (.ipynb) for {aid}: {what} is kept as "
                                f"submitted/{student}/{aid}/{name}{' (unchanged)' if same else ''}; "
                                "lossgrader autograde gives the hand-in 0 with the reason, export lists it"))
    _nbgrader_files(dest, changed, max((c.stamp for c, _, _ in read), default=""), when,
                    max(mtime for _, _, mtime in read))
    return True, rows


def _nbgrader_files(dest, changed, stamp, when, mtime):
    """nbgrader's timestamp.txt (the platform's time, else the hand-in folder's own, else
    the newest file's) and submission_secret.txt beside a hand-in that changed or lacks them."""
    stamp_file = os.path.join(dest, TIMESTAMP)
    if changed or not os.path.isfile(stamp_file):
        when = _parse_time(stamp) or when or datetime.datetime.fromtimestamp(mtime, datetime.timezone.utc)
        _write(stamp_file, when.strftime(TIMESTAMP_FORMAT).encode())
    if changed or not os.path.isfile(os.path.join(dest, SECRET)):
        _write(os.path.join(dest, SECRET), secrets.token_hex(64).encode())


def _same_person_twice(root, ids, fmt, collected):
    """Messages for a platform id that is two student ids in submitted/ (a download collected
    once with --roster and once without puts one person there twice)."""
    if fmt not in ("canvas", "moodle"):
        return []
    submitted = os.path.join(root, "submitted")
    out = []
    if fmt == "canvas":
        seen = {}
        for student, entry in ids.get("canvas", {}).items():
            if isinstance(entry, dict) and os.path.isdir(os.path.join(submitted, student)):
                seen.setdefault(str(entry.get("id")), set()).add(student)
        for uid in sorted({str(ids["canvas"][s].get("id")) for s, _ in collected
                           if isinstance(ids.get("canvas", {}).get(s), dict)}):
            if len(seen.get(uid, ())) > 1:
                out.append(f"Canvas user {uid} is {' and '.join(sorted(seen[uid]))} in submitted/: one person "
                           "under two student ids (a download collected once with --roster and once without?); "
                           "export --format canvas writes one row for them and refuses when their grades "
                           "differ; to keep one, delete the other's folder in submitted/ and run "
                           "`nbgrader db student remove ID --force`")
        return out
    for aid in sorted({a for _, a in collected}):
        seen = {}
        for student, entry in ids.get("moodle", {}).get(aid, {}).items():
            if isinstance(entry, dict) and os.path.isdir(os.path.join(submitted, student, aid)):
                seen.setdefault(str(entry.get("id")), set()).add(student)
        for pid, students in sorted(seen.items()):
            if len(students) > 1 and any((s, aid) in collected for s in students):
                out.append(f"Moodle participant {pid} of {aid} is {' and '.join(sorted(students))} in submitted/: "
                           "one person under two student ids (a download collected once with --roster and once "
                           "without?); export --format moodle writes one row for them and refuses when their "
                           "grades differ; to keep one, delete the other's folder in submitted/")
    return out


def _parse_time(text):
    """An aware UTC datetime for a submission time written as text (nbgrader's timestamp.txt,
    a pattern's timestamp group; without a zone: UTC, as nbgrader reads it), or None when it
    does not read as a date with its year written out."""
    if not text or len(text) > 100:
        return None
    from dateutil import parser
    try:
        when = parser.parse(text)
        if str(when.year) not in text:
            return None         # "7" would read as the 7th of this month
        if when.tzinfo is None:
            return when.replace(tzinfo=datetime.timezone.utc)
        return when.astimezone(datetime.timezone.utc)
    except (ValueError, OverflowError, LookupError):
        return None


def _write(path, data, mtime=None):
    """Write path atomically (a temporary file renamed over it: a link there is replaced,
    never written through)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as fh:
        fh.write(data)
    if mtime is not None:
        os.utime(tmp, (mtime, mtime))
    os.replace(tmp, path)


def write_report(path, rows):
    write_csv(path, REPORT_FIELDS, rows)
