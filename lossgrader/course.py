"""The course folder: where things are (nbgrader_config.py's directories) and what was
handed in. Reads only; nothing here opens the gradebook.

The repository root is the nbgrader course directory: ``nbgrader_config.py``,
``solutions/`` as source directory, ``exercises/`` as release directory,
``submitted/<student>/<assignment>/`` for hand-ins, ``gradebook.db``.
"""
from __future__ import annotations

import json
import os

STATUS_FILE = "lossgrader-status.json"
STATE_DIR = ".lossgrader"          # backups, worker logs, scratch release directory
# what nbgrader keeps beside a hand-in (collect writes them) and needs beside its autograded
# copy and its feedback (release_feedback matches a page to its submission by the secret)
NBGRADER_FILES = ("timestamp.txt", "submission_secret.txt")


def find_course_root(start=None):
    """The directory holding nbgrader_config.py: start (default cwd) or one of its parents."""
    path = os.path.abspath(start or os.getcwd())
    while True:
        if os.path.isfile(os.path.join(path, "nbgrader_config.py")):
            return path
        parent = os.path.dirname(path)
        if parent == path:
            raise SystemExit(f"nbgrader_config.py not found in {start or os.getcwd()} or its parents: "
                             "run lossgrader from the course repository")
        path = parent


class CourseError(ValueError):
    """The course folder's configuration cannot be used."""


def load_config(root):
    """The course's nbgrader configuration (nbgrader_config.py at root, an empty one where
    there is none), with CourseDirectory.root set."""
    from traitlets.config import Config
    from traitlets.config.loader import PyFileConfigLoader

    root = os.path.abspath(root)
    if not os.path.isfile(os.path.join(root, "nbgrader_config.py")):
        cfg = Config()
    else:
        try:
            cfg = PyFileConfigLoader("nbgrader_config.py", path=root).load_config()
        except Exception as exc:
            raise CourseError(f"{os.path.join(root, 'nbgrader_config.py')} cannot be loaded "
                              f"({exc.__class__.__name__}: {exc})") from exc
    cfg.CourseDirectory.root = root
    return cfg


def directory(root, name, default):
    """A CourseDirectory directory setting (source_directory, ...), read once per root."""
    cache = directory.__dict__.setdefault("cache", {})
    key = (root, name)
    if key not in cache:
        try:
            value = load_config(root).CourseDirectory.get(name, default)
        except Exception:
            value = default
        cache[key] = value if isinstance(value, str) else default
    return cache[key]


def source_dir(root):
    return os.path.join(root, directory(root, "source_directory", "source"))


def cell_timeout(root):
    """Execute.timeout from nbgrader_config.py (seconds per cell), or None."""
    try:
        value = load_config(root).Execute.get("timeout")
    except Exception:
        return None
    return int(value) if isinstance(value, (int, float)) and value > 0 else None


def assignments(root):
    """Assignment ids: directories of the source directory holding <id>/<id>.ipynb."""
    src = source_dir(root)
    if not os.path.isdir(src):
        return []
    return sorted(d for d in os.listdir(src) if os.path.isfile(os.path.join(src, d, d + ".ipynb")))


def submitted_students(root, known):
    """Students with a submitted/<student>/<assignment>/ folder for an assignment in ``known``."""
    known = set(known)
    return {s for s, a in _submitted_pairs(root) if a in known}


def _submitted_pairs(root):
    sub = os.path.join(root, "submitted")
    if not os.path.isdir(sub):
        return []
    pairs = []
    for student in sorted(os.listdir(sub)):
        sdir = os.path.join(sub, student)
        if student.startswith(".") or not os.path.isdir(sdir):
            continue
        pairs += [(student, aid) for aid in sorted(os.listdir(sdir)) if os.path.isdir(os.path.join(sdir, aid))]
    return pairs


def submissions(root, only_assignments=None, only_students=None):
    """(student, assignment) pairs found in submitted/, for assignments of the source directory."""
    known = set(assignments(root))
    return [(s, a) for s, a in _submitted_pairs(root)
            if a in known and (not only_students or s in only_students)
            and (not only_assignments or a in only_assignments)]


def read_status(root):
    try:
        with open(os.path.join(root, STATUS_FILE), encoding="utf-8") as fh:
            status = json.load(fh)
        return status if isinstance(status, dict) else {}
    except (OSError, ValueError):
        return {}


def write_status(root, status):
    path = os.path.join(root, STATUS_FILE)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(status, fh, ensure_ascii=False, indent=1, sort_keys=True)
    os.replace(tmp, path)


def samples_dir(root):
    return os.path.join(root, "samples", "submitted")


def copy_nbgrader_files(root, student, assignment, dest):
    """Copy NBGRADER_FILES of submitted/<student>/<assignment>/ into ``dest`` (regular
    files only, never through a link)."""
    import shutil
    import stat

    src = os.path.join(root, directory(root, "submitted_directory", "submitted"), student, assignment)
    for name in NBGRADER_FILES:
        path = os.path.join(src, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                continue
            with open(os.path.join(dest, name), "wb") as out:
                shutil.copyfileobj(fh, out, 1 << 16)
