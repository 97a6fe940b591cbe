"""The book's computed claims are checked by its own build.

Every number quoted in a chapter's prose is either pasted from the code beside it with
MyST-NB's glue (``{glue:text}`key:fmt```, the value glued by ``glue("key", value)`` in a
hidden cell) or asserted by a hidden cell next to it; every claim about PyTorch behaviour
(raises, returns nan, is finite, is contiguous, a default) is a plain ``assert`` in a cell
tagged ``remove-cell``. The build executes the notebooks with ``raise_on_error`` and runs
Sphinx with ``-W``, so a claim that drifts from its code fails
``jupyter-book build . -W -n --keep-going``.

This module lists those claims per page (so that removing a check is noticed), checks that
every pasted value exists and is shown, and builds a small book once to prove that a broken
claim does fail the build. docs/book.md ("Claims the build checks") says how to add one.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bookbuild import ROOT, book_build, has_class, select  # noqa: E402,F401

BOOK = ROOT / "book"

#: Per page: (assert statements in hidden cells, values glued by those cells, glue roles in
#: the prose). Pages without code paste values from the chapters (``nb.ipynb::key``).
#: A change to a chapter's checks changes this table; removing a check must be deliberate.
EXPECTED_CLAIMS = {
    "01_overview": (67, 27, 29),
    "02_regression": (30, 15, 15),
    "03_classification": (56, 18, 22),
    "04_other": (27, 6, 6),
    "05_selection": (25, 25, 27),
    "06_code": (23, 4, 4),
    "07_summary": (0, 0, 3),
    "appendix_errata": (0, 0, 3),
}
#: Every chapter keeps at least this many checks (a floor that survives small edits).
MIN_ASSERTS_PER_CHAPTER = 20

GLUE_ROLE_RE = re.compile(r"\{glue(?::(\w+))?\}`([^`]+)`")
HIDDEN = "remove-cell"


def notebook(name: str) -> dict:
    return json.loads((BOOK / f"{name}.ipynb").read_text(encoding="utf-8"))


def cell_source(cell: dict) -> str:
    source = cell["source"]
    return "".join(source) if isinstance(source, list) else source


def hidden_cells(nb: dict) -> list[str]:
    return [cell_source(c) for c in nb["cells"]
            if c["cell_type"] == "code" and HIDDEN in c.get("metadata", {}).get("tags", [])]


def asserts_and_glue(code: str) -> tuple[int, list[str]]:
    """Assert statements and glued keys of a code cell (parsed, so comments do not count)."""
    tree = ast.parse(code)
    asserts = sum(isinstance(node, ast.Assert) for node in ast.walk(tree))
    keys = [node.args[0].value for node in ast.walk(tree)
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "glue"
            and node.args and isinstance(node.args[0], ast.Constant)]
    return asserts, keys


def prose(name: str) -> str:
    path = BOOK / f"{name}.md"
    if path.exists():
        return path.read_text(encoding="utf-8")
    return "\n".join(cell_source(c) for c in notebook(name)["cells"] if c["cell_type"] == "markdown")


def glue_roles(text: str) -> list[tuple[str | None, str, str]]:
    """(document, key, format) of every glue role; document is None for a local key."""
    roles = []
    for _kind, body in GLUE_ROLE_RE.findall(text):
        doc = None
        if "::" in body:
            doc, body = body.split("::", 1)
        key, _, fmt = body.partition(":")
        roles.append((doc, key, fmt))
    return roles


def claims(name: str) -> tuple[int, int, int]:
    asserts, keys = 0, []
    if (BOOK / f"{name}.ipynb").exists():
        for code in hidden_cells(notebook(name)):
            a, k = asserts_and_glue(code)
            asserts += a
            keys += k
    return asserts, len(keys), len(glue_roles(prose(name)))


def glued_keys(name: str) -> set[str]:
    keys: list[str] = []
    for code in hidden_cells(notebook(name)):
        keys += asserts_and_glue(code)[1]
    return set(keys)


def toc_pages() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    files = [toc["root"]] + [ch["file"] for part in toc["parts"] for ch in part["chapters"]]
    return [Path(f).name for f in files]


def chapters_with_code() -> list[str]:
    return [name for name in toc_pages() if (BOOK / f"{name}.ipynb").exists()]


# -- the claims, listed per page --------------------------------------------------------


def test_each_page_lists_its_checked_claims():
    found = {name: claims(name) for name in toc_pages() if any(claims(name))}
    table = "\n".join(f"    {name!r}: {value}," for name, value in found.items())
    assert found == EXPECTED_CLAIMS, (
        "the checks of the book changed; (asserts, glued values, pasted values) per page are "
        f"now:\n{table}\nupdate EXPECTED_CLAIMS if the change is intended"
    )


def test_every_chapter_checks_its_claims():
    for name in chapters_with_code():
        asserts, glued, pasted = claims(name)
        assert asserts >= MIN_ASSERTS_PER_CHAPTER, f"{name}: only {asserts} asserted claims"
        assert glued and pasted, f"{name}: no number of its prose comes from its code"


def test_every_notebook_can_glue_without_myst_nb():
    # The pages open in Colab, where myst_nb is missing: the first hidden cell falls back
    # to a glue() that does nothing, and comes before any other hidden cell.
    for name in chapters_with_code():
        cells = hidden_cells(notebook(name))
        assert cells, f"{name}: no hidden check cells"
        first = cells[0]
        assert "from myst_nb import glue" in first and "except ImportError" in first, name


def test_hidden_cells_only_check():
    # A hidden cell is not shown, so it must not print or draw: it asserts and glues.
    for name in chapters_with_code():
        for code in hidden_cells(notebook(name))[1:]:
            asserts, keys = asserts_and_glue(code)
            assert asserts or keys, f"{name}: a hidden cell checks nothing:\n{code}"
            assert not re.search(r"\b(print|display|plt\.show)\(", code), (
                f"{name}: a hidden cell shows output:\n{code}")


def test_every_pasted_value_is_glued_and_every_glued_value_is_pasted():
    used: dict[str, set[str]] = {name: set() for name in chapters_with_code()}
    for name in toc_pages():
        for doc, key, fmt in glue_roles(prose(name)):
            source = Path(doc).stem if doc else name
            assert source in used, f"{name}: pastes {key!r} from {doc!r}, which is not a chapter"
            assert key in glued_keys(source), f"{name}: pastes {key!r}, which {source} never glues"
            assert fmt, f"{name}: {key!r} is pasted without a format (e.g. :.3f)"
            used[source].add(key)
    for name, keys in used.items():
        unused = glued_keys(name) - keys
        assert not unused, f"{name}: glues {sorted(unused)} but no page shows them"


def test_built_pages_show_every_pasted_value(book_build):
    for name in toc_pages():
        expected = len(glue_roles(prose(name)))
        page = book_build.page(f"book/{name}")
        shown = select(page, lambda tag, attrs: tag == "span" and has_class(attrs, "pasted-text"))
        assert len(shown) == expected, f"{name}: {expected} pasted values, {len(shown)} in the HTML"
        assert all(text["text"].strip() for text in shown), f"{name}: an empty pasted value"
        # hidden cells are not in the page
        assert "构建检查" not in page, f"{name}: a hidden check cell is shown"


# -- a broken claim fails the build ------------------------------------------------------


def _write_notebook(path: Path, cells: list[tuple[str, str, list[str]]]) -> None:
    nb_cells = []
    for kind, text, tags in cells:
        cell = {"cell_type": kind, "metadata": {"tags": tags} if tags else {}, "source": text}
        if kind == "code":
            cell.update(execution_count=None, outputs=[])
        nb_cells.append(cell)
    nb = {"cells": nb_cells, "nbformat": 4, "nbformat_minor": 4,
          "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python",
                                      "name": "python3"}}}
    path.write_text(json.dumps(nb), encoding="utf-8")


def test_the_book_configuration_fails_on_a_broken_check():
    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    execute = config["execute"]
    assert execute["raise_on_error"] is True and execute["allow_errors"] is False
    from bookbuild import jupyter_book_command

    assert {"-W", "-n"} <= set(jupyter_book_command())


def _jupyter_book() -> str | None:
    exe = shutil.which("jupyter-book") or str(Path(sys.executable).with_name("jupyter-book"))
    return exe if Path(exe).exists() else None


def _build_small_book(root: Path, pages: list[str]) -> tuple[int, str]:
    """Build a book of the given pages with the real book's execution settings."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    (root / "_config.yml").write_text(yaml.safe_dump({
        "title": "claims", "only_build_toc_files": True,
        "execute": {**config["execute"], "execute_notebooks": "force"},
        "sphinx": {"config": {"nb_execution_show_tb": True}},
    }), encoding="utf-8")
    toc = {"format": "jb-book", "root": pages[0]}
    if pages[1:]:
        toc["chapters"] = [{"file": page} for page in pages[1:]]
    (root / "_toc.yml").write_text(yaml.safe_dump(toc), encoding="utf-8")
    proc = subprocess.run([_jupyter_book(), "build", str(root), "-W", "-n", "--keep-going"],
                          cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=600)
    return proc.returncode, re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout)


