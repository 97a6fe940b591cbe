"""The per-hand-in bwrap sandbox (lossgrader/sandbox.py): each defence against the attack
it stops.

Every test has its own timeout (pytest-timeout), so a defence that stops working fails
the test instead of hanging the suite. Attacks are bounded so that a missing defence
cannot hurt the test machine (the fork loop stops at 200 children, the daemons live a
few seconds at most).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from lossgrader import sandbox as sbx
from lossgrader.sandbox import Limits, Sandbox, bwrap_problem

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "lossgrader"

requires_bwrap = pytest.mark.skipif(
    bwrap_problem() is not None, reason=f"no bwrap sandbox here: {bwrap_problem()}"
)
pytestmark = requires_bwrap


def _has_cgroup(controller: str) -> bool:
    cgroup = sbx._Cgroup.create(Limits())
    if cgroup is None:
        return False
    try:
        return controller in cgroup.dirs
    finally:
        cgroup.remove()


def py(sb: Sandbox, code: str, timeout: float | None = None, **kw) -> sbx.SandboxRun:
    """Run Python code in the sandbox (timeout: the wall-time limit by default)."""
    return sb.run([sys.executable, "-c", textwrap.dedent(code)], timeout=timeout, **kw)


@pytest.fixture
def course(tmp_path: Path) -> dict:
    """A course folder like the grader's: a gradebook, a classmate's hand-in next to this
    hand-in's scratch folder, and a grader package with references and a runtime."""
    root = tmp_path / "course"
    (root / "grader" / "runtime").mkdir(parents=True)
    (root / "gradebook.db").write_text("grades")
    (root / "nbgrader_config.py").write_text("c = get_config()\n")
    (root / "grader" / "references.py").write_text("EXPECTED = 42\n")
    (root / "grader" / "runtime" / "__init__.py").write_text("RUNTIME = 1\n")
    work = tmp_path / "work"
    scratch = work / "alice"
    classmate = work / "bob"
    scratch.mkdir(parents=True)
    classmate.mkdir()
    (classmate / "answer.ipynb").write_text("bob's answer")
    return {"root": root, "scratch": scratch, "classmate": classmate}


# --------------------------------------------------------------------------------------
# Identity, network, file system


@pytest.mark.timeout(60)
def test_runs_as_unprivileged_uid_without_capabilities(course):
    sb = Sandbox(str(course["scratch"]))
    r = py(sb, """
        import os
        status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines())
        print(os.getuid(), os.geteuid(), os.getgid(), int(status["CapEff"], 16))
    """)
    sb.kill()
    assert r.returncode == 0, r.stderr
    uid, euid, gid, caps = map(int, r.stdout.split())
    assert uid == euid == gid == sbx.SANDBOX_UID != 0
    assert caps == 0


@pytest.mark.timeout(60)
def test_no_network_not_even_the_hosts_loopback(course):
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    server.settimeout(0.1)
    sb = Sandbox(str(course["scratch"]))
    try:
        r = py(sb, f"""
            import socket
            for host in ("127.0.0.1", "1.1.1.1"):
                try:
                    socket.create_connection((host, {port}), timeout=3).close()
                    print("connected", host)
                except OSError as exc:
                    print("refused", host, type(exc).__name__)
        """)
    finally:
        sb.kill()
        server.close()
    assert r.returncode == 0, r.stderr
    assert b"connected" not in r.stdout, r.stdout
    assert r.stdout.count(b"refused") == 2


