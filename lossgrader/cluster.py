"""The grading cluster on Slurm: ``lossgrader cluster slurm`` and ``lossgrader autograde --dask slurm``.

Settings are kept with the course, in the ``[tool.lossgrader.slurm]`` table of the course's
``pyproject.toml`` (the folder holding ``nbgrader_config.py``)::

    [tool.lossgrader.slurm]
    partition = "compute"        # sbatch -p (absent: the site's default partition)
    account = "lf101"            # sbatch -A (absent: none)
    cores = 16                   # CPUs per job
    memory = "96GB"              # memory per job
    walltime = "02:00:00"
    jobs = 4                     # jobs kept running (one node each, as a rule)
    prologue = ["source /shared/envs/lossgrader/bin/activate"]

(every key: ``SETTINGS`` below; docs/instructor.md, "Slurm"). Each job runs ``processes``
single-thread Dask workers (default: one per core, one sandbox each) through dask-jobqueue's
``SLURMCluster``, whose scheduler runs in this process.

``GradingCluster`` is that cluster plus what a grading batch needs from it:

* the scheduler hands a dead worker's task straight back (``allowed-failures: 0``): the
  coordinator retries it once, then records 0 with the reason;
* a job that ends (``scancel``, its walltime, a lost node, a failed start) is replaced by a
  new one: a watchdog reads the jobs' states from ``squeue`` every ``POLL`` seconds (a job
  that left the queue has ended) and submits replacements, unless ``MAX_EARLY_ENDS`` jobs in a
  row ended before any worker of theirs joined (a broken prologue, a wrong partition): then
  it stops and says so (``problem``) instead of flooding the queue;
* pending jobs and why they wait (``pending``) are known, so that a batch that has no worker
  yet says what it waits for;
* a state file, ``.lossgrader/slurm/cluster-<pid>.json``, lists the cluster's jobs while it
  runs. A cluster whose process was killed (``kill -9``, a lost login session) cannot cancel
  its jobs; the next cluster started for the course does (``cancel_stale``), and the workers of
  such jobs leave by themselves after ``death_timeout`` seconds without a scheduler;
* ``close`` cancels every job it submitted and waits until they have left ``squeue``.

``lossgrader cluster slurm`` (``serve``) runs one until Ctrl-C (or SIGTERM/SIGHUP) and writes
its scheduler file; ``lossgrader autograde --dask slurm`` uses the one running for the course
(``running_address``) or starts one for the batch (``lossgrader.executors``).
"""
from __future__ import annotations

import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from . import course

STATE_DIR = os.path.join(course.STATE_DIR, "slurm")
POLL = 2.0                  # seconds between two looks at the jobs' states
MAX_EARLY_ENDS = 3          # jobs in a row ending before a worker of theirs joined: stop replacing
ALIVE_STATES = {"PENDING", "CONFIGURING", "RUNNING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD",
                "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD"}

# key: (kind, default, what it is). Relative paths are relative to the course folder.
SETTINGS = {
    "partition": ("str", None, "Slurm partition (sbatch -p); absent: the site's default"),
    "account": ("str", None, "account charged (sbatch -A); absent: none"),
    "cores": ("int", 16, "CPUs per job"),
    "processes": ("int", None, "Dask workers per job; default: one per core (single-thread workers, "
                               "one sandbox each)"),
    "memory": ("str", "96GB", "memory per job (about 6 GB per worker: a 4 GiB sandbox and the worker)"),
    "walltime": ("str", "02:00:00", "time limit of each job (sbatch -t); a job that reaches it is replaced"),
    "jobs": ("int", 4, "jobs kept running"),
    "prologue": ("list", [], "shell lines each job runs before its workers start "
                             "(e.g. source /shared/envs/lossgrader/bin/activate)"),
    "directives": ("list", [], "extra #SBATCH lines, e.g. \"--qos=short\""),
    "interface": ("str", None, "network interface the workers and the scheduler use (ib0, eth0, ...)"),
    "local_directory": ("str", "/tmp", "node-local scratch of the workers"),
    "log_directory": ("str", os.path.join(STATE_DIR, "logs"),
                      "where the jobs write their output (must exist on the nodes: a shared folder)"),
    "scheduler_file": ("str", os.path.join(STATE_DIR, "scheduler.json"),
                       "scheduler file lossgrader cluster slurm writes"),
    "python": ("str", None, "Python on the nodes (default: the one running lossgrader)"),
    "death_timeout": ("int", 60, "seconds a worker waits for a lost scheduler before its job ends"),
    "job_name": ("str", "lossgrader", "name of the jobs in squeue"),
    "port": ("int", 0, "scheduler port (0: any free port)"),
}


