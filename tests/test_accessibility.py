"""Accessibility audit of the book: axe-core (WCAG 2.1 A and AA rules) in headless Chromium
on every chapter of the built book, and the alt text of every figure.

No chapter may have a serious or critical violation, and every image of a chapter's
article (the figures the code cells draw, the grader's plots) has an alt text in Chinese:
myst-nb writes the figure cell's ``mystnb.image.alt`` metadata, and without it the alt is
the image's file name. The per-page counts are written to _build/a11y/axe.json (all
impacts, best-practice rules included, for the record). The feedback page and the class
report are audited in test_feedback_page.py and test_class_report.py with the same
helper (tests/a11y.py). A control page with known faults proves the audit sees them.

Needs Chromium (skipped without it unless CI=true, like the other browser tests).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bookbuild import book_build  # noqa: E402,F401  (the session fixture)

import a11y  # noqa: E402
from headless import Browser, StaticServer, chapter_pages, find_chromium  # noqa: E402

if not find_chromium():
    if os.environ.get("CI") == "true":
        raise RuntimeError("Chromium is required in CI: apt-get install chromium fonts-noto-cjk")
    pytest.skip("Chromium is not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def browser():
    with Browser(offline=True) as b:
        yield b


def test_the_audit_sees_known_faults(browser, tmp_path):
    """A page with grey text on white, an image without alt, a nameless button and no
    language is reported, so a clean result below means something."""
    (tmp_path / "bad.html").write_text(
        '<!DOCTYPE html><html><head><title>x</title></head><body>'
        '<p style="color:#bbb;background:#fff">浅灰色的字</p>'
        '<img src="data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==">'
        '<button></button></body></html>', encoding="utf-8")
    browser.clear_events()
    browser.open((tmp_path / "bad.html").as_uri())
    found = {v["id"]: v["impact"] for v in a11y.audit(browser)}
    assert {"color-contrast", "image-alt", "button-name", "html-has-lang"} <= set(found), found
    assert {found[rule] for rule in ("color-contrast", "image-alt", "button-name")} <= set(a11y.BLOCKING)
    assert len(a11y.images_without_chinese_alt(browser)) == 1


def test_every_chapter_passes_the_audit(browser, book_build):
    pages = chapter_pages(book_build.html_dir)
    report, failures = {}, []
    with StaticServer(book_build.html_dir) as server:
        for page in pages:
            browser.clear_events()
            browser.open(server.base_url + page)
            wcag = a11y.audit(browser)
            practice = a11y.audit(browser, ["best-practice"])
            figures = browser.evaluate(a11y.IMAGES_JS, "article img")
            unnamed = a11y.images_without_chinese_alt(browser, "article img")
            report[page] = {"wcag21aa": {k: list(v) for k, v in a11y.counts(wcag).items()},
                            "best_practice": {k: list(v) for k, v in a11y.counts(practice).items()},
                            "violations": [v["id"] for v in wcag + practice], "figures": len(figures)}
            if a11y.blocking(wcag):
                failures.append(f"{page}:\n{a11y.describe(a11y.blocking(wcag))}")
            if unnamed:
                failures.append(f"{page}: figures without a Chinese alt text: {unnamed}")
    out = book_build.root / "_build" / "a11y" / "axe.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, ensure_ascii=False, indent=1), encoding="utf-8")
    assert not failures, "\n".join(failures)
    # the chapters with code draw figures, and every one of them was checked
    assert sum(r["figures"] for r in report.values()) >= 25, report
