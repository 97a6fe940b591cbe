"""The cluster recipes of docs/instructor.md, run as far as this machine allows.

The Slurm recipe of docs/instructor.md ("Slurm (dask-jobqueue)") runs as written against
the real dask-jobqueue, with Slurm's ``sbatch``/``scancel`` replaced by scripts that record
the job scripts it submits. What an instructor relies on: the script starts, submits one
job per node asked for, each job starts 16 single-thread workers with the memory and
environment the recipe gives, the scheduler file appears, the scheduler hands a dead
worker's task back at once (allowed-failures 0), and Enter cancels the jobs.

This check runs wherever dask-jobqueue is installed (no Slurm needed, no root);
tests/test_slurm.py runs the same recipe through a real single-node Slurm (as root, with
Debian's slurm-wlm and munge), and ``lossgrader cluster slurm`` with it.

The Kubernetes recipe: its containers' commands and environment, run as local processes.
(No Kubernetes API is here: the manifest itself is not run by the operator.)"""
import os
import re
import stat
import subprocess
import sys
import time

import pytest

distributed = pytest.importorskip("distributed")
pytest.importorskip("dask_jobqueue")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FAKE_SBATCH = """#!/bin/sh
# records the job script; answers as sbatch does (jobs are submitted side by side: $$ names them)
cp "$1" "{jobs}/job$$.sh"
echo "Submitted batch job $$"
"""
FAKE_SCANCEL = """#!/bin/sh
echo "$@" >> "{jobs}/../cancelled"
"""


def _recipe():
    with open(os.path.join(ROOT, "docs", "instructor.md"), encoding="utf-8") as fh:
        text = fh.read()
    section = text[text.index("### Slurm (dask-jobqueue)"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def _tool(path, body):
    with open(path, "w") as fh:
        fh.write(body)
    os.chmod(path, os.stat(path).st_mode | stat.S_IEXEC)


def test_the_slurm_recipe_submits_the_jobs_it_promises(tmp_path):
    jobs, bin_dir = tmp_path / "jobs", tmp_path / "bin"
    jobs.mkdir()
    bin_dir.mkdir()
    _tool(bin_dir / "sbatch", FAKE_SBATCH.format(jobs=jobs))
    _tool(bin_dir / "scancel", FAKE_SCANCEL.format(jobs=jobs))
    (tmp_path / "slurm_cluster.py").write_text(_recipe(), encoding="utf-8")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    proc = subprocess.Popen([sys.executable, "slurm_cluster.py"], cwd=tmp_path, env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (len(os.listdir(jobs)) < 4
                                               or not (tmp_path / "scheduler.json").exists()):
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        scripts = sorted(os.listdir(jobs))
        assert len(scripts) == 4                              # cluster.scale(jobs=4)
        with distributed.Client(scheduler_file=str(tmp_path / "scheduler.json"), timeout=30) as client:
            assert client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.allowed_failures) == 0
        out, err = proc.communicate("\n", timeout=60)          # Enter stops it
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "scheduler: tcp://" in out
    # stopping it gives the nodes back: every job submitted is cancelled
    submitted = {name[len("job"):-len(".sh")] for name in scripts}
    assert set((tmp_path / "cancelled").read_text().split()) == submitted
    script = (jobs / scripts[0]).read_text()
    for line in ("#SBATCH -p compute", "#SBATCH -A lf101", "#SBATCH -t 02:00:00",
                 "source /shared/envs/lossgrader/bin/activate"):
        assert line in script
    worker = next(line for line in script.splitlines() if "distributed.cli.dask_worker" in line)
    assert "--nworkers 16" in worker and "--nthreads 1" in worker
    assert "--memory-limit 5.59GiB" in worker and "--local-directory /tmp" in worker     # 96GB / 16


def _manifest():
    import yaml

    with open(os.path.join(ROOT, "docs", "instructor.md"), encoding="utf-8") as fh:
        text = fh.read()
    section = text[text.index("### Kubernetes (the Dask operator)"):]
    return yaml.safe_load(re.search(r"```yaml\n(.*?)```", section, re.S).group(1))


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_kubernetes_recipe_runs_its_containers_commands(tmp_path):
    """The DaskCluster manifest's scheduler and worker commands, run here as the operator
    runs them in their pods (the operator gives each worker DASK_SCHEDULER_ADDRESS and
    DASK_WORKER_NAME): the scheduler hands a dead worker's task back at once, and
    ``lossgrader autograde --dask tcp://...`` grades through that worker."""
    from test_executors import A, _course, _grades

    from lossgrader.sandbox import bwrap_problem

    spec = _manifest()["spec"]
    scheduler = spec["scheduler"]["spec"]["containers"][0]
    worker = spec["worker"]["spec"]["containers"][0]
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, **{e["name"]: e["value"] for e in scheduler.get("env", [])}}
    procs = [subprocess.Popen(scheduler["args"] + ["--host", "127.0.0.1", "--port", str(port),
                                                    "--no-dashboard"],
                              env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        worker_env = {**os.environ, "DASK_SCHEDULER_ADDRESS": address, "DASK_WORKER_NAME": "lossgrader-worker-0"}
        args = [a.replace("$(DASK_WORKER_NAME)", worker_env["DASK_WORKER_NAME"]) for a in worker["args"]]
        procs.append(subprocess.Popen(args + ["--no-dashboard"], env=worker_env, cwd=tmp_path,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        with distributed.Client(address, timeout=60) as client:
            client.wait_for_workers(1, timeout=120)
            assert client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.allowed_failures) == 0
            assert list(client.nthreads().values()) == [1]
        root = _course(str(tmp_path / "course"), {"demo_full": "demo_full", "demo_bugs": "demo_bugs"})
        flags = [] if bwrap_problem() is None else ["--no-sandbox"]
        done = subprocess.run([sys.executable, "-m", "lossgrader.cli", "--course", root, "autograde",
                               "--dask", address, "-q", *flags], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        grades = _grades(root)
        assert grades["demo_full"][1][0] == 6.0 and 0 < grades["demo_bugs"][1][0] < 6
        assert os.path.isfile(os.path.join(root, "autograded", "demo_bugs", A, A + ".ipynb"))
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