class ClusterError(SystemExit):
    """The grading cluster cannot start (settings, Slurm, dask-jobqueue): nothing was submitted."""


def _stderr(message: str) -> None:
    sys.stderr.write(message.rstrip("\n") + "\n")
    sys.stderr.flush()


# --------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------

def _toml(path):
    try:
        import tomllib
    except ImportError:          # Python < 3.11
        try:
            import tomli as tomllib
        except ImportError:
            raise ClusterError("reading pyproject.toml needs Python 3.11 or the tomli package (pip install tomli)")
    with open(path, "rb") as fh:
        return tomllib.load(fh)


def load_settings(root, overrides=None) -> dict:
    """The ``[tool.lossgrader.slurm]`` table of the course's pyproject.toml, checked and
    completed with the defaults; ``overrides`` (``{"jobs": 2}``) win. Paths made absolute."""
    path = os.path.join(root, "pyproject.toml")
    where = f"[tool.lossgrader.slurm] in {path}"
    if not os.path.isfile(path):
        raise ClusterError(f"no Slurm settings: {path} does not exist. Write the table "
                           "[tool.lossgrader.slurm] there (partition, account, cores, memory, walltime, "
                           "prologue, jobs): docs/instructor.md, 'Slurm'")
    try:
        data = _toml(path)
    except (OSError, ValueError) as exc:
        raise ClusterError(f"{path} cannot be read: {exc}")
    table = data.get("tool", {}).get("lossgrader", {}).get("slurm")
    if not isinstance(table, dict):
        raise ClusterError(f"no Slurm settings: {path} has no [tool.lossgrader.slurm] table (partition, "
                           "account, cores, memory, walltime, prologue, jobs): docs/instructor.md, 'Slurm'")
    table = dict(table, **{k: v for k, v in (overrides or {}).items() if v is not None})
    unknown = sorted(set(table) - set(SETTINGS))
    if unknown:
        raise ClusterError(f"{where}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(SETTINGS)}")
    settings = {}
    for key, (kind, default, _) in SETTINGS.items():
        value = table.get(key, default)
        if kind == "str" and value is not None and not (isinstance(value, str) and value.strip()):
            raise ClusterError(f"{where}: {key} must be a non-empty string, not {value!r}")
        if kind == "int" and (isinstance(value, bool) or not isinstance(value, int) or value < 0
                              or (value == 0 and key != "port")) and value is not None:
            raise ClusterError(f"{where}: {key} must be a positive whole number, not {value!r}")
        if kind == "list" and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise ClusterError(f"{where}: {key} must be a list of strings, not {value!r}")
        settings[key] = list(value) if kind == "list" else value
    settings["processes"] = settings["processes"] or settings["cores"]
    if settings["cores"] % settings["processes"]:
        raise ClusterError(f"{where}: cores ({settings['cores']}) must be a multiple of processes "
                           f"({settings['processes']})")
    for key in ("log_directory", "scheduler_file"):
        settings[key] = os.path.abspath(os.path.join(root, os.path.expanduser(settings[key])))
    return settings


def cluster_kwargs(settings) -> dict:
    """SLURMCluster's arguments for these settings."""
    kwargs = dict(queue=settings["partition"], account=settings["account"], cores=settings["cores"],
                  processes=settings["processes"], memory=settings["memory"], walltime=settings["walltime"],
                  job_script_prologue=settings["prologue"], job_extra_directives=settings["directives"],
                  interface=settings["interface"], local_directory=settings["local_directory"],
                  log_directory=settings["log_directory"], death_timeout=settings["death_timeout"],
                  job_name=settings["job_name"],
                  scheduler_options={"dashboard_address": None, "dashboard": False, "port": settings["port"]})
    if settings["python"]:
        kwargs["python"] = settings["python"]
    return kwargs


