"""Sphinx extension for the loss-functions book.

What it adds:

* the ``exercise`` role: ``{exercise}`02_regression``` renders the Chinese link
  "在 Colab 中打开练习 02_regression" to
  ``https://colab.research.google.com/github/<owner>/<repo>/blob/<branch>/exercises/02_regression/02_regression.ipynb``.
  Owner, repository and branch come from ``repository: url:`` / ``branch:`` in
  ``_config.yml`` (Jupyter Book passes them to Sphinx as the theme options
  ``repository_url`` / ``repository_branch``), so the URL is written in one place only.
  An unknown assignment id, a repository URL that is not a GitHub one, or an
  exercise notebook that is missing from the source tree is reported as a Sphinx
  warning (and so fails a ``-W`` build) instead of producing a dead link.
* Chinese full-text search: Sphinx's ``zh`` search language segments text with
  ``jieba``; we load a small user dictionary of the course's terms (交叉熵, 均方误差, ...)
  so that each term is indexed as a whole word, and we keep jieba's progress
  messages off stderr.
* a fix for pages that would list the same <script> twice (see ``_dedupe_scripts``).
"""

from __future__ import annotations

import logging as _pylogging
import re
from pathlib import Path
from urllib.parse import urlparse

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.config import Config
from sphinx.util import logging

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
#: jieba user dictionary ("word frequency" per line) with the course's terms.
SEARCH_DICT = HERE / "zh_search_terms.txt"

DEFAULT_COLAB_URL = "https://colab.research.google.com"
#: Assignment ids look like ``02_regression``: two digits, underscore, a lowercase name.
ASSIGNMENT_RE = re.compile(r"^[0-9]{2}_[a-z][a-z0-9_]*$")
LINK_TEXT = "在 Colab 中打开练习 {assignment}"


def github_owner_repo(url: str) -> tuple[str, str]:
    """Return ``(owner, repo)`` of a GitHub repository URL.

    >>> github_owner_repo("https://github.com/lossfn-course/loss-functions-zh.git")
    ('lossfn-course', 'loss-functions-zh')
    """
    parsed = urlparse(url.strip())
    if parsed.scheme not in ("http", "https") or parsed.netloc.lower() not in (
        "github.com",
        "www.github.com",
    ):
        raise ValueError(f"not a GitHub repository URL: {url!r}")
    parts = [p for p in parsed.path.split("/") if p]
    if len(parts) != 2:
        raise ValueError(f"expected https://github.com/<owner>/<repo>, got {url!r}")
    owner, repo = parts
    if repo.endswith(".git"):
        repo = repo[: -len(".git")]
    return owner, repo


def exercise_colab_url(
    repository_url: str, branch: str, assignment: str, colab_url: str = DEFAULT_COLAB_URL
) -> str:
    """Colab URL of the student notebook ``exercises/<a>/<a>.ipynb`` on GitHub."""
    owner, repo = github_owner_repo(repository_url)
    base = (colab_url or DEFAULT_COLAB_URL).rstrip("/")
    return (
        f"{base}/github/{owner}/{repo}/blob/{branch}/"
        f"exercises/{assignment}/{assignment}.ipynb"
    )


def _theme_options(config: Config) -> dict:
    return getattr(config, "html_theme_options", None) or {}


def exercise_role(name, rawtext, text, lineno, inliner, options=None, content=None):
    """``{exercise}`<assignment>``` -> link that opens the exercise notebook in Colab."""
    env = inliner.document.settings.env
    config = env.app.config
    assignment = text.strip()

    def fail(message: str):
        msg = inliner.reporter.warning(message, line=lineno)
        prb = inliner.problematic(rawtext, rawtext, msg)
        return [prb], [msg]

    if not ASSIGNMENT_RE.match(assignment):
        return fail(
            f"exercise role: {assignment!r} is not an assignment id "
            "(expected two digits, an underscore and a lowercase name, e.g. 02_regression)"
        )

    theme = _theme_options(config)
    repository_url = theme.get("repository_url", "")
    branch = theme.get("repository_branch", "") or "main"
    colab_url = (theme.get("launch_buttons") or {}).get("colab_url") or DEFAULT_COLAB_URL
    try:
        url = exercise_colab_url(repository_url, branch, assignment, colab_url)
    except ValueError as exc:
        return fail(f"exercise role: set `repository: url:` in _config.yml ({exc})")

    if config.lossbook_check_exercises:
        notebook = Path(env.srcdir) / "exercises" / assignment / f"{assignment}.ipynb"
        if not notebook.is_file():
            return fail(
                f"exercise role: {notebook.relative_to(env.srcdir)} does not exist, "
                "so the Colab link would be dead (generate the student notebooks first)"
            )

    label = LINK_TEXT.format(assignment=assignment)
    node = nodes.reference(rawtext, label, refuri=url, classes=["exercise-link"])
    return [node], []


