"""``lossgrader collect``: hand-ins from a folder into submitted/<student>/<assignment>/."""
from __future__ import annotations

import os
import shutil

from .course import assignments


def collect(root, source, only_assignments=None):
    """Copy hand-ins into submitted/<student>/<assignment>/<assignment>.ipynb.

    Accepted layouts under source: <student>/<assignment>/<assignment>.ipynb (nbgrader's),
    <student>/<assignment>.ipynb, and <student>_<assignment>.ipynb (flat download from an LMS).
    Returns the list of (student, assignment) copied."""
    known = [a for a in assignments(root) if not only_assignments or a in only_assignments]
    copied = []

    def put(student, aid, files):
        dest = os.path.join(root, "submitted", student, aid)
        os.makedirs(dest, exist_ok=True)
        for f in files:
            target = os.path.join(dest, aid + ".ipynb") if f.endswith(".ipynb") else os.path.join(dest, os.path.basename(f))
            shutil.copy2(f, target)
        copied.append((student, aid))

    source = os.path.abspath(source)
    for entry in sorted(os.listdir(source)):
        path = os.path.join(source, entry)
        if os.path.isdir(path):
            for aid in known:
                nested = os.path.join(path, aid)
                if os.path.isdir(nested):
                    files = [os.path.join(nested, f) for f in os.listdir(nested)
                             if os.path.isfile(os.path.join(nested, f))]
                    if files:
                        put(entry, aid, files)
                elif os.path.isfile(os.path.join(path, aid + ".ipynb")):
                    put(entry, aid, [os.path.join(path, aid + ".ipynb")])
        elif entry.endswith(".ipynb"):
            stem = entry[:-len(".ipynb")]
            for aid in known:
                if stem.endswith("_" + aid) and len(stem) > len(aid) + 1:
                    put(stem[: -len(aid) - 1], aid, [path])
                    break
    return copied
