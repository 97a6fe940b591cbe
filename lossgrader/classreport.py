"""``lossgrader report``: the class report, one offline HTML page for the instructor.

What it shows, in Chinese: the score distribution per assignment and per exercise, the
typical mistakes the grader named (the hints of failing cases) and how many students made
each, the cases most often failed, the hand-ins that could not be graded and why, and the
time each hand-in took to grade.

Everything comes from what the trusted side recorded, never from a re-parse of the
feedback pages:

* ``lossgrader-status.json`` (written by the coordinator, ``autograde.record``): per hand-in
  its status, reason, seconds, timings and the judge's ``cases`` (CaseRecord dicts);
* the gradebook, read-only through ``lossgrader.gradebook``: ``grade_rows`` (one row per
  student and assignment, missing hand-ins included), ``submission_scores`` (the score of
  each test cell, manual scores first, as nbgrader counts them) and ``released`` (the
  points of each test cell).

The page is one self-contained file: the figures (matplotlib, the course's CJK font, SVG
with the text drawn as paths) are embedded as data: URIs, there is no script, and a
Content-Security-Policy allows nothing but those images and the inline style. Student ids,
reasons and hints are escaped (Jinja2 autoescape).

    from lossgrader.classreport import class_report
    path = class_report(root)                  # report/index.html in the course directory
"""
from __future__ import annotations

import base64
import collections
import dataclasses
import datetime
import html
import io
import os
import re
import statistics
from dataclasses import dataclass, field
from typing import Optional

from . import course, gradebook
from .results import CaseRecord

REPORT_PATH = os.path.join("report", "index.html")
TEMPLATE_DIR = os.path.join(os.path.dirname(__file__), "templates", "class_report")

#: Case statuses that mean "judged, and wrong" (the judge's CaseFailure statuses).
WRONG = ("fail", "error", "timeout", "forbidden")
#: Case statuses of cases that were not judged on their own merit.
NOT_JUDGED = ("skipped", "notimpl")
#: How many rows the "most often failed cases" and "typical mistakes" parts show.
TOP_CASES = 20
TOP_MISTAKES = 25
FIGURE_MISTAKES = 15
#: Student ids listed beside a mistake before "等 N 人".
NAMES_SHOWN = 12
#: Case names listed in a row of the failed cases before "等 N 个".
CASES_SHOWN = 6

#: The worker's timing phases (lossgrader/worker.py), in the order a hand-in runs them.
#: "student code in tests" is part of "test cells": the chart splits it out.
PHASE_NAMES = {
    "kernel start": "启动沙箱与内核",
    "answer cells": "运行答案单元",
    "test cells": "评判测试单元",
    "student code in tests": "测试中的学生代码",
    "total": "评分进程合计",
}
#: Chart segments: (label, colour) in stacking order.
SEGMENTS = (
    ("启动沙箱与内核", "#4c72b0"),
    ("运行答案单元", "#55a868"),
    ("测试中的学生代码", "#c44e52"),
    ("评判（不含学生代码）", "#8172b2"),
    ("评分进程中的其他步骤", "#937860"),
    ("评分进程之外（排队、调度、写入）", "#b0b0b0"),
)
#: Score categories of one test cell, with their colours.
CATEGORIES = (
    ("满分", "#2e7d32"),
    ("部分得分", "#f9a825"),
    ("零分", "#c62828"),
    ("未完成", "#9e9e9e"),
    ("评分失败", "#4a148c"),
)


# ---------------------------------------------------------------------------- the data

@dataclass
class Handin:
    """One (student, assignment) row of the gradebook with what the judge recorded."""
    student: str
    assignment: str
    status: str                     # grade_rows' status: autograded, failed, missing, needs manual grading
    score: float
    max_score: float
    reason: str = ""
    seconds: Optional[float] = None             # coordinator's wall time for the hand-in
    attempts: int = 1
    timings: dict = field(default_factory=dict)  # worker phase -> seconds
    cases: list = field(default_factory=list)    # CaseRecord
    cells: dict = field(default_factory=dict)    # grade_id -> score in the gradebook

    @property
    def handed_in(self) -> bool:
        return self.status != "missing"

    @property
    def percent(self) -> float:
        return 100.0 * self.score / self.max_score if self.max_score else 0.0


