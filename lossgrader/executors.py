"""Where grading tasks run: the local pool or a Dask cluster.

The coordinator (``lossgrader.autograde``) builds one task per hand-in, plain data (see
``lossgrader.worker.grade_handin``), and hands it to an executor; the executor runs
``grade_handin`` somewhere (sandbox included) and gives the result back. The coordinator
stays the only writer: an executor never touches the gradebook or the course folder, and
a Dask worker never needs the course folder (the task carries the hand-in's bytes).

Two executors, one interface (``submit``, ``wait``, ``outcome``, ``started``, ``abandon``,
``capacity``, ``close``):

* ``LocalPool(jobs)``: ``jobs`` threads of this process, each driving one sandboxed
  kernel at a time (``lossgrader autograde -j N``, the default);
* ``DaskExecutor(address)``: Dask distributed (``--dask``). ``local[:N]`` starts a
  ``LocalCluster`` of N worker processes with one thread each; ``tcp://HOST:PORT`` uses a
  running scheduler; a path to a scheduler file (``scheduler.json``) too; ``slurm`` (or
  ``slurm:COURSE``, the form the command line passes) uses the grading cluster that
  ``lossgrader cluster slurm`` runs for the course, or starts one on Slurm for the batch
  (``lossgrader.cluster``: settings in the course's ``[tool.lossgrader.slurm]``). Results
  come back through ``distributed.as_completed``.

What can go wrong on the way, and what the coordinator makes of it:

* a worker process dies while grading (``KilledWorker``; our own clusters tell the
  scheduler to give up on the first death, ``allowed-failures: 0``, so that the
  coordinator decides; on Slurm: a job cancelled, at its walltime, a node lost):
  ``outcome`` raises ``WorkerDied``. On Slurm the cluster replaces the job;
* a task runs past the hand-in's limit plus a margin (the grader itself hung: the
  sandbox's own limit kills student code first): the coordinator calls ``abandon``, which
  cancels the task and, on Dask, restarts the worker that held it so that its slot comes
  back. A thread of the local pool cannot be stopped: it is left behind;
* the scheduler is lost (its process killed, its machine gone): every task in flight
  comes back from ``wait`` and ``outcome`` raises ``WorkerDied`` for it (``started`` says
  whether it had begun). With ``slurm`` the executor then starts a grading cluster of its
  own for the rest of the batch (after cancelling the dead cluster's jobs); with an
  address it cannot restart, it stops the batch (``ExecutorError``) and says how to go on;
* a worker that joins while the batch runs (a Slurm job that was pending) is checked
  like the first ones; each task also carries the coordinator's grader fingerprint, and a
  worker that runs another grader refuses it before touching the hand-in.

A death or a hang costs the hand-in one retry, then an explicit 0 with the reason.

Tests can make a Dask task misbehave on purpose: ``LOSSGRADER_TEST_FAULTS`` is a
space-separated list of ``die:STUDENT`` (the worker process exits at every try),
``die-once:STUDENT`` (exits at the first try only; needs ``LOSSGRADER_TEST_FAULTS_DIR``,
a folder shared by the workers, for its marker) and ``hang:STUDENT`` (sleeps forever).
Nothing reads these variables outside a Dask task.
"""
from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import logging
import os
import threading
import time
import uuid

HANG_MARGIN = 60.0      # seconds past a hand-in's own limit before the coordinator gives up on its task
START_TOPIC = "lossgrader-task-started"
FAULTS_ENV = "LOSSGRADER_TEST_FAULTS"
FAULTS_DIR_ENV = "LOSSGRADER_TEST_FAULTS_DIR"


class WorkerDied(Exception):
    """The process running a task died before returning a result. ``started``: whether the
    task had begun (a Dask worker holds queued tasks too, and they die with it)."""

    def __init__(self, message: str, started: bool = True):
        super().__init__(message)
        self.started = started


# a task that died queued behind another one is sent again without costing its hand-in a
# try, this many times at most (then its deaths count, so that a loop cannot go on forever)
MAX_UNSTARTED_RETRIES = 3
START_EVENT_GRACE = 1.0    # seconds a start event may trail the news of the worker's death


class ExecutorError(SystemExit):
    """The executor cannot start (no scheduler, workers that cannot grade): nothing was graded."""


