"""The feedback page a student gets back, opened in headless Chromium with only localhost
reachable: one self-contained file (formulas typeset as MathML when the page is written,
no script, nothing beside it), Chinese frame, no console error, no request to another
host; the same page attached on its own reads the same; a score given by hand is shown
as the instructor's with the automatic one beside it, and the comment's TeX is typeset;
a hostile hand-in's page runs none of its script and stays under the size cap. Also: the
in-notebook report follows JupyterLab's and Colab's dark themes.

The course is a temporary copy holding 02_regression, the three sample students, one
whose hand-in got a manual grade and a comment, and one attacker, graded by plain
nbgrader (the grading pipeline is tested elsewhere; feedback only needs the gradebook rows
and autograded/<student>/<id>/<id>.ipynb). Each defence is tested with the attack it
stops; removing it makes its test fail (checked by hand once: identity clean_html, no CSP
meta, no LimitPageSize, no lossgrader_math filter, no manual-score lookup).
"""
from __future__ import annotations

import base64
import json
import os
import re
from html.parser import HTMLParser
import shutil
import sys
from pathlib import Path

import nbformat
import pytest

pytest.importorskip("nbgrader")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "book" / "_ext"))
from headless import Browser, StaticServer, find_chromium  # noqa: E402

import a11y  # noqa: E402
from course_copy import copy_course  # noqa: E402

from lossgrader import feedback as fb  # noqa: E402

if not find_chromium():
    if os.environ.get("CI") == "true":
        raise RuntimeError("Chromium is required in CI: apt-get install chromium fonts-noto-cjk")
    pytest.skip("Chromium is not installed", allow_module_level=True)

A = "02_regression"
SAMPLES = ("demo_full", "demo_bugs", "demo_unfinished")
ATTACKER = "x_attack"
#: demo_bugs's hand-in again, graded by hand afterwards (MANUAL) with a comment holding TeX
GRADED_BY_HAND = "x_manual"
MANUAL = {"test_mae_grad": 0.5}
COMMENT = ("梯度的方向是对的，但少了 $\\frac{1}{n}$：应为 $$\\frac{\\partial L}{\\partial \\hat{y}_i} = "
           "\\frac{1}{n}\\operatorname{sign}(\\hat{y}_i - y_i)$$")
HUGE = 20_000_000
#: where the screenshots go (a temporary folder unless LOSSGRADER_SCREENSHOTS names one)
SHOTS = os.environ.get("LOSSGRADER_SCREENSHOTS")

#: Every way the attacker tries to run script sets window.__pwned to a different number.
ATTACK_DISPLAYS = r'''
from IPython.display import display, HTML, Javascript, SVG, Markdown, Latex
display(HTML("<script>window.__pwned = 1; document.title = 'PWNED'</script>"
             "<img src=x onerror=\"window.__pwned = 2\">"
             "<a href=\"javascript:window.__pwned = 3\" id=\"MathJax\">link</a>"
             "<iframe src=\"data:text/html,<script>parent.__pwned = 4</script>\"></iframe>"
             "<div style=\"position:fixed;top:0;left:0\">得分 100 / 6</div>"))
display(Javascript("window.__pwned = 5"))
display(SVG('<svg xmlns="http://www.w3.org/2000/svg" width="20" height="20" onload="window.__pwned = 6">'
            '<script>window.__pwned = 7</script><circle cx="10" cy="10" r="8"/></svg>'))
display(Markdown("<img src=x onerror='window.__pwned = 8'> **粗体**"))
display(Latex("$x</div><script>window.__pwned = 9</script>$"))
display({"image/png": 'x" onerror="window.__pwned = 10'}, raw=True)
display({"application/vnd.jupyter.widget-view+json": {"model_id": "x"}, "text/plain": "widget"}, raw=True)
print("<script>window.__pwned = 11</script>")
display(HTML("<div>" + "A" * %d + "</div>"))
''' % HUGE

#: In the student's function: shows up in the test cell's output (the grader's cell).
ATTACK_IN_FUNCTION = '''
_shown = []
def mse_loss(pred, target):
    if not _shown:
        _shown.append(1)
        from IPython.display import display, HTML
        display(HTML("<script>window.__pwned = 12</script><img src=x onerror='window.__pwned = 13'>"))
    return ((pred - target) ** 2).mean()
'''

ATTACK_MARKDOWN = ('\n\n<script>window.__pwned = 14</script><img src="x" onerror="window.__pwned = 15">'
                   '<img src="http://tracker.example/pixel.png" alt="跟踪像素">'
                   '<iframe src="javascript:parent.__pwned = 16"></iframe>'
                   '<style>body { display: none }</style>')

PWNED_JS = "[window.__pwned === undefined ? null : window.__pwned, document.title]"

#: visible text of the markdown cells with math output, code and scripts removed
MARKDOWN_TEXT_JS = r"""
(() => Array.from(document.querySelectorAll(".text_cell")).map((cell) => {
  const clone = cell.cloneNode(true);
  clone.querySelectorAll("pre, code, script, style, math").forEach((e) => e.remove());
  return clone.textContent;
}).join("\n"))()
"""
FRAME_TEXT_JS = r"""
Array.from(document.querySelectorAll(".lg-header, .lg-panel-head, .lg-footer, .lg-cut-note"))
  .map((e) => e.innerText).join("\n")
"""
BROKEN_IMAGES_JS = r"""
Array.from(document.images).filter((img) => !(img.complete && img.naturalWidth > 0)).map((img) => img.src)
"""
NBGRADER_ENGLISH = ("Student's answer", "Grade cell", "Score:", "(Top)", "Test cell", "Comments:",
                    "Late submission", "Written response", "In [", "Out[")


