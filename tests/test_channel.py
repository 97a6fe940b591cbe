"""The channel between a hand-in's sandbox and the trusted side (lossgrader/channel.py,
lossgrader/kernel.py, lossgrader/zygote.py): nothing outside follows, opens or waits on a
path the sandbox could plant, and what the sandbox sends back is bounded before use.

Unit tests feed lossgrader.channel hostile archives and frames and measure what they cost
against an honest response; the end-to-end tests grade hand-ins that plant symlinks and
FIFOs at the names the grader once used, and hand-ins that forge response frames.
"""
import io
import os
import socket
import stat
import time
import tracemalloc
import zipfile

import nbformat
import pytest
import torch

from lossgrader import channel, runtime
from lossgrader.exercises import EXERCISES
from lossgrader.sandbox import bwrap_problem

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
A = "02_regression"


# ----------------------------------------------------------------------------- helpers
def _honest():
    """A real request and the runtime's real response for the MSE exercise."""
    ex = EXERCISES["mse"]
    cases, _ = ex.cases(None, hidden=True)
    request = ex.request(cases, "cpu", hidden=True)

    def mse_loss(pred, target):
        return ((pred - target) ** 2).mean()
    ran = runtime.run(request, mse_loss)
    c = ran["captured"]
    response = {"solution": runtime.describe_solution(mse_loss), "cases": ran["cases"],
                "captured": {"stdout": c.stdout, "stderr": c.stderr, "warnings": []}}
    return request, response


def _cost(fn):
    """(result, seconds, peak bytes allocated by Python) of fn(), the best of a few runs
    (the time without tracemalloc, which slows Python down)."""
    seconds = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - t0)
    tracemalloc.start()
    try:
        out = fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return out, min(seconds), peak


def _deflated(data: bytes) -> bytes:
    """The same torch archive with every entry deflate-compressed."""
    src = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    return out.getvalue()


