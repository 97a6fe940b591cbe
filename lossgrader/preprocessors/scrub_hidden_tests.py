"""Feedback: hidden-test source lines quoted by error tracebacks are removed."""
from __future__ import annotations

import re

from . import Preprocessor

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_TB_SOURCE_LINE = re.compile(r"^\s*(?:-+>\s*)?\d+\s(.*)$")


class ScrubHiddenTests(Preprocessor):
    """Feedback: remove the hidden tests' source lines that error tracebacks quote as context
    (nbgrader's ClearHiddenTests, which runs after this, removes them from the cell itself)."""

    def preprocess_cell(self, cell, resources, index):
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if cell.cell_type != "code" or not meta.get("grade"):
            return cell, resources
        hidden = set()
        for block in re.findall(r"### BEGIN HIDDEN TESTS.*?### END HIDDEN TESTS", cell.source, re.DOTALL):
            hidden |= {line.strip() for line in block.splitlines() if line.strip()}
        if not hidden:
            return cell, resources
        for out in cell.get("outputs", []):
            if out.get("output_type") != "error":
                continue
            cleaned = []
            for entry in out.get("traceback", []):
                lines = []
                for line in entry.split("\n"):
                    m = _TB_SOURCE_LINE.match(_ANSI.sub("", line))
                    if m and m.group(1).strip() in hidden:
                        continue
                    lines.append(line)
                cleaned.append("\n".join(lines))
            out["traceback"] = cleaned
        return cell, resources
