"""Open the built book in headless Chromium (Playwright), as a reader would, with only localhost reachable.

For every chapter: math is typeset by the bundled MathJax (no raw TeX left in the
visible text), every image loaded, the console shows no error and no request left
127.0.0.1. The search page finds 交叉熵 in the classification chapter. A full-page
screenshot of every chapter is saved under _build/screenshots/ and a PDF print of it
(after MathJax ran) under _build/pdf/.

Needs Debian's chromium, fonts-noto-cjk and Playwright (PyPI; it drives Debian's chromium,
no browser is downloaded); the tests are skipped without Chromium unless CI=true, where
its absence is a failure.
"""

from __future__ import annotations

import os
import re
import sys
import urllib.parse
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bookbuild import book_build  # noqa: E402,F401  (the session fixture)

from headless import Browser, StaticServer, chapter_pages, find_chromium  # noqa: E402

if not find_chromium():
    if os.environ.get("CI") == "true":
        raise RuntimeError("Chromium is required in CI: apt-get install chromium fonts-noto-cjk")
    pytest.skip("Chromium is not installed", allow_module_level=True)

#: Visible text of the article without code, with MathJax output removed: what is left
#: must not contain TeX source.
ARTICLE_TEXT_JS = r"""
(() => {
  const article = document.querySelector("article") || document.body;
  const clone = article.cloneNode(true);
  clone.querySelectorAll("pre, code, script, style, mjx-container, .highlight").forEach((e) => e.remove());
  return clone.textContent;
})()
"""

#: Math elements that Sphinx wrote and how many of them MathJax replaced.
MATH_STATUS_JS = r"""
(() => {
  const math = Array.from(document.querySelectorAll("article span.math, article div.math"));
  return {total: math.length, typeset: math.filter((e) => e.querySelector("mjx-container svg")).length};
})()
"""

BROKEN_IMAGES_JS = r"""
Array.from(document.images).filter((img) => !(img.complete && img.naturalWidth > 0)).map((img) => img.src)
"""

#: Links of the search results once Sphinx's search has finished (it shows the results
#: one by one and writes the summary line last), or null after 20 s.
SEARCH_RESULTS_JS = r"""
(async () => {
  for (let i = 0; i < 200; i++) {
    const summary = document.querySelector("#search-results p.search-summary");
    if (summary && summary.innerText.trim()) {
      return Array.from(document.querySelectorAll("#search-results ul.search li > a"))
          .map((a) => a.getAttribute("href"));
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return null;
})()
"""


@pytest.fixture(scope="module")
def site(book_build):
    with StaticServer(book_build.html_dir) as server, Browser(offline=True) as browser:
        yield server, browser, book_build


def test_every_chapter_renders_cleanly(site):
    server, browser, build = site
    screenshots = build.root / "_build" / "screenshots"
    pdfs = build.root / "_build" / "pdf"
    failures = []
    pages = chapter_pages(build.html_dir)
    assert len(pages) >= 9 and all((build.html_dir / page).is_file() for page in pages)
    for page in pages:
        browser.clear_events()
        browser.open(server.base_url + page)
        name = Path(page).stem

        math = browser.evaluate(MATH_STATUS_JS)
        if math["typeset"] != math["total"]:
            failures.append(f"{page}: {math['total'] - math['typeset']} of {math['total']} formulas not typeset")
        text = browser.evaluate(ARTICLE_TEXT_JS)
        for raw in ("$$", "\\frac", "\\(", "\\[", "\\begin{"):
            if raw in text:
                i = text.index(raw)
                failures.append(f"{page}: raw TeX {raw!r} in the text: ...{text[max(0, i - 40):i + 40]!r}...")
        # any TeX control word left outside code (e.g. "\\alpha" after a math span broke)
        for m in re.finditer(r"\\[A-Za-z]+", text):
            failures.append(f"{page}: raw TeX {m.group()!r} in the text: "
                            f"...{text[max(0, m.start() - 40):m.end() + 40]!r}...")
            break
        broken = browser.evaluate(BROKEN_IMAGES_JS)
        if broken:
            failures.append(f"{page}: images did not load: {broken}")
        failures.extend(f"{page}: {problem}" for problem in browser.problems())

        browser.screenshot(screenshots / f"{name}.png")
        browser.print_pdf(pdfs / f"{name}.pdf")
        assert (screenshots / f"{name}.png").stat().st_size > 10_000
        assert (pdfs / f"{name}.pdf").read_bytes()[:5] == b"%PDF-"
    assert not failures, "\n".join(failures)


def test_math_is_typeset_on_the_regression_chapter(site):
    server, browser, _ = site
    browser.open(server.base_url + "book/02_regression.html")
    math = browser.evaluate(MATH_STATUS_JS)
    assert math["total"] >= 20 and math["typeset"] == math["total"], math


@pytest.mark.parametrize(
    "term, page",
    [
        ("交叉熵", "book/03_classification.html"),
        ("均方误差", "book/02_regression.html"),
        ("数值梯度", "book/01_overview.html"),
        ("不存在的词语", None),
    ],
)
def test_search_finds_chinese_terms(site, term, page):
    server, browser, _ = site
    browser.clear_events()
    browser.open(server.base_url + "search.html?q=" + urllib.parse.quote(term))
    hrefs = browser.evaluate(SEARCH_RESULTS_JS)
    assert hrefs is not None, f"the search for {term} did not finish"
    found = [urllib.parse.urlsplit(h).path for h in hrefs]
    if page is None:
        assert found == [], f"searching {term} found {found}"
    else:
        # The chapter about the term is the best match, ranked first.
        assert found and found[0] == page, f"searching {term} found {found}"
    assert not browser.problems(), browser.problems()
