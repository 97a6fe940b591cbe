"""A minimal course folder for tests that grade: nbgrader_config.py, _config.yml, tools/ and
the named assignments' solutions/ (and exercises/), from this repository. One place, so that
a test's course is built like every other test's."""
import os
import shutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def copy_course(dest, assignments, *, exercises=True, db_url=None):
    """Fill ``dest`` (created if missing) and return it as a string; ``db_url`` is written
    into the copied nbgrader_config.py."""
    dest = os.fspath(dest)
    os.makedirs(dest, exist_ok=True)
    for name in ("nbgrader_config.py", "_config.yml"):
        shutil.copy2(os.path.join(ROOT, name), os.path.join(dest, name))
    if db_url is not None:
        with open(os.path.join(dest, "nbgrader_config.py"), "a", encoding="utf-8") as fh:
            fh.write(f"\nc.CourseDirectory.db_url = {db_url!r}\n")
    shutil.copytree(os.path.join(ROOT, "tools"), os.path.join(dest, "tools"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    for top in ("solutions", "exercises") if exercises else ("solutions",):
        for aid in assignments:
            shutil.copytree(os.path.join(ROOT, top, aid), os.path.join(dest, top, aid))
    return dest
