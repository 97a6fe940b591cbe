"""Warm sandboxes (lossgrader/warm.py, lossgrader/zygote.py): a grading thread keeps one
sandbox whose zygote forks a kernel per hand-in, and resets it in between. Each test
grades an attacker ("a_attacker") and then, in the same thread, an honest student
("b_victim") whose notebook carries one more cell that reports what it sees. The attack
must not reach the victim: the reset kills and wipes what the attacker left, and a
zygote the attacker changed is thrown away (the victim then runs in a new sandbox).

Attacks are bounded: the daemon lives 60 s at most and carries the test's token.
"""
import json
import os
import tempfile
import textwrap
import time
import uuid

import nbformat
import pytest

from lossgrader import warm
from test_executors import _course as course_with
from lossgrader.autograde import autograde
from lossgrader.sandbox import bwrap_problem

pytestmark = pytest.mark.skipif(bwrap_problem() is not None, reason=f"no bwrap here: {bwrap_problem()}")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
A = "02_regression"
FULL = os.path.join(ROOT, "samples", "submitted", "demo_full", A, A + ".ipynb")

PROBE = textwrap.dedent("""\
    import json as _json, os as _os, resource as _resource
    def _files(top):
        # writable places only: the Python environment may be bound read-only under /tmp
        out = []
        for base, dirs, files in _os.walk(top):
            dirs[:] = [d for d in dirs if not _os.statvfs(_os.path.join(base, d)).f_flag & _os.ST_RDONLY]
            out += [_os.path.join(base, f) for f in files]
        return out
    _procs = {}
    for _p in _os.listdir("/proc"):
        if _p.isdigit():
            try:
                with open(f"/proc/{_p}/cmdline", "rb") as _fh:
                    _procs[_p] = _fh.read().replace(b"\\0", b" ").decode(errors="replace")
            except OSError:
                pass
    print("PROBE" + _json.dumps({
        "home": _os.environ.get("HOME"), "nice": _os.getpriority(_os.PRIO_PROCESS, 0),
        "affinity": sorted(_os.sched_getaffinity(0)), "policy": _os.sched_getscheduler(0),
        "nofile": list(_resource.getrlimit(_resource.RLIMIT_NOFILE)),
        "files": _files("/tmp") + _files("/dev/shm"), "procs": _procs}))
    """)

ZYGOTE = textwrap.dedent("""\
    import os as _os, signal as _signal, resource as _resource, ctypes as _ctypes, sys as _sys
    with open("/proc/1/cmdline", "rb") as _fh:       # the zygote is the sandbox's init
        assert b"lossgrader.zygote" in _fh.read()
    _Z = 1
    print("HOME" + _os.environ["HOME"])
    """)

ATTACKS = {
    "renice": "_os.setpriority(_os.PRIO_PROCESS, _Z, 19)",
    "affinity": "_os.sched_setaffinity(_Z, sorted(_os.sched_getaffinity(_Z))[:1])",
    "idle_policy": "_os.sched_setscheduler(_Z, _os.SCHED_IDLE, _os.sched_param(0))",
    "lower_rlimit": "_resource.prlimit(_Z, _resource.RLIMIT_NOFILE, (32, 32))",
    "sysv_shm": "_ctypes.CDLL(None).shmget(0, 1 << 20, 0o1000 | 0o600)",   # IPC_PRIVATE, IPC_CREAT
    # ioprio_set(IOPRIO_WHO_PROCESS, zygote, IOPRIO_CLASS_IDLE): every later kernel's disk I/O last
    "io_priority": ("assert _ctypes.CDLL(None).syscall({'x86_64': 251, 'aarch64': 30}[_os.uname().machine], "
                    "1, _Z, 3 << 13) == 0"),
    # sched_setattr: a 0.1 ms time slice for SCHED_OTHER (Linux 6.12+), inherited by every kernel
    "time_slice": ("import struct as _struct\n"
                   "_nr = {'x86_64': 314, 'aarch64': 274}[_os.uname().machine]\n"
                   "_attr = _ctypes.create_string_buffer(_struct.pack('IIQiIQQQII', 56, 0, 0, 0, 0, 100000, 0, 0, 0, 0), 56)\n"
                   "assert _ctypes.CDLL(None).syscall(_nr, _Z, _attr, 0) == 0"),
}
# signals: the zygote is the PID namespace's init and sets no handler, so none arrives
SIGNALS = {"kill_zygote": "_os.kill(_Z, _signal.SIGKILL)", "stop_zygote": "_os.kill(_Z, _signal.SIGSTOP)",
           "term_zygote": "_os.kill(_Z, _signal.SIGTERM)"}


