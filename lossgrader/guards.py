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
    """Turn sys.exit, exit(), quit() and os._exit into a StudentExit exception."""
    def make(how):
        def refuse(*args, **kwargs):
            raise StudentExit(how)
        return refuse

    patched = [(sys, "exit"), (os, "_exit"), (os, "abort"), (builtins, "exit"), (builtins, "quit")]
    saved = [(obj, name, getattr(obj, name)) for obj, name in patched if hasattr(obj, name)]
    for obj, name, _ in saved:
        setattr(obj, name, make(f"{obj.__name__}.{name}"))
    try:
        yield
    finally:
        for obj, name, original in saved:
            setattr(obj, name, original)


# --------------------------------------------------------------------------- spy
class CallSpy(TorchFunctionMode):
    """Records the torch functions called while active (including the ones reached
    through nn.Module losses and names imported directly from torch.nn.functional)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.calls.append((func, kwargs))
        return func(*args, **kwargs)


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
