"""Feedback pages: ``feedback/<student>/<assignment>/<notebook>.html``, one per graded notebook.

What a student gets back is their own notebook with the grader's reports, and what they
read must be Chinese, work without network and be safe to open:

* **Chinese frame.** The page is rendered through our nbconvert template
  (``templates/lossgrader_feedback/``, in place of nbgrader's English ``feedback``
  template): the score ``得分 x / y`` at the top, a table of contents of the test cells with
  their scores, each graded cell labelled (``你的答案：…`` / ``测试：…``) with its score and a
  link back to the top. ``FeedbackFrame`` prepares these labels.
* **Offline.** Formulas are typeset by the MathJax copy shipped in the package
  (``static/mathjax/``), installed once as ``feedback/_static/`` and loaded from each page by
  a relative path; no page refers to a CDN, and remote images (the Colab badge of the first
  cell) are replaced by text.
* **Safe.** Nothing a hand-in produces runs as script when the page is opened:
  ``SanitizeOutputs`` keeps one representation per output (escaped text, HTML cleaned by
  ``nh3``, an SVG shown through ``<img>``, a PNG/JPEG whose base64 was checked), drops
  JavaScript and widgets, and the template cleans markdown with the same allowlist
  (``clean_html``). The grader's report in a test cell passes that allowlist unchanged. A
  Content-Security-Policy lets the page run only the scripts of its own folder.
* **Bounded.** ``LimitPageSize`` cuts the largest outputs (then overlong sources, then
  ungraded cells, the grader's reports last) until the page fits ``max_page_bytes``
  (2 MB unless configured: ``c.LimitPageSize.max_page_bytes`` in nbgrader_config.py) and
  says in Chinese what was cut; ``PageRenderer.render`` measures every page and renders it
  again on a smaller budget when the estimate fell short.

A hand-in that could not be autograded gets a page saying why (``render_failed``).
"""
from __future__ import annotations

import base64
import binascii
import filecmp
import glob
import html
import json
import os
import re
import shutil
import sys
import time

import nh3
from traitlets import Integer, Unicode

try:  # nbgrader is an instructor-only dependency
    from nbgrader.preprocessors import NbGraderPreprocessor as _Preprocessor
except ImportError:  # pragma: no cover - exercised only without nbgrader installed
    from nbconvert.preprocessors import Preprocessor as _Preprocessor

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
TEMPLATES_DIR = os.path.join(PACKAGE_DIR, "templates")
TEMPLATE_NAME = "lossgrader_feedback"
TEMPLATE_DIR = os.path.join(TEMPLATES_DIR, TEMPLATE_NAME)
MATHJAX_DIR = os.path.join(PACKAGE_DIR, "static", "mathjax")
MATHJAX_CONFIG = "lossgrader-mathjax-config.js"
STATIC_DIRNAME = "_static"            # feedback/_static/: the one MathJax copy every page shares
STATUS_FILE = "lossgrader-status.json"
DEFAULT_MAX_PAGE_BYTES = 2_000_000
#: The page may run scripts of its own folder tree only (MathJax and its configuration);
#: inline scripts, event handlers, javascript: links, frames, forms and any remote load are refused.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data:; font-src 'self' data:; base-uri 'none'; form-action 'none'")

FEEDBACK_PREPROCESSORS = [
    "nbgrader.preprocessors.GetGrades",
    "nbconvert.preprocessors.CSSHTMLHeaderPreprocessor",
    "lossgrader.feedback.ScrubHiddenTests",
    "nbgrader.preprocessors.ClearHiddenTests",
    # after the hidden tests are gone, before anything is measured or labelled:
    "lossgrader.feedback.SanitizeOutputs",
    "lossgrader.feedback.FeedbackFrame",    # labels: needs GetGrades' scores
    "lossgrader.feedback.LimitPageSize",    # last: measures what will be rendered
]


# --------------------------------------------------------------------------------------
# HTML sanitising
# --------------------------------------------------------------------------------------

