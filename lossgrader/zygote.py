"""A warm interpreter inside one sandbox: it imports torch, IPython and ipykernel once,
then forks a fresh Jupyter kernel for each hand-in the worker sends to that sandbox.

This file runs INSIDE the sandbox (``python -m lossgrader.zygote``, from the sandbox's
own ``lossgrader`` package: the worker copies it there with the runtime). It is spoken to
over one Unix socket inherited as its stdin, one JSON object per line, by
``lossgrader.warm``; descriptors travel with a message (``SCM_RIGHTS``):

``{"op": "fork", "kernel": INFO, "rlimits": [[name, soft, hard], ...]}`` + descriptors
    fork a kernel on the descriptors sent with the message (see :func:`launch_kernel`);
    answers ``{"pid": N}``.
``{"op": "alive"}``
    ``{"alive": bool}``: whether the last forked kernel still runs.
``{"op": "reset", "wipe": [folder, ...]}``
    kill every other process of the sandbox (the kernel, whatever it started), empty
    /tmp, /dev/shm, the POSIX message queues and the folders named, clear the uid's
    keyrings, and check that nothing of the zygote itself was changed; answers
    ``{"clean": bool, "why": str}``. Not clean: the worker throws the sandbox away.

``python -m lossgrader.zygote --kernel INFO`` runs one kernel without a zygote (a cold
sandbox, or ``--no-sandbox``) on descriptors it inherited.

How a kernel is reached: the worker creates the kernel's five listening Unix sockets in
a folder of its own that the sandbox does not see, and passes the listening descriptors
in; ipykernel's sockets accept on them (ZeroMQ's ``ZMQ_USE_FD``) instead of binding a
path. The runtime's requests and responses travel over a socketpair passed the same way.
So nothing outside ever opens, connects to or waits on a path that sandboxed code could
create or replace.

Why hand-ins cannot reach one another through it (the worker resets the sandbox between
two hand-ins, and grades one hand-in at a time in it):

* The zygote is PID 1 of the sandbox's PID namespace (bwrap ``--as-pid-1``; it refuses to
  run otherwise). Every other process of the sandbox descends from it and dies with it;
  from inside, signals reach it only where it set a handler (it sets none), so no
  SIGKILL or SIGSTOP either. There is no other long-lived process to take over: with
  bwrap's own reaper as PID 1, a hand-in could ptrace that reaper and outlive the reset.
* Processes: a reset SIGKILLs every other process of the namespace (``kill(-1)``, which
  also stops a fork loop) and waits until /proc shows none. Nothing of a hand-in runs
  when the next one starts.
* Files: /tmp, /dev/shm and the scratch folder (the only writable places, tmpfs mounts of
  the sandbox's own) are emptied. POSIX message queues (``/dev/mqueue``, the sandbox's own
  IPC namespace) are removed. SysV IPC objects (which outlive their processes) make the
  sandbox unclean.
* Keys: each kernel joins a new session keyring; the reset clears the user and
  user-session keyrings (shared by every process of the uid) and checks they are empty.
* The zygote itself: student code runs as the same uid, so the zygote makes itself
  non-dumpable (no ptrace, no /proc/PID/mem, fd or environ of it) and after a reset
  compares what another process of that uid could still change (nice value, scheduling
  policy and the rest of sched_getattr: time slice, utilisation clamps; CPU affinity,
  rlimits, I/O priority) with what it was at start. Its control pipes are closed in each
  kernel before student code exists.
* Memory: each kernel is a forked copy; nothing it does reaches the zygote's memory or
  the next kernel's.

Standard library only until the preload, and no thread may exist when forking.
"""
import ctypes
import json
import os
import random
import re
import resource
import signal
import socket
import sys
import tempfile
import time

PR_SET_DUMPABLE = 4
PRELOAD = ("torch", "torch.nn", "torch.nn.functional", "numpy", "IPython", "ipykernel.kernelapp",
           "ipykernel.ipkernel", "matplotlib", "lossgrader", "lossgrader.runtime")
SYSVIPC = ("/proc/sysvipc/shm", "/proc/sysvipc/msg", "/proc/sysvipc/sem")
IOPRIO_GET = {"x86_64": 252, "aarch64": 31}
SCHED_GETATTR = {"x86_64": 315, "aarch64": 275}    # policy, nice, priority, slice, util clamps
KEYCTL = {"x86_64": 250, "aarch64": 219}
KEYCTL_JOIN_SESSION_KEYRING, KEYCTL_CLEAR, KEYCTL_READ = 1, 7, 11
SHARED_KEYRINGS = {"user": -4, "user-session": -5}      # KEY_SPEC_USER_KEYRING, ..._SESSION_KEYRING
MQUEUE = "/dev/mqueue"
MAX_LINE = 1 << 20
MAX_FDS = 16
# the kernel's sockets, in the order their listening descriptors travel (then the runtime's)
CHANNELS = ("shell", "iopub", "stdin", "control", "hb")

_libc = ctypes.CDLL(None, use_errno=True)


