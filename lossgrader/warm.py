"""Warm sandboxes: one sandbox per grading thread, kept between hand-ins, whose zygote
(``lossgrader.zygote``) has imported torch and ipykernel once and forks a fresh kernel
for each hand-in. A hand-in then costs a fork instead of a Python start, an ipykernel
import and a torch import (about 1.8 s of CPU on this project's machines).

The sandbox is the one a cold hand-in gets (``lossgrader.sandbox.Sandbox``: bwrap, no
network, read-only system, the course folder and the genuine grader hidden, cgroup
limits); a warm one serves hand-ins one after the other, never two at once, and between
two of them :meth:`WarmSandbox.reset` kills every process in it, empties every writable
folder and checks that the zygote is as it started (see ``lossgrader.zygote`` for what
is checked and why). Anything unexpected (a zygote that does not answer, answers
garbage, or reports itself changed) throws the sandbox away: the hand-in in progress goes
on in a cold sandbox on the same scratch folder, and the next one gets a new warm sandbox.

Only used with the sandbox on: without bwrap there is no PID namespace to reset.
"""
from __future__ import annotations

import atexit
import dataclasses
import glob
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

from .sandbox import Limits, Sandbox

START_TIMEOUT = 120.0
REPLY_TIMEOUT = 20.0          # a reset waits up to 10 s for processes to die
ZYGOTE_CPU_SECONDS = 10 ** 6  # the zygote's own limit; each kernel gets the hand-in's
MAX_REPLY = 1 << 16
PREFIX = "lossgrader-warm-"


class WarmBroken(RuntimeError):
    """The warm sandbox cannot be trusted or used any more; it was killed."""


