"""Headless Chromium for checking and printing the book, driven by Playwright.

Playwright (PyPI) drives Debian's ``chromium`` (``executable_path``; no browser is
downloaded). What is left here is what no driver does for us: serving a built folder on
127.0.0.1 (with aliases), the list of problems a page reported (console errors, uncaught
exceptions, failed loads, requests to other hosts), waiting for MathJax and every image,
and the whole-book print (cover, table of contents, the course font as TrueType).

Used by the browser tests (tests/test_browser.py, test_feedback_page.py,
test_class_report.py, test_accessibility.py) and from the command line:

    python book/_ext/headless.py pdf [--html _build/html] [--out _build/pdf]
    python book/_ext/headless.py book [--html _build/singlehtml] [--out _build/pdf/book.pdf]

The second prints the whole book, built on one page, to one PDF; ``tools/make_pdf.py``
builds that page and prints it in one command. Needs ``playwright`` (requirements.txt),
PyYAML and, for the whole-book PDF, fontTools (a matplotlib dependency).
"""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import shutil
import sys
import tempfile
import threading
import urllib.parse
from pathlib import Path

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "chromium", "google-chrome")
#: Flags on top of Playwright's own (which already turn off background networking,
#: component updates, sync, extensions and default apps, and pass --no-sandbox).
CHROMIUM_FLAGS = ("--disable-quic", "--disable-domain-reliability", "--no-default-browser-check")
#: Resolve no host but 127.0.0.1: anything else fails to load, loudly.
OFFLINE_FLAG = "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"

ROOT = Path(__file__).resolve().parents[2]


def find_chromium() -> str | None:
    """Debian's Chromium (or ``LOSSBOOK_CHROMIUM``); None when there is none."""
    for candidate in (os.environ.get("LOSSBOOK_CHROMIUM"), *CHROMIUM_CANDIDATES):
        path = candidate and shutil.which(candidate)
        if path:
            return path
    return None


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    aliases: dict = {}

    def log_message(self, format, *args):  # noqa: A002 - signature from the base class
        pass

    def translate_path(self, path):
        url_path = urllib.parse.urlsplit(path).path
        if url_path in self.aliases:
            return os.path.join(self.directory, self.aliases[url_path])
        return super().translate_path(path)


class StaticServer:
    """Serve a folder on 127.0.0.1 in a background thread (``with StaticServer(d) as s``).

    ``aliases`` maps URL paths to files of the folder, e.g. {"/book.html":
    "book/00_preface.html"} serves a page at the root, where its relative links point.
    """

    def __init__(self, directory: Path, aliases: dict | None = None):
        handler_class = type("Handler", (_QuietHandler,), {"aliases": dict(aliases or {})})
        handler = functools.partial(handler_class, directory=str(directory))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = self.httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "StaticServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)