_TAGS = {
    "a", "abbr", "b", "blockquote", "br", "caption", "code", "col", "colgroup", "dd", "del",
    "details", "div", "dl", "dt", "em", "figcaption", "figure", "h1", "h2", "h3", "h4", "h5", "h6",
    "hr", "i", "img", "ins", "kbd", "li", "mark", "ol", "p", "pre", "q", "s", "samp", "small",
    "span", "strike", "strong", "sub", "summary", "sup", "table", "tbody", "td", "tfoot", "th",
    "thead", "tr", "tt", "u", "ul", "var",
}
_ATTRIBUTES = {
    "*": {"class", "id", "style", "title", "lang", "dir", "align"},
    "a": {"href"},
    "img": {"src", "alt", "width", "height"},
    "td": {"colspan", "rowspan"},
    "th": {"colspan", "rowspan", "scope"},
    "ol": {"start", "type"},
    "col": {"span"},
    "colgroup": {"span"},
}
#: Inline style may colour, space and border things, not position them over the page nor
#: point at any resource (no url()-taking property is listed).
_STYLE_PROPERTIES = {
    "background-color", "border", "border-bottom", "border-collapse", "border-color",
    "border-left", "border-radius", "border-right", "border-spacing", "border-style",
    "border-top", "border-width", "color", "display", "font-family", "font-size", "font-style",
    "font-weight", "height", "line-height", "margin", "margin-bottom", "margin-left",
    "margin-right", "margin-top", "max-height", "max-width", "min-width", "overflow",
    "overflow-x", "padding", "padding-bottom", "padding-left", "padding-right", "padding-top",
    "text-align", "text-decoration", "vertical-align", "white-space", "width", "word-break",
}
_DATA_IMAGE = re.compile(r"^data:image/(png|jpeg|gif|webp|svg\+xml);base64,[a-z0-9+/=\s]*$", re.IGNORECASE)
_IMG = re.compile(r"<img\b([^>]*)>")
_ATTR = re.compile(r'([a-zA-Z-]+)="([^"]*)"')
_REMOTE = re.compile(r"^\s*(https?:)?//", re.IGNORECASE)


def _attribute_filter(element, attribute, value):
    if attribute in ("href", "src") and value.strip().lower().startswith("data:"):
        # a data: URL may only be an image shown by <img> (which never runs scripts)
        return value if element == "img" and _DATA_IMAGE.match(value.strip()) else None
    return value


def _nh3(fragment):
    return nh3.clean(fragment, tags=_TAGS, clean_content_tags={"script", "style"},
                     attributes=_ATTRIBUTES, attribute_filter=_attribute_filter,
                     url_schemes={"http", "https", "mailto", "data"}, strip_comments=True,
                     filter_style_properties=_STYLE_PROPERTIES, id_prefix="lg-u-")


def _offline_image(match):
    """An <img> that is not embedded in the page (a remote or a relative URL) becomes text:
    offline it would be a broken image, and the page ships no other file. Colab's badge
    becomes a badge drawn by CSS."""
    attrs = {k: html.unescape(v) for k, v in _ATTR.findall(match.group(1))}
    src = attrs.get("src", "")
    if src.startswith("data:"):
        return match.group(0)
    if "colab-badge" in src or "colab.research.google.com" in src:
        return '<span class="lg-remote-image lg-badge">在 Colab 中打开</span>'
    alt = attrs.get("alt") or "无说明"
    where = "网络图片" if _REMOTE.match(src) else "图片"
    return f'<span class="lg-remote-image">{where}（未包含在反馈页中）：{html.escape(alt)}</span>'


def clean_html(fragment) -> str:
    """Sanitise an HTML fragment for a feedback page (markdown cells, HTML outputs).

    nh3 keeps an allowlist of tags, attributes and style properties (no script, no event
    handler, no javascript: URL, data: URLs only as <img> sources); images that would load
    from the network are turned into text so that the page looks the same offline."""
    if isinstance(fragment, bytes):
        fragment = fragment.decode("utf-8", "replace")
    cleaned = _nh3(str(fragment or ""))
    cleaned = _IMG.sub(_offline_image, cleaned)
    return _nh3(cleaned)      # the rewrite built markup from escaped values; clean once more