def _copy_course(dest: Path):
    copy_course(dest, [A], exercises=False)


def _attack_notebook() -> str:
    nb = nbformat.read(ROOT / "samples" / "submitted" / "demo_full" / A / f"{A}.ipynb", as_version=4)
    for cell in nb.cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if grade_id == "answer_mse":
            cell.source = ATTACK_DISPLAYS + ATTACK_IN_FUNCTION
    nb.cells[0].source += ATTACK_MARKDOWN          # the instructions' first cell (not locked)
    return nbformat.writes(nb)


def _nbgrader_autograde(root: Path, students):
    """Register the assignment and autograde with plain nbgrader (no lossgrader pipeline)."""
    from nbgrader.apps import NbGraderAPI
    from nbgrader.coursedir import CourseDirectory
    from traitlets.config.loader import PyFileConfigLoader

    cfg = PyFileConfigLoader("nbgrader_config.py", path=str(root)).load_config()
    cfg.CourseDirectory.root = str(root)
    cfg.Execute.timeout = 120
    gen = cfg.copy()
    gen.CourseDirectory.release_directory = ".release"      # exercises/ stays as it is
    gen.StampRepository.release_directory = ".release"
    api = NbGraderAPI(CourseDirectory(config=gen), config=gen)
    result = api.generate_assignment(A, force=True)
    assert result["success"], result.get("log")
    api = NbGraderAPI(CourseDirectory(config=cfg), config=cfg)
    for student in students:
        result = api.autograde(A, student, force=True)
        assert result["success"], result.get("log")


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    root = tmp_path_factory.mktemp("feedback_course")
    _copy_course(root)
    for student in SAMPLES:
        shutil.copytree(ROOT / "samples" / "submitted" / student / A, root / "submitted" / student / A)
    (root / "submitted" / ATTACKER / A).mkdir(parents=True)
    (root / "submitted" / ATTACKER / A / f"{A}.ipynb").write_text(_attack_notebook(), encoding="utf-8")
    shutil.copytree(ROOT / "samples" / "submitted" / "demo_bugs" / A, root / "submitted" / GRADED_BY_HAND / A)
    _nbgrader_autograde(root, SAMPLES + (ATTACKER, GRADED_BY_HAND))
    _grade_by_hand(root, GRADED_BY_HAND, MANUAL, {"answer_mae_grad": COMMENT})
    written = fb.feedback(str(root), progress=False)
    assert len(written) == len(SAMPLES) + 2
    return root


def _grade_by_hand(root: Path, student, scores, comments):
    """What the formgrader stores when the instructor types a score or a comment."""
    from nbgrader.api import Gradebook

    with Gradebook("sqlite:///" + str(root / "gradebook.db")) as gb:
        for grade_id, score in scores.items():
            gb.find_grade(grade_id, A, A, student).manual_score = score
        for grade_id, text in comments.items():
            gb.find_comment(grade_id, A, A, student).manual_comment = text
        gb.db.commit()


@pytest.fixture(scope="module")
def browser():
    # Chromium that cannot resolve any host but 127.0.0.1: a CDN reference fails loudly
    with Browser(offline=True) as b:
        yield b


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    path = Path(SHOTS) if SHOTS else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _page(course, student):
    return course / "feedback" / student / A / f"{A}.html"


def _total(course, student):
    from nbgrader.api import Gradebook

    with Gradebook("sqlite:///" + str(course / "gradebook.db")) as gb:
        sub = gb.find_submission(A, student)
        return sub.score, sub.max_score


def _titles():
    from lossgrader.exercises import EXERCISES

    return sorted((ex.title for ex in EXERCISES.values()), key=len, reverse=True)


# ------------------------------------------------------------------------ the sample class

def test_every_page_is_one_file(course):
    """Nothing is written beside the pages (no shared MathJax copy), and a page refers to no
    other file: its style is inline, its images are data: URIs, its formulas MathML."""
    assert sorted(p.name for p in (course / "feedback").iterdir()) == sorted(SAMPLES + (ATTACKER, GRADED_BY_HAND))
    assert not list((course / "feedback").rglob("*.js"))
    for student in SAMPLES + (GRADED_BY_HAND,):
        page = _page(course, student).read_text(encoding="utf-8")
        tags = _Markup(page).tags
        assert not [t for t, _ in tags if t == "script"]
        refs = [(t, k, v) for t, a in tags for k, v in a.items() if k in ("src", "href", "data") and v]
        local = [r for r in refs if not re.match(r"(?i)(data:|#|https?://|mailto:)", r[2])]
        assert not local, local                    # no ../../_static/..., no file beside the page
        assert "script-src 'none'" in page and "'self'" not in page
        assert page.count("<math") >= 15 and "$$" not in page.split("<annotation")[0]
    # the grader's links to the book reach the online book, not the course's local build
    from lossgrader.judge import BOOK_ONLINE
    assert f'href="{BOOK_ONLINE}book/' in _page(course, "demo_bugs").read_text(encoding="utf-8")


