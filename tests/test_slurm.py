"""Grading on a real Slurm cluster (tests/slurmcluster.py: munged, slurmctld and slurmd on
this host, one node), through the real sbatch, squeue and scancel.

* the docs' manual recipe ("Slurm (dask-jobqueue)" in docs/instructor.md), run as written
  apart from site values, grades like the local pool, cell by cell;
* ``lossgrader cluster slurm`` and ``lossgrader autograde --dask slurm`` (lossgrader/cluster.py,
  lossgrader/executors.py), with real faults: a worker's job cancelled mid-batch (scancel), a
  job that reaches its walltime, the cluster's jobs pending when the batch starts, the
  scheduler's process killed. Each time every hand-in gets its grade (or an explicit 0 with
  the reason after one retry), the gradebook passes its integrity check and no job is left
  in squeue;
* ``benchmarks/bench_cohort.py --slurm`` on a small cohort with the PostgreSQL gradebook.

Slow hand-ins are honest ones (demo_full's answers) that also sleep in an answer cell: the
faults hit while a hand-in is being graded. Everything lives under pytest's tmp_path and the
Slurm cluster's own temporary folder; the daemons are stopped by their pids at the end."""
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("nbgrader")
distributed = pytest.importorskip("distributed")
pytest.importorskip("dask_jobqueue")

import slurmcluster  # noqa: E402
from test_executors import A, ROOT, _course, _grades  # noqa: E402

from lossgrader import cluster, executors, gradebook  # noqa: E402
from lossgrader.autograde import autograde  # noqa: E402
from lossgrader.sandbox import bwrap_problem  # noqa: E402

SANDBOX = bwrap_problem() is None
FLAGS = ["--cell-timeout", "60"] + ([] if SANDBOX else ["--no-sandbox"])
SAMPLES = ("demo_full", "demo_bugs", "demo_unfinished")


# --------------------------------------------------------------------------------------
# fixtures and helpers
# --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def slurm():
    reason = slurmcluster.problem()
    if reason:
        pytest.skip(reason)
    s = slurmcluster.LocalSlurm(cpus=2).start()
    try:
        with pytest.MonkeyPatch.context() as mp:
            for key, value in s.env().items():
                mp.setenv(key, value)         # dask-jobqueue's own sbatch/scancel calls reach it too
            yield s
    finally:
        s.stop()


@pytest.fixture
def queue(slurm):
    """The Slurm cluster, with no job of an earlier test; fails a test that leaves one behind."""
    slurm.run("scancel", "--full", "--user=root", check=False)
    slurm.wait_for("an empty queue", lambda: not slurm.queued(), timeout=60)
    yield slurm
    left = slurm.queued()
    slurm.run("scancel", "--full", "--user=root", check=False)
    assert not left, f"jobs left in squeue: {slurm.jobs()}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """{sample: (status, scores)} from the local pool: what every Slurm run must reproduce."""
    root = _course(str(tmp_path_factory.mktemp("pool") / "c"), {s: s for s in SAMPLES})
    results = autograde(root, cell_timeout=60, progress=False, sandbox=SANDBOX, jobs=2)
    assert all(r["status"] == "autograded" for r in results.values())
    return _grades(root)


def _slow(seconds):
    """demo_full's 02_regression whose first answer cell also sleeps: an honest, slow hand-in."""
    with open(os.path.join(ROOT, "samples", "submitted", "demo_full", A, A + ".ipynb"), encoding="utf-8") as fh:
        nb = json.load(fh)
    for cell in nb["cells"]:
        if cell["metadata"].get("nbgrader", {}).get("grade_id") == "answer_mse":
            cell["source"] = "".join(cell["source"]) + f"\nimport time\ntime.sleep({seconds})\n"
    return json.dumps(nb, ensure_ascii=False)