def _catchable():
    return [s for s in signal.valid_signals() if s not in (signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD)
            and s < signal.SIGRTMIN]


def _ioprio():
    number = IOPRIO_GET.get(os.uname().machine)
    return _libc.syscall(number, 1, 0) if number else None     # IOPRIO_WHO_PROCESS, self


def _sched_attr():
    number = SCHED_GETATTR.get(os.uname().machine)
    if not number:
        return None
    buf = ctypes.create_string_buffer(56)
    return buf.raw.hex() if _libc.syscall(number, 0, buf, 56, 0) == 0 else None


def _attributes():
    """What another process of the same uid can change in this one (and would then pass
    on to every later kernel)."""
    limits = {name: resource.getrlimit(getattr(resource, name))
              for name in dir(resource) if name.startswith("RLIMIT_")}
    return {"nice": os.getpriority(os.PRIO_PROCESS, 0),
            "policy": os.sched_getscheduler(0),
            "priority": os.sched_getparam(0).sched_priority,
            "affinity": sorted(os.sched_getaffinity(0)),
            "rlimits": limits,
            "ioprio": _ioprio(),
            "sched_attr": _sched_attr()}


class Channel:
    """JSON lines over the control socket; a message may carry descriptors. Raw socket
    calls only (a forked kernel closes the socket before anything else runs)."""

    def __init__(self, fd):
        self.sock = socket.socket(fileno=fd)
        self.buf, self.fds = b"", []

    def read(self):
        """(message, descriptors sent with it), or (None, []) when the worker is gone."""
        while b"\n" not in self.buf:
            try:
                chunk, fds, _, _ = socket.recv_fds(self.sock, 65536, MAX_FDS)
            except OSError:
                chunk, fds = b"", []
            self.fds += fds
            if not chunk or len(self.buf) > MAX_LINE:
                return None, []
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        fds, self.fds = self.fds, []
        try:
            return json.loads(line), fds
        except ValueError:
            return None, []

    def write(self, obj):
        self.sock.sendall((json.dumps(obj) + "\n").encode())

    def close(self):
        self.sock.close()
        for fd in self.fds:
            _close(fd)


def _close(fd):
    try:
        os.close(fd)
    except OSError:
        pass


def _others():
    return [int(e) for e in os.listdir("/proc") if e.isdigit() and int(e) != 1]


def _reap():
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _kill_all(seconds=10.0):
    deadline = time.monotonic() + seconds
    while True:
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _reap()
        if not _others():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)


def _mount_points():
    """Mount points of this sandbox, and the folders above them (on the host the scratch
    folder and the runtime may lie under /tmp: they are bound inside the sandbox's /tmp)."""
    points, above = set(), set()
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            fields = line.split()
            if len(fields) > 4:
                path = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
                points.add(path)
                parent = os.path.dirname(path)
                while parent not in above and parent != "/":
                    above.add(parent)
                    parent = os.path.dirname(parent)
    return points, above


def _empty(folder, keep):
    """Remove everything in ``folder`` but the mount points in ``keep`` = (points, above)
    (the same uid made it all: a folder without permissions is given them back first).
    Returns what is left that should not be."""
    points, above = keep
    left = []
    try:
        entries = os.listdir(folder)
    except OSError:
        return [folder]
    for name in entries:
        path = os.path.join(folder, name)
        if path in points:
            continue
        if path in above and os.path.isdir(path) and not os.path.islink(path):
            try:
                os.chmod(path, 0o755)
            except OSError:
                pass
            left += _empty(path, keep)
            continue
        if os.path.isdir(path) and not os.path.islink(path):
            try:
                os.chmod(path, 0o700)
            except OSError:
                pass
            _empty(path, keep)
            try:
                os.rmdir(path)
            except OSError:
                left.append(path)
        else:
            try:
                os.unlink(path)
            except OSError:
                left.append(path)
    return left


def _sysvipc_left():
    for path in SYSVIPC:
        try:
            with open(path) as fh:
                if len(fh.read().splitlines()) > 1:
                    return path
        except OSError:
            pass
    return None


def _keyctl(*args):
    number = KEYCTL.get(os.uname().machine)
    return _libc.syscall(number, *args) if number else -1


def _keyrings_left():
    """Clear the keyrings every process of this uid shares (a key added there by one
    hand-in would be read by the next); the name of one that is not empty after it."""
    for name, keyring in SHARED_KEYRINGS.items():
        _keyctl(KEYCTL_CLEAR, ctypes.c_long(keyring))
        left = _keyctl(KEYCTL_READ, ctypes.c_long(keyring), None, ctypes.c_long(0))
        if left > 0:
            return name
    return None