def _course(tmp, students):
    """A course with 02_regression and {student: [cells inserted after the setup cell]}."""
    texts = {}
    for student, extra in students.items():
        nb = nbformat.read(FULL, as_version=4)
        at = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code") + 1
        nb.cells[at:at] = [nbformat.v4.new_code_cell(src) for src in extra]
        texts[student] = nbformat.writes(nb)
    return course_with(os.path.join(tmp, "course"), texts)


def _printed(root, student, marker):
    nb = nbformat.read(os.path.join(root, "autograded", student, A, A + ".ipynb"), as_version=4)
    for c in nb.cells:
        for out in c.get("outputs", []):
            for line in out.get("text", "").splitlines():
                if line.startswith(marker):
                    return line[len(marker):]
    raise AssertionError(f"{student} printed no {marker}")


def _grade(root):
    results = autograde(root, cell_timeout=60, progress=False, sandbox=True, jobs=1)
    return {s: r for (s, _), r in results.items()}


def test_a_daemon_left_by_one_hand_in_is_gone_before_the_next(tmp_path):
    """The same warm sandbox serves both; what the attacker started and wrote is gone."""
    token = uuid.uuid4().hex
    daemon = textwrap.dedent(f"""\
        import subprocess as _sp, sys as _sys
        _code = '''# {token}
        import os, time
        end = time.time() + 60
        while time.time() < end:
            for d in ("/tmp", "/dev/shm", os.getcwd()):
                try:
                    open(os.path.join(d, "pwned-{token}"), "w").write("x")
                except OSError:
                    pass
            time.sleep(0.05)
        '''
        _sp.Popen([_sys.executable, "-c", _code], start_new_session=True)
        open("/tmp/left-{token}", "w").write("x")
        open("/dev/shm/left-{token}", "w").write("x")
        _os.makedirs("/tmp/locked-{token}/inner")
        _os.chmod("/tmp/locked-{token}", 0)
        """)
    root = _course(str(tmp_path), {"a_attacker": [ZYGOTE, daemon], "b_victim": [PROBE]})
    graded = _grade(root)
    assert graded["b_victim"]["score"] == 6.0
    seen = json.loads(_printed(root, "b_victim", "PROBE"))
    assert seen["home"] == _printed(root, "a_attacker", "HOME")      # the same (warm) sandbox
    assert not [f for f in seen["files"] if token in f]
    assert not [p for p, cmd in seen["procs"].items() if token in cmd]
    victim_scratch = os.listdir(seen["home"]) if os.path.isdir(seen["home"]) else []
    assert not [f for f in victim_scratch if token in f]


def test_the_zygote_cannot_be_traced_or_read(tmp_path):
    """Non-dumpable: no ptrace, no /proc/PID/mem, environ or open file (its control pipes)
    of the zygote."""
    probe = textwrap.dedent("""\
        _out = {}
        for _name, _try in (("mem", lambda: open(f"/proc/{_Z}/mem", "rb").read(1)),
                            ("fd", lambda: [_os.open(f"/proc/{_Z}/fd/{_n}", _os.O_RDWR)
                                            for _n in _os.listdir(f"/proc/{_Z}/fd")] and "opened"),
                            ("environ", lambda: open(f"/proc/{_Z}/environ", "rb").read()),
                            ("ptrace", lambda: _ctypes.CDLL(None, use_errno=True).ptrace(16, _Z, 0, 0) or "attached")):
            try:
                _r = _try()
                _out[_name] = "denied" if _r == -1 else "allowed"
            except OSError:
                _out[_name] = "denied"
        print("TRACE" + __import__("json").dumps(_out))
        """)
    root = _course(str(tmp_path), {"a_attacker": [ZYGOTE, probe], "b_victim": [PROBE]})
    graded = _grade(root)
    assert json.loads(_printed(root, "a_attacker", "TRACE")) == dict.fromkeys(("mem", "fd", "environ", "ptrace"),
                                                                             "denied")
    assert graded["b_victim"]["score"] == 6.0


