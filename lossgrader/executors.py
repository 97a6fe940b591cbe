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
  running scheduler; a path to a scheduler file (``scheduler.json``) too. Results come
  back through ``distributed.as_completed``.

What can go wrong on the way, and what the coordinator makes of it:

* a worker process dies while grading (``KilledWorker``; our own ``LocalCluster`` tells
  the scheduler to give up on the first death, ``allowed-failures: 0``, so that the
  coordinator decides): ``outcome`` raises ``WorkerDied``;
* a task runs past the hand-in's limit plus a margin (the grader itself hung: the
  sandbox's own limit kills student code first): the coordinator calls ``abandon``, which
  cancels the task and, on Dask, restarts the worker that held it so that its slot comes
  back. A thread of the local pool cannot be stopped: it is left behind.

Either costs the hand-in one retry, then an explicit 0 with the reason.

Tests can make a Dask task misbehave on purpose: ``LOSSGRADER_TEST_FAULTS`` is a
space-separated list of ``die:STUDENT`` (the worker process exits at every try),
``die-once:STUDENT`` (exits at the first try only; needs ``LOSSGRADER_TEST_FAULTS_DIR``,
a folder shared by the workers, for its marker) and ``hang:STUDENT`` (sleeps forever).
Nothing reads these variables outside a Dask task.
"""
from __future__ import annotations

import concurrent.futures
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


def grader_fingerprint() -> str:
    """Hash of the source of the modules that decide a grade: a worker must grade with the
    same code as the coordinator, or the same hand-in could get different grades on
    different machines."""
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


def grade_on_worker(task: dict) -> dict:
    """The Dask task: tell the coordinator it started (and where), grade, return plain data."""
    import torch
    from distributed import get_worker
    from distributed.utils import sync

    worker = get_worker()
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


class DaskExecutor:
    """Tasks on a Dask cluster; results through ``distributed.as_completed``."""

    def __init__(self, address: str, sandbox: bool = True, connect_timeout: float = 60):
        try:
            import dask
            from distributed import Client, LocalCluster, as_completed
        except ImportError:
            raise ExecutorError("lossgrader autograde --dask needs Dask distributed: "
                                "pip install 'dask[distributed]' (or pip install 'lossgrader[cluster]')")
        self.address, self.cluster, self._closed, self._config = address, None, False, None
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
            elif address.endswith(".json") or os.path.isfile(address):
                if not os.path.isfile(address):
                    raise ExecutorError(f"lossgrader autograde: --dask {address}: no such scheduler file "
                                        "(the file the Dask scheduler writes, e.g. with --scheduler-file)")
                self.client = Client(scheduler_file=address, timeout=connect_timeout)
            else:
                self.client = Client(address, timeout=connect_timeout)
        except (OSError, TimeoutError, ValueError) as exc:
            if self.cluster is not None:
                self.cluster.close()
            self._release_config()
            raise ExecutorError(f"lossgrader autograde: cannot reach the Dask scheduler {address}: {exc}")
        except BaseException:
            self._release_config()
            raise
        self._starts = {}       # task key -> (monotonic time, worker address)
        self._lock = threading.Lock()
        self._threads = (0, 0.0)
        self._sandbox, self._checked, self._restarts = sandbox, set(), []
        self.client.subscribe_topic(START_TOPIC, self._on_start)
        self.completed = as_completed()
        self._check_workers(list(self.client.nthreads()))

    def _check_workers(self, workers) -> None:
        """Refuse to grade on workers that would grade differently or without the sandbox
        (those present at the start, then each one that joins, a few seconds after it does)."""
        if not workers:
            return
        reports = self.client.run(worker_report, self._sandbox, workers=list(workers), on_error="return")
        self._checked.update(workers)
        mine = grader_fingerprint()
        problems = []
        for addr, report in sorted(reports.items()):
            if isinstance(report, BaseException):
                problems.append(f"{addr} cannot load the grader: {report.__class__.__name__}: {report}")
            elif report["fingerprint"] != mine:
                problems.append(f"{addr} runs another lossgrader (source {report['fingerprint']}, here {mine})")
            elif report["sandbox_problem"]:
                problems.append(f"{addr} cannot sandbox: {report['sandbox_problem']}")
        if problems:
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
        kind = f"LocalCluster {self.address}" if self.cluster is not None else f"scheduler {self.address}"
        return f"Dask {kind}: {len(workers)} worker(s), {sum(workers.values())} thread(s)"

    def capacity(self) -> int:
        """Tasks worth having in flight: two per worker thread (at least 2, so that a
        cluster still waiting for its workers gets its first tasks)."""
        now = time.monotonic()
        if now - self._threads[1] > 5:
            workers = self.client.nthreads()
            self._check_workers(set(workers) - self._checked)
            self._threads = (sum(workers.values()), now)
        return max(2, 2 * self._threads[0])

    def submit(self, task: dict):
        key = f"grade-{task['student']}-{task['assignment']}-{uuid.uuid4().hex[:8]}"
        future = self.client.submit(grade_on_worker, task, key=key, pure=False, retries=0)
        self.completed.add(future)
        return future

    def wait(self, futures, timeout: float):
        deadline = time.monotonic() + timeout
        while not self.completed.has_ready():
            if time.monotonic() >= deadline:
                return []
            time.sleep(0.05)
        return self.completed.next_batch(block=False)

    def started(self, future):
        with self._lock:
            got = self._starts.get(str(future.key))
        return got[0] if got else None

    def outcome(self, future):
        from distributed.scheduler import KilledWorker
        from .results import HandinResult

        key = str(future.key)
        with self._lock:
            started = self._starts.pop(key, None) is not None
        if future.cancelled():
            raise WorkerDied("the task was cancelled by the scheduler")
        try:
            return HandinResult.from_dict(future.result())
        except KilledWorker as exc:
            if not started:      # its start event may still be on its way
                time.sleep(START_EVENT_GRACE)
                with self._lock:
                    started = self._starts.pop(key, None) is not None
            raise WorkerDied(f"KilledWorker: {exc}"[:200], started=started) from None

    def abandon(self, future) -> None:
        """Give up on a hung task: end the worker process running it (a thread cannot be
        interrupted; the worker's nanny starts a fresh process), then cancel it. In that
        order: until the worker is gone the scheduler sees it busy and sends it nothing else (no other
        hand-in is lost with it, the retry goes elsewhere), and with allowed-failures 0 the
        killed task is not run again. In the background: the batch goes on meanwhile."""
        with self._lock:
            got = self._starts.pop(str(future.key), None)
        thread = threading.Thread(target=self._restart_and_cancel, args=(future, got[1] if got else None),
                                  daemon=True)
        thread.start()
        self._restarts.append(thread)

    def _restart_and_cancel(self, future, address) -> None:
        try:
            if address:
                # the worker process exits at once; its nanny starts a fresh one (as after any
                # crash). Wait until the scheduler has seen it go before cancelling.
                try:
                    self.client.run(_exit_worker, workers=[address])
                except Exception:   # the connection closes with the process: expected
                    pass
                deadline = time.monotonic() + 60
                while address in self.client.nthreads() and time.monotonic() < deadline:
                    time.sleep(0.2)
        except Exception:   # the client is closing: nothing more to do
            pass
        finally:
            self._threads = (0, 0.0)
            try:
                future.cancel()
            except Exception:
                pass

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for thread in self._restarts:     # a hung worker must not outlive the batch
            thread.join(timeout=120)
        try:
            self.client.close()
        finally:
            try:
                if self.cluster is not None:
                    self.cluster.close()
            finally:
                self._release_config()

    def _release_config(self) -> None:
        if self._config is not None:
            self._config.__exit__(None, None, None)
            self._config = None


def open_executor(dask=None, jobs=1, sandbox=True):
    """The executor of a batch: Dask when ``dask`` names a cluster, else the local pool."""
    if dask:
        return DaskExecutor(dask, sandbox=sandbox)
    return LocalPool(jobs)