@pytest.mark.parametrize("student", SAMPLES)
def test_page_loads_nothing_from_the_network(course, student):
    page = _page(course, student).read_text(encoding="utf-8")
    assert page.lstrip().startswith("<!DOCTYPE html>") and '<html lang="zh-CN">' in page
    # no resource from another host: src/href of loaded things, CSS url() and @import
    loads = re.findall(r"""<(?:script|img|link|iframe|source|video|audio|embed|object)\b[^>]*?"""
                       r"""(?:src|href|data)\s*=\s*["']?([^"'\s>]+)""", page, re.IGNORECASE)
    loads += re.findall(r"""url\(\s*["']?([^"')]+)""", page) + re.findall(r"@import\s+[\"']([^\"']+)", page)
    remote = [u for u in loads if re.match(r"(?i)(https?:)?//", u)]
    assert not remote, remote
    assert "cdnjs" not in page and "cdn.jsdelivr" not in page and "require.js" not in page
    # the hidden tests' code is not shown (their results are)
    assert "BEGIN HIDDEN TESTS" not in page and "hidden=True" not in page and "（含隐藏测试）" in page


@pytest.mark.parametrize("student", SAMPLES)
def test_sample_page_in_an_offline_browser(course, browser, shots, student):
    with StaticServer(course / "feedback") as server:
        browser.clear_events()
        browser.open(server.base_url + f"{student}/{A}/{A}.html")
        problems = browser.problems()
        math = browser.evaluate(MATH_LAYOUT_JS)
        text = browser.evaluate(MARKDOWN_TEXT_JS)
        frame = browser.evaluate(FRAME_TEXT_JS)
        body = browser.evaluate("document.body.innerText")
        total = browser.evaluate("document.querySelector('.lg-total').innerText")
        broken = browser.evaluate(BROKEN_IMAGES_JS)
        browser.screenshot(shots / f"feedback_{student}.png")
    assert not problems, problems
    assert math["math"] >= 15 and math["stacked"] == math["fractions"] > 0, math
    for raw in ("$$", "\\frac", "\\(", "\\[", "\\begin{"):
        assert raw not in text, f"raw TeX {raw!r} left in the text"
    assert not re.search(r"\\[A-Za-z]+", text), re.search(r"\\[A-Za-z]+", text)
    for english in NBGRADER_ENGLISH:
        assert english not in body, f"nbgrader's English frame text {english!r} on the page"
    # the frame is Chinese: once names of the student, assignment and exercises are taken
    # out, not one Latin word is left
    for name in [f"{A}.ipynb", A, student] + _titles():
        frame = frame.replace(name, "")
    assert not re.findall(r"[A-Za-z]{2,}", frame), re.findall(r"[A-Za-z]{2,}", frame)
    score, max_score = _total(course, student)
    assert total == f"得分 {round(score, 2):g} / {round(max_score, 2):g}"
    assert "在 Colab 中打开" in body                     # the badge as text
    assert not broken, broken
    assert (shots / f"feedback_{student}.png").stat().st_size > 50_000


#: How the formulas are drawn: MathML laid out by the browser (a fraction's numerator above
#: its denominator, not a line of text), and the TeX that is left as text.
MATH_LAYOUT_JS = r"""
(() => {
  const fractions = Array.from(document.querySelectorAll("mfrac"));
  const stacked = fractions.filter((f) => f.children.length === 2 &&
      f.children[0].getBoundingClientRect().bottom <= f.children[1].getBoundingClientRect().top + 1 &&
      f.getBoundingClientRect().height > 0);
  return {math: document.querySelectorAll("math").length, fractions: fractions.length, stacked: stacked.length};
})()
"""


def test_page_attached_on_its_own(course, browser, shots, tmp_path):
    """A page mailed or attached in an LMS arrives alone: opened from a folder with nothing
    else in it, it reads the same as in the course folder (same text, same formulas, no
    failed load), and so it does double-clicked where it was written."""
    alone = tmp_path / "下载"
    alone.mkdir()
    shutil.copy(_page(course, GRADED_BY_HAND), alone / "反馈.html")
    seen = {}
    for name, url in (("course", _page(course, GRADED_BY_HAND).as_uri()), ("alone", (alone / "反馈.html").as_uri())):
        browser.clear_events()
        browser.open(url)
        seen[name] = {"text": browser.evaluate("document.body.innerText"), "layout": browser.evaluate(MATH_LAYOUT_JS),
                      "markdown": browser.evaluate(MARKDOWN_TEXT_JS), "problems": browser.problems(),
                      "height": browser.evaluate("document.documentElement.scrollHeight")}
    browser.evaluate("document.querySelector('#lg-test_mae_grad').scrollIntoView()")
    browser.page.screenshot(path=str(shots / "feedback_alone.png"))
    assert seen["alone"] == seen["course"]
    alone_seen = seen["alone"]
    assert not alone_seen["problems"], alone_seen["problems"]
    assert alone_seen["layout"]["math"] >= 15 and alone_seen["layout"]["stacked"] == alone_seen["layout"]["fractions"] > 0
    for raw in ("$$", "\\frac", "\\(", "\\[", "\\begin{"):
        assert raw not in alone_seen["markdown"], f"raw TeX {raw!r} left in the text"


