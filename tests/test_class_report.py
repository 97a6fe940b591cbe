"""The class report (``lossgrader report``, lossgrader/classreport.py).

The course is a temporary copy with three assignments registered in a fresh gradebook and
the records of a real autograde run written back through the coordinator's own writer
(``gradebook.write_result``) and status file: ``tests/data/class_report/demo_class.json``
holds the sample class's ``lossgrader-status.json`` entries and test-cell scores from
``lossgrader demo`` (regenerate: run the demo in a copy of the course, then take
``lossgrader-status.json`` and ``gradebook.submission_scores`` of each hand-in). Two more
students are added by hand: one whose id, failure reason, case name and hint are HTML
attacks, and one whose hand-in hit the time limit. No hand-in is graded here and no
feedback page exists: the report must come from the judge's records alone.

The page is opened in headless Chromium with only localhost reachable: no console error,
every figure loaded, the Chinese headings there, no attack ran; a screenshot is saved
(LOSSGRADER_SCREENSHOTS names the folder, else a temporary one).
"""
from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import pytest

pytest.importorskip("nbgrader")

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "class_report" / "demo_class.json"
sys.path.insert(0, str(ROOT / "book" / "_ext"))
from headless import Browser, StaticServer, find_chromium  # noqa: E402

import a11y  # noqa: E402
from course_copy import copy_course  # noqa: E402

from lossgrader import classreport as cr  # noqa: E402
from lossgrader import course as course_mod  # noqa: E402
from lossgrader import gradebook as G  # noqa: E402
from lossgrader.cli import main  # noqa: E402
from lossgrader.results import CaseRecord, HandinResult  # noqa: E402

ASSIGNMENTS = ("02_regression", "03_classification", "06_code")
SHOTS = os.environ.get("LOSSGRADER_SCREENSHOTS")

#: The attacker's id, failure reason, case name and hint: each would run script if unescaped.
EVIL_ID = '<img src=x onerror="window.__pwned=1">'
EVIL_REASON = "<script>window.__pwned=2</script> is not valid JSON"
EVIL_CASE = "<b onmouseover=\"window.__pwned=3\">用例</b>"
EVIL_HINT = "<iframe src=\"javascript:parent.__pwned=4\"></iframe>别这样写"
SLOW = "slow_student"

HEADINGS = ["概览", "各次作业的得分分布", "各练习的得分分布", "典型错误", "最常失败的用例",
            "评分失败的提交", "每份提交的评分耗时"]
HUBER_HINT = "线性部分缺少 −0.5·δ²：两段在 |r| = δ 处不连续。"


def _copy_course(dest: Path, assignments=ASSIGNMENTS, db_url=None):
    copy_course(dest, assignments, exercises=False, db_url=db_url)


def _record_demo_class(root: Path, assignments=ASSIGNMENTS) -> dict:
    """Register the assignments and write the recorded hand-ins back as the coordinator
    does (gradebook rows, status file); returns the status entries."""
    assert G.register(str(root), list(assignments)) == list(assignments)
    data = json.loads(DATA.read_text(encoding="utf-8"))
    url = G.db_url(str(root))
    status = {}
    for key, entry in data["status"].items():
        student, aid = key.split("/")
        if aid in assignments:
            G.write_result(url, HandinResult(student, aid, scores=data["cells"][key],
                                             max_scores=_points(root, aid)))
            status[key] = entry
    course_mod.write_status(str(root), status)
    return status


