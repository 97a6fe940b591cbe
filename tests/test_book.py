"""Build the Jupyter Book (once per session, see bookbuild.py) and check what it contains.

These tests read the built HTML under _build/html; test_browser.py opens the same
build in headless Chromium.
"""

from __future__ import annotations

import html
import re
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bookbuild import (  # noqa: E402
    ROOT,
    book_build,  # noqa: F401  (the session fixture)
    code_blocks,
    has_class,
    main_text,
    select,
)

from lossbook import exercise_colab_url  # noqa: E402  (book/_ext, put on sys.path by bookbuild)

#: Navigation of the book: the preface, then the seed tutorial's sections in the seed's
#: order with the seed's titles, then the appendices: the notation table and the errata.
#: (docname, title, number)
EXPECTED_NAV = [
    ("book/00_preface", "前言", None),
    ("book/01_overview", "损失函数概述", 1),
    ("book/02_regression", "回归损失函数", 2),
    ("book/03_classification", "分类损失函数", 3),
    ("book/04_other", "其他损失函数", 4),
    ("book/05_selection", "损失函数选择", 5),
    ("book/06_code", "代码实现", 6),
    ("book/07_summary", "总结", 7),
    ("book/notation", "记号表", None),
    ("book/appendix_errata", "勘误", None),
]
#: Chapters and the exercise notebook that each one links.
CHAPTER_EXERCISES = {
    "book/01_overview": "01_overview",
    "book/02_regression": "02_regression",
    "book/03_classification": "03_classification",
    "book/04_other": "04_other",
    "book/05_selection": "05_selection",
    "book/06_code": "06_code",
}
CJK_RE = re.compile(r"[\u2e80-\u9fff\uf900-\ufaff\uff00-\uffef]")


def config() -> dict:
    return yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))


def nav_entries(page_html: str) -> list[tuple[str, str]]:
    """(link text, href) of the first-level entries of the sidebar navigation, in order."""
    assert 'class="bd-links bd-docs-nav"' in page_html, "the page has no sidebar navigation"
    start = page_html.index('class="bd-links bd-docs-nav"')
    end = page_html.index("</nav>", start)
    links = select(
        page_html[start:end],
        lambda tag, attrs: tag == "a" and has_class(attrs, "reference"),
    )
    return [(" ".join(a["text"].split()), a["attrs"].get("href", "")) for a in links]


def test_build_has_no_warnings(book_build):
    assert book_build.returncode == 0, "\n".join(book_build.problems) or book_build.log[-3000:]
    assert book_build.problems == [], "the book build reported:\n" + "\n".join(book_build.problems)


def test_build_is_reasonably_fast(book_build):
    # CI has 2 cores and 90 minutes for everything; the whole book must stay well below.
    assert book_build.seconds < 600, f"the book build took {book_build.seconds:.0f} s"


def test_toc_mirrors_the_seed_sections(book_build):
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    files = [toc["root"]] + [ch["file"] for part in toc["parts"] for ch in part["chapters"]]
    assert files == [doc for doc, _, _ in EXPECTED_NAV]

    for docname, _, _ in EXPECTED_NAV:
        entries = nav_entries(book_build.page(docname))
        texts = [text for text, _ in entries]
        assert len(entries) == len(EXPECTED_NAV), f"{docname}: navigation is {texts}"
        for (text, href), (target, title, number) in zip(entries, EXPECTED_NAV):
            expected_file = Path(target).name + ".html"
            assert href in (expected_file, "#"), f"{docname}: {text!r} links {href!r}"
            if number is None:
                assert title in text, f"{docname}: expected {title!r} in the navigation, got {text!r}"
            else:
                assert text == f"{number}. {title}", f"{docname}: navigation entry {text!r}"


def test_pages_are_chinese_with_local_math(book_build):
    for docname, title, _ in EXPECTED_NAV:
        page = book_build.page(docname)
        assert re.search(r'<html[^>]*\blang="zh-CN"', page), f"{docname}: page language is not zh-CN"
        heading = select(page, lambda tag, attrs: tag == "h1")
        assert heading and title in heading[0]["text"], f"{docname}: first heading is not {title!r}"
        for tag in select(page, lambda tag, attrs: tag in ("script", "link") and (attrs.get("src") or attrs.get("href"))):
            url = tag["attrs"].get("src") or tag["attrs"].get("href")
            if tag["tag"] == "link" and tag["attrs"].get("rel") not in ("stylesheet", "preload"):
                continue
            assert not re.match(r"^(https?:)?//", url), f"{docname}: loads {url} from the network"
    # Math is typeset by the vendored MathJax.
    page = book_build.page("book/02_regression")
    assert 'src="../_static/mathjax/tex-svg-full.js' in page
    assert (book_build.html_dir / "_static" / "mathjax" / "tex-svg-full.js").stat().st_size > 1_000_000


