"""``lossgrader collect`` against a hostile class, and the CSVs it feeds.

A source folder may be shared with the students (or built from what they upload), so
everything in it is theirs: a notebook that is a symbolic link to a classmate's hand-in or
to an instructor file, a linked folder, a FIFO, a file swapped for a link after collect's
scan, a zip with link entries, broken entries or a bomb, student names written as
spreadsheet formulas. Each test builds its source under tmp_path and asserts what an
instructor depends on: nobody's hand-in is collected as somebody else's, nothing outside
the source lands in submitted/, collect neither hangs nor dies with a traceback, every CSV
shows formulas as text, the ids made from names are plain folder names, and nbgrader's
release_feedback works on what collect brought in (docs/instructor.md, "Canvas and
Moodle")."""
import contextlib
import csv
import datetime
import io
import os
import re
import signal
import socket
import stat
import struct
import subprocess
import sys
import time
import zipfile
import zlib

import nbformat
import pytest

from lossgrader import collect as C
from lossgrader.collect import CollectError, collect
from lossgrader.csvfile import Numeral, write_csv

from course_copy import copy_course

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
A = "02_regression"
B = "01_overview"
FORMULA = ("=", "+", "-", "@", "\t", "\r")
WHEN = (2026, 11, 20, 10, 0, 0)


def _notebook(marker):
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_code_cell(f"# {marker}"))
    return nbformat.writes(nb).encode("utf-8")


def _marker(path):
    return nbformat.read(path, as_version=4).cells[0].source[2:]