_BASE64 = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")


def clean_base64(value) -> str:
    """The base64 payload of an image output, or "" when it is not valid base64."""
    text = "".join(str(value or "").split())
    if not _BASE64.match(text):
        return ""
    try:
        base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return ""
    return text


# --------------------------------------------------------------------------------------
# Preprocessors
# --------------------------------------------------------------------------------------

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_TB_SOURCE_LINE = re.compile(r"^\s*(?:-+>\s*)?\d+\s(.*)$")


class ScrubHiddenTests(_Preprocessor):
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


def _text(value) -> str:
    """Notebook text (a string or a list of strings); anything else as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "".join(value)
    return json.dumps(value, default=str)


#: What an output may show, best first; anything else (JavaScript, widgets, PDF, custom
#: MIME types) is not shown at all.
SHOWN_MIMETYPES = ("text/html", "text/markdown", "text/latex", "image/svg+xml", "image/png",
                   "image/jpeg", "text/plain")


def _output(output_type, **fields):
    """A notebook output node (built directly: nbformat's new_output validates each one,
    which costs seconds on a hand-in with thousands of outputs)."""
    from nbformat import NotebookNode

    if output_type in ("display_data", "execute_result"):
        fields.setdefault("metadata", {})
    return NotebookNode(output_type=output_type, **fields)


def _note_output(text):
    """An output of our own (a note in Chinese), shown as a yellow box."""
    return _output("display_data", data={
        "text/html": f'<div class="lg-cut-note">{html.escape(text)}</div>', "text/plain": text})


def sanitize_output(out):
    """The output reduced to what the page may show, or None to drop it."""
    kind = out.get("output_type")
    if kind == "stream":
        name = out.get("name") if out.get("name") in ("stdout", "stderr") else "stdout"
        return _output("stream", name=name, text=_text(out.get("text", "")))
    if kind == "error":
        traceback = out.get("traceback") or []
        return _output("error", ename=_text(out.get("ename", "")), evalue=_text(out.get("evalue", "")),
                       traceback=[_text(line) for line in (traceback if isinstance(traceback, list) else [traceback])])
    if kind not in ("display_data", "execute_result"):
        return None
    data = out.get("data") or {}
    mime = next((m for m in SHOWN_MIMETYPES if m in data), None)
    if mime in (None, "text/plain") and any(m not in SHOWN_MIMETYPES for m in data):
        # JavaScript, a widget or another format the page does not show (its text/plain
        # is only a repr such as "<IPython.core.display.Javascript object>")
        return _note_output("（这个输出是脚本、交互控件或其他格式，反馈页不运行也不显示它。）")
    if mime is None:
        return None
    value = _text(data[mime])
    if mime == "text/html":
        value = clean_html(value)
    elif mime in ("image/png", "image/jpeg"):
        value = clean_base64(value)
        if not value:
            return _note_output("（这个输出的图像数据无效，未显示。）")
    if kind == "execute_result":
        count = out.get("execution_count")
        return _output("execute_result", data={mime: value}, execution_count=count if isinstance(count, int) else None)
    return _output("display_data", data={mime: value})


class SanitizeOutputs(_Preprocessor):
    """Reduce every output to one representation the page can show safely, and every cell's
    metadata to nbgrader's (tags, ``transient``, ``jupyter`` flags of a hand-in do not reach
    the template). The notebook's metadata keeps only what syntax highlighting needs."""

    def preprocess(self, nb, resources):
        keep = {k: nb.metadata[k] for k in ("kernelspec", "language_info") if k in nb.metadata}
        nb.metadata.clear()
        nb.metadata.update(keep)
        return super().preprocess(nb, resources)

    def preprocess_cell(self, cell, resources, index):
        cell.source = _text(cell.get("source", ""))
        nbgrader = cell.get("metadata", {}).get("nbgrader")
        cell.metadata = {"nbgrader": nbgrader} if isinstance(nbgrader, dict) else {}
        if cell.cell_type == "code":
            cleaned = (sanitize_output(out) for out in cell.get("outputs", []))
            cell.outputs = [out for out in cleaned if out is not None]
        return cell, resources