def test_repository_url_is_written_only_in_the_config():
    # Pages link exercises with the {exercise} role, which reads _config.yml: a
    # hard-coded URL would go stale when the repository moves.
    url = config()["repository"]["url"]
    owner_repo = "/".join(url.rstrip("/").split("/")[-2:])
    for docname, _, _ in EXPECTED_NAV:
        for source in ROOT.glob(f"{docname}.*"):
            text = source.read_text(encoding="utf-8")
            assert owner_repo not in text, f"{source.name} hard-codes {owner_repo}"
            assert "colab.research.google.com" not in text, f"{source.name} hard-codes a Colab link"


def test_each_notebook_executes_in_well_under_a_minute(book_build):
    # CI runs the whole test suite on 2 cores; the book must stay a small part of it.
    times = {
        Path(path).stem: float(seconds)
        for path, seconds in re.findall(r"^(\S+\.ipynb): Executed notebook in ([0-9.]+) seconds", book_build.log, re.M)
    }
    slow = {name: t for name, t in times.items() if t >= 60}
    assert not slow, f"notebooks taking a minute or more to execute: {slow}"


def test_each_chapter_links_its_exercise_in_colab(book_build):
    repo = config()["repository"]
    assert repo["url"] == "https://github.com/lossfn-course/loss-functions-zh"
    for docname, assignment in CHAPTER_EXERCISES.items():
        links = select(
            book_build.page(docname),
            lambda tag, attrs: tag == "a" and has_class(attrs, "exercise-link"),
        )
        expected = exercise_colab_url(repo["url"], repo["branch"], assignment)
        assert expected == (
            "https://colab.research.google.com/github/lossfn-course/loss-functions-zh/blob/main/"
            f"exercises/{assignment}/{assignment}.ipynb"
        )
        hrefs = [a["attrs"]["href"] for a in links]
        assert expected in hrefs, f"{docname} does not link its exercise (links: {hrefs})"
        texts = [" ".join(a["text"].split()) for a in links if a["attrs"]["href"] == expected]
        assert f"在 Colab 中打开练习 {assignment}" in texts
        assert (ROOT / "exercises" / assignment / f"{assignment}.ipynb").is_file()


def test_notebook_pages_have_a_colab_launch_button(book_build):
    repo = config()["repository"]
    for docname, _, _ in EXPECTED_NAV:
        if not (ROOT / f"{docname}.ipynb").exists():
            continue
        expected = (
            f"https://colab.research.google.com/github/lossfn-course/loss-functions-zh/blob/"
            f"{repo['branch']}/{docname}.ipynb"
        )
        assert f'href="{expected}"' in book_build.page(docname), f"{docname}: no Colab button"


def test_code_outputs_and_figures_are_in_the_html(book_build):
    for docname, _, _ in EXPECTED_NAV:
        source = ROOT / f"{docname}.ipynb"
        if not source.exists():
            continue
        page = book_build.page(docname)
        nb = nbformat.read(source, as_version=4)
        code_cells = [c for c in nb.cells if c.cell_type == "code"]
        shows = sum(c.source.count("plt.show()") for c in code_cells)
        outputs = select(page, lambda tag, attrs: tag == "div" and has_class(attrs, "cell_output"))
        # Cell outputs are copied to _images/ under the hash of their content.
        images = select(
            page,
            lambda tag, attrs: tag == "img"
            and re.fullmatch(r"\.\./_images/[0-9a-f]{64}\.(svg|png|jpg|jpeg)", attrs.get("src", "")),
        )
        assert len(images) >= shows, f"{docname}: {shows} plt.show() calls but {len(images)} figures"
        if code_cells:
            assert outputs, f"{docname}: code cells but no outputs in the HTML"
        assert "output stderr" not in page and "output traceback" not in page, (
            f"{docname}: a cell wrote to stderr or raised"
        )


def test_figures_are_labelled_in_chinese(book_build):
    # Every figure's titles, labels and legends are Chinese, drawn with the course's CJK font
    # (tests/test_fonts.py checks that no glyph falls back to a font without it). Matplotlib's
    # SVGs name each glyph "<Font>-<glyph>".
    svgs = list((book_build.html_dir / "_images").glob("*.svg"))
    assert svgs, "no SVG figures were built"
    english_only = [svg.name for svg in svgs if "NotoSansCJK" not in svg.read_text(encoding="utf-8")]
    assert len(english_only) <= len(svgs) // 10, f"figures without Chinese text: {english_only}"


def test_code_chapter_shows_the_corrected_mae_snippet(book_build):
    page = book_build.page("book/06_code")
    blocks = [html.unescape(b) for b in code_blocks(page)]
    assert any("loss = mae_loss(pred, target)" in b for b in blocks), "corrected MAE line missing"
    # The seed's snippet (mae_loss = nn.L1Loss() followed by loss = mse_loss(pred, target),
    # which computes MSE) may only appear as a counter-example: the code itself or the
    # text just before it must say that it is wrong.
    wrong = re.compile(r"mae_loss\s*=\s*nn\.L1Loss\(\)\s*\n\s*\w+\s*=\s*mse_loss\(pred,\s*target\)")
    marker = re.compile(r"错误|错在|不正确|wrong|bug|seed's", re.IGNORECASE)
    text = main_text(page)
    for match in wrong.finditer(text):
        context = text[max(0, match.start() - 300) : match.end() + 120]
        assert marker.search(context), (
            "the seed's MAE snippet is shown without being marked wrong:\n" + context
        )