def _points(root, aid):
    cells = G.released(str(root), aid)["notebooks"][aid]["cells"]
    return {c["name"]: float(c["points"]) for c in cells if "grade" in c["kind"] and c["points"]}


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    root = tmp_path_factory.mktemp("class_report_course")
    _copy_course(root)
    status = _record_demo_class(root)
    url = G.db_url(str(root))
    # the attacker: 02 could not be graded (reason with script), 03 graded with a hostile hint
    points = _points(root, "02_regression")
    G.write_result(url, HandinResult.failure(EVIL_ID, "02_regression", EVIL_REASON, points))
    status[f"{EVIL_ID}/02_regression"] = {"status": "failed", "reason": EVIL_REASON, "seconds": 0.8,
                                          "attempts": 2, "score": 0.0, "max_score": 6.0, "timings": {}, "cases": []}
    points = _points(root, "03_classification")
    G.write_result(url, HandinResult(EVIL_ID, "03_classification", scores={g: 0.0 for g in points},
                                     max_scores=points))
    cases = [CaseRecord("test_bce", "bce", EVIL_CASE, "fail", "结果不对", EVIL_HINT).__dict__,
             CaseRecord("test_bce", "bce", "一维 float32", "timeout", "超时", None).__dict__]
    status[f"{EVIL_ID}/03_classification"] = {
        "status": "autograded", "reason": "", "seconds": 6.5, "attempts": 1, "score": 0.0, "max_score": 13.0,
        "timings": {"kernel start": 1.0, "answer cells": 2.0, "test cells": 3.0, "student code in tests": 1.5,
                    "total": 6.2, "<i>odd phase</i>": 0.1},
        "cases": cases}
    # a hand-in killed at the time limit
    points = _points(root, "06_code")
    G.write_result(url, HandinResult.failure(SLOW, "06_code", "time limit exceeded (900 s)", points))
    status[f"{SLOW}/06_code"] = {"status": "failed", "reason": "time limit exceeded (900 s)", "seconds": 903.0,
                                 "attempts": 2, "score": 0.0, "max_score": 6.0,
                                 "timings": {"kernel start": 2.0, "answer cells": 898.0, "total": 900.0}, "cases": []}
    course_mod.write_status(str(root), status)
    return root


@pytest.fixture(scope="module")
def data(course):
    return cr.gather(str(course))


@pytest.fixture(scope="module")
def page(course, tmp_path_factory):
    """The report written by the command line, and the warnings its figures raised."""
    out = tmp_path_factory.mktemp("class_report") / "index.html"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["--course", str(course), "report", "--to", str(out)]) == 0
    return out, [str(w.message) for w in caught]


# ------------------------------------------------------------------------ the numbers

def test_rows_come_from_the_gradebook_and_the_status_file(data, course):
    assert not (course / "feedback").exists() and not (course / "autograded").exists()
    assert data.assignments == list(ASSIGNMENTS)
    students = {h.student for h in data.handins}
    assert students == {"demo_bugs", "demo_full", "demo_unfinished", EVIL_ID, SLOW}
    by = {(h.student, h.assignment): h for h in data.handins}
    bugs = by[("demo_bugs", "02_regression")]
    assert bugs.status == "autograded" and bugs.score == pytest.approx(2.1547)
    assert bugs.cells["test_mae_grad"] == pytest.approx(0.0714) and len(bugs.cases) > 50
    assert bugs.timings["kernel start"] > 0 and bugs.seconds > 0
    assert by[(SLOW, "02_regression")].status == "missing"
    assert by[(EVIL_ID, "02_regression")].status == "failed"


def test_assignment_summary(data):
    summary = {s["assignment"]: s for s in cr.assignment_summary(data)}
    reg = summary["02_regression"]
    assert (reg["students"], reg["handed_in"], reg["graded"], reg["failed"], reg["missing"]) == (5, 4, 3, 1, 1)
    assert reg["max_score"] == 6 and reg["full"] == 1
    # demo_full 6, demo_unfinished 3, demo_bugs 2.1547, the attacker's failed hand-in 0
    assert reg["mean"] == pytest.approx((6 + 3 + 2.1547 + 0) / 4) and reg["median"] == pytest.approx(2.57735)
    assert summary["06_code"]["failed"] == 1 and summary["03_classification"]["failed"] == 0


def test_exercise_categories(data):
    rows = {(e["assignment"], e["grade_id"]): e for e in cr.exercise_summary(data)}
    huber = rows[("02_regression", "test_huber")]
    # demo_full full marks, demo_bugs zero (the missing −0.5·δ²), demo_unfinished not implemented
    assert huber["counts"] == {"满分": 1, "部分得分": 0, "零分": 1, "未完成": 1, "评分失败": 1}
    assert huber["title"] == "Huber 损失" and huber["points"] == 1 and huber["handed_in"] == 4
    mse_grad = rows[("02_regression", "test_mse_grad")]
    assert mse_grad["counts"]["部分得分"] == 1 and mse_grad["counts"]["满分"] == 2
    assert sum(rows[("03_classification", "test_bce")]["counts"].values()) == 4


