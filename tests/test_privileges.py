"""Run as root, the grading thread's own file operations are an unprivileged user's
(lossgrader/privileges.py): a mistake in the worker cannot write what that user cannot,
while sandboxes still start (bwrap and the cgroups need root) and hand-ins are graded."""
import os
import stat
import threading

import pytest

from lossgrader import privileges, worker

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the grader drops root only where it runs as root")


def _in_thread(fn):
    """fn() on a thread of its own, as the local pool and Dask grade (its result or exception)."""
    box = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as exc:      # handed to the test
            box["error"] = exc
    thread = threading.Thread(target=run)
    thread.start()
    thread.join(300)
    if "error" in box:
        raise box["error"]
    return box.get("value")


def test_a_dropped_thread_reads_everything_and_writes_only_as_the_user(tmp_path):
    course_file = tmp_path / "gradebook.db"
    course_file.write_text("the instructor's\n")
    secret = tmp_path / "root-only"
    secret.write_text("r")
    os.chmod(secret, 0o600)

    def inside():
        with privileges.dropped() as who:
            seen = {"who": who, "fsuid": privileges.fsuid(), "read": secret.read_text()}
            try:
                with open(course_file, "a") as fh:
                    fh.write("written by the worker\n")
                seen["wrote"] = True
            except PermissionError:
                seen["wrote"] = False
            made = tmp_path / "made-by-worker"
            made.mkdir()
            seen["owner"] = made.stat().st_uid
            with privileges.as_root():
                seen["root_again"] = privileges.fsuid()
            seen["after_root"] = privileges.fsuid()
        seen["restored"] = privileges.fsuid()
        return seen

    os.chmod(tmp_path, 0o777)      # the worker's user may create its folder here
    seen = _in_thread(inside)
    uid = privileges.target()[0]
    assert seen == {"who": privileges.target(), "fsuid": uid, "read": "r", "wrote": False, "owner": uid,
                    "root_again": 0, "after_root": uid, "restored": 0}
    assert course_file.read_text() == "the instructor's\n"
    assert privileges.fsuid() == 0           # the calling thread never changed


def test_a_worker_mistake_cannot_write_the_course(tmp_path, monkeypatch):
    """A bug in the worker's own file handling (here: the sandbox's runtime package also
    written over the course's gradebook, as the symlink attack once made it) fails that
    hand-in with the reason and leaves the file as it was."""
    gradebook = tmp_path / "gradebook.db"
    gradebook.write_bytes(b"SQLite format 3\0 the class's grades")
    os.chmod(gradebook, 0o644)
    real = worker.runtime_package

    def buggy(parent):
        with open(gradebook, "wb") as fh:
            fh.write(b"overwritten")
        return real(parent)
    monkeypatch.setattr(worker, "runtime_package", buggy)
    task = {"student": "s", "assignment": "a", "released": {}, "notebooks": {}, "sandbox": True,
            "warm": False, "timeout": 60}
    result = _in_thread(lambda: worker.grade_handin(task))
    assert result.status == "failed" and "PermissionError" in result.reason
    assert gradebook.read_bytes() == b"SQLite format 3\0 the class's grades"
    assert stat.S_IMODE(gradebook.stat().st_mode) == 0o644


def test_hand_ins_are_graded_and_sandboxes_start_with_root_dropped(tmp_path):
    """The worker's folders belong to the unprivileged user; the sandbox (started as root)
    and its cgroups work as before: a full hand-in gets its full grade, warm and cold."""
    from test_executors import _course, _grades
    from lossgrader import warm
    from lossgrader.autograde import autograde
    from lossgrader.sandbox import bwrap_problem

    if bwrap_problem() is not None:
        pytest.skip(bwrap_problem())
    owners = []
    real = warm.new_folder

    def recording():
        folder = real()
        owners.append(os.stat(folder).st_uid)
        return folder
    warm.new_folder = recording
    try:
        root = _course(str(tmp_path / "course"), {"full": "demo_full"})
        autograde(root, cell_timeout=60, progress=False, sandbox=True, jobs=1)
    finally:
        warm.new_folder = real
    assert owners and set(owners) == {privileges.target()[0]}
    assert _grades(root)["full"][1][0] == 6.0


def test_as_root_is_a_plain_block_for_a_user_who_is_not_root():
    """An instructor runs lossgrader as themself: the font cache's first read and the
    cgroup writes go through as_root, which must then run the block as it is (it tried to
    set the filesystem uid to 0 and raised OSError on every feedback plot)."""
    import shutil
    import subprocess
    import sys

    if os.geteuid() != 0 or not privileges.LINUX or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to become an unprivileged user")
    python = next((p for p in ("/usr/bin/python3", sys.executable) if os.path.exists(p)), sys.executable)
    # the module's source on stdin: the user may not read the checkout (a home folder)
    with open(privileges.__file__, encoding="utf-8") as fh:
        code = fh.read() + "\nwith as_root():\n    print('inside', fsuid())\n"
    done = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", python, "-"],
                          input=code, capture_output=True, text=True, timeout=60, cwd="/",
                          env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"})
    if "Permission denied" in done.stderr and "python" in done.stderr:
        pytest.skip(f"no Python the unprivileged user may run: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["inside", "65534"]