GRADING_MODULES = ("backdoors", "cases", "engine", "exercises", "guards", "judge", "kernel", "normalize",
                   "notebooks", "references", "results", "runtime", "sandbox", "worker")


@functools.lru_cache(maxsize=1)
def grader_fingerprint() -> str:
    """Hash of the source of the modules that decide a grade: a worker must grade with the
    same code as the coordinator, or the same hand-in could get different grades on
    different machines (computed once per process: every hand-in's task checks it)."""
    here = os.path.dirname(os.path.abspath(__file__))
    digest = hashlib.sha256()
    for name in GRADING_MODULES:
        package = os.path.join(here, name)
        files = (sorted(os.path.join(package, f) for f in os.listdir(package) if f.endswith(".py"))
                 if os.path.isdir(package) else [package + ".py"])
        for path in files:
            digest.update(os.path.relpath(path, here).encode())
            try:
                with open(path, "rb") as fh:
                    digest.update(fh.read())
            except OSError:
                digest.update(b"(missing)")
    return digest.hexdigest()[:16]


# --------------------------------------------------------------------------------------
# The local pool
# --------------------------------------------------------------------------------------

class LocalPool:
    """``jobs`` threads of this process (today's ``-j N``)."""

    def __init__(self, jobs: int = 1):
        self.jobs = max(1, int(jobs))
        self.pool = concurrent.futures.ThreadPoolExecutor(self.jobs)
        self._starts = {}       # future -> {"start": monotonic time} once a thread picked it up
        self._left_behind = 0

    def describe(self) -> str:
        return f"local pool, {self.jobs} thread(s)"

    def capacity(self) -> int:
        return self.jobs

    def submit(self, task: dict):
        from .worker import grade_handin

        box = {}

        def run():
            box["start"] = time.monotonic()
            return grade_handin(task)

        future = self.pool.submit(run)
        self._starts[future] = box
        return future

    def wait(self, futures, timeout: float):
        done, _ = concurrent.futures.wait(list(futures), timeout=timeout,
                                          return_when=concurrent.futures.FIRST_COMPLETED)
        for future in done:
            self._starts.pop(future, None)
        return list(done)

    def started(self, future):
        return self._starts.get(future, {}).get("start")

    def outcome(self, future):
        return future.result()

    def abandon(self, future) -> None:
        # a running thread cannot be stopped; new tasks go to a fresh pool so that the
        # stuck one does not take a slot
        self._starts.pop(future, None)
        if not future.cancel():
            self._left_behind += 1
            self.pool.shutdown(wait=False)
            self.pool = concurrent.futures.ThreadPoolExecutor(self.jobs)

    def close(self) -> None:
        from .warm import close_all

        self.pool.shutdown(wait=not self._left_behind, cancel_futures=True)
        close_all()     # the threads' warm sandboxes (lossgrader.warm) end with the batch


# --------------------------------------------------------------------------------------
# Dask distributed
# --------------------------------------------------------------------------------------

def _test_faults(task: dict) -> None:
    """The test hook (see the module docstring); runs inside a Dask task only."""
    spec = os.environ.get(FAULTS_ENV, "")
    for item in spec.split():
        kind, _, student = item.partition(":")
        if student != task.get("student"):
            continue
        if kind == "die":
            os._exit(17)
        elif kind == "die-once":
            marker = os.path.join(os.environ[FAULTS_DIR_ENV], f"died-{student}-{task.get('assignment')}")
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                continue
            os._exit(17)
        elif kind == "hang":
            while True:
                time.sleep(3600)


class GraderMismatch(Exception):
    """A worker runs another grader than the coordinator (raised on the worker, before grading)."""


def grade_on_worker(task: dict, fingerprint: str = None) -> dict:
    """The Dask task: check that this worker grades with the coordinator's code, tell the
    coordinator it started (and where), grade, return plain data."""
    import torch
    from distributed import get_worker
    from distributed.utils import sync

    worker = get_worker()
    if fingerprint is not None and grader_fingerprint() != fingerprint:
        raise GraderMismatch(f"{worker.address} runs another lossgrader (source {grader_fingerprint()}, "
                             f"the coordinator's {fingerprint})")
    start = {"key": str(worker.get_current_task()), "worker": worker.address}
    try:
        # a request the scheduler answers (not the batched stream, which a dying process may
        # never flush): the coordinator hears of the start before it can hear of a death
        sync(worker.loop, worker.scheduler.log_event, topic=START_TOPIC, msg=start)
    except Exception:
        worker.log_event(START_TOPIC, start)
    _test_faults(task)
    from .worker import grade_handin

    torch.set_num_threads(1)      # one thread per worker process: the cluster decides parallelism
    return grade_handin(task).to_dict()


