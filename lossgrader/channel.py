"""What crosses the sandbox's boundary at grading time, and how the trusted side reads it.

The runtime in the kernel (``lossgrader.runtime.serve``) gets its requests and sends its
responses over a socketpair the kernel inherited (:class:`Wire`, the worker's end), never
through a path in a folder the sandbox can write. A frame is a 12-byte header (4-byte
magic, 8-byte length) and a ``torch.save`` archive.

Everything a response holds was built by the student's process, so it is hostile until
checked, and each check has a bound that holds before the work it guards:

* the frame: read with a deadline, its declared length refused above
  ``MAX_RESPONSE_BYTES`` before a byte of it is read;
* the archive: its entries are listed from the zip's own central directory, and any
  compressed or encrypted entry, more than ``MAX_ARCHIVE_ENTRIES`` entries, or declared
  sizes adding up to more than the frame, refuse it before ``torch.load`` inflates
  anything (a ``torch.save`` archive stores its entries uncompressed);
* the unpickling: ``torch.load(weights_only=True)`` (tensors, containers and plain
  values only: no object of the student's process is ever rebuilt here);
* the content (:func:`sanitize`): walked once, as a tree, with a node budget and a depth
  limit (a small archive can describe a huge tree through shared references, and
  hashing or comparing deeply nested tuples costs 2^depth), into a fresh copy made of
  plain ``dict``/``list``/``str``/numbers and checked tensors; strings are truncated per
  field and in total; a tensor must be a plain strided ``torch.Tensor`` of a known dtype
  whose element count is within what the request's inputs allow, and whose storage
  really holds it (no zero-stride giant views).

The judge then applies the exercise's own checks (type, shape, dtype, device) to that copy.
"""
from __future__ import annotations

import io
import select
import socket
import struct
import threading
import time
import zipfile

import torch

HEADER = struct.Struct("!4sQ")
REQUEST_MAGIC, RESPONSE_MAGIC = b"LGrq", b"LGrs"
MAX_RESPONSE_BYTES = 8 * 2 ** 20          # the largest honest response is about 0.3 MB
MAX_ARCHIVE_ENTRIES = 4096
MAX_DRAIN_BYTES = 4 * MAX_RESPONSE_BYTES   # stray bytes discarded before a request, at most
MAX_NODES = 50_000                         # containers, strings, numbers and tensors in one response
                                           # (an honest one: a few thousand)
MAX_DEPTH = 12
MAX_ITEMS = 10_000                         # entries of one list or dict
MAX_KEY = 64
MAX_TEXT_TOTAL = 1 << 20                   # characters of all strings of one response
TEXT_LIMITS = {"message": 2_000, "source": 300, "stdout": 20_000, "stderr": 20_000}
DEFAULT_TEXT = 500
MIN_ELEMENTS = 4096                        # a tensor may hold this many elements whatever the inputs
ELEMENT_FACTOR = 4                         # ... or this many times the request's largest input
DTYPES = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int8, torch.int16,
                    torch.int32, torch.int64, torch.uint8, torch.bool, torch.complex64, torch.complex128})