def _put(top, rel, data, mtime=1_790_000_000):
    path = os.path.join(top, *rel.split("/"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)
    os.utime(path, (mtime, mtime))
    return path


def _link(top, rel, to):
    path = os.path.join(top, *rel.split("/"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.symlink(to, path)
    return path


def _submitted(root, student, aid):
    return os.path.join(root, "submitted", student, aid, aid + ".ipynb")


def _by_file(result):
    return {r["file"]: r for r in result.rows}


def _all_bytes(top):
    """Everything under top, as (relative path, bytes) of its regular files."""
    out = []
    for d, _, files in os.walk(top):
        for f in files:
            with open(os.path.join(d, f), "rb") as fh:
                out.append((os.path.relpath(os.path.join(d, f), top), fh.read()))
    return out


def _run_cli(*args, timeout=120):
    """lossgrader in a child process with a deadline: a collect that blocks fails the test
    instead of hanging the suite."""
    code = "import sys; from lossgrader.cli import main; sys.exit(main(sys.argv[1:]))"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


@contextlib.contextmanager
def _deadline(seconds):
    """SIGALRM interrupts a blocked open() in this process (the FIFO attacks)."""
    def expired(signum, frame):
        raise TimeoutError(f"collect blocked for {seconds} s")
    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture
def course(tmp_path):
    root = copy_course(tmp_path / "course", [A, B], exercises=False)
    # stand-ins for what an instructor keeps in the course folder
    with open(os.path.join(root, "gradebook.db"), "wb") as fh:
        fh.write(b"SQLite format 3\x00 INSTRUCTOR-GRADEBOOK")
    return root


# ---------------------------------------------------------------- symbolic links and special files

def test_symlinks_in_a_shared_folder_are_reported_and_never_followed(course, tmp_path):
    src = str(tmp_path / "shared")
    _put(src, f"alice/{B}/{B}.ipynb", _notebook("alice's own work"))
    # bob's notebook is a link to alice's hand-in: it must not become bob's
    _link(src, f"bob/{B}/{B}.ipynb", f"../../alice/{B}/{B}.ipynb")
    # carol's hand-in folder is a link to alice's; dave's whole folder is one
    _link(src, f"carol/{B}", f"../alice/{B}")
    _link(src, "dave", "alice")
    # instructor files: the solution and the gradebook, by absolute and relative links
    _link(src, f"eve/{A}/{A}.ipynb", os.path.join(course, "solutions", A, A + ".ipynb"))
    _link(src, f"mallory_{B}.ipynb", os.path.join(course, "gradebook.db"))
    _link(src, f"trent/{B}/{B}.ipynb", f"../../../course/gradebook.db")
    # a file beside a real notebook that links to the solution
    _put(src, f"zoe/{A}/{A}.ipynb", _notebook("zoe"))
    _link(src, f"zoe/{A}/answers.ipynb.bak", os.path.join(course, "solutions", A, A + ".ipynb"))

    got = collect(course, src, report="collect-report.csv")
    assert sorted(got) == [("alice", B), ("zoe", A)]
    assert _marker(_submitted(course, "alice", B)) == "alice's own work"
    assert sorted(os.listdir(os.path.join(course, "submitted"))) == ["alice", "zoe"]
    rows = _by_file(got)
    for rel in (f"bob/{B}/{B}.ipynb", f"carol/{B}", "dave", f"eve/{A}/{A}.ipynb", f"mallory_{B}.ipynb",
                f"trent/{B}/{B}.ipynb", f"zoe/{A}/answers.ipynb.bak"):
        assert rows[rel]["status"] == "ignored", rel
        assert "symbolic link" in rows[rel]["detail"] and "never followed" in rows[rel]["detail"], rel
    assert "alice" in rows[f"bob/{B}/{B}.ipynb"]["detail"]          # the instructor sees where it pointed
    # nothing of the instructor's files reached submitted/
    with open(os.path.join(course, "solutions", A, A + ".ipynb"), "rb") as fh:
        solution = fh.read()
    for rel, data in _all_bytes(os.path.join(course, "submitted")):
        assert data != solution and b"INSTRUCTOR-GRADEBOOK" not in data, rel
    # the report lists them for the instructor
    with open(os.path.join(course, "collect-report.csv"), newline="", encoding="utf-8") as fh:
        report = {r["file"]: r for r in csv.DictReader(fh)}
    assert report[f"bob/{B}/{B}.ipynb"]["status"] == "ignored"


def test_symlinks_in_platform_downloads_are_not_collected(course, tmp_path):
    """Canvas and Moodle downloads unpacked into a folder by the instructor: a link there
    is no more followed than in a shared folder."""
    canvas = str(tmp_path / "canvas")
    _put(canvas, f"lisi_12002_600_{A}.ipynb", _notebook("li"))
    _link(canvas, f"wangwu_12003_602_{A}.ipynb", os.path.join(canvas, f"lisi_12002_600_{A}.ipynb"))
    got = collect(course, canvas)
    assert got.format == "canvas" and list(got) == [("12002", A)]
    assert _by_file(got)[f"wangwu_12003_602_{A}.ipynb"]["status"] == "ignored"

    moodle = str(tmp_path / "moodle")
    _put(moodle, f"Li Si_1002_assignsubmission_file/{A}.ipynb", _notebook("li"))
    _link(moodle, "Wang Wu_1003_assignsubmission_file", "Li Si_1002_assignsubmission_file")
    got = collect(course, moodle)
    assert got.format == "moodle" and list(got) == [("Li_Si", A)]
    assert "symbolic link" in _by_file(got)["Wang Wu_1003_assignsubmission_file"]["detail"]


def test_fifos_sockets_and_devices_in_the_source_do_not_block_collect(course, tmp_path, monkeypatch):
    src = str(tmp_path / "shared")
    _put(src, f"alice/{B}/{B}.ipynb", _notebook("alice"))
    os.makedirs(os.path.join(src, "bob", B))
    os.mkfifo(os.path.join(src, "bob", B, B + ".ipynb"))           # reading it would wait forever
    os.makedirs(os.path.join(src, "carol"))
    os.mkfifo(os.path.join(src, "carol", B + ".ipynb"))
    sock = socket.socket(socket.AF_UNIX)
    monkeypatch.chdir(src)                          # a socket's path is at most 107 bytes
    sock.bind(f"dave_{B}.ipynb")
    special = [f"bob/{B}/{B}.ipynb", f"carol/{B}.ipynb", f"dave_{B}.ipynb"]
    try:
        os.mknod(os.path.join(src, f"erin_{B}.ipynb"), stat.S_IFCHR | 0o600, os.makedev(1, 5))  # /dev/zero
        special.append(f"erin_{B}.ipynb")
    except (PermissionError, OSError):
        pass                                        # not root: FIFOs and sockets only
    try:
        proc = _run_cli("--course", course, "collect", src, timeout=120)
    finally:
        sock.close()
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(os.listdir(os.path.join(course, "submitted"))) == ["alice"]
    with open(os.path.join(course, "collect-report.csv"), newline="", encoding="utf-8") as fh:
        report = {r["file"]: r for r in csv.DictReader(fh)}
    for rel in special:
        assert report[rel]["status"] == "ignored", rel
        assert "not a regular file" in report[rel]["detail"] and "not opened" in report[rel]["detail"], rel
    assert "FIFO" in report[f"bob/{B}/{B}.ipynb"]["detail"]


def test_a_file_swapped_for_a_link_or_fifo_after_the_scan_is_refused_when_opened(course, tmp_path, monkeypatch):
    """The students can write the shared folder while collect runs: between the scan and
    the copy a notebook becomes a link to a classmate's, a hand-in folder becomes a link, a
    notebook becomes a FIFO. Opening refuses each (O_NOFOLLOW on every path component,
    O_NONBLOCK, fstat) instead of following or blocking."""
    src = str(tmp_path / "shared")
    _put(src, f"alice/{B}/{B}.ipynb", _notebook("alice"))
    _put(src, f"bob/{B}/{B}.ipynb", _notebook("bob"))
    _put(src, f"carol/{B}/{B}.ipynb", _notebook("carol"))
    _put(src, f"dave/{B}/{B}.ipynb", _notebook("dave"))
    walk = C._walk

    def racing_walk(top, rows):
        found = walk(top, rows)
        os.unlink(os.path.join(top, "bob", B, B + ".ipynb"))
        os.symlink(f"../../alice/{B}/{B}.ipynb", os.path.join(top, "bob", B, B + ".ipynb"))
        os.rename(os.path.join(top, "carol", B), os.path.join(top, "carol", "moved"))
        os.symlink(f"../alice/{B}", os.path.join(top, "carol", B))
        os.unlink(os.path.join(top, "dave", B, B + ".ipynb"))
        os.mkfifo(os.path.join(top, "dave", B, B + ".ipynb"))
        return found

    monkeypatch.setattr(C, "_walk", racing_walk)
    with _deadline(20):
        got = collect(course, src)
    assert list(got) == [("alice", B)]
    rows = _by_file(got)
    assert rows[f"bob/{B}/{B}.ipynb"]["status"] == "ignored"
    assert "symbolic link" in rows[f"bob/{B}/{B}.ipynb"]["detail"]
    assert rows[f"carol/{B}/{B}.ipynb"]["status"] == "ignored"
    assert "is a symbolic link or not a folder" in rows[f"carol/{B}/{B}.ipynb"]["detail"]
    assert rows[f"dave/{B}/{B}.ipynb"]["status"] == "ignored"
    assert "FIFO" in rows[f"dave/{B}/{B}.ipynb"]["detail"]
    assert sorted(os.listdir(os.path.join(course, "submitted"))) == ["alice"]


def test_a_link_swapped_in_beside_a_notebook_is_not_copied(course, tmp_path, monkeypatch):
    src = str(tmp_path / "shared")
    _put(src, f"dave/{B}/{B}.ipynb", _notebook("dave"))
    _put(src, f"dave/{B}/data.csv", b"1,2")
    walk = C._walk

    def racing_walk(top, rows):
        found = walk(top, rows)
        os.unlink(os.path.join(top, "dave", B, "data.csv"))
        os.symlink(os.path.join(course, "gradebook.db"), os.path.join(top, "dave", B, "data.csv"))
        return found

    monkeypatch.setattr(C, "_walk", racing_walk)
    got = collect(course, src)
    assert list(got) == [("dave", B)]
    assert _by_file(got)[f"dave/{B}/data.csv"]["status"] == "ignored"
    assert not os.path.lexists(os.path.join(course, "submitted", "dave", B, "data.csv"))


def test_a_file_over_the_size_bound_is_not_read(course, tmp_path, monkeypatch):
    monkeypatch.setattr(C, "MAX_FILE_BYTES", 5000)
    src = str(tmp_path / "shared")
    _put(src, f"alice/{B}/{B}.ipynb", _notebook("alice"))
    nb = _notebook("bob")
    _put(src, f"bob/{B}/{B}.ipynb", nb[:-2] + b" " * 10_000 + nb[-2:])
    _put(src, f"alice/{B}/big.bin", b"x" * 10_000)
    got = collect(course, src)
    assert list(got) == [("alice", B)]
    rows = _by_file(got)
    assert rows[f"bob/{B}/{B}.ipynb"]["status"] == "ignored"
    assert "larger than 5000 bytes" in rows[f"bob/{B}/{B}.ipynb"]["detail"]
    assert rows[f"alice/{B}/big.bin"]["status"] == "ignored"
    assert not os.path.exists(os.path.join(course, "submitted", "alice", B, "big.bin"))


def test_the_previous_copy_in_submitted_is_read_without_following_a_link(course, tmp_path):
    """Comparing with what submitted/ holds never reads through a link planted there."""
    dest = os.path.join(course, "submitted", "alice", B)
    os.makedirs(dest)
    os.symlink(os.path.join(course, "gradebook.db"), os.path.join(dest, B + ".ipynb"))
    src = str(tmp_path / "shared")
    _put(src, f"alice/{B}/{B}.ipynb", _notebook("alice"))
    got = collect(course, src)
    row = _by_file(got)[f"alice/{B}/{B}.ipynb"]
    assert row["status"] == "replaced" and "not kept" in row["detail"]
    assert not os.path.islink(_submitted(course, "alice", B))
    assert _marker(_submitted(course, "alice", B)) == "alice"
    with open(os.path.join(course, "gradebook.db"), "rb") as fh:
        assert b"INSTRUCTOR-GRADEBOOK" in fh.read()
    for _, data in _all_bytes(os.path.join(course, ".lossgrader")):
        assert b"INSTRUCTOR-GRADEBOOK" not in data


# ---------------------------------------------------------------- zip files: links, bad entries, bombs

def _dos_date(y, m, d):
    return (y - 1980) << 9 | m << 5 | d


def _raw_zip(path, entries):
    """A zip written byte by byte, so that its headers can say what zipfile would never
    write. entries: dicts with name, data (bytes as stored), and optionally plain (the
    uncompressed bytes: CRC and size), method, flags, crc, size (declared), mode (Unix)."""
    out, central = bytearray(), bytearray()
    for e in entries:
        name = e["name"].encode("utf-8")
        data = e["data"]
        plain = e.get("plain", data)
        method, flags = e.get("method", 0), e.get("flags", 0)
        crc = e.get("crc", zlib.crc32(plain))
        size = e.get("size", len(plain))
        offset = len(out)
        date = _dos_date(2026, 11, 20)
        out += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, flags, method, 0, date, crc, len(data), size,
                           len(name), 0) + name + data
        central += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 3 << 8 | 20, 20, flags, method, 0, date, crc,
                               len(data), size, len(name), 0, 0, 0, 0, e.get("mode", 0o100644) << 16,
                               offset) + name
    start = len(out)
    out += central
    out += struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(entries), len(entries), len(central), start, 0)
    with open(path, "wb") as fh:
        fh.write(out)
    return str(path)


