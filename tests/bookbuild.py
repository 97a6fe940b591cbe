"""One build of the Jupyter Book per test session, shared by test_book.py and test_browser.py.

Both test modules do ``from bookbuild import book_build``. Pytest creates one fixture
per importing module, so the build itself is memoised here: whichever module asks
first runs ``jupyter-book build`` and the other reuses the result.

The book is built in place into ``_build/`` at the repository root (what CI and a
developer get from ``jupyter-book build . -W -n --keep-going``). Notebook outputs are
cached in ``_build/.jupyter_cache``, so a second build only re-executes notebooks
whose code changed. Set ``LOSSBOOK_ROOT`` to build another checkout instead (for
example a private copy with work-in-progress chapters).
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROOT = Path(os.environ.get("LOSSBOOK_ROOT", REPO)).resolve()
BUILD_TIMEOUT_S = 1800

# book/_ext holds the headless-Chromium helper shared with the PDF command.
sys.path.insert(0, str(REPO / "book" / "_ext"))

#: Sphinx reports problems as "<location>: WARNING: <message>" (also ERROR, CRITICAL,
#: SEVERE); myst-nb adds "[mystnb...]" types. Kernel log lines such as
#: "[IPKernelApp] WARNING | ..." are not Sphinx warnings and do not match.
SPHINX_PROBLEM_RE = re.compile(r"(?:^|\s|:)(WARNING|ERROR|CRITICAL|SEVERE): ")
ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")


@dataclass(frozen=True)
class BookBuild:
    root: Path
    html_dir: Path
    returncode: int
    log: str
    seconds: float

    @property
    def problems(self) -> list[str]:
        """Warning and error lines of the Sphinx build."""
        return [line for line in self.log.splitlines() if SPHINX_PROBLEM_RE.search(line)]

    def page(self, docname: str) -> str:
        """HTML of a built page, e.g. page('book/06_code')."""
        return (self.html_dir / f"{docname}.html").read_text(encoding="utf-8")


_BUILD: BookBuild | None = None


def jupyter_book_command() -> list[str]:
    exe = shutil.which("jupyter-book") or str(Path(sys.executable).with_name("jupyter-book"))
    return [exe, "build", str(ROOT), "-W", "-n", "--keep-going"]


def build_book() -> BookBuild:
    """Build the book once (memoised for the whole session)."""
    global _BUILD
    if _BUILD is None:
        env = dict(os.environ)
        # The kernels must use the inline backend (a non-interactive MPLBACKEND such as
        # Agg would make plt.show() print a warning instead of the figure).
        env.pop("MPLBACKEND", None)
        start = time.monotonic()
        proc = subprocess.run(
            jupyter_book_command(),
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=BUILD_TIMEOUT_S,
        )
        seconds = time.monotonic() - start
        log = ANSI_RE.sub("", proc.stdout)
        (ROOT / "_build").mkdir(exist_ok=True)
        (ROOT / "_build" / "build.log").write_text(
            log + f"\n[bookbuild] exit code {proc.returncode}, {seconds:.0f} s\n", encoding="utf-8"
        )
        _BUILD = BookBuild(ROOT, ROOT / "_build" / "html", proc.returncode, log, seconds)
    return _BUILD


@pytest.fixture(scope="session")
def book_build() -> BookBuild:
    build = build_book()
    if not (build.html_dir / "index.html").exists():
        tail = "\n".join(build.log.splitlines()[-40:])
        pytest.fail(f"the book did not build (exit code {build.returncode}):\n{tail}")
    return build


# -- reading built pages ---------------------------------------------------------------


class _Collector(HTMLParser):
    """Collects the text of elements that match a predicate on (tag, attrs)."""

    def __init__(self, match):
        super().__init__(convert_charrefs=True)
        self.match = match
        self.stack: list[tuple[str, bool]] = []  # (tag, counted in depth)
        self.depth = 0  # > 0 while inside a matching element
        self.items: list[dict] = []

    VOID = {"br", "img", "hr", "meta", "link", "input", "source", "wbr", "col", "area", "base"}

    def handle_starttag(self, tag, attrs):
        if tag in self.VOID:
            if self.depth == 0 and self.match(tag, dict(attrs)):
                self.items.append({"tag": tag, "attrs": dict(attrs), "text": ""})
            return
        opens = self.depth == 0 and self.match(tag, dict(attrs))
        if opens:
            self.items.append({"tag": tag, "attrs": dict(attrs), "text": ""})
        counted = opens or self.depth > 0
        if counted:
            self.depth += 1
        self.stack.append((tag, counted))

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        # Pop up to the matching start tag (tolerates unclosed <p>, <li>, ...).
        if not any(open_tag == tag for open_tag, _ in self.stack):
            return  # a stray end tag
        while self.stack:
            open_tag, counted = self.stack.pop()
            if counted:
                self.depth -= 1
            if open_tag == tag:
                break

    def handle_data(self, data):
        if self.depth and self.items:
            self.items[-1]["text"] += data


def select(page_html: str, match) -> list[dict]:
    """Elements (tag, attrs, text) of a page for which match(tag, attrs) is true."""
    collector = _Collector(match)
    collector.feed(page_html)
    return collector.items


def has_class(attrs: dict, name: str) -> bool:
    return name in (attrs.get("class") or "").split()


def main_text(page_html: str) -> str:
    """Visible text of the article (everything inside <main>), unescaped."""
    items = select(page_html, lambda tag, attrs: tag == "main")
    return html.unescape(items[0]["text"]) if items else ""


def code_blocks(page_html: str) -> list[str]:
    """Source text of every highlighted code block of a page."""
    return [
        item["text"]
        for item in select(page_html, lambda tag, attrs: tag == "div" and has_class(attrs, "highlight"))
    ]
