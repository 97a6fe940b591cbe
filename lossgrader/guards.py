"""In-process guards around untrusted student code: time limits, captured output, guarded exits and a
spy that sees which torch functions the student's code calls.

Everything here is a context manager that restores the interpreter exactly as it was,
so a check leaves no trace in the student's kernel whatever their code did.
"""
from __future__ import annotations

import builtins
import contextlib
import ctypes
import io
import os
import signal
import sys
import tempfile
import threading
import traceback
import warnings
from dataclasses import dataclass, field

import torch
from torch.overrides import TorchFunctionMode


class StudentTimeout(BaseException):
    """Raised inside the student's code when its time is up (BaseException so that a
    student's ``except Exception`` cannot swallow it)."""


class StudentExit(BaseException):
    """Raised instead of exiting the process when student code calls an exit function."""

    def __init__(self, how: str):
        super().__init__(how)
        self.how = how


# --------------------------------------------------------------------------- time limit
@contextlib.contextmanager
def time_limit(seconds: float):
    """Interrupt the block with StudentTimeout after ``seconds``.

    On the main thread (a Jupyter kernel, nbgrader, pytest) a SIGALRM timer interrupts
    Python loops and blocking sleeps alike. Elsewhere a watchdog thread injects the
    exception asynchronously, which interrupts any Python-level loop.
    """
    seconds = max(float(seconds), 0.001)
    use_signal = (hasattr(signal, "setitimer")
                  and threading.current_thread() is threading.main_thread())
    if use_signal:
        def on_alarm(signum, frame):
            raise StudentTimeout()
        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        return

    target = threading.get_ident()
    set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc
    fired = threading.Event()

    def interrupt():
        fired.set()
        set_async_exc(ctypes.c_ulong(target), ctypes.py_object(StudentTimeout))

    timer = threading.Timer(seconds, interrupt)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        if fired.is_set():  # clear an exception that was injected but not yet delivered
            set_async_exc(ctypes.c_ulong(target), None)


# --------------------------------------------------------------------------- threads
@contextlib.contextmanager
def single_thread():
    """Run torch's CPU kernels on one thread for the duration of a check. The graded
    tensors are tiny: a parallel region costs more than it saves, and far more (tens of
    milliseconds per op) when the machine is busy, e.g. autograding a class."""
    previous = torch.get_num_threads()
    if previous != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if previous != 1:
            torch.set_num_threads(previous)


# --------------------------------------------------------------------------- output
@dataclass
class Captured:
    stdout: str = ""
    stderr: str = ""
    warnings: list = field(default_factory=list)

    def text(self) -> str:
        parts = [self.stdout, self.stderr] + [f"{w}\n" for w in self.warnings]
        return "".join(p for p in parts if p)


@contextlib.contextmanager
def capture_output():
    """Capture everything printed or warned, at the Python level and at file
    descriptors 1 and 2 (C code, subprocesses), so that nothing reaches the real
    stderr: nbgrader gives 0 points to an autograder cell with stderr output."""
    captured = Captured()
    out, err = io.StringIO(), io.StringIO()
    saved_fds = []
    fd_file = None
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except Exception:
        pass
    try:
        fd_file = tempfile.TemporaryFile(mode="w+b")
        for fd in (1, 2):
            saved_fds.append((fd, os.dup(fd)))
            os.dup2(fd_file.fileno(), fd)
    except OSError:  # no real descriptors (some embedded interpreters): Python level only
        for fd, saved in saved_fds:
            os.dup2(saved, fd)
            os.close(saved)
        saved_fds = []
    old_stdout, old_stderr = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    old_showwarning = warnings.showwarning
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield captured
        finally:
            sys.stdout, sys.stderr = old_stdout, old_stderr
            warnings.showwarning = old_showwarning
            for fd, saved in saved_fds:
                os.dup2(saved, fd)
                os.close(saved)
            fd_text = ""
            if fd_file is not None:
                try:
                    fd_file.seek(0)
                    fd_text = fd_file.read().decode("utf-8", "replace")
                finally:
                    fd_file.close()
            captured.stdout = out.getvalue()
            captured.stderr = err.getvalue() + fd_text
            captured.warnings = [f"{w.category.__name__}: {w.message}" for w in caught]