@pytest.mark.timeout(60)
def test_hidden_home_classmates_and_course_files_are_unreadable(course):
    root = course["root"]
    runtime = root / "grader" / "runtime"
    sb = Sandbox(
        str(course["scratch"]),
        # the course is visible read-only, the grader inside it hidden, its runtime shown
        extra_ro=(str(root), str(runtime)),
        hide=(str(root / "grader"), str(root / "nbgrader_config.py"), str(REPO), str(PACKAGE)),
    )
    home = Path.home()
    secrets = [
        root / "grader" / "references.py",  # hidden inside a bound tree
        course["classmate"] / "answer.ipynb",  # a sibling of scratch
        REPO / "README.md",  # the course repository
        PACKAGE / "references.py",  # the genuine grader package
        *[p for p in home.iterdir() if p.is_file()][:5],  # the instructor's home
        Path("/etc/shadow"),
        Path("/etc/hostname"),
    ]
    readable = [root / "gradebook.db", runtime / "__init__.py"]
    empty = root / "nbgrader_config.py"  # a hidden file reads as empty
    r = py(sb, f"""
        import os
        for path in {[str(p) for p in secrets + readable]!r}:
            try:
                open(path).read()
                print("READ", path)
            except OSError as exc:
                print("denied", path, type(exc).__name__)
        print("EMPTY", repr(open({str(empty)!r}).read()))
        print("HOME", sorted(os.listdir({str(home)!r})))
        try:
            import lossgrader.references
            print("IMPORTED lossgrader")
        except ImportError:
            print("no lossgrader")
    """)
    sb.kill()
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    for path in secrets:
        assert f"denied {path} " in out, out
    for path in readable:
        assert f"READ {path}" in out, out
    assert "no lossgrader" in out
    assert "EMPTY ''" in out
    # only the way down to the Python installation is visible in the home folder
    visible = eval(out.split("HOME ", 1)[1].splitlines()[0])
    needed = {Path(p).relative_to(home).parts[0] for p in sbx.python_paths()
              if Path(p).is_relative_to(home)}
    assert set(visible) <= needed, visible


@pytest.mark.timeout(60)
def test_only_scratch_is_writable(course):
    root = course["root"]
    sb = Sandbox(str(course["scratch"]), extra_ro=(str(root),), hide=(str(root / "grader"),))
    # unique names, removed afterwards: a broken defence must not leave files behind
    name = f"lossgrader-sandbox-test-{os.getpid()}-{time.time_ns()}"
    created = [
        os.path.join(sbx.python_paths()[-1], name + ".py"),  # site-packages
        os.path.join(sys.prefix, name),
        f"/usr/{name}", f"/etc/{name}", f"/{name}", f"/dev/{name}", f"/proc/{name}",
        str(root / "grader" / name),  # hidden folder
    ]
    existing = [str(root / "gradebook.db"), str(course["classmate"] / "answer.ipynb")]
    try:
        r = py(sb, f"""
            for path in {created + existing!r}:
                try:
                    with open(path, "a") as f:
                        f.write("pwned")
                    print("WROTE", path)
                except OSError as exc:
                    print("denied", path, type(exc).__name__)
            open("mine.txt", "w").write("ok")
            open("/tmp/{name}", "w").write("ok")
        """)
    finally:
        sb.kill()
        for path in created + [f"/tmp/{name}"]:
            if os.path.isfile(path):
                os.remove(path)
    assert r.returncode == 0, r.stderr
    assert b"WROTE" not in r.stdout, r.stdout
    assert r.stdout.count(b"denied") == len(created + existing)
    assert (course["scratch"] / "mine.txt").read_text() == "ok"
    assert (root / "gradebook.db").read_text() == "grades"
    assert (course["classmate"] / "answer.ipynb").read_text() == "bob's answer"


# --------------------------------------------------------------------------------------
# Nothing outlives the sandbox

# A hand-in that leaves daemons behind: a double-forked, setsid child ignoring SIGHUP and
# SIGTERM, and a `nohup` shell loop; each writes a heartbeat into scratch. They stop by
# themselves after 20 s so that a broken defence cannot leave them running for long.
DAEMONS = r"""
import os, signal, subprocess, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        end = time.time() + 20
        while time.time() < end:
            with open("beat-fork", "w") as f:
                f.write(str(time.time()))
            time.sleep(0.05)
    os._exit(0)
subprocess.Popen(
    ["nohup", "sh", "-c", "i=0; while [ $i -lt 200 ]; do date +%s%N > beat-nohup; i=$((i+1)); sleep 0.1; done"],
    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
print("started", flush=True)
time.sleep(60)
"""