def test_every_test_cell_is_listed_with_its_score(course):
    from nbgrader.api import Gradebook

    page = _page(course, "demo_bugs").read_text(encoding="utf-8")
    toc = re.findall(r'<li><a href="#(lg-test_\w+)">测试：([^<]+)</a>\s*<span class="lg-score (\w+)">([^<]+)</span>', page)
    with Gradebook("sqlite:///" + str(course / "gradebook.db")) as gb:
        notebook = gb.find_submission_notebook(A, A, "demo_bugs")
        grades = {g.name: (g.score, g.max_score) for g in notebook.grades}
    order = [name for name in re.findall(r'"grade_id": "(test_\w+)"', (ROOT / "solutions" / A / f"{A}.ipynb").read_text())]
    assert [anchor for anchor, *_ in toc] == ["lg-" + name for name in order]
    for anchor, title, state, text in toc:
        score, max_score = grades[anchor[3:]]
        assert text == f"{round(score, 2):g} / {round(max_score, 2):g}"
        assert f'id="{anchor}"' in page
        assert state == ("full" if score == max_score else "partial" if score else "zero")


def test_a_score_given_by_hand_is_the_instructors(course, browser):
    """After a manual grade the page says so everywhere the score is shown: the total, the
    table of contents and the cell (the instructor's score, the automatic one beside it, and
    a note over the grader's report, which still shows the automatic score); the comment's
    TeX is typeset."""
    from nbgrader.api import Gradebook

    with Gradebook("sqlite:///" + str(course / "gradebook.db")) as gb:
        grade = gb.find_grade("test_mae_grad", A, A, GRADED_BY_HAND)
        auto, manual, points = grade.auto_score, grade.manual_score, grade.max_score
        total, max_total = gb.find_submission(A, GRADED_BY_HAND).score, gb.find_submission(A, GRADED_BY_HAND).max_score
        auto_total = sum(g.auto_score or 0 for g in gb.find_submission_notebook(A, A, GRADED_BY_HAND).grades)
    assert manual == MANUAL["test_mae_grad"] and auto is not None and auto != manual

    def num(x):
        return f"{round(x, 2):g}"

    browser.clear_events()
    browser.open(_page(course, GRADED_BY_HAND).as_uri())
    found = browser.evaluate(r"""(() => {
      const text = (sel) => { const e = document.querySelector(sel); return e ? e.innerText : null; };
      const comment = document.querySelector("#lg-answer_mae_grad .lg-comment");
      return {total: text(".lg-total"), summary: text(".lg-manual-summary"),
              toc: Array.from(document.querySelectorAll(".lg-toc li")).map((li) => li.innerText),
              head: text("#lg-test_mae_grad .lg-panel-head"), note: text("#lg-test_mae_grad .lg-manual-note"),
              card: text("#lg-test_mae_grad .lossgrader-report"), comment: comment.innerText,
              commentMath: comment.querySelectorAll("math").length,
              commentTex: Array.from(comment.querySelectorAll("annotation")).map((a) => a.textContent)};
    })()""")
    assert not browser.problems(), browser.problems()
    assert found["total"] == f"得分 {num(total)} / {num(max_total)}"
    assert found["summary"] == f"其中 1 题的得分由教师人工评定（自动评分合计 {num(auto_total)} / {num(max_total)}）。"
    from lossgrader.exercises import EXERCISES
    mae_grad = [item for item in found["toc"] if f"测试：{EXERCISES['mae_grad'].title}" in item]
    assert len(mae_grad) == 1 and mae_grad[0].endswith(f"{num(manual)} / {num(points)}（教师评分）"), found["toc"]
    assert sum("教师评分" in item for item in found["toc"]) == 1
    assert f"教师评分 {num(manual)} / {num(points)}" in found["head"]
    assert f"自动评分 {num(auto)} / {num(points)}" in found["head"]
    assert found["note"].startswith(f"这一题的得分由教师人工评定为 {num(manual)} / {num(points)}")
    assert f"（{num(auto)} / {num(points)}）" in found["note"]
    assert f"得分 {auto:g} / {points:g}" in found["card"]          # the grader's report is the automatic one
    assert re.sub(r"\s+", "", found["comment"]).startswith("教师评语：梯度的方向是对的") and found["commentMath"] == 2
    assert "\\frac" not in found["comment"] and "$" not in found["comment"]
    assert found["commentTex"][0] == "\\frac{1}{n}"


@pytest.mark.parametrize("student", ["demo_bugs", GRADED_BY_HAND])
def test_page_passes_the_accessibility_audit(course, browser, student):
    """axe-core, WCAG 2.1 A and AA: no serious or critical violation (contrast of the
    panel heads' text, names, language, headings), and every image has a Chinese alt text."""
    browser.clear_events()
    browser.open(_page(course, student).as_uri())
    violations = a11y.audit(browser)
    unnamed = a11y.images_without_chinese_alt(browser)
    images = browser.evaluate("document.images.length")
    assert not a11y.blocking(violations), a11y.describe(violations)
    assert images >= 1 and not unnamed, unnamed


# ------------------------------------------------------------------------ the attacker