def _settings(root, **values):
    """The course's [tool.lossgrader.slurm] for this Slurm: one single-thread worker per job."""
    table = {"partition": slurmcluster.PARTITION, "cores": 1, "memory": "4GB", "walltime": "00:10:00",
             "jobs": 1, "interface": "lo", "death_timeout": 20, **values}
    lines = ["[tool.lossgrader.slurm]"] + [f"{k} = {json.dumps(v)}" for k, v in table.items()]
    with open(os.path.join(root, "pyproject.toml"), "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    return root


def _cli(root, *args):
    return [sys.executable, "-m", "lossgrader.cli", "--course", root, *args]


def _status(root):
    try:
        with open(os.path.join(root, "lossgrader-status.json"), encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return {}


def _check_gradebook(root):
    """The gradebook's integrity: lossgrader's own check, and SQLite's full integrity_check."""
    url = gradebook.db_url(root)
    gradebook.check_readable(url)
    path = gradebook.sqlite_path(url)
    if path:
        con = sqlite3.connect(path)
        try:
            assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        finally:
            con.close()


def _expect(root, reference, students):
    """Every hand-in graded as the local pool grades its sample (slow ones: demo_full's)."""
    grades = _grades(root)
    assert set(grades) == set(students)
    for student, sample in students.items():
        want = reference["demo_full" if not sample.startswith("demo_") else sample]
        assert grades[student] == want, student


def _scheduler_address(root, timeout=120, proc=None):
    """The scheduler of the grading cluster running for the course (from its state file)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (proc is None or proc.poll() is None):
        for _, state in cluster.cluster_states(root):
            if state.get("address") and state.get("jobs"):
                return state["address"], state
        time.sleep(0.2)
    raise AssertionError("no grading cluster state file appeared")


# run on the workers: lambdas travel by value (the workers cannot import this module)
_executing = lambda dask_worker: [str(ts.key) for ts in dask_worker.state.executing]  # noqa: E731
_job_id = lambda: os.environ.get("SLURM_JOB_ID")  # noqa: E731


def _job_running(client, key_part, proc, timeout=180):
    """(worker address, Slurm job id) of the worker executing a task whose key holds key_part
    (while proc, the batch, runs)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            running = client.run(_executing)
        except Exception:
            running = {}
        for worker, keys in running.items():
            if any(key_part in k for k in keys):
                return worker, client.run(_job_id, workers=[worker])[worker]
        time.sleep(0.2)
    raise AssertionError(f"no worker ran {key_part} (batch: {proc.poll()})")


def _job_logs(root, tail=1500):
    """The end of each job's output (the jobs' log_directory), for a failure's message."""
    folder = os.path.join(root, ".lossgrader", "slurm", "logs")
    out = []
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        with open(os.path.join(folder, name), errors="replace") as fh:
            out.append(f"--- {name}\n{fh.read()[-tail:]}")
    return "\n".join(out)


def _finish(proc, root, timeout=420):
    """proc's output once it has exited 0; killed when it does not end in time (or the test is
    interrupted: pytest-timeout), so that no batch outlives its test."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"timed out:\n{out[-3000:]}\n{err[-5000:]}\n{_job_logs(root)}")
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    assert proc.returncode == 0, f"{out[-3000:]}\n{err[-5000:]}\n{_job_logs(root)}"
    return out, err


# --------------------------------------------------------------------------------------
# settings (no Slurm needed)
# --------------------------------------------------------------------------------------

def test_settings_come_from_the_course_and_are_checked(tmp_path):
    root = str(tmp_path)
    with pytest.raises(cluster.ClusterError, match=r"\[tool.lossgrader.slurm\]"):
        cluster.load_settings(root)
    (tmp_path / "pyproject.toml").write_text("[tool.lossgrader.slurm]\npartition = \"compute\"\n"
                                             "account = \"lf101\"\ncores = 16\njobs = 4\n"
                                             "prologue = [\"source /shared/envs/lossgrader/bin/activate\"]\n")
    settings = cluster.load_settings(root, {"jobs": 2})
    assert settings["jobs"] == 2 and settings["processes"] == 16 and settings["walltime"] == "02:00:00"
    assert settings["scheduler_file"] == os.path.join(root, ".lossgrader", "slurm", "scheduler.json")
    kwargs = cluster.cluster_kwargs(settings)
    assert kwargs["queue"] == "compute" and kwargs["account"] == "lf101" and kwargs["processes"] == 16
    assert kwargs["job_script_prologue"] == ["source /shared/envs/lossgrader/bin/activate"]
    for bad, message in (("cores = 0", "positive"), ("walltime = 5", "string"), ("prologue = \"x\"", "list"),
                         ("partiton = \"x\"", "unknown setting")):
        (tmp_path / "pyproject.toml").write_text(f"[tool.lossgrader.slurm]\n{bad}\n")
        with pytest.raises(cluster.ClusterError, match=message):
            cluster.load_settings(root)
    # the repository's own table (pyproject.toml) is valid
    assert cluster.load_settings(ROOT)["jobs"] >= 1


def test_the_cluster_command_and_dask_slurm_are_on_the_command_line():
    from lossgrader.cli import _dask_address, build_parser

    args = build_parser().parse_args(["cluster", "slurm", "--jobs", "3"])
    assert args.system == "slurm" and args.jobs == 3
    assert _dask_address("slurm", "/course") == "slurm:/course"
    assert _dask_address("local:2", "/course") == "local:2"
    assert executors.parse_slurm("slurm:" + ROOT) == ROOT


# --------------------------------------------------------------------------------------
# the docs' manual recipe, on real Slurm
# --------------------------------------------------------------------------------------

SITE_VALUES = [  # (as written in the docs, this Slurm's value)
    ('queue="compute", account="lf101"', f'queue="{slurmcluster.PARTITION}", account="lf101"'),
    ("cores=16, processes=16", "cores=1, processes=1"),
    ('memory="96GB"', 'memory="4GB"'),
    ('interface=None', 'interface="lo"'),
    ("source /shared/envs/lossgrader/bin/activate", "source {activate}"),
    ("cluster.scale(jobs=4)", "cluster.scale(jobs=2)"),
]


def test_the_docs_recipe_grades_through_real_slurm_jobs(queue, reference, tmp_path):
    from test_cluster_recipes import _recipe

    activate = tmp_path / "activate"          # the site's environment: here it only marks the jobs
    activate.write_text("export LOSSGRADER_SITE_ENV=activated\n")
    script = _recipe()
    for docs, site in SITE_VALUES:
        assert script.count(docs) == 1, docs
        script = script.replace(docs, site.format(activate=activate))
    (tmp_path / "slurm_cluster.py").write_text(script, encoding="utf-8")
    proc = subprocess.Popen([sys.executable, "slurm_cluster.py"], cwd=tmp_path, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        queue.wait_for("the scheduler file", lambda: (tmp_path / "scheduler.json").exists() or proc.poll() is not None)
        assert proc.poll() is None, proc.communicate()
        jobs = queue.wait_for("the recipe's two jobs", lambda: len(queue.queued()) == 2 and queue.queued())
        root = _course(str(tmp_path / "course"), {s: s for s in SAMPLES})
        done = subprocess.run(_cli(root, "autograde", "--dask", str(tmp_path / "scheduler.json"), "-q", *FLAGS),
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        assert _grades(root) == reference                   # cell by cell
        with distributed.Client(scheduler_file=str(tmp_path / "scheduler.json"), timeout=30) as client:
            env = client.run(lambda: (os.environ.get("SLURM_JOB_ID"), os.environ.get("LOSSGRADER_SITE_ENV")))
        assert sorted(j for j, _ in env.values()) == sorted(jobs)         # the workers run in those jobs
        assert {e for _, e in env.values()} == {"activated"}              # after the prologue
        out, err = proc.communicate("\n", timeout=120)                    # Enter stops it
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "scheduler: tcp://" in out
    queue.wait_for("the recipe's jobs to leave the queue", lambda: not queue.queued(), timeout=60)
    assert {queue.job_field(j, "JobState") for j in jobs} == {"CANCELLED"}


# --------------------------------------------------------------------------------------
# lossgrader autograde --dask slurm, and the faults
# --------------------------------------------------------------------------------------

def test_a_job_cancelled_mid_batch(queue, reference, tmp_path):
    """scancel of the job running a hand-in (a node lost): the hand-in is graded at its second
    try, the one queued behind it on that worker at its first, and the cluster started for the
    batch submits a replacement job, the only worker left."""
    students = {"slow": _slow(8), "b": "demo_bugs", "c": "demo_unfinished", "d": "demo_full"}
    root = _settings(_course(str(tmp_path / "c"), students), jobs=1)
    proc = subprocess.Popen(_cli(root, "autograde", "--dask", "slurm", *FLAGS), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        address, state = _scheduler_address(root, proc=proc)
        assert state["kind"] == "batch"
        with distributed.Client(address, timeout=60) as client:
            _, job = _job_running(client, "grade-slow-", proc)
        queue.run("scancel", job)
    finally:
        out, err = _finish(proc, root)
    status = _status(root)
    assert status[f"slow/{A}"]["attempts"] == 2 and status[f"slow/{A}"]["status"] == "autograded"
    assert all(status[f"{s}/{A}"]["attempts"] == 1 for s in students if s != "slow"), status
    _expect(root, reference, students)
    _check_gradebook(root)
    assert queue.job_field(job, "JobState") == "CANCELLED"
    assert f"Slurm job(s) {job} (cancelled) ended: submitting 1 replacement" in err
    batch = json.load(open(os.path.join(root, ".lossgrader", "slurm", "last-batch.json")))
    assert batch["replaced"] == 1 and len(batch["submitted"]) == 2
    assert not queue.queued() and not cluster.cluster_states(root)


def test_a_job_reaching_its_walltime(queue, reference, tmp_path):
    """One job with a one-minute walltime and a batch that outlasts it: Slurm ends the job
    (TIMEOUT) while it grades; the hand-in it was grading is graded again on the replacement
    job, every hand-in gets its grade."""
    students = {f"w{i:02d}": _slow(7) for i in range(12)}
    root = _settings(_course(str(tmp_path / "c"), students), jobs=1, walltime="00:01:00")
    t0 = time.monotonic()
    proc = subprocess.Popen(_cli(root, "autograde", "--dask", "slurm", *FLAGS), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = _finish(proc, root)
    batch = json.load(open(os.path.join(root, ".lossgrader", "slurm", "last-batch.json")))
    first = batch["submitted"][0]
    assert queue.job_field(first, "JobState") == "TIMEOUT", (time.monotonic() - t0, err[-3000:])
    assert batch["replaced"] >= 1 and len(batch["submitted"]) >= 2
    status = _status(root)
    assert all(e["status"] == "autograded" and e["attempts"] <= 2 for e in status.values()), status
    # each job that ended cost at most the hand-in it was grading one try
    assert sum(e["attempts"] - 1 for e in status.values()) <= len(batch["ended"])
    _expect(root, reference, students)
    _check_gradebook(root)
    assert not queue.queued()


def test_jobs_pending_when_the_batch_starts(queue, reference, tmp_path, capsys):
    """The node is busy (another user's job holds its CPUs) when lossgrader cluster slurm starts
    and the batch begins: the batch says what it waits for, no hand-in's time limit runs while
    it waits (a limit of 30 s here, the wait about 40 s), and every hand-in is graded at its
    first try once the job starts. Then Ctrl-C stops the cluster and cancels its job."""
    blocker = queue.run("sbatch", "--parsable", "-J", "someone-else", "-c", "2", "-o", os.devnull,
                        "--wrap", "sleep 600").stdout.strip()
    queue.wait_for("the other job to run", lambda: queue.job_field(blocker, "JobState") == "RUNNING")
    students = {"a": "demo_full", "b": "demo_bugs", "c": "demo_unfinished"}
    root = _settings(_course(str(tmp_path / "c"), students), jobs=1)
    command = subprocess.Popen(_cli(root, "cluster", "slurm"), text=True, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    release = threading.Timer(40, lambda: queue.run("scancel", blocker, check=False))
    try:
        address, state = _scheduler_address(root)
        assert state["kind"] == "command"
        queue.wait_for("the cluster's job to pend", lambda: queue.job_field(state["jobs"][0], "JobState") == "PENDING")
        release.start()
        results = autograde(root, cell_timeout=60, progress=False, sandbox=SANDBOX, dask=f"slurm:{root}",
                            submission_timeout=25, hang_margin=5)
        err = capsys.readouterr().err
        assert "grading on the running grading cluster" in err
        assert re.search(r"waiting for Dask workers .*: Slurm jobs of the grading cluster 0 running, "
                         r"1 pending \(\d+: Resources\)", err), err
        assert all(r["status"] == "autograded" and r["attempts"] == 1 for r in results.values()), results
        _expect(root, reference, students)
        _check_gradebook(root)
        command.send_signal(signal.SIGINT)                 # Ctrl-C
        out, _ = command.communicate(timeout=120)
    finally:
        release.cancel()
        if command.poll() is None:
            command.kill()
            command.wait()
    assert command.returncode == 0, out
    assert "stopping (Ctrl-C): cancelling the Slurm jobs" in out
    assert queue.job_field(state["jobs"][0], "JobState") == "CANCELLED"
    assert not queue.queued()
    assert not os.path.exists(os.path.join(root, ".lossgrader", "slurm", "scheduler.json"))
    assert not cluster.cluster_states(root)


def test_the_scheduler_process_killed(queue, reference, tmp_path):
    """lossgrader cluster slurm killed (kill -9) while a batch grades on it: the coordinator
    cancels the dead cluster's jobs, starts a grading cluster of its own for the rest of the
    batch, grades the hand-ins that were in flight again, and leaves no job behind."""
    students = {f"k{i}": _slow(4) for i in range(4)}
    students.update({"b": "demo_bugs", "c": "demo_unfinished"})
    root = _settings(_course(str(tmp_path / "c"), students), jobs=1)
    command = subprocess.Popen(_cli(root, "cluster", "slurm"), text=True, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    proc = None
    try:
        address, state = _scheduler_address(root)
        proc = subprocess.Popen(_cli(root, "autograde", "--dask", "slurm", *FLAGS), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        queue.wait_for("a first hand-in recorded", lambda: len(_status(root)) >= 1, timeout=300)
        assert len(_status(root)) < len(students)
        command.send_signal(signal.SIGKILL)
        command.wait()
        out, err = _finish(proc, root)
    finally:
        for p in (command, proc):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    assert "lost the Dask scheduler" in err and "started a grading cluster on Slurm for this batch" in err
    assert f"cancelled its Slurm jobs {state['jobs'][0]}" in err
    status = _status(root)
    assert all(e["status"] == "autograded" and e["attempts"] <= 2 for e in status.values()), status
    _expect(root, reference, students)
    _check_gradebook(root)
    assert queue.job_field(state["jobs"][0], "JobState") == "CANCELLED"
    assert not queue.queued()
    assert not cluster.cluster_states(root)
    assert not os.path.exists(os.path.join(root, ".lossgrader", "slurm", "scheduler.json"))


def test_jobs_that_end_at_their_start_are_not_resubmitted_forever(queue, tmp_path):
    """A wrong python path in the settings: each job ends before its worker joins. The cluster
    replaces the first ones, then stops after 3 in a row and exits with the reason instead of
    filling the queue."""
    root = _settings(str(tmp_path), jobs=1, python="/nonexistent/envs/lossgrader/bin/python")
    with open(os.path.join(root, "nbgrader_config.py"), "w") as fh:
        fh.write("")
    done = subprocess.run(_cli(root, "cluster", "slurm"), capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "3 Slurm jobs in a row ended before a Dask worker of theirs joined" in done.stdout
    assert "check the partition, account, prologue and python settings" in done.stdout
    assert done.stdout.count("submitting 1 replacement(s)") == 2
    assert not queue.queued() and not cluster.cluster_states(root)


# --------------------------------------------------------------------------------------
# the cohort benchmark's Slurm path, on a small cohort
# --------------------------------------------------------------------------------------

def test_the_cohort_benchmark_on_slurm(queue, tmp_path):
    import pgserver

    if pgserver.find_binaries() is None:
        pytest.skip(pgserver.MISSING)
    settings = tmp_path / "slurm.toml"
    _settings(str(tmp_path), jobs=1)
    os.replace(tmp_path / "pyproject.toml", settings)
    done = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_cohort.py"), "--slurm",
                           "--slurm-settings", str(settings), "--handins", "3", "--nbgrader-subset", "1",
                           "--jobs", "1", "--assignments", A] + ([] if SANDBOX else ["--no-sandbox"]),
                          capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "PostgreSQL" in out and "lossgrader --dask slurm" in out
    assert "identical grades, cell by cell: lossgrader -j 1 and lossgrader --dask slurm (3 hand-ins)" in out
    for phase in ("slurm: cluster start", "slurm: first worker", "slurm: close", "submit to record"):
        assert phase in out, phase
    assert not queue.queued()
