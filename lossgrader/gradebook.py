"""The gradebook: the only module that opens nbgrader's database.

One writer, nothing lost (issue 7, item 3):

* Only the coordinating process (``lossgrader autograde``) writes, through ``register``,
  ``write_result`` and ``restore``.  A grading worker never opens the database: it gets the
  released cells as plain data (``released``) and returns a ``HandinResult`` that the
  coordinator stores with ``write_result``, one transaction per hand-in.
* Readers (``registered_assignments``, ``released``, ``submission_scores``, ``grade_rows``)
  open SQLite read-only, so they never take a write lock and never change the file
  (nbgrader's own ``Gradebook`` class creates tables and commits a course row on every open).
* Every function checks the file first (``check_readable``): a truncated, overwritten or
  foreign file raises ``GradebookError`` with what to do, and is never created over,
  migrated or overwritten; so does a gradebook that was deleted while backups of it exist.
  A writer killed mid-transaction loses only that transaction (SQLite's journal rollback).
* ``backup`` copies the database with SQLite's backup API into ``.lossgrader/backups/``
  (the coordinator calls it before a batch writes); ``restore`` brings one back after
  keeping the current file aside.  The documented one-liner, when the ``lossgrader restore``
  command is not at hand::

      python -c "from lossgrader.gradebook import restore; print(restore('.'))"

Rows are written exactly as nbgrader's ``autograde`` (``SaveAutoGrades``) writes them, so
``nbgrader generate_feedback``, ``nbgrader export`` and the formgrader read them unchanged.

A database server instead of the SQLite file (``CourseDirectory.db_url`` in
``nbgrader_config.py``, e.g. ``postgresql+psycopg://USER:PASSWORD@HOST/DATABASE``) is read and
written the same way: ``check_readable`` reaches the server (CONNECT_TIMEOUT) and checks the
catalogue (an empty database is a new course; other tables or missing columns are refused);
PostgreSQL readers run READ ONLY transactions and the writer holds an advisory lock per
transaction; ``backup`` runs ``pg_dump`` (or logs "no backup for this URL" when it cannot);
``restore`` refuses and prints the ``pg_restore`` command for the newest dump.
"""
import contextlib
import datetime
import json
import logging
import math
import os
import re
import shutil
import sqlite3
import subprocess
import threading
import urllib.parse

from . import course

GRADEBOOK_FILE = "gradebook.db"
SCRATCH_DIR = ".lossgrader"                    # scratch release directory used to register assignments
BACKUP_DIR = os.path.join(SCRATCH_DIR, "backups")
KEEP_BACKUPS = 30
BUSY_TIMEOUT = 60.0                            # seconds a connection waits for another one's lock

_SQLITE_MAGIC = b"SQLite format 3\x00"
_BACKUP_NAME = re.compile(r"^gradebook-(\d{8}T\d{6}\.\d{6})Z(?:-(\d+))?\.db$")
_DUMP_NAME = re.compile(r"^gradebook-(\d{8}T\d{6}\.\d{6})Z(?:-(\d+))?\.pgdump$")   # pg_dump backups
_BROKEN_NAME = re.compile(r"^gradebook-broken-(\d{8}T\d{6}\.\d{6})Z(?:-(\d+))?\.db$")
_SIDE_FILES = ("-journal", "-wal", "-shm")     # SQLite's companions of a database file

SERVER_URL_EXAMPLE = "postgresql+psycopg://USER:PASSWORD@HOST:5432/DATABASE"
CONNECT_TIMEOUT = 15                           # seconds to reach a database server before giving up
WRITER_LOCK = 0x6C6F737367726164               # PostgreSQL advisory lock of the one writer ("lossgrad")

RESTORE_COMMAND = ("run `lossgrader restore` in the course directory, or "
                   "python -c \"from lossgrader.gradebook import restore; print(restore('.'))\"")
RESTORE_HINT = ("To bring back the newest backup (the damaged file is kept aside), " + RESTORE_COMMAND
                + "; backups are in .lossgrader/backups/. To start an empty gradebook instead, move the file away.")


log = logging.getLogger("lossgrader.gradebook")


class GradebookError(Exception):
    """The gradebook cannot be used as asked; the message says why and what to do."""


class InvalidResult(GradebookError):
    """A HandinResult that does not fit the registered assignment; nothing was written.

    The coordinator records the hand-in as failed (HandinResult.failure) and goes on."""


# --------------------------------------------------------------------------------------
# Where the gradebook is
# --------------------------------------------------------------------------------------

def course_config(root):
    """The course's nbgrader configuration (lossgrader.course.load_config), as a GradebookError
    when nbgrader_config.py cannot be loaded."""
    try:
        return course.load_config(root)
    except course.CourseError as exc:
        raise GradebookError(str(exc)) from exc


def db_url(root):
    """The gradebook's database URL: nbgrader_config.py's CourseDirectory.db_url when it sets
    one, else nbgrader's default, SQLite gradebook.db in the course directory."""
    root = os.path.abspath(root)
    cfg = course_config(root)
    url = cfg.CourseDirectory.get("db_url")
    if isinstance(url, str) and url:
        return url
    return "sqlite:///" + os.path.join(root, GRADEBOOK_FILE)


def sqlite_path(url):
    """The file of an SQLite URL (absolute), None for another database or an in-memory one."""
    if not url.startswith("sqlite:"):
        return None
    from sqlalchemy.engine import make_url

    database = make_url(url).database
    if not database or database == ":memory:":
        return None
    return os.path.abspath(database)


def _ro_connect(path):
    """A read-only sqlite3 connection to path: cannot create, change or take a write lock."""
    uri = "file:" + urllib.parse.quote(path) + "?mode=ro"
    return sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT, check_same_thread=False)


# --------------------------------------------------------------------------------------
# Is it a gradebook?
# --------------------------------------------------------------------------------------

def _required_schema():
    """{table: {column, ...}} of nbgrader's gradebook (the installed nbgrader's models)."""
    from nbgrader.api import Base

    return {name: {c.name for c in table.columns} for name, table in Base.metadata.tables.items()}


