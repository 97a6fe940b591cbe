"""Making what a hand-in produced safe to show in a feedback page.

Every output is reduced to one harmless form: escaped text, HTML cleaned by nh3 (an
allowlist of tags, attributes and CSS properties), SVG shown as an image, or checked
base64 image data. Scripts, event handlers, frames, remote loads and widgets never pass.
"""
from __future__ import annotations

import base64
import binascii
import html
import json
import re

import nh3

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


def _nh3(fragment, tags=_TAGS, attributes=_ATTRIBUTES):
    """The feedback page's allowlist; ``tags``/``attributes`` widen it (mathml.py adds MathML)."""
    return nh3.clean(fragment, tags=tags, clean_content_tags={"script", "style"},
                     attributes=attributes, attribute_filter=_attribute_filter,
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


def output_text(value) -> str:
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


def note_output(text):
    """An output of our own (a note in Chinese), shown as a yellow box."""
    return _output("display_data", data={
        "text/html": f'<div class="lg-cut-note">{html.escape(text)}</div>', "text/plain": text})


def sanitize_output(out):
    """The output reduced to what the page may show, or None to drop it."""
    kind = out.get("output_type")
    if kind == "stream":
        name = out.get("name") if out.get("name") in ("stdout", "stderr") else "stdout"
        return _output("stream", name=name, text=output_text(out.get("text", "")))
    if kind == "error":
        traceback = out.get("traceback") or []
        return _output("error", ename=output_text(out.get("ename", "")), evalue=output_text(out.get("evalue", "")),
                       traceback=[output_text(line) for line in (traceback if isinstance(traceback, list) else [traceback])])
    if kind not in ("display_data", "execute_result"):
        return None
    data = out.get("data") or {}
    mime = next((m for m in SHOWN_MIMETYPES if m in data), None)
    if mime in (None, "text/plain") and any(m not in SHOWN_MIMETYPES for m in data):
        # JavaScript, a widget or another format the page does not show (its text/plain
        # is only a repr such as "<IPython.core.display.Javascript object>")
        return note_output("（这个输出是脚本、交互控件或其他格式，反馈页不运行也不显示它。）")
    if mime is None:
        return None
    value = output_text(data[mime])
    if mime == "text/html":
        value = clean_html(value)
    elif mime in ("image/png", "image/jpeg"):
        value = clean_base64(value)
        if not value:
            return note_output("（这个输出的图像数据无效，未显示。）")
    if kind == "execute_result":
        count = out.get("execution_count")
        return _output("execute_result", data={mime: value}, execution_count=count if isinstance(count, int) else None)
    return _output("display_data", data={mime: value})