def test_named_mistakes_count_students(data):
    named = cr.mistakes(data)
    huber = next(m for m in named if m["exercise"] == "huber")
    assert huber["hint"] == HUBER_HINT and huber["students"] == ["demo_bugs"] and huber["cases"] == 17
    # the forbidden built-in is named by its message (that case has no hint)
    assert any(m["exercise"] == "mae_api" and "nn.L1Loss" in m["hint"] for m in named)
    # "not implemented" is no mistake: it is listed as unfinished
    assert not any("NotImplementedError" in m["hint"] for m in named)
    unfinished = {(u["assignment"], u["exercise"]): u["students"] for u in cr.unfinished(data)}
    assert unfinished[("02_regression", "huber")] == ["demo_unfinished"]
    assert len(unfinished) == 10
    evil = next(m for m in named if m["hint"] == EVIL_HINT)
    assert evil["students"] == [EVIL_ID]


def test_most_failed_cases(data):
    cases = cr.failed_cases(data, top=1000)
    assert cases == sorted(cases, key=lambda c: (-c["wrong"], -c["rate"], c["assignment"], c["exercise"], c["case"]))
    huber = [c for c in cases if c["exercise"] == "huber"]
    # the 17 Huber cases: wrong for demo_bugs, right for demo_full; skipped for demo_unfinished
    assert len(huber) == 17 and all((c["wrong"], c["judged"]) == (1, 2) for c in huber)
    assert all(c["hint"] == HUBER_HINT and c["statuses"] == {"fail": 1} for c in huber)
    timeout = next(c for c in cases if c["exercise"] == "bce" and c["case"] == "一维 float32")
    assert timeout["statuses"]["timeout"] == 1 and timeout["wrong"] == 1
    assert not any(c["exercise"] == "mse" for c in cases)       # nobody got MSE wrong


def test_failed_cases_one_row_per_hint(data):
    """The page's "most failed cases" groups the cases by what the grader said: the 17 Huber
    cases that showed one hint are one row that counts them, not 17 rows."""
    groups = cr.failed_case_groups(data, top=1000)
    huber = [g for g in groups if g["exercise"] == "huber"]
    assert len(huber) == 1
    assert huber[0]["hint"] == HUBER_HINT and len(huber[0]["cases"]) == 17
    assert (huber[0]["wrong"], huber[0]["judged"]) == (17, 34) and huber[0]["statuses"] == {"fail": 17}
    assert len({(g["assignment"], g["exercise"], g["hint"]) for g in groups}) == len(groups)
    # every wrong case is in exactly one group, with the hint it showed
    assert sum(g["wrong"] for g in groups) == sum(c["wrong"] for c in cr.failed_cases(data, top=10_000))
    bce = {g["hint"]: g for g in groups if g["exercise"] == "bce" and g["assignment"] == "03_classification"}
    assert bce[EVIL_HINT]["cases"] == [(EVIL_CASE, 1)] and bce[None]["statuses"]["timeout"] == 1
    assert groups == sorted(groups, key=lambda g: (-g["wrong"], -g["rate"], g["hint"] is None, g["assignment"],
                                                   g["exercise"], g["hint"] or ""))


def test_exercises_by_difficulty(data):
    """Hardest first: the lowest mean share of the points, ranked 1, 2, ..."""
    ranked = cr.by_difficulty(cr.exercise_summary(data))
    rates = [e["rate"] for e in ranked]
    assert rates == sorted(rates) and [e["rank"] for e in ranked] == list(range(1, len(ranked) + 1))
    assert ranked[0]["rate"] < ranked[-1]["rate"]
    assert {e["grade_id"] for e in ranked} == {e["grade_id"] for e in cr.exercise_summary(data)}


def test_the_mistakes_chart_says_the_mistakes(data):
    """Each bar of the typical-mistakes chart is labelled with the mistake (the hint), in both
    layouts, not just a number to look up in the table."""
    import matplotlib
    import matplotlib.pyplot as plt
    matplotlib.use("Agg", force=False)
    from lossgrader.cjkfont import use_cjk_font

    named = cr.mistakes(data)[:cr.FIGURE_MISTAKES]
    for narrow in (False, True):
        with matplotlib.rc_context(), warnings.catch_warnings():
            warnings.simplefilter("error")                       # a missing glyph is a failure
            use_cjk_font()
            fig = cr._fig_mistakes(named, narrow)
            fig.canvas.draw()
        texts = [t.get_text().replace("\n", "") for t in fig.axes[0].texts]
        plt.close(fig)
        assert len(texts) == len(named)
        for i, (text, m) in enumerate(zip(texts, named), 1):
            assert text.startswith(f"[{i}] {m['title']}：{m['hint'][:8]}"), text
        assert any(HUBER_HINT in text for text in texts)