def _custom_slices():
    """Whether this kernel lets a process set its own SCHED_OTHER time slice (Linux 6.12+)."""
    import ctypes
    import struct

    nr = {"x86_64": (314, 315), "aarch64": (274, 275)}.get(os.uname().machine)
    if nr is None:
        return False
    libc = ctypes.CDLL(None)
    saved = ctypes.create_string_buffer(56)
    if libc.syscall(nr[1], 0, saved, 56, 0) != 0:
        return False
    attr = ctypes.create_string_buffer(struct.pack("IIQiIQQQII", 56, 0, 0, 0, 0, 100000, 0, 0, 0, 0), 56)
    ok = libc.syscall(nr[0], 0, attr, 0) == 0
    libc.syscall(nr[0], 0, saved, 0)
    return ok


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_a_changed_zygote_is_thrown_away(tmp_path, attack):
    """What the attacker changed in the zygote would reach every later kernel (a nice value,
    a CPU, a limit, a time slice, a SysV segment): the victim gets a new sandbox instead."""
    if attack == "time_slice" and not _custom_slices():
        pytest.skip("this kernel has no per-task time slice to change")
    root = _course(str(tmp_path), {"a_attacker": [ZYGOTE, ATTACKS[attack]], "b_victim": [PROBE]})
    graded = _grade(root)
    assert graded["b_victim"]["status"] == "autograded" and graded["b_victim"]["score"] == 6.0
    seen = json.loads(_printed(root, "b_victim", "PROBE"))
    assert seen["home"] != _printed(root, "a_attacker", "HOME")
    _assert_untouched(seen)


@pytest.mark.parametrize("attack", sorted(SIGNALS))
def test_signals_do_not_reach_the_zygote(tmp_path, attack):
    root = _course(str(tmp_path), {"a_attacker": [ZYGOTE, SIGNALS[attack]], "b_victim": [PROBE]})
    graded = _grade(root)
    assert graded["b_victim"]["status"] == "autograded" and graded["b_victim"]["score"] == 6.0
    seen = json.loads(_printed(root, "b_victim", "PROBE"))
    assert seen["home"] == _printed(root, "a_attacker", "HOME")     # it went on serving
    _assert_untouched(seen)


LEFTOVER = textwrap.dedent("""\
    import ctypes as _ct, json as _json, os as _os
    _libc, _rt = _ct.CDLL(None, use_errno=True), _ct.CDLL("librt.so.1", use_errno=True)
    _rt.mq_open.argtypes = [_ct.c_char_p, _ct.c_int, _ct.c_uint, _ct.c_void_p]
    _ADD_KEY, _KEYCTL = {"x86_64": (248, 250), "aarch64": (217, 219)}[_os.uname().machine]
    _RINGS = {"user": -4, "user-session": -5}
    """)
LEAVE = textwrap.dedent("""\
    _q = _rt.mq_open(b"/lossgrader-left", _os.O_CREAT | _os.O_RDWR, 0o600, None)
    assert _q >= 0 and _rt.mq_send(_q, b"secret", 6, 0) == 0
    for _ring in _RINGS.values():
        assert _libc.syscall(_ADD_KEY, b"user", b"lossgrader-left", b"secret", 6, _ct.c_long(_ring)) > 0
    print("LEFT" + _json.dumps(sorted(_os.listdir("/dev/mqueue"))))
    """)
LOOK = textwrap.dedent("""\
    _seen = {"queue": _rt.mq_open(b"/lossgrader-left", _os.O_RDWR, 0, None) >= 0,
             "queues": sorted(_os.listdir("/dev/mqueue")),
             "keys": {n: _libc.syscall(_KEYCTL, 11, _ct.c_long(r), None, _ct.c_long(0)) for n, r in _RINGS.items()}}
    print("SEEN" + _json.dumps(_seen))
    """)


