"""Feedback: every output of the hand-in reduced to a safe form (lossgrader.sanitize)."""
from __future__ import annotations

from ..sanitize import output_text, sanitize_output
from . import Preprocessor


def online_book_links(html: str) -> str:
    """The grader's links to the book, made absolute: the autograded notebook points them at
    the course's local build (judge.BOOK_LOCAL, relative to feedback/<student>/<id>/), which
    a page mailed, attached or released to a student does not have; the online book
    (judge.BOOK_ONLINE) is the same book wherever the page is read."""
    from ..judge import BOOK_LOCAL, BOOK_ONLINE

    return html.replace(f'href="{BOOK_LOCAL}', f'href="{BOOK_ONLINE}')

class SanitizeOutputs(Preprocessor):
    """Reduce every output to one representation the page can show safely, and every cell's
    metadata to nbgrader's (tags, ``transient``, ``jupyter`` flags of a hand-in do not reach
    the template). The notebook's metadata keeps only what syntax highlighting needs."""

    def preprocess(self, nb, resources):
        keep = {k: nb.metadata[k] for k in ("kernelspec", "language_info") if k in nb.metadata}
        nb.metadata.clear()
        nb.metadata.update(keep)
        return super().preprocess(nb, resources)

    def preprocess_cell(self, cell, resources, index):
        cell.source = output_text(cell.get("source", ""))
        nbgrader = cell.get("metadata", {}).get("nbgrader")
        cell.metadata = {"nbgrader": nbgrader} if isinstance(nbgrader, dict) else {}
        if cell.cell_type == "code":
            for out in cell.get("outputs", []):
                data = out.get("data") if isinstance(out, dict) else None
                if isinstance(data, dict) and isinstance(data.get("text/html"), str):
                    data["text/html"] = online_book_links(data["text/html"])
            cleaned = (sanitize_output(out) for out in cell.get("outputs", []))
            cell.outputs = [out for out in cleaned if out is not None]
        return cell, resources