def _recover_interrupted_write(path):
    """Let SQLite roll back the transaction of a writer that was killed mid-write.

    A killed writer leaves a hot journal (gradebook.db-journal) beside the file; a read-only
    connection cannot roll it back and fails with "attempt to write a readonly database".
    Any ordinary SQLite connection rolls it back on its first read: that is SQLite's own
    crash recovery and brings back the last committed state, nothing else.  Returns a
    problem string when even that fails, else None."""
    if not any(os.path.exists(path + suffix) for suffix in ("-journal", "-wal")):
        return None
    try:
        con = sqlite3.connect(path, timeout=BUSY_TIMEOUT)
        try:
            con.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            con.close()
    except sqlite3.OperationalError as exc:
        _raise_if_locked(path, exc)
        return f"SQLite cannot recover an interrupted write ({exc})"
    except sqlite3.DatabaseError as exc:
        return f"SQLite cannot recover an interrupted write ({exc})"
    return None


def _raise_if_locked(path, exc):
    """A gradebook held by another writer past the busy timeout is an error to report, not a
    sign of corruption."""
    if "locked" in str(exc) or "busy" in str(exc):
        raise GradebookError(f"the gradebook {path} stayed locked by another process for "
                             f"{BUSY_TIMEOUT:.0f} s; try again when it has finished") from exc


def _sqlite_problem(path):
    """Why the SQLite file at path is not a readable nbgrader gradebook; None when it is."""
    size = os.path.getsize(path)
    if size == 0:
        return "the file is empty (0 bytes): it was truncated or overwritten"
    with open(path, "rb") as fh:
        header = fh.read(100)
    if not header.startswith(_SQLITE_MAGIC):
        return f"it is not an SQLite database (it starts with {header[:16]!r})"
    if len(header) < 100:
        return f"the file is truncated ({size} bytes, shorter than an SQLite header)"
    problem = _recover_interrupted_write(path)
    if problem:
        return problem
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        header = fh.read(100)
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    header_valid = header[24:28] == header[92:96]          # the size field is valid for this version
    if header_valid and pages and size < pages * page_size:
        return f"the file is truncated ({size} bytes, its header says {pages * page_size})"
    try:
        con = _ro_connect(path)
    except sqlite3.Error as exc:
        return f"SQLite cannot open it ({exc})"
    try:
        rows = con.execute("PRAGMA quick_check").fetchall()
        if [r[0] for r in rows] != ["ok"]:
            return "SQLite reports it damaged (" + "; ".join(str(r[0]) for r in rows[:3]) + ")"
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables:
            return "it is an SQLite database without any table, not an nbgrader gradebook"
        required = _required_schema()
        missing = sorted(set(required) - tables)
        if missing:
            return "it is an SQLite database without nbgrader's tables " + ", ".join(missing)
        for table, columns in sorted(required.items()):
            have = {r[1] for r in con.execute(f'PRAGMA table_info("{table}")')}
            lacking = sorted(columns - have)
            if lacking:
                return (f"its table {table} lacks the columns {', '.join(lacking)}: it was written by "
                        "another nbgrader version (back it up, then run `nbgrader db upgrade`)")
    except sqlite3.OperationalError as exc:
        _raise_if_locked(path, exc)
        return f"SQLite cannot read it ({exc})"
    except sqlite3.DatabaseError as exc:
        return f"SQLite cannot read it ({exc})"
    finally:
        con.close()
    return None


def check_readable(url):
    """Raise GradebookError when the gradebook at url exists but is not a readable nbgrader
    gradebook (garbage, truncated, empty, a database without nbgrader's tables).

    A gradebook that does not exist yet is fine (a new course), unless backups of it exist
    beside it (.lossgrader/backups/): then it was deleted, and starting an empty one would
    lose every grade, so that is an error too.  An unreadable file is never
    created over, migrated or overwritten.  The check only reads, with one exception: when a
    writer was killed mid-transaction, SQLite's own crash recovery rolls its journal back
    (the last committed grades, nothing else), as any SQLite client would on opening it."""
    path = sqlite_path(url)
    if path is None:
        if url.startswith("sqlite:"):
            return                               # in-memory: nothing to check
        _server_state(url)
        return
    if not os.path.exists(path):
        kept = _sorted_backups(os.path.join(os.path.dirname(path), BACKUP_DIR), _BACKUP_NAME)
        if kept:
            raise GradebookError(
                f"The gradebook {path} is missing, but {len(kept)} backup{'s' if len(kept) > 1 else ''} of it "
                f"{'are' if len(kept) > 1 else 'is'} in "
                f"{os.path.dirname(kept[0])} (newest {os.path.basename(kept[0])}): it was deleted or moved, "
                "and lossgrader will not start an empty gradebook in its place. To bring back the newest "
                f"backup, {RESTORE_COMMAND}. To start an empty gradebook on purpose, move that backups "
                "folder away first.")
        return
    if not os.path.isfile(path):
        raise GradebookError(f"The gradebook {path} is not a file. {RESTORE_HINT}")
    problem = _sqlite_problem(path)
    if problem:
        raise GradebookError(f"The gradebook {path} is not a readable nbgrader gradebook: {problem}. "
                             f"lossgrader has not changed it. {RESTORE_HINT}")


def _is_server(url):
    """Whether url names a database server (PostgreSQL, MySQL), not an SQLite file or memory."""
    return not url.startswith("sqlite:")


def _server_error(url, exc):
    """A GradebookError that says, on one line, why the database server at url cannot be used."""
    from sqlalchemy import exc as sa_exc

    detail = getattr(exc, "orig", None) if isinstance(exc, sa_exc.DBAPIError) else None
    text = " ".join(str(detail or exc).split()) or exc.__class__.__name__
    text = text if text.endswith((".", "?", "!")) else text + "."
    if isinstance(exc, (sa_exc.NoSuchModuleError, ImportError)):
        hint = (" The database driver the URL names is not installed (for PostgreSQL: pip install "
                f"'psycopg[binary]' and a URL {SERVER_URL_EXAMPLE}).")
    elif isinstance(exc, (sa_exc.ArgumentError, ValueError)):      # unparseable URL, port not a number
        hint = f" Check CourseDirectory.db_url in nbgrader_config.py (for PostgreSQL: {SERVER_URL_EXAMPLE})."
    else:
        hint = (" Check that the server runs and accepts this user and database from this machine, and "
                "CourseDirectory.db_url in nbgrader_config.py.")
    return GradebookError(f"The gradebook database {_safe_url(url)} cannot be used: {text}{hint} "
                          "lossgrader has not changed anything.")