def _exit_worker() -> None:
    """Run on a worker whose grading thread hung: a thread cannot be stopped, the process can."""
    os._exit(18)


def worker_report(sandbox: bool) -> dict:
    """What the coordinator checks on each worker before sending it hand-ins (importing the
    grader there also warms the worker up)."""
    from . import worker  # noqa: F401  (torch, nbformat and the judge load here, before the first hand-in)

    report = {"fingerprint": grader_fingerprint(), "sandbox_problem": None}
    if sandbox:
        from .sandbox import bwrap_problem

        report["sandbox_problem"] = bwrap_problem()
    return report


def parse_slurm(address: str):
    """``slurm`` -> the course folder at or above the current directory, ``slurm:DIR`` -> DIR;
    None when not a Slurm address."""
    if address == "slurm" or address.startswith("slurm:"):
        from .course import find_course_root

        return find_course_root(address[len("slurm:"):] or None)
    return None


def parse_local(address: str):
    """``local`` -> os.cpu_count() workers, ``local:N`` -> N; None when not a local address."""
    if address == "local":
        return max(1, os.cpu_count() or 1)
    if address.startswith("local:"):
        try:
            n = int(address.split(":", 1)[1])
        except ValueError:
            raise ExecutorError(f"lossgrader autograde: --dask {address}: expected local:N with N a number")
        if n < 1:
            raise ExecutorError(f"lossgrader autograde: --dask {address}: N must be at least 1")
        return n
    return None


# Dask settings held while a LocalCluster of ours runs (see DaskExecutor.__init__).
LOCAL_CLUSTER_CONFIG = {"distributed.scheduler.allowed-failures": 0,
                        "distributed.deploy.lost-worker-timeout": "1 day"}


MAX_RECOVERIES = 3        # grading clusters started after a lost scheduler, per batch
WAITING_NOTE_EVERY = 60.0  # seconds between two "waiting for workers" notes
RECOVERABLE_STATUS = ("running",)


def _note(message: str) -> None:
    """A line for the instructor (stderr: stdout is the grade table's)."""
    import sys

    sys.stderr.write(message.rstrip("\n") + "\n")
    sys.stderr.flush()


