"""Feedback: each page stays under a size cap, with a Chinese note of what was cut."""
from __future__ import annotations

from traitlets import Integer

from ..sanitize import note_output
from . import Preprocessor

DEFAULT_MAX_PAGE_BYTES = 2_000_000


def megabytes(n) -> str:
    return f"{n / 1_000_000:.1f} MB" if n >= 100_000 else f"{n / 1000:.0f} KB"


#: Rough bytes of HTML per byte of content (syntax highlighting wraps every token of code).
_CODE_FACTOR = 4
_TEXT_FACTOR = 1.3
_FRAME_BYTES = 40_000       # CSS, head, table of contents and summary, with margin
_CELL_BYTES = 600
_MAX_NOTES = 12             # lines of the summary at the top; the rest are counted
_KEEP_TEXT = 5_000          # characters kept of an overlong text output or source
_MIN_KEEP_TEXT = 500        # ... when the graded cells alone are still too big


class LimitPageSize(Preprocessor):
    """Keep the page under ``max_page_bytes``: cut the largest outputs of the hand-in's cells
    first (long text is truncated, HTML and images removed), then overlong sources, then
    the largest cells that are not graded, then the beginnings kept of overlong sources and
    texts are shortened (5,000 characters, then 500), and only then the grader's reports.
    Each cut leaves a Chinese note in place and a line in the page's summary.

    Sizes are estimated before rendering; ``feedback()`` measures the rendered page and
    renders again with ``resources["lossgrader"]["budget_fraction"]`` lowered if needed."""

    max_page_bytes = Integer(DEFAULT_MAX_PAGE_BYTES, help="Largest feedback page, in bytes.").tag(config=True)

    @staticmethod
    def _output_size(out):
        if out.output_type == "stream":
            return int(len(out.text.encode()) * _TEXT_FACTOR)
        if out.output_type == "error":
            return int(sum(len(line.encode()) for line in out.traceback) * 2)
        value = next(iter(out.data.values()), "")
        mime = next(iter(out.data), "")
        if mime == "image/svg+xml":
            return len(value.encode()) * 4 // 3 + 100
        return int(len(value.encode()) * (1 if mime.startswith("image/") or mime == "text/html" else _TEXT_FACTOR))

    @staticmethod
    def _source_size(cell):
        return int(len(cell.source.encode()) * (_CODE_FACTOR if cell.cell_type == "code" else _TEXT_FACTOR))

    def preprocess(self, nb, resources):
        lg = resources.setdefault("lossgrader", {})
        limit = int(lg.get("max_page_bytes") or self.max_page_bytes)
        budget = int(limit * float(lg.get("budget_fraction", 1.0))) - _FRAME_BYTES
        notes = {}                  # what was cut -> [bytes saved, Chinese line, id of its cell]
        first = {}                  # id of a cut source or stream -> (its length before any cut, characters kept)
        lg["max_page_text"] = megabytes(limit)

        def where(i, cell):
            label = cell.metadata.get("lossgrader", {}).get("label")
            return f"“{label}”" if label else f"第 {i + 1} 个单元"

        def is_test(cell):
            return cell.metadata.get("lossgrader", {}).get("kind") == "test"

        def cell_size(cell):
            return _CELL_BYTES + self._source_size(cell) + sum(self._output_size(o) for o in cell.get("outputs", []))

        def note(key, size, text, cell):
            saved = notes[key][0] if key in notes else size       # a second cut: listed by the first one's size
            notes[key] = [saved, text, id(cell)]

        total = sum(cell_size(c) for c in nb.cells)

        def cut_outputs(of_tests, keep=_KEEP_TEXT):
            nonlocal total
            outputs = sorted(((self._output_size(o), i, j) for i, c in enumerate(nb.cells)
                              if is_test(c) == of_tests for j, o in enumerate(c.get("outputs", []))),
                             reverse=True)
            for size, i, j in outputs:
                if total <= budget or size <= 2_000:
                    break
                cell = nb.cells[i]
                out = cell.outputs[j]
                if out.output_type == "stream":
                    n, kept = first.get(id(out), (len(out.text), len(out.text)))
                    if kept <= keep:
                        continue
                    out.text = out.text[:keep] + f"\n…（输出过长：共 {n:,} 个字符，反馈页只显示前 {keep:,} 个。）\n"
                    first[id(out)] = (n, keep)
                    note(("output", id(cell), j), size,
                         f"{where(i, cell)}的输出（{megabytes(size)}）只保留了开头 {keep:,} 个字符", cell)
                else:
                    cell.outputs[j] = note_output(f"（这个输出有 {megabytes(size)}，超出了反馈页的大小限制，已删去。）")
                    note(("output", id(cell), j), size, f"{where(i, cell)}的一个输出（{megabytes(size)}）已删去", cell)
                total -= size - self._output_size(cell.outputs[j])

        def cut_sources(keep=_KEEP_TEXT):
            nonlocal total
            for size, i in sorted(((self._source_size(c), i) for i, c in enumerate(nb.cells)), reverse=True):
                if total <= budget:
                    break
                cell = nb.cells[i]
                n, kept = first.get(id(cell), (len(cell.source), len(cell.source)))
                if kept <= keep:
                    continue
                marker = "\n# …" if cell.cell_type == "code" else "\n\n…"     # "# " would be a heading in markdown
                cell.source = cell.source[:keep] + f"{marker}（此单元共 {n:,} 个字符，反馈页只显示前 {keep:,} 个）"
                first[id(cell)] = (n, keep)
                note(("source", id(cell)), size, f"{where(i, cell)}的内容（{n:,} 个字符）只显示了开头 {keep:,} 个字符", cell)
                total -= size - self._source_size(cell)

        def drop_ungraded_cells():
            nonlocal total
            drop = set()
            # cells the hand-in added first (the assignment's own text last), largest first
            own = lg.get("assignment_sources") or set()
            for _, minus_size, i in sorted((c.source.strip() in own, -cell_size(c), i) for i, c in enumerate(nb.cells)
                                           if not c.metadata.get("nbgrader")):
                if total <= budget:
                    break
                drop.add(i)
                total += minus_size
            if drop:
                gone = {id(nb.cells[i]) for i in drop}
                nb.cells = [c for i, c in enumerate(nb.cells) if i not in drop]
                for key in [k for k, v in notes.items() if v[2] in gone]:     # cuts inside them: moot
                    del notes[key]
                notes[("cells",)] = [float("inf"), f"{len(drop)} 个未评分的单元没有显示", None]

        def keep_less():
            # the graded cells alone are still too big: each overlong source and printed text
            # of the hand-in keeps a shorter beginning
            cut_sources(_MIN_KEEP_TEXT)
            cut_outputs(False, _MIN_KEEP_TEXT)

        # In this order, each only while the page is still too big: the hand-in's outputs,
        # overlong sources (megabytes pasted into a cell), the largest cells that are not
        # graded, shorter beginnings of what was cut, and last the grader's own reports
        # (bounded, and what the student needs).
        for step in (lambda: cut_outputs(False), cut_sources, drop_ungraded_cells, keep_less,
                     lambda: cut_outputs(True)):
            if total > budget:
                step()
        lines = [text for _, text, _ in sorted(notes.values(), key=lambda note: -note[0])]
        if len(lines) > _MAX_NOTES:
            lines[_MAX_NOTES - 1:] = [f"以及另外 {len(lines) - _MAX_NOTES + 1} 处较小的删减"]
        lg["cut_notes"] = lines
        return nb, resources