def test_attack_page_is_under_the_cap_and_says_what_was_cut(course):
    page = _page(course, ATTACKER).read_text(encoding="utf-8")
    assert len(page.encode()) <= fb.DEFAULT_MAX_PAGE_BYTES
    # the 20 MB output is cut where it is first kept: by the page's cap, or already by the
    # grader's output cap when nbgrader grades through lossgrader (nbgrader_config.py)
    assert ("本页内容有删减" in page and "已删去" in page and "20.0 MB" in page) or "输出过长" in page
    assert "测试：均方误差 MSE" in page                   # the rest of the page is still there
    assert "反馈页不运行也不显示它" in page                # the JavaScript and widget outputs, in Chinese


def test_a_hand_in_that_could_not_be_graded_gets_a_chinese_page(course):
    student = "x_broken"
    (course / "submitted" / student / A).mkdir(parents=True)
    (course / "submitted" / student / A / f"{A}.ipynb").write_text("{not json", encoding="utf-8")
    status_file = course / fb.STATUS_FILE
    status = json.loads(status_file.read_text(encoding="utf-8")) if status_file.exists() else {}
    status[f"{student}/{A}"] = {"status": "failed", "reason": f"{A}.ipynb is not valid JSON (Expecting value)"}
    status_file.write_text(json.dumps(status), encoding="utf-8")
    written = fb.feedback(str(course), only_students=[student], progress=False)
    assert written == [str(_page(course, student))]
    page = _page(course, student).read_text(encoding="utf-8")
    assert '<html lang="zh-CN">' in page and "自动评分失败" in page
    assert "不是有效的 JSON" in page and "0 / 6" in page


class _Markup(HTMLParser):
    """The elements and attributes of a page (the text, where the hand-in's code is shown
    escaped, is not markup)."""

    def __init__(self, page):
        super().__init__(convert_charrefs=True)
        self.tags = []
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_attack_page_carries_no_markup_of_the_hand_in(course):
    tags = _Markup(_page(course, ATTACKER).read_text(encoding="utf-8")).tags
    scripts = [a.get("src") for t, a in tags if t == "script"]
    assert scripts == []                                                  # not even our own
    handlers = [(t, k) for t, a in tags for k in a if k.lower().startswith("on")]
    assert not handlers, handlers
    urls = [v for t, a in tags for k, v in a.items() if k in ("href", "src") and v]
    assert not [u for u in urls if u.strip().lower().startswith(("javascript:", "data:text"))], urls
    assert not [t for t, a in tags if t in ("iframe", "object", "embed", "form", "base", "meta") and
                a.get("http-equiv") != "Content-Security-Policy" and "charset" not in a
                and a.get("name") not in ("viewport", "referrer")]
    images = [a.get("src", "") for t, a in tags if t == "img"]
    assert all(src.startswith("data:image/") for src in images), images   # nothing loads from elsewhere
    assert not [a for t, a in tags if a.get("id") == "MathJax"]           # no clobbering of our globals
    assert not [a["style"] for t, a in tags if "position" in a.get("style", "")]  # no overlay on the score
    styles = [t for t, a in tags if t == "style"]
    assert len(styles) == 2                                               # ours: the page's CSS, pygments'


def test_attack_page_runs_nothing_in_the_browser(course, browser, shots):
    with StaticServer(course / "feedback") as server:
        browser.clear_events()
        browser.open(server.base_url + f"{ATTACKER}/{A}/{A}.html")
        browser.evaluate("new Promise((r) => setTimeout(r, 500))")
        pwned, title = browser.evaluate(PWNED_JS)
        problems = browser.problems()
        visible = browser.evaluate("getComputedStyle(document.body).display")
        browser.screenshot(shots / "feedback_attack.png")
    assert pwned is None and title == f"{A} 作业反馈"
    assert visible != "none"                                   # the hand-in's <style> is gone too
    # the sanitiser removed everything, so the CSP had nothing to refuse, and no request left localhost
    assert not problems, problems


def test_csp_stops_a_script_the_sanitiser_would_miss(course, browser, monkeypatch, tmp_path):
    """Defence in depth: with the sanitiser switched off, the page's Content-Security-Policy
    still refuses every inline script and handler of the hand-in."""
    from lossgrader import sanitize
    monkeypatch.setattr(sanitize, "clean_html", lambda fragment: str(fragment))
    cfg = fb.course_config(str(course))
    renderer = fb.PageRenderer(cfg, "sqlite:///" + str(course / "gradebook.db"))
    page = renderer.render(str(course / "autograded" / ATTACKER / A / f"{A}.ipynb"), ATTACKER, A)
    assert "<script>window.__pwned = 1" in page                    # the attack reached the page
    out = course / "feedback" / "unsanitised" / A
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{A}.html").write_text(page, encoding="utf-8")
    with StaticServer(course / "feedback") as server:
        browser.clear_events()
        browser.open(server.base_url + f"unsanitised/{A}/{A}.html")
        browser.evaluate("new Promise((r) => setTimeout(r, 500))")
        pwned, _ = browser.evaluate(PWNED_JS)
        problems = browser.problems()
        typeset = browser.evaluate("document.querySelectorAll('math').length")
    shutil.rmtree(course / "feedback" / "unsanitised")
    assert pwned is None
    assert any("Content Security Policy" in p for p in problems), problems
    assert typeset > 0                                              # the page's formulas are still there