class DaskExecutor:
    """Tasks on a Dask cluster; results through ``distributed.as_completed``."""

    def __init__(self, address: str, sandbox: bool = True, connect_timeout: float = 60, log=_note):
        try:
            import dask  # noqa: F401
            import distributed  # noqa: F401
        except ImportError:
            raise ExecutorError("lossgrader autograde --dask needs Dask distributed: "
                                "pip install 'dask[distributed]' (or pip install 'lossgrader[cluster]')")
        self.address, self.cluster, self._closed, self._config = address, None, False, None
        self.grading_cluster = None       # the Slurm cluster this executor started (lossgrader.cluster)
        self.client = None
        self.log, self._connect_timeout = log, connect_timeout
        self._slurm_root = parse_slurm(address)
        self._recoveries = 0
        self._starts = {}       # task key -> (monotonic time, worker address)
        self._lock = threading.Lock()
        self._threads = (0, 0.0)
        self._sandbox, self._checked, self._restarts = sandbox, set(), []
        self._fingerprint = grader_fingerprint()
        self._no_workers_since, self._noted = None, 0.0
        self.timings = {}       # batch phases on Slurm (seconds): cluster start, first worker, close
        self._t0 = time.monotonic()
        self._connect()

    # ---------------------------------------------------------------- connecting
    def _connect(self) -> None:
        """Reach the scheduler (starting a cluster where the address says so), then check the
        workers that are there."""
        import dask
        from distributed import Client, LocalCluster, as_completed

        address = self.address
        n = parse_local(address)
        try:
            if n is not None:
                # Held until close(), as the cluster reads it while it runs. allowed-failures 0:
                # the scheduler gives up on a task at the first worker death (the coordinator
                # retries). lost-worker-timeout: lost-worker-timeout after each departure of a
                # worker, a LocalCluster closes its nanny for good if the worker is absent at
                # that moment; a restart slower than that (importing torch on a loaded machine)
                # or a second hang on the same worker then would lose its slot for the batch.
                self._config = dask.config.set(LOCAL_CLUSTER_CONFIG)
                self.cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                            dashboard_address=None, silence_logs=logging.ERROR)
                self.client = Client(self.cluster)
            elif self._slurm_root is not None:
                self.client = self._connect_slurm()
            elif address.endswith(".json") or os.path.isfile(address):
                if not os.path.isfile(address):
                    raise ExecutorError(f"lossgrader autograde: --dask {address}: no such scheduler file "
                                        "(the file the Dask scheduler writes, e.g. with --scheduler-file)")
                self.client = Client(scheduler_file=address, timeout=self._connect_timeout)
            else:
                self.client = Client(address, timeout=self._connect_timeout)
        except (OSError, TimeoutError, ValueError) as exc:
            self._close_clusters()
            self._release_config()
            raise ExecutorError(f"lossgrader autograde: cannot reach the Dask scheduler {address}: {exc}")
        except BaseException:
            self._close_clusters()
            self._release_config()
            raise
        self._checked, self._threads = set(), (0, 0.0)
        self.client.subscribe_topic(START_TOPIC, self._on_start)
        self.completed = as_completed()
        self._check_workers(list(self.client.nthreads()))

    def _connect_slurm(self):
        """The client of the course's running grading cluster, or of one started for the batch."""
        from distributed import Client

        from . import cluster as slurm

        root = self._slurm_root
        try:
            settings = slurm.load_settings(root)
        except slurm.ClusterError as exc:
            raise ExecutorError(f"lossgrader autograde --dask slurm: {exc}")
        running = slurm.running_address(root, settings)
        if running:
            try:
                client = Client(running, timeout=self._connect_timeout)
                self.log(f"lossgrader: grading on the running grading cluster (lossgrader cluster slurm), "
                         f"scheduler {running}")
                return client
            except (OSError, TimeoutError) as exc:
                self.log(f"lossgrader: the running grading cluster does not answer ({exc}): starting one "
                         "for this batch")
        t0 = time.monotonic()
        try:
            self.grading_cluster = slurm.GradingCluster(root, settings, kind="batch", log=self.log).start()
        except slurm.ClusterError as exc:
            raise ExecutorError(f"lossgrader autograde --dask slurm: {exc}")
        self.timings.setdefault("cluster start", time.monotonic() - t0)
        gc = self.grading_cluster
        self.log(f"lossgrader: started a grading cluster on Slurm for this batch: scheduler {gc.address}, "
                 f"jobs {', '.join(gc.job_ids())} ({settings['jobs']} x {settings['processes']} worker(s)); "
                 "they are cancelled when the batch ends")
        return Client(gc.address, timeout=self._connect_timeout)

    def _lost(self) -> bool:
        """Whether the scheduler has gone (the client lost its connection)."""
        return self.client is not None and self.client.status not in RECOVERABLE_STATUS

    def _recover(self) -> None:
        """The scheduler is gone: with ``slurm``, start a grading cluster for the rest of the
        batch; otherwise stop the batch with what to do."""
        lost = getattr(self.grading_cluster, "address", None) or self._scheduler_address()
        if self._slurm_root is None or self._recoveries >= MAX_RECOVERIES:
            self.close()
            raise ExecutorError(
                f"lossgrader autograde: lost the Dask scheduler {lost or self.address} in the middle of the "
                "batch" + (f" ({self._recoveries} times)" if self._recoveries else "") + ". The hand-ins "
                "recorded so far are kept; start the scheduler again and run the same command to grade the "
                "others (grading is repeatable).")
        self._recoveries += 1
        self.log(f"lossgrader: lost the Dask scheduler {lost or ''} in the middle of the batch: starting a "
                 "grading cluster on Slurm for the rest of it; the hand-ins that were being graded are graded "
                 "again (one try each)")
        old_client, old_cluster = self.client, self.grading_cluster
        self.client, self.grading_cluster = None, None
        try:
            old_client.close(timeout=5)
        except Exception:
            pass
        if old_cluster is not None:
            old_cluster.close()
        self._connect()

    def _scheduler_address(self):
        try:
            return self.client.scheduler.address
        except Exception:
            return None

    # ---------------------------------------------------------------- workers
    def _check_workers(self, workers) -> None:
        """Refuse to grade on workers that would grade differently or without the sandbox
        (those present at the start, then each one that joins, a few seconds after it does)."""
        if not workers:
            return
        reports = self.client.run(worker_report, self._sandbox, workers=list(workers), on_error="return")
        self._checked.update(workers)
        mine = self._fingerprint
        problems = []
        for addr, report in sorted(reports.items()):
            if isinstance(report, BaseException):
                problems.append(f"{addr} cannot load the grader: {report.__class__.__name__}: {report}")
            elif report["fingerprint"] != mine:
                problems.append(f"{addr} runs another lossgrader (source {report['fingerprint']}, here {mine})")
            elif report["sandbox_problem"]:
                problems.append(f"{addr} cannot sandbox: {report['sandbox_problem']}")
        if problems:
            self._refuse(problems)

    def _refuse(self, problems) -> None:
        self.close()
        raise ExecutorError("lossgrader autograde: Dask workers that cannot grade this batch:\n  "
                            + "\n  ".join(problems) + "\nInstall the same lossgrader (and bubblewrap) "
                            "on every worker, or pass --no-sandbox for trusted hand-ins.")

    def _on_start(self, event) -> None:
        msg = event[1] if isinstance(event, tuple) else event
        if isinstance(msg, dict) and "key" in msg:
            with self._lock:
                self._starts[msg["key"]] = (time.monotonic(), msg.get("worker"))

    def describe(self) -> str:
        workers = self.client.nthreads()
        if self.cluster is not None:
            kind = f"LocalCluster {self.address}"
        elif self.grading_cluster is not None:
            kind = f"Slurm grading cluster of this batch, scheduler {self.grading_cluster.address}"
        else:
            kind = f"scheduler {self.address}"
        return f"Dask {kind}: {len(workers)} worker(s), {sum(workers.values())} thread(s)"

    def capacity(self) -> int:
        """Tasks worth having in flight: two per worker thread (at least 2, so that a
        cluster still waiting for its workers gets its first tasks); 0 while the scheduler is lost."""
        if self._lost():
            return 0
        now = time.monotonic()
        if now - self._threads[1] > 5:
            try:
                workers = self.client.nthreads()
            except Exception:
                return 0        # the scheduler went away just now: wait() finds out
            self._check_workers(set(workers) - self._checked)
            self._threads = (sum(workers.values()), now)
            self._waiting(bool(workers), now)
        return max(2, 2 * self._threads[0])

    def _waiting(self, have_workers: bool, now: float) -> None:
        """With no worker at all: say what the batch waits for (pending Slurm jobs and why),
        and stop it when the Slurm cluster gave up on its jobs."""
        if have_workers:
            if "first worker" not in self.timings:
                self.timings["first worker"] = now - self._t0
            self._no_workers_since = None
            return
        gc = self.grading_cluster
        if gc is not None and gc.problem:
            self.close()
            raise ExecutorError(f"lossgrader autograde --dask slurm: {gc.problem}")
        if self._no_workers_since is None:
            self._no_workers_since = now
        if now - self._no_workers_since >= 10 and now - self._noted >= WAITING_NOTE_EVERY:
            self._noted = now
            jobs = ""
            if gc is not None:
                jobs = f": Slurm jobs {gc.describe_jobs()}"
            elif self._slurm_root is not None:
                from . import cluster as slurm

                described = slurm.describe_course_jobs(self._slurm_root)
                jobs = f": Slurm jobs of the grading cluster {described}" if described else ""
            self.log(f"lossgrader: waiting for Dask workers ({now - self._no_workers_since:.0f} s so far){jobs}; "
                     "hand-ins start when a worker joins (their time limit counts from their start)")

    # ---------------------------------------------------------------- tasks
    def submit(self, task: dict):
        if self._lost():
            self._recover()
        key = f"grade-{task['student']}-{task['assignment']}-{uuid.uuid4().hex[:8]}"
        future = self.client.submit(grade_on_worker, task, self._fingerprint, key=key, pure=False, retries=0)
        self.completed.add(future)
        return future

    def wait(self, futures, timeout: float):
        if self._lost():
            self._recover()
        # tasks of a scheduler that is gone: they come back now, as failures (outcome)
        stale = [f for f in futures if f.client is not self.client]
        if stale:
            return stale
        deadline = time.monotonic() + timeout
        while not self.completed.has_ready():
            if time.monotonic() >= deadline or self._lost():
                return []
            time.sleep(0.05)
        return self.completed.next_batch(block=False)

    def started(self, future):
        with self._lock:
            got = self._starts.get(str(future.key))
        return got[0] if got else None

    def _pop_started(self, key, grace=False) -> bool:
        with self._lock:
            started = self._starts.pop(key, None) is not None
        if not started and grace:      # its start event may still be on its way
            time.sleep(START_EVENT_GRACE)
            with self._lock:
                started = self._starts.pop(key, None) is not None
        return started

    def outcome(self, future):
        from distributed.scheduler import KilledWorker
        from .results import HandinResult

        key = str(future.key)
        if future.client is not self.client or (future.cancelled() and self._lost()):
            raise WorkerDied("the Dask scheduler was lost", started=self._pop_started(key))
        if future.cancelled():
            raise WorkerDied("the task was cancelled by the scheduler", started=self._pop_started(key))
        try:
            value = future.result()
        except KilledWorker as exc:
            raise WorkerDied(f"KilledWorker: {exc}"[:200], started=self._pop_started(key, grace=True)) from None
        except GraderMismatch as exc:
            self._pop_started(key)
            self._refuse([str(exc)])
        except Exception:
            if self._lost():
                raise WorkerDied("the Dask scheduler was lost", started=self._pop_started(key)) from None
            self._pop_started(key)
            raise
        self._pop_started(key)
        return HandinResult.from_dict(value)

    def abandon(self, future) -> None:
        """Give up on a hung task: end the worker process running it (a thread cannot be
        interrupted; the worker's nanny starts a fresh process), then cancel it. In that
        order: until the worker is gone the scheduler sees it busy and sends it nothing else (no other
        hand-in is lost with it, the retry goes elsewhere), and with allowed-failures 0 the
        killed task is not run again. In the background: the batch goes on meanwhile."""
        with self._lock:
            got = self._starts.pop(str(future.key), None)
        thread = threading.Thread(target=self._restart_and_cancel,
                                  args=(future, got[1] if got else None, self.client), daemon=True)
        thread.start()
        self._restarts.append(thread)

    def _restart_and_cancel(self, future, address, client) -> None:
        try:
            if address:
                # the worker process exits at once; its nanny starts a fresh one (as after any
                # crash). Wait until the scheduler has seen it go before cancelling.
                try:
                    client.run(_exit_worker, workers=[address])
                except Exception:   # the connection closes with the process: expected
                    pass
                deadline = time.monotonic() + 60
                while address in client.nthreads() and time.monotonic() < deadline:
                    time.sleep(0.2)
        except Exception:   # the client is closing: nothing more to do
            pass
        finally:
            self._threads = (0, 0.0)
            try:
                future.cancel()
            except Exception:
                pass

    # ---------------------------------------------------------------- end
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for thread in self._restarts:     # a hung worker must not outlive the batch
            thread.join(timeout=120)
        try:
            if self.client is not None:
                try:
                    self.client.close(timeout=30)
                except Exception:
                    if not self._lost():
                        raise
        finally:
            try:
                self._close_clusters()
            finally:
                self._release_config()

    def _close_clusters(self) -> None:
        try:
            if self.cluster is not None:
                self.cluster.close()
        finally:
            gc, self.grading_cluster = self.grading_cluster, None
            if gc is not None:
                gc.close()
                self.timings["close"] = gc.timings.get("close", 0.0)
                self._save_timings(gc)

    def _save_timings(self, gc) -> None:
        """The batch's Slurm phases, for the instructor and benchmarks/bench_cohort.py:
        .lossgrader/slurm/last-batch.json."""
        from . import cluster as slurm

        try:
            slurm._write_json(os.path.join(slurm.state_dir(self._slurm_root), "last-batch.json"), {
                "timings": {k: round(v, 3) for k, v in self.timings.items()},
                "submitted": gc.submitted, "ended": gc.ended, "replaced": gc.replaced,
                "recoveries": self._recoveries})
        except OSError:
            pass

    def _release_config(self) -> None:
        if self._config is not None:
            self._config.__exit__(None, None, None)
            self._config = None


def open_executor(dask=None, jobs=1, sandbox=True):
    """The executor of a batch: Dask when ``dask`` names a cluster, else the local pool."""
    if dask:
        return DaskExecutor(dask, sandbox=sandbox)
    return LocalPool(jobs)
