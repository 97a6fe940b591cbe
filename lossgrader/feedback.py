"""Feedback pages: ``feedback/<student>/<assignment>/<notebook>.html``, one per graded notebook.

What a student gets back is their own notebook with the grader's reports, and what they
read must be Chinese, work without network and be safe to open:

* **Chinese frame.** The page is rendered through our nbconvert template
  (``templates/lossgrader_feedback/``, in place of nbgrader's English ``feedback``
  template): the score ``得分 x / y`` at the top, a table of contents of the test cells with
  their scores, each graded cell labelled (``你的答案：…`` / ``测试：…``) with its score and a
  link back to the top. ``FeedbackFrame`` prepares these labels.

The preprocessors live one per file in ``lossgrader/preprocessors/`` and the HTML cleaning
in ``lossgrader/sanitize.py``; ``FEEDBACK_PREPROCESSORS`` below is their order.
* **One file, offline.** Each page is self-contained: its CSS is inlined, its images are
  embedded, and its formulas are typeset when the page is written (``lossgrader.mathml``:
  TeX to MathML, which browsers draw natively), so a page attached to a message or opened
  from a download folder reads the same as in the course folder; no page loads a script,
  a file beside it or anything from the network, and remote images (the Colab badge of
  the first cell) are replaced by text.
* **The instructor's word.** A score given by hand in nbgrader's formgrader is shown as
  the instructor's, with the automatic score beside it; comments are rendered markdown
  with their formulas typeset.
* **Safe.** Nothing a hand-in produces runs as script when the page is opened:
  ``SanitizeOutputs`` keeps one representation per output (escaped text, HTML cleaned by
  ``nh3``, an SVG shown through ``<img>``, a PNG/JPEG whose base64 was checked), drops
  JavaScript and widgets, and the template cleans markdown with the same allowlist
  (``clean_html``). The grader's report in a test cell passes that allowlist unchanged. A
  Content-Security-Policy runs no script at all and loads nothing but embedded images.
* **Bounded.** ``LimitPageSize`` cuts the largest outputs (then overlong sources, then
  ungraded cells, the grader's reports last) until the page fits ``max_page_bytes``
  (2 MB unless configured: ``c.LimitPageSize.max_page_bytes`` in nbgrader_config.py) and
  says in Chinese what was cut; ``PageRenderer.render`` measures every page and renders it
  again on a smaller budget when the estimate fell short.

A hand-in that could not be autograded gets a page saying why (``render_failed``).
"""
from __future__ import annotations

import glob
import html
import os
import sys
import time

from . import course, gradebook
from .course import STATUS_FILE  # noqa: F401  (where failures are read from)
from .preprocessors.feedback_frame import fmt_number
from .preprocessors.limit_page_size import DEFAULT_MAX_PAGE_BYTES, megabytes
from .sanitize import clean_base64, clean_html  # noqa: F401  (nbconvert filters, by name)

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
TEMPLATES_DIR = os.path.join(PACKAGE_DIR, "templates")
TEMPLATE_NAME = "lossgrader_feedback"
TEMPLATE_DIR = os.path.join(TEMPLATES_DIR, TEMPLATE_NAME)

FEEDBACK_PREPROCESSORS = [
    "nbgrader.preprocessors.GetGrades",
    "nbconvert.preprocessors.CSSHTMLHeaderPreprocessor",
    "lossgrader.preprocessors.scrub_hidden_tests.ScrubHiddenTests",
    "nbgrader.preprocessors.ClearHiddenTests",
    # after the hidden tests are gone, before anything is measured or labelled:
    "lossgrader.preprocessors.sanitize_outputs.SanitizeOutputs",
    "lossgrader.preprocessors.feedback_frame.FeedbackFrame",    # labels: needs GetGrades' scores
    "lossgrader.preprocessors.limit_page_size.LimitPageSize",    # last: measures what will be rendered
]


# --------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------

def course_config(root):
    """The course's nbgrader configuration (nbgrader_config.py) set up for feedback pages."""
    return configure(course.load_config(root))


def configure(cfg):
    """Point nbconvert/nbgrader at the feedback template and preprocessors (also usable in
    nbgrader_config.py for plain ``nbgrader generate_feedback``)."""
    cfg.HTMLExporter.template_name = TEMPLATE_NAME
    cfg.HTMLExporter.extra_template_basedirs = [TEMPLATES_DIR]
    cfg.HTMLExporter.filters = {"lossgrader_clean": "lossgrader.sanitize.clean_html",
                                "lossgrader_base64": "lossgrader.sanitize.clean_base64",
                                "lossgrader_math": "lossgrader.mathml.render_math"}
    cfg.GenerateFeedback.preprocessors = list(FEEDBACK_PREPROCESSORS)
    return cfg


