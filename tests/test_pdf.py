"""The whole book as one PDF (``python tools/make_pdf.py``, docs/book.md): a cover, the
table of contents, every chapter of _toc.yml in order, each on a new page, the errata
appendix; text extractable (so fonts carry their Unicode maps), every font embedded,
formulas typeset and figures kept.

The PDF is built from the session's book build (tests/bookbuild.py): the singlehtml build
shares its notebook cache, so no notebook runs again, and printing takes about a minute.
Needs Chromium and poppler-utils (pdftotext, pdffonts, pdfinfo); without them the module
is skipped, except under CI=true, where that is an error.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bookbuild import REPO, book_build  # noqa: E402,F401  (the session fixture)
from headless import find_chromium  # noqa: E402  (book/_ext, put on sys.path by bookbuild)

PDF_TIMEOUT_S = 1200


def _require(ok: bool, what: str) -> None:
    if not ok:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{what} is required under CI")
        pytest.skip(f"{what} not installed")


def _source_title(path: Path) -> str:
    """The first level-1 heading of a page (Markdown or the first Markdown cell)."""
    if path.suffix == ".ipynb":
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        text = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    else:
        text = path.read_text(encoding="utf-8")
    match = re.search(r"^# +(.+)$", text, re.MULTILINE)
    assert match, f"{path} has no title"
    return re.sub(r"[*`]", "", match.group(1)).strip()


def toc_docnames(root: Path) -> list[str]:
    """The pages of _toc.yml in reading order (docnames such as book/01_overview)."""
    toc = yaml.safe_load((root / "_toc.yml").read_text(encoding="utf-8"))
    return [toc["root"]] + [ch["file"] for part in toc["parts"] for ch in part["chapters"]]


def chapters(root: Path) -> list[str]:
    """Titles of the pages of _toc.yml, in reading order."""
    titles = []
    for name in toc_docnames(root):
        path = next(root / f"{name}{ext}" for ext in (".md", ".ipynb") if (root / f"{name}{ext}").exists())
        titles.append(_source_title(path))
    return titles


def article(page_html: str) -> str:
    """The <article> of a built page (without the header's launch-button logos)."""
    start = page_html.find("<article")
    return page_html[start:page_html.find("</article>", start)] if start >= 0 else ""


def squeeze(text: str) -> str:
    """Text without whitespace: pdftotext breaks and spaces CJK text its own way."""
    return re.sub(r"\s+", "", text)


@pytest.fixture(scope="module")
def book_pdf(book_build):
    _require(find_chromium() is not None, "Chromium (apt-get install chromium)")
    _require(all(shutil.which(t) for t in ("pdftotext", "pdffonts", "pdfinfo")),
             "poppler-utils (apt-get install poppler-utils)")
    out = book_build.root / "_build" / "pdf" / "book.pdf"
    out.unlink(missing_ok=True)
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "make_pdf.py"), "--book-root", str(book_build.root),
         "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=PDF_TIMEOUT_S,
    )
    assert proc.returncode == 0 and out.exists(), proc.stdout[-4000:]
    text = subprocess.run(["pdftotext", "-layout", str(out), "-"], stdout=subprocess.PIPE,
                          text=True, check=True).stdout
    pages = text.split("\f")
    if pages and not pages[-1].strip():
        pages.pop()  # pdftotext ends the last page with a form feed too
    info = subprocess.run(["pdfinfo", str(out)], stdout=subprocess.PIPE, text=True, check=True).stdout
    fonts = subprocess.run(["pdffonts", str(out)], stdout=subprocess.PIPE, text=True, check=True).stdout
    return {"path": out, "log": proc.stdout, "pages": pages, "info": info, "fonts": fonts}


def test_page_count(book_pdf, book_build):
    count = int(re.search(r"^Pages:\s+(\d+)", book_pdf["info"], re.MULTILINE).group(1))
    assert count == len(book_pdf["pages"])
    titles = chapters(book_build.root)
    # A cover, the table of contents and each chapter on pages of its own; the course
    # has a few dozen pages of text per chapter, not a page each.
    assert count >= 2 + 3 * len(titles), count
    assert "A4" in book_pdf["info"]


def test_cover_and_table_of_contents(book_pdf, book_build):
    config = yaml.safe_load((book_build.root / "_config.yml").read_text(encoding="utf-8"))
    cover, toc = squeeze(book_pdf["pages"][0]), squeeze("".join(book_pdf["pages"][1:4]))
    assert squeeze(config["title"]) in cover
    assert toc.startswith("目录")
    positions = [toc.find(squeeze(title)) for title in chapters(book_build.root)]
    assert -1 not in positions, dict(zip(chapters(book_build.root), positions))
    assert positions == sorted(positions), "the table of contents is not in _toc.yml order"


def test_chapters_start_on_new_pages_in_order(book_pdf, book_build):
    """Each chapter title is at the top of a page of its own, in _toc.yml order, after the
    table of contents; the errata appendix is the last one."""
    pages = [squeeze(page) for page in book_pdf["pages"]]
    titles = [squeeze(title) for title in chapters(book_build.root)]
    # The table of contents starts on page 2; it runs over as many pages as its entries
    # need (the last chapter's sections may spill over), up to the first chapter.
    assert pages[1].startswith("目录")
    first_pages = []
    for title in titles:
        start = first_pages[-1] + 1 if first_pages else 2
        # numbered chapters start with their number: "1. 损失函数概述"
        found = next((i for i in range(start, len(pages))
                      if re.sub(r"^\d+\.", "", pages[i]).startswith(title)), None)
        assert found is not None, f"no page after page {start} starts with {title!r}"
        first_pages.append(found)
    toc = "".join(pages[1:first_pages[0]])
    assert all(title in toc for title in titles) and len(toc) < 4000 * (first_pages[0] - 1), \
        "the first chapter does not follow the table of contents"


def test_fonts_are_embedded_with_unicode_maps(book_pdf):
    rows = [line for line in book_pdf["fonts"].splitlines()[2:] if line.strip()]
    assert rows
    # name, type..., emb, sub, uni, object id: read the three yes/no columns from the right
    flags = [line.split()[-5:-2] for line in rows]
    not_embedded = [line for line, (emb, _, _) in zip(rows, flags) if emb != "yes"]
    assert not not_embedded, not_embedded
    no_unicode = [line for line, (_, _, uni) in zip(rows, flags) if uni != "yes"]
    assert not no_unicode, no_unicode
    # Chinese text is set in the course's own font (lossgrader/fonts/), embedded.
    assert any("NotoSansCJKsc" in line for line in rows), book_pdf["fonts"]


def test_chinese_text_math_and_figures_are_kept(book_pdf, book_build):
    text = "".join(book_pdf["pages"])
    # Chinese body text is extractable (the fonts map their glyphs to Unicode).
    assert "损失函数" in text and "交叉熵" in text
    # MathJax typeset every formula: no TeX source is left in the text.
    for raw in (r"\frac", r"\(", r"\[", "$$", r"\mathbb"):
        assert raw not in text, f"raw TeX {raw!r} in the PDF"
    # print_book checked that every formula was typeset and every figure loaded; the
    # figures are those of the HTML build.
    match = re.search(r"(\d+) formulas, (\d+) figures", book_pdf["log"])
    assert match, book_pdf["log"]
    formulas, figures = map(int, match.groups())
    html_figures = sum(len(re.findall(r"<img\s", article(book_build.page(page))))
                       for page in toc_docnames(book_build.root))
    assert formulas > 100
    assert figures == html_figures > 0

