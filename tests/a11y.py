"""The accessibility audit shared by the browser tests: axe-core run in a page that
Playwright opened (tests/test_accessibility.py for the book, test_feedback_page.py and
test_class_report.py for the pages lossgrader writes).

axe-core's ``axe.min.js`` comes from the ``axe-playwright-python`` package (PyPI; it ships
the file, requirements.txt installs it): it is evaluated in the page through the driver,
which no Content-Security-Policy of the page can refuse, so pages that run no script
(the feedback pages, the class report) are audited as they are.
"""
from __future__ import annotations

import re
from pathlib import Path

#: The rules of WCAG 2.0 and 2.1, levels A and AA.
WCAG21_AA = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]
#: What fails a test: axe's two highest impacts.
BLOCKING = ("serious", "critical")
#: Chinese characters (CJK Unified Ideographs): what a Chinese alt text must contain.
CHINESE = re.compile(r"[\u4e00-\u9fff]")


def axe_source() -> str:
    from axe_playwright_python import base

    return Path(base.AXE_FILE_PATH).read_text(encoding="utf-8")


def audit(browser, tags=WCAG21_AA) -> list[dict]:
    """axe's violations on the page the Browser (book/_ext/headless.py) shows:
    [{id, impact, help, nodes: [{target, html}]}]."""
    if not browser.evaluate("typeof window.axe === 'object'"):
        browser.evaluate(axe_source())
    result = browser.evaluate("(options) => axe.run(document, options)",
                              {"runOnly": {"type": "tag", "values": list(tags)}, "resultTypes": ["violations"]})
    return [{"id": v["id"], "impact": v["impact"], "help": v["help"],
             "nodes": [{"target": n["target"], "html": n["html"][:200]} for n in v["nodes"]]}
            for v in result["violations"]]


def blocking(violations) -> list[dict]:
    return [v for v in violations if v["impact"] in BLOCKING]


def counts(violations) -> dict:
    """{impact: (rules, elements)}: what the reports quote per page."""
    out = {}
    for v in violations:
        rules, nodes = out.get(v["impact"], (0, 0))
        out[v["impact"]] = (rules + 1, nodes + len(v["nodes"]))
    return out


def describe(violations) -> str:
    return "\n".join(f"{v['impact']} {v['id']} ({v['help']}): " +
                     "; ".join(f"{n['target']} {n['html']}" for n in v["nodes"][:3]) for v in violations)


#: The images of a page (or of its <article>) and their alt text.
IMAGES_JS = r"""
((selector) => Array.from(document.querySelectorAll(selector)).map((img) => ({
  src: (img.currentSrc || img.src).slice(0, 80), alt: img.getAttribute("alt")})))
"""


def images_without_chinese_alt(browser, selector="img") -> list[dict]:
    """Images whose alt text is missing, empty or has no Chinese in it (a file name)."""
    return [img for img in browser.evaluate(IMAGES_JS, selector) if not CHINESE.search(img["alt"] or "")]