def _deflate(data):
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    return packer.compress(data) + packer.flush()


def test_zip_link_entries_are_reported_and_skipped(course, tmp_path):
    alice = _notebook("alice")
    src = _raw_zip(tmp_path / "inbox.zip", [
        {"name": f"alice/{B}/{B}.ipynb", "data": alice},
        {"name": f"bob/{B}/{B}.ipynb", "data": f"../../alice/{B}/{B}.ipynb".encode(), "mode": 0o120777},
        {"name": f"carol/{A}/{A}.ipynb", "data": os.path.join(course, "solutions", A, A + ".ipynb").encode(),
         "mode": 0o120777},
        {"name": f"dave_{B}.ipynb", "data": b"", "mode": 0o010644},        # a FIFO entry
    ])
    got = collect(course, src)
    assert list(got) == [("alice", B)]
    rows = _by_file(got)
    assert rows[f"bob/{B}/{B}.ipynb"]["status"] == "ignored"
    assert "symbolic link in the zip" in rows[f"bob/{B}/{B}.ipynb"]["detail"]
    assert "symbolic link in the zip" in rows[f"carol/{A}/{A}.ipynb"]["detail"]
    assert "FIFO in the zip" in rows[f"dave_{B}.ipynb"]["detail"]
    assert sorted(os.listdir(os.path.join(course, "submitted"))) == ["alice"]


