"""nbgrader preprocessor that stamps the course repository's address into notebooks.

The repository URL and branch are written in one place only: ``_config.yml``
(Jupyter Book's ``repository: url/branch`` keys).  The instructor notebooks in
``solutions/`` carry placeholders instead of addresses; ``nbgrader
generate_assignment`` runs this preprocessor first (see ``nbgrader_config.py``),
so the student notebooks in ``exercises/`` get

* ``@REPOSITORY_URL@``    -> ``https://github.com/<owner>/<repo>``
* ``@REPOSITORY_BRANCH@`` -> ``main``
* ``@COLAB_URL@``         -> the "Open in Colab" address of the generated notebook
  (``https://colab.research.google.com/github/<owner>/<repo>/blob/<branch>/<release dir>/<id>/<notebook>.ipynb``)

Stamping happens before nbgrader's ``SaveCells``, so the gradebook records the
stamped (released) version of the locked setup cell.
"""
import re

import yaml
from nbgrader.preprocessors import NbGraderPreprocessor
from traitlets import Unicode

PLACEHOLDERS = ("@REPOSITORY_URL@", "@REPOSITORY_BRANCH@", "@COLAB_URL@")
_GITHUB = re.compile(r"^https://github\.com/(?P<owner>[A-Za-z0-9_.-]+)/(?P<repo>[A-Za-z0-9_.-]+?)(?:\.git)?/?$")


def read_repository(config_file):
    """Return (url, branch, owner, repo) from a Jupyter Book ``_config.yml``."""
    with open(config_file, encoding="utf-8") as fh:
        data = yaml.safe_load(fh) or {}
    repository = data.get("repository") or {}
    url = str(repository.get("url", "")).strip()
    branch = str(repository.get("branch", "main") or "main").strip()
    match = _GITHUB.match(url)
    if match is None:
        raise ValueError(
            f"{config_file}: repository.url must be a https://github.com/<owner>/<repo> address, got {url!r}")
    url = f"https://github.com/{match['owner']}/{match['repo']}"
    return url, branch, match["owner"], match["repo"]


def colab_url(owner, repo, branch, release_directory, assignment, notebook):
    path = "/".join([release_directory.strip("/"), assignment, notebook + ".ipynb"])
    return f"https://colab.research.google.com/github/{owner}/{repo}/blob/{branch}/{path}"


def stamp_text(text, url, branch, colab):
    return (text.replace("@REPOSITORY_URL@", url)
                .replace("@REPOSITORY_BRANCH@", branch)
                .replace("@COLAB_URL@", colab))


class StampRepository(NbGraderPreprocessor):
    """Replace the repository placeholders in every cell by values from ``_config.yml``."""

    config_file = Unicode("_config.yml", help="Path of the Jupyter Book _config.yml").tag(config=True)
    release_directory = Unicode("exercises", help="Release directory, relative to the repository root").tag(config=True)

    def preprocess(self, nb, resources):
        url, branch, owner, repo = read_repository(self.config_file)
        info = resources.get("nbgrader", {})
        assignment = info.get("assignment")
        notebook = info.get("notebook")
        if not assignment or not notebook:
            raise ValueError("StampRepository needs nbgrader's assignment and notebook ids in resources")
        colab = colab_url(owner, repo, branch, self.release_directory, assignment, notebook)
        for cell in nb.cells:
            cell.source = stamp_text(cell.source, url, branch, colab)
        return nb, resources
