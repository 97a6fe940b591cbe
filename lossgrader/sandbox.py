"""The per-hand-in sandbox: student code runs under bubblewrap (``bwrap``).

One :class:`Sandbox` per hand-in (or per warm zygote). Everything started through it (a
command with :meth:`Sandbox.popen` / :meth:`Sandbox.run`; ``lossgrader.kernel`` starts the
hand-in's kernel so, handing it its sockets as inherited descriptors) runs

* as uid/gid 1000 in its own user namespace, with no capabilities and no way to create
  further user namespaces (``--disable-userns`` where bwrap has it);
* in its own PID, IPC, UTS, cgroup and network namespaces (``--unshare-all``): no network
  at all, not even to the host's loopback;
* on a read-only view of what Python and torch need: ``/usr`` (and the ``/bin``, ``/lib*``
  links to it), a handful of files from ``/etc`` (the dynamic linker's cache, time zone,
  fonts; ``passwd``/``group``/``hosts`` are synthetic), the interpreter's prefixes and every
  site-packages directory, bound at their own paths; the rest of the machine (``/root``,
  ``/home``, the rest of ``/etc``, the course folder, other hand-ins) does not exist inside;
* with ``scratch`` as its working folder: a private, size-capped tmpfs at that path
  (``private_scratch=True``, how hand-ins are graded: nothing outside reads or writes it)
  or the host folder bound read-write at the same path (the only writable folder shared
  with the outside); plus private, size-capped tmpfs mounts on ``/tmp`` and
  ``/dev/shm`` and its own POSIX message queue folder ``/dev/mqueue``;
* with ``hide`` paths masked by an empty read-only tmpfs (an empty file for a file), even
  when they lie inside a bound tree; ``extra_ro`` adds read-only binds;
* with ``--die-with-parent`` (nothing outlives the process that started the sandbox) and
  ``--new-session`` (no terminal injection);
* under resource limits (:class:`Limits`).

Where the limits come from depends on the machine (``Sandbox.limit_sources`` says which
one applies):

==========================  ==================================  ===========================
limit                       with a writable cgroup              without one (fallback)
==========================  ==================================  ===========================
memory                      memory cgroup (v1                   ``RLIMIT_AS`` per process
                            ``memory.limit_in_bytes`` + memsw,
                            v2 ``memory.max``, swap 0)
processes (tasks: threads   pids cgroup (``pids.max``)          ``RLIMIT_NPROC`` = tasks the
count too)                                                      user already runs + the
                                                                limit; **none when root**
                                                                (root is exempt)
file size                   ``RLIMIT_FSIZE`` (always)
CPU time                    ``RLIMIT_CPU`` per process (always): SIGXCPU at the limit,
                            SIGKILL one second later
wall time                   :meth:`Sandbox.wait` / :meth:`Sandbox.run` (or the caller's
                            watchdog) kill the whole sandbox
captured output             :meth:`Sandbox.run` keeps ``max_output_bytes`` per stream; the
                            caller applies the same cap to kernel output
==========================  ==================================  ===========================

A per-sandbox cgroup is created under the caller's own cgroup (cgroup v1: one per
controller, e.g. ``/sys/fs/cgroup/memory/<own>/lossgrader-<pid>-<pidns>-<n>``; cgroup v2: a child
of the caller's cgroup or of its parent, whichever is writable and has the ``memory`` and
``pids`` controllers enabled). Running as root on cgroup v1 (this project's machines) or
as root on a usual cgroup v2 host gives the cgroup column; a normal user gets it where
systemd delegated a writable subtree (desktop sessions), otherwise the fallback. The
limits are applied by a tiny pre-exec wrapper (``python -I -S -c ...``) that joins the
cgroup, sets the rlimits and ``exec``\\ s bwrap, so that :meth:`Sandbox.command` is one
self-contained command line (what a kernel manager needs).

``enabled=False`` (``--no-sandbox``) runs the command unconfined, with the same wrapper and
limits: unsafe for untrusted code, kept for machines without bwrap.

``--die-with-parent`` is bound to the process that started bwrap: its death (even by
SIGKILL) ends the sandbox; the end of the thread that started it does not (checked on
Linux 6.18). The scratch folder is left to the caller, who created it.
"""

from __future__ import annotations

import atexit
import functools
import itertools
import json
import os
import shutil
import signal
import site
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any, Sequence

from . import privileges

__all__ = [
    "Limits",
    "Sandbox",
    "SandboxRun",
    "SandboxTimeout",
    "bwrap_problem",
    "SANDBOX_UID",
]

#: uid and gid of student code inside the sandbox.
SANDBOX_UID = 1000