@dataclass
class ClassData:
    assignments: list                             # assignment ids, sorted
    cells: dict                                   # assignment -> [(grade_id, points)] in notebook order
    handins: list                                 # Handin, one per gradebook row
    exercise_of: dict = field(default_factory=dict)   # grade_id -> exercise id


def _cases(entry) -> list:
    """The CaseRecords of a status entry (malformed records are left out)."""
    names = [f.name for f in dataclasses.fields(CaseRecord)]
    out = []
    for raw in entry.get("cases") or []:
        if isinstance(raw, dict):
            try:
                case = CaseRecord(**{k: raw[k] for k in names if k in raw})
            except TypeError:       # a required field is missing
                continue
            if all(isinstance(getattr(case, k), str) for k in ("grade_id", "exercise", "case", "status")):
                out.append(case)
    return out


def _number(value) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def gather(root) -> ClassData:
    """Read the gradebook (read-only) and lossgrader-status.json into a ClassData."""
    root = os.path.abspath(root)
    rows = gradebook.grade_rows(root)
    status = course.read_status(root)
    url = gradebook.db_url(root)
    aids = sorted({r["assignment"] for r in rows})
    cells = {}
    for aid in aids:
        try:
            released = gradebook.released(root, aid)
        except gradebook.GradebookError:
            cells[aid] = []
            continue
        found = []
        for nb_name in sorted(released["notebooks"]):
            for cell in released["notebooks"][nb_name]["cells"]:
                if "grade" in cell["kind"] and cell.get("points"):
                    found.append((cell["name"], float(cell["points"])))
        cells[aid] = found
    handins, exercise_of = [], {}
    for row in rows:
        entry = status.get(f"{row['student_id']}/{row['assignment']}")
        entry = entry if isinstance(entry, dict) else {}
        handin = Handin(row["student_id"], row["assignment"], row["status"], float(row["score"]),
                        float(row["max_score"]), str(row.get("reason") or ""))
        if handin.handed_in:
            timings = entry.get("timings")
            handin.timings = {str(k): float(v) for k, v in (timings or {}).items()
                              if _number(v) is not None} if isinstance(timings, dict) else {}
            handin.seconds = _number(entry.get("seconds"))
            handin.attempts = int(_number(entry.get("attempts")) or 1)
            handin.cases = _cases(entry)
            found = gradebook.submission_scores(url, row["assignment"], row["student_id"])
            handin.cells = dict(found[2]) if found else {}
            for case in handin.cases:
                exercise_of.setdefault(case.grade_id, case.exercise)
        handins.append(handin)
    return ClassData(aids, cells, handins, exercise_of)


# ---------------------------------------------------------------------- the summaries

def _title(data, grade_id) -> str:
    """The exercise's Chinese title for a test cell (the grade id when it is no exercise)."""
    from .exercises import EXERCISES

    ex = data.exercise_of.get(grade_id)
    if ex is None and grade_id.startswith("test_"):
        ex = grade_id[len("test_"):]
    return EXERCISES[ex].title if ex in EXERCISES else grade_id


def _exercise_title(exercise) -> str:
    from .exercises import EXERCISES

    return EXERCISES[exercise].title if exercise in EXERCISES else exercise


def _median(values):
    return statistics.median(values) if values else None


def _mean(values):
    return statistics.fmean(values) if values else None


def assignment_summary(data: ClassData) -> list:
    """Per assignment: counts of hand-ins by status, and score statistics (in points and %)."""
    out = []
    for aid in data.assignments:
        rows = [h for h in data.handins if h.assignment == aid]
        handed = [h for h in rows if h.handed_in]
        scores = [h.score for h in handed]
        max_score = max((h.max_score for h in rows), default=0.0)
        out.append({
            "assignment": aid, "students": len(rows), "handed_in": len(handed),
            "graded": sum(h.status == "autograded" for h in rows),
            "failed": sum(h.status == "failed" for h in rows),
            "manual": sum(h.status == "needs manual grading" for h in rows),
            "missing": sum(h.status == "missing" for h in rows),
            "max_score": max_score,
            "mean": _mean(scores), "median": _median(scores),
            "lowest": min(scores) if scores else None, "highest": max(scores) if scores else None,
            "full": sum(max_score > 0 and h.score >= max_score - 1e-9 for h in handed),
        })
    return out