def test_failed_handins_and_times(data):
    failed = {(f["student"], f["assignment"]): f for f in cr.failed_handins(data)}
    assert set(failed) == {(EVIL_ID, "02_regression"), (SLOW, "06_code")}
    slow = failed[(SLOW, "06_code")]
    assert slow["explained"].startswith("评分超过了整份作业的时间限制") and slow["attempts"] == 2
    assert failed[(EVIL_ID, "02_regression")]["explained"].startswith("提交的文件不是有效的 JSON")
    timing = cr.timing_summary(data)
    assert [(s["student"], s["assignment"], s["seconds"]) for s in timing["slowest"][:2]] == [
        ("demo_bugs", "02_regression", 15.17), ("demo_unfinished", "06_code", 11.47)]
    assert [p["phase"] for p in timing["phases"]][:5] == ["kernel start", "answer cells", "test cells",
                                                         "student code in tests", "total"]
    # the statistics cover the graded hand-ins; the two that failed are counted apart
    assert (timing["count"], timing["graded"], timing["failed"]) == (12, 10, 2)
    assert timing["failed_total"] == pytest.approx(903.8) and max(timing["seconds"]) < 60
    code = next(p for p in timing["per_assignment"] if p["assignment"] == "06_code")
    assert code["n"] == 3 and code["max"] < 60
    # the segments of a hand-in add up to its seconds
    bugs = next(h for h in data.handins if (h.student, h.assignment) == ("demo_bugs", "02_regression"))
    assert sum(cr._segments(bugs).values()) == pytest.approx(bugs.seconds)


# --------------------------------------------------------------------------- the page

def test_page_is_self_contained_and_escaped(page):
    path, caught = page
    html = path.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and '<html lang="zh-CN">' in html
    assert "Content-Security-Policy" in html and "<script" not in html
    assert html.count('src="data:image/svg+xml;base64,') == 4
    for raw in (EVIL_ID, EVIL_REASON, EVIL_CASE, EVIL_HINT, "<i>odd phase</i>"):
        assert raw not in html
    assert "&lt;script&gt;window.__pwned=2&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=&#34;window.__pwned=1&#34;&gt;" in html
    # every character of the figures has a glyph in the course font (or DejaVu Sans)
    assert not [w for w in caught if "missing from" in w], caught


def test_every_exercise_title_is_drawn_with_the_course_font():
    """The figures of a class with every exercise of the course (no gradebook needed): no
    glyph is missing (the font is a subset; matplotlib warns about a missing glyph)."""
    from lossgrader.exercises import EXERCISES

    cells = {}
    for ex in EXERCISES.values():
        cells.setdefault(ex.assignment, []).append((f"test_{ex.id}", float(ex.points)))
    handins = []
    for aid, graded in cells.items():
        total = sum(p for _, p in graded)
        for i, student in enumerate(("学生甲", "学生乙", "学生丙")):
            cases = [CaseRecord(g, g[len("test_"):], "一维 float32", "fail", "结果不对", f"提示 {g}")
                     for g, _ in graded]
            handins.append(cr.Handin(student, aid, "autograded", total * i / 2, total, seconds=4.0 + i,
                                     timings={"kernel start": 1.0, "answer cells": 1.0, "test cells": 1.5,
                                              "student code in tests": 0.5, "total": 3.6},
                                     cases=cases, cells={g: p * i / 2 for g, p in graded}))
    data = cr.ClassData(sorted(cells), cells, handins)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        html = cr.render(data)
    assert not [str(w.message) for w in caught if "missing from" in str(w.message)]
    assert html.count('src="data:image/svg+xml;base64,') == 4
    counts = {e["grade_id"]: e["counts"] for e in cr.exercise_summary(data)}
    assert len(counts) == len(EXERCISES)
    assert all(c["满分"] == 1 and c["部分得分"] == 1 and c["零分"] == 1 for c in counts.values())


def test_an_empty_course_gets_a_page_that_says_so(tmp_path):
    _copy_course(tmp_path)
    out = tmp_path / "report" / "index.html"
    assert main(["--course", str(tmp_path), "report"]) == 0
    html = out.read_text(encoding="utf-8")
    assert "成绩册中还没有作业" in html and "data:image" not in html