class Wire:
    """The worker's end of the runtime's socketpair (non-blocking; every wait has a
    deadline)."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        sock.setblocking(False)
        self._wake, self._waker = socket.socketpair()      # wakes a waiting exchange at once
        self._wake.setblocking(False)

    def close(self) -> None:
        for s in (self.sock, self._wake, self._waker):
            try:
                s.close()
            except OSError:
                pass

    def wake(self) -> None:
        try:
            self._waker.send(b"!")
        except OSError:
            pass

    def _wait(self, event: str, deadline: float, stop: threading.Event | None) -> bool:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or (stop is not None and stop.is_set()):
                return False
            r, w, _ = select.select([self.sock, self._wake] if event == "r" else [self._wake],
                                    [self.sock] if event == "w" else [], [], min(left, 1.0))
            if self._wake in r:
                try:
                    self._wake.recv(64)
                except OSError:
                    pass
                continue          # the stop flag says whether to go on
            if r or w:
                return True

    def drain(self, limit: int = MAX_DRAIN_BYTES) -> bool:
        """Discard what the kernel's side wrote outside a request (student code holds that
        end too); False when more than ``limit`` bytes are waiting."""
        dropped = 0
        while dropped <= limit:
            try:
                chunk = self.sock.recv(1 << 16)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:
                return True
            if not chunk:
                return True
            dropped += len(chunk)
        return False

    def send(self, payload: bytes, deadline: float, stop=None) -> bool:
        data = memoryview(HEADER.pack(REQUEST_MAGIC, len(payload)) + payload)
        while data:
            if not self._wait("w", deadline, stop):
                return False
            try:
                data = data[self.sock.send(data):]
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                return False
        return True

    def _read(self, n: int, deadline: float, stop) -> bytes | None:
        chunks, got = [], 0
        while got < n:
            if not self._wait("r", deadline, stop):
                return None
            try:
                chunk = self.sock.recv(min(n - got, 1 << 20))
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                return None
            if not chunk:
                return None
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def receive(self, deadline: float, max_bytes: int = MAX_RESPONSE_BYTES, stop=None):
        """(payload, None) or (None, why)."""
        header = self._read(HEADER.size, deadline, stop)
        if header is None:
            return None, "no response"
        magic, length = HEADER.unpack(header)
        if magic != RESPONSE_MAGIC:
            return None, "not a response frame"
        if length > max_bytes:
            return None, f"response of {length} bytes (more than {max_bytes})"
        payload = self._read(length, deadline, stop)
        return (payload, None) if payload is not None else (None, "truncated response")


class Exchange:
    """One request and its response, in a thread of its own while the kernel runs the code
    that answers it (a large response would otherwise wait for a reader)."""

    def __init__(self, wire: Wire, payload: bytes, deadline: float, max_bytes: int = MAX_RESPONSE_BYTES):
        self.stop, self.received = threading.Event(), threading.Event()
        self.wire = wire
        self.outcome = (None, "no response")
        if not wire.drain():
            self.outcome, self.thread = (None, "the kernel flooded its channel"), None
            return

        def run():
            try:
                if wire.send(payload, deadline, self.stop):
                    self.outcome = wire.receive(deadline, max_bytes, self.stop)
                else:
                    self.outcome = (None, "the request could not be sent")
            finally:
                self.received.set()
            if self.outcome[0] is None:
                return
            # whatever else the kernel writes until the request is over is discarded, so
            # that a write of its (forged frame first, then the runtime's) never blocks it
            dropped = 0
            while dropped <= MAX_DRAIN_BYTES and wire._wait("r", deadline, self.stop):
                try:
                    chunk = wire.sock.recv(1 << 16)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    return
                if not chunk:
                    return
                dropped += len(chunk)
        self.thread = threading.Thread(target=run, name="lossgrader-exchange", daemon=True)
        self.thread.start()

    def result(self, wait: float):
        """(payload, None) or (None, why), waiting at most ``wait`` seconds more for the
        frame (the kernel has finished the request: what it still writes is dropped)."""
        if self.thread is not None:
            self.received.wait(max(wait, 0.0))
            self.stop.set()
            self.wire.wake()
            self.thread.join(5.0)    # before another request: nothing of this one reads on
        return self.outcome


# ----------------------------------------------------------------------------- frames
def encode(obj) -> bytes:
    """A frame's payload (``torch.save`` archive) of ``obj``."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def archive_problem(data: bytes) -> str | None:
    """Why the archive must not be loaded (read from its central directory only), or None."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, NotImplementedError, RuntimeError) as exc:
        return f"not a torch archive ({exc.__class__.__name__})"
    if len(entries) > MAX_ARCHIVE_ENTRIES:
        return f"{len(entries)} archive entries"
    declared = 0
    for entry in entries:
        if entry.compress_type != zipfile.ZIP_STORED:
            return f"compressed archive entry {entry.filename[:60]!r}"
        if entry.flag_bits & 0x1:
            return "encrypted archive entry"
        declared += entry.file_size
    if declared > len(data):
        return f"archive entries declare {declared} bytes in a {len(data)}-byte frame"
    return None


def load(data: bytes, request: dict):
    """(response, None) or (None, why): the frame's archive loaded and sanitised against
    what ``request`` can produce."""
    if len(data) > MAX_RESPONSE_BYTES:
        return None, f"response of {len(data)} bytes (more than {MAX_RESPONSE_BYTES})"
    problem = archive_problem(data)
    if problem:
        return None, problem
    try:
        obj = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as exc:
        return None, f"unreadable response ({exc.__class__.__name__})"
    return sanitize(obj, element_bound(request))


# ----------------------------------------------------------------------------- content
def element_bound(request: dict) -> int:
    """The most elements a tensor of the response may hold, from the request's inputs."""
    largest = 0
    stack, seen = [request], 0
    while stack and seen < MAX_NODES:
        node = stack.pop()
        seen += 1
        if isinstance(node, torch.Tensor):
            largest = max(largest, node.numel())
        elif isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend(node)
    return max(MIN_ELEMENTS, ELEMENT_FACTOR * largest)


class _Budget:
    def __init__(self):
        self.nodes = MAX_NODES
        self.text = MAX_TEXT_TOTAL


def _tensor(t, max_elements: int):
    if type(t) is not torch.Tensor or t.layout != torch.strided or t.dtype not in DTYPES:
        return None
    if t.is_quantized or t.is_meta or t.numel() > max_elements or any(s < 0 for s in t.stride()):
        return None
    if t.numel():
        extent = t.storage_offset() + sum((n - 1) * s for n, s in zip(t.shape, t.stride())) + 1
        if extent * t.element_size() > t.untyped_storage().nbytes():
            return None
    return t.detach().contiguous()


def sanitize(obj, max_elements: int):
    """(copy, None) or (None, why): see the module docstring."""
    budget = _Budget()
    try:
        return _copy(obj, max_elements, budget, 0, None), None
    except _Refused as exc:
        return None, str(exc)


class _Refused(Exception):
    pass


def _copy(node, max_elements, budget, depth, key):
    budget.nodes -= 1
    if budget.nodes < 0:
        raise _Refused(f"more than {MAX_NODES} values")
    if depth > MAX_DEPTH:
        raise _Refused(f"nested deeper than {MAX_DEPTH}")
    kind = type(node)
    if node is None or kind is bool:
        return node
    if kind is int:
        return node if -(1 << 62) <= node <= 1 << 62 else None
    if kind is float:
        return node
    if kind is str:
        limit = min(TEXT_LIMITS.get(key, DEFAULT_TEXT), max(budget.text, 0))
        text = node[:limit]
        budget.text -= len(text)
        return text
    if isinstance(node, torch.Tensor):
        return _tensor(node, max_elements)
    if isinstance(node, dict):
        if len(node) > MAX_ITEMS:
            raise _Refused(f"a mapping of {len(node)} entries")
        out = {}
        for k, v in node.items():
            if type(k) is not str or len(k) > MAX_KEY:
                raise _Refused("a mapping key that is not a short string")
            out[k] = _copy(v, max_elements, budget, depth + 1, k)
        return out
    if isinstance(node, (list, tuple)):
        if len(node) > MAX_ITEMS:
            raise _Refused(f"a sequence of {len(node)} entries")
        items = [_copy(v, max_elements, budget, depth + 1, key) for v in node]
        return items if isinstance(node, list) else tuple(items)
    return None