def _fmt(x) -> str:
    return f"{round(float(x or 0), 2):g}"


def _state(score, points) -> str:
    if points and score is not None and float(score) >= float(points) - 1e-9:
        return "full"
    return "partial" if score else "zero"


_CHECK_CALL = re.compile(r"""check\(\s*["']([A-Za-z0-9_]+)["']""")
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def _exercise_title(exercise_id):
    try:
        from .exercises import EXERCISES
    except Exception:  # pragma: no cover - the registry is part of the package
        return None
    ex = EXERCISES.get(exercise_id)
    return ex.title if ex is not None else None


def _anchor(grade_id) -> str:
    return "lg-" + re.sub(r"[^A-Za-z0-9_-]", "_", str(grade_id))


class FeedbackFrame(_Preprocessor):
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
            "score_text": f"{_fmt(score)} / {_fmt(max_score)}",
            "late_penalty_text": f"-{_fmt(late)}" if late > 0 else "",
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
                "score_text": f"{_fmt(score)} / {_fmt(points)}" if graded else "",
                "state": _state(score, points) if graded else "",
                "comment": meta.get("comment") or ""}


def _mb(n) -> str:
    return f"{n / 1_000_000:.1f} MB" if n >= 100_000 else f"{n / 1000:.0f} KB"


#: Rough bytes of HTML per byte of content (syntax highlighting wraps every token of code).
_CODE_FACTOR = 4
_TEXT_FACTOR = 1.3
_FRAME_BYTES = 40_000       # CSS, head, table of contents and summary, with margin
_CELL_BYTES = 600
_MAX_NOTES = 12             # lines of the summary at the top; the rest are counted
_KEEP_TEXT = 5_000          # characters kept of an overlong text output or source