class WarmSandbox:
    """A sandbox whose zygote forks kernels. ``folder`` holds ``runtime_root`` (the
    sandbox's own ``lossgrader`` package, with ``zygote.py``) and ``ipc/``, the worker's
    own folder for the kernels' sockets (the sandbox does not see it); ``scratch`` names
    the sandbox's working folder, a tmpfs of its own (nothing of it on the host)."""

    def __init__(self, key: str, folder: str, runtime_root: str, limits: Limits, *,
                 hide=(), env=None, devices=()):
        self.key, self.folder, self.runtime_root = key, folder, runtime_root
        self.scratch = os.path.join(folder, "handin")
        self.ipc = os.path.join(folder, "ipc")
        os.makedirs(self.ipc, mode=0o700, exist_ok=True)
        self.kernel_rlimits = [("RLIMIT_CPU", limits.cpu_seconds, limits.cpu_seconds + 1)]
        own = dataclasses.replace(limits, cpu_seconds=max(limits.cpu_seconds, ZYGOTE_CPU_SECONDS))
        self.sandbox = Sandbox(self.scratch, own, extra_ro=(runtime_root,), hide=hide, env=env,
                               devices=devices, as_pid_1=True, private_scratch=True)
        self.broken = False
        self._buf = b""
        # the control socket: the zygote's stdin; descriptors travel with its messages
        self._control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.proc = self.sandbox.popen([sys.executable, "-m", "lossgrader.zygote"], stdin=theirs.fileno(),
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        finally:
            theirs.close()
        try:
            hello = self._reply(START_TIMEOUT)
        except WarmBroken as exc:
            raise WarmBroken(f"the zygote did not start ({exc})") from None
        if not hello.get("ready"):
            self.kill()
            raise WarmBroken(f"the zygote did not start: {str(hello.get('why'))[:200]}")

    # -- the control socket -----------------------------------------------------------
    def _reply(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        fd = self._control.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise WarmBroken("the zygote stopped answering")
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            try:
                chunk = self._control.recv(65536)
            except OSError:
                chunk = b""
            if not chunk or len(self._buf) > MAX_REPLY:
                self.kill()
                raise WarmBroken("the zygote exited" if not chunk else "the zygote's answer is too long")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        try:
            reply = json.loads(line)
        except ValueError:
            reply = None
        if not isinstance(reply, dict):
            self.kill()
            raise WarmBroken("the zygote's answer is not a JSON object")
        return reply

    def request(self, message: dict, timeout: float | None = None, fds=()) -> dict:
        if self.broken:
            raise WarmBroken("the warm sandbox was thrown away")
        data = (json.dumps(message) + "\n").encode()
        try:
            # a small message on a socket only we and the zygote hold: sent at once, or the
            # zygote is gone; a zygote that stops reading is caught by the reply's deadline
            self._control.settimeout(REPLY_TIMEOUT)
            if fds:
                sent = socket.send_fds(self._control, [data], list(fds))
                data = data[sent:]
            self._control.sendall(data)
        except OSError:
            self.kill()
            raise WarmBroken("the zygote exited") from None
        return self._reply(REPLY_TIMEOUT if timeout is None else timeout)

    # -- what a kernel session needs ----------------------------------------------------
    def fork_kernel(self, info: dict, fds) -> int:
        """Fork a kernel on ``fds`` (its listening sockets and the runtime's socket, in
        lossgrader.zygote.CHANNELS order, then the runtime's); ``info``: key and ports."""
        reply = self.request({"op": "fork", "kernel": info, "rlimits": self.kernel_rlimits}, fds=fds)
        if not isinstance(reply.get("pid"), int) or reply["pid"] <= 0:
            self.kill()
            raise WarmBroken(f"the zygote could not fork a kernel: {reply}")
        return reply["pid"]

    def kernel_alive(self) -> bool:
        return bool(self.request({"op": "alive"}).get("alive"))

    def reset(self, wipe_scratch: bool) -> None:
        """Kill every process of the sandbox but the zygote and empty /tmp and /dev/shm
        (and the scratch folder between two hand-ins); WarmBroken when it is not clean."""
        reply = self.request({"op": "reset", "wipe": [self.scratch] if wipe_scratch else []})
        if not reply.get("clean"):
            self.kill()
            raise WarmBroken(f"the warm sandbox is not clean after a reset: {reply.get('why')}")

    # -- the end ----------------------------------------------------------------------
    def kill(self) -> None:
        """Kill the sandbox (the folder stays until :meth:`remove`: a hand-in in progress
        goes on there in a cold sandbox)."""
        self.broken = True
        try:
            self.sandbox.kill()
        except Exception:
            pass
        try:
            self._control.close()
        except OSError:
            pass

    def remove(self) -> None:
        self.kill()
        shutil.rmtree(self.folder, ignore_errors=True)


# -- one warm sandbox per grading thread -------------------------------------------------
_local = threading.local()
_every: set = set()
_unavailable: dict = {}     # key -> why a warm sandbox could not start (not tried again)
_lock = threading.Lock()
_swept = False


STALE_SECONDS = 3600


def _sweep_stale() -> None:
    """Remove the folders of warm sandboxes whose process is gone (killed without atexit)
    and whose socket folder has not changed for an hour (a process in another PID
    namespace sharing this /tmp may look gone: its folder changes with every hand-in)."""
    global _swept
    with _lock:
        if _swept:
            return
        _swept = True
    now = time.time()
    for path in glob.glob(os.path.join(tempfile.gettempdir(), PREFIX + "*")):
        pid = os.path.basename(path)[len(PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid() or os.path.exists(f"/proc/{pid}"):
            continue
        try:
            changed = max(os.stat(path).st_mtime, os.stat(os.path.join(path, "ipc")).st_mtime)
        except OSError:
            changed = 0.0
        if now - changed > STALE_SECONDS:
            shutil.rmtree(path, ignore_errors=True)


def new_folder() -> str:
    return tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-")


def unavailable(key: str) -> str | None:
    """Why no warm sandbox can start for ``key`` in this process (None: it can)."""
    with _lock:
        return _unavailable.get(key)


def acquire(key: str, factory) -> WarmSandbox | None:
    """This thread's warm sandbox for ``key`` (``factory()`` makes one when there is
    none, or one for other settings); None when one cannot be started (the caller grades
    cold, and :func:`unavailable` says why: a key that failed once is not tried again)."""
    _sweep_stale()
    if unavailable(key):
        return None
    current = getattr(_local, "warm", None)
    if current is not None and (current.broken or current.key != key):
        _drop(current)
        current = None
    if current is None:
        try:
            current = factory()
        except (WarmBroken, OSError, RuntimeError) as exc:
            with _lock:
                _unavailable[key] = f"{exc.__class__.__name__}: {exc}"[:300]
            return None
        _local.warm = current
        with _lock:
            _every.add(current)
    return current


def release(warm: WarmSandbox) -> None:
    """After a hand-in: reset it for the next one, or throw it away."""
    if not warm.broken:
        try:
            warm.reset(wipe_scratch=True)
            return
        except WarmBroken:
            pass
    _drop(warm)


def _drop(warm: WarmSandbox) -> None:
    warm.remove()
    if getattr(_local, "warm", None) is warm:
        _local.warm = None
    with _lock:
        _every.discard(warm)


def close_all() -> None:
    """Kill every warm sandbox of this process (end of a batch, or exit)."""
    with _lock:
        every = list(_every)
        _every.clear()
    for warm in every:
        warm.remove()


atexit.register(close_all)