def _wait_for_beats(scratch: Path, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if (scratch / "beat-fork").exists() and (scratch / "beat-nohup").exists():
            return
        time.sleep(0.05)
    raise AssertionError("the daemons never started")


def _assert_beats_stopped(scratch: Path) -> None:
    time.sleep(0.5)
    before = [(scratch / n).read_text() for n in ("beat-fork", "beat-nohup")]
    time.sleep(1.5)
    after = [(scratch / n).read_text() for n in ("beat-fork", "beat-nohup")]
    assert before == after, "a process started in the sandbox is still running"


@pytest.mark.timeout(60)
def test_kill_ends_double_forked_setsid_and_nohup_processes(course):
    scratch = course["scratch"]
    sb = Sandbox(str(scratch))
    proc = sb.popen([sys.executable, "-c", DAEMONS], stdout=subprocess.PIPE)
    assert proc.stdout.readline() == b"started\n"
    _wait_for_beats(scratch)
    sb.kill()
    assert proc.poll() is not None
    _assert_beats_stopped(scratch)
    assert sb.usage()["processes"] in (0, None)


PARENT = r"""
import sys, time
from lossgrader.sandbox import Sandbox
sb = Sandbox(sys.argv[1])
sb.popen([sys.executable, "-c", sys.argv[2]])
print("parent ready", flush=True)
time.sleep(60)
"""


@pytest.mark.timeout(60)
def test_sandbox_dies_with_the_process_that_started_it(course):
    scratch = course["scratch"]
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(scratch), DAEMONS],
                              stdout=subprocess.PIPE, cwd=REPO)
    try:
        assert parent.stdout.readline() == b"parent ready\n"
        _wait_for_beats(scratch)
        parent.send_signal(signal.SIGKILL)  # the grading worker crashes
        parent.wait()
        _assert_beats_stopped(scratch)
        # its cgroups, left behind, are removed when the next sandbox is made
        cgroup = sbx._Cgroup.create(Limits())
        if cgroup is not None:
            parents = {os.path.dirname(d) for d in cgroup.dirs.values()}
            cgroup.remove()
            left = [n for d in parents for n in os.listdir(d)
                    if n.startswith(f"lossgrader-{parent.pid}-")]
            assert left == []
    finally:
        parent.kill()
        parent.wait()


# --------------------------------------------------------------------------------------
# Resource limits

HOG = """
import sys
chunks = []
try:
    for i in range(128):  # 128 x 64 MiB = 8 GiB, each page written
        chunks.append(bytearray(64 << 20))
        chunks[-1][::4096] = b"x" * len(range(0, 64 << 20, 4096))
        print(i, flush=True)
    print("ALLOCATED 8 GiB", flush=True)
except MemoryError:
    print("MemoryError", flush=True)
    sys.exit(3)
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("use_cgroups", [True, False], ids=["cgroup", "rlimit"])
def test_memory_hog_is_stopped_at_the_limit(course, use_cgroups):
    if use_cgroups and not _has_cgroup("memory"):
        pytest.skip("no writable memory cgroup here")
    limit = 512 << 20
    sb = Sandbox(str(course["scratch"]), Limits(memory_bytes=limit), _use_cgroups=use_cgroups)
    r = py(sb, HOG, timeout=90)
    sb.kill()
    assert not r.timed_out
    assert b"ALLOCATED" not in r.stdout
    assert r.returncode != 0
    reached = len(r.stdout.split(b"\n")) * (64 << 20)
    assert reached <= limit + (128 << 20), r.stdout[-200:]
    if use_cgroups:
        # killed by the cgroup's OOM killer, peak under the limit
        assert r.returncode == 128 + signal.SIGKILL, (r.returncode, r.stderr[-300:])
        assert r.usage["peak_memory_bytes"] <= limit
    else:
        assert b"MemoryError" in r.stdout, r.stderr[-300:]


FORKS = """
import os, time
children = 0
try:
    while children < 200:  # bounded: a missing limit cannot hurt the machine
        pid = os.fork()
        if pid == 0:
            time.sleep(30)
            os._exit(0)
        children += 1
    print("FORKED", children, flush=True)
except OSError as exc:
    print("stopped", children, type(exc).__name__, flush=True)