def _category(handin, grade_id, points) -> str:
    if handin.status == "failed":
        return "评分失败"
    score = handin.cells.get(grade_id, 0.0) or 0.0
    if score >= points - 1e-9:
        return "满分"
    if score > 0:
        return "部分得分"
    if any(c.grade_id == grade_id and c.status == "notimpl" for c in handin.cases):
        return "未完成"
    return "零分"


def exercise_summary(data: ClassData) -> list:
    """Per test cell (exercise), over the hand-ins of its assignment: the number in each
    score category, the mean score, and how many failing cases had no named mistake."""
    out = []
    for aid in data.assignments:
        handed = [h for h in data.handins if h.assignment == aid and h.handed_in]
        for grade_id, points in data.cells.get(aid, []):
            counts = collections.Counter(_category(h, grade_id, points) for h in handed)
            scores = [h.cells.get(grade_id, 0.0) or 0.0 for h in handed]
            mean = _mean(scores)
            out.append({
                "assignment": aid, "grade_id": grade_id, "title": _title(data, grade_id),
                "points": points, "handed_in": len(handed),
                "counts": {name: counts.get(name, 0) for name, _ in CATEGORIES},
                "mean": mean, "rate": mean / points if mean is not None and points else None,
            })
    return out


def by_difficulty(exercises: list) -> list:
    """The exercises hardest first: lowest mean share of the points, then most zeros; those
    nobody handed in last. Each gets its rank (1 = hardest) as "rank"."""
    ranked = sorted((e for e in exercises if e["rate"] is not None),
                    key=lambda e: (e["rate"], -e["counts"]["零分"] - e["counts"]["未完成"],
                                   e["assignment"], e["grade_id"]))
    for rank, e in enumerate(ranked, 1):
        e["rank"] = rank
    rest = [e for e in exercises if e["rate"] is None]
    for e in rest:
        e["rank"] = None
    return ranked + rest


def _plain(text) -> str:
    """The text of a judge message (which may hold <code> markup), without the markup."""
    return html.unescape(re.sub(r"<[^>]*>", "", str(text or ""))).strip()


def _mistake_of(case: CaseRecord) -> Optional[str]:
    """The typical mistake the grader named for a wrong case: its hint, or for a forbidden
    built-in the message that says which one (that case has no separate hint)."""
    if case.status not in WRONG:
        return None
    if case.hint:
        return case.hint.strip()        # plain text (the exercises' hints hold no markup)
    if case.status == "forbidden" and case.message:
        return _plain(case.message)
    return None


def mistakes(data: ClassData) -> list:
    """The typical mistakes the grader named, most students first: {assignment, exercise,
    title, hint, students (sorted ids), cases (number of wrong cases that showed it)}."""
    found = {}
    for h in data.handins:
        for case in h.cases:
            hint = _mistake_of(case)
            if hint is None:
                continue
            key = (h.assignment, case.exercise, hint)
            item = found.setdefault(key, {"assignment": h.assignment, "exercise": case.exercise,
                                          "title": _exercise_title(case.exercise), "hint": hint,
                                          "students": set(), "cases": 0})
            item["students"].add(h.student)
            item["cases"] += 1
    out = []
    for item in found.values():
        item["students"] = sorted(item["students"])
        out.append(item)
    out.sort(key=lambda m: (-len(m["students"]), -m["cases"], m["assignment"], m["exercise"], m["hint"]))
    return out


def unfinished(data: ClassData) -> list:
    """Exercises left unimplemented (NotImplementedError), most students first."""
    found = {}
    for h in data.handins:
        for ex in {c.exercise for c in h.cases if c.status == "notimpl"}:
            found.setdefault((h.assignment, ex), set()).add(h.student)
    out = [{"assignment": aid, "exercise": ex, "title": _exercise_title(ex), "students": sorted(s)}
           for (aid, ex), s in found.items()]
    out.sort(key=lambda m: (-len(m["students"]), m["assignment"], m["exercise"]))
    return out