@dataclass(frozen=True)
class Limits:
    """Resource limits of one sandbox (see the module docstring for how each is enforced)."""

    memory_bytes: int = 4 * 2**30
    """Memory of the whole sandbox (cgroup), or address space per process (fallback)."""
    max_processes: int = 64
    """Tasks (processes and threads) of the whole sandbox."""
    max_file_bytes: int = 64 * 2**20
    """Largest file any process may write (also bounds the private tmpfs, 4x this)."""
    cpu_seconds: int = 600
    """CPU time per process."""
    wall_seconds: float = 900.0
    """Enforced by the caller's watchdog or by :meth:`Sandbox.wait` / :meth:`Sandbox.run`."""
    max_output_bytes: int = 2 * 2**20
    """Cap the caller applies to captured output (per stream in :meth:`Sandbox.run`)."""

    def tmpfs_bytes(self) -> int:
        """Size of the private ``/tmp`` and ``/dev/shm`` tmpfs mounts."""
        return max(1 << 20, min(self.memory_bytes, 4 * self.max_file_bytes))


class SandboxTimeout(subprocess.TimeoutExpired):
    """The sandbox ran past its wall-time limit and was killed."""


@dataclass
class SandboxRun:
    """What :meth:`Sandbox.run` returns."""

    returncode: int
    stdout: bytes
    stderr: bytes
    timed_out: bool
    truncated: bool
    """True when some output was dropped because of ``Limits.max_output_bytes``."""
    seconds: float
    usage: dict


# --------------------------------------------------------------------------------------
# Is bwrap usable here?

_PROBE_TIMEOUT_S = 60


@functools.lru_cache(maxsize=None)
def _bwrap_features(exe: str) -> frozenset:
    """The options this bwrap's ``--help`` lists (older bwraps lack ``--size`` etc.)."""
    try:
        out = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return frozenset()
    text = out.stdout + out.stderr
    return frozenset(word for word in text.split() if word.startswith("--"))