"""


@pytest.mark.timeout(60)
def test_fork_loop_is_bounded_by_the_process_limit(course):
    if os.geteuid() == 0 and not _has_cgroup("pids"):
        pytest.skip("root without a pids cgroup: RLIMIT_NPROC does not apply to root")
    sb = Sandbox(str(course["scratch"]), Limits(max_processes=16))
    r = py(sb, FORKS, timeout=40)
    usage = sb.usage()
    sb.kill()
    assert r.returncode == 0, r.stderr
    words = r.stdout.split()
    assert words[0] == b"stopped", r.stdout
    assert int(words[1]) < 16
    if usage["peak_processes"] is not None:
        assert usage["peak_processes"] <= 16


@pytest.mark.timeout(60)
def test_file_size_limit(course):
    scratch = course["scratch"]
    sb = Sandbox(str(scratch), Limits(max_file_bytes=1 << 20))
    r = py(sb, """
        import errno
        for path in ("big.bin", "/tmp/big.bin"):
            try:
                with open(path, "wb") as f:
                    for _ in range(4):
                        f.write(b"x" * (1 << 20))
                print("WROTE", path)
            except OSError as exc:
                print("stopped", path, errno.errorcode[exc.errno])
    """)
    sb.kill()
    assert r.returncode == 0, r.stderr
    assert b"WROTE" not in r.stdout
    assert r.stdout.count(b"stopped") == 2 and b"EFBIG" in r.stdout
    assert (scratch / "big.bin").stat().st_size <= 1 << 20


@pytest.mark.timeout(120)
@pytest.mark.parametrize("folder", ["/tmp", "/dev/shm"])
def test_private_tmpfs_is_capped_in_total(course, folder):
    """Files each under the file-size limit cannot add up to more than the tmpfs cap
    (Limits.tmpfs_bytes, bwrap --size): /tmp and /dev/shm are memory, not the host's disk."""
    helped = subprocess.run(["bwrap", "--help"], capture_output=True, text=True, timeout=30)
    if "--size" not in (helped.stdout + helped.stderr).split():
        pytest.skip("this bwrap has no --size (older than 0.5): its private tmpfs cannot be capped")
    limits = Limits(max_file_bytes=1 << 20)
    cap = limits.tmpfs_bytes()
    assert 16 * 943713 > 2 * cap               # what the attack writes: well over the cap (4 MiB today)
    sb = Sandbox(str(course["scratch"]), limits)
    r = py(sb, f"""
        import errno, os
        written = 0
        try:
            for n in range(16):                   # 16 files of 0.9 MiB (under the file-size limit)
                with open("{folder}/part%d" % n, "wb") as f:
                    for _ in range(9):
                        f.write(b"x" * 104857)
                        f.flush()
                        written += 104857
            print("WROTE", written)
        except OSError as exc:
            print("stopped", written, errno.errorcode[exc.errno])
        total = sum(os.path.getsize(os.path.join("{folder}", n)) for n in os.listdir("{folder}"))
        print("total", total)
    """)
    sb.kill()
    assert r.returncode == 0, r.stderr
    words = r.stdout.split()
    assert words[0] == b"stopped" and b"ENOSPC" in r.stdout, r.stdout
    assert 0 < int(words[-1]) <= cap, r.stdout


@pytest.mark.timeout(60)
def test_cpu_time_limit_kills_a_busy_loop_even_if_sigxcpu_is_ignored(course):
    sb = Sandbox(str(course["scratch"]), Limits(cpu_seconds=1))
    start = time.monotonic()
    r = py(sb, """
        import signal
        signal.signal(signal.SIGXCPU, signal.SIG_IGN)
        while True:
            pass
    """, timeout=30)
    sb.kill()
    assert not r.timed_out, "the busy loop ran until the wall-time limit"
    assert r.returncode == 128 + signal.SIGKILL
    assert time.monotonic() - start < 30


@pytest.mark.timeout(60)
def test_wall_time_limit_and_output_cap(course):
    sb = Sandbox(str(course["scratch"]), Limits(wall_seconds=2, max_output_bytes=1 << 20))
    r = py(sb, """
        import sys, time
        sys.stdout.write("x" * (10 << 20))
        sys.stdout.flush()
        time.sleep(60)
    """)
    assert r.timed_out
    assert r.seconds < 30
    assert len(r.stdout) == 1 << 20 and r.truncated
    assert sb.usage()["processes"] in (0, None)


# --------------------------------------------------------------------------------------
# Fallbacks and diagnostics