GLUE_FALLBACK = ("try:\n    from myst_nb import glue\nexcept ImportError:\n"
                 "    def glue(name, variable, display=False):\n        return None\n")


@pytest.mark.skipif(_jupyter_book() is None, reason="jupyter-book is not installed")
def test_a_broken_claim_fails_the_build(tmp_path):
    """Two small books with the real book's execution settings and the build command's
    -W -n. In the first, a chapter's hidden assert no longer holds for its code: the build
    stops with the assertion. In the second, a right chapter pastes its value, and a page
    pastes a value that nobody glues: the build fails and names the key."""
    broken = tmp_path / "broken"
    broken.mkdir()
    _write_notebook(broken / "chapter.ipynb", [
        ("markdown", "# Chapter\n\nThe prose says the sum of the values is 6.", []),
        ("code", GLUE_FALLBACK, ["remove-cell"]),
        ("code", "values = [1.0, 2.0, 4.0]", []),
        ("code", "assert sum(values) == 6, 'the prose says 6'", ["remove-cell"]),
    ])
    code, log = _build_small_book(broken, ["chapter"])
    assert code != 0, log[-3000:]
    assert "AssertionError" in log and "the prose says 6" in log, log[-3000:]

    pasted = tmp_path / "pasted"
    pasted.mkdir()
    _write_notebook(pasted / "chapter.ipynb", [
        ("markdown", "# Chapter\n\nThe mean is {glue:text}`mean:.2f`.", []),
        ("code", GLUE_FALLBACK, ["remove-cell"]),
        ("code", "values = [1.0, 2.0, 4.0]\nmean = sum(values) / len(values)", []),
        ("code", "assert abs(mean - 7 / 3) < 1e-12\nglue('mean', mean, display=False)",
         ["remove-cell"]),
    ])
    (pasted / "summary.md").write_text(
        "# Summary\n\nFrom the chapter: {glue:text}`chapter.ipynb::median:.2f`.\n",
        encoding="utf-8")
    code, log = _build_small_book(pasted, ["chapter", "summary"])
    assert code != 0, log[-3000:]
    assert "'median' not found" in log, log[-3000:]
    page = (pasted / "_build" / "html" / "chapter.html").read_text(encoding="utf-8")
    assert 'class="pasted-text">2.33<' in page