# --------------------------------------------------------------------------- exits
@contextlib.contextmanager
def guard_exits():
    """Turn sys.exit, exit(), quit() and os._exit into a StudentExit exception. A process
    forked meanwhile (a DataLoader worker) exits for real: the exception would carry it back
    into the grader's code as a second runtime."""
    owner = os.getpid()

    def make(how, original):
        def refuse(*args, **kwargs):
            if os.getpid() != owner:
                return original(*args, **kwargs)
            raise StudentExit(how)
        return refuse

    patched = [(sys, "exit"), (os, "_exit"), (os, "abort"), (builtins, "exit"), (builtins, "quit")]
    saved = [(obj, name, getattr(obj, name)) for obj, name in patched if hasattr(obj, name)]
    for obj, name, original in saved:
        setattr(obj, name, make(f"{obj.__name__}.{name}", original))
    try:
        yield
    finally:
        for obj, name, original in saved:
            setattr(obj, name, original)


# --------------------------------------------------------------------------- identity
def attribute_name(func) -> str:
    """The name an object gives itself ("torch.nn.functional.mse_loss"); a Python function's
    ``__module__`` and ``__qualname__`` are writable, so this alone proves nothing."""
    module = getattr(func, "__module__", None) or ""
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)
    return f"{module}.{name}" if module else str(name)


def _genuine_table() -> dict:
    """{id: (object, name)} of torch's functions and tensor methods as they were when this
    module was imported: in the grading sandbox that is before any student code (the zygote
    imports the runtime before forking a kernel; a cold kernel imports it first). The objects
    are kept, so an id cannot be reused."""
    owners = [torch, torch.nn.functional, torch.Tensor, torch._C.TensorBase, torch._C._nn, torch.autograd,
              torch.linalg, torch.special, torch.fft]
    table = {}
    for owner in owners:
        for value in list(getattr(owner, "__dict__", {}).values()):
            if callable(value) and not isinstance(value, type) and id(value) not in table:
                try:
                    table[id(value)] = (value, attribute_name(value))
                except Exception:
                    continue
    return table


_GENUINE = _genuine_table()


def genuine_name(func):
    """The name ``func`` had before student code ran, if it is one of torch's own functions
    (a renamed ``F.mse_loss`` is still "torch.nn.functional.mse_loss"), else None."""
    entry = _GENUINE.get(id(func))
    return entry[1] if entry is not None and entry[0] is func else None


_BY_NAME = {}
for _key, (_, _name) in _GENUINE.items():
    _BY_NAME.setdefault(_name, set()).add(_key)


def genuine_ids(names) -> frozenset:
    """The ids of torch's own functions whose genuine name is in ``names``."""
    return frozenset(key for name in names for key in _BY_NAME.get(name, ()))


# --------------------------------------------------------------------------- threads and processes
# What the spies cannot see is reported as a gap in the observation (a pseudo-call in the
# runtime's "calls"); the judge flags the test cell for a person (lossgrader.judge).
GAP_THREAD = "lossgrader.gap.unobserved-thread"     # a thread no spy follows ran beside the check
GAP_FORK = "lossgrader.gap.process-started"         # the check forked a process
GAP_CHILD = "lossgrader.gap.child-process"          # a process the kernel started was alive
GAPS = (GAP_THREAD, GAP_FORK, GAP_CHILD)

_active = [None]          # the CallSpy of the check running now
_followed = set()         # threads that carry a _ThreadSpy
_kernel_threads = None    # the kernel's own threads (kernel_started); None: not a grading kernel
_forks = [0]


def _count_fork():
    _forks[0] += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_count_fork)


class _ThreadSpy(TorchFunctionMode):
    """Pushed on every thread started through ``threading`` while a check runs (or, in a
    grading kernel, at any time): a TorchFunctionMode is per thread, so a call made on a pool
    thread reaches the running check's CallSpy through this one."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        spy = _active[0]
        if spy is not None:
            spy.record(func, args, kwargs)
        return func(*args, **kwargs)


def _follow(frame, event, arg):
    """threading's profile hook: runs once at the start of a new thread, then removes itself."""
    sys.setprofile(None)
    try:
        _ThreadSpy().__enter__()
        _followed.add(threading.get_ident())
    except Exception:
        pass


def _thread_hook():
    getter = getattr(threading, "getprofile", None)
    return getter() if getter is not None else getattr(threading, "_profile_hook", None)