@functools.lru_cache(maxsize=1)
def bwrap_problem() -> str | None:
    """None when bwrap can run a sandbox here, else a clear English reason.

    Checked once per process (cached) by running ``true`` in a real sandbox built exactly
    like :class:`Sandbox` builds its own.
    """
    exe = shutil.which("bwrap")
    if exe is None:
        return (
            "bubblewrap is not installed (no `bwrap` on PATH); install it, "
            "e.g. `sudo apt-get install bubblewrap` on Debian/Ubuntu"
        )
    scratch = tempfile.mkdtemp(prefix="lossgrader-bwrap-probe-")
    try:
        probe = Sandbox(scratch, _use_cgroups=False, private_scratch=True)   # as hand-ins are graded
        argv = probe._bwrap_argv(["true"], cwd=None)
        try:
            out = subprocess.run(
                argv, capture_output=True, text=True, timeout=_PROBE_TIMEOUT_S,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            return f"bwrap did not finish a trivial sandbox within {_PROBE_TIMEOUT_S} s"
        except OSError as exc:
            return f"bwrap cannot be started: {exc}"
        if out.returncode == 0:
            return None
        err = out.stderr.strip() or f"exit status {out.returncode}"
        low = err.lower()
        if "namespace" in low or "uid map" in low or "operation not permitted" in low:
            return (
                "bwrap is installed but cannot create the sandbox's namespaces "
                "(unprivileged user namespaces are disabled, e.g. sysctl "
                "kernel.unprivileged_userns_clone=0, "
                "kernel.apparmor_restrict_unprivileged_userns=1, or a container "
                f"without the needed privileges): bwrap said: {err}"
            )
        return f"bwrap is installed but failed to run a trivial sandbox: {err}"
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# --------------------------------------------------------------------------------------
# Read-only view of the system

# Files of /etc that Python and torch need (dynamic linker, time zone, fonts, name
# service configuration). Nothing else from /etc is visible.
_ETC_PATHS = (
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/nsswitch.conf",
    "/etc/alternatives",
    "/etc/fonts",
)

_SYNTHETIC_ETC = {
    "passwd": (
        "root:x:0:0:root:/root:/usr/sbin/nologin\n"
        f"student:x:{SANDBOX_UID}:{SANDBOX_UID}:student:/tmp:/bin/sh\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
    ),
    "group": f"root:x:0:\nstudent:x:{SANDBOX_UID}:\nnogroup:x:65534:\n",
    "hosts": "127.0.0.1 localhost\n::1 localhost\n",
}

_etc_lock = threading.Lock()
_etc_dir: str | None = None


def _synthetic_etc_dir() -> str:
    """A private folder (one per process) holding the synthetic passwd, group and hosts,
    and the empty file that masks a hidden file."""
    global _etc_dir
    with _etc_lock:
        if _etc_dir is None or not os.path.isdir(_etc_dir):
            path = tempfile.mkdtemp(prefix="lossgrader-sandbox-etc-")
            for name, text in {**_SYNTHETIC_ETC, "empty": ""}.items():
                with open(os.path.join(path, name), "w", encoding="ascii") as f:
                    f.write(text)
                os.chmod(os.path.join(path, name), 0o644)
            os.chmod(path, 0o755)
            atexit.register(shutil.rmtree, path, True)
            _etc_dir = path
        return _etc_dir


def gpu_devices() -> list[str]:
    """The NVIDIA device files a CUDA program needs (none on a machine without them)."""
    import glob
    return sorted(glob.glob("/dev/nvidia*"))


def python_paths() -> list[str]:
    """The interpreter's prefixes and site-packages directories, bound read-only.

    Both the given path and its real path are listed when they differ (a symlinked
    prefix). Paths under ``/usr`` are left out: ``/usr`` is bound whole.
    """
    candidates = [sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix]
    try:
        candidates += site.getsitepackages()
    except AttributeError:  # very old virtualenvs
        pass
    try:
        candidates.append(site.getusersitepackages())
    except AttributeError:
        pass
    paths: list[str] = []
    for p in candidates:
        for q in (os.path.abspath(p), os.path.realpath(p)):
            if os.path.isdir(q) and q not in paths and not _inside(q, "/usr"):
                paths.append(q)
    return paths


def _inside(path: str, root: str) -> bool:
    """Whether ``path`` is ``root`` or lies below it (both absolute, normalised)."""
    return path == root or path.startswith(root.rstrip("/") + "/")


def _depth(path: str) -> int:
    return len([part for part in path.split("/") if part])


# --------------------------------------------------------------------------------------
# cgroups

_CONTROLLERS = ("memory", "pids", "cpuacct")  # cpuacct: accounting only (cgroup v1)
_cgroup_counter = itertools.count()
_CGROUP_PREFIX = "lossgrader-"


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return None


def _write(path: str, value: str) -> None:
    with open(path, "w", encoding="ascii") as f:
        f.write(value)


def _own_cgroup_dirs(proc: str = "/proc/self") -> tuple[dict[str, str], str | None]:
    """Our own cgroup directories: ({v1 controller: dir}, v2 dir or None).

    Read from ``/proc/self/cgroup`` (which cgroup) and ``/proc/self/mountinfo`` (where the
    hierarchy is mounted, and which part of it the mount shows).
    """
    membership: dict[str, str] = {}  # "memory" -> "/a/b", "" -> v2 path
    text = _read(f"{proc}/cgroup") or ""
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            membership[""] = path
        for c in controllers.split(","):
            if c:
                membership[c] = path
    v1: dict[str, str] = {}
    v2: str | None = None
    for line in (_read(f"{proc}/mountinfo") or "").splitlines():
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(fields) < 5 or len(rfields) < 3:
            continue
        root, mountpoint = fields[3], fields[4].replace("\\040", " ")
        fstype, options = rfields[0], rfields[2].split(",")
        if fstype == "cgroup":
            for c in options:
                if c in membership and c in _CONTROLLERS:
                    rel = _relative(membership[c], root)
                    if rel is not None:
                        v1[c] = os.path.normpath(mountpoint + rel)
        elif fstype == "cgroup2" and "" in membership:
            rel = _relative(membership[""], root)
            if rel is not None:
                v2 = os.path.normpath(mountpoint + rel)
    return v1, v2


def _relative(path: str, root: str) -> str | None:
    """``path`` seen from a mount whose root is ``root`` ('/a/b' under root '/a' -> '/b')."""
    if root == "/":
        return path
    if _inside(path, root):
        return path[len(root):] or "/"
    return None


def _pid_namespace() -> str:
    """An id of our PID namespace: a pid means something only inside its namespace."""
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return "0"


def _cgroup_name() -> str:
    return f"{_CGROUP_PREFIX}{os.getpid()}-{_pid_namespace()}-{next(_cgroup_counter)}"


def _remove_stale_cgroups(parent: str) -> None:
    """Remove the empty cgroups left by sandboxes whose creating process died.

    Only cgroups created from our PID namespace are considered (a pid means nothing in
    another one), and only empty ones are removed (rmdir fails on a busy cgroup): a
    sandbox's processes never outlive their creator anyway (``--die-with-parent``).
    """
    try:
        names = os.listdir(parent)
    except OSError:
        return
    ns = _pid_namespace()
    for name in names:
        parts = name[len(_CGROUP_PREFIX):].split("-")
        if not name.startswith(_CGROUP_PREFIX) or len(parts) != 3 or parts[1] != ns:
            continue
        try:
            os.kill(int(parts[0]), 0)
            continue  # its creator is alive: not ours to touch
        except ProcessLookupError:
            pass
        except (ValueError, PermissionError):
            continue
        try:
            os.rmdir(os.path.join(parent, name))
        except OSError:
            pass


def _kill_cgroup_members(path: str, deadline_s: float = 5.0) -> None:
    """SIGKILL every process of a cgroup until it is empty (or the deadline passes)."""
    if os.path.exists(os.path.join(path, "cgroup.kill")):
        try:
            _write(os.path.join(path, "cgroup.kill"), "1")
        except OSError:
            pass
    end = time.monotonic() + deadline_s
    while True:
        pids = [int(p) for p in (_read(os.path.join(path, "cgroup.procs")) or "").split()]
        if not pids or time.monotonic() > end:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.02)