class PageRenderer:
    """Renders autograded notebooks to feedback pages with one configured exporter."""

    def __init__(self, cfg, db_url):
        from nbconvert import HTMLExporter
        from traitlets.utils.importstring import import_item

        self.db_url = db_url
        self.exporter = HTMLExporter(config=cfg)
        for name in FEEDBACK_PREPROCESSORS:
            self.exporter.register_preprocessor(import_item(name)(config=cfg), enabled=True)
        self.max_page_bytes = int(cfg.LimitPageSize.get("max_page_bytes", DEFAULT_MAX_PAGE_BYTES))

    def render(self, nb_path, student, assignment, max_page_bytes=None, assignment_notebook=None):
        """The page's HTML; never larger than max_page_bytes (encoded as UTF-8).

        assignment_notebook: the instructor's notebook (solutions/); its cells are the last
        ungraded cells a page too big would leave out."""
        import nbformat

        limit = int(max_page_bytes or self.max_page_bytes)
        notebook = os.path.splitext(os.path.basename(nb_path))[0]
        source = nbformat.read(nb_path, as_version=4)
        own = set()
        if assignment_notebook and os.path.isfile(assignment_notebook):
            own = {c.source.strip() for c in nbformat.read(assignment_notebook, as_version=4).cells}
        fraction = 1.0
        for _ in range(4):
            resources = {"unique_key": notebook,
                         "nbgrader": {"student": student, "assignment": assignment,
                                      "notebook": notebook, "db_url": self.db_url},
                         "lossgrader": {"max_page_bytes": limit, "budget_fraction": fraction,
                                        "assignment_sources": own}}
            body, _ = self.exporter.from_notebook_node(nbformat.from_dict(source), resources=resources)
            size = len(body.encode("utf-8"))
            if size <= limit:
                return body
            fraction *= 0.9 * limit / size
        return render_failed(assignment, student, None, f"反馈页超过了 {megabytes(limit)} 的大小上限。",
                             heading="反馈页过大", advice="你的得分已记入成绩表；详细的评分结果请向教师索取。")


# --------------------------------------------------------------------------------------
# Pages for hand-ins that could not be graded
# --------------------------------------------------------------------------------------

FAILED_FEEDBACK = """<!DOCTYPE html>
<html lang="zh-CN"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<title>{aid} 作业反馈</title>
<style>body{{font-family:"Noto Sans CJK SC","Microsoft YaHei",sans-serif;max-width:800px;margin:2em auto;line-height:1.6;color:#1f2328;background:#fff}}
.box{{border:1px solid #d33;background:#fff5f5;color:#1f2328;padding:1em 1.5em;border-radius:6px}}</style></head>
<body><h1>{aid}：{heading}</h1>
<div class="box"><p>学生：<b>{student}</b></p>
<p>得分：<b>{score_text}</b></p>
<p>原因：{reason}</p></div>
<p>{advice}</p>
</body></html>
"""
FAILED_ADVICE = ("提交的笔记本无法被自动评分，因此所有测试单元记 0 分。请检查你提交的文件是否是用 Jupyter 或 Colab "
                 "保存的完整 <code>.ipynb</code> 笔记本，并且在“重启内核并运行全部单元”后能在合理时间内运行完毕；"
                 "然后联系教师重新评分。")


def reason_zh(reason):
    """The student-facing (Chinese) wording of an autograde failure reason."""
    known = [
        ("is not valid JSON", "提交的文件不是有效的 JSON（.ipynb 文件已损坏或被截断）"),
        ("is not UTF-8 text", "提交的文件不是 UTF-8 文本（不是 .ipynb 笔记本）"),
        ("is not a Jupyter notebook", "提交的文件不是 Jupyter 笔记本"),
        ("has no list of cells", "提交的文件不是 Jupyter 笔记本（没有单元格列表）"),
        ("was not submitted", "没有找到提交的笔记本"),
        ("is larger than", "提交的笔记本文件过大"),
        ("time limit exceeded", "评分超过了整份作业的时间限制（可能有死循环或运行过慢的代码）"),
        ("worker process died", "评分进程意外退出"),
        ("grading failed", "评分程序在评这份作业时出错（已重试一次）"),
    ]
    for key, text in known:
        if key in reason:
            return f"{text}。（技术细节：{reason}）"
    return f"自动评分时出错。（技术细节：{reason}）"