def _server_state(url):
    """check_readable for a database server: "empty" when the database has no table yet (a
    new course: register creates nbgrader's tables), "ok" when it has nbgrader's tables and
    columns; GradebookError when the server cannot be reached or the database holds something
    else.  Reads the catalogue only, in a read-only transaction."""
    from sqlalchemy import inspect

    try:
        with _engine(url, write=False).connect() as con:
            inspector = inspect(con)
            tables = set(inspector.get_table_names())
            if not tables:
                return "empty"
            required = _required_schema()
            missing = sorted(set(required) - tables)
            if missing:
                raise GradebookError(
                    f"The gradebook database {_safe_url(url)} is not an nbgrader gradebook: it has other tables "
                    f"({', '.join(sorted(tables)[:5])}) but not nbgrader's {', '.join(missing)}. lossgrader has not "
                    "changed it; give the course a database of its own (CourseDirectory.db_url).")
            if hasattr(inspector, "get_multi_columns"):          # SQLAlchemy 2: one catalogue query
                found = {key[1]: cols for key, cols in inspector.get_multi_columns(filter_names=list(required)).items()}
            else:
                found = {table: inspector.get_columns(table) for table in required}
            for table, columns in sorted(required.items()):
                lacking = sorted(columns - {c["name"] for c in found.get(table, [])})
                if lacking:
                    raise GradebookError(
                        f"The gradebook database {_safe_url(url)}: its table {table} lacks the columns "
                        f"{', '.join(lacking)}: it was written by another nbgrader version (back it up, then run "
                        "`nbgrader db upgrade`). lossgrader has not changed it.")
            return "ok"
    except GradebookError:
        raise
    except Exception as exc:
        raise _server_error(url, exc) from exc


def _safe_url(url):
    """The URL without its password, for messages."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:                           # unparseable: as written, any password masked
        return repr(re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", str(url)))


# --------------------------------------------------------------------------------------
# Sessions: read-only for readers, one immediate transaction for the writer
# --------------------------------------------------------------------------------------

_ENGINES = {}
_ENGINES_LOCK = threading.Lock()


def _engine(url, write):
    """The SQLAlchemy engine for url, made once per process (its compiled-SQL cache is what
    makes a write cheap).  SQLite engines open a fresh connection for every session
    (NullPool), so a restored file is seen at once; readers' connections are read-only;
    the writer's transactions start with BEGIN IMMEDIATE (the write lock is taken at once,
    waiting up to BUSY_TIMEOUT for readers, so a write cannot fail half-way for a lock).

    A database server gets one pooled engine (connections checked before use, CONNECT_TIMEOUT
    to reach the server); on PostgreSQL readers' transactions are READ ONLY and every writer
    transaction first takes a transaction-level advisory lock (WRITER_LOCK), so two
    coordinators of the same course write one after the other, as with SQLite."""
    from sqlalchemy import create_engine, event
    from sqlalchemy.pool import NullPool

    path = sqlite_path(url)
    key = (url, bool(write)) if path is not None or _is_server(url) else (url, None)   # one in-memory db
    with _ENGINES_LOCK:
        engine = _ENGINES.get(key)
        if engine is not None:
            return engine
        if path is None and _is_server(url):
            base = _ENGINES.get((url, None))
            if base is None:
                base = _ENGINES[(url, None)] = _server_engine(url)
            postgres = base.dialect.name == "postgresql"
            if not write:
                engine = base.execution_options(postgresql_readonly=True) if postgres else base
            else:
                engine = base.execution_options()

                if postgres:
                    @event.listens_for(engine, "begin")
                    def _writer_lock(conn):
                        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({WRITER_LOCK})")
        elif path is None:
            engine = create_engine(url)
        elif not write:
            engine = create_engine("sqlite://", creator=lambda: _ro_connect(path), poolclass=NullPool)
        else:
            def connect():
                con = sqlite3.connect(path, timeout=BUSY_TIMEOUT, check_same_thread=False)
                con.isolation_level = None       # SQLAlchemy's BEGIN below, not pysqlite's own
                return con

            engine = create_engine("sqlite://", creator=connect, poolclass=NullPool)

            @event.listens_for(engine, "begin")
            def _begin_immediate(conn):
                conn.exec_driver_sql("BEGIN IMMEDIATE")
        _ENGINES[key] = engine
        return engine


def _server_engine(url):
    """A pooled engine for a database server (see _engine)."""
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    options = {"pool_pre_ping": True, "pool_size": 2}
    if parsed.get_backend_name() == "postgresql" and "connect_timeout" not in parsed.query:
        options["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT}
    return create_engine(url, **options)


def dispose_engines():
    """Close every pooled database connection this process holds (e.g. before the database
    server stops); the engines reconnect when used again."""
    with _ENGINES_LOCK:
        for engine in _ENGINES.values():
            engine.dispose()


@contextlib.contextmanager
def _reading(url):
    """A read-only SQLAlchemy session over nbgrader's models; None when there is no gradebook."""
    from sqlalchemy.orm import Session

    path = sqlite_path(url)
    if path is None and _is_server(url):
        if _server_state(url) == "empty":        # a new course's database: nothing to read yet
            yield None
            return
    else:
        check_readable(url)
        if path is not None and not os.path.exists(path):
            yield None
            return
    session = Session(_engine(url, write=False), autoflush=False)
    try:
        yield session
    finally:
        session.rollback()
        session.close()


@contextlib.contextmanager
def _writing(url):
    """A session whose changes are committed together at the end, or not at all."""
    from sqlalchemy.orm import Session

    path = sqlite_path(url)
    if path is None and _is_server(url):
        if _server_state(url) == "empty":
            raise GradebookError(f"The gradebook database {_safe_url(url)} has no nbgrader tables yet: register "
                                 "the assignments first (`lossgrader generate --gradebook-only`).")
    else:
        check_readable(url)
        if path is not None and not os.path.exists(path):
            raise GradebookError(f"There is no gradebook at {path} yet: register the assignments first "
                                 "(`lossgrader generate --gradebook-only`).")
    session = Session(_engine(url, write=True), autoflush=True)
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


# --------------------------------------------------------------------------------------
# Backups
# --------------------------------------------------------------------------------------

def _stamp():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")


def _unique(directory, prefix, ext=".db"):
    """A new file name prefix-<UTC timestamp><ext> in directory, never an existing one."""
    stamp = _stamp()
    name = f"{prefix}-{stamp}{ext}"
    n = 1
    while os.path.exists(os.path.join(directory, name)):
        n += 1
        name = f"{prefix}-{stamp}-{n}{ext}"
    return os.path.join(directory, name)