def _bomb(inflated_bytes: int) -> bytes:
    """An archive that torch.load would inflate to ``inflated_bytes``: a deflated tensor."""
    honest = channel.encode({"cases": [{"out": {"value": torch.zeros(inflated_bytes // 4)}}]})
    return _deflated(honest)


def _nested(depth: int):
    """A name that is a tuple of tuples sharing each level: tiny pickled, 2^depth as a tree."""
    name = "torch.nn.functional.mse_loss"
    for _ in range(depth):
        name = (name, name)
    return name


MARKER = "chain-placeholder-0123456789"


def _chain(response: dict, depth: int) -> bytes:
    """The response archived with a chain of ``depth`` nested tuples as its first case's
    calls: written as pickle opcodes (MARK x depth, EMPTY_TUPLE, TUPLE x depth), as a
    hostile process can, since pickling such a chain overflows the pickler's recursion."""
    data = channel.encode({**response, "cases": [{**response["cases"][0], "calls": MARKER}]})
    src = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            body = src.read(info)
            if info.filename.endswith("data.pkl"):
                placeholder = b"X" + len(MARKER).to_bytes(4, "little") + MARKER.encode()
                assert placeholder in body
                body = body.replace(placeholder, b"(" * depth + b")" + b"t" * depth)
            dst.writestr(info.filename, body)
    return out.getvalue()


_LONG = {"type": "E" * 10 ** 5, "message": "x" * 7 * 10 ** 6, "line": 1, "source": "y" * 10 ** 5}
HOSTILE = {
    # a compressed record that inflates to 200 MiB in the grading process
    "deflate bomb": lambda req, resp: _bomb(200 * 2 ** 20),
    # a compressed (even small) archive: torch.save never writes one
    "deflated honest": lambda req, resp: _deflated(channel.encode(resp)),
    # a call name hashing to 2^40 work
    "nested name": lambda req, resp: channel.encode(
        {**resp, "cases": [{**resp["cases"][0], "calls": [[_nested(40), {}]]}]}),
    # a chain of 5,000 nested tuples (Python's recursion limit is 1,000)
    "deep chain": lambda req, resp: _chain(resp, 5000),
    # shared references: 10,000 x 10,000 strings as a tree
    "wide DAG": lambda req, resp: channel.encode(
        {**resp, "cases": [{**resp["cases"][0], "calls": [["x" * 10] * 10_000] * 10_000}]}),
    # a tensor view of 10^12 elements over a storage of one
    "zero-stride giant": lambda req, resp: channel.encode(
        {**resp, "cases": [{**resp["cases"][0], "grads": [torch.zeros(1).expand(10 ** 12)]}]}),
    # one 7 MB error message in every case (pickled once, referenced by each)
    "long messages": lambda req, resp: channel.encode(
        {**resp, "cases": [{"status": "raised", "error": _LONG} for _ in resp["cases"]]}),
}


def test_an_honest_response_round_trips():
    request, response = _honest()
    loaded, why = channel.load(channel.encode(response), request)
    assert why is None
    assert [c["status"] for c in loaded["cases"]] == [c["status"] for c in response["cases"]]
    for got, sent in zip(loaded["cases"], response["cases"]):
        assert torch.equal(got["out"]["value"], sent["out"]["value"])
        assert all(torch.equal(g, s) for g, s in zip(got["grads"], sent["grads"]))
        assert got["calls"] == [list(c) for c in sent["calls"]]


@pytest.mark.parametrize("attack", sorted(HOSTILE))
def test_a_hostile_response_costs_a_small_multiple_of_an_honest_one(attack):
    request, response = _honest()
    honest = channel.encode(response)
    (_, why), honest_s, honest_peak = _cost(lambda: channel.load(honest, request))
    assert why is None
    data = HOSTILE[attack](request, response)
    (loaded, why), seconds, peak = _cost(lambda: channel.load(data, request))
    assert seconds <= 20 * honest_s + 1.0, (attack, seconds, honest_s)
    # memory: what unpickling a frame below the cap can take, never what it claims to hold
    assert peak <= 4 * honest_peak + 4 * channel.MAX_RESPONSE_BYTES, (attack, peak, honest_peak)
    if loaded is not None:        # accepted only within the bounds
        for case in loaded["cases"]:
            err = case.get("error") or {}
            assert len(err.get("message", "")) <= channel.TEXT_LIMITS["message"]
            assert len(err.get("source", "")) <= channel.TEXT_LIMITS["source"]
            for g in case.get("grads") or []:
                assert g is None or g.numel() <= channel.element_bound(request)
        total = sum(len(str(c.get("error"))) for c in loaded["cases"])
        assert total <= 2 * channel.MAX_TEXT_TOTAL


def test_compressed_and_oversized_archives_are_refused_before_loading():
    request, response = _honest()
    assert "compressed" in channel.archive_problem(_bomb(1 << 20))
    assert channel.load(b"not a zip", request)[0] is None
    assert "more than" in channel.load(b"\0" * (channel.MAX_RESPONSE_BYTES + 1), request)[1]


class _Pair:
    def __init__(self):
        ours, self.theirs = socket.socketpair()
        self.wire = channel.Wire(ours)

    def close(self):
        self.wire.close()
        self.theirs.close()


def test_a_declared_length_above_the_cap_is_refused_without_reading_it():
    pair = _Pair()
    try:
        pair.theirs.sendall(channel.HEADER.pack(channel.RESPONSE_MAGIC, 1 << 40))
        t0 = time.monotonic()
        data, why = pair.wire.receive(time.monotonic() + 30)
        assert data is None and "more than" in why and time.monotonic() - t0 < 5
        pair.theirs.sendall(channel.HEADER.pack(b"XXXX", 10) + b"0123456789")
        assert pair.wire.receive(time.monotonic() + 5) == (None, "not a response frame")
    finally:
        pair.close()


def test_a_silent_or_flooding_kernel_costs_a_deadline_not_a_hang():
    pair = _Pair()
    try:
        t0 = time.monotonic()
        exchange = channel.Exchange(pair.wire, b"request", time.monotonic() + 1.0)
        assert exchange.result(5.0) == (None, "no response")
        assert time.monotonic() - t0 < 4
        pair.theirs.setblocking(False)
        sent = 0
        while sent <= channel.MAX_DRAIN_BYTES:      # more stray bytes than a drain discards
            try:
                sent += pair.theirs.send(b"x" * (1 << 16))
            except BlockingIOError:
                assert pair.wire.drain(limit=sent // 2) is False
                break
    finally:
        pair.close()


# ----------------------------------------------------------------------------- end to end
needs_bwrap = pytest.mark.skipif(bwrap_problem() is not None, reason=f"no bwrap here: {bwrap_problem()}")


def _handin(before_test_cell: dict) -> str:
    """demo_full's 02_regression with {grade id of a test cell: code inserted just before it}."""
    nb = nbformat.read(os.path.join(ROOT, "samples", "submitted", "demo_full", A, A + ".ipynb"), as_version=4)
    for grade_id, code in before_test_cell.items():
        at = next(i for i, c in enumerate(nb.cells)
                  if c.get("metadata", {}).get("nbgrader", {}).get("grade_id") == grade_id)
        nb.cells.insert(at, nbformat.v4.new_code_cell(code))
    return nbformat.writes(nb)


PLANT = """\
import os
target = {target!r}
for n in range(1, 9):
    for name in (f"request-{{n}}.pt", f"response-{{n}}.pt", f"response-{{n}}.pt.tmp", f"kernel{{n}}.json"):
        for folder in (os.getcwd(), os.environ["HOME"], "/tmp"):
            try:
                os.symlink(target, os.path.join(folder, name))
            except OSError:
                pass
    for port in range(1, 6):
        try:
            os.mkfifo(os.path.join(os.getcwd(), f"kernel{{n}}-{{port}}"))
        except OSError:
            pass
print("PLANTED", os.getcwd(), sorted(os.listdir(os.getcwd()))[:3])
"""


@needs_bwrap
@pytest.mark.timeout(300)
def test_symlinks_and_fifos_planted_in_the_scratch_folder_are_never_followed(tmp_path):
    """Symlinks (to a file of the instructor's) and FIFOs at every name the grader ever
    used, then a dead kernel (a restart): the file is untouched, nothing blocks, the
    hand-in gets its grade, and its scratch folder never existed on the host."""
    from test_executors import _course, _grades
    from lossgrader.autograde import autograde

    canary = tmp_path / "instructor-file.txt"
    canary.write_text("the instructor's file\n")
    plant = PLANT.format(target=str(canary))
    text = _handin({"test_mse": plant, "test_mae": plant + "\nos._exit(3)\n"})
    root = _course(str(tmp_path / "course"), {"planter": text, "honest": "demo_full"})
    t0 = time.monotonic()
    autograde(root, cell_timeout=60, progress=False, sandbox=True, jobs=1)
    assert time.monotonic() - t0 < 200
    assert canary.read_text() == "the instructor's file\n" and not canary.is_symlink()
    cells = {s: g[1][2] for s, g in _grades(root).items()}
    assert cells["planter"] == cells["honest"]                  # every cell graded as the honest one
    assert sum(cells["planter"].values()) == 6.0
    nb = nbformat.read(os.path.join(root, "autograded", "planter", A, A + ".ipynb"), as_version=4)
    printed = [o.get("text", "") for c in nb.cells for o in c.get("outputs", []) if "PLANTED" in o.get("text", "")]
    scratch = printed[0].split()[1]
    assert not os.path.exists(scratch)       # a tmpfs of the sandbox's own: nothing of it on the host


FORGE = """\
import io, os, struct, zipfile
import torch

def _frame(payload):
    return struct.pack("!4sQ", b"LGrs", len(payload)) + payload

def _archive(obj, deflate=False):
    buf = io.BytesIO()
    torch.save(obj, buf)
    if not deflate:
        return buf.getvalue()
    src, out = zipfile.ZipFile(io.BytesIO(buf.getvalue())), io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    return out.getvalue()

_name = "x"
for _ in range(40):
    _name = (_name, _name)
FORGED = {{
    "bomb": _archive({{"cases": [{{"out": {{"value": torch.zeros(50 * 2 ** 20 // 4)}}}}]}}, deflate=True),
    "nested": _archive({{"solution": {{"defined": True, "callable": True}},
                        "cases": [{{"status": "ok", "calls": [[_name, {{}}]]}}] * 30}}),
    "giant": _archive({{"solution": {{"defined": True, "callable": True}},
                       "cases": [{{"status": "ok", "out": {{"type": "tensor", "shape": [], "dtype": "float32",
                                                           "device": "cpu", "value": torch.zeros(1).expand(10 ** 12)}}}}]}}),
}}
_sent = []

def {func}(*args, **kwargs):
    if not _sent:
        _sent.append(1)
        os.write(int(os.environ["LOSSGRADER_CHANNEL_FD"]), _frame(FORGED[{kind!r}]))
    return {honest}(*args, **kwargs)
"""


def _scan_missing_the_channel(monkeypatch):
    """The back-door scan as if it did not see descriptor I/O (it refuses it: see
    test_the_scan_refuses_writing_to_the_channel): what the channel's own bounds hold."""
    from lossgrader import backdoors
    real = backdoors.scan_handin

    def scan(*args, **kwargs):
        found = real(*args, **kwargs)
        found.attacks = [f for f in found.attacks if f.why != backdoors.CHANNEL.zh]
        return found
    monkeypatch.setattr(backdoors, "scan_handin", scan)


def test_the_scan_refuses_writing_to_the_channel():
    from lossgrader import backdoors
    found = backdoors.scan_source(FORGE.format(func="mse_loss", kind="bomb", honest="_h"), 0)
    assert {f.what for f in found if not f.review} >= {"os.write", "'LOSSGRADER_CHANNEL_FD'"}
    for source in ('open(3, "wb").write(b"x")', 'open("/proc/self/fd/3", "wb")', "import io\nio.FileIO(3, 'w')",
                   "import os as o\no.fdopen(3, 'wb')", "from os import write\nwrite(3, b'x')"):
        assert [f for f in backdoors.scan_source(source, 0) if not f.review], source


@needs_bwrap
@pytest.mark.timeout(300)
def test_forged_response_frames_fail_their_cell_and_nothing_else(tmp_path, monkeypatch):
    """Each cell's function first writes a forged frame into the runtime's channel (a
    deflate bomb, a 2^40 name, a 10^12-element view), then answers honestly: the forged
    frame is what the grader reads, refused or failing its cases; the other cells keep
    their points, and the hand-in costs seconds, not minutes or gigabytes."""
    from test_executors import _course, _grades
    from lossgrader.autograde import autograde

    _scan_missing_the_channel(monkeypatch)
    inserts = {}
    for grade_id, func, kind in (("test_mse", "mse_loss", "bomb"), ("test_mae", "mae_loss", "nested"),
                                 ("test_huber", "huber_loss", "giant")):
        inserts[grade_id] = (f"_honest_{func} = {func}\n"
                             + FORGE.format(func=func, kind=kind, honest=f"_honest_{func}"))
    root = _course(str(tmp_path / "course"), {"forger": _handin(inserts)})
    t0 = time.monotonic()
    autograde(root, cell_timeout=60, progress=False, sandbox=True, jobs=1)
    assert time.monotonic() - t0 < 200
    scores = _grades(root)["forger"][1][2]
    assert scores["test_mse"] == scores["test_mae"] == scores["test_huber"] == 0.0
    assert sum(scores.values()) == 3.0            # the three other cells, untouched



@needs_bwrap
@pytest.mark.timeout(300)
def test_a_forbidden_built_in_named_in_the_source_never_scores_on_the_process_word_alone(tmp_path, monkeypatch):
    """Which functions ran is the student's process's account. Here it reports F.mse_loss:
    zero. When it reports nothing (the account ignored below, as a forged frame would make
    it), the source read outside still names F.mse_loss: the cell goes to a person, with no
    marks until one decides."""
    from test_executors import _course, _grades
    from lossgrader.autograde import autograde
    from lossgrader.exercises import common

    answer = ("import torch.nn.functional as F\n\n"
              "def mse_loss(pred, target):\n    return helper(pred, target)\n\n"
              "def helper(pred, target):\n    return F.mse_loss(pred, target)\n")
    root = _course(str(tmp_path / "course"), {"builtin": _handin({"test_mse": answer})})
    autograde(root, cell_timeout=60, progress=False, sandbox=True, jobs=1)
    assert _grades(root)["builtin"][1][2]["test_mse"] == 0.0          # the process reported the call

    monkeypatch.setattr(common, "check_forbidden", lambda calls, rules: None)
    autograde(root, cell_timeout=60, progress=False, sandbox=True, jobs=1)
    status, (_, _, scores) = _grades(root)["builtin"]
    assert scores["test_mse"] == 0.0 and status == "needs manual grading"
    assert sum(scores.values()) == 5.0                                 # the other cells: their points


class _Planted:
    """Unpickled with anything but weights_only, this makes a folder (any call would run)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


def test_a_response_that_would_run_code_when_unpickled_is_refused(tmp_path):
    request, response = _honest()
    marker = tmp_path / "ran-on-the-trusted-side"
    data = channel.encode({**response, "cases": [{**response["cases"][0], "out": _Planted(str(marker))}]})
    loaded, why = channel.load(data, request)
    assert loaded is None and "unreadable" in why
    assert not marker.exists()