def test_message_queues_and_keys_left_by_one_hand_in_are_gone_before_the_next(tmp_path):
    """POSIX message queues outlive their processes in the sandbox's IPC namespace, and the
    user and user-session keyrings are shared by every process of the uid: the reset removes
    the queues and clears both keyrings (each kernel has a session keyring of its own)."""
    root = _course(str(tmp_path), {"a_attacker": [ZYGOTE, LEFTOVER + LEAVE], "b_victim": [LEFTOVER + LOOK, PROBE]})
    _grade(root)
    assert json.loads(_printed(root, "a_attacker", "LEFT")) == ["lossgrader-left"]
    seen = json.loads(_printed(root, "b_victim", "SEEN"))
    assert json.loads(_printed(root, "b_victim", "PROBE"))["home"] == _printed(root, "a_attacker", "HOME")
    assert seen == {"queue": False, "queues": [], "keys": {"user": 0, "user-session": 0}}


# What a process of the sandbox's uid can leave behind for the next hand-in in the same warm
# sandbox, and the test that shows the reset clears it or compares it (throwing the sandbox
# away when it differs). A new kind of leftover needs its attack here.
LEFTOVER_KINDS = {
    "processes (daemons, fork loops)": "test_a_daemon_left_by_one_hand_in_is_gone_before_the_next",
    "files in /tmp, /dev/shm and the scratch folder": "test_a_daemon_left_by_one_hand_in_is_gone_before_the_next",
    "folders without permissions": "test_a_daemon_left_by_one_hand_in_is_gone_before_the_next",
    "SysV shared memory, semaphores, message queues": "test_a_changed_zygote_is_thrown_away[sysv_shm]",
    "POSIX message queues": "test_message_queues_and_keys_left_by_one_hand_in_are_gone_before_the_next",
    "keys in the user and user-session keyrings": "test_message_queues_and_keys_left_by_one_hand_in_are_gone_before_the_next",
    "the zygote's nice value": "test_a_changed_zygote_is_thrown_away[renice]",
    "the zygote's CPU affinity": "test_a_changed_zygote_is_thrown_away[affinity]",
    "the zygote's scheduling policy": "test_a_changed_zygote_is_thrown_away[idle_policy]",
    "the zygote's time slice and utilisation clamps": "test_a_changed_zygote_is_thrown_away[time_slice]",
    "the zygote's resource limits": "test_a_changed_zygote_is_thrown_away[lower_rlimit]",
    "the zygote's I/O priority": "test_a_changed_zygote_is_thrown_away[io_priority]",
    "signals to the zygote": "test_signals_do_not_reach_the_zygote",
    "ptrace and /proc reads of the zygote": "test_the_zygote_cannot_be_traced_or_read",
    "module state (patched functions, seeds)": "test_a_warm_kernel_is_a_fresh_process_per_hand_in",
}


def test_every_kind_of_leftover_has_its_attack():
    """Each kind listed above names a test of this file that exists (with its parameter)."""
    for kind, name in LEFTOVER_KINDS.items():
        func, _, param = name.partition("[")
        assert callable(globals().get(func)), kind
        if param:
            assert param.rstrip("]") in ATTACKS, kind
    zygote_checks = ("nice", "policy", "priority", "affinity", "rlimits", "ioprio", "sched_attr")
    from lossgrader import zygote
    assert sorted(zygote._attributes()) == sorted(zygote_checks)      # every attribute compared has a kind


def _assert_untouched(seen):
    assert seen["nice"] == 0 and seen["policy"] == os.SCHED_OTHER
    assert seen["affinity"] == sorted(os.sched_getaffinity(0))
    assert seen["nofile"][0] > 32


def test_warm_sandboxes_end_with_the_batch(tmp_path):
    root = _course(str(tmp_path), {"a": [], "b": []})
    graded = _grade(root)
    assert [r["score"] for r in graded.values()] == [6.0, 6.0]
    time.sleep(0.5)
    assert not warm._every
    mine = [p for p in os.listdir("/tmp") if p.startswith(f"{warm.PREFIX}{os.getpid()}-")]
    assert mine == []


