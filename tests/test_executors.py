"""Executors (lossgrader.executors): the local pool and Dask distributed grade alike, and a
Dask worker that dies or a task that hangs costs its hand-in one retry, then an explicit 0
with the reason, while the batch goes on.

Misbehaving tasks come from the executors' test hook (LOSSGRADER_TEST_FAULTS, read inside
Dask tasks only): the grading logic itself is not touched. Everything lives under pytest's
tmp_path; hand-ins are copies of the sample class's 02_regression."""
import os
import shutil
import time

import pytest

pytest.importorskip("nbgrader")
distributed = pytest.importorskip("distributed")

from course_copy import copy_course  # noqa: E402
from lossgrader import executors, gradebook  # noqa: E402
from lossgrader.autograde import autograde  # noqa: E402
from lossgrader.cli import main as cli_main  # noqa: E402
from lossgrader.sandbox import bwrap_problem  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
A = "02_regression"
SANDBOX = bwrap_problem() is None
CELL_TIMEOUT = 60


def _course(root, students):
    """A course folder with 02_regression and {student: sample it hands in (or text)}."""
    os.makedirs(root)
    copy_course(root, [A])
    for student, sample in students.items():
        dest = os.path.join(root, "submitted", student, A)
        os.makedirs(dest)
        if sample.startswith("demo_"):
            shutil.copy2(os.path.join(ROOT, "samples", "submitted", sample, A, A + ".ipynb"), dest)
        else:
            with open(os.path.join(dest, A + ".ipynb"), "w", encoding="utf-8") as fh:
                fh.write(sample)
    return root


def _grades(root):
    """{student: (status, {grade cell: score})} from the gradebook."""
    rows = {r["student_id"]: r["status"] for r in gradebook.grade_rows(root)}
    return {s: (rows[s], gradebook.submission_scores(gradebook.db_url(root), A, s)) for s in rows}


def test_cluster_addresses(tmp_path):
    assert executors.parse_local("local") == os.cpu_count()
    assert executors.parse_local("local:3") == 3
    assert executors.parse_local("tcp://10.0.0.5:8786") is None
    with pytest.raises(executors.ExecutorError, match="at least 1"):
        executors.parse_local("local:0")
    with pytest.raises(executors.ExecutorError, match="no such scheduler file"):
        executors.open_executor(str(tmp_path / "scheduler.json"))
    pool = executors.open_executor(None, jobs=3)
    assert isinstance(pool, executors.LocalPool) and pool.capacity() == 3
    pool.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A running Dask scheduler with 2 worker processes whose tasks obey the test faults:
    the tests reach it by its tcp:// address, as an instructor reaches a Slurm cluster."""
    import dask
    from distributed import LocalCluster

    marks = tmp_path_factory.mktemp("faults")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(executors.FAULTS_ENV, "die-once:b_dies_once die:c_dies hang:d_hangs")
        mp.setenv(executors.FAULTS_DIR_ENV, str(marks))
        with dask.config.set(executors.LOCAL_CLUSTER_CONFIG):
            with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c:
                scheduler_file = str(marks / "scheduler.json")
                with distributed.Client(c) as client:
                    client.write_scheduler_file(scheduler_file)
                yield {"tcp": c.scheduler_address, "file": scheduler_file}


def test_a_local_cluster_keeps_a_slow_restarting_worker():
    """A LocalCluster closes a worker's nanny for good when the worker is still away
    lost-worker-timeout after it left. Here that timeout is shorter than any restart (as a
    restart importing torch on a loaded machine can exceed the default 15 s): the executor's
    own setting must keep the slot, or a hung hand-in would cost the batch a worker."""
    import dask

    with dask.config.set({"distributed.deploy.lost-worker-timeout": "10ms"}):
        ex = executors.DaskExecutor("local:1", sandbox=False)
        try:
            (first,) = ex.client.nthreads()
            ex.client.run(executors._exit_worker, workers=[first], on_error="ignore")
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and set(ex.client.nthreads()) in (set(), {first}):
                time.sleep(0.2)
            (second,) = ex.client.nthreads()
            assert second != first
            time.sleep(1)       # the cluster's check runs 10 ms after the departure
            assert ex.client.submit(os.getpid, pure=False).result(timeout=60) > 0
        finally:
            ex.close()
    assert dask.config.get("distributed.deploy.lost-worker-timeout") != "1 day"