class _Cgroup:
    """The per-sandbox cgroup: one directory per v1 controller, or one v2 directory."""

    def __init__(self, dirs: dict[str, str], version: int):
        self.dirs = dirs  # controller -> directory (v2: the same directory for all)
        self.version = version

    @classmethod
    def create(cls, limits: Limits, proc: str = "/proc/self") -> "_Cgroup | None":
        """Create and configure a cgroup for one sandbox, or None where we cannot."""
        name = _cgroup_name()
        v1, v2 = _own_cgroup_dirs(proc)
        if "memory" in v1 or "pids" in v1:
            made: dict[str, str] = {}
            try:
                for c in _CONTROLLERS:
                    if c not in v1 or not os.access(v1[c], os.W_OK):
                        continue
                    _remove_stale_cgroups(v1[c])
                    path = os.path.join(v1[c], name)
                    os.mkdir(path)
                    made[c] = path
                if "memory" in made:
                    _write(os.path.join(made["memory"], "memory.limit_in_bytes"),
                           str(limits.memory_bytes))
                    memsw = os.path.join(made["memory"], "memory.memsw.limit_in_bytes")
                    if os.path.exists(memsw):
                        try:
                            _write(memsw, str(limits.memory_bytes))
                        except OSError:
                            pass  # swap accounting off: nothing to limit
                if "pids" in made:
                    _write(os.path.join(made["pids"], "pids.max"), str(limits.max_processes))
            except OSError:
                for path in made.values():
                    try:
                        os.rmdir(path)
                    except OSError:
                        pass
                return None
            if "memory" in made or "pids" in made:
                return cls(made, 1)
            for path in made.values():
                os.rmdir(path)
            return None
        if v2 is not None:
            return cls._create_v2(v2, name, limits)
        return None

    @classmethod
    def _create_v2(cls, own: str, name: str, limits: Limits) -> "_Cgroup | None":
        # A child of our own cgroup works where ours already delegates memory and pids
        # (or is the hierarchy's root); otherwise a sibling, under a writable parent that
        # delegates them (systemd user sessions, root on most hosts).
        for parent in (own, os.path.dirname(own)):
            sub = set((_read(os.path.join(parent, "cgroup.subtree_control")) or "").split())
            if not {"memory", "pids"} <= sub and parent == own:
                try:
                    _write(os.path.join(parent, "cgroup.subtree_control"), "+memory +pids")
                except OSError:
                    continue
                sub = set((_read(os.path.join(parent, "cgroup.subtree_control")) or "").split())
            if not {"memory", "pids"} <= sub or not os.access(parent, os.W_OK):
                continue
            _remove_stale_cgroups(parent)
            path = os.path.join(parent, name)
            try:
                os.mkdir(path)
                _write(os.path.join(path, "memory.max"), str(limits.memory_bytes))
                if os.path.exists(os.path.join(path, "memory.swap.max")):
                    _write(os.path.join(path, "memory.swap.max"), "0")
                _write(os.path.join(path, "pids.max"), str(limits.max_processes))
            except OSError:
                try:
                    os.rmdir(path)
                except OSError:
                    pass
                continue
            return cls({"memory": path, "pids": path, "cpu": path}, 2)
        return None

    def procs_files(self) -> list[str]:
        """The ``cgroup.procs`` files a new process writes its pid to, to join."""
        return sorted({os.path.join(d, "cgroup.procs") for d in self.dirs.values()})

    def usage(self) -> dict:
        out: dict[str, Any] = {}
        mem, pids = self.dirs.get("memory"), self.dirs.get("pids")
        if mem:
            name = "memory.max_usage_in_bytes" if self.version == 1 else "memory.peak"
            peak = _read(os.path.join(mem, name))
            out["peak_memory_bytes"] = int(peak) if peak and peak.isdigit() else None
            events = _read(os.path.join(mem, "memory.failcnt" if self.version == 1
                                        else "memory.events")) or ""
            if self.version == 1:
                out["memory_limit_hits"] = int(events) if events.isdigit() else None
            else:
                fields = dict(line.split() for line in events.splitlines() if " " in line)
                out["memory_limit_hits"] = int(fields.get("max", 0)) + int(fields.get("oom_kill", 0))
        if pids:
            # live processes (pids.current lags: it counts tasks until they are freed)
            procs = _read(os.path.join(pids, "cgroup.procs"))
            out["processes"] = len(procs.split()) if procs is not None else None
            peak = _read(os.path.join(pids, "pids.peak"))
            out["peak_processes"] = int(peak) if peak and peak.isdigit() else None
        if self.version == 1 and "cpuacct" in self.dirs:
            ns = _read(os.path.join(self.dirs["cpuacct"], "cpuacct.usage"))
            out["cpu_seconds"] = int(ns) / 1e9 if ns and ns.isdigit() else None
        elif self.version == 2 and "cpu" in self.dirs:
            stat = _read(os.path.join(self.dirs["cpu"], "cpu.stat")) or ""
            fields = dict(line.split() for line in stat.splitlines() if " " in line)
            if "usage_usec" in fields:
                out["cpu_seconds"] = int(fields["usage_usec"]) / 1e6
        return out

    def kill_all(self) -> None:
        for d in sorted(set(self.dirs.values())):
            _kill_cgroup_members(d)

    def remove(self) -> None:
        for d in sorted(set(self.dirs.values())):
            for _ in range(50):
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError:  # busy: members still exiting
                    _kill_cgroup_members(d, deadline_s=0.1)
                    time.sleep(0.02)


