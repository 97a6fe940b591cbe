"""Feedback: the Chinese frame of the page (score summary, cell labels, anchors, CSP)."""
from __future__ import annotations

import re

from . import Preprocessor

#: The page is one file and runs no script at all (its formulas are MathML written when
#: the page is made): scripts of any origin, event handlers, javascript: links, frames,
#: forms and every load but its own embedded (data:) images are refused.
CSP = ("default-src 'none'; script-src 'none'; style-src 'unsafe-inline'; img-src data:; "
       "font-src data:; base-uri 'none'; form-action 'none'")


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


def _grade_details(info) -> dict:
    """{grade_id: (auto_score, manual_score, needs_manual_grade)} of this notebook of the
    submission, read-only from the gradebook ({} when the gradebook has no such row)."""
    from nbgrader.api import Assignment, SubmittedAssignment

    from .. import gradebook

    url = info.get("db_url")
    if not url:
        return {}
    with gradebook._reading(url) as db:
        if db is None:
            return {}
        sub = (db.query(SubmittedAssignment)
               .join(Assignment, Assignment.id == SubmittedAssignment.assignment_id)
               .filter(Assignment.name == info.get("assignment"),
                       SubmittedAssignment.student_id == info.get("student"))
               .one_or_none())
        if sub is None:
            return {}
        return {g.cell.name: (g.auto_score, g.manual_score, bool(g.needs_manual_grade))
                for nb in sub.notebooks if nb.name == info.get("notebook") for g in nb.grades}


class FeedbackFrame(Preprocessor):
    """The Chinese frame: page title, total score, table of contents, per-cell labels.

    Each graded cell gets ``cell.metadata.lossgrader`` = {kind, label, anchor, score_text,
    state, comment, manual, auto_text, pending}; the exercise's title comes from the
    grader's registry (the test cell calls ``check("<id>", ...)``), else from the last
    markdown heading above the cell. A score the instructor gave by hand (nbgrader's
    manual score) is shown as the instructor's, with the automatic score beside it: the
    grader's report in the cell still shows the automatic one."""

    def preprocess(self, nb, resources):
        info = resources.get("nbgrader", {})
        lg = resources.setdefault("lossgrader", {})
        score, max_score = info.get("score", 0.0), info.get("max_score", 0.0)
        late = info.get("late_penalty", 0.0) or 0.0
        details = _grade_details(info)
        lg.update({
            "title": f"{info.get('assignment', '')} 作业反馈",
            "student": info.get("student", ""), "assignment": info.get("assignment", ""),
            "notebook": info.get("notebook", ""),
            "score_text": f"{fmt_number(score)} / {fmt_number(max_score)}",
            "late_penalty_text": f"-{fmt_number(late)}" if late > 0 else "",
            "csp": CSP, "toc": [], "manual_count": 0, "pending_count": 0,
        })
        heading = None
        auto_total = 0.0
        for cell in nb.cells:
            if cell.cell_type == "markdown":
                found = _HEADING.findall(cell.source)
                if found:
                    heading = re.sub(r"[*_`]", "", found[-1]).strip()
            meta = cell.metadata.get("nbgrader") or {}
            if not (meta.get("grade") or meta.get("solution") or meta.get("task")):
                continue
            cell.metadata["lossgrader"] = entry = self._label(cell, meta, heading,
                                                              details.get(str(meta.get("grade_id", ""))))
            if meta.get("grade") or meta.get("task"):
                auto_total += entry["auto_score"]
                lg["manual_count"] += entry["manual"]
                lg["pending_count"] += entry["pending"]
            if meta.get("grade"):
                lg["toc"].append({key: entry[key] for key in
                                  ("anchor", "label", "score_text", "state", "manual", "pending")})
        if lg["manual_count"]:
            lg["auto_total_text"] = f"{fmt_number(auto_total)} / {fmt_number(max_score)}"
        return nb, resources

    @staticmethod
    def _label(cell, meta, heading, detail):
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
        auto, manual, needs = detail if detail else (score, None, False)
        by_hand = graded and manual is not None
        return {"kind": kind, "label": label, "anchor": _anchor(grade_id),
                "score_text": f"{fmt_number(score)} / {fmt_number(points)}" if graded else "",
                "state": _state(score, points) if graded else "",
                "comment": meta.get("comment") or "",
                # the instructor's score (nbgrader's manual score) and the grader's beside it
                "manual": by_hand, "auto_score": float(auto or 0.0),
                "auto_text": f"{fmt_number(auto)} / {fmt_number(points)}" if by_hand else "",
                "pending": graded and needs and manual is None}