def _backup_dir(root):
    """.lossgrader/backups/ beside the gradebook file (the course directory unless
    nbgrader_config.py puts the gradebook elsewhere)."""
    path = sqlite_path(db_url(root))
    base = os.path.dirname(path) if path else os.path.abspath(root)
    return os.path.join(base, BACKUP_DIR)


def _sorted_backups(directory, pattern):
    """Backup paths matching pattern in directory, newest first."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    found = []
    for name in names:
        m = pattern.match(name)
        if m:
            found.append(((m.group(1), int(m.group(2) or 1)), os.path.join(directory, name)))
    return [path for _, path in sorted(found, reverse=True)]


def list_backups(root, broken=False):
    """Paths of the gradebook backups in .lossgrader/backups/, newest first: copies of an
    SQLite gradebook (gradebook-<UTC timestamp>.db), or pg_dump archives of a PostgreSQL one
    (gradebook-<UTC timestamp>.pgdump) when nbgrader_config.py sets such a db_url.

    broken=True lists instead the damaged gradebooks that restore() kept aside
    (gradebook-broken-<UTC timestamp>.db; SQLite only)."""
    url = db_url(root)
    if sqlite_path(url) is None and _is_server(url):
        return [] if broken else _sorted_backups(_backup_dir(root), _DUMP_NAME)
    return _sorted_backups(_backup_dir(root), _BROKEN_NAME if broken else _BACKUP_NAME)


def _copy_database(source, dest):
    """Copy the SQLite database source into the new file dest with SQLite's backup API
    (consistent even while another process writes), then check the copy."""
    part = dest + ".part"
    if os.path.exists(part):
        os.remove(part)
    src = _ro_connect(source)
    try:
        dst = sqlite3.connect(part)
        try:
            src.backup(dst)
            ok = dst.execute("PRAGMA quick_check").fetchone()[0]
        finally:
            dst.close()
    finally:
        src.close()
    if ok != "ok":
        os.remove(part)
        raise GradebookError(f"The copy of {source} failed SQLite's check ({ok}); nothing was replaced.")
    os.replace(part, dest)


def backup(root, keep=KEEP_BACKUPS, before=None):
    """Copy the gradebook into .lossgrader/backups/gradebook-<UTC timestamp>.db; returns its
    path, or None when there is nothing to back up (no gradebook yet, an in-memory one).

    ``before``: what the backup is taken before, as ``lossgrader restore --list`` says it
    (default: an autograde batch); kept beside it in ``<backup>.json`` with the time of
    every hand-in's entry in lossgrader-status.json, so that the listing can name the
    hand-ins graded after it (``backup_records``).

    A PostgreSQL gradebook is dumped with ``pg_dump --format=custom`` into
    gradebook-<UTC timestamp>.pgdump instead (see _dump_server); without pg_dump, or for
    another database server, nothing is backed up and a warning says so ("no backup for this
    URL"): the server's own backups are then the only ones.

    Raises GradebookError when the gradebook is unreadable (a batch must not write over it).
    Keeps the newest `keep` backups and deletes older ones (damaged copies are never deleted)."""
    url = db_url(root)
    path = sqlite_path(url)
    if path is None:
        return _dump_server(root, url, keep, before) if _is_server(url) else None
    check_readable(url)
    if not os.path.exists(path):
        return None
    directory = _clean_backup_dir(root, ".db.part")
    dest = _unique(directory, "gradebook")
    _copy_database(path, dest)
    _write_record(root, dest, before)
    _rotate(root, keep)
    return dest


BACKUP_RECORD = ".json"             # <backup>.json: what a backup preceded (backup_records)
BEFORE_BATCH = "an autograde batch"


def _write_record(root, dest, before):
    """<dest>.json: what the backup ``dest`` is taken before, and the time of every
    hand-in's status entry then (what changes after it tells the batch that followed)."""
    status = course.read_status(root)
    record = {"before": before or BEFORE_BATCH,
              "status": {key: str(entry.get("time", "")) for key, entry in status.items()
                         if isinstance(entry, dict)}}
    tmp = dest + BACKUP_RECORD + ".part"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(record, fh, ensure_ascii=False, sort_keys=True)
        os.replace(tmp, dest + BACKUP_RECORD)
    except OSError as exc:          # the backup itself is there: the listing says "not recorded"
        log.warning("could not record what the backup %s precedes: %s", dest, exc)


def _rotate(root, keep):
    """Delete the backups past the newest ``keep`` (and their records)."""
    for old in list_backups(root)[max(1, keep):]:
        os.remove(old)
        if os.path.exists(old + BACKUP_RECORD):
            os.remove(old + BACKUP_RECORD)


def backup_records(root):
    """The backups, oldest first (the order ``lossgrader restore --list`` prints them), each
    a dict: ``path``, ``name``, ``time`` (aware UTC datetime, from the name), ``before``
    (what it was taken before: "an autograde batch", "lossgrader restore NAME",
    "registering ASSIGNMENT...", or None for a backup made by an older lossgrader) and
    ``graded``: the hand-ins ("student/assignment") whose status entry changed between it
    and the next backup (for the newest: until now), i.e. what restoring it takes back;
    None when not recorded."""
    paths = list(reversed(list_backups(root)))
    records = []
    for path in paths:
        try:
            with open(path + BACKUP_RECORD, encoding="utf-8") as fh:
                record = json.load(fh)
            record = record if isinstance(record, dict) and isinstance(record.get("status"), dict) else None
        except (OSError, ValueError):
            record = None
        m = (_BACKUP_NAME.match(os.path.basename(path)) or _DUMP_NAME.match(os.path.basename(path)))
        when = datetime.datetime.strptime(m.group(1), "%Y%m%dT%H%M%S.%f").replace(tzinfo=datetime.timezone.utc)
        records.append({"path": path, "name": os.path.basename(path), "time": when,
                        "before": record.get("before") if record else None,
                        "status": record.get("status") if record else None})
    now = {key: str(entry.get("time", "")) for key, entry in course.read_status(root).items()
           if isinstance(entry, dict)}
    for n, record in enumerate(records):
        after = records[n + 1]["status"] if n + 1 < len(records) else now
        mine = record.pop("status")
        record["graded"] = (None if mine is None or after is None else
                            sorted(key for key, when in after.items() if mine.get(key) != when))
    return records


def _clean_backup_dir(root, part_suffix):
    """The backup folder (made if missing), without the partial copies (``gradebook-*`` +
    ``part_suffix``) that an interrupted backup left."""
    directory = _backup_dir(root)
    os.makedirs(directory, exist_ok=True)
    for name in os.listdir(directory):
        if name.startswith("gradebook-") and name.endswith(part_suffix):
            os.remove(os.path.join(directory, name))
    return directory


def _libpq_target(url):
    """(connection URI for PostgreSQL's own tools, without the password; their environment,
    with the password as PGPASSWORD and a connect timeout)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    env = dict(os.environ)
    if parsed.password:
        env["PGPASSWORD"] = str(parsed.password)
    env.setdefault("PGCONNECT_TIMEOUT", str(CONNECT_TIMEOUT))
    target = parsed.set(drivername="postgresql", password=None).render_as_string(hide_password=False)
    return target, env


def _dump_server(root, url, keep, before=None):
    """backup() for a database server: pg_dump of a PostgreSQL gradebook, else a warning."""
    from sqlalchemy.engine import make_url

    if _server_state(url) == "empty":
        return None                              # a new course's database: nothing to keep yet
    safe = _safe_url(url)
    if make_url(url).get_backend_name() != "postgresql":
        log.warning("no backup for this URL (%s): lossgrader backs up SQLite and PostgreSQL gradebooks "
                    "only; rely on the database server's own backups", safe)
        return None
    exe = shutil.which("pg_dump")
    if exe is None:
        log.warning("no backup for this URL (%s): pg_dump is not installed (Debian: apt-get install "
                    "postgresql-client); rely on the database server's own backups", safe)
        return None
    directory = _clean_backup_dir(root, ".pgdump.part")
    dest = _unique(directory, "gradebook", ".pgdump")
    target, env = _libpq_target(url)
    try:
        proc = subprocess.run([exe, "--format=custom", "--no-owner", "--file", dest + ".part",
                               "--dbname", target], env=env, capture_output=True, text=True, timeout=3600)
        problem = None if proc.returncode == 0 else " ".join((proc.stderr or proc.stdout).split())[-500:]
    except (OSError, subprocess.SubprocessError) as exc:
        problem = str(exc)
    if problem is not None:
        if os.path.exists(dest + ".part"):
            os.remove(dest + ".part")
        log.warning("no backup for this URL (%s): pg_dump failed: %s (a pg_dump of the server's major "
                    "version is needed); rely on the database server's own backups", safe, problem)
        return None
    os.replace(dest + ".part", dest)
    _write_record(root, dest, before)
    _rotate(root, keep)
    return dest


def restore(root, name=None):
    """Bring back the newest backup, or the one named (file name or path in .lossgrader/backups/).

    The current gradebook is kept first: a readable one as a new backup (so restore() again
    undoes this one), an unreadable one copied byte for byte as gradebook-broken-<UTC
    timestamp>.db.  Returns the path of the backup restored.  Run it while no other lossgrader
    command uses the course."""
    url = db_url(root)
    path = sqlite_path(url)
    if path is None:
        if not _is_server(url):
            raise GradebookError(f"There is nothing to restore for the in-memory gradebook {url}.")
        dumps = list_backups(root)
        if dumps:
            target, _ = _libpq_target(url)
            how = (f"To bring back the newest pg_dump backup, stop every lossgrader and nbgrader command of the "
                   f"course, then run: pg_restore --clean --if-exists --no-owner --dbname '{target}' {dumps[0]} "
                   f"(the password from PGPASSWORD or ~/.pgpass; {len(dumps)} dump"
                   f"{'s' if len(dumps) > 1 else ''} in {os.path.dirname(dumps[0])}).")
        else:
            how = (f"There is no pg_dump backup of it in {_backup_dir(root)}: use the database server's own "
                   "backups.")
        raise GradebookError(f"lossgrader restore brings back SQLite gradebooks only; this course's gradebook "
                             f"is the database {_safe_url(url)}, and lossgrader has not changed it. {how}")
    backups = list_backups(root)
    directory = _backup_dir(root)
    if name is None:
        if not backups:
            raise GradebookError(f"There is no gradebook backup in {directory}.")
        chosen = backups[0]
    else:
        chosen = os.path.join(directory, os.path.basename(name))
        if chosen not in backups:
            listed = ", ".join(os.path.basename(b) for b in backups[:5]) or "none"
            raise GradebookError(f"No backup named {os.path.basename(name)} in {directory} "
                                 f"(newest: {listed}).")
    problem = _sqlite_problem(chosen)
    if problem:
        raise GradebookError(f"The backup {chosen} is not a readable gradebook either: {problem}.")

    staged = path + ".restoring"
    _copy_database(chosen, staged)                  # before backup() below may rotate `chosen` out
    try:
        if os.path.exists(path):
            try:
                check_readable(url)
                readable = True
            except GradebookError:
                readable = False
            if readable:
                backup(root, before=f"lossgrader restore {os.path.basename(chosen)}")
            else:
                os.makedirs(directory, exist_ok=True)
                aside = _unique(directory, "gradebook-broken")
                shutil.copyfile(path, aside)
                for suffix in _SIDE_FILES:
                    if os.path.exists(path + suffix):
                        shutil.copyfile(path + suffix, aside + suffix)
        for suffix in _SIDE_FILES:               # a journal of the old file must not meet the new one
            if os.path.exists(path + suffix):
                os.remove(path + suffix)
        os.replace(staged, path)
    finally:
        if os.path.exists(staged):
            os.remove(staged)
    return chosen


# --------------------------------------------------------------------------------------
# Assignments
# --------------------------------------------------------------------------------------

def registered_assignments(root):
    """Names of the assignments the gradebook knows with at least one notebook."""
    from nbgrader.api import Assignment

    with _reading(db_url(root)) as db:
        if db is None:
            return set()
        return {a.name for a in db.query(Assignment) if a.notebooks}


@contextlib.contextmanager
def _quiet_logger(name):
    """A logger whose records are collected (returned list) rather than printed."""
    records = []

    class _Collect(logging.Handler):
        def emit(self, record):
            try:
                records.append(self.format(record))
            except Exception:
                pass

    log = logging.getLogger(name)
    log.propagate = False
    log.setLevel(logging.INFO)
    handler = _Collect()
    handler.setFormatter(logging.Formatter("[%(levelname)s] %(message)s"))
    log.addHandler(handler)
    try:
        yield log, records
    finally:
        log.removeHandler(handler)


def register(root, assignment_ids, force=False):
    """Record assignments (notebooks, test cells, points, checksums) in the gradebook; returns
    the ids registered (those already there are skipped unless force).

    Runs nbgrader's generate_assignment with the course configuration but writes the
    generated notebooks to a scratch directory (.lossgrader/release/): exercises/ is produced
    by tools/generate_exercises.py and is not touched here.  The gradebook is backed up
    before an existing one is changed."""
    from nbgrader.converters import GenerateAssignment
    from nbgrader.coursedir import CourseDirectory

    root = os.path.abspath(root)
    url = db_url(root)
    check_readable(url)
    have = registered_assignments(root)
    todo = [aid for aid in assignment_ids if force or aid not in have]
    if todo:
        backup(root, before="registering " + ", ".join(todo))
    for aid in todo:
        cfg = course_config(root)
        cfg.CourseDirectory.db_url = url
        cfg.CourseDirectory.release_directory = os.path.join(SCRATCH_DIR, "release")
        cfg.CourseDirectory.assignment_id = aid
        with _quiet_logger("lossgrader.register") as (log, records):
            converter = GenerateAssignment(coursedir=CourseDirectory(config=cfg), config=cfg, log=log)
            converter.force = True
            try:
                converter.start()
            except Exception as exc:
                raise GradebookError(f"registering {aid} in the gradebook failed: {exc}\n"
                                     + "\n".join(records[-20:])) from exc
    return todo


def _cell_kinds(notebook):
    """{name: (kind, points)} for every source cell of a gradebook Notebook."""
    grade_points = {c.name: c.max_score for c in notebook.grade_cells}
    solutions = {c.name for c in notebook.solution_cells}
    task_points = {c.name: c.max_score for c in notebook.task_cells}
    kinds = {}
    for cell in notebook.source_cells:
        name = cell.name
        if name in grade_points and name in solutions:
            kinds[name] = ("grade+solution", grade_points[name])
        elif name in grade_points:
            kinds[name] = ("grade", grade_points[name])
        elif name in solutions:
            kinds[name] = ("solution", None)
        elif name in task_points:
            kinds[name] = ("task", task_points[name])
        else:
            kinds[name] = ("locked", None)
    return kinds


def _instructor_order(root, assignment, notebook):
    """{grade_id: cell index} in the instructor notebook (the course's source directory)."""
    import nbformat

    cfg = course_config(root)
    source = cfg.CourseDirectory.get("source_directory")
    source = source if isinstance(source, str) and source else "source"
    path = os.path.join(os.path.abspath(root), source, assignment, notebook + ".ipynb")
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception:
        return {}
    order = {}
    for i, cell in enumerate(nb.cells):
        meta = cell.get("metadata", {}).get("nbgrader")
        if isinstance(meta, dict) and isinstance(meta.get("grade_id"), str):
            order.setdefault(meta["grade_id"], i)
    return order


def released(root, assignment):
    """What was released of an assignment, as plain JSON-able data, for a worker that must
    not open the gradebook (it restores deleted or tampered read-only and test cells)::

        {"assignment": "01_overview", "max_score": 2.0,
         "notebooks": {"01_overview": {"max_score": 2.0, "cells": [
             {"name": "setup", "kind": "locked", "cell_type": "code", "locked": True,
              "checksum": "...", "source": "...", "points": None, "position": 2}, ...]}}}

    kind is one of "grade", "solution", "grade+solution", "task", "locked"; points is the
    cell's points for grade and task cells, else None; source is the released source (test
    cells with their hidden tests).  Cells are in the order of the instructor notebook
    (position: its cell index there, None for a cell it no longer has, listed last)."""
    from nbgrader.api import Assignment

    with _reading(db_url(root)) as db:
        found = db.query(Assignment).filter(Assignment.name == assignment).one_or_none() if db else None
        if found is None or not found.notebooks:
            raise GradebookError(f"The assignment {assignment} is not registered in the gradebook: "
                                 "run `lossgrader generate --gradebook-only` first.")
        notebooks = {}
        for notebook in sorted(found.notebooks, key=lambda n: n.name):
            kinds = _cell_kinds(notebook)
            order = _instructor_order(root, assignment, notebook.name)
            cells = []
            for cell in notebook.source_cells:
                kind, points = kinds[cell.name]
                cells.append({"name": cell.name, "kind": kind, "cell_type": cell.cell_type,
                              "locked": bool(cell.locked), "checksum": cell.checksum,
                              "source": cell.source,
                              "points": None if points is None else float(points),
                              "position": order.get(cell.name)})
            cells.sort(key=lambda c: (c["position"] is None, c["position"] or 0, c["name"]))
            notebooks[notebook.name] = {"max_score": float(notebook.max_score or 0.0), "cells": cells}
        return {"assignment": assignment, "max_score": float(found.max_score or 0.0),
                "notebooks": notebooks}


# --------------------------------------------------------------------------------------
# The single writer
# --------------------------------------------------------------------------------------

def submission_timestamp(root, student, assignment):
    """The hand-in's timestamp.txt (nbgrader's format) as text, None when absent or unreadable."""
    from nbgrader.utils import parse_utc

    path = os.path.join(os.path.abspath(root), "submitted", student, assignment, "timestamp.txt")
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read().strip()
        parse_utc(text)
    except Exception:
        return None
    return text


def _unchanged(handed_in, grade_id, checksum):
    """Whether the hand-in left the cell as released (nbgrader's "no response"): True when
    its checksum is the released one or the cell is gone, False when changed, None when
    the autograded notebook is not known."""
    from nbgrader import utils

    if handed_in is None:
        return None
    for cell in handed_in.cells:
        meta = cell.get("metadata", {}).get("nbgrader")
        if isinstance(meta, dict) and meta.get("grade_id") == grade_id:
            try:
                return utils.compute_checksum(cell) == checksum
            except Exception:
                return False
    return True


def _flag_for_review(grade):
    """A test cell the grader could not decide (HandinResult.review): 0.0, and a manual grade
    needed; it counts once a person gives it a score in the formgrader (kept like any manual
    score when the hand-in is graded again)."""
    grade.auto_score = 0.0
    grade.needs_manual_grade = True


def _flagged_cells(autograded) -> set:
    """Grade ids of the test cells the worker flagged for review in an autograded notebook
    (``metadata["lossgrader"]["review"]``; lossgrader.normalize drops any a hand-in brings)."""
    flagged = set()
    for cell in getattr(autograded, "cells", None) or ():
        meta = cell.get("metadata", {})
        mark = meta.get("lossgrader") if isinstance(meta, dict) else None
        grade = meta.get("nbgrader") if isinstance(meta, dict) else None
        if isinstance(mark, dict) and isinstance(mark.get("review"), dict) and isinstance(grade, dict) \
                and isinstance(grade.get("grade_id"), str):
            flagged.add(grade["grade_id"])
    return flagged


def _apply_grade(grade, auto_score, failed):
    """Set one Grade row as nbgrader's SaveAutoGrades does; the manual score is never touched."""
    grade.auto_score = auto_score
    if failed:
        grade.needs_manual_grade = False
    else:
        grade.needs_manual_grade = grade.manual_score is not None or auto_score is None


def _score_for(result, cell, kind, points, unchanged):
    """The auto score a HandinResult gives a grade or task cell (None: to grade by hand).

    Test cells must have a score.  A manually graded answer cell without one gets 0.0 when
    the hand-in left it as released (nbgrader's determine_grade), else None; a task cell
    without one gets None."""
    present = cell.name in result.scores
    value = result.scores.get(cell.name)
    autograded = kind == "grade" and cell.cell_type == "code"
    if value is None:
        if autograded:
            raise InvalidResult(f"{result.student}/{result.assignment}: the result has no score for the "
                                f"test cell {cell.name} ({'None' if present else 'missing'}); nothing was written.")
        return 0.0 if kind != "task" and unchanged else None
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise InvalidResult(f"{result.student}/{result.assignment}: the score of {cell.name} is not a "
                            f"number ({value!r}); nothing was written.") from None
    if not math.isfinite(value) or not 0.0 <= value <= float(points) + 1e-9:
        raise InvalidResult(f"{result.student}/{result.assignment}: the score {value!r} of {cell.name} "
                            f"is outside [0, {float(points):g}]; nothing was written.")
    return value


def write_result(url, result, timestamp=None):
    """Store one graded hand-in (a HandinResult) in ONE transaction: all its rows or none.

    Creates the student and the submission when missing (and any submitted notebook, grade
    or comment row a re-registered assignment added), then, as nbgrader's autograde does:

    * status "graded": every grade cell gets the auto score from result.scores (test cells
      must have one in [0, points]; a manually graded cell may have none: then 0.0 when
      result.notebooks shows it unchanged from the release, else None, to grade by hand),
      and needs_manual_grade = (the instructor gave a manual score) or (no auto score);
      solution cells get the auto comment "No response." when unchanged;
    * a test cell in result.review, or flagged in its autograded notebook
      (``metadata["lossgrader"]["review"]``; the grader's signals could not decide, see
      lossgrader.worker), gets auto_score 0.0 and needs_manual_grade True whatever its
      automatic score: nbgrader's formgrader lists it as needing a manual grade, and the
      manual score given there counts;
    * status "failed": an explicit 0.0 for every grade and task cell, needs_manual_grade False;
    * a manual score the instructor gave is kept (nbgrader's score uses it first);
    * timestamp (nbgrader's timestamp.txt text or a datetime; see submission_timestamp)
      sets the submission's timestamp when given.

    Raises InvalidResult (nothing written) when the result does not fit the registered
    assignment, GradebookError when the gradebook is missing or unreadable."""
    import nbformat
    from nbgrader.api import (Assignment, Comment, Grade, Student, SubmittedAssignment,
                              SubmittedNotebook)
    from nbgrader.utils import parse_utc

    if result.status not in ("graded", "failed"):
        raise InvalidResult(f"{result.student}/{result.assignment}: unknown status {result.status!r}; "
                            "nothing was written.")
    failed = result.status == "failed"
    if timestamp is None:
        timestamp = getattr(result, "timestamp", None)
    if timestamp is not None:
        try:
            timestamp = parse_utc(timestamp)
        except Exception:
            raise InvalidResult(f"{result.student}/{result.assignment}: unreadable timestamp "
                                f"{timestamp!r}; nothing was written.") from None

    with _writing(url) as db:
        assignment = db.query(Assignment).filter(Assignment.name == result.assignment).one_or_none()
        if assignment is None or not assignment.notebooks:
            raise InvalidResult(f"The assignment {result.assignment} is not registered in the gradebook; "
                                f"{result.student}'s result was not written.")
        graded_names = [c.name for nb in assignment.notebooks for c in list(nb.grade_cells) + list(nb.task_cells)]
        if len(graded_names) != len(set(graded_names)):
            raise InvalidResult(f"The assignment {result.assignment} uses a grade id in two notebooks: "
                                "scores keyed by grade id would be ambiguous; nothing was written.")
        review = getattr(result, "review", None) or {}
        if not failed:
            unknown = sorted(set(result.scores) - set(graded_names))
            if unknown:
                raise InvalidResult(f"{result.student}/{result.assignment}: the result scores cells the "
                                    f"gradebook does not know ({', '.join(unknown)}); nothing was written.")
            if not isinstance(review, dict) or set(review) - set(graded_names):
                raise InvalidResult(f"{result.student}/{result.assignment}: the result flags cells the "
                                    "gradebook does not know for review; nothing was written.")

        student = db.get(Student, result.student)
        if student is None:
            student = Student(id=result.student)
            db.add(student)
        submission = (db.query(SubmittedAssignment)
                      .filter(SubmittedAssignment.assignment_id == assignment.id,
                              SubmittedAssignment.student_id == result.student)
                      .one_or_none())
        if submission is None:
            submission = SubmittedAssignment(assignment=assignment, student=student)
            db.add(submission)
        if timestamp is not None:
            submission.timestamp = timestamp

        for notebook in assignment.notebooks:
            submitted = next((s for s in submission.notebooks if s.notebook_id == notebook.id), None)
            if submitted is None:
                submitted = SubmittedNotebook(notebook=notebook, assignment=submission)
                db.add(submitted)
            grades = {g.cell_id: g for g in submitted.grades}
            comments = {c.cell_id: c for c in submitted.comments}
            kinds = _cell_kinds(notebook)
            checksums = {c.name: c.checksum for c in notebook.source_cells}
            text = result.notebooks.get(notebook.name) if not failed else None
            try:
                handed_in = nbformat.reads(text, as_version=4) if text else None
            except Exception:
                handed_in = None
            flagged = set(review) | _flagged_cells(handed_in)

            for cell in list(notebook.grade_cells) + list(notebook.task_cells):
                grade = grades.get(cell.id)
                if grade is None:
                    grade = Grade(cell_id=cell.id, notebook=submitted)
                    db.add(grade)
                kind, points = kinds.get(cell.name, ("grade", cell.max_score))
                if failed:
                    score = 0.0
                else:
                    score = _score_for(result, cell, kind, points,
                                       _unchanged(handed_in, cell.name, checksums.get(cell.name)))
                if not failed and cell.name in flagged:
                    _flag_for_review(grade)
                else:
                    _apply_grade(grade, score, failed)

            for cell in list(notebook.solution_cells) + list(notebook.task_cells):
                comment = comments.get(cell.id)
                if comment is None:
                    comment = Comment(cell_id=cell.id, notebook=submitted)
                    db.add(comment)
                if failed or kinds.get(cell.name, ("",))[0] == "task":
                    comment.auto_comment = None
                else:
                    unchanged = _unchanged(handed_in, cell.name, checksums.get(cell.name))
                    comment.auto_comment = "No response." if unchanged else None


# --------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------

def _submission_scores(db, assignment, student):
    """(score, max_score, {grade_id: score}, {grade_id needing manual grading}) or None."""
    from nbgrader.api import Assignment, SubmittedAssignment

    sub = (db.query(SubmittedAssignment)
           .join(Assignment, Assignment.id == SubmittedAssignment.assignment_id)
           .filter(Assignment.name == assignment, SubmittedAssignment.student_id == student)
           .one_or_none())
    if sub is None:
        return None
    cells, manual = {}, set()
    for nb in sub.notebooks:
        for g in nb.grades:
            cells[g.cell.name] = float(g.score)
            if g.needs_manual_grade:
                manual.add(g.cell.name)
    return float(sub.score or 0.0), float(sub.max_score or 0.0), cells, manual


def submission_scores(url, assignment, student):
    """(score, max_score, {grade_id: score}) of one submission, None when there is none.

    A cell's score is nbgrader's: the instructor's manual score when given, else the auto
    score, else 0.0 (a cell still to be graded by hand).  Read-only."""
    with _reading(url) as db:
        if db is None:
            return None
        found = _submission_scores(db, assignment, student)
        return None if found is None else found[:3]


NO_NOTEBOOK = "no notebook handed in"
NOT_GRADED = ("not graded: in submitted/ but not in the gradebook (not autograded yet, or a restore "
              "took its grades away; lossgrader autograde grades it)")


def _no_notebook(root, student, assignment):
    """NO_NOTEBOOK and what the hand-in's folder holds, when it holds no notebook; else None."""
    folder = os.path.join(root, course.directory(root, "submitted_directory", "submitted"), student, assignment)
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return None
    if any(name.endswith(".ipynb") for name in names):
        return None
    files = [n for n in names if n not in course.NBGRADER_FILES and not n.startswith(".")]
    return NO_NOTEBOOK + (f" (handed in: {', '.join(files[:10])}{' ...' if len(files) > 10 else ''})"
                          if files else "")


def grade_rows(root):
    """One row per (student, assignment) known to the gradebook or found in submitted/:
    {"student_id", "assignment", "score", "max_score", "status", "reason"}.

    status: "autograded", "failed" (reason from lossgrader-status.json), "missing" (no
    grade: "no submission", or NOT_GRADED when the hand-in is in submitted/ but not in the
    gradebook: not autograded yet, or a restore took its grades away) or "needs manual
    grading" (nbgrader's needs_manual_grade: a cell without an auto score, or one whose
    manual score should be reviewed after autograding again). A failed hand-in whose folder
    in submitted/ holds no notebook (collect's "no notebook": only .py, .pdf, online text)
    has the reason NO_NOTEBOOK and the files it holds. Read-only."""
    from nbgrader.api import (Assignment, BaseCell, Grade, Student, SubmittedAssignment,
                              SubmittedNotebook)

    status = course.read_status(root)
    rows = []
    with _reading(db_url(root)) as db:
        if db is None:
            return rows
        assignments = sorted((a for a in db.query(Assignment) if a.notebooks), key=lambda a: a.name)
        handed_in = set(course.submissions(root))
        known = set(course.assignments(root)) | {a.name for a in assignments}
        students = sorted({s.id for s in db.query(Student)} | course.submitted_students(root, known))
        # two queries for the whole class (not two per submission)
        totals = {(name, student): (float(score or 0.0), float(max_score or 0.0))
                  for name, student, score, max_score in
                  db.query(Assignment.name, SubmittedAssignment.student_id,
                           SubmittedAssignment.score, SubmittedAssignment.max_score)
                  .join(Assignment, Assignment.id == SubmittedAssignment.assignment_id)}
        manual = {}
        for name, student, cell in (
                db.query(Assignment.name, SubmittedAssignment.student_id, BaseCell.name)
                .select_from(Grade)
                .join(SubmittedNotebook, SubmittedNotebook.id == Grade.notebook_id)
                .join(SubmittedAssignment, SubmittedAssignment.id == SubmittedNotebook.assignment_id)
                .join(Assignment, Assignment.id == SubmittedAssignment.assignment_id)
                .join(BaseCell, BaseCell.id == Grade.cell_id)
                .filter(Grade.needs_manual_grade.is_(True))):
            manual.setdefault((name, student), set()).add(cell)
        for assignment in assignments:
            for student in students:
                found = totals.get((assignment.name, student))
                entry = status.get(f"{student}/{assignment.name}", {})
                entry = entry if isinstance(entry, dict) else {}
                if found is None:
                    score, max_score = 0.0, float(assignment.max_score or 0.0)
                    state = "missing"
                    reason = NOT_GRADED if (student, assignment.name) in handed_in else "no submission"
                else:
                    score, max_score = found
                    state = entry.get("status", "autograded")
                    reason = entry.get("reason", "")
                    if state == "failed":
                        reason = _no_notebook(root, student, assignment.name) or reason
                    to_grade = manual.get((assignment.name, student))
                    if state != "failed" and to_grade:
                        state, reason = "needs manual grading", "cells to grade by hand: " + ", ".join(sorted(to_grade))
                rows.append({"student_id": student, "assignment": assignment.name,
                             "score": round(score, 4), "max_score": round(max_score, 4),
                             "status": state, "reason": reason})
    return rows
