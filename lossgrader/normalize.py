"""Put a hand-in back into the shape it was released in, before anything of it runs.

Works on plain data only: the released cells come with the grading task
(``lossgrader.gradebook.released``), so a worker never opens the gradebook.

* Cells claiming grade ids the release does not know lose their nbgrader metadata (a
  plain cell from then on); duplicated ids keep only their first cell.
* Every known cell gets its canonical metadata back (points, flags, checksum), so a
  student cannot raise a test cell's points or unlock it.
* Read-only cells and test cells get their released source back (nbgrader's
  OverwriteCells does the same), so a changed test cell grades like the original and code
  added to the read-only setup cell is gone (the back-door scan still reads a read-only
  cell whose source is not the released one: lossgrader.backdoors.scan_handin).
* Deleted test cells and read-only cells are put back where they were, after the
  closest preceding released cell that is still there.
* Cells whose metadata an editor dropped get their id back: read-only cells by their
  source, answer cells by the names they define.
* All outputs are cleared: only what runs at grading time is kept; the grader's own
  cell metadata (``metadata["lossgrader"]``, e.g. a review flag) is dropped.
"""
from __future__ import annotations

import re

_HIDDEN_TESTS = re.compile(r"^[ \t]*### BEGIN HIDDEN TESTS.*?^[ \t]*### END HIDDEN TESTS[ \t]*\n?",
                           re.MULTILINE | re.DOTALL)
_DEFINED = re.compile(r"^(?:def|class)[ \t]+([A-Za-z_][A-Za-z0-9_]*)", re.MULTILINE)


def canonical_metadata(cell: dict) -> dict:
    """nbgrader's metadata for a released cell (see gradebook.released for the fields)."""
    kind = cell["kind"]
    meta = {
        "grade": kind in ("grade", "grade+solution"),
        "grade_id": cell["name"],
        "locked": bool(cell["locked"]),
        "schema_version": 3,
        "solution": kind in ("solution", "grade+solution"),
        "task": kind == "task",
        "checksum": cell.get("checksum"),
        "cell_type": cell["cell_type"],
    }
    if cell.get("points") is not None:
        meta["points"] = float(cell["points"])
    return meta


def is_test_cell(meta: dict) -> bool:
    return bool(meta.get("grade")) and not meta.get("solution")


def _source(cell) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else str(source)


def _grade_id(cell):
    meta = cell.get("metadata", {}).get("nbgrader")
    if isinstance(meta, dict) and isinstance(meta.get("grade_id"), str):
        return meta["grade_id"]
    return None


def _recover_stripped(nb, known: dict, log: list) -> None:
    present = {gid for gid in map(_grade_id, nb.cells) if gid}
    missing = [name for name in known if name not in present]
    for cell in nb.cells:
        if not missing:
            return
        if "nbgrader" in cell.get("metadata", {}):
            continue
        source = _source(cell)
        for name in list(missing):
            released = known[name]
            if cell.get("cell_type") != released["cell_type"]:
                continue
            if released["locked"] or released["kind"] in ("grade", "task"):
                matched = source.strip() == _HIDDEN_TESTS.sub("", released["source"]).strip()
            elif released["kind"] == "solution" and cell.get("cell_type") == "code":
                names = set(_DEFINED.findall(released["source"]))
                matched = bool(names) and names <= set(_DEFINED.findall(source))
            else:
                matched = False
            if matched:
                cell.setdefault("metadata", {})["nbgrader"] = {"grade_id": name}
                missing.remove(name)
                log.append(f"recovered the nbgrader id {name!r} of a cell without metadata")
                break


def normalize(nb, released_notebook: dict) -> list:
    """Normalise ``nb`` (an nbformat v4 NotebookNode) in place; returns log lines.

    ``released_notebook``: {"cells": [{name, kind, cell_type, locked, checksum, source,
    points, position}]} as lossgrader.gradebook.released gives it (position: the cell's
    index in the instructor notebook, None when unknown)."""
    from nbformat.v4 import new_code_cell, new_markdown_cell

    log = []
    known = {c["name"]: c for c in released_notebook["cells"]}
    order = {c["name"]: c["position"] for c in released_notebook["cells"] if c.get("position") is not None}
    _recover_stripped(nb, known, log)

    seen = set()
    for cell in nb.cells:
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
        if isinstance(cell.get("metadata"), dict) and "lossgrader" in cell["metadata"]:
            del cell["metadata"]["lossgrader"]     # the grader's own (a review flag): never the hand-in's
            log.append("dropped lossgrader metadata a hand-in brought")
        meta = cell.get("metadata", {}).get("nbgrader")
        if meta is None:
            continue
        grade_id = meta.get("grade_id") if isinstance(meta, dict) else None
        if not isinstance(grade_id, str) or grade_id not in known or grade_id in seen:
            del cell["metadata"]["nbgrader"]   # forged, corrupted or duplicated: a plain cell now
            log.append(f"dropped nbgrader metadata of unknown or duplicate cell {grade_id!r}")
            continue
        released = known[grade_id]
        if cell.get("cell_type") != released["cell_type"]:
            del cell["metadata"]["nbgrader"]
            log.append(f"cell {grade_id!r} changed its type: treated as a plain cell")
            continue
        cell["metadata"]["nbgrader"] = canonical_metadata(released)
        if released["locked"] or released["kind"] in ("grade", "task"):
            if released["kind"] != "grade+solution":
                cell["source"] = released["source"]
        seen.add(grade_id)

    ordered = sorted(known, key=lambda n: order.get(n, len(order)))
    for pos, name in enumerate(ordered):
        released = known[name]
        if name in seen or not (released["kind"] in ("grade", "task") or released["locked"]):
            continue
        log.append(f"restored deleted cell {name!r}")
        make = new_code_cell if released["cell_type"] == "code" else new_markdown_cell
        cell = make(released["source"])
        cell.metadata["nbgrader"] = canonical_metadata(released)
        cell.metadata["deletable"] = False
        cell.metadata["editable"] = False
        insert_at = 0
        for prev in reversed(ordered[:pos]):
            idx = next((i for i, c in enumerate(nb.cells) if _grade_id(c) == prev), None)
            if idx is not None:
                insert_at = idx + 1
                break
        nb.cells.insert(insert_at, cell)
        seen.add(name)
    return log