ERRATA_ITEMS = {
    "MAE snippet computes MSE": [r"mae_loss\(pred,\s*target\)", r"mse_loss\(pred,\s*target\)"],
    "MSE gradient needs 1/n": [r"MSE", r"\\frac\{\s*[12]\s*\}\{\s*n\s*\}|[12]\s*/\s*n"],
    "CombinedLoss needs one-hot targets for Dice": [r"CombinedLoss", r"one-hot|one_hot|独热"],
    ".view(-1) fails on non-contiguous tensors": [r"\.view\(-1\)", r"contiguous|连续", r"reshape"],
    "contrastive label convention": [r"对比损失|[Cc]ontrastive", r"y\s*=\s*0", r"y\s*=\s*1"],
    "focal loss p_t and alpha": [r"[Ff]ocal", r"p_t|p_\{t\}", r"\\alpha_t|\\alpha_\{t\}|alpha_t"],
    "focal loss does not itself rebalance classes": [r"解决类别不平衡", r"简单样本", r"加权交叉熵",
                                                     r"pos_weight"],
}


@pytest.mark.parametrize("item", list(ERRATA_ITEMS))
def test_errata_lists_each_correction(book_build, item):
    page = book_build.page("book/appendix_errata")
    text = main_text(page) + "\n" + "\n".join(html.unescape(b) for b in code_blocks(page))
    for pattern in ERRATA_ITEMS[item]:
        assert re.search(pattern, text), f"errata: {item!r} not found (pattern {pattern!r})"


# -- the {exercise} role on its own (small Sphinx builds, no notebooks) -------------------


def test_exercise_url_is_computed_from_the_repository():
    from lossbook import github_owner_repo

    assert github_owner_repo("https://github.com/lossfn-course/loss-functions-zh.git/") == (
        "lossfn-course",
        "loss-functions-zh",
    )
    assert exercise_colab_url("https://github.com/a/b", "dev", "04_other") == (
        "https://colab.research.google.com/github/a/b/blob/dev/exercises/04_other/04_other.ipynb"
    )
    for bad in ["https://gitlab.com/a/b", "https://github.com/a", "github.com/a/b"]:
        with pytest.raises(ValueError):
            github_owner_repo(bad)


def _build_role_page(tmp_path, source, repository_url, make_notebook=True):
    """Build one reST page with the lossbook extension; return (html, warnings)."""
    import io

    from sphinx.application import Sphinx

    src = tmp_path / "src"
    src.mkdir()
    (src / "index.rst").write_text("Page\n====\n\n" + source + "\n", encoding="utf-8")
    if make_notebook:
        (src / "exercises" / "02_regression").mkdir(parents=True)
        (src / "exercises" / "02_regression" / "02_regression.ipynb").write_text("{}")
    warnings = io.StringIO()
    app = Sphinx(
        srcdir=str(src),
        confdir=None,
        outdir=str(tmp_path / "out"),
        doctreedir=str(tmp_path / "doctrees"),
        buildername="html",
        confoverrides={
            "extensions": ["lossbook"],
            "html_theme": "sphinx_book_theme",
            "html_theme_options": {"repository_url": repository_url, "repository_branch": "main"},
            "exclude_patterns": ["exercises"],
        },
        status=io.StringIO(),
        warning=warnings,
        freshenv=True,
    )
    app.build()
    return (tmp_path / "out" / "index.html").read_text(encoding="utf-8"), warnings.getvalue()


def test_exercise_role_renders_the_colab_link(tmp_path):
    page, warnings = _build_role_page(
        tmp_path, "Try :exercise:`02_regression`.", "https://github.com/lossfn-course/loss-functions-zh"
    )
    assert "WARNING" not in warnings, warnings
    links = select(page, lambda tag, attrs: tag == "a" and has_class(attrs, "exercise-link"))
    assert [(a["attrs"]["href"], a["text"]) for a in links] == [
        (
            "https://colab.research.google.com/github/lossfn-course/loss-functions-zh/blob/main/"
            "exercises/02_regression/02_regression.ipynb",
            "在 Colab 中打开练习 02_regression",
        )
    ]


@pytest.mark.parametrize(
    "source, repository_url, make_notebook, message",
    [
        (":exercise:`Regression`", "https://github.com/o/r", True, "is not an assignment id"),
        (":exercise:`02_regression`", "https://gitlab.com/o/r", True, "repository: url:"),
        (":exercise:`02_regression`", "https://github.com/o/r", False, "does not exist"),
    ],
)
def test_exercise_role_warns_instead_of_linking_nowhere(
    tmp_path, source, repository_url, make_notebook, message
):
    page, warnings = _build_role_page(tmp_path, source, repository_url, make_notebook)
    assert message in warnings, warnings
    assert "colab.research.google.com/github" not in page