def test_a_warm_kernel_is_a_fresh_process_per_hand_in(tmp_path):
    """Module state set by one hand-in (here torch's seed and a module attribute) is not
    what the next sees: each kernel is a new fork of the zygote."""
    set_state = "import torch as _t\n_t.manual_seed(1234)\n_t.LEAK = 'a'\nprint('HOME' + _os.environ['HOME'])\n"
    see_state = ("import torch as _t, os as _os\nprint('STATE' + repr((getattr(_t, 'LEAK', None), "
                 "_t.initial_seed())))\nprint('HOME' + _os.environ['HOME'])\n")
    root = _course(str(tmp_path), {"a": ["import os as _os\n" + set_state], "b": [see_state]})
    _grade(root)
    assert _printed(root, "a", "HOME") == _printed(root, "b", "HOME")
    leak, seed = eval(_printed(root, "b", "STATE"))
    assert leak is None and seed != 1234



def test_without_a_warm_sandbox_hand_ins_are_graded_cold(tmp_path, monkeypatch):
    """A zygote that cannot start (here: refused at once) costs speed, not grades: every
    hand-in gets a fresh sandbox, the log says why, and the start is not tried again."""
    monkeypatch.setattr(warm, "_unavailable", {})
    starts = []

    def refuse(self, *args, **kwargs):
        starts.append(1)
        raise warm.WarmBroken("the zygote did not start (test)")
    monkeypatch.setattr(warm.WarmSandbox, "__init__", refuse)
    root = _course(str(tmp_path), {"a": [PROBE], "b": [PROBE]})
    graded = _grade(root)
    assert [r["score"] for r in graded.values()] == [6.0, 6.0]
    assert len(starts) == 1
    homes = {json.loads(_printed(root, s, "PROBE"))["home"] for s in ("a", "b")}
    assert len(homes) == 2 and not any(warm.PREFIX in h for h in homes)
    with open(os.path.join(root, ".lossgrader", "logs", f"a__{A}.log"), encoding="utf-8") as fh:
        assert "no warm sandbox" in fh.read()


def test_a_warm_sandbox_lost_mid_hand_in_leaves_it_to_a_cold_one(tmp_path, monkeypatch):
    """The zygote is lost when the kernel should be forked: the hand-in goes on in a cold
    sandbox on the same scratch folder, with its full grade; the next gets a new warm one."""
    real = warm.WarmSandbox.fork_kernel
    lost = []

    def lose_once(self, *args, **kwargs):
        if not lost:
            lost.append(self.folder)
            self.kill()
            raise warm.WarmBroken("the zygote exited (test)")
        return real(self, *args, **kwargs)
    monkeypatch.setattr(warm.WarmSandbox, "fork_kernel", lose_once)
    root = _course(str(tmp_path), {"a": [PROBE], "b": [PROBE]})
    graded = _grade(root)
    assert [r["score"] for r in graded.values()] == [6.0, 6.0], graded
    first, second = (json.loads(_printed(root, s, "PROBE"))["home"] for s in ("a", "b"))
    assert first.startswith(lost[0])                    # the cold sandbox used the same scratch folder
    assert warm.PREFIX in second and not second.startswith(lost[0])
    assert not os.path.exists(lost[0])                  # removed with the hand-in


def test_only_stale_folders_of_dead_processes_are_swept(tmp_path, monkeypatch):
    """A folder left by a killed grader is removed at the next start; a live one (its
    process is alive, or its socket folder changed within the hour) is not."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(warm, "_swept", False)
    dead = 2 ** 22 + 12345           # above the usual pid_max: no such process
    while os.path.exists(f"/proc/{dead}"):
        dead += 1
    old = tmp_path / f"{warm.PREFIX}{dead}-old"
    recent = tmp_path / f"{warm.PREFIX}{dead}-recent"
    alive = tmp_path / f"{warm.PREFIX}{os.getppid()}-alive"
    for folder in (old, recent, alive):
        (folder / "ipc").mkdir(parents=True)
    hour_ago = time.time() - 2 * warm.STALE_SECONDS
    for path in (old, old / "ipc", alive, alive / "ipc"):
        os.utime(path, (hour_ago, hour_ago))
    warm._sweep_stale()
    assert not old.exists() and recent.exists() and alive.exists()