def kernel_started() -> None:
    """Called by the autograder in a fresh kernel before any cell of the hand-in runs: the
    threads alive now are the kernel's own, and every thread started from now on is followed."""
    global _kernel_threads
    _kernel_threads = frozenset(sys._current_frames())
    threading.setprofile(_follow)


def _foreign_threads() -> set:
    """Threads running Python that no spy follows and that are not the kernel's own (only
    known in a grading kernel)."""
    if _kernel_threads is None:
        return set()
    me = threading.get_ident()
    return {t for t in sys._current_frames() if t != me and t not in _kernel_threads and t not in _followed}


def _children() -> bool:
    """Whether a child process of this one exists (only asked in a grading kernel): one
    ``waitid`` that neither waits nor reaps (ECHILD: none)."""
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WSTOPPED | os.WCONTINUED | os.WNOHANG | os.WNOWAIT)
        return True
    except ChildProcessError:
        return False
    except (AttributeError, OSError):     # no waitid here: read the task list
        pid = os.getpid()
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/children", encoding="ascii") as fh:
                    if fh.read().split():
                        return True
        except OSError:
            pass
        return False


# --------------------------------------------------------------------------- spy
_SET_GRAD_ENABLED = torch._C._set_grad_enabled


class CallSpy(TorchFunctionMode):
    """Records the torch functions called while active (including the ones reached
    through nn.Module losses and names imported directly from torch.nn.functional), on this
    thread and on every thread started through ``threading`` (see _ThreadSpy), and what
    it could not watch (``gaps()``)."""

    def __init__(self, keep_args=None):
        super().__init__()
        self.calls = []               # (func, kwargs, positional args or None)
        self._gaps = set()
        self.keep_args = keep_args    # keep_args(func): whether to keep the call's positional arguments
        self.grad_disabled = False    # the student's code switched autograd off (no_grad, inference_mode)

    def record(self, func, args, kwargs):
        keep = self.keep_args is not None and self.keep_args(func)
        self.calls.append((func, kwargs, tuple(args) if keep else None))
        # autograd switched off by the student's code: torch.no_grad / set_grad_enabled(False)
        # (they call _set_grad_enabled(False)) or inference_mode; not the no-grad mode autograd
        # itself runs a custom Function's forward in
        if not self.grad_disabled and ((func is _SET_GRAD_ENABLED and args and args[0] is False)
                                       or torch.is_inference_mode_enabled()):
            self.grad_disabled = True

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.record(func, args, kwargs)
        return func(*args, **kwargs)

    def _watch(self):
        if _foreign_threads():
            self._gaps.add(GAP_THREAD)
        if _kernel_threads is not None and _children():
            self._gaps.add(GAP_CHILD)

    def __enter__(self):
        self._previous, self._hook, self._forks = _active[0], _thread_hook(), _forks[0]
        self._watch()
        _active[0] = self
        if self._hook is not _follow:
            threading.setprofile(_follow)
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            _active[0] = self._previous
            if self._hook is not _follow:
                threading.setprofile(self._hook)
            if _forks[0] != self._forks:
                self._gaps.add(GAP_FORK)
            self._watch()

    def gaps(self) -> list:
        """The GAP_* signals seen while active: what ran where no spy could see it."""
        return sorted(self._gaps)


_student_depth = threading.local()


def in_student_code() -> bool:
    return getattr(_student_depth, "value", 0) > 0


@contextlib.contextmanager
def student_code():
    """Marks that student code is running (lossgrader's references refuse to help)."""
    _student_depth.value = getattr(_student_depth, "value", 0) + 1
    try:
        yield
    finally:
        _student_depth.value -= 1


# --------------------------------------------------------------------------- tracebacks
_SKIP_DIRS = tuple(os.path.dirname(m.__file__) + os.sep for m in (torch, contextlib) if m.__file__)
_OWN_DIR = os.path.dirname(__file__) + os.sep


def student_frame(exc: BaseException):
    """The innermost traceback frame that belongs to the student's code, as
    (line number, source line), or None."""
    frames = traceback.extract_tb(exc.__traceback__)
    for frame in reversed(frames):
        name = frame.filename or ""
        if name.startswith(_OWN_DIR) or name.startswith(_SKIP_DIRS):
            continue
        return frame.lineno, (frame.line or "").strip()
    return None
