"""Every ``lossgrader`` command called by the full path of an environment that is not
activated (``~/venv/bin/lossgrader generate`` from cron or a script, a pipx install).

The environment is made as an instructor would: ``python -m venv --system-site-packages
DIR`` and ``DIR/bin/pip install --no-deps -e`` of this package (``--no-build-isolation``:
setuptools comes from the base Python, so no network is needed). Each command then runs
with a PATH that has neither DIR/bin nor the base Python's bin/ on it, only the system's
``/usr/bin:/bin``. nbgrader runs ``alembic`` by name when it creates a gradebook: before
``lossgrader.cli.use_this_environment``, registering the assignment failed there with
``FileNotFoundError: 'alembic'`` and a long nbgrader traceback."""
import os
import shutil
import subprocess
import sys

import pytest

from course_copy import copy_course

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
B = "01_overview"


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    base = tmp_path_factory.mktemp("unactivated")
    src = base / "src"                        # the package as it is in this checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(os.path.join(ROOT, name), src / name)
    shutil.copytree(os.path.join(ROOT, "lossgrader"), src / "lossgrader",
                    ignore=shutil.ignore_patterns("__pycache__"))
    env_dir = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(env_dir)], check=True,
                   timeout=300)
    pip = subprocess.run([str(env_dir / "bin" / "pip"), "install", "--no-deps", "--no-build-isolation",
                          "--no-index", "-e", str(src)], capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    return {"base": base, "bin": env_dir / "bin", "src": src}


def _run(venv, *args, cwd, timeout=600):
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp"), "LANG": "C.UTF-8",
           "LOSSGRADER_DEVICE": "cpu", "TMPDIR": os.environ.get("TMPDIR", "/tmp")}
    return subprocess.run([str(venv["bin"] / "lossgrader"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_the_environment_is_not_on_path(venv):
    """The premise: neither the environment's bin/ nor the base Python's is on the PATH the
    commands get, and the environment runs this checkout's lossgrader."""
    for tool in ("alembic", "nbgrader", "jupyter", "lossgrader"):
        assert shutil.which(tool, path="/usr/bin:/bin") is None, tool
    proc = subprocess.run([str(venv["bin"] / "python"), "-c", "import lossgrader; print(lossgrader.__file__)"],
                          env={"PATH": "/usr/bin:/bin"}, cwd=venv["base"], capture_output=True, text=True,
                          timeout=120)
    assert proc.stdout.strip() == str(venv["src"] / "lossgrader" / "__init__.py"), proc.stderr


def test_every_command_works_called_by_the_full_path(venv):
    course = copy_course(venv["base"] / "course", [B])
    shared = venv["base"] / "shared"
    os.makedirs(shared / "alice" / B)
    shutil.copy2(os.path.join(ROOT, "samples", "submitted", "demo_full", B, B + ".ipynb"), shared / "alice" / B)
    steps = [("generate",), ("generate", "--gradebook-only"), ("collect", str(shared)),
             ("autograde", "--quiet"), ("feedback",), ("export",), ("report",), ("restore", "--list"),
             ("restore",), ("export",)]
    for step in steps:
        proc = _run(venv, *step, cwd=course)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, (step, proc.stdout[-2000:],
                                                                          proc.stderr[-4000:])
    assert os.path.isfile(os.path.join(course, "feedback", "alice", B, B + ".html"))
    assert os.path.isfile(os.path.join(course, "report", "index.html"))
    with open(os.path.join(course, "grades.csv"), encoding="utf-8") as fh:
        assert "alice" in fh.read()
