"""Feedback: the Chinese frame of the page (score summary, cell labels, anchors, CSP)."""
from __future__ import annotations

import re

from traitlets import Unicode

from . import Preprocessor

#: The page may run scripts of its own folder tree only (MathJax and its configuration);
#: inline scripts, event handlers, javascript: links, frames, forms and any remote load are refused.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data:; font-src 'self' data:; base-uri 'none'; form-action 'none'")


def fmt_number(x) -> str:
    return f"{round(float(x or 0), 2):g}"


def _state(score, points) -> str:
    if points and score is not None and float(score) >= float(points) - 1e-9:
        return "full"
    return "partial" if score else "zero"


_CHECK_CALL = re.compile(r"""check\(\s*["']([A-Za-z0-9_]+)["']""")
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def _exercise_title(exercise_id):
    try:
        from ..exercises import EXERCISES
    except Exception:  # pragma: no cover - the registry is part of the package
        return None
    ex = EXERCISES.get(exercise_id)
    return ex.title if ex is not None else None


def _anchor(grade_id) -> str:
    return "lg-" + re.sub(r"[^A-Za-z0-9_-]", "_", str(grade_id))


class FeedbackFrame(Preprocessor):
    """The Chinese frame: page title, total score, table of contents, per-cell labels.

    Each graded cell gets ``cell.metadata.lossgrader`` = {kind, label, anchor, score_text,
    state, comment}; the exercise's title comes from the grader's registry (the test cell
    calls ``check("<id>", ...)``), else from the last markdown heading above the cell."""

    static_prefix = Unicode("../../_static/", help="Relative URL of feedback/_static/ seen from a page.").tag(config=True)

    def preprocess(self, nb, resources):
        info = resources.get("nbgrader", {})
        lg = resources.setdefault("lossgrader", {})
        score, max_score = info.get("score", 0.0), info.get("max_score", 0.0)
        late = info.get("late_penalty", 0.0) or 0.0
        lg.update({
            "title": f"{info.get('assignment', '')} 作业反馈",
            "student": info.get("student", ""), "assignment": info.get("assignment", ""),
            "notebook": info.get("notebook", ""),
            "score_text": f"{fmt_number(score)} / {fmt_number(max_score)}",
            "late_penalty_text": f"-{fmt_number(late)}" if late > 0 else "",
            "static": lg.get("static", self.static_prefix), "csp": CSP, "toc": [],
        })
        heading = None
        for cell in nb.cells:
            if cell.cell_type == "markdown":
                found = _HEADING.findall(cell.source)
                if found:
                    heading = re.sub(r"[*_`]", "", found[-1]).strip()
            meta = cell.metadata.get("nbgrader") or {}
            if not (meta.get("grade") or meta.get("solution") or meta.get("task")):
                continue
            cell.metadata["lossgrader"] = entry = self._label(cell, meta, heading)
            if meta.get("grade"):
                lg["toc"].append({"anchor": entry["anchor"], "label": entry["label"],
                                  "score_text": entry["score_text"], "state": entry["state"]})
        return nb, resources

    @staticmethod
    def _label(cell, meta, heading):
        grade_id = str(meta.get("grade_id", ""))
        found = _CHECK_CALL.search(cell.source) if cell.cell_type == "code" else None
        exercise = found.group(1) if found else re.sub(r"^(answer|test)_", "", grade_id)
        title = _exercise_title(exercise) or heading or grade_id
        if meta.get("task"):
            kind, label = "task", f"任务：{title}"
        elif meta.get("solution"):
            kind, label = "answer", (f"你的书面回答：{title}" if cell.cell_type == "markdown" else f"你的答案：{title}")
        else:
            kind, label = "test", f"测试：{title}"
        graded = bool(meta.get("grade") or meta.get("task"))
        score, points = meta.get("score"), meta.get("points")
        return {"kind": kind, "label": label, "anchor": _anchor(grade_id),
                "score_text": f"{fmt_number(score)} / {fmt_number(points)}" if graded else "",
                "state": _state(score, points) if graded else "",
                "comment": meta.get("comment") or ""}
