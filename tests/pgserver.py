"""A real, throw-away PostgreSQL server for the tests (Debian's ``postgresql`` package).

``PostgresServer().start()`` runs ``initdb`` into a new temporary folder, then ``pg_ctl start``
with the server listening on 127.0.0.1 at a free port and on a unix socket in that folder;
``stop()`` shuts it down (``pg_ctl stop -m immediate``) and deletes the folder.  PostgreSQL
refuses to run as root, so under root the server runs as the ``postgres`` user that the
Debian package creates (or ``nobody``), through ``subprocess``'s ``user=``/``group=``.

Nothing is written outside the temporary folder; the server has trust authentication on
127.0.0.1 only and durability switched off (``fsync=off``): it is for tests.

``find_binaries()`` returns None when the server binaries are not installed; the tests then
skip with ``MISSING`` as the reason.
"""
import glob
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

MISSING = ("PostgreSQL server binaries (initdb, pg_ctl, postgres) not found: install Debian's "
           "`postgresql` package (`apt-get install postgresql`, as .ci/run does) or set "
           "LOSSGRADER_PG_BIN to their folder")
SUPERUSER = "postgres"


def _version_key(path):
    return [int(n) for n in re.findall(r"\d+", path)] or [0]


def find_binaries():
    """The folder holding initdb, pg_ctl and postgres (LOSSGRADER_PG_BIN, PATH, then Debian's
    /usr/lib/postgresql/<version>/bin, newest first); None when there is none."""
    candidates = []
    if os.environ.get("LOSSGRADER_PG_BIN"):
        candidates.append(os.environ["LOSSGRADER_PG_BIN"])
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(os.path.dirname(initdb))
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    for folder in candidates:
        if all(os.access(os.path.join(folder, exe), os.X_OK) for exe in ("initdb", "pg_ctl", "postgres")):
            return folder
    return None


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """One PostgreSQL cluster in a temporary folder; see the module docstring."""

    def __init__(self, bindir=None):
        self.bindir = bindir or find_binaries()
        if self.bindir is None:
            raise RuntimeError(MISSING)
        self.folder = None
        self.port = None
        self.uid = self.gid = None
        if os.geteuid() == 0:                    # postgres refuses root: run as an unprivileged user
            for name in ("postgres", "nobody"):
                try:
                    entry = pwd.getpwnam(name)
                except KeyError:
                    continue
                self.uid, self.gid = entry.pw_uid, entry.pw_gid
                break
            else:
                raise RuntimeError("running as root and there is neither a `postgres` nor a `nobody` user "
                                   "to run the PostgreSQL server as")

    @property
    def version(self):
        out = subprocess.run([os.path.join(self.bindir, "postgres"), "--version"],
                             capture_output=True, text=True, check=True).stdout
        return out.strip()

    def _run(self, args, timeout=120):
        kwargs = {}
        if self.uid is not None:
            kwargs = {"user": self.uid, "group": self.gid, "extra_groups": []}
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": self.folder,
               "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
        proc = subprocess.run([os.path.join(self.bindir, args[0])] + list(args[1:]), cwd=self.folder,
                              env=env, capture_output=True, text=True, timeout=timeout, **kwargs)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
                               + self._log_tail())
        return proc

    def _log_tail(self):
        try:
            with open(os.path.join(self.folder, "server.log"), encoding="utf-8", errors="replace") as fh:
                return "\nserver.log:\n" + fh.read()[-3000:]
        except OSError:
            return ""

    @property
    def data(self):
        return os.path.join(self.folder, "data")

    def start(self):
        """initdb and start the server; returns self."""
        # directly in the system temp folder: pytest's own folders are private to root, and
        # a unix socket path must stay short (about 100 bytes)
        self.folder = tempfile.mkdtemp(prefix="lgpg-", dir="/tmp" if os.path.isdir("/tmp") else None)
        try:
            if self.uid is not None:
                os.chown(self.folder, self.uid, self.gid)
            os.chmod(self.folder, 0o700)
            self._run(["initdb", "-D", self.data, "-U", SUPERUSER, "--auth=trust", "--encoding=UTF8",
                       "--locale=C.UTF-8", "--no-sync"])
            last = None
            for _ in range(3):                   # another process may take the free port first
                self.port = _free_port()
                options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.folder} "
                           "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                           "-c max_connections=40 -c shared_buffers=16MB")
                try:
                    self._run(["pg_ctl", "-D", self.data, "-l", os.path.join(self.folder, "server.log"),
                               "-w", "-t", "60", "-o", options, "start"])
                    return self
                except RuntimeError as exc:
                    last = exc
            raise last
        except BaseException:
            self.stop()
            raise

    def url(self, database=SUPERUSER, driver="postgresql+psycopg"):
        """The SQLAlchemy URL of a database on this server (TCP on 127.0.0.1)."""
        return f"{driver}://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def socket_url(self, database=SUPERUSER, driver="postgresql+psycopg"):
        """The SQLAlchemy URL of a database through the server's unix socket."""
        return f"{driver}://{SUPERUSER}@/{database}?host={self.folder}&port={self.port}"

    def create_database(self, name):
        """CREATE DATABASE name; returns its URL."""
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user=SUPERUSER, dbname=SUPERUSER,
                             autocommit=True, connect_timeout=10) as con:
            con.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def query(self, database, sql, params=None):
        """Rows of one SQL statement in database (a plain psycopg connection, not lossgrader's)."""
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user=SUPERUSER, dbname=database,
                             connect_timeout=10) as con:
            cur = con.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def _kill_postmaster(self):
        """The server this object started, by the process id in its postmaster.pid."""
        try:
            with open(os.path.join(self.data, "postmaster.pid"), encoding="ascii") as fh:
                pid = int(fh.readline())
            os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass

    def stop(self):
        """Stop the server (when running) and delete its folder."""
        if self.folder is None:
            return
        try:
            if os.path.exists(os.path.join(self.data, "postmaster.pid")):
                self._run(["pg_ctl", "-D", self.data, "-m", "immediate", "-w", "-t", "30", "stop"])
        except Exception:
            self._kill_postmaster()
        finally:
            for _ in range(3):
                try:
                    shutil.rmtree(self.folder)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.5)
            self.folder = None