class LimitPageSize(_Preprocessor):
    """Keep the page under ``max_page_bytes``: cut the largest outputs of the hand-in's cells
    first (long text is truncated, HTML and images removed), then overlong sources, then
    the largest cells that are not graded, and only then the grader's reports. Each cut
    leaves a Chinese note in place and a line in the page's summary.

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
        notes = []                  # (bytes saved, Chinese line, cell index): the biggest cuts are listed first
        lg["max_page_text"] = _mb(limit)

        def where(i, cell):
            label = cell.metadata.get("lossgrader", {}).get("label")
            return f"“{label}”" if label else f"第 {i + 1} 个单元"

        def is_test(cell):
            return cell.metadata.get("lossgrader", {}).get("kind") == "test"

        def cell_size(cell):
            return _CELL_BYTES + self._source_size(cell) + sum(self._output_size(o) for o in cell.get("outputs", []))

        total = sum(cell_size(c) for c in nb.cells)

        def cut_outputs(of_tests):
            nonlocal total
            outputs = sorted(((self._output_size(o), i, j) for i, c in enumerate(nb.cells)
                              if is_test(c) == of_tests for j, o in enumerate(c.get("outputs", []))),
                             reverse=True)
            for size, i, j in outputs:
                if total <= budget or size <= 2_000:
                    break
                cell = nb.cells[i]
                out = cell.outputs[j]
                if out.output_type == "stream" and len(out.text) > _KEEP_TEXT:
                    out.text = out.text[:_KEEP_TEXT] + (
                        f"\n…（输出过长：共 {len(out.text):,} 个字符，反馈页只显示前 {_KEEP_TEXT:,} 个。）\n")
                    notes.append((size, f"{where(i, cell)}的输出（{_mb(size)}）只保留了开头 {_KEEP_TEXT:,} 个字符", i))
                else:
                    cell.outputs[j] = _note_output(f"（这个输出有 {_mb(size)}，超出了反馈页的大小限制，已删去。）")
                    notes.append((size, f"{where(i, cell)}的一个输出（{_mb(size)}）已删去", i))
                total -= size - self._output_size(cell.outputs[j])

        def cut_sources():
            nonlocal total
            for size, i in sorted(((self._source_size(c), i) for i, c in enumerate(nb.cells)), reverse=True):
                cell = nb.cells[i]
                if total <= budget or len(cell.source) <= _KEEP_TEXT:
                    break
                n = len(cell.source)
                cell.source = cell.source[:_KEEP_TEXT] + f"\n# …（此单元共 {n:,} 个字符，反馈页只显示前 {_KEEP_TEXT:,} 个）"
                notes.append((size, f"{where(i, cell)}的内容（{n:,} 个字符）只显示了开头 {_KEEP_TEXT:,} 个字符", i))
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
                nb.cells = [c for i, c in enumerate(nb.cells) if i not in drop]
                notes[:] = [note for note in notes if note[2] not in drop]     # cuts inside them: moot
                notes.append((float("inf"), f"{len(drop)} 个未评分的单元没有显示", None))

        # In this order, each only while the page is still too big: the hand-in's outputs,
        # overlong sources (megabytes pasted into a cell), the largest cells that are not
        # graded, and last the grader's own reports (bounded, and what the student needs).
        for step in (lambda: cut_outputs(False), cut_sources, drop_ungraded_cells, lambda: cut_outputs(True)):
            if total > budget:
                step()
        lines = [text for _, text, _ in sorted(notes, key=lambda note: -note[0])]
        if len(lines) > _MAX_NOTES:
            lines[_MAX_NOTES - 1:] = [f"以及另外 {len(lines) - _MAX_NOTES + 1} 处较小的删减"]
        lg["cut_notes"] = lines
        return nb, resources


# --------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------

def course_config(root):
    """The course's nbgrader configuration (nbgrader_config.py) set up for feedback pages."""
    from traitlets.config import Config
    from traitlets.config.loader import PyFileConfigLoader

    cfg = Config()
    if os.path.isfile(os.path.join(root, "nbgrader_config.py")):
        cfg = PyFileConfigLoader("nbgrader_config.py", path=root).load_config()
    cfg.CourseDirectory.root = root
    configure(cfg)
    return cfg


def configure(cfg):
    """Point nbconvert/nbgrader at the feedback template and preprocessors (also usable in
    nbgrader_config.py for plain ``nbgrader generate_feedback``)."""
    cfg.HTMLExporter.template_name = TEMPLATE_NAME
    cfg.HTMLExporter.extra_template_basedirs = [TEMPLATES_DIR]
    cfg.HTMLExporter.filters = {"lossgrader_clean": "lossgrader.feedback.clean_html",
                                "lossgrader_base64": "lossgrader.feedback.clean_base64"}
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

    def render(self, nb_path, student, assignment, static_prefix="../../_static/", max_page_bytes=None,
               assignment_notebook=None):
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
                         "lossgrader": {"static": static_prefix, "max_page_bytes": limit,
                                        "budget_fraction": fraction, "assignment_sources": own}}
            body, _ = self.exporter.from_notebook_node(nbformat.from_dict(source), resources=resources)
            size = len(body.encode("utf-8"))
            if size <= limit:
                return body
            fraction *= 0.9 * limit / size
        return render_failed(assignment, student, None, f"反馈页超过了 {_mb(limit)} 的大小上限。",
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
        ("no notebook submitted", "没有找到提交的笔记本"),
        ("time limit exceeded", "评分超过了整份作业的时间限制（可能有死循环或运行过慢的代码）"),
        ("worker process died", "评分进程意外退出"),
    ]
    for key, text in known:
        if key in reason:
            return f"{text}。（技术细节：{reason}）"
    return f"自动评分时出错。（技术细节：{reason}）"