def failed_cases(data: ClassData, top: int = TOP_CASES) -> list:
    """The cases most often judged wrong: {assignment, exercise, title, case, wrong, judged,
    rate, statuses (Counter), hint (the most frequent named mistake or None)}."""
    found = {}
    for h in data.handins:
        for case in h.cases:
            if case.status in NOT_JUDGED:
                continue
            key = (h.assignment, case.exercise, case.case)
            item = found.setdefault(key, {"assignment": h.assignment, "exercise": case.exercise,
                                          "title": _exercise_title(case.exercise), "case": case.case,
                                          "wrong": 0, "judged": 0, "statuses": collections.Counter(),
                                          "hints": collections.Counter()})
            item["judged"] += 1
            if case.status in WRONG:
                item["wrong"] += 1
                item["statuses"][case.status] += 1
                hint = _mistake_of(case)
                if hint:
                    item["hints"][hint] += 1
    out = []
    for item in found.values():
        if not item["wrong"]:
            continue
        item["rate"] = item["wrong"] / item["judged"]
        hints = item.pop("hints")
        item["hint"] = hints.most_common(1)[0][0] if hints else None
        out.append(item)
    out.sort(key=lambda c: (-c["wrong"], -c["rate"], c["assignment"], c["exercise"], c["case"]))
    return out[:top]


def failed_case_groups(data: ClassData, top: int = TOP_CASES) -> list:
    """The failing cases grouped by what the grader said about them: one row per
    (assignment, exercise, hint), hint None for failures without a named mistake.

    Each: {assignment, exercise, title, hint, cases: [(case name, times wrong with this
    hint)] most first, wrong (cases judged wrong with this hint, over all hand-ins), judged
    (how often those cases were judged at all), rate, statuses (Counter)}; most wrong first."""
    judged = collections.Counter()
    groups = {}
    for h in data.handins:
        for case in h.cases:
            if case.status in NOT_JUDGED:
                continue
            judged[(h.assignment, case.exercise, case.case)] += 1
            if case.status not in WRONG:
                continue
            hint = _mistake_of(case)
            group = groups.setdefault((h.assignment, case.exercise, hint), {
                "assignment": h.assignment, "exercise": case.exercise,
                "title": _exercise_title(case.exercise), "hint": hint, "cases": collections.Counter(),
                "wrong": 0, "statuses": collections.Counter()})
            group["cases"][case.case] += 1
            group["wrong"] += 1
            group["statuses"][case.status] += 1
    out = []
    for (aid, exercise, _), group in groups.items():
        group["judged"] = sum(judged[(aid, exercise, name)] for name in group["cases"])
        group["rate"] = group["wrong"] / group["judged"]
        group["cases"] = sorted(group["cases"].items(), key=lambda item: (-item[1], item[0]))
        out.append(group)
    out.sort(key=lambda g: (-g["wrong"], -g["rate"], g["hint"] is None, g["assignment"], g["exercise"],
                            g["hint"] or ""))
    return out[:top]


#: Chinese names of the case statuses.
CASE_STATUS = {"fail": "结果错误", "error": "抛出异常", "timeout": "超时", "forbidden": "调用了禁止的内置函数"}


def failed_handins(data: ClassData) -> list:
    """Hand-ins that could not be graded (0 with a reason), and those waiting for a manual grade."""
    from .feedback import reason_zh

    out = []
    for h in data.handins:
        if h.status == "failed":
            out.append({"student": h.student, "assignment": h.assignment, "kind": "评分失败",
                        "reason": h.reason, "explained": _reason_text(reason_zh(h.reason or "unknown")),
                        "attempts": h.attempts, "seconds": h.seconds})
        elif h.status == "needs manual grading":
            out.append({"student": h.student, "assignment": h.assignment, "kind": "需要人工评分",
                        "reason": h.reason, "explained": "有单元格需要教师在 formgrader 中人工评分或复核。",
                        "attempts": h.attempts, "seconds": h.seconds})
    return out