def test_size_cap_is_configurable(course):
    cfg = fb.course_config(str(course))
    renderer = fb.PageRenderer(cfg, "sqlite:///" + str(course / "gradebook.db"))
    nb = str(course / "autograded" / "demo_bugs" / A / f"{A}.ipynb")
    page = renderer.render(nb, "demo_bugs", A, max_page_bytes=150_000)
    assert len(page.encode()) <= 150_000
    assert "本页内容有删减" in page and "得分" in page


def test_megabytes_of_source_and_thousands_of_cells_still_fit(course, tmp_path):
    """A hand-in may paste megabytes into an answer cell or add thousands of cells: the
    page keeps the grader's reports and the assignment's text and stays under the cap."""
    nb = nbformat.read(course / "autograded" / "demo_bugs" / A / f"{A}.ipynb", as_version=4)
    for cell in nb.cells:
        if cell.metadata.get("nbgrader", {}).get("grade_id") == "answer_mse":
            cell.source += "\n# " + "很长的注释" * 200_000
    nb.cells += [nbformat.v4.new_code_cell("x = 1\n" * 50, outputs=[
        nbformat.v4.new_output("stream", name="stdout", text="y" * 3000)]) for _ in range(1500)]
    path = tmp_path / f"{A}.ipynb"
    nbformat.write(nb, path)
    renderer = fb.PageRenderer(fb.course_config(str(course)), "sqlite:///" + str(course / "gradebook.db"))
    page = renderer.render(str(path), "demo_bugs", A, max_page_bytes=600_000,
                           assignment_notebook=str(course / "solutions" / A / f"{A}.ipynb"))
    assert len(page.encode()) <= 600_000
    assert page.count('class="lossgrader-report"') == 6                 # every report of the grader
    assert "作业 02：回归损失函数" in page and "个未评分的单元没有显示" in page
    assert re.search(r"“你的答案：均方误差 MSE”的内容（1,000,\d{3} 个字符）只显示了开头 5,000 个字符", page)
    assert "第 1500 个单元" not in page                                 # no note about a cell not shown


# ------------------------------------------------------------------------ unit level

def test_clean_html_keeps_the_grader_report():
    from lossgrader import check

    def mae_computing_mse(pred, target):
        print("调试输出")
        return ((pred - target) ** 2).mean()

    html = check("mae", mae_computing_mse, device="cpu")._repr_html_()
    cleaned = fb.clean_html(html)
    for kept in ("<table", "<details", "<summary", "data:image/png;base64,", "得分", "提示"):
        assert kept in cleaned
    # every inline style of the report survives the style allowlist, except the custom
    # properties that hook the card to a notebook's theme: without them every colour is on
    # its light fallback, which is the page's own theme
    def declarations(text):
        return [d.replace(" ", "") for style in re.findall(r'style="([^"]*)"', text) for d in style.split(";") if d]
    assert declarations(cleaned) == [d for d in declarations(html) if not d.startswith("--")]
    assert "--lg-" in html and "color-mix" in html and "<style>" in html
    assert not re.search(r"var\(--[\w-]+\)", cleaned) and "color-mix" not in cleaned and "<style" not in cleaned


def test_render_failed_escapes_everything():
    page = fb.render_failed("02_regression", "<img src=x onerror=alert(1)>", 6, "原因 <script>alert(1)</script>")
    assert "<script>alert" not in page and "<img src=x" not in page
    assert '<html lang="zh-CN">' in page and "得分：<b>0 / 6</b>" in page and "Content-Security-Policy" in page


def test_remote_images_become_text():
    cleaned = fb.clean_html('<a href="https://colab.research.google.com/x"><img alt="Open In Colab" '
                            'src="https://colab.research.google.com/assets/colab-badge.svg"></a>'
                            '<img src="//example.com/a.png" alt="<b>x</b>"><img src="data:image/png;base64,iVBORw0KGgo=">')
    assert "colab-badge.svg" not in cleaned and "在 Colab 中打开" in cleaned
    assert 'href="https://colab.research.google.com/x"' in cleaned
    assert "<b>x</b>" not in cleaned and "&lt;b&gt;x&lt;/b&gt;" in cleaned
    assert '<img src="data:image/png;base64,iVBORw0KGgo=">' in cleaned



# ------------------------------------------------------------------------ event handlers on images

#: A 1×1 PNG: a valid data: image keeps its <img> through the sanitiser (a relative or remote
#: src is turned into text), so only the attribute allowlist stands between it and a handler.
PNG_1PX = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")
IMAGE_HANDLERS = [
    f"<img src={src} {attr}=alert(1)>"
    for src in ("x", f'"{PNG_1PX}"', "https://example.com/a.png")
    for attr in ("onerror", "onload", "ONERROR", "OnLoad")
] + [
    f'<IMG SRC="{PNG_1PX}" ONERROR="alert(1)" ALT="图">',
    f'<img/src="{PNG_1PX}"/onerror=alert(1)>',
    f'<img src="{PNG_1PX}" onerror = "alert(1)" onmouseover=alert(2) onfocus=alert(3) tabindex=0>',
]
DATA_IMAGES = sum(PNG_1PX in fragment for fragment in IMAGE_HANDLERS)