def render_failed(assignment, student, max_score, reason, heading="自动评分失败", advice=FAILED_ADVICE) -> str:
    """The page of a hand-in that has no autograded notebook: 0 of max_score and why, in
    Chinese (reason is plain text; advice is our own HTML). max_score=None: no score shown."""
    score_text = f"0 / {_fmt(max_score)}" if max_score is not None else "见成绩表"
    return FAILED_FEEDBACK.format(aid=html.escape(str(assignment)), student=html.escape(str(student)),
                                  score_text=html.escape(score_text), reason=html.escape(str(reason)),
                                  heading=html.escape(heading), advice=advice)


# --------------------------------------------------------------------------------------
# The feedback step
# --------------------------------------------------------------------------------------

def install_static(feedback_root) -> str:
    """Copy MathJax and its configuration into feedback/_static/ (once; refreshed when the
    package's copy changed). Returns that folder."""
    dest = os.path.join(feedback_root, STATIC_DIRNAME)
    files = {os.path.join("mathjax", name): os.path.join(MATHJAX_DIR, name)
             for name in ("tex-svg-full.js", "LICENSE")}
    files[MATHJAX_CONFIG] = os.path.join(TEMPLATE_DIR, MATHJAX_CONFIG)
    for rel, src in files.items():
        target = os.path.join(dest, rel)
        if os.path.isfile(target) and filecmp.cmp(src, target, shallow=False):
            continue
        os.makedirs(os.path.dirname(target), exist_ok=True)
        tmp = target + ".tmp"
        shutil.copyfile(src, tmp)
        os.replace(tmp, target)
    return dest


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _read_status(root):
    try:
        with open(os.path.join(root, STATUS_FILE), encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return {}


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


def _max_score(db_url, assignment):
    from nbgrader.api import Gradebook, MissingEntry

    try:
        with Gradebook(db_url) as gb:
            return float(gb.find_assignment(assignment).max_score)
    except MissingEntry:
        return 0.0


def feedback(root, only_assignments=None, only_students=None, progress=True, stream=None,
             max_page_bytes=None):
    """Write feedback/<student>/<assignment>/<notebook>.html for every hand-in in submitted/
    (or the selected ones) and feedback/_static/ (MathJax). Returns the pages written."""
    from nbgrader.coursedir import CourseDirectory

    root = os.path.abspath(root)
    cfg = course_config(root)
    coursedir = CourseDirectory(config=cfg)
    coursedir.root = root
    db_url = coursedir.db_url
    status = _read_status(root)
    pairs = _submissions(root, coursedir, only_assignments, only_students)
    feedback_root = os.path.join(root, coursedir.feedback_directory)
    static_dir = install_static(feedback_root)
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
        prefix = os.path.relpath(static_dir, dest_dir).replace(os.sep, "/") + "/"
        for name in names:
            path = os.path.join(dest_dir, name + ".html")
            nb_path = os.path.join(autograded, name + ".ipynb")
            if entry.get("status") == "failed" or not os.path.isfile(nb_path):
                reason = reason_zh(entry["reason"]) if entry.get("reason") else "这份作业尚未自动评分。"
                page = render_failed(aid, student, _max_score(db_url, aid), reason)
            else:
                renderer = renderer or PageRenderer(cfg, db_url)
                try:
                    page = renderer.render(nb_path, student, aid, prefix, max_page_bytes,
                                           assignment_notebook=os.path.join(source, name + ".ipynb"))
                except Exception as exc:
                    raise RuntimeError(f"feedback for {student}/{aid}/{name} failed: "
                                       f"{exc.__class__.__name__}: {exc}") from exc
            _write(path, page)
            written.append(path)
        if progress:
            stream.write(f"feedback  {n}/{len(pairs)} {student}/{aid}\n")
            stream.flush()
    if progress and pairs:
        stream.write(f"feedback: {len(written)} pages in {time.monotonic() - started:.0f} s\n")
    return written