# --------------------------------------------------------------------------------------
# Slurm's view of jobs
# --------------------------------------------------------------------------------------

def job_states(job_ids):
    """{job id: (state, reason)} for the given jobs, from squeue; a job squeue no longer
    knows is absent (it has ended). None when squeue cannot answer (the controller is down)."""
    ids = sorted({str(j) for j in job_ids if j})
    if not ids:
        return {}
    try:
        proc = subprocess.run(["squeue", "--noheader", "--states=all", "--format=%i|%T|%r",
                               "--jobs=" + ",".join(ids)], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        if "Invalid job id" in proc.stderr:     # every one of them has left the queue
            return {}
        return None
    states = {}
    for line in proc.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3 and parts[0] in ids:
            states[parts[0]] = (parts[1], parts[2])
    return states


def cancel_jobs(job_ids, wait=20.0) -> list:
    """scancel the jobs (those squeue still lists) and wait up to ``wait`` seconds until they
    have left the queue; returns the ones still listed."""
    ids = sorted({str(j) for j in job_ids if j})
    if not ids:
        return []
    states = job_states(ids)
    live = [j for j in ids if states is None or (j in states and states[j][0] in ALIVE_STATES | {"COMPLETING"})]
    if live:
        try:
            subprocess.run(["scancel"] + live, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            pass
    deadline = time.monotonic() + wait
    while True:
        states = job_states(ids)
        left = sorted(states) if states is not None else ids
        left = [j for j in left if states is None or states[j][0] in ALIVE_STATES | {"COMPLETING"}]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.5)


# --------------------------------------------------------------------------------------
# State files: which cluster runs for the course, and which jobs it holds
# --------------------------------------------------------------------------------------

def state_dir(root):
    return os.path.join(root, STATE_DIR)


def _write_json(path, data) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2)
    os.replace(tmp, path)


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError, ValueError, TypeError):
        return True
    # a zombie (killed, not yet reaped by its parent) is no cluster
    try:
        with open(f"/proc/{int(pid)}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _reachable(address, timeout=5.0) -> bool:
    """Whether something accepts connections at a tcp:// address."""
    try:
        host, port = address.split("://", 1)[1].rsplit(":", 1)
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return True
    except (OSError, ValueError, IndexError):
        return False


def _state_alive(state) -> bool:
    if state.get("host") == socket.gethostname():
        return _pid_alive(state.get("pid")) and _reachable(state.get("address", ""))
    return _reachable(state.get("address", ""))


def cluster_states(root):
    """[(path, state)] of the state files of the course's clusters."""
    folder = state_dir(root)
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    out = []
    for name in names:
        if name.startswith("cluster-") and name.endswith(".json"):
            state = _read_json(os.path.join(folder, name))
            if state is not None:
                out.append((os.path.join(folder, name), state))
    return out


def cancel_stale(root, log=_stderr) -> list:
    """Cancel the jobs of clusters of this course whose process is gone (killed without
    cleaning up), remove their state and scheduler files; returns the job ids cancelled."""
    cancelled = []
    for path, state in cluster_states(root):
        if state.get("pid") == os.getpid() and state.get("host") == socket.gethostname():
            continue
        if _state_alive(state):
            continue
        jobs = [str(j) for j in state.get("jobs", [])]
        left = cancel_jobs(jobs, wait=10)
        gone = [j for j in jobs if j not in left]
        if jobs:
            log(f"lossgrader: the grading cluster of pid {state.get('pid')} (scheduler {state.get('address')}) "
                f"is gone: cancelled its Slurm jobs {', '.join(jobs)}"
                + (f" ({', '.join(left)} still listed)" if left else ""))
        cancelled += gone
        sched = state.get("scheduler_file")
        if sched and (_read_json(sched) or {}).get("address") == state.get("address"):
            _remove(sched)
        _remove(path)
    return cancelled


def running_address(root, settings):
    """The scheduler address of the ``lossgrader cluster slurm`` running for this course, or None."""
    sched = _read_json(settings["scheduler_file"])
    if not sched or not sched.get("address"):
        return None
    for _, state in cluster_states(root):
        if state.get("address") == sched["address"] and state.get("kind") == "command" and _state_alive(state):
            return sched["address"]
    return None


def _summary(running, pending) -> str:
    parts = [f"{len(running)} running"]
    if pending:
        parts.append(f"{len(pending)} pending (" + ", ".join(f"{j}: {r}" for j, r in sorted(pending.items())) + ")")
    return ", ".join(parts)


def describe_course_jobs(root) -> str:
    """The jobs of the course's clusters as squeue sees them (one line), or ""."""
    ids = [str(j) for _, state in cluster_states(root) for j in state.get("jobs", [])]
    states = job_states(ids) if ids else None
    if not states:
        return ""
    running = {j for j, (st, _) in states.items() if st in ALIVE_STATES and st != "PENDING"}
    pending = {j: r for j, (st, r) in states.items() if st == "PENDING"}
    return _summary(running, pending)


def _remove(path) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


# --------------------------------------------------------------------------------------
# The cluster
# --------------------------------------------------------------------------------------

class GradingCluster:
    """A SLURMCluster with a watchdog that replaces ended jobs; see the module docstring.

    ``kind``: "command" (``lossgrader cluster slurm``: writes the scheduler file) or "batch"
    (started by ``lossgrader autograde --dask slurm`` for one batch)."""

    def __init__(self, root, settings, kind="batch", log=_stderr):
        self.root, self.settings, self.kind, self.log = os.path.abspath(root), settings, kind, log
        self.target = settings["jobs"]
        self.cluster = None
        self.address = None
        self.problem = None
        self.pending = {}          # job id -> Slurm's reason, for jobs waiting in the queue
        self.running = set()       # job ids running
        self.submitted = []        # every job id this cluster submitted, in order
        self.ended = {}            # job id -> state it ended in
        self.replaced = 0
        self.timings = {}
        self._joined = set()       # job ids with a worker that joined
        self._early_ends = 0
        self._stop = threading.Event()
        self._thread = None
        self._config = None
        self._closed = False
        self.state_file = os.path.join(state_dir(self.root), f"cluster-{os.getpid()}.json")

    # ---------------------------------------------------------------- start
    def start(self):
        import dask

        SLURMCluster = import_jobqueue().SLURMCluster
        from .executors import LOCAL_CLUSTER_CONFIG

        problem = _slurm_problem()
        if problem:
            raise ClusterError(problem)
        cancel_stale(self.root, log=self.log)
        # held until close(): the scheduler runs in this process and reads them while it runs
        # (allowed-failures 0: a dead worker's task comes straight back to the coordinator;
        # lost-worker-timeout: the watchdog, not dask-jobqueue, decides when a job is gone)
        self._config = dask.config.set(LOCAL_CLUSTER_CONFIG)
        try:
            os.makedirs(self.settings["log_directory"], exist_ok=True)
            self.cluster = SLURMCluster(**cluster_kwargs(self.settings))
            self.address = self.cluster.scheduler_address
            self.cluster.scale(jobs=self.target)
            self._wait_submitted(self.target, timeout=120)
        except ClusterError:
            self.close()
            raise
        except Exception as exc:
            self.close()
            raise ClusterError(f"the Slurm grading cluster cannot start: {exc.__class__.__name__}: "
                               f"{str(exc).strip()[:2000]}")
        except BaseException:
            self.close()
            raise
        self._save_state()
        if self.kind == "command":
            _write_json(self.settings["scheduler_file"],
                        {"type": "Scheduler", "address": self.address, "id": f"lossgrader-{os.getpid()}",
                         "services": {}, "started": time.time(), "workers": {}})
        self._thread = threading.Thread(target=self._watch, name="lossgrader-slurm-watchdog", daemon=True)
        self._thread.start()
        return self

    def _wait_submitted(self, n, timeout):
        """Until ``n`` jobs have a Slurm job id (sbatch answered), or sbatch failed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ids = self._job_ids()
            if len(ids) >= n:
                return
            task = getattr(self.cluster, "_correct_state_waiting", None)
            futures = list(getattr(self.cluster, "_futures", ()))
            for fut in futures + ([task] if task is not None else []):
                if fut.done() and not fut.cancelled() and fut.exception() is not None:
                    raise fut.exception()
            time.sleep(0.1)
        raise ClusterError(f"sbatch did not answer within {timeout:.0f} s ({len(self._job_ids())} of {n} jobs "
                           "submitted)")

    # ---------------------------------------------------------------- jobs
    def _jobs(self):
        """{worker-spec name: job id} of the jobs dask-jobqueue holds (submitted ones)."""
        out = {}
        for name, job in list(getattr(self.cluster, "workers", {}).items()):
            jid = getattr(job, "job_id", None)
            if jid:
                out[name] = str(jid)
        return out

    def _job_ids(self):
        ids = set(self._jobs().values())
        for job in list(getattr(self.cluster, "_created", ())):
            jid = getattr(job, "job_id", None)
            if jid:
                ids.add(str(jid))
        for jid in sorted(ids, key=lambda j: int(j) if j.isdigit() else 0):
            if jid not in self.submitted:
                self.submitted.append(jid)
        return ids

    def job_ids(self):
        """Job ids of this cluster that have not ended."""
        return [j for j in self.submitted if j not in self.ended]

    def _save_state(self):
        if self._closed and not os.path.exists(self.state_file):
            return
        _write_json(self.state_file, {
            "pid": os.getpid(), "host": socket.gethostname(), "kind": self.kind, "address": self.address,
            "scheduler_file": self.settings["scheduler_file"] if self.kind == "command" else None,
            "jobs": self.job_ids(), "target": self.target,
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})

    def _worker_names(self):
        try:
            return {str(w.get("name")) for w in self.cluster.scheduler_info.get("workers", {}).values()}
        except Exception:
            return set()

    def _watch(self):
        while not self._stop.wait(POLL):
            try:
                self.check()
            except Exception as exc:      # never let the watchdog die: the next round tries again
                self.log(f"lossgrader: Slurm watchdog: {exc.__class__.__name__}: {exc}")

    def check(self):
        """One look at the jobs: note the ones that started or joined, replace the ones that ended."""
        before = set(self.job_ids())
        jobs = self._jobs()
        self._job_ids()
        states = job_states(set(jobs.values()))
        if states is None:            # the controller does not answer: look again later
            return
        names = self._worker_names()
        ended, pending, running = [], {}, set()
        for name, jid in jobs.items():
            if str(name) in names or any(n.startswith(f"{name}-") for n in names):
                self._joined.add(jid)
            state, reason = states.get(jid, ("ENDED", ""))
            if state in ALIVE_STATES:
                if state == "PENDING":
                    pending[jid] = reason
                else:
                    running.add(jid)
                continue
            ended.append((name, jid, state))
        self.pending, self.running = pending, running
        if ended:
            self._replace(ended)
        if set(self.job_ids()) != before:
            self._save_state()

    def _replace(self, ended):
        cluster = self.cluster

        async def forget():
            async with cluster._lock:
                for name, _, _ in ended:
                    cluster.workers.pop(name, None)
                    cluster.worker_spec.pop(name, None)

        cluster.sync(forget)
        for _, jid, state in ended:
            self.ended[jid] = state
            if jid in self._joined:
                self._early_ends = 0
            else:
                self._early_ends += 1
        what = ", ".join(f"{jid} ({state.lower()})" for _, jid, state in ended)
        if self._early_ends >= MAX_EARLY_ENDS:
            if self.problem is None:
                self.problem = (f"{self._early_ends} Slurm jobs in a row ended before a Dask worker of theirs "
                                f"joined (last: {what}); no more are submitted. Their output is in "
                                f"{self.settings['log_directory']}; check the partition, account, prologue "
                                "and python settings ([tool.lossgrader.slurm])")
                self.log(f"lossgrader: {self.problem}")
            return
        if self._stop.is_set():
            return
        self.replaced += len(ended)
        self.log(f"lossgrader: Slurm job(s) {what} ended: submitting {len(ended)} replacement(s)")
        cluster.scale(jobs=self.target)

    def describe_jobs(self):
        """One line: how many jobs run and which wait, and why."""
        return _summary(self.running, self.pending)

    # ---------------------------------------------------------------- stop
    def close(self):
        """Cancel every job this cluster submitted, wait until they left squeue, remove its files."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)
        t0 = time.monotonic()
        try:
            if self.cluster is not None:
                self._job_ids()
                try:
                    self.cluster.close(timeout=60)
                except Exception as exc:
                    self.log(f"lossgrader: closing the Slurm cluster: {exc.__class__.__name__}: {exc}")
                left = cancel_jobs(self.submitted, wait=30)
                if left:
                    self.log(f"lossgrader: Slurm jobs {', '.join(left)} are still listed by squeue after scancel")
        finally:
            if self.kind == "command" and self.address and \
                    (_read_json(self.settings["scheduler_file"]) or {}).get("address") == self.address:
                _remove(self.settings["scheduler_file"])
            _remove(self.state_file)
            if self._config is not None:
                self._config.__exit__(None, None, None)
                self._config = None
            self.timings["close"] = time.monotonic() - t0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def import_jobqueue():
    """dask_jobqueue, imported without its side effect: importing it sets a SIGINT handler that
    calls sys.exit() (dask_jobqueue.runner), so that Ctrl-C would end lossgrader with status 0
    and no KeyboardInterrupt. The handlers in place before the import are put back."""
    saved = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            saved[sig] = signal.getsignal(sig)
        except (ValueError, OSError):
            pass
    try:
        import dask_jobqueue
    except ImportError:
        raise ClusterError("the Slurm cluster needs dask-jobqueue: pip install dask-jobqueue (and dask[distributed])")
    finally:
        for sig, handler in saved.items():
            try:
                if handler is not None and signal.getsignal(sig) is not handler:
                    signal.signal(sig, handler)
            except (ValueError, OSError):      # not the main thread: nothing to put back here
                pass
    return dask_jobqueue


def _slurm_problem():
    import shutil

    missing = [c for c in ("sbatch", "squeue", "scancel") if shutil.which(c) is None]
    if missing:
        return (f"Slurm's {', '.join(missing)} not found on PATH: run lossgrader cluster slurm (or autograde "
                "--dask slurm) on a machine that submits Slurm jobs (the login node)")
    return None


# --------------------------------------------------------------------------------------
# lossgrader cluster slurm
# --------------------------------------------------------------------------------------

class _Stop(Exception):
    pass


def serve(root, overrides=None, out=None) -> int:
    """``lossgrader cluster slurm``: start the grading cluster, write the scheduler file, keep
    the jobs running (replacing those that end) until Ctrl-C, SIGTERM or SIGHUP; then cancel
    them. Returns the exit status."""
    out = out or sys.stdout
    root = os.path.abspath(root)

    def say(text):
        out.write(text.rstrip("\n") + "\n")
        out.flush()

    settings = load_settings(root, overrides)
    running = running_address(root, settings)
    if running:
        say(f"lossgrader cluster slurm: a grading cluster already runs for this course (scheduler {running}, "
            f"scheduler file {settings['scheduler_file']}); stop it first (Ctrl-C where it runs)")
        return 1

    def stop(signum, frame):
        raise _Stop(signal.Signals(signum).name)

    import_jobqueue()
    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGHUP)}
    cluster = GradingCluster(root, settings, kind="command", log=say)
    try:
        cluster.start()
        say(f"grading cluster: scheduler {cluster.address}")
        say(f"scheduler file: {settings['scheduler_file']}")
        say(f"Slurm jobs: {', '.join(cluster.job_ids())} ({settings['jobs']} x {settings['cores']} cores, "
            f"{settings['processes']} worker(s) each, walltime {settings['walltime']}"
            + (f", partition {settings['partition']}" if settings["partition"] else "") + ")")
        say("grade on it with: lossgrader autograde --dask slurm   (or --dask " + settings["scheduler_file"] + ")")
        say("Ctrl-C stops it and cancels its jobs")
        last = None
        while True:
            time.sleep(1)
            if cluster.problem:
                say(f"lossgrader cluster slurm: {cluster.problem}")
                return 1
            now = cluster.describe_jobs()
            if now != last:
                say(f"jobs: {now}")
                last = now
    except (KeyboardInterrupt, _Stop) as exc:
        say(f"stopping ({'Ctrl-C' if isinstance(exc, KeyboardInterrupt) else exc}): cancelling the Slurm jobs")
        return 0
    finally:
        try:
            cluster.close()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if cluster.submitted:
            say(f"cancelled: {', '.join(cluster.submitted)}")