def test_one_bad_zip_entry_is_skipped_and_the_rest_collected(course, tmp_path):
    good = {s: _notebook(s) for s in ("alice", "bob", "crc", "cut", "method", "locked", "garbled")}
    packed = _deflate(good["cut"])
    src = _raw_zip(tmp_path / "submissions.zip", [
        {"name": f"alice_{B}.ipynb", "data": good["alice"]},
        {"name": f"crc_{B}.ipynb", "data": good["crc"], "crc": zlib.crc32(good["crc"]) ^ 0xFFFF},
        {"name": f"cut_{B}.ipynb", "data": packed[: len(packed) // 2], "plain": good["cut"], "method": 8},
        {"name": f"method_{B}.ipynb", "data": good["method"], "method": 97},          # WavPack: unsupported
        {"name": f"locked_{B}.ipynb", "data": good["locked"], "flags": 1},           # encrypted
        {"name": f"garbled_{B}.ipynb", "data": b"\xff" * 200, "plain": good["garbled"], "method": 8},
        {"name": f"bob_{B}.ipynb", "data": _deflate(good["bob"]), "plain": good["bob"], "method": 8},
    ])
    proc = _run_cli("--course", course, "collect", src)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert sorted(os.listdir(os.path.join(course, "submitted"))) == ["alice", "bob"]
    assert _marker(_submitted(course, "bob", B)) == "bob"
    with open(os.path.join(course, "collect-report.csv"), newline="", encoding="utf-8") as fh:
        report = {r["file"]: r for r in csv.DictReader(fh)}
    for who in ("crc", "cut", "method", "locked", "garbled"):
        row = report[f"{who}_{B}.ipynb"]
        assert row["status"] == "ignored", who
        assert "unreadable zip entry" in row["detail"] and "the rest of the zip file is collected" in row["detail"]
    assert "CRC" in report[f"crc_{B}.ipynb"]["detail"]
    assert "encrypted" in report[f"locked_{B}.ipynb"]["detail"]
    assert "compression method" in report[f"method_{B}.ipynb"]["detail"]
    assert f"ignored: crc_{B}.ipynb: unreadable zip entry" in proc.stdout     # printed with its reason


def test_a_zip_cut_short_is_one_clear_message(course, tmp_path):
    whole = _raw_zip(tmp_path / "whole.zip", [{"name": f"alice_{B}.ipynb", "data": _notebook("alice")}])
    with open(whole, "rb") as fh:
        data = fh.read()
    cut = tmp_path / "cut.zip"
    cut.write_bytes(data[: len(data) - 30])
    proc = _run_cli("--course", course, "collect", str(cut))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "neither a folder nor a zip file" in proc.stderr or "not a readable zip file" in proc.stderr


def test_zip_bomb_past_the_cap_is_reported_not_extracted(course, tmp_path, monkeypatch):
    """The cap on what one download extracts, checked from the headers before extracting:
    entries past it are reported, the ones before it collected."""
    monkeypatch.setattr(C, "MAX_EXTRACT_BYTES", 1_000_000)
    monkeypatch.setattr(C, "MAX_EXTRACT_ENTRIES", 1000)
    pad = b" " * 300_000
    entries = {}
    for i in range(6):
        nb = _notebook(f"s{i}")
        data = nb[:-2] + pad + nb[-2:]                         # ~300 KB of spaces: still a notebook
        entries[f"s{i}_{B}.ipynb"] = data
    src = tmp_path / "bomb.zip"
    with zipfile.ZipFile(src, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(zipfile.ZipInfo(name, date_time=WHEN), data, zipfile.ZIP_DEFLATED)
    assert os.path.getsize(src) < 50_000                     # small on disk, 1.8 MB inflated
    got = collect(course, str(src))
    assert sorted(got) == [("s0", B), ("s1", B), ("s2", B)]   # 3 x 300 KB fit under 1 MB
    rows = _by_file(got)
    for i in (3, 4, 5):
        row = rows[f"s{i}_{B}.ipynb"]
        assert row["status"] == "ignored"
        assert "extraction cap" in row["detail"] and "from the zip file's headers" in row["detail"]
        assert "MAX_EXTRACT_BYTES" in row["detail"]
    # the count is capped too
    monkeypatch.setattr(C, "MAX_EXTRACT_BYTES", 10 ** 9)
    monkeypatch.setattr(C, "MAX_EXTRACT_ENTRIES", 2)
    got = collect(course, str(src))
    assert sum(1 for r in got.rows if "extraction cap" in r["detail"]) == 4


def test_zip_entries_that_inflate_past_their_headers_are_not_extracted(course, tmp_path, monkeypatch):
    """Headers can lie: an entry that says 1 KB and inflates to 20 MB is cut where its
    header said and dropped, and the total never passes the cap."""
    monkeypatch.setattr(C, "MAX_EXTRACT_BYTES", 3_000_000)
    bomb = b"0" * 20_000_000
    honest = _notebook("honest")
    src = _raw_zip(tmp_path / "liar.zip", [
        {"name": f"liar_{B}.ipynb", "data": _deflate(bomb), "plain": bomb, "size": 1000, "method": 8},
        {"name": f"liar2_{B}.ipynb", "data": _deflate(bomb), "plain": bomb, "size": 1000, "method": 8,
         "crc": zlib.crc32(bomb[:1000])},
        {"name": f"honest_{B}.ipynb", "data": _deflate(honest), "plain": honest, "method": 8},
    ])
    got = collect(course, src)
    rows = _by_file(got)
    # its CRC is the whole bomb's: cut at 1000 bytes it no longer matches
    assert rows[f"liar_{B}.ipynb"]["status"] == "ignored"
    assert "unreadable zip entry" in rows[f"liar_{B}.ipynb"]["detail"]
    # its CRC is that of the first 1000 bytes: those 1000 bytes, not one more
    assert sorted(got) == [("honest", B), ("liar2", B)]
    assert os.path.getsize(_submitted(course, "liar2", B)) == 1000
    for _, data in _all_bytes(os.path.join(course, "submitted")):
        assert len(data) <= 1000 or data == honest


def test_extraction_counts_the_bytes_it_reads(course, tmp_path, monkeypatch):
    """The bound is enforced on the bytes read, not only on the headers: with a zip reader
    that hands out more than an entry's header says (CPython's stops at the header's size;
    collect does not rely on it), the entry is dropped and nothing of it is kept."""
    src = tmp_path / "inbox.zip"
    with zipfile.ZipFile(src, "w") as zf:
        zf.writestr(zipfile.ZipInfo(f"liar_{B}.ipynb", date_time=WHEN), b"{}")
        zf.writestr(zipfile.ZipInfo(f"honest_{B}.ipynb", date_time=WHEN), _notebook("honest"))
    real_open = zipfile.ZipFile.open

    def generous_open(self, info, *args, **kwargs):
        if getattr(info, "filename", info).startswith("liar"):
            return io.BytesIO(b"{" + b" " * 5_000_000 + b"}")
        return real_open(self, info, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", generous_open)
    got = collect(course, str(src))
    assert list(got) == [("honest", B)]
    row = _by_file(got)[f"liar_{B}.ipynb"]
    assert row["status"] == "ignored" and "more than its header's 2 bytes" in row["detail"]


# ---------------------------------------------------------------- timestamps for nbgrader

def _utc(epoch):
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f %Z")


def _read_text(path):
    with open(path, encoding="utf-8") as fh:
        return fh.read()


def test_collect_writes_nbgrader_timestamps_and_secrets(course, tmp_path):
    from nbgrader.utils import parse_utc

    later = (2026, 11, 22, 23, 30, 6)               # zip times have 2-second steps
    src = tmp_path / "submissions.zip"
    with zipfile.ZipFile(src, "w") as zf:
        zf.writestr(zipfile.ZipInfo(f"lisi_12002_600_{A}.ipynb", date_time=later), _notebook("li"))
    collect(course, str(src))
    d = os.path.join(course, "submitted", "12002", A)
    stamp = _read_text(os.path.join(d, "timestamp.txt"))
    assert stamp == _utc(time.mktime(later + (0, 0, -1)))           # the file time in the zip
    assert stamp.endswith(" UTC") and parse_utc(stamp)
    secret = _read_text(os.path.join(d, "submission_secret.txt"))
    assert re.fullmatch(r"[0-9a-f]{128}", secret)
    # collected again unchanged: the same timestamp and secret
    collect(course, str(src))
    assert _read_text(os.path.join(d, "timestamp.txt")) == stamp
    assert _read_text(os.path.join(d, "submission_secret.txt")) == secret

    # a pattern's timestamp group is the submission time
    export = str(tmp_path / "export")
    _put(export, f"hw__s01__2026-11-21T08:15:00+08:00__{A}.ipynb", _notebook("s01"))
    collect(course, export, pattern=r"hw__(?P<student>s\d+)__(?P<timestamp>[^_]+)__(?P<assignment>\d\d_\w+)")
    assert _read_text(os.path.join(course, "submitted", "s01", A, "timestamp.txt")) == \
        "2026-11-21 00:15:00.000000 UTC"

    # an nbgrader hand-in folder's own timestamp.txt is its submission time; its secret is not taken
    shared = str(tmp_path / "shared")
    _put(shared, f"alice/{A}/{A}.ipynb", _notebook("alice"))
    _put(shared, f"alice/{A}/timestamp.txt", b"2026-11-20 09:00:00.000000 UTC")
    _put(shared, f"alice/{A}/submission_secret.txt", b"0" * 128)
    _put(shared, f"bob/{A}/{A}.ipynb", _notebook("bob"), mtime=1_790_000_000)
    _put(shared, f"bob/{A}/timestamp.txt", b"=cmd|' /C calc'!A0")
    got = collect(course, shared)
    rows = _by_file(got)
    assert _read_text(os.path.join(course, "submitted", "alice", A, "timestamp.txt")) == \
        "2026-11-20 09:00:00.000000 UTC"
    assert _read_text(os.path.join(course, "submitted", "alice", A, "submission_secret.txt")) != "0" * 128
    assert rows[f"alice/{A}/submission_secret.txt"]["status"] == "ignored"
    assert rows[f"bob/{A}/timestamp.txt"]["status"] == "ignored"
    assert _read_text(os.path.join(course, "submitted", "bob", A, "timestamp.txt")) == _utc(1_790_000_000)


# ---------------------------------------------------------------- student ids made from names

SLUGS = {
    "Zhang San": "Zhang_San",
    "张 三": "张_三",
    "  Li  Si ": "Li_Si",
    "O'Brien, Pat": "O_Brien_Pat",
    "../../etc/passwd": "etc_passwd",
    "a/b": "a_b",
    "a\\b": "a_b",
    "..": "unnamed",
    ".": "unnamed",
    ".hidden": "hidden",
    "x..": "x",
    "-rf": "rf",
    "--help": "help",
    "a\x00b": "a_b",
    '=HYPERLINK("http://x","y")': "HYPERLINK_http_x_y",
    "@SUM(A1)": "SUM_A1",
    "+1": "1",
    "-2+3": "2_3",
    "\t=1": "1",
    "": "unnamed",
    "x" * 100: "x" * 64,
}


def test_a_no_notebook_hand_in_cannot_set_its_time_or_secret_or_leave_its_folder(course, tmp_path):
    """A Canvas student without a notebook uploads files named like nbgrader's own
    (timestamp.txt with an early time, submission_secret.txt), a dot file, a formula name and
    a link in a shared folder: the files land in their hand-in folder under plain names, the
    submission time is the download's and the secret collect's own; nothing is followed."""
    src = tmp_path / "canvas.zip"
    with zipfile.ZipFile(src, "w") as zf:
        for n, (name, data) in enumerate([("timestamp.txt", b"1999-01-01 00:00:00.000000 UTC"),
                                          ("submission_secret.txt", b"stolen"),
                                          (".bashrc", b"echo hi"),
                                          ("=HYPERLINK(x).pdf", b"%PDF-1.4")]):
            zf.writestr(zipfile.ZipInfo(f"lisi_12002_{600 + n}_{name}", date_time=WHEN), data)
    got = collect(course, str(src), [A], report="r.csv")
    assert got.no_notebook == [("12002", A)]
    folder = os.path.join(course, "submitted", "12002", A)
    assert sorted(os.listdir(folder)) == sorted(["_timestamp.txt", "_submission_secret.txt", "bashrc",
                                                 "=HYPERLINK(x).pdf", "timestamp.txt", "submission_secret.txt"])
    assert _read_text(os.path.join(folder, "timestamp.txt")) == _utc(time.mktime(WHEN + (0, 0, -1)))
    secret = _read_text(os.path.join(folder, "submission_secret.txt"))
    assert re.fullmatch(r"[0-9a-f]{128}", secret)
    assert all(r["status"] == "no notebook" for r in got.rows)
    bad, _ = _formulas(os.path.join(course, "r.csv"))
    assert bad == []
    # a shared folder: an nbgrader hand-in folder without a notebook, one of its files a link
    shared = tmp_path / "shared"
    _put(str(shared), f"bob/{A}/answer.py", b"x = 1")
    _link(str(shared), f"bob/{A}/notes.txt", os.path.join(course, "gradebook.db"))
    got = collect(course, str(shared))
    assert got.no_notebook == [("bob", A)]
    rows = _by_file(got)
    assert rows[f"bob/{A}/notes.txt"]["status"] == "ignored" and "symbolic link" in rows[f"bob/{A}/notes.txt"]["detail"]
    assert sorted(os.listdir(os.path.join(course, "submitted", "bob", A))) == [
        "answer.py", "submission_secret.txt", "timestamp.txt"]


def test_student_id_slugs_from_names_are_plain_folder_names():
    for name, slug in SLUGS.items():
        assert C._slug(name) == slug, name
    for name in list(SLUGS) + ["/", "\\", "../..", "./.", "a/../../b", "\u202e..", "名/字", "é" * 300]:
        s = C._slug(name)
        assert C._id_problem(s) is None, (name, s)
        assert "/" not in s and "\\" not in s and "\0" not in s and s not in (".", "..")
        assert not s.startswith((".", "-")) and not s.startswith(FORMULA)
        assert len(s) <= C.MAX_ID_CHARS


def test_ids_from_names_through_collect_stay_inside_submitted(course, tmp_path):
    """Without a roster, Moodle full names and a pattern's captured text become ids; the
    folders collect makes are direct children of submitted/, and two names that give the
    same id are not merged into one student."""
    moodle = tmp_path / "moodle.zip"
    names = {"Zhang San": "1001", "张 三": "1002", "-2+3": "1003", "@SUM(A1)": "1004", "\t=1": "1005",
             "O'Brien Pat": "1006", "O Brien Pat": "1007"}
    with zipfile.ZipFile(moodle, "w") as zf:
        for name, pid in names.items():
            zf.writestr(zipfile.ZipInfo(f"{name}_{pid}_assignsubmission_file/{A}.ipynb", date_time=WHEN),
                        _notebook(name))
    got = collect(course, str(moodle))
    assert sorted(got) == sorted([("Zhang_San", A), ("张_三", A), ("2_3", A), ("SUM_A1", A), ("1", A)])
    assert _marker(_submitted(course, "张_三", A)) == "张 三"
    rows = _by_file(got)
    clash = rows[f"O'Brien Pat_1006_assignsubmission_file/{A}.ipynb"]
    assert clash["status"] == "unmatched" and "1006, 1007" in clash["detail"] and "'O_Brien_Pat'" in clash["detail"]
    assert rows[f"O Brien Pat_1007_assignsubmission_file/{A}.ipynb"]["status"] == "unmatched"

    src = str(tmp_path / "export")
    _put(src, f"a/b/{B}.ipynb", _notebook("a/b"))
    _put(src, f"c/d/{B}.ipynb", _notebook("c/d"))
    _put(src, f"c_d/{B}.ipynb", _notebook("c_d"))
    _put(src, f"x../y../{B}.ipynb", _notebook("x"))
    got = collect(course, src, pattern=r"^(?P<student>.+)/(?P<assignment>\d\d_\w+)\.ipynb$")
    assert ("a_b", B) in got and ("x.._y", B) in got
    assert _marker(_submitted(course, "a_b", B)) == "a/b"
    rows = _by_file(got)
    assert rows[f"c/d/{B}.ipynb"]["status"] == "unmatched" and "'c_d'" in rows[f"c/d/{B}.ipynb"]["detail"]
    submitted = os.path.join(course, "submitted")
    for student in os.listdir(submitted):
        assert C._id_problem(student) is None, student
        assert os.path.isfile(_submitted(course, student, A)) or os.path.isfile(_submitted(course, student, B))
    assert sorted(os.listdir(submitted)) == sorted({s for s, _ in got} | {"Zhang_San", "张_三", "2_3", "SUM_A1", "1"})


def test_a_roster_student_id_that_is_not_a_folder_name_is_refused(course, tmp_path):
    roster = tmp_path / "roster.csv"
    roster.write_text('student_id,canvas_id\n../../evil,12001\nok,12002\n', encoding="utf-8")
    with pytest.raises(CollectError, match="cannot"):
        collect(course, str(tmp_path), roster=str(roster))


# ---------------------------------------------------------------- the formula rule in every CSV

def test_csv_rule_quotes_formulas_and_leaves_numbers():
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"lossgrader-csv-{os.getpid()}.csv")
    try:
        write_csv(path, ["a", "b", "=c"], [
            {"a": '=HYPERLINK("http://x","y")', "b": -1.5},
            {"a": "@SUM(A1)", "b": Numeral("-2")},
            {"a": "+1", "b": 0},
            {"a": "-2+3", "b": "-2"},
            {"a": "\t=1", "b": "\r=1"},
            {"a": "plain", "b": None},
        ])
        with open(path, newline="", encoding="utf-8") as fh:
            table = list(csv.reader(fh))
    finally:
        os.unlink(path)
    assert table == [["a", "b", "'=c"],
                     ['\'=HYPERLINK("http://x","y")', "-1.5", ""],
                     ["'@SUM(A1)", "-2", ""],
                     ["'+1", "0", ""],
                     ["'-2+3", "'-2", ""],
                     ["'\t=1", "'\r=1", ""],
                     ["plain", "", ""]]


def _formulas(path):
    """Cells of a CSV that a spreadsheet would run: text starting with a formula sign that
    is not a plain number."""
    with open(path, newline="", encoding="utf-8") as fh:
        cells = [c for row in csv.reader(fh) for c in row]
    return [c for c in cells if c.startswith(FORMULA) and not re.fullmatch(r"-?\d+(\.\d+)?", c)], cells


@pytest.fixture(scope="module")
def formula_class(tmp_path_factory):
    """01_overview registered; hand-ins collected from a Canvas zip with a roster, a Moodle
    download and a shared folder, every name and id written as a formula; graded with
    gradebook.write_result (one failed)."""
    pytest.importorskip("nbgrader")
    from lossgrader import course as K, gradebook as G
    from lossgrader.results import HandinResult

    base = tmp_path_factory.mktemp("formulas")
    root = copy_course(base / "course", [B], exercises=False)
    assert G.register(root, [B]) == [B]
    with open(os.path.join(root, G.SCRATCH_DIR, "release", B, B + ".ipynb"), "rb") as fh:
        released = fh.read()
    roster = base / "roster.csv"
    with open(roster, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["student_id", "canvas_id", "name", "sis_user_id", "sis_login_id", "section", "moodle_id"])
        w.writerow(["@SUM(A1)", "12001", '=HYPERLINK("http://x","y")', "+1", "-2+3", "\t=1", ""])
        w.writerow(["+1", "12002", "@SUM(A1)", "=1+1", "@x", "-sec", ""])
    canvas = base / "canvas.zip"
    with zipfile.ZipFile(canvas, "w") as zf:
        zf.writestr(zipfile.ZipInfo(f"zhangsan_12001_500_{B}.ipynb", date_time=WHEN), released)
        zf.writestr(zipfile.ZipInfo(f"lisi_12002_501_{B}.ipynb", date_time=WHEN), released)
        zf.writestr(zipfile.ZipInfo("=1+1_12009_502_x.ipynb", date_time=WHEN), released)
        zf.writestr(zipfile.ZipInfo("@SUM(A1).txt", date_time=WHEN), b"")
    assert sorted(collect(root, str(canvas), roster=str(roster), report="canvas-report.csv")) == \
        [("+1", B), ("@SUM(A1)", B)]
    moodle = base / "moodle.zip"
    with zipfile.ZipFile(moodle, "w") as zf:
        for name, pid in (("-2+3", "88"), ("\t=1", "89"), ('=HYPERLINK("x")', "90")):
            zf.writestr(zipfile.ZipInfo(f"{name}_{pid}_assignsubmission_file/{B}.ipynb", date_time=WHEN), released)
    assert sorted(collect(root, str(moodle), report="moodle-report.csv")) == \
        [("1", B), ("2_3", B), ("HYPERLINK_x", B)]
    shared = base / "shared"
    _put(str(shared), f"-9+9/{B}/{B}.ipynb", released)
    _put(str(shared), f"=cmd/{B}/{B}.ipynb", released)
    assert sorted(collect(root, str(shared), report="shared-report.csv")) == [("-9+9", B), ("=cmd", B)]
    points = {"test_numerical_grad": 2.0}
    status = {}
    for student, score in (("@SUM(A1)", 1.5), ("+1", 2.0), ("2_3", 0.5), ("1", 1.0), ("HYPERLINK_x", 2.0),
                           ("-9+9", 0.0)):
        G.write_result(G.db_url(root), HandinResult(student, B, scores={"test_numerical_grad": score},
                                                    max_scores=points, notebooks={B: released.decode()}))
    G.write_result(G.db_url(root), HandinResult.failure("=cmd", B, "=cmd|' /C calc'!A0", max_scores=points))
    status[f"=cmd/{B}"] = {"status": "failed", "reason": "-1+1 =cmd|' /C calc'!A0"}
    K.write_status(root, status)
    return {"root": root, "roster": str(roster)}


def test_every_csv_shows_formulas_as_text(formula_class, tmp_path):
    from lossgrader.export import export, export_lms

    root = formula_class["root"]
    grades, _ = export(root)
    canvas, _, _ = export_lms(root, "canvas", roster=formula_class["roster"])
    moodle, _, _ = export_lms(root, "moodle", assignment=B)
    sheet = tmp_path / "worksheet.csv"
    with open(sheet, "w", newline="", encoding="utf-8-sig") as fh:
        w = csv.writer(fh)
        w.writerow(["Identifier", "Full name", "Email address", "Grade", "Feedback comments"])
        w.writerow(["Participant 88", "-2+3", "@evil.example", "", "=HYPERLINK(\"http://x\")"])
    filled, rows, _ = export_lms(root, "moodle", assignment=B, worksheet=str(sheet), to=str(tmp_path / "f.csv"))
    assert rows
    reports = [os.path.join(root, n) for n in ("canvas-report.csv", "moodle-report.csv", "shared-report.csv")]
    quoted = set()
    for path in [grades, canvas, moodle, filled] + reports:
        bad, cells = _formulas(path)
        assert bad == [], (os.path.basename(path), bad)
        quoted |= {c for c in cells if c.startswith("'")}
    # the names and ids did arrive, as text
    for text in ("@SUM(A1)", "+1", "=cmd", "-9+9", '=HYPERLINK("http://x","y")', "-2+3", "\t=1",
                 "=1+1", "@x", "-sec", "=1+1_12009_502_x.ipynb", "@SUM(A1).txt", '=HYPERLINK("x")',
                 "@evil.example", '=HYPERLINK("http://x")', "-1+1 =cmd|' /C calc'!A0"):
        assert "'" + text in quoted, text
    # numbers stay numbers
    with open(grades, newline="", encoding="utf-8") as fh:
        table = {r["student_id"]: r for r in csv.DictReader(fh)}
    assert table["'@SUM(A1)"]["score"] == "1.5" and table["'=cmd"]["score"] == "0.0"


def test_a_failed_hand_in_is_exported_to_canvas_and_moodle_as_zero(formula_class, tmp_path):
    """Pinned: a hand-in that could not be graded is a 0 in the platform exports (with
    --points too), not an empty cell (which would leave the platform's grade as it is) and
    not its partial score; grades.csv says failed with the reason."""
    from lossgrader.export import export, export_lms

    root = formula_class["root"]
    roster = tmp_path / "roster.csv"
    roster.write_text("student_id,canvas_id,moodle_id\n=cmd,13001,777\n", encoding="utf-8")
    path, rows, _ = export_lms(root, "canvas", roster=str(roster), to=str(tmp_path / "c.csv"), points=100)
    line = {r["ID"]: r for r in rows}["13001"]
    assert line[B] == "0"
    with open(path, newline="", encoding="utf-8") as fh:
        table = list(csv.reader(fh))
    assert [r for r in table if r[1] == "13001"][0][-1] == "0"
    path, rows, _ = export_lms(root, "moodle", roster=str(roster), assignment=B, to=str(tmp_path / "m.csv"))
    line = {r["Identifier"]: r for r in rows}["Participant 777"]
    assert line["Grade"] == "0" and line["Status"] == "failed"
    _, rows = export(root, str(tmp_path / "g.csv"))
    row = {r["student_id"]: r for r in rows}["=cmd"]
    assert (row["score"], row["status"]) == (0.0, "failed") and "calc" in row["reason"]


# ---------------------------------------------------------------- nbgrader's own commands on collected hand-ins

@pytest.fixture(scope="module")
def collected_and_graded(tmp_path_factory):
    """A Canvas download collected, then lossgrader autograde and lossgrader feedback."""
    pytest.importorskip("nbgrader")
    from lossgrader import gradebook as G
    from lossgrader.autograde import autograde
    from lossgrader.feedback import feedback

    base = tmp_path_factory.mktemp("release")
    root = copy_course(base / "course", [B], exercises=False)
    assert G.register(root, [B]) == [B]
    with open(os.path.join(root, G.SCRATCH_DIR, "release", B, B + ".ipynb"), "rb") as fh:
        released = fh.read()
    src = base / "submissions.zip"
    with zipfile.ZipFile(src, "w") as zf:
        zf.writestr(zipfile.ZipInfo(f"lisi_12002_600_{B}.ipynb", date_time=WHEN), released)
    assert list(collect(root, str(src))) == [("12002", B)]
    results = autograde(root, cell_timeout=60, progress=False, quiet=True)
    assert results[("12002", B)]["status"] == "autograded", results
    pages = feedback(root, progress=False)
    assert pages == [os.path.join(root, "feedback", "12002", B, B + ".html")]
    return {"root": root, "base": base, "page": pages[0]}


def test_the_download_time_is_the_submission_time_in_the_gradebook(collected_and_graded):
    from nbgrader.api import Gradebook
    from nbgrader.utils import parse_utc

    from lossgrader import gradebook as G

    root = collected_and_graded["root"]
    stamp = _read_text(os.path.join(root, "submitted", "12002", B, "timestamp.txt"))
    assert stamp == _utc(time.mktime(WHEN + (0, 0, -1)))
    with Gradebook(G.db_url(root)) as gb:
        assert gb.find_submission(B, "12002").timestamp == parse_utc(stamp)
    assert _read_text(os.path.join(root, "autograded", "12002", B, "timestamp.txt")) == stamp


def test_nbgrader_release_feedback_works_on_collected_hand_ins(collected_and_graded):
    """collect -> lossgrader autograde -> lossgrader feedback -> nbgrader release_feedback:
    nbgrader finds the timestamp and the secret it needs and releases our page."""
    root = collected_and_graded["root"]
    exchange = collected_and_graded["base"] / "exchange"
    exchange.mkdir(exist_ok=True)
    proc = subprocess.run([sys.executable, "-m", "nbgrader", "release_feedback", B, f"--Exchange.root={exchange}"],
                          cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    released_pages = list((exchange / "loss-functions-zh" / "feedback").glob("*.html"))
    assert len(released_pages) == 1
    with open(collected_and_graded["page"], "rb") as fh:
        assert released_pages[0].read_bytes() == fh.read()