def _reason_text(zh: str) -> str:
    """reason_zh's sentence without its technical-details tail (shown in its own column)."""
    return zh.split("（技术细节：", 1)[0]


def _segments(h: Handin) -> dict:
    """A hand-in's time split into the chart's segments (seconds)."""
    t = h.timings
    kernel, answers, tests = t.get("kernel start", 0.0), t.get("answer cells", 0.0), t.get("test cells", 0.0)
    student = min(t.get("student code in tests", 0.0), tests)
    total = t.get("total", kernel + answers + tests)
    seconds = h.seconds if h.seconds is not None else total
    return dict(zip([name for name, _ in SEGMENTS], (
        kernel, answers, student, tests - student,
        max(total - kernel - answers - tests, 0.0), max(seconds - total, 0.0))))


def _phase_order(phases) -> list:
    """Phase names in the worker's order (PHASE_NAMES), unknown ones after them by name."""
    order = list(PHASE_NAMES)
    return sorted(phases, key=lambda p: (order.index(p) if p in order else len(order), p))


def timing_summary(data: ClassData) -> dict:
    """Time per hand-in: per assignment (n, mean, median, max seconds, mean of each
    segment), every phase the workers recorded (mean seconds), the slowest hand-ins.

    The statistics and the figure cover the graded hand-ins: one that failed to grade
    (a hang killed at the time limit, a worker that died) took the time it took for a
    reason of its own, and has no phases to split: those are counted apart (the part
    "failed hand-ins" lists them with their seconds)."""
    timed = [h for h in data.handins if h.handed_in and h.seconds is not None]
    graded = [h for h in timed if h.status != "failed"]
    failed = [h for h in timed if h.status == "failed"]
    per_assignment = []
    for aid in data.assignments:
        rows = [h for h in graded if h.assignment == aid]
        if not rows:
            continue
        secs = [h.seconds for h in rows]
        segs = [_segments(h) for h in rows]
        per_assignment.append({
            "assignment": aid, "n": len(rows), "mean": _mean(secs), "median": _median(secs),
            "max": max(secs), "segments": {name: _mean([s[name] for s in segs]) for name, _ in SEGMENTS}})
    phases = collections.defaultdict(list)
    for h in graded:
        for phase, seconds in h.timings.items():
            phases[phase].append(seconds)
    phase_rows = [{"phase": p, "name": PHASE_NAMES.get(p, p), "mean": _mean(phases[p]),
                   "max": max(phases[p]), "n": len(phases[p])} for p in _phase_order(phases)]
    slowest = sorted(graded, key=lambda h: -h.seconds)[:10]
    return {"count": len(timed), "total": sum(h.seconds for h in timed),
            "graded": len(graded), "seconds": [h.seconds for h in graded],
            "failed": len(failed), "failed_total": sum(h.seconds for h in failed),
            "per_assignment": per_assignment, "phases": phase_rows,
            "slowest": [{"student": h.student, "assignment": h.assignment, "seconds": h.seconds,
                         "status": h.status, "attempts": h.attempts,
                         "phases": [(PHASE_NAMES.get(p, p), h.timings[p]) for p in _phase_order(h.timings)]}
                        for h in slowest]}


# ------------------------------------------------------------------------- the figures