def launch_kernel(info, fds):
    """Run ipykernel (never returns). ``fds`` maps each of CHANNELS to a listening Unix
    socket the worker created, and "runtime" to the socket the runtime's requests come
    in on; ``info`` holds the session key, signature scheme and the channels' ports."""
    import zmq

    prefix = info.get("ip") or "/kernel"
    bound = {f"ipc://{prefix}-{int(info[name + '_port'])}": int(fds[name]) for name in CHANNELS}
    bind = zmq.Socket.bind

    def bind_inherited(sock, addr):
        fd = bound.pop(addr, None)
        if fd is not None:           # accept on the worker's listener, create no path
            sock.setsockopt(zmq.USE_FD, fd)
        return bind(sock, addr)
    zmq.Socket.bind = bind_inherited
    os.environ["LOSSGRADER_CHANNEL_FD"] = str(int(fds["runtime"]))
    connection = {k: info[k] for k in ("key", "signature_scheme", *(c + "_port" for c in CHANNELS))}
    connection.update(transport="ipc", ip=prefix, kernel_name="python3")
    handle, path = tempfile.mkstemp(prefix="lossgrader-kernel-", suffix=".json")
    with os.fdopen(handle, "w") as fh:
        json.dump(connection, fh)
    # as `python -m ipykernel_launcher -f FILE` would have it (some libraries look)
    import importlib.util
    spec = importlib.util.find_spec("ipykernel_launcher")
    sys.argv = [spec.origin if spec and spec.origin else sys.argv[0], "-f", path]
    from ipykernel import kernelapp
    kernelapp.launch_new_instance(argv=["-f", path])


def _become_kernel(channel, info, fds, rlimits, handlers):
    """In the forked child: drop what belongs to the zygote, then run ipykernel."""
    try:
        channel.close()
        os.setsid()
        _keyctl(KEYCTL_JOIN_SESSION_KEYRING, None)     # a session keyring of its own
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        for name, soft, hard in rlimits:
            which = getattr(resource, name)
            cur_hard = resource.getrlimit(which)[1]
            if cur_hard != resource.RLIM_INFINITY:
                soft, hard = min(soft, cur_hard), min(hard, cur_hard)
            resource.setrlimit(which, (soft, hard))
        _libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)     # a normal process again, as a fresh kernel
        random.seed()
        if "numpy" in sys.modules:
            sys.modules["numpy"].random.seed()
        launch_kernel(info, fds)
    finally:
        os._exit(0)


def _confined():
    """kill(-1) must only ever reach this sandbox: refuse to run but as the init (PID 1)
    of a PID namespace of its own (bwrap --as-pid-1), and never as root."""
    return os.getpid() == 1 and os.getuid() != 0


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--kernel":     # one kernel, no zygote
        info = json.loads(sys.argv[2])
        launch_kernel(info, info["fds"])
        return
    if not _confined():
        sys.stderr.write("lossgrader.zygote runs only inside a lossgrader sandbox\n")
        sys.exit(2)
    control = os.dup(0)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    channel = Channel(control)
    _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    handlers = {}
    for sig in _catchable():
        try:
            handlers[sig] = signal.signal(sig, signal.SIG_IGN)
        except (OSError, ValueError):
            pass
    for name in PRELOAD:
        try:
            __import__(name)
        except Exception:   # the kernel imports it itself (or fails as a fresh one would)
            pass
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        # CUDA cannot be used in a process forked after its initialisation
        channel.write({"ready": False, "why": "CUDA was initialised before the fork"})
        os._exit(3)
    baseline = _attributes()
    channel.write({"ready": True})
    kernel = None
    while True:
        msg, fds = channel.read()
        if not isinstance(msg, dict):
            _kill_all(2.0)
            os._exit(0)
        op = msg.get("op")
        if op == "fork" and len(fds) == len(CHANNELS) + 1:
            kernel = os.fork()
            if kernel == 0:
                _become_kernel(channel, msg.get("kernel") or {}, dict(zip((*CHANNELS, "runtime"), fds)),
                               msg.get("rlimits", []), handlers)
            for fd in fds:
                _close(fd)
            channel.write({"pid": kernel})
        elif op == "alive":
            alive = False
            if kernel is not None:
                try:
                    alive = os.waitpid(kernel, os.WNOHANG)[0] == 0
                except ChildProcessError:
                    alive = False
            channel.write({"alive": alive})
        elif op == "reset":
            kernel = None
            why = "" if _kill_all() else "processes left after SIGKILL"
            keep = _mount_points()
            queues = (MQUEUE,) if os.path.isdir(MQUEUE) else ()
            for folder in ("/tmp", "/dev/shm", *queues, *msg.get("wipe", ())):
                left = _empty(folder, keep)
                if left and not why:
                    why = f"{left[0]} could not be removed"
            left = _sysvipc_left()
            if left and not why:
                why = f"SysV IPC objects left ({left})"
            left = _keyrings_left()
            if left and not why:
                why = f"keys left in the {left} keyring"
            if _attributes() != baseline and not why:
                why = "the zygote's scheduling or limits were changed"
            channel.write({"clean": not why, "why": why})
        else:
            for fd in fds:
                _close(fd)
            channel.write({"error": f"unknown op {op!r}"})

if __name__ == "__main__":
    main()