def _handlers(markup):
    return [(t, k) for t, a in _Markup(markup).tags for k in a if k.lower().startswith("on")]


@pytest.mark.parametrize("fragment", IMAGE_HANDLERS)
def test_clean_html_drops_event_handlers_on_images(fragment):
    cleaned = fb.clean_html(fragment)
    assert not _handlers(cleaned), cleaned
    assert not re.search(r"<img\b[^>]*\bon\w+\s*=", cleaned, re.I), cleaned
    if PNG_1PX in fragment:                     # the image itself is kept: the handler alone was removed
        assert [t for t, _ in _Markup(cleaned).tags] == ["img"], cleaned


def test_no_event_handler_on_an_image_reaches_the_page(course, tmp_path):
    """The same attributes in a markdown cell, in HTML and markdown outputs of an answer cell:
    the page keeps the embedded images and none of their handlers."""
    nb = nbformat.read(course / "autograded" / "demo_full" / A / f"{A}.ipynb", as_version=4)
    joined = "\n\n".join(IMAGE_HANDLERS)
    nb.cells.insert(1, nbformat.v4.new_markdown_cell("图片：\n\n" + joined))
    for cell in nb.cells:
        if cell.metadata.get("nbgrader", {}).get("grade_id") == "answer_mse":
            cell.outputs = [nbformat.v4.new_output("display_data", data={"text/html": fragment})
                            for fragment in IMAGE_HANDLERS]
            cell.outputs.append(nbformat.v4.new_output("display_data", data={"text/markdown": joined}))
    path = tmp_path / f"{A}.ipynb"
    nbformat.write(nb, path)
    renderer = fb.PageRenderer(fb.course_config(str(course)), "sqlite:///" + str(course / "gradebook.db"))
    page = renderer.render(str(path), "demo_full", A)
    assert not _handlers(page), _handlers(page)
    images = [a.get("src") for t, a in _Markup(page).tags if t == "img" and a.get("src") == PNG_1PX]
    # kept from the HTML outputs and from markdown (where the markdown parser takes the tag as HTML)
    assert len(images) >= 2 * DATA_IMAGES
    assert not re.search(r"<img\b[^>]*\bon\w+\s*=", page, re.I)


# ------------------------------------------------------------------------ the in-notebook report, dark themes

#: WCAG contrast of every piece of text in the reports against what is painted behind it
#: (backgrounds composited up the tree; an element's colour may be translucent as well).
CONTRAST_JS = r"""
(() => {
  const parse = (c) => {
    // color-mix() computes to color(srgb r g b [/ a]) with components 0..1
    const srgb = c.match(/color\(srgb ([^)]+)\)/);
    if (srgb) {
      const p = srgb[1].split(/[ \/]+/).filter((x) => x).map(Number);
      return [p[0] * 255, p[1] * 255, p[2] * 255, p.length > 3 ? p[3] : 1];
    }
    const m = c.match(/rgba?\(([^)]+)\)/);
    if (!m) return [0, 0, 0, 0];
    const p = m[1].split(/[ ,\/]+/).filter((x) => x).map(Number);
    return [p[0], p[1], p[2], p.length > 3 ? p[3] : 1];
  };
  const over = (top, bottom) => [0, 1, 2].map((i) => top[i] * top[3] + bottom[i] * (1 - top[3])).concat([1]);
  const lum = (c) => {
    const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
    return 0.2126 * f(c[0]) + 0.7152 * f(c[1]) + 0.0722 * f(c[2]);
  };
  const behind = (el) => {
    const layers = [];
    for (let e = el; e; e = e.parentElement) {
      const c = parse(getComputedStyle(e).backgroundColor);
      if (c[3] > 0) layers.push(c);
      if (c[3] >= 1) break;
    }
    let bg = [255, 255, 255, 1];
    for (let i = layers.length - 1; i >= 0; i--) bg = over(layers[i], bg);
    return bg;
  };
  document.querySelectorAll(".lossgrader-report details").forEach((d) => { d.open = true; });
  const bad = [];
  let checked = 0;
  document.querySelectorAll(".lossgrader-report, .lossgrader-report *").forEach((el) => {
    const own = Array.from(el.childNodes).filter((n) => n.nodeType === 3 && n.textContent.trim());
    if (!own.length || el.tagName === "STYLE") return;
    const bg = behind(el);
    const fg = over(parse(getComputedStyle(el).color), bg);
    const [a, b] = [lum(fg), lum(bg)].sort((x, y) => y - x);
    const ratio = (a + 0.05) / (b + 0.05);
    checked += 1;
    if (ratio < 4.5) bad.push(`${ratio.toFixed(2)} ${el.tagName} "${own[0].textContent.trim().slice(0, 30)}" ` +
                             `color ${getComputedStyle(el).color} on ${bg.slice(0, 3).map(Math.round)}`);
  });
  return {checked, bad};
})()
"""


def _reports_html():
    from lossgrader import check

    def mae_computing_mse(pred, target):
        print("调试输出：pred 的形状", tuple(pred.shape))
        return ((pred - target) ** 2).mean()

    def unfinished(pred, target):
        raise NotImplementedError()

    reports = [check("mse", lambda p, t: ((p - t) ** 2).mean(), device="cpu"),
               check("mae", mae_computing_mse, device="cpu"),
               check("huber", unfinished, device="cpu")]
    return [r._repr_html_() for r in reports]


