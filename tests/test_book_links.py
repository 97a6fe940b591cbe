"""Every hint that names a typical mistake or explains an exception links to the section of the
book that covers it, and every link resolves to an existing anchor of the built book.

The anchors are read from the built HTML (tests/bookbuild.py builds the book once per session),
never from the sources: another agent may be editing book/, and the links must follow what the
build really has. Only anchors Sphinx derives from a heading's ASCII words or a MyST label are
used (the numbered ones, id5, id12, ..., move when a section is added before them), and the
heading found at each anchor must still be the one judge.BOOK_SECTIONS names.
"""
from __future__ import annotations

import html
import re
from pathlib import Path
from posixpath import normpath

import pytest
import torch
import yaml

from bookbuild import book_build  # noqa: F401  (pytest fixture)
from lossgrader import check, engine, judge, runtime
from lossgrader.exercises import EXERCISES

REPO = Path(__file__).resolve().parents[1]


def _anchors(page_html: str) -> dict:
    """{id: the text of the heading of the section it names (or "")} of a built page."""
    out = {}
    for m in re.finditer(r'\bid="([^"]+)"', page_html):
        out.setdefault(m.group(1), "")
    for m in re.finditer(r'<section id="([^"]+)">\s*((?:<span id="[^"]+"></span>\s*)*)<h\d>(.*?)</h\d>', page_html, re.S):
        heading = html.unescape(re.sub(r"<[^>]+>", "", m.group(3))).replace("#", "")
        for anchor in [m.group(1)] + re.findall(r'id="([^"]+)"', m.group(2)):
            out[anchor] = heading
    return out


def _same_heading(title: str, heading: str) -> bool:
    """The title's Chinese runs (or, without any, its ASCII words) all appear in the heading;
    formulas are typeset differently in the two and are left out."""
    runs = re.findall(r"[\u4e00-\u9fff]+", title)
    if not runs:
        runs = [w.lower() for w in re.findall(r"[A-Za-z]+", title)]
        heading = heading.lower()
    return all(run in heading for run in runs)


def test_every_book_section_exists_in_the_built_book(book_build):  # noqa: F811
    pages = {}
    missing = []
    for link, title in judge.BOOK_SECTIONS.items():
        page, _, anchor = link.partition("#")
        assert page.startswith("book/") and page.endswith(".html") and anchor, link
        assert not re.fullmatch(r"id\d+", anchor), f"{link}: a numbered anchor moves when the book changes"
        if page not in pages:
            path = book_build.html_dir / page
            pages[page] = _anchors(path.read_text(encoding="utf-8")) if path.is_file() else None
        anchors = pages[page]
        if anchors is None:
            missing.append(f"{link}: no page {page}")
        elif anchor not in anchors:
            missing.append(f"{link}: no anchor #{anchor} in {page}")
        elif not _same_heading(title, anchors[anchor]):
            missing.append(f"{link}: the heading there is {anchors[anchor]!r}, not {title!r}")
    assert not missing, "\n".join(missing)


def _mistake_links():
    for ex in EXERCISES.values():
        for m in ex.mistakes:
            yield ex, ex.mistake_hint(m)


def test_every_typical_mistake_hint_links_to_the_book():
    unlinked = [f"{ex.id}: {hint.text[:40]}" for ex, hint in _mistake_links() if hint.book is None]
    assert not unlinked, unlinked
    for ex in EXERCISES.values():
        assert ex.book in judge.BOOK_SECTIONS, f"{ex.id}: no book section"


def test_every_exception_explanation_links_to_the_book():
    for ex in EXERCISES.values():
        for kind, pattern, types, explanation, text, book in judge._EXCEPTIONS:
            _, _, hint = judge.exception_kind({"type": (types or ("RuntimeError",))[0],
                                               "message": _EXAMPLE_MESSAGES[kind]}, ex)
            assert hint is not None and hint.premise == "exception", (ex.id, kind)
            assert hint.key == f"exception-{kind}" or any(h is hint for _, _, h in ex.error_hints), (ex.id, kind)
            assert hint.book in judge.BOOK_SECTIONS, (ex.id, kind)
        for needle, explanation, hint in ex.error_hints:
            assert hint.book in judge.BOOK_SECTIONS and explanation, (ex.id, needle)


_EXAMPLE_MESSAGES = {
    "super-init": "'FocalLoss' object has no attribute '_parameters'",
    "view": "view size is not compatible with input tensor's size and stride",
    "inplace-leaf": "a leaf Variable that requires grad is being used in an in-place operation.",
    "inplace-version": "one of the variables needed for gradient computation has been modified by an inplace operation",
    "numpy-grad": "Can't call numpy() on Tensor that requires grad. Use tensor.detach().numpy() instead.",
    "device": "Expected all tensors to be on the same device, but found at least two devices, cuda:0 and cpu!",
    "index": "one_hot is only applicable to index tensor of type LongTensor.",
    "dtype": "expected scalar type Float but found Double",
    "shape": "The size of tensor a (4) must match the size of tensor b (6) at non-singleton dimension 1",
    "dim": "Dimension out of range (expected to be in range of [-1, 0], but got 1)",
    "bool": "Boolean value of Tensor with more than one value is ambiguous",
    "argcount": "mse_loss() takes 2 positional arguments but 3 were given",
}


def test_the_examples_cover_every_kind():
    assert set(_EXAMPLE_MESSAGES) == {kind for kind, *_ in judge._EXCEPTIONS}


def test_online_address_is_the_published_book_of_the_repository():
    config = yaml.safe_load((REPO / "_config.yml").read_text(encoding="utf-8"))
    owner, repo = config["repository"]["url"].rstrip("/").split("/")[-2:]
    assert judge.BOOK_ONLINE == f"https://{owner}.github.io/{repo}/"


def test_local_address_reaches_the_build_from_a_feedback_page():
    page = "feedback/student/02_regression/02_regression.html"
    assert normpath(str(Path(page).parent / judge.BOOK_LOCAL)) == "_build/html"


def test_reports_link_online_from_check_and_locally_from_the_autograder():
    def mse_grad(pred, target):
        return -2 * (target - pred)
    report = check("mse_grad", mse_grad, device="cpu")
    link = judge.BOOK_ONLINE + "book/appendix_errata.html#mse-1-n"
    assert f'href="{link}"' in report._repr_html_() and "（课本：MSE 的梯度漏掉了 1/n）" in str(report)
    ex = EXERCISES["mse_grad"]
    cases, expectations = ex.cases(None, hidden=True)
    ran = runtime.run(ex.request(cases, "cpu", hidden=True), mse_grad)
    graded = engine.grade(ex, cases, expectations, ran["cases"], ran["captured"], torch.device("cpu"), 1.0, True, 0.0)
    assert f'href="{judge.BOOK_LOCAL}book/appendix_errata.html#mse-1-n"' in graded._repr_html_()
