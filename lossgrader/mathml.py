"""Formulas of a feedback page, typeset when the page is written: TeX becomes MathML.

A feedback page is one file that a student may get attached to a message or open from a
download folder: it cannot load MathJax from anywhere, and its Content-Security-Policy
runs no script at all. So the TeX of the notebook's markdown (``$...$``, ``$$...$$``,
``\\[...\\]``, ``\\(...\\)``, ``\\begin{align}...``) is converted here with ``latex2mathml``
to MathML, which every current browser draws natively (Chromium 109+, Firefox, Safari)
and screen readers read; the TeX source rides along as the formula's annotation.

What goes into the page is our own markup, cleaned once more with nh3 and a MathML
allowlist (no ``href``, no ``annotation-xml``, no ``style``): a hand-in controls the TeX,
never the tags. A formula that does not convert stays as its source, in ``<code>``.

    render_math(html_fragment) -> html_fragment     # the nbconvert filter ``lossgrader_math``
"""
from __future__ import annotations

import html
import re

import nh3

from . import sanitize

#: Presentation MathML (MathML Core and what latex2mathml writes), semantics and annotation.
MATH_TAGS = {
    "math", "semantics", "annotation", "mrow", "mi", "mn", "mo", "ms", "mtext", "mspace",
    "mfrac", "msqrt", "mroot", "msub", "msup", "msubsup", "munder", "mover", "munderover",
    "mmultiscripts", "mprescripts", "none", "mtable", "mtr", "mtd", "mstyle", "mpadded",
    "mphantom", "menclose", "merror",
}
_ALL = {"displaystyle", "scriptlevel", "mathvariant", "dir"}
MATH_ATTRIBUTES = {
    "math": {"display", "class"} | _ALL,
    "annotation": {"encoding"},
    "mo": {"stretchy", "fence", "separator", "form", "lspace", "rspace", "minsize", "maxsize",
           "largeop", "movablelimits", "symmetric", "accent"} | _ALL,
    "mover": {"accent"} | _ALL, "munder": {"accentunder"} | _ALL,
    "munderover": {"accent", "accentunder"} | _ALL,
    "mfrac": {"linethickness"} | _ALL,
    "mspace": {"width", "height", "depth"} | _ALL,
    "mpadded": {"width", "height", "depth", "lspace", "voffset"} | _ALL,
    "mtable": {"columnalign", "rowalign", "columnspacing", "rowspacing", "columnlines", "rowlines",
               "frame"} | _ALL,
    "mtr": {"columnalign", "rowalign"} | _ALL, "mtd": {"columnalign", "rowalign", "columnspan", "rowspan"} | _ALL,
    "menclose": {"notation"} | _ALL,
    **{tag: set(_ALL) for tag in ("mrow", "mi", "mn", "ms", "mtext", "msqrt", "mroot", "msub", "msup",
                                  "msubsup", "mstyle", "mphantom", "mmultiscripts", "semantics")},
}

#: Where formulas are looked for: display before inline, each group one kind.
_MATH = re.compile(r"""
      (?<!\\)\$\$(?P<dollars>.+?)(?<!\\)\$\$
    | \\\[(?P<brackets>.+?)\\\]
    | (?P<env>\\begin\{(?P<name>[A-Za-z]+\*?)\}.*?\\end\{(?P=name)\})
    | \\\((?P<parens>.+?)\\\)
    | (?<![\\$])\$(?=[^\s$])(?P<dollar>[^$]*?[^\s\\$])\$(?!\d)
""", re.DOTALL | re.VERBOSE)

#: Text inside these elements is never read as TeX (code, and formulas already typeset).
_SKIP = {"code", "pre", "kbd", "samp", "script", "style", "math", "textarea", "tt", "var"}

#: Largest formula converted (characters of TeX): a pasted megabyte stays text.
MAX_TEX = 5_000

# Unicode's mathematical alphanumerics for the variants MathML Core does not draw itself
# (browsers implement only mathvariant="normal"): capital A, small a, digit 0.
_ALPHANUMERICS = {
    "bold": (0x1D400, 0x1D41A, 0x1D7CE), "italic": (0x1D434, 0x1D44E, None),
    "bold-italic": (0x1D468, 0x1D482, None), "script": (0x1D49C, 0x1D4B6, None),
    "double-struck": (0x1D538, 0x1D552, 0x1D7D8), "fraktur": (0x1D504, 0x1D51E, None),
    "sans-serif": (0x1D5A0, 0x1D5BA, 0x1D7E2), "monospace": (0x1D670, 0x1D68A, 0x1D7F6),
}
#: Letters Unicode placed in the Letterlike Symbols block instead.
_HOLES = {("italic", "h"): "\u210E", ("script", "B"): "\u212C", ("script", "E"): "\u2130",
          ("script", "F"): "\u2131", ("script", "H"): "\u210B", ("script", "I"): "\u2110",
          ("script", "L"): "\u2112", ("script", "M"): "\u2133", ("script", "R"): "\u211B",
          ("script", "e"): "\u212F", ("script", "g"): "\u210A", ("script", "o"): "\u2134",
          ("double-struck", "C"): "\u2102", ("double-struck", "H"): "\u210D",
          ("double-struck", "N"): "\u2115", ("double-struck", "P"): "\u2119",
          ("double-struck", "Q"): "\u211A", ("double-struck", "R"): "\u211D",
          ("double-struck", "Z"): "\u2124", ("fraktur", "C"): "\u212D", ("fraktur", "H"): "\u210C",
          ("fraktur", "I"): "\u2111", ("fraktur", "R"): "\u211C", ("fraktur", "Z"): "\u2128"}