def _svg(fig) -> str:
    """The figure as an SVG data: URI (text drawn as paths: no font needed to view it)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    svg = _compact_svg(buf.getvalue().decode("utf-8"))
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode("utf-8")).decode("ascii")


_NUMBER = re.compile(r"-?\d+\.\d{3,}")


def _round(text) -> str:
    """Numbers with more than two decimals rounded to two (0.01 pt: far below a pixel)."""
    return _NUMBER.sub(lambda m: f"{float(m.group(0)):.2f}".rstrip("0").rstrip("."), text)


def _compact_svg(svg: str) -> str:
    """matplotlib's SVG without what an <img> does not need: the prolog, metadata and text
    comments, the indentation, spaces inside path data, long ids, coordinates finer than
    0.01 pt (glyph outlines are integers in font units, scaled by untouched transforms).
    About 40% smaller: the report carries every figure twice (wide and narrow)."""
    svg = re.sub(r"<\?xml[^>]*\?>|<!DOCTYPE[^>]*>|<metadata>.*?</metadata>|<!--.*?-->", "", svg, flags=re.S)
    svg = re.sub(r'\bd="([^"]*)"', lambda m: 'd="' + re.sub(r" ?([A-Za-z]) ?", r"\1",
                                                           _round(" ".join(m.group(1).split()))) + '"', svg)
    svg = re.sub(r'\b(x|y|width|height)="([^"]*)"', lambda m: f'{m.group(1)}="{_round(m.group(2))}"', svg)
    svg = re.sub(r"translate\(([^)]*)\)", lambda m: f"translate({_round(m.group(1))})", svg)
    ids = {old: f"i{n}" for n, old in enumerate(dict.fromkeys(re.findall(r'\bid="([^"]+)"', svg)))}
    if ids:
        pattern = re.compile(r'(\bid="|#)(' + "|".join(map(re.escape, sorted(ids, key=len, reverse=True))) + r')(?=["\)])')
        svg = pattern.sub(lambda m: m.group(1) + ids[m.group(2)], svg)
    return re.sub(r">\s+<", "><", svg).strip()


#: Below this viewport width (CSS px) the page shows the narrow figures: laid out for a
#: phone (one column, labels wrapped), so that their text stays readable instead of being
#: scaled down to a few pixels.
NARROW_MEDIA = "(max-width: 700px)"
#: Figure widths in inches: the wide ones fill the page at 1180 px, the narrow ones a phone.
WIDE_IN, NARROW_IN = 9.0, 4.3


def _figures(data, summary, exercises, named, timing) -> dict:
    """{name: {"wide": data URI, "narrow": data URI}} of every figure that has something to show."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    from .cjkfont import use_cjk_font

    figures = {}
    with matplotlib.rc_context({"svg.hashsalt": "lossgrader-class-report", "svg.fonttype": "path",
                                "font.size": 10}):
        use_cjk_font()
        for narrow in (False, True):
            size = "narrow" if narrow else "wide"
            if any(s["handed_in"] for s in summary):
                figures.setdefault("assignments", {})[size] = _svg(_fig_assignments(data, narrow))
            if exercises and any(e["handed_in"] for e in exercises):
                figures.setdefault("exercises", {})[size] = _svg(_fig_exercises(exercises, narrow))
            if named:
                figures.setdefault("mistakes", {})[size] = _svg(_fig_mistakes(named[:FIGURE_MISTAKES], narrow))
            if timing["graded"]:
                figures.setdefault("times", {})[size] = _svg(_fig_times(timing, narrow))
    return figures


def _wrap(text, width, lines) -> str:
    """text in at most `lines` lines of `width` columns (a CJK character takes two), with an
    ellipsis where it was cut; "$" escaped (matplotlib would read it as mathtext)."""
    import unicodedata

    out, line, used = [], "", 0
    for ch in " ".join(str(text).split()):
        w = 2 if unicodedata.east_asian_width(ch) in "WF" else 1
        if used + w > width:
            out.append(line)
            line, used = "", 0
            if len(out) == lines:
                out[-1] = out[-1][:-1] + "…"
                return "\n".join(out).replace("$", r"\$")
        line += ch
        used += w
    out.append(line)
    return "\n".join(out).replace("$", r"\$")


