"""The setup cell of the assignment notebooks: what a student reads when installing lossgrader fails.

The cell's code is taken from ``solutions/<id>/<id>.ipynb`` (what ``tools/generate_exercises.py``
stamps and ships) and executed in this process the way Colab runs it: ``lossgrader`` is not
importable, no course repository lies around the notebook, and ``subprocess.run`` (the
``pip install "lossgrader @ git+URL@BRANCH"`` call) is replaced by a stub that returns a real pip
output recorded in ``tests/pip_failures/``. Each ``<case>.stderr`` (and ``<case>.stdout`` where pip
wrote there) is verbatim from ``python -m pip install [-q] "lossgrader @ git+<url>@<ref>"`` with
pip 23.2.1 and git 2.39.5:

- ``no_network_dns``: ``https://github.com/...`` on a machine that cannot resolve github.com;
- ``no_network_refused``: a closed port on 127.0.0.1;
- ``no_network_index`` / ``no_network_index_verbose`` (without ``-q``): the clone works but the
  package index is unreachable (``PIP_INDEX_URL=https://pypi.invalid/simple`` in a venv), so the
  build dependencies cannot be downloaded;
- ``repository_404``: an HTTP server answering 404 with the text body GitHub sends
  (``Repository not found.``); ``repository_auth``: a server answering 401, i.e. the user name
  prompt GitHub gives for a repository that does not exist or is private (Colab has no terminal);
- ``branch_checkout``: an existing repository and a branch name it does not have;
  ``ref_fetch``: the same with a ``refs/heads/...`` ref (pip fetches it);
- ``no_git``: ``git`` not on ``PATH``;
- ``unknown_bad_pyproject``: a repository whose ``pyproject.toml`` does not parse (a failure the
  cell cannot name: it must say so and not blame the network).
"""
import glob
import importlib.util
import os
import re
import subprocess

import nbformat
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLES_DIR = os.path.join(ROOT, "tests", "pip_failures")
SOLUTION_NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "solutions", "*", "*.ipynb")))

# The phrase of the cell's message for each cause; a message names exactly one of them.
CAUSES = {
    "network": "无法连接网络",
    "repository": "找不到课程仓库",
    "branch": "找不到分支或版本",
    "git": "没有找到 git 命令",
    "unknown": "未能自动判断原因",
}

# sample, expected cause, the line of pip's output that says why (the student must see it)
SAMPLES = [
    ("no_network_dns", "network", "Could not resolve host: github.com"),
    ("no_network_refused", "network", "Failed to connect to 127.0.0.1 port 18999"),
    ("no_network_index", "network", "Could not find a version that satisfies the requirement setuptools>=61"),
    ("no_network_index_verbose", "network", "Name or service not known"),
    ("repository_404", "repository", "remote: Repository not found."),
    ("repository_auth", "repository", "fatal: could not read Username"),
    ("branch_checkout", "branch", "error: pathspec 'no-such-branch' did not match any file(s) known to git"),
    ("ref_fetch", "branch", "fatal: couldn't find remote ref refs/heads/no-such-branch"),
    ("no_git", "git", "Cannot find command 'git'"),
    ("unknown_bad_pyproject", "unknown", "TOMLDecodeError: Expected ']' at the end of a table declaration"),
]
TAIL_LINES = 20


def setup_cells():
    return {os.path.relpath(path, ROOT): next(c.source for c in nbformat.read(path, as_version=4).cells
                                              if c.get("id") == "setup")
            for path in SOLUTION_NOTEBOOKS}


SETUP = next(iter(setup_cells().values()))


def read_sample(name):
    texts = []
    for stream in ("stdout", "stderr"):
        path = os.path.join(SAMPLES_DIR, f"{name}.{stream}")
        texts.append(open(path, encoding="utf-8").read() if os.path.exists(path) else "")
    return texts


def run_setup_cell(monkeypatch, tmp_path, pip_stdout, pip_stderr):
    """Run the setup cell as in Colab, pip failing with the given output: (commands run, RuntimeError)."""
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, pip_stdout, pip_stderr)

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **kw: None if name == "lossgrader" else real_find_spec(name, *a, **kw))
    monkeypatch.setattr(subprocess, "run", fake_run)
    work = tmp_path / "content" / "notebook"          # no lossgrader/ two levels up: not a clone
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    try:
        exec(compile(SETUP, "setup", "exec"), {"__name__": "__main__"})
    except RuntimeError as error:
        return calls, error
    return calls, None


def test_all_notebooks_share_one_setup_cell():
    cells = setup_cells()
    assert len(cells) == 6
    different = [path for path, source in cells.items() if source != SETUP]
    assert not different, f"setup cell differs from {next(iter(cells))} in {different}"


def test_every_sample_is_listed():
    recorded = {os.path.basename(p).split(".")[0] for p in glob.glob(os.path.join(SAMPLES_DIR, "*"))}
    assert recorded == {name for name, _, _ in SAMPLES}


@pytest.mark.parametrize("sample, cause, key_line", SAMPLES, ids=[s[0] for s in SAMPLES])
def test_install_failure_names_the_likely_cause(sample, cause, key_line, monkeypatch, tmp_path, capsys):
    pip_stdout, pip_stderr = read_sample(sample)
    assert key_line in pip_stdout + pip_stderr            # the sample is what the test says it is

    calls, error = run_setup_cell(monkeypatch, tmp_path, pip_stdout, pip_stderr)
    url = re.search(r'REPOSITORY_URL = "(.*)"', SETUP).group(1)
    branch = re.search(r'REPOSITORY_BRANCH = "(.*)"', SETUP).group(1)
    assert len(calls) == 1 and calls[0][1:4] == ["-m", "pip", "install"]
    assert f"lossgrader @ git+{url}@{branch}" in calls[0]
    assert error is not None, "a failed pip install must stop the cell"
    message = str(error)

    assert message.startswith("lossgrader 安装失败：")
    assert [c for c, phrase in CAUSES.items() if phrase in message] == [cause], message
    if cause != "network":
        assert "网络" not in message, message
    if cause == "repository":
        assert url in message
    if cause == "branch":
        assert f"“{branch}”" in message

    # Printed before the error: a heading and the tail of pip's output, with the line that says why.
    shown = capsys.readouterr().out.splitlines()
    heading = shown.index(f"pip 输出的最后 {TAIL_LINES} 行：")
    tail = shown[heading + 1:]
    output_lines = [line for line in (pip_stdout + pip_stderr).splitlines() if line.strip()]
    assert tail == output_lines[-TAIL_LINES:]
    assert any(key_line in line for line in tail), f"{key_line!r} not shown:\n" + "\n".join(tail)