_VARIANT = re.compile(r'<(mi|mn|mtext)([^>]*?) mathvariant="([a-z-]+)"([^>]*)>([^<]*)</\1>')


def _styled(variant, text):
    capital, small, digit = _ALPHANUMERICS[variant]
    out = []
    for ch in html.unescape(text):
        if (variant, ch) in _HOLES:
            out.append(_HOLES[(variant, ch)])
        elif "A" <= ch <= "Z":
            out.append(chr(capital + ord(ch) - ord("A")))
        elif "a" <= ch <= "z":
            out.append(chr(small + ord(ch) - ord("a")))
        elif "0" <= ch <= "9" and digit:
            out.append(chr(digit + ord(ch) - ord("0")))
        else:
            out.append(ch)
    return html.escape("".join(out), quote=False)


def _variants(mathml):
    def repl(m):
        tag, before, variant, after, text = m.groups()
        if variant not in _ALPHANUMERICS:
            return m.group(0)
        return f"<{tag}{before}{after}>{_styled(variant, text)}</{tag}>"
    return _VARIANT.sub(repl, mathml)


def tex_to_mathml(tex: str, display: bool) -> str | None:
    """One formula as sanitised MathML (None when latex2mathml cannot read it)."""
    from latex2mathml.converter import convert

    tex = tex.strip()
    if not tex or len(tex) > MAX_TEX:
        return None
    try:
        converted = convert(tex, display="block" if display else "inline")
    except Exception:
        return None
    body = converted[converted.index(">") + 1:converted.rindex("</math>")]
    # a command latex2mathml does not know (\arg) is left as "<mi>\arg</mi>": the name, upright
    body = re.sub(r"<mi>\\([A-Za-z]+)</mi>", r"<mi>\1</mi>", _variants(body))
    if re.search(r">[^<]*\\[A-Za-z]", body):
        return None
    markup = (f'<math display="{"block" if display else "inline"}"><semantics><mrow>{body}</mrow>'
              f'<annotation encoding="application/x-tex">{html.escape(tex, quote=False)}</annotation>'
              "</semantics></math>")
    return nh3.clean(markup, tags=MATH_TAGS, attributes=MATH_ATTRIBUTES, strip_comments=True,
                     clean_content_tags=set(), link_rel=None)


def _formula(match) -> tuple:
    """(TeX, display?) of a match of _MATH."""
    for group, display in (("dollars", True), ("brackets", True), ("env", True), ("parens", False),
                           ("dollar", False)):
        if match.group(group) is not None:
            return match.group(group), display
    raise AssertionError(match.group(0))


def _typeset_text(text: str):
    """The pieces of a text node: plain strings and ("math", markup) pairs; None if no formula."""
    pieces, last, found = [], 0, False
    for match in _MATH.finditer(text):
        tex, display = _formula(match)
        markup = tex_to_mathml(tex, display)
        pieces.append(text[last:match.start()])
        if markup is None:
            pieces.append(("code", match.group(0)))
        else:
            pieces.append(("math", markup))
        last = match.end()
        found = True
    if not found:
        return None
    pieces.append(text[last:])
    return pieces


def render_math(fragment) -> str:
    """The fragment (sanitised HTML) with the TeX in its text typeset as MathML."""
    from bs4 import BeautifulSoup, NavigableString

    fragment = str(fragment or "")
    if "$" not in fragment and "\\" not in fragment:
        return fragment
    soup = BeautifulSoup(fragment, "html.parser")
    changed = False
    for node in list(soup.find_all(string=True)):
        if type(node) is not NavigableString or any(p.name in _SKIP for p in node.parents):
            continue
        pieces = _typeset_text(str(node))
        if pieces is None:
            continue
        new = []
        for piece in pieces:
            if isinstance(piece, str):
                if piece:
                    new.append(NavigableString(piece))
            elif piece[0] == "math":
                new.extend(BeautifulSoup(piece[1], "html.parser").contents)
            else:
                code = soup.new_tag("code", attrs={"class": "lg-tex"})
                code.string = piece[1]
                new.append(code)
        for item in new:
            node.insert_before(item)
        node.extract()
        changed = True
    return _clean_page_fragment(str(soup)) if changed else fragment


def _clean_page_fragment(fragment: str) -> str:
    """The fragment through the feedback page's own allowlist with MathML added: whatever
    the re-serialisation above did, nothing but allowed markup leaves this module."""
    return sanitize._nh3(fragment, tags=_PAGE_TAGS, attributes=_PAGE_ATTRIBUTES)


_PAGE_TAGS = sanitize._TAGS | MATH_TAGS
_PAGE_ATTRIBUTES = {tag: set(sanitize._ATTRIBUTES.get(tag, ())) | set(MATH_ATTRIBUTES.get(tag, ()))
                    for tag in set(sanitize._ATTRIBUTES) | set(MATH_ATTRIBUTES)}