@pytest.mark.timeout(60)
def test_disabled_sandbox_still_applies_the_limits(course):
    sb = Sandbox(str(course["scratch"]), Limits(max_file_bytes=1 << 20), enabled=False)
    assert sb.limit_sources["isolation"].startswith("none")
    r = py(sb, """
        import os
        try:
            open("big.bin", "wb").write(b"x" * (2 << 20))
            print("WROTE")
        except OSError:
            print("stopped", os.getcwd())
    """)
    sb.kill()
    assert r.stdout.split() == [b"stopped", str(course["scratch"]).encode()]


def test_bwrap_problem_says_when_bwrap_is_missing(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    sbx.bwrap_problem.cache_clear()
    try:
        assert "not installed" in sbx.bwrap_problem()
    finally:
        monkeypatch.undo()
        sbx.bwrap_problem.cache_clear()
    assert sbx.bwrap_problem() is None


def test_cgroup_discovery_reads_mountinfo(tmp_path):
    """cgroup v1 per controller, and cgroup v2, located from /proc/self files."""
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "cgroup").write_text(
        "4:memory:/jobs/me\n8:pids:/\n2:cpuacct,cpu:/\n0::/user.slice/session-1.scope\n")
    (proc / "mountinfo").write_text(
        "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
        "39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids\n"
        "33 31 0:30 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
        "41 31 0:38 /user.slice /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n")
    v1, v2 = sbx._own_cgroup_dirs(str(proc))
    assert v1 == {"memory": "/sys/fs/cgroup/memory/jobs/me", "pids": "/sys/fs/cgroup/pids",
                  "cpuacct": "/sys/fs/cgroup/cpu,cpuacct"}
    assert v2 == "/sys/fs/cgroup/unified/session-1.scope"
    # the fallback process limit for a normal user starts from the tasks it already runs
    assert sbx._count_user_tasks(os.getuid()) >= threading.active_count()


# --------------------------------------------------------------------------------------
# A Jupyter kernel inside the sandbox (each start costs a few seconds: few tests)


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    """A cold kernel as the grader starts one (lossgrader.kernel.KernelSession): the
    repository visible read-only with the genuine grader package inside it hidden."""
    from lossgrader.kernel import KernelSession
    from lossgrader.worker import runtime_package

    scratch = str(tmp_path_factory.mktemp("kernel") / "scratch")
    ipc = str(tmp_path_factory.mktemp("kernel-ipc"))
    runtime = runtime_package(str(tmp_path_factory.mktemp("kernel-runtime")))

    def make_sandbox():
        return Sandbox(scratch, extra_ro=(str(REPO), runtime), hide=(str(PACKAGE),),
                       env={"PYTHONPATH": runtime}, private_scratch=True)
    session = KernelSession(make_sandbox, ipc, 1 << 20)
    start = time.monotonic()
    session.start(timeout=60)
    started = time.monotonic() - start
    yield session, started
    session.shutdown()


def execute(session, code: str, timeout: float = 60) -> tuple[str, str]:
    """Run code in the kernel: (status, text of its results, streams and error names)."""
    status, outputs, _ = session.execute(code, timeout)
    out = []
    for o in outputs:
        if o["output_type"] in ("execute_result", "display_data"):
            out.append(o["data"].get("text/plain", ""))
        elif o["output_type"] == "stream":
            out.append(o["text"])
        elif o["output_type"] == "error":
            out.append(o["ename"])
    return status, "".join(out)


@pytest.mark.timeout(120)
def test_kernel_runs_torch_inside_the_sandbox(kernel):
    session, started = kernel
    assert started < 60
    status, text = execute(session, "import torch, os\nprint(os.getuid())\n1 + 1")
    assert status == "ok" and text.split() == [str(sbx.SANDBOX_UID), "2"], text
    # the genuine grader (an editable install inside the repository) is hidden
    status, text = execute(session, "import os, sys\nsys.path.insert(0, %r)\n"
                                    "import lossgrader.references" % str(REPO))
    assert (status, text) == ("error", "ModuleNotFoundError")


@pytest.mark.timeout(120)
def test_kernel_interrupt_and_kill(kernel):
    session, _ = kernel
    timer = threading.Timer(1.0, session.interrupt)
    timer.start()
    status, text = execute(session, "while True: pass", timeout=30)
    assert (status, text) == ("error", "KeyboardInterrupt")
    assert execute(session, "21 * 2") == ("ok", "42")
    session.sandbox.kill()
    deadline = time.monotonic() + 10
    while session.alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not session.alive()