# --------------------------------------------------------------------------------------
# The pre-exec wrapper: join the cgroup, set rlimits, exec. Runs outside the sandbox, as the
# caller, with ``python -I -S`` (no site, no environment: a few milliseconds).

_WRAPPER = r"""
import json, os, resource, sys
spec = json.loads(sys.argv[1])
argv = sys.argv[2:]
try:
    for procs in spec["join"]:
        with open(procs, "w") as f:
            f.write(str(os.getpid()))
    for name, soft, hard in spec["rlimits"]:
        which = getattr(resource, name)
        old_hard = resource.getrlimit(which)[1]
        if old_hard != resource.RLIM_INFINITY:
            soft, hard = min(soft, old_hard), min(hard, old_hard)
        resource.setrlimit(which, (soft, hard))
    if spec["setsid"]:
        try:
            os.setsid()
        except OSError:
            pass  # already a session leader
    os.environ.update(spec["env"])
    if spec["cwd"]:
        os.chdir(spec["cwd"])
    os.execvp(argv[0], argv)
except Exception as exc:
    sys.stderr.write("lossgrader sandbox: cannot start %r: %s\n" % (argv, exc))
    sys.exit(126)
"""


def _count_user_tasks(uid: int) -> int:
    """Tasks (threads included) whose real uid is ``uid``: what RLIMIT_NPROC counts."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        status = _read(f"/proc/{entry}/status")
        if not status:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        try:
            if int(fields["Uid"].split()[0]) == uid:
                total += int(fields["Threads"])
        except (KeyError, ValueError, IndexError):
            continue
    return total


# --------------------------------------------------------------------------------------
# The sandbox


class Sandbox:
    """One sandbox per hand-in.

    ``scratch`` is a private writable folder (created by the caller, holding only this
    hand-in's files); it is bound at the SAME absolute path inside, so that a Jupyter
    connection file and ipc sockets in it are seen by both sides.

    ``extra_ro``: more paths bound read-only at their own path. ``hide``: paths masked by
    an empty read-only tmpfs (an empty file for a file), also when inside a bound tree.
    Mounts are applied shallowest first, so a deeper ``extra_ro`` path inside a hidden
    tree is visible again, and a deeper hidden path inside a bound tree is masked.
    ``env``: added to the sandbox's minimal environment (PATH, HOME=/tmp, LANG, one
    thread per BLAS/OpenMP pool); the ``env`` of ``popen`` only reaches bwrap itself.
    ``enabled=False``: no bwrap (unsafe), only the limits.
    ``devices``: device files bound into the sandbox's minimal ``/dev`` (``gpu_devices()``
    for grading on CUDA: the NVIDIA driver's libraries come with ``/usr``).
    ``as_pid_1``: the command itself is the PID namespace's init (bwrap installs no
    reaper of its own): signals from inside the sandbox reach it only where it set a
    handler, SIGKILL and SIGSTOP never, and no other process of the sandbox outlives it
    (``lossgrader.warm``'s zygote).
    ``private_scratch``: ``scratch`` is a tmpfs of the sandbox's own (size
    ``limits.tmpfs_bytes()``) instead of the host folder, which then need not exist.
    """

    def __init__(
        self,
        scratch: str,
        limits: Limits = Limits(),
        *,
        extra_ro: Sequence[str] = (),
        hide: Sequence[str] = (),
        env: dict | None = None,
        enabled: bool = True,
        devices: Sequence[str] = (),
        as_pid_1: bool = False,
        private_scratch: bool = False,
        _use_cgroups: bool = True,
    ):
        self.scratch = os.path.abspath(os.fspath(scratch))
        self.private_scratch = private_scratch and enabled
        if not self.private_scratch and not os.path.isdir(self.scratch):
            raise FileNotFoundError(f"sandbox scratch folder does not exist: {self.scratch}")
        self.limits = limits
        self.extra_ro = tuple(os.path.abspath(os.fspath(p)) for p in extra_ro)
        for path in self.extra_ro:
            if not os.path.exists(path):
                raise FileNotFoundError(f"extra read-only path does not exist: {path}")
        self.hide = tuple(os.path.abspath(os.fspath(p)) for p in hide)
        for h in self.hide:
            if h == self.scratch or h == os.path.realpath(self.scratch):
                raise ValueError(f"the scratch folder cannot be hidden: {h}")
        self.env = dict(env or {})
        self.enabled = enabled
        self.devices = tuple(d for d in devices if os.path.exists(d))
        self.as_pid_1 = as_pid_1
        self._use_cgroups = _use_cgroups
        self._cgroup: _Cgroup | None = None
        self._cgroup_tried = False
        self._procs: list[subprocess.Popen] = []
        self._final_usage: dict | None = None
        self._peak_rss = 0
        self._lock = threading.Lock()

    # -- command lines ------------------------------------------------------------------

    def command(self, argv: Sequence[str], *, cwd: str | None = None) -> list[str]:
        """The full command line running argv inside bwrap (or argv itself, with the
        rlimits applied through a small wrapper, when enabled=False).

        ``cwd`` (default: ``scratch``) is the working directory inside.
        """
        argv = [os.fspath(a) for a in argv]
        if not argv:
            raise ValueError("empty command")
        cgroup = self._ensure_cgroup()
        spec = {
            "join": cgroup.procs_files() if cgroup else [],
            "rlimits": self._rlimits(cgroup),
            "setsid": not self.enabled,
            "env": {} if self.enabled else self.env,
            "cwd": None if self.enabled else (cwd or self.scratch),
        }
        inner = self._bwrap_argv(argv, cwd=cwd) if self.enabled else argv
        return [sys.executable, "-I", "-S", "-c", _WRAPPER, json.dumps(spec), *inner]

    @property
    def limit_sources(self) -> dict[str, str]:
        """Which mechanism enforces each limit on this machine (for logs and reports)."""
        cgroup = self._ensure_cgroup()
        root = os.geteuid() == 0
        kind = f"cgroup v{cgroup.version}" if cgroup else None
        if cgroup and "memory" in cgroup.dirs:
            memory = kind
        else:
            memory = "RLIMIT_AS (per process)"
        if cgroup and "pids" in cgroup.dirs:
            processes = kind
        elif root:
            processes = "none (root is exempt from RLIMIT_NPROC and no pids cgroup)"
        else:
            processes = "RLIMIT_NPROC (the user's tasks + the limit)"
        return {
            "memory": memory,
            "processes": processes,
            "file_size": "RLIMIT_FSIZE",
            "cpu": "RLIMIT_CPU (per process)",
            "wall": "Sandbox.wait / Sandbox.run or the caller's watchdog",
            "isolation": "bwrap" if self.enabled else "none (--no-sandbox)",
        }

    def _ensure_cgroup(self) -> _Cgroup | None:
        with self._lock:
            if not self._cgroup_tried:
                self._cgroup_tried = True
                if self._use_cgroups:
                    with privileges.as_root():       # a grading thread's own writes are not root's
                        self._cgroup = _Cgroup.create(self.limits)
            return self._cgroup

    def _rlimits(self, cgroup: _Cgroup | None) -> list[tuple[str, int, int]]:
        lim = self.limits
        out = [
            ("RLIMIT_FSIZE", lim.max_file_bytes, lim.max_file_bytes),
            ("RLIMIT_CPU", lim.cpu_seconds, lim.cpu_seconds + 1),
            ("RLIMIT_CORE", 0, 0),
        ]
        if cgroup is None or "memory" not in cgroup.dirs:
            out.append(("RLIMIT_AS", lim.memory_bytes, lim.memory_bytes))
        if (cgroup is None or "pids" not in cgroup.dirs) and os.geteuid() != 0:
            n = _count_user_tasks(os.getuid()) + lim.max_processes
            out.append(("RLIMIT_NPROC", n, n))
        return out

    def _environment(self) -> dict[str, str]:
        env = {
            "PATH": f"{os.path.dirname(sys.executable)}:/usr/local/bin:/usr/bin:/bin",
            "HOME": "/tmp",
            "TMPDIR": "/tmp",
            "USER": "student",
            "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
            # one thread per pool: threads count against max_processes, and the grader
            # runs several hand-ins side by side
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
        }
        env.update(self.env)
        return env

    def _bwrap_argv(self, argv: list[str], *, cwd: str | None) -> list[str]:
        exe = shutil.which("bwrap")
        if exe is None:
            raise RuntimeError(bwrap_problem() or "bwrap is not installed")
        features = _bwrap_features(exe)
        a = [exe, "--unshare-all", "--unshare-user",
             "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
             "--hostname", "sandbox", "--die-with-parent", "--new-session",
             "--cap-drop", "ALL"]
        if "--disable-userns" in features:
            a.append("--disable-userns")
        if self.as_pid_1:
            if "--as-pid-1" not in features:
                raise RuntimeError("this bwrap has no --as-pid-1")
            a.append("--as-pid-1")

        # the system, read-only
        a += ["--ro-bind", "/usr", "/usr"]
        for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
            path = "/" + name
            if os.path.islink(path):
                a += ["--symlink", os.readlink(path), path]
            elif os.path.isdir(path):
                a += ["--ro-bind", path, path]
        for path in _ETC_PATHS:
            if os.path.exists(path):
                a += ["--ro-bind", path, path]
        etc = _synthetic_etc_dir()
        for name in _SYNTHETIC_ETC:
            a += ["--ro-bind", os.path.join(etc, name), f"/etc/{name}"]
        a += ["--proc", "/proc", "--dev", "/dev"]
        for device in self.devices:
            a += ["--dev-bind", device, device]
        size = ["--size", str(self.limits.tmpfs_bytes())] if "--size" in features else []
        a += [*size, "--tmpfs", "/tmp", *size, "--tmpfs", "/dev/shm"]
        if "--mqueue" in features:
            a += ["--mqueue", "/dev/mqueue"]

        # path mounts, shallowest first: a deeper one lies on top of a shallower one
        mounts: list[tuple[int, int, str, list[str]]] = []
        for path in python_paths():
            mounts.append((_depth(path), 0, path, ["--ro-bind", path, path]))
        for path in self.extra_ro:
            mounts.append((_depth(path), 0, path, ["--ro-bind", path, path]))
        own = [*size, "--tmpfs", self.scratch] if self.private_scratch else ["--bind", self.scratch, self.scratch]
        mounts.append((_depth(self.scratch), 1, self.scratch, own))
        remount = []
        for given in self.hide:
            for path in dict.fromkeys((given, os.path.realpath(given))):
                if os.path.isdir(path):
                    tiny = ["--size", "4096"] if size else []
                    mounts.append((_depth(path), 2, path, [*tiny, "--tmpfs", path]))
                    remount.append(path)
                elif os.path.exists(path):
                    mounts.append((_depth(path), 2, path,
                                   ["--ro-bind", os.path.join(etc, "empty"), path]))
        for _, _, _, args in sorted(mounts, key=lambda m: (m[0], m[1])):
            a += args
        for path in remount:
            a += ["--remount-ro", path]
        # bwrap's own root is a writable tmpfs: make it, and /dev, read-only too
        # (non-recursive: scratch, /tmp and /dev/shm stay writable)
        a += ["--remount-ro", "/dev", "--remount-ro", "/"]

        a += ["--chdir", cwd or self.scratch, "--clearenv"]
        for key, value in self._environment().items():
            a += ["--setenv", key, str(value)]
        return a + ["--", *argv]

    # -- running --------------------------------------------------------------------------

    def popen(self, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen:
        """Start argv in the sandbox; ``popen_kwargs`` go to :class:`subprocess.Popen`
        (``cwd`` is the working directory inside; the process runs from ``scratch``)."""
        cwd = popen_kwargs.pop("cwd", None)
        cwd = os.fspath(cwd) if cwd is not None else None
        popen_kwargs.setdefault("stdin", subprocess.DEVNULL)
        popen_kwargs.setdefault("close_fds", True)
        where = self.scratch if os.path.isdir(self.scratch) else None
        proc = subprocess.Popen(self.command(argv, cwd=cwd), cwd=where, **popen_kwargs)
        self._track(proc)
        return proc

    def _track(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._procs.append(proc)

    def wait(self, proc: subprocess.Popen, timeout: float | None = None) -> int:
        """Wait for proc; past ``timeout`` (default ``limits.wall_seconds``) kill the whole
        sandbox and raise :class:`SandboxTimeout`."""
        timeout = self.limits.wall_seconds if timeout is None else timeout
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise SandboxTimeout(proc.args, timeout) from None

    def run(
        self, argv: Sequence[str], *, input: bytes | None = None,
        timeout: float | None = None, cwd: str | None = None,
    ) -> SandboxRun:
        """Run argv to completion, capturing at most ``max_output_bytes`` per stream;
        past ``timeout`` (default ``limits.wall_seconds``) the sandbox is killed."""
        start = time.monotonic()
        proc = self.popen(argv, cwd=cwd, stdin=subprocess.PIPE if input is not None
                          else subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        cap = self.limits.max_output_bytes
        chunks: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
        truncated = threading.Event()

        def drain(name: str, stream) -> None:
            kept = 0
            while True:
                data = stream.read1(65536)
                if not data:
                    break
                room = cap - kept
                if len(data) > room:
                    truncated.set()  # keep reading, so that the process never blocks
                if room > 0:
                    chunks[name].append(data[:room])
                    kept += min(room, len(data))
            stream.close()

        threads = [threading.Thread(target=drain, args=(n, getattr(proc, n)), daemon=True)
                   for n in ("stdout", "stderr")]
        for t in threads:
            t.start()
        if input is not None:
            try:
                proc.stdin.write(input)
            except BrokenPipeError:
                pass
            proc.stdin.close()
        timed_out = False
        try:
            returncode = self.wait(proc, timeout)
        except SandboxTimeout:
            timed_out = True
            returncode = proc.wait()
        for t in threads:
            t.join(timeout=5)
        stdout, stderr = b"".join(chunks["stdout"]), b"".join(chunks["stderr"])
        return SandboxRun(returncode, stdout, stderr, timed_out, truncated.is_set(),
                          time.monotonic() - start, self.usage())

    # -- stopping and accounting --------------------------------------------------------

    def kill(self) -> None:
        """Kill everything started in the sandbox (each bwrap's whole PID namespace, and
        every process left in the sandbox's cgroup) and release the cgroup."""
        with self._lock:
            procs, self._procs = self._procs, []
            cgroup = self._cgroup
        for proc in procs:
            if proc.poll() is None:
                try:
                    if not self.enabled:
                        os.killpg(proc.pid, signal.SIGKILL)
                    else:
                        proc.kill()  # bwrap: --die-with-parent takes the namespace down
                except OSError:
                    pass
                if not self.enabled:
                    self._kill_descendants(proc.pid)
        if cgroup is not None:
            with privileges.as_root():
                cgroup.kill_all()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        if cgroup is not None:
            final = cgroup.usage()
            final["processes"] = 0
            with privileges.as_root():
                cgroup.remove()
            with self._lock:
                self._final_usage = final
                self._cgroup, self._cgroup_tried = None, False
        else:
            with self._lock:
                self._final_usage = {"peak_memory_bytes": self._peak_rss or None,
                                     "processes": 0}

    @staticmethod
    def _kill_descendants(pid: int) -> None:
        try:
            import psutil
            for child in psutil.Process(pid).children(recursive=True):
                child.kill()
        except Exception:  # psutil missing or the process already gone
            pass

    def usage(self) -> dict:
        """Peak memory, process count and CPU seconds of the sandbox.

        From the cgroup where there is one (``source``: ``"cgroup v1"``/``"cgroup v2"``),
        else from psutil over the live processes (``"psutil"``: the peak is the largest
        total RSS seen by calls to this method). After :meth:`kill`, the last figures.
        Keys: ``peak_memory_bytes``, ``processes``, ``peak_processes``, ``cpu_seconds``,
        ``memory_limit_hits``, ``source``; a value is None where unknown.
        """
        keys = ("peak_memory_bytes", "processes", "peak_processes", "cpu_seconds",
                "memory_limit_hits")
        out: dict[str, Any] = dict.fromkeys(keys)
        with self._lock:
            cgroup, final, procs = self._cgroup, self._final_usage, list(self._procs)
        if cgroup is not None:
            out.update(cgroup.usage())
            out["source"] = f"cgroup v{cgroup.version}"
            return out
        if final is not None and not any(p.poll() is None for p in procs):
            out.update(final)
            out["source"] = "final"
            return out
        out["source"] = "psutil"
        try:
            import psutil
        except ImportError:
            return out
        rss, cpu, count = 0, 0.0, 0
        for proc in procs:
            try:
                root = psutil.Process(proc.pid)
                tree = [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
            for p in tree:
                try:
                    rss += p.memory_info().rss
                    t = p.cpu_times()
                    cpu += t.user + t.system
                    count += p.num_threads()
                except psutil.Error:
                    pass
        self._peak_rss = max(self._peak_rss, rss)
        out.update(peak_memory_bytes=self._peak_rss, processes=count, cpu_seconds=cpu)
        return out

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