PAGE_JS = r"""
(() => ({
  h1: document.querySelector("h1").innerText,
  h2: Array.from(document.querySelectorAll("h2")).map((h) => h.innerText),
  figures: Array.from(document.images).map((img) => [img.id, img.complete, img.naturalWidth, img.naturalHeight]),
  pwned: window.__pwned === undefined ? null : window.__pwned,
  scripts: document.scripts.length,
  iframes: document.querySelectorAll("iframe").length,
  text: document.body.innerText,
}))()
"""


@pytest.mark.skipif(not find_chromium() and os.environ.get("CI") != "true", reason="Chromium is not installed")
def test_report_in_an_offline_browser(page, tmp_path_factory):
    path, _ = page
    shots = Path(SHOTS) if SHOTS else tmp_path_factory.mktemp("screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    with StaticServer(path.parent) as server, Browser(width=1280, height=900, offline=True) as browser:
        browser.open(server.base_url + path.name)
        found = browser.evaluate(PAGE_JS)
        browser.evaluate("Array.from(document.querySelectorAll('img, [onmouseover]'))"
                         ".forEach((e) => e.dispatchEvent(new MouseEvent('mouseover')))")
        found["pwned_after_hover"] = browser.evaluate("window.__pwned === undefined ? null : window.__pwned")
        problems = browser.problems()
        browser.screenshot(shots / "class_report.png")
    assert not problems, problems
    assert found["h1"] == "班级报告" and found["h2"] == HEADINGS
    assert [f[0] for f in found["figures"]] == ["fig-assignments", "fig-exercises", "fig-mistakes", "fig-times"]
    assert all(ok and w > 300 and h > 200 for _, ok, w, h in found["figures"]), found["figures"]
    assert found["pwned"] is None and found["pwned_after_hover"] is None
    assert found["scripts"] == 0 and found["iframes"] == 0
    for text in (EVIL_ID, EVIL_REASON, HUBER_HINT, "demo_unfinished", "评分超过了整份作业的时间限制"):
        assert text in found["text"]
    assert (shots / "class_report.png").stat().st_size > 50_000


#: How the page fits the viewport: page-wide scrolling, headers broken over lines, tables
#: outside a scroll box of their own (focusable, named), and which figure layout is shown
#: at what scale (1 = the SVG's own size, where its text is 9-10 pt).
LAYOUT_JS = r"""
(() => {
  const doc = document.documentElement;
  const tall = Array.from(document.querySelectorAll("th")).filter((th) => {
    const box = th.getBoundingClientRect();
    return box.height > 1.7 * parseFloat(getComputedStyle(th).lineHeight) + 8;
  }).map((th) => th.innerText);
  const tables = Array.from(document.querySelectorAll("table"));
  const unboxed = tables.filter((t) => {
    const box = t.parentElement;
    return !(box.classList.contains("table-scroll") && getComputedStyle(box).overflowX === "auto" &&
             box.tabIndex === 0 && box.getAttribute("role") === "region" && box.getAttribute("aria-label"));
  }).length;
  const figures = Array.from(document.images).map((img) => ({
    id: img.id, layout: img.currentSrc === img.src ? "wide" : "narrow",
    scale: img.getBoundingClientRect().width / img.naturalWidth, right: img.getBoundingClientRect().right}));
  return {scrollWidth: doc.scrollWidth, width: doc.clientWidth, tall, tables: tables.length, unboxed, figures};
})()
"""


@pytest.mark.skipif(not find_chromium() and os.environ.get("CI") != "true", reason="Chromium is not installed")
@pytest.mark.parametrize("width", [390, 1280])
def test_report_fits_a_phone_and_a_desktop(page, tmp_path_factory, width):
    """At 390 px (a phone) the page does not scroll sideways: each table scrolls in its own
    box (reachable by keyboard), no header is broken one character per line, and the
    figures are the narrow layouts shown at nearly their own size (readable text); at 1280
    px the wide ones. At both widths axe-core finds no serious or critical WCAG 2.1 AA
    violation and every figure has a Chinese alt text."""
    path, _ = page
    shots = Path(SHOTS) if SHOTS else tmp_path_factory.mktemp("screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    with Browser(width=width, height=844, offline=True) as browser:
        browser.open(path.as_uri())
        layout = browser.evaluate(LAYOUT_JS)
        problems = browser.problems()
        browser.page.screenshot(path=str(shots / f"class_report_{width}.png"))
        violations = a11y.audit(browser)                      # axe-core, WCAG 2.1 A and AA
        unnamed = a11y.images_without_chinese_alt(browser)
    assert not problems, problems
    assert not a11y.blocking(violations), a11y.describe(violations)
    assert not unnamed, unnamed
    assert layout["scrollWidth"] == layout["width"] == width - (0 if width == 390 else 0)
    assert not layout["tall"], layout["tall"]
    assert layout["tables"] >= 8 and layout["unboxed"] == 0
    assert [f["id"] for f in layout["figures"]] == ["fig-assignments", "fig-exercises", "fig-mistakes", "fig-times"]
    for figure in layout["figures"]:
        assert figure["layout"] == ("narrow" if width < 700 else "wide"), figure
        assert figure["right"] <= width and figure["scale"] >= (0.75 if width < 700 else 0.5), figure


EXERCISE_ROWS_JS = r"""
Array.from(document.querySelectorAll("#exercises table")).filter((t) => t.offsetParent !== null)
  .map((t) => Array.from(t.tBodies[0].rows).map((r) => [r.cells[0].innerText, r.cells[1].innerText, r.cells[2].innerText]))
"""


@pytest.mark.skipif(not find_chromium() and os.environ.get("CI") != "true", reason="Chromium is not installed")
def test_exercises_sort_by_difficulty_without_a_script(page, data):
    """The exercise table is shown hardest first; two radio buttons (mouse or arrow keys,
    no script: the page has none) switch to the assignment order and back."""
    path, _ = page
    by_assignment = [(e["assignment"], e["title"]) for e in cr.exercise_summary(data)]
    hardest = [(e["assignment"], e["title"]) for e in cr.by_difficulty(cr.exercise_summary(data))]
    assert by_assignment != hardest
    with Browser(offline=True) as browser:
        browser.open(path.as_uri())
        shown = [browser.evaluate(EXERCISE_ROWS_JS)]
        browser.page.click("label[for=ex-by-assignment]")
        shown.append(browser.evaluate(EXERCISE_ROWS_JS))
        browser.page.focus("#ex-by-assignment")
        browser.page.keyboard.press("ArrowLeft")
        shown.append(browser.evaluate(EXERCISE_ROWS_JS))
        scripts = browser.evaluate("document.scripts.length")
    assert scripts == 0 and all(len(tables) == 1 for tables in shown)
    first, second, third = (tables[0] for tables in shown)
    assert [(a, t) for _, a, t in first] == hardest and [r for r, _, _ in first] == [str(i) for i in range(1, len(first) + 1)]
    assert [(a, t) for _, a, t in second] == by_assignment
    assert third == first


def test_the_report_reads_a_postgresql_gradebook(tmp_path):
    """db_url pointing at a real PostgreSQL server (Debian's postgresql, tests/pgserver.py)."""
    sys.path.insert(0, str(ROOT / "tests"))
    import pgserver

    if pgserver.find_binaries() is None:
        pytest.skip(pgserver.MISSING)
    server = pgserver.PostgresServer().start()
    try:
        root = tmp_path / "course"
        root.mkdir()
        _copy_course(root, ("02_regression",), db_url=server.create_database("report"))
        _record_demo_class(root, ("02_regression",))
        out = tmp_path / "report.html"
        assert main(["--course", str(root), "report", "--to", str(out)]) == 0
        assert not (root / "gradebook.db").exists()
        data = cr.gather(str(root))
    finally:
        G.dispose_engines()
        server.stop()
    summary = cr.assignment_summary(data)
    assert [(s["assignment"], s["handed_in"], s["full"]) for s in summary] == [("02_regression", 3, 1)]
    assert summary[0]["mean"] == pytest.approx((6 + 3 + 2.1547) / 3)
    huber = next(e for e in cr.exercise_summary(data) if e["grade_id"] == "test_huber")
    assert huber["counts"] == {"满分": 1, "部分得分": 0, "零分": 1, "未完成": 1, "评分失败": 0}
    html = out.read_text(encoding="utf-8")
    assert HUBER_HINT in html and html.count('src="data:image/svg+xml;base64,') == 4