class Browser:
    """One headless Chromium (Playwright) with one page, recording what went wrong.

    ``offline``: no host but 127.0.0.1 resolves. ``page`` is Playwright's Page;
    ``new_page(width, height, color_scheme)`` starts a fresh one (``color_scheme``: the
    ``prefers-color-scheme`` the page sees).
    """

    def __init__(self, chromium: str | None = None, width: int = 1280, height: int = 900,
                 offline: bool = False, args=()):
        self.chromium = chromium or find_chromium()
        if not self.chromium:
            raise FileNotFoundError("Chromium not found (apt-get install chromium)")
        self.width, self.height = width, height
        self.args = [*CHROMIUM_FLAGS, *((OFFLINE_FLAG,) if offline else ()), *args]
        self.found: list[str] = []
        self._playwright = self._browser = self.context = self.page = None

    def __enter__(self) -> "Browser":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        from playwright.sync_api import sync_playwright

        self._playwright = sync_playwright().start()
        try:
            self._browser = self._playwright.chromium.launch(executable_path=self.chromium, args=self.args,
                                                             chromium_sandbox=False)
            self.new_page()
        except BaseException:
            self.close()
            raise

    def new_page(self, width: int | None = None, height: int | None = None, color_scheme: str = "light"):
        """A fresh context and page (the old one is closed); returns the page."""
        if self.context is not None:
            self.context.close()
        self.width, self.height = width or self.width, height or self.height
        self.context = self._browser.new_context(viewport={"width": self.width, "height": self.height},
                                                 device_scale_factor=1, color_scheme=color_scheme)
        self.page = self.context.new_page()
        self.page.set_default_timeout(60_000)
        self.page.on("console", self._on_console)
        self.page.on("pageerror", lambda error: self.found.append(f"uncaught exception: {error}"))
        self.page.on("requestfailed", self._on_failed)
        self.page.on("request", self._on_request)
        self.found = []
        return self.page

    def close(self) -> None:
        for thing in (self.context, self._browser):
            if thing is not None:
                try:
                    thing.close()
                except Exception:
                    pass
        if self._playwright is not None:
            self._playwright.stop()
        self._playwright = self._browser = self.context = self.page = None

    # -- what the page reported ----------------------------------------------------------
    def _on_console(self, message) -> None:
        if message.type in ("error", "assert"):
            # "Failed to load resource: ... 404" names its URL only in the location
            url = (message.location or {}).get("url", "") if message.text.startswith("Failed to load") else ""
            self.found.append(f"console.{message.type}: {message.text} {url}".strip())

    def _on_failed(self, request) -> None:
        failure = request.failure or ""
        if failure != "net::ERR_ABORTED":            # a load the page itself cancelled
            self.found.append(f"failed load: {failure} {request.url}")

    def _on_request(self, request) -> None:
        parts = urllib.parse.urlsplit(request.url)
        if parts.scheme in ("http", "https", "ws", "wss") and parts.hostname not in ("127.0.0.1", "localhost"):
            self.found.append(f"request to another host: {request.url}")

    def problems(self) -> list[str]:
        """Console errors (CSP refusals among them), exceptions, failed loads and requests
        to hosts other than localhost, seen since the last clear_events()."""
        return list(self.found)

    def clear_events(self) -> None:
        self.found = []

    # -- pages -------------------------------------------------------------------------
    def open(self, url: str, timeout: float = 60.0) -> None:
        """Navigate, wait for the load event, MathJax and every image."""
        self.page.goto(url, wait_until="load", timeout=timeout * 1000)
        self.page.evaluate(WAIT_FOR_PAGE_JS)

    def evaluate(self, expression: str, arg=None):
        """The value of a JavaScript expression (a promise is awaited)."""
        return self.page.evaluate(expression, arg)

    def set_viewport(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.page.set_viewport_size({"width": width, "height": height})

    def screenshot(self, path: Path, full_page: bool = True, max_height: int = 60000) -> None:
        """PNG of the page; full_page makes the viewport as tall as the page first.

        (Capturing "beyond the viewport" instead would leave the theme's sticky,
        viewport-high sidebars at their first-screen size.)
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        width, height = self.width, self.height
        if full_page:
            tall = int(self.evaluate("document.documentElement.scrollHeight"))
            self.page.set_viewport_size({"width": width, "height": min(max(tall, height), max_height)})
            self.evaluate(WAIT_FOR_PAGE_JS)
        try:
            self.page.screenshot(path=str(path))
        finally:
            if full_page:
                self.page.set_viewport_size({"width": width, "height": height})

    def print_pdf(self, path: Path, page_numbers: bool = False, untagged: bool = False) -> None:
        """Print the page to an A4 PDF; optionally with page numbers in the footer.

        ``untagged`` leaves out the tagged (accessibility) structure: for the whole book it
        would double the time to print and the size of the file.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        margin = {"top": "0.5in", "bottom": "0.6in" if page_numbers else "0.5in", "left": "0.5in", "right": "0.5in"}
        options = dict(path=str(path), width="8.27in", height="11.69in", margin=margin,  # A4
                       print_background=True, prefer_css_page_size=False, tagged=not untagged)
        if page_numbers:
            options.update(display_header_footer=True, header_template="<span></span>",
                           footer_template=PAGE_NUMBER_FOOTER)
        self.page.pdf(**options)


#: Resolves once MathJax has typeset the page (if the page loads MathJax) and every
#: image has either loaded or failed.
WAIT_FOR_PAGE_JS = r"""
(async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    await MathJax.startup.promise;
  }
  const images = Array.from(document.images);
  images.forEach((img) => { img.loading = "eager"; });
  await Promise.all(images.map((img) => img.complete ? null :
      new Promise((resolve) => { img.addEventListener("load", resolve); img.addEventListener("error", resolve); })));
  await document.fonts.ready;
  return true;
})()
"""


def chapter_pages(html_dir: Path) -> list[str]:
    """HTML pages of the chapters in TOC order (relative to html_dir)."""
    import yaml

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    files = [toc["root"]]
    for part in toc.get("parts", [{"chapters": toc.get("chapters", [])}]):
        files.extend(ch["file"] for ch in part["chapters"])
    return [f"{Path(f).with_suffix('')}.html" for f in files]


def print_chapters(html_dir: Path, out_dir: Path) -> list[Path]:
    """Print every chapter of the built book to PDF, after MathJax has typeset it."""
    written = []
    with StaticServer(html_dir) as server, Browser() as browser:
        for page in chapter_pages(html_dir):
            browser.open(server.base_url + page)
            pdf = out_dir / (Path(page).stem + ".pdf")
            browser.print_pdf(pdf)
            written.append(pdf)
    return written


#: Footer of every page of the whole-book PDF (Chromium fills in the numbers).
PAGE_NUMBER_FOOTER = (
    '<div style="width:100%;text-align:center;font-size:8px;color:#666;">'
    '<span class="pageNumber"></span> / <span class="totalPages"></span></div>'
)

#: Runs WAIT_FOR_PAGE_JS in the background; window.__lossbookReady says when it is done
#: (the whole book takes minutes to typeset: waited for with its own time limit).
START_WAIT_JS = (
    "window.__lossbookReady = null; ("
    + WAIT_FOR_PAGE_JS.strip()
    + ").then(() => { window.__lossbookReady = 'ok'; },"
    " (e) => { window.__lossbookReady = 'error: ' + e; }); true"
)

#: What must be true of the single page before it is printed: every formula typeset by
#: MathJax, every image loaded. Returns the problems found.
CHECK_PAGE_JS = r"""
(() => {
  const problems = [];
  const math = Array.from(document.querySelectorAll("article .math"));
  const raw = math.filter((el) => !el.querySelector("mjx-container"));
  if (raw.length) problems.push(raw.length + " formula(s) not typeset, e.g. " + raw[0].textContent.slice(0, 80));
  const broken = Array.from(document.querySelectorAll("article img")).filter((img) => !img.naturalWidth);
  if (broken.length) problems.push(broken.length + " image(s) not loaded, e.g. " + broken[0].src);
  return {problems, formulas: math.length, images: document.querySelectorAll("article img").length};
})()
"""

#: Turns the single-page book into a printable book: a cover, a table of contents made
#: from the chapter and section headings (each entry links to its heading, which the PDF
#: keeps as an internal link), each chapter on a new page. Argument: {title, author,
#: year, url}.
PREPARE_BOOK_JS = r"""
((meta) => {
  const article = document.querySelector("article.bd-article") || document.querySelector("article");
  if (!article) throw new Error("no <article> on the page");
  const el = (tag, cls, text) => {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  };
  // Headings: the root page (the preface: h1, its sections h2) and each chapter that
  // singlehtml inlines from the toctree (h2, its sections h3).
  const entries = [];
  article.querySelectorAll("h1, h2, h3").forEach((heading, index) => {
    const inChapter = heading.closest("div.toctree-wrapper > section") !== null;
    const level = {H1: 1, H2: inChapter ? 1 : 2, H3: inChapter ? 2 : 0}[heading.tagName];
    if (!level) return;
    const clone = heading.cloneNode(true);
    clone.querySelectorAll("a.headerlink").forEach((a) => a.remove());
    heading.id = "lossbook-heading-" + index;
    entries.push({level, node: clone, id: heading.id});
  });

  const cover = el("section", "lossbook-cover");
  cover.append(el("div", "lossbook-cover-title", meta.title));
  if (meta.subtitle) cover.append(el("div", "lossbook-cover-subtitle", meta.subtitle));
  cover.append(el("div", "lossbook-cover-author", meta.author));
  const foot = el("div", "lossbook-cover-foot");
  foot.append(el("div", "", meta.year));
  if (meta.url) foot.append(el("div", "", "在线版本与练习：" + meta.url));
  cover.append(foot);

  const toc = el("nav", "lossbook-toc");
  toc.append(el("div", "lossbook-toc-title", "目录"));
  const list = el("ul");
  entries.forEach((entry) => {
    const item = el("li", "lossbook-toc-l" + entry.level);
    const link = el("a");
    link.href = "#" + entry.id;
    link.append(...Array.from(entry.node.childNodes));
    item.append(link);
    list.append(item);
  });
  toc.append(list);
  article.prepend(cover, toc);
  // Code cells, outputs and tables are kept on one page (lossbook.css, the theme); a tall
  // one that does not fit would leave most of a page blank, so those may break.
  article.querySelectorAll("div.cell_input, div.cell_output, table").forEach((box) => {
    if (box.getBoundingClientRect().height > 400) box.classList.add("lossbook-may-break");
  });

  // Chinese text in the course's own font (served at /lossbook-cjk.ttf, CJK code points
  // only), ahead of the theme's font stacks; Latin text keeps the theme's fonts.
  const rootStyle = getComputedStyle(document.documentElement);
  const fontVars = ["--pst-font-family-base", "--pst-font-family-heading", "--pst-font-family-monospace"]
    .map((name) => `${name}: "LossbookCJK", ${rootStyle.getPropertyValue(name).trim() || "sans-serif"};`)
    .join(" ");
  const style = el("style");
  style.textContent = `
    @font-face { font-family: "LossbookCJK"; src: url("/lossbook-cjk.ttf") format("truetype");
      unicode-range: U+2E80-9FFF, U+F900-FAFF, U+FE30-FE4F, U+FF00-FFEF; }
    @media print { :root { ${fontVars} } }
    .lossbook-cover { display: none; }
    .lossbook-toc { display: none; }
    @media print {
      .lossbook-cover { display: flex; flex-direction: column; justify-content: center;
        height: 9.5in; text-align: center; break-after: page; }
      .lossbook-cover-title { font-size: 40pt; font-weight: 700; margin-bottom: 0.3em; }
      .lossbook-cover-subtitle { font-size: 16pt; color: #444; margin-bottom: 2em; }
      .lossbook-cover-author { font-size: 14pt; margin-top: 2em; }
      .lossbook-cover-foot { margin-top: 3em; font-size: 10pt; color: #555; line-height: 1.8; }
      .lossbook-toc { display: block; break-after: page; }
      .lossbook-toc-title { font-size: 20pt; font-weight: 700; margin: 0 0 0.8em; }
      .lossbook-toc ul { list-style: none; padding: 0; margin: 0; }
      .lossbook-toc li { margin: 0.15em 0; break-inside: avoid; }
      .lossbook-toc li.lossbook-toc-l1 { font-weight: 600; margin-top: 0.6em; }
      .lossbook-toc li.lossbook-toc-l2 { padding-left: 2em; font-size: 0.92em; }
      .lossbook-toc a { color: inherit; text-decoration: none; }
      article div.toctree-wrapper > section { break-before: page; }
      .lossbook-may-break { break-inside: auto !important; }
      article h1, article h2, article h3 { break-after: avoid; }
      /* The theme prints the page title in its own print header and hides the article's
         h1; this book has its cover instead, and the h1 is the preface's title. */
      a.headerlink, #jb-print-docs-body { display: none !important; }
      .bd-main .bd-content .bd-article h1:first-of-type { display: block !important; }
    }`;
  document.head.append(style);
  return entries.length;
})
"""


def course_font_path() -> Path:
    """The course's CJK font (lossgrader/cjkfont.py's FONT_PATH), read without importing
    the lossgrader package (and torch)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_lossbook_cjkfont", ROOT / "lossgrader" / "cjkfont.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return Path(module.FONT_PATH)


def truetype_copy(otf: Path, out: Path) -> Path:
    """Write a TrueType-outline copy of a CFF OpenType font.

    Chromium's PDF backend (Skia) embeds TrueType fonts as CID fonts, but CFF ones (all
    Noto CJK fonts) only as one Type 3 font per few hundred glyphs: the whole book had
    350 of them and the PDF doubled in size. The curves are converted to quadratic
    splines within 1 font unit.
    """
    from fontTools.pens.cu2quPen import Cu2QuPen
    from fontTools.pens.ttGlyphPen import TTGlyphPen
    from fontTools.ttLib import TTFont, newTable

    font = TTFont(str(otf))
    glyph_set = font.getGlyphSet()
    glyf = newTable("glyf")
    glyf.glyphOrder = font.getGlyphOrder()
    glyf.glyphs = {}
    for name in glyf.glyphOrder:
        pen = TTGlyphPen(glyph_set)
        glyph_set[name].draw(Cu2QuPen(pen, max_err=1.0, reverse_direction=True))
        glyf.glyphs[name] = pen.glyph()
    for tag in ("CFF ", "VORG"):
        if tag in font:
            del font[tag]
    font["glyf"], font["loca"] = glyf, newTable("loca")
    maxp = font["maxp"]
    maxp.tableVersion = 0x00010000
    for field in ("maxZones", "maxTwilightPoints", "maxStorage", "maxFunctionDefs",
                  "maxInstructionDefs", "maxStackElements", "maxSizeOfInstructions",
                  "maxComponentElements"):
        setattr(maxp, field, 0)
    maxp.maxZones = 1
    font["head"].glyphDataFormat = 0
    font["post"].formatType = 3.0
    font.sfntVersion = "\x00\x01\x00\x00"
    out.parent.mkdir(parents=True, exist_ok=True)
    font.save(str(out))
    return out


def pdf_page_count(path: Path) -> int:
    """Number of pages of a PDF that Chromium wrote (its page objects are not compressed)."""
    import re

    return len(re.findall(rb"/Type\s*/Page(?![s\w])", path.read_bytes()))


def single_page(html_dir: Path) -> str:
    """The page of a singlehtml build that holds the whole book (the _toc.yml root)."""
    import yaml

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    return f"{Path(toc['root']).with_suffix('')}.html"


def book_metadata(config_path: Path = ROOT / "_config.yml") -> dict:
    """Title, author, year and repository URL of the book (from _config.yml)."""
    import yaml

    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    return {
        "title": config.get("title", ""),
        "subtitle": "原理、梯度与 PyTorch 实现",
        "author": config.get("author", ""),
        "year": str(config.get("copyright", "")),
        "url": (config.get("repository") or {}).get("url", ""),
    }


def print_book(single_html_dir: Path, out: Path, timeout: float = 300.0) -> dict:
    """Print a singlehtml build of the book to one PDF: cover, table of contents (linked
    to the headings), every chapter on new pages in TOC order, formulas typeset, figures
    loaded, page numbers. Returns what was checked ({formulas, images, headings})."""
    page = single_page(single_html_dir)
    if not (single_html_dir / page).exists():
        raise FileNotFoundError(f"{single_html_dir / page} not found: build with --custom-builder singlehtml")
    work = Path(tempfile.mkdtemp(prefix="lossbook-pdf-"))
    try:
        font = truetype_copy(course_font_path(), work / "lossbook-cjk.ttf")
        # singlehtml writes every link of the page relative to the build root (_static/,
        # _images/), even though the page sits in book/: serve it at the root.
        aliases = {"/book.html": page, "/lossbook-cjk.ttf": str(font)}
        return _print_single_page(single_html_dir, aliases, out, timeout)
    finally:
        shutil.rmtree(work, ignore_errors=True)


class PrintError(RuntimeError):
    pass


def _print_single_page(single_html_dir: Path, aliases: dict, out: Path, timeout: float) -> dict:
    with StaticServer(single_html_dir, aliases) as server, Browser() as browser:
        browser.page.goto(server.base_url + "book.html", wait_until="load", timeout=timeout * 1000)
        browser.evaluate(START_WAIT_JS)
        try:
            browser.page.wait_for_function("window.__lossbookReady !== null", timeout=timeout * 1000, polling=500)
        except Exception as exc:
            raise PrintError(f"MathJax/images not ready after {timeout:.0f} s") from exc
        state = browser.evaluate("window.__lossbookReady")
        if state != "ok":
            raise PrintError(f"waiting for the page failed: {state}")
        checked = browser.evaluate(CHECK_PAGE_JS)
        if checked["problems"]:
            raise PrintError("; ".join(checked["problems"]))
        checked["headings"] = browser.evaluate(PREPARE_BOOK_JS.strip(), book_metadata())
        # The @font-face is used only in print: load it now, or the print falls back.
        loaded = browser.evaluate('document.fonts.load("16px LossbookCJK", "中").then((faces) => faces.length)')
        if not loaded:
            raise PrintError("the course's CJK font (/lossbook-cjk.ttf) did not load")
        # The singlehtml builder writes no search index that the theme's search box asks for.
        errors = [p for p in browser.problems()
                  if not p.startswith("request to another host") and not p.endswith("/searchindex.js")]
        if errors:
            raise PrintError("the page reported errors: " + "; ".join(errors[:5]))
        browser.print_pdf(out, page_numbers=True, untagged=True)
    return checked


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    pdf = sub.add_parser("pdf", help="print each built chapter to PDF")
    pdf.add_argument("--html", type=Path, default=ROOT / "_build" / "html")
    pdf.add_argument("--out", type=Path, default=ROOT / "_build" / "pdf")
    book = sub.add_parser("book", help="print a singlehtml build of the whole book to one PDF")
    book.add_argument("--html", type=Path, default=ROOT / "_build" / "singlehtml")
    book.add_argument("--out", type=Path, default=ROOT / "_build" / "pdf" / "book.pdf")
    args = parser.parse_args(argv)
    if args.command == "book":
        checked = print_book(args.html, args.out)
        print(f"{args.out} ({checked['formulas']} formulas, {checked['images']} images)")
        return 0
    if args.command == "pdf":
        if not (args.html / "index.html").exists():
            print(f"{args.html} has no built book: run `jupyter-book build .` first", file=sys.stderr)
            return 1
        for path in print_chapters(args.html, args.out):
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