def test_dask_local_grades_like_the_local_pool(tmp_path, capsys):
    students = {"demo_bugs": "demo_bugs", "demo_unfinished": "demo_unfinished"}
    pool = _course(str(tmp_path / "pool"), students)
    dask = _course(str(tmp_path / "dask"), students)
    flags = ["--cell-timeout", str(CELL_TIMEOUT), "-q"] + ([] if SANDBOX else ["--no-sandbox"])
    assert cli_main(["--course", pool, "autograde", "-j", "2"] + flags) == 0
    assert cli_main(["--course", dask, "autograde", "--dask", "local:2"] + flags) == 0
    got, expected = _grades(dask), _grades(pool)
    assert set(got) == set(students)
    assert got == expected
    assert expected["demo_bugs"][0] == "autograded" and 0 < expected["demo_bugs"][1][0] < 6
    # the Dask run wrote the same files as the local pool: autograded notebooks and the status
    assert os.path.isfile(os.path.join(dask, "autograded", "demo_bugs", A, A + ".ipynb"))


def test_a_dead_worker_costs_one_retry_then_an_explicit_zero(cluster, tmp_path):
    root = _course(str(tmp_path / "c"), {"b_dies_once": "demo_full", "c_dies": "demo_bugs"})
    results = autograde(root, cell_timeout=CELL_TIMEOUT, progress=False, sandbox=SANDBOX, dask=cluster["tcp"])
    # died at its first try, graded at the second
    once = results[("b_dies_once", A)]
    assert once["status"] == "autograded" and once["attempts"] == 2 and once["score"] == 6.0
    # died at both tries: 0 with the reason
    dead = results[("c_dies", A)]
    assert dead["status"] == "failed" and dead["attempts"] == 2 and dead["score"] == 0.0
    assert "worker process died" in dead["reason"]
    grades = _grades(root)
    assert grades["c_dies"][0] == "failed" and grades["c_dies"][1][0] == 0.0
    assert grades["b_dies_once"][1][0] == 6.0


def test_a_hand_in_queued_on_a_dying_worker_loses_no_try(tmp_path, monkeypatch):
    """A Dask worker holds the tasks queued for it as well as the one it runs: when it dies,
    they are reported dead too. One worker, and a hand-in that kills it every time: the
    hand-in queued behind it is graded, at its first try, and only the killer gets a 0."""
    import dask
    from distributed import LocalCluster

    monkeypatch.setenv(executors.FAULTS_ENV, "die:a_dies")
    monkeypatch.setenv(executors.FAULTS_DIR_ENV, str(tmp_path))
    root = _course(str(tmp_path / "c"), {"a_dies": "demo_bugs", "b_queued": "demo_full"})
    with dask.config.set(executors.LOCAL_CLUSTER_CONFIG):
        with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as c:
            results = autograde(root, cell_timeout=CELL_TIMEOUT, progress=False, sandbox=SANDBOX,
                                dask=c.scheduler_address)
    killer, queued = results[("a_dies", A)], results[("b_queued", A)]
    assert killer["status"] == "failed" and killer["attempts"] == 2
    assert queued["status"] == "autograded" and queued["attempts"] == 1 and queued["score"] == 6.0


def test_a_hung_task_is_abandoned_and_zeroed(cluster, tmp_path):
    root = _course(str(tmp_path / "c"), {"d_hangs": "demo_full", "e_not_json": "{ not json"})
    results = autograde(root, cell_timeout=CELL_TIMEOUT, submission_timeout=4, hang_margin=1,
                        progress=False, sandbox=SANDBOX, dask=cluster["file"])
    hung = results[("d_hangs", A)]
    assert hung["status"] == "failed" and hung["attempts"] == 2 and hung["score"] == 0.0
    assert "time limit exceeded" in hung["reason"] and "5 s" in hung["reason"]
    assert results[("e_not_json", A)]["status"] == "failed"          # the batch went on
    assert "JSON" in results[("e_not_json", A)]["reason"]
    # the workers holding the hung tasks were restarted: every worker runs a new task at once
    with distributed.Client(cluster["tcp"]) as client:
        client.wait_for_workers(2, timeout=120)
        workers = list(client.nthreads())
        assert len(workers) == 2
        futures = [client.submit(os.getpid, workers=[w], pure=False) for w in workers]
        assert len({f.result(timeout=60) for f in futures}) == 2