def _jupyterlab_page(fragments, theme="dark"):
    """The reports as JupyterLab shows them (nbconvert's lab template carries JupyterLab's
    own stylesheets and theme variables, and marks <body> data-jp-theme-light as
    JupyterLab does)."""
    from nbconvert import HTMLExporter

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("check(...)", outputs=[nbformat.v4.new_output(
        "execute_result", data={"text/html": h, "text/plain": "1.0"}, execution_count=1)]) for h in fragments]
    body, _ = HTMLExporter(template_name="lab", theme=theme).from_notebook_node(nb)
    # the lab template also links require.js and MathJax from a CDN: not needed to show HTML
    return re.sub(r"<script[^>]*src=\"https?://[^\"]*\"[^>]*>\s*</script>", "", body)


#: Colab's output frame: its theme colours as the CSS variables Colab's own outputs use,
#: and html[theme=dark] in its dark theme (googlecolab/colabtools#1214).
COLAB = {"dark": {"surface": "#383838", "text": "#e3e3e3"}, "light": {"surface": "#ffffff", "text": "#1f1f1f"}}


def _colab_page(fragments, theme="dark"):
    colours = COLAB[theme]
    return (f'<!DOCTYPE html><html theme="{theme}"><head><meta charset="utf-8"><style>'
            f':root{{--colab-primary-surface-color:{colours["surface"]};--colab-primary-text-color:{colours["text"]};'
            f'--colab-secondary-surface-color:{colours["surface"]};--colab-border-color:#5f6368}}'
            'body{background:var(--colab-primary-surface-color);color:var(--colab-primary-text-color);'
            'font-family:Roboto,"Noto Sans CJK SC",sans-serif;font-size:14px}'
            'a{color:#8ab4f8}</style></head><body>' + "".join(fragments) + "</body></html>")


#: The card, its plot and what the browser made of them.
CARD_JS = r"""
(() => {
  const card = document.querySelector(".lossgrader-report");
  const plot = document.querySelector("img.lossgrader-plot");
  const box = plot.getBoundingClientRect();
  return {card: getComputedStyle(card).backgroundColor, page: getComputedStyle(document.body).backgroundColor,
          filter: getComputedStyle(plot).filter, plot: [box.x, box.y, box.width, box.height]};
})()
"""


def _luminance(png_bytes, box):
    """Mean relative luminance (0 black .. 1 white) of a region of a screenshot."""
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(png_bytes)).convert("L").crop(tuple(int(v) for v in
                                                                     (box[0], box[1], box[0] + box[2], box[1] + box[3])))
    pixels = list(image.getdata())
    return sum(pixels) / len(pixels) / 255


@pytest.mark.parametrize("platform, theme", [("jupyterlab", "dark"), ("colab", "dark"),
                                             ("jupyterlab", "light"), ("colab", "light")])
def test_report_follows_the_notebook_theme(browser, shots, tmp_path, platform, theme):
    """The in-notebook card takes the theme's background and text (no white block in a dark
    theme), every text keeps WCAG AA contrast, and its plot (transparent) is drawn light on
    dark in a dark theme, dark on light in a light one."""
    fragments = _reports_html()
    page = (_jupyterlab_page if platform == "jupyterlab" else _colab_page)(fragments, theme)
    (tmp_path / "card.html").write_text(page, encoding="utf-8")
    with StaticServer(tmp_path) as server:
        browser.clear_events()
        browser.open(server.base_url + "card.html")
        result = browser.evaluate(CONTRAST_JS)
        browser.evaluate("document.querySelector('img.lossgrader-plot').scrollIntoView({block: 'center'})")
        card = browser.evaluate(CARD_JS)
        shot = browser.page.screenshot(path=str(shots / f"report_{theme}_{platform}.png"))
    dark = theme == "dark"
    expected = {("jupyterlab", "dark"): "rgb(17, 17, 17)", ("jupyterlab", "light"): "rgb(255, 255, 255)",
                ("colab", "dark"): "rgb(56, 56, 56)", ("colab", "light"): "rgb(255, 255, 255)"}
    assert card["card"] == expected[(platform, theme)]                      # the theme's own background
    assert ("invert(1)" in card["filter"]) == dark, card["filter"]
    # the plot's pixels: mostly the card's background (dark or light), curves and text on it
    assert (_luminance(shot, card["plot"]) < 0.3) if dark else (_luminance(shot, card["plot"]) > 0.8)
    assert result["checked"] > 40
    assert not result["bad"], "text without enough contrast:\n" + "\n".join(result["bad"])


def test_plot_is_transparent():
    """The feedback plot has no background of its own: the card's shows through."""
    import io

    from PIL import Image

    from lossgrader import check

    png = check("mae", lambda p, t: ((p - t) ** 2).mean(), device="cpu").plot_png
    image = Image.open(io.BytesIO(base64.b64decode(png))).convert("RGBA")
    corners = [image.getpixel((x, y))[3] for x in (0, image.width - 1) for y in (0, image.height - 1)]
    assert corners == [0, 0, 0, 0]