def _configure_search(app: Sphinx, config: Config) -> None:
    """Point Sphinx's Chinese search splitter (jieba) at our term dictionary."""
    options = dict(config.html_search_options or {})
    options.setdefault("dict", str(SEARCH_DICT))
    config.html_search_options = options
    try:
        import jieba
    except ImportError:
        if str(config.language or "").startswith("zh"):
            logger.warning(
                "jieba is not installed: the Chinese text of the book will not be "
                "searchable (pip install jieba)"
            )
        return
    # jieba logs "Building prefix dict ..." at DEBUG level to stderr.
    jieba.setLogLevel(_pylogging.WARNING)


def _dedupe_scripts(app: Sphinx, pagename, templatename, context, doctree) -> None:
    """Drop repeated <script> entries from a page.

    sphinx-thebe and sphinx-togglebutton register inline scripts each time their
    handlers run; under Jupyter Book the same script ends up registered twice (with
    filename None and ""), and a second ``const THEBE_JS_URL = ...`` is a JavaScript
    SyntaxError ("Identifier 'THEBE_JS_URL' has already been declared").
    """
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for script in scripts:
        # An inline script has filename None when added and "" once restored from the
        # pickled environment: treat both as the same (empty) name.
        key = (
            str(getattr(script, "filename", script) or ""),
            repr(sorted((getattr(script, "attributes", None) or {}).items())),
        )
        if key not in seen:
            seen.add(key)
            unique.append(script)
    # In place: later handlers (e.g. sphinx.ext.mathjax) add to this same list.
    scripts[:] = unique


#: ``{glue:text}`path/to/notebook.ipynb::key:fmt``` -- a value computed in another page.
_CROSS_GLUE_RE = re.compile(r"\{glue(?::\w+)?\}`([^`:]+?\.ipynb)::")


def _cross_glue_dependents(app: Sphinx, env, added, changed, removed) -> list[str]:
    """Pages that paste values from a notebook being re-read are re-read too.

    MyST-NB resolves ``{glue:text}`other.ipynb::key``` when the page is written, from the
    other notebook's cached outputs; Sphinx does not know that the page depends on that
    notebook, so an incremental build would keep the old number in, e.g., the summary.
    Markdown pages and notebooks are both scanned.
    """
    touched = set(added) | set(changed)
    if not touched:
        return []
    srcdir = Path(app.srcdir)
    stale = []
    for docname in env.found_docs - touched:
        path = next((srcdir / f"{docname}{ext}" for ext in (".md", ".ipynb")
                     if (srcdir / f"{docname}{ext}").exists()), None)
        if path is None:
            continue
        # the raw text will do for notebooks too: the role is written literally in the JSON
        for ref in _CROSS_GLUE_RE.findall(path.read_text(encoding="utf-8")):
            target = (path.parent / ref).resolve()
            try:
                target_doc = str(target.relative_to(srcdir.resolve()).with_suffix(""))
            except ValueError:
                continue
            if target_doc in touched:
                stale.append(docname)
                break
    return stale


def setup(app: Sphinx) -> dict:
    app.add_config_value("lossbook_check_exercises", True, "env", types=[bool])
    app.add_role("exercise", exercise_role)
    app.connect("config-inited", _configure_search)
    # Early: the html-page-context chain stops at the first handler returning a template.
    app.connect("html-page-context", _dedupe_scripts, priority=100)
    app.connect("env-get-outdated", _cross_glue_dependents)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