def _fig_assignments(data, narrow=False):
    """One histogram per assignment: hand-ins per score band (percent of the maximum),
    hand-ins that failed to grade stacked on top in their own colour."""
    import matplotlib.pyplot as plt
    import numpy as np

    aids = [a for a in data.assignments if any(h.assignment == a and h.handed_in for h in data.handins)]
    cols = 1 if narrow else min(3, len(aids))
    rows = (len(aids) + cols - 1) // cols
    width = NARROW_IN if narrow else 3.6 * cols
    fig, axes = plt.subplots(rows, cols, figsize=(width, 2.6 * rows + 0.4), squeeze=False)
    bins = np.linspace(0, 100, 11)
    for ax in axes.flat[len(aids):]:
        ax.set_visible(False)
    for ax, aid in zip(axes.flat, aids):
        handed = [h for h in data.handins if h.assignment == aid and h.handed_in]
        graded = [min(h.percent, 100.0) for h in handed if h.status != "failed"]
        failed = [min(h.percent, 100.0) for h in handed if h.status == "failed"]
        ax.hist([graded, failed], bins=bins, stacked=True, color=["#4c72b0", CATEGORIES[-1][1]],
                label=["已评分", "评分失败"], edgecolor="white")
        mean = statistics.fmean(h.percent for h in handed)
        ax.axvline(mean, color="#c44e52", linestyle="--", linewidth=1.2)
        ax.set_title(f"{aid}（{len(handed)} 份，平均 {mean:.0f}%）", fontsize=10)
        ax.set_xlim(0, 100)
        ax.set_xlabel("得分（占满分的百分比）")
        ax.set_ylabel("提交数")
        ax.yaxis.get_major_locator().set_params(integer=True)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in ("#4c72b0", CATEGORIES[-1][1])]
    handles.append(plt.Line2D([0], [0], color="#c44e52", linestyle="--"))
    fig.legend(handles, ["已评分", "评分失败", "平均分"], loc="upper center", ncol=3,
               bbox_to_anchor=(0.5, 1.0), frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / fig.get_figheight()))
    return fig


def _label_rows(ax, labels, line_in, bar_in):
    """Each bar gets a row of its own with its label written above it across the whole
    width (the y axis counts about inches from the top). Returns the bars' y centres and
    the bottom."""
    centres, at = [], 0.0
    for label in labels:
        lines = label.count("\n") + 1
        ax.text(0, at + 0.04, label, va="top", ha="left", fontsize=9, transform=ax.get_yaxis_transform(),
                linespacing=1.15)
        centres.append(at + 0.06 + lines * line_in + bar_in / 2)
        at = centres[-1] + bar_in / 2 + 0.12
    ax.set_ylim(at, 0)
    ax.set_yticks([])
    return centres, at


def _fig_exercises(exercises, narrow=False):
    """One horizontal bar per exercise, hardest first (by_difficulty): the share of
    hand-ins in each score category."""
    import matplotlib.pyplot as plt
    import numpy as np

    shown = [e for e in by_difficulty([dict(e) for e in exercises]) if e["handed_in"]]
    labels = [f"{e['rank']}. {e['assignment'][:2]} · {_wrap(e['title'], 46 if narrow else 40, 1)}" for e in shown]
    if narrow:
        fig, ax = plt.subplots(figsize=(NARROW_IN, 0.58 * len(shown) + 1.3))
        y, _ = _label_rows(ax, labels, 0.17, 0.2)
        height = 0.2
    else:
        fig, ax = plt.subplots(figsize=(WIDE_IN, 0.32 * len(shown) + 1.2))
        y, height = np.arange(len(shown)), 0.75
    left = np.zeros(len(shown))
    for name, colour in CATEGORIES:
        share = np.array([100.0 * e["counts"][name] / e["handed_in"] for e in shown])
        ax.barh(y, share, left=left, color=colour, label=name, height=height, edgecolor="white", linewidth=0.5)
        left += share
    if not narrow:
        ax.set_yticks(y)
        ax.set_yticklabels(labels)
        ax.set_ylim(len(shown) - 0.5, -0.5)      # hardest exercise on top, no empty band
    ax.set_xlim(0, 100)
    ax.set_xlabel("占已提交份数的百分比（从上到下：由难到易）")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3 if narrow else len(CATEGORIES),
              frameon=False)
    fig.tight_layout()
    return fig


def _fig_mistakes(named, narrow=False):
    """Students per typical mistake: each bar under the mistake itself (the exercise and
    the hint, wrapped, longer ones cut), numbered like the table's rows."""
    import matplotlib.pyplot as plt

    width, lines = (46, 3) if narrow else (118, 2)
    labels = [_wrap(f"[{i}] {m['title']}：{m['hint']}", width, lines) for i, m in enumerate(named, 1)]
    rows = sum(label.count("\n") + 1 for label in labels)
    fig, ax = plt.subplots(figsize=(NARROW_IN if narrow else WIDE_IN, 0.17 * rows + 0.44 * len(named) + 0.9))
    y, _ = _label_rows(ax, labels, 0.17, 0.2)
    ax.barh(y, [len(m["students"]) for m in named], color="#c44e52", height=0.2)
    ax.set_xlabel("犯这个错误的学生人数")
    ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    return fig


