"""Root's write permissions dropped for the grading thread's own file operations.

A worker started as root (an instructor who runs ``sudo lossgrader autograde``, a
container) needs root for one thing: starting sandboxes (bwrap binds the Python
installation, the memory and pids cgroups). Its own file operations (its temporary
folders, the sandbox's runtime package, the kernel's sockets, removing them again) need
none of it. So while a thread grades a hand-in, :func:`dropped` gives that thread the file
credentials of an unprivileged user (Linux's per-thread filesystem uid and gid, no
supplementary groups) and keeps only CAP_DAC_READ_SEARCH (it still reads the Python
installation wherever it lies): a mistake in that code cannot write what that user cannot
(the gradebook, a classmate's hand-in, the course). Processes it starts are unaffected:
``execve`` resets the filesystem ids to the effective ones, so bwrap and the limits'
wrapper start as before. :func:`as_root` gives root back for the few writes that need it
(the sandbox's cgroups; matplotlib's font cache in root's home, lossgrader.cjkfont).

The unprivileged user: ``SUDO_UID``/``SUDO_GID`` (the instructor who ran sudo), else
``nobody``. Nothing happens when the process does not run as root.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import sys

CAP_DAC_READ_SEARCH = 2
_CAP_VERSION_3 = 0x20080522
SETGROUPS = {"x86_64": 116, "aarch64": 159}
LINUX = sys.platform.startswith("linux")     # per-thread file ids are Linux's; elsewhere nothing changes

_libc = ctypes.CDLL(None, use_errno=True) if LINUX else None


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def target() -> tuple | None:
    """(uid, gid) the grading thread's file operations run as, None when not root (or not
    on Linux)."""
    import pwd

    if not LINUX or os.geteuid() != 0:
        return None
    uid, gid = os.environ.get("SUDO_UID", ""), os.environ.get("SUDO_GID", "")
    if uid.isdigit() and int(uid) != 0:
        return int(uid), int(gid) if gid.isdigit() and int(gid) != 0 else int(uid)
    try:
        entry = pwd.getpwnam("nobody")
        return entry.pw_uid, entry.pw_gid
    except KeyError:
        return 65534, 65534


def fsuid() -> int:
    """This thread's filesystem uid (setfsuid(-1) changes nothing and returns it); 0 where
    there is none (not Linux)."""
    return _libc.setfsuid(-1) if LINUX else 0


def _set(uid: int, gid: int) -> None:
    _libc.setfsgid(gid)
    _libc.setfsuid(uid)
    if fsuid() != uid:
        raise OSError(f"could not set the filesystem uid to {uid}")


def _setgroups(groups) -> None:
    number = SETGROUPS.get(os.uname().machine)
    if number is None:
        return
    array = (ctypes.c_uint * max(len(groups), 1))(*groups)
    if _libc.syscall(number, len(groups), array) != 0:          # this thread only (not glibc's broadcast)
        raise OSError(ctypes.get_errno(), "setgroups")


def _keep_read_search() -> None:
    """Back into the effective set after setfsuid cleared it (still permitted)."""
    header, data = _Header(_CAP_VERSION_3, 0), (_Data * 2)()
    if _libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    data[0].effective |= 1 << CAP_DAC_READ_SEARCH
    if _libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset")


@contextlib.contextmanager
def dropped():
    """While inside, this thread's file operations run as :func:`target`'s user (yields it,
    or None where nothing changed)."""
    who = target()
    if who is None or fsuid() != 0:
        yield None
        return
    groups = os.getgroups()
    _setgroups([])
    try:
        _set(*who)
        _keep_read_search()
    except BaseException:
        _set(0, 0)
        _setgroups(groups)
        raise
    try:
        yield who
    finally:
        _set(0, 0)           # setfsuid back to 0 restores the permitted capabilities too
        _setgroups(groups)


@contextlib.contextmanager
def as_root():
    """Root's file permissions back for a write that needs them (cgroups), then dropped again.
    A process that is not root has nothing to take back: the block runs as it is."""
    uid = fsuid()
    if uid == 0 or not LINUX or os.geteuid() != 0:
        yield
        return
    gid = _libc.setfsgid(-1)
    _set(0, 0)
    try:
        yield
    finally:
        _set(uid, gid)
        _keep_read_search()