def render_failed(assignment, student, max_score, reason, heading="自动评分失败", advice=FAILED_ADVICE) -> str:
    """The page of a hand-in that has no autograded notebook: 0 of max_score and why, in
    Chinese (reason is plain text; advice is our own HTML). max_score=None: no score shown."""
    score_text = f"0 / {fmt_number(max_score)}" if max_score is not None else "见成绩表"
    return FAILED_FEEDBACK.format(aid=html.escape(str(assignment)), student=html.escape(str(student)),
                                  score_text=html.escape(score_text), reason=html.escape(str(reason)),
                                  heading=html.escape(heading), advice=advice)


# --------------------------------------------------------------------------------------
# The feedback step
# --------------------------------------------------------------------------------------

def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _submissions(root, coursedir, only_assignments=None, only_students=None):
    """(student, assignment) pairs found in submitted/ for assignments of the source folder."""
    source = os.path.join(root, coursedir.source_directory)
    known = {d for d in os.listdir(source) if os.path.isfile(os.path.join(source, d, d + ".ipynb"))} \
        if os.path.isdir(source) else set()
    submitted = os.path.join(root, coursedir.submitted_directory)
    pairs = []
    if not os.path.isdir(submitted):
        return pairs
    for student in sorted(os.listdir(submitted)):
        sdir = os.path.join(submitted, student)
        if student.startswith(".") or not os.path.isdir(sdir) or (only_students and student not in only_students):
            continue
        for aid in sorted(os.listdir(sdir)):
            if aid in known and os.path.isdir(os.path.join(sdir, aid)) and (
                    not only_assignments or aid in only_assignments):
                pairs.append((student, aid))
    return pairs


def _max_score(root, assignment):
    """The assignment's points, read without opening the gradebook for writing."""
    try:
        return float(gradebook.released(root, assignment)["max_score"])
    except gradebook.GradebookError:
        return 0.0


def feedback(root, only_assignments=None, only_students=None, progress=True, stream=None,
             max_page_bytes=None):
    """Write feedback/<student>/<assignment>/<notebook>.html for every hand-in in submitted/
    (or the selected ones); each page is one self-contained file. Returns the pages written."""
    from nbgrader.coursedir import CourseDirectory

    root = os.path.abspath(root)
    cfg = course_config(root)
    coursedir = CourseDirectory(config=cfg)
    coursedir.root = root
    db_url = coursedir.db_url
    status = course.read_status(root)
    pairs = _submissions(root, coursedir, only_assignments, only_students)
    renderer = None
    stream = stream or sys.stderr
    written = []
    started = time.monotonic()
    for n, (student, aid) in enumerate(pairs, 1):
        entry = status.get(f"{student}/{aid}", {})
        dest_dir = coursedir.format_path(coursedir.feedback_directory, student, aid)
        autograded = coursedir.format_path(coursedir.autograded_directory, student, aid)
        source = coursedir.format_path(coursedir.source_directory, ".", aid)
        names = sorted(os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(source, "*.ipynb")))
        for name in names:
            path = os.path.join(dest_dir, name + ".html")
            nb_path = os.path.join(autograded, name + ".ipynb")
            if entry.get("status") == "failed" or not os.path.isfile(nb_path):
                # the stored reason is capped (autograde.MAX_REASON_CHARS); an older status file's is cut here
                reason = reason_zh(str(entry["reason"])[:1_000]) if entry.get("reason") else "这份作业尚未自动评分。"
                page = render_failed(aid, student, _max_score(root, aid), reason)
            else:
                renderer = renderer or PageRenderer(cfg, db_url)
                try:
                    page = renderer.render(nb_path, student, aid, max_page_bytes,
                                           assignment_notebook=os.path.join(source, name + ".ipynb"))
                except Exception as exc:
                    from nbgrader.api import MissingEntry
                    if isinstance(exc, MissingEntry):   # not in the gradebook: a restore took its grades away
                        stream.write(f"feedback: {student}/{aid} skipped: its grades are not in the gradebook "
                                     f"({exc}); was it restored from a backup taken before this hand-in was "
                                     f"graded? `lossgrader autograde {aid} --student {student}` grades it again\n")
                        continue
                    raise RuntimeError(f"feedback for {student}/{aid}/{name} failed: "
                                       f"{exc.__class__.__name__}: {exc}") from exc
            _write(path, page)
            written.append(path)
        if os.path.isdir(dest_dir):         # nbgrader's release_feedback matches the page by these
            course.copy_nbgrader_files(root, student, aid, dest_dir)
        if progress:
            stream.write(f"feedback  {n}/{len(pairs)} {student}/{aid}\n")
            stream.flush()
    if progress and pairs:
        stream.write(f"feedback: {len(written)} pages in {time.monotonic() - started:.0f} s\n")
    return written