def _fig_times(timing, narrow=False):
    """The seconds per graded hand-in (histogram), and the mean hand-in of each assignment
    split into where its time went; side by side, or one above the other when narrow."""
    import matplotlib.pyplot as plt
    import numpy as np

    seconds = timing["seconds"]
    per = timing["per_assignment"]
    if narrow:
        fig, (left, right) = plt.subplots(2, 1, figsize=(NARROW_IN, 3.0 + 0.35 * len(per) + 3.2),
                                          gridspec_kw={"height_ratios": [2.6, 0.35 * len(per) + 1.0]})
    else:
        fig, (left, right) = plt.subplots(1, 2, figsize=(11.0, 3.8), gridspec_kw={"width_ratios": [1, 1.4]})
    left.hist(seconds, bins=min(20, max(5, len(seconds) // 3)), color="#4c72b0", edgecolor="white")
    left.axvline(statistics.fmean(seconds), color="#c44e52", linestyle="--", linewidth=1.2,
                 label=f"平均 {statistics.fmean(seconds):.1f} 秒")
    left.set_xlabel("每份提交的评分时间（秒）")
    left.set_ylabel("提交数")
    left.yaxis.get_major_locator().set_params(integer=True)
    left.legend(frameon=False)
    y = np.arange(len(per))
    start = np.zeros(len(per))
    for name, colour in SEGMENTS:
        width = np.array([p["segments"][name] for p in per])
        right.barh(y, width, left=start, color=colour, label=name, height=0.7)
        start += width
    right.set_yticks(y)
    right.set_yticklabels([p["assignment"] for p in per])
    right.set_ylim(len(per) - 0.5, -0.5)
    right.set_xlabel("平均每份提交的耗时（秒）")
    if narrow:
        right.legend(loc="upper center", bbox_to_anchor=(0.4, -0.35), ncol=2, frameon=False, fontsize=8)
    else:
        right.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=8)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- the page

def render(data: ClassData, generated: Optional[str] = None) -> str:
    """The report page (HTML text) for data."""
    import jinja2

    summary = assignment_summary(data)
    exercises = exercise_summary(data)
    hardest_first = by_difficulty(exercises)
    named = mistakes(data)
    timing = timing_summary(data)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATE_DIR), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = _num
    env.filters["pct"] = lambda v: "–" if v is None else f"{100 * v:.0f}%"
    env.filters["sec"] = lambda v: "–" if v is None else f"{v:.1f}"
    students = sorted({h.student for h in data.handins})
    return env.get_template("index.html.j2").render(
        generated=generated or datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        students=len(students), handins=sum(h.handed_in for h in data.handins),
        assignments=data.assignments, summary=summary, exercises=exercises, hardest_first=hardest_first,
        narrow_media=NARROW_MEDIA,
        categories=[name for name, _ in CATEGORIES], colours=dict(CATEGORIES),
        mistakes=named[:TOP_MISTAKES], more_mistakes=max(0, len(named) - TOP_MISTAKES),
        names_shown=NAMES_SHOWN, cases_shown=CASES_SHOWN, unfinished=unfinished(data),
        cases=failed_case_groups(data), case_status=CASE_STATUS, failed=failed_handins(data),
        timing=timing, segments=[name for name, _ in SEGMENTS],
        has_status=any(h.cases or h.timings for h in data.handins),
        figures=_figures(data, summary, exercises, named, timing))


def _num(value) -> str:
    """A score for a table: at most two decimals, no trailing zeros; – for None."""
    if value is None:
        return "–"
    return f"{value:.2f}".rstrip("0").rstrip(".")


def class_report(root, to=None) -> str:
    """Write the class report (default report/index.html in the course directory); returns its path."""
    root = os.path.abspath(root)
    path = to if to and os.path.isabs(to) else os.path.join(root, to or REPORT_PATH)
    page = render(gather(root))
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(page)
    os.replace(tmp, path)
    return path
