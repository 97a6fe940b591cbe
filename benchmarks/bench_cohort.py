"""A synthetic cohort through every executor: the local pool, Dask, and plain nbgrader.

A class of N hand-ins (default 200) is generated from the sample class: student s000,
s001, ... each hands in one assignment, the assignments cycling over ``--assignments``
and the samples over demo_full / demo_bugs / demo_unfinished. The same class is graded,
each on a fresh copy of the course, by

* ``lossgrader autograde -j J`` (the local pool),
* ``lossgrader autograde --dask local:J`` (a Dask LocalCluster of J worker processes),
* plain ``nbgrader autograde`` on the first ``--nbgrader-subset`` hand-ins, its time
  extrapolated to the whole class (it would take hours otherwise),

and the wall times are printed side by side with their ratio to nbgrader, with where a
hand-in's time goes (from the timings the judge recorded). Every executor must give
identical grades, cell by cell: the script says so, or lists the differences and exits 1.

    python benchmarks/bench_cohort.py [--handins 200] [--jobs 2] [--nbgrader-subset 20]
                                      [--assignments 01_overview 02_regression] [--no-sandbox]

``--slurm`` grades the cohort (default 1,000 hand-ins) through the grading cluster on Slurm
(``lossgrader autograde --dask slurm``: a cluster started for the batch, ``--jobs`` jobs) with
the gradebook on PostgreSQL, beside the local pool on PostgreSQL too (``-j --jobs``) and plain
nbgrader on the sample; it adds the batch's Slurm phases (submitting the jobs, the first worker
joining, cancelling them at the end). The Slurm settings are the ``[tool.lossgrader.slurm]``
table of ``--slurm-settings`` (default: this repository's pyproject.toml); where no Slurm
answers (``sinfo``), the script starts a single-node one on this machine (tests/slurmcluster.py,
as root) with settings for it. PostgreSQL: a throw-away server (tests/pgserver.py), or
``--pg-url`` (a server URL whose user may create databases).

    python benchmarks/bench_cohort.py --slurm [--handins 1000] [--jobs 2] [--slurm-settings FILE]

It takes long (tens of minutes on 2 cores): it is a benchmark, not a test.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_autograde  # noqa: E402  (its breakdown of the recorded timings)
from lossgrader.nbgrader_plugins import use_stock_autograde  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")       # the throw-away Slurm and PostgreSQL servers of the tests
SAMPLES = ("demo_full", "demo_bugs", "demo_unfinished")


def cohort(n, aids):
    """[(student, assignment, sample)] of the synthetic class."""
    return [(f"s{i:03d}", aids[i % len(aids)], SAMPLES[(i // len(aids)) % len(SAMPLES)]) for i in range(n)]


def fresh_course(parent, name, handins, aids, db_url=None, slurm_table=None):
    root = os.path.join(parent, name)
    os.makedirs(root)
    for item in ("nbgrader_config.py", "_config.yml"):
        shutil.copy(os.path.join(ROOT, item), os.path.join(root, item))
    if db_url:
        with open(os.path.join(root, "nbgrader_config.py"), "a", encoding="utf-8") as fh:
            fh.write(f"\nc.CourseDirectory.db_url = {db_url!r}\n")
    if slurm_table:
        with open(os.path.join(root, "pyproject.toml"), "w", encoding="utf-8") as fh:
            fh.write(slurm_table)
    for item in ("tools",):
        shutil.copytree(os.path.join(ROOT, item), os.path.join(root, item),
                        ignore=shutil.ignore_patterns("__pycache__"))
    for aid in aids:
        shutil.copytree(os.path.join(ROOT, "solutions", aid), os.path.join(root, "solutions", aid))
    for student, aid, sample in handins:
        shutil.copytree(os.path.join(ROOT, "samples", "submitted", sample, aid),
                        os.path.join(root, "submitted", student, aid))
    # both graders start from a gradebook that knows the assignments (not timed)
    subprocess.run([sys.executable, "-c", "import sys; from lossgrader.gradebook import register; "
                    "register(sys.argv[1], sys.argv[2:])", root, *aids], check=True, cwd=root)
    return root


def run(cmd, root):
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return seconds


def lossgrader(root, executor, sandbox):
    cmd = [sys.executable, "-m", "lossgrader.cli", "autograde", "--quiet"] + executor
    return run(cmd + ([] if sandbox else ["--no-sandbox"]), root)


def nbgrader(root, aids):
    return sum(run(["nbgrader", "autograde", aid, "--force", "--create", "--log-level=ERROR"], root) for aid in aids)


def grades(root):
    """{(student, assignment): {grade cell: score}} straight from the gradebook (SQLite or a server)."""
    import sqlalchemy

    from lossgrader.gradebook import db_url

    engine = sqlalchemy.create_engine(db_url(root))
    try:
        with engine.connect() as con:
            rows = con.execute(sqlalchemy.text(
                "SELECT student.id, assignment.name, base_cell.name, "
                "COALESCE(grade.manual_score, grade.auto_score) "
                "FROM grade JOIN submitted_notebook ON grade.notebook_id = submitted_notebook.id "
                "JOIN submitted_assignment ON submitted_notebook.assignment_id = submitted_assignment.id "
                "JOIN student ON submitted_assignment.student_id = student.id "
                "JOIN assignment ON submitted_assignment.assignment_id = assignment.id "
                "JOIN base_cell ON grade.cell_id = base_cell.id")).fetchall()
    finally:
        engine.dispose()
    out = {}
    for student, aid, cell, score in rows:
        out.setdefault((student, aid), {})[cell] = round(score or 0.0, 6)
    return out


def breakdown(root):
    status, phases = bench_autograde.breakdown(root)
    # the coordinator's view: from handing the task over (queueing on the workers included) to recording it
    phases["submit to record"] = [e["seconds"] for e in status.values()]
    failed = sorted(k for k, v in status.items() if v.get("status") != "autograded")
    return phases, failed


def slurm_phases(root):
    """The batch's Slurm phases (seconds) that lossgrader wrote: submitting the jobs (sbatch),
    the first worker joining, cancelling the jobs at the end; and the jobs it submitted."""
    try:
        with open(os.path.join(root, ".lossgrader", "slurm", "last-batch.json"), encoding="utf-8") as fh:
            batch = json.load(fh)
    except (OSError, ValueError):
        return {}, {}
    return batch.get("timings", {}), batch


def slurm_reachable():
    try:
        return subprocess.run(["sinfo", "--noheader"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def slurm_table(path, jobs):
    """The [tool.lossgrader.slurm] table of the TOML file at path, with jobs = --jobs."""
    from lossgrader.cluster import _toml

    table = dict(_toml(path).get("tool", {}).get("lossgrader", {}).get("slurm") or {})
    if not table:
        sys.exit(f"{path} has no [tool.lossgrader.slurm] table")
    table["jobs"] = jobs
    return "[tool.lossgrader.slurm]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in table.items())


LOCAL_SLURM_TABLE = """[tool.lossgrader.slurm]
partition = "grading"
cores = 1
memory = "4GB"
walltime = "02:00:00"
jobs = {jobs}
interface = "lo"
"""


def start_services(args, stack):
    """(Slurm table, PostgreSQL server URL maker, description) for --slurm; servers started
    here are stopped by ``stack``."""
    sys.path.insert(0, TESTS)
    described = []
    if args.slurm_settings or slurm_reachable():
        if not slurm_reachable():
            sys.exit("--slurm-settings given but no Slurm answers here (sinfo)")
        table = slurm_table(args.slurm_settings or os.path.join(ROOT, "pyproject.toml"), args.jobs)
        described.append("Slurm: the cluster sinfo answers for")
    else:
        import slurmcluster

        problem = slurmcluster.problem()
        if problem:
            sys.exit(f"--slurm: no Slurm answers here and none can be started: {problem}")
        local = slurmcluster.LocalSlurm(cpus=args.jobs).start()
        stack.callback(local.stop)
        os.environ.update(local.env())
        table = LOCAL_SLURM_TABLE.format(jobs=args.jobs)
        described.append(f"Slurm: a single-node cluster started on this machine ({args.jobs} CPUs)")
    if args.pg_url:
        base = args.pg_url.rsplit("/", 1)[0]
        server_version = "PostgreSQL at " + base.split("@")[-1]
    else:
        import pgserver

        if pgserver.find_binaries() is None:
            sys.exit(pgserver.MISSING)
        server = pgserver.PostgresServer().start()
        stack.callback(server.stop)
        base = server.url().rsplit("/", 1)[0]
        server_version = f"{server.version}, a throw-away server on this machine"
    described.append(f"gradebook: {server_version}")

    def new_database(name):
        import sqlalchemy

        engine = sqlalchemy.create_engine(base + "/postgres", isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as con:
                con.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}"'))
                con.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
        finally:
            engine.dispose()
        return f"{base}/{name}"

    return table, new_database, "; ".join(described)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--handins", type=int, default=None, help="hand-ins (default 200; 1000 with --slurm)")
    parser.add_argument("--jobs", "-j", type=int, default=2)
    parser.add_argument("--nbgrader-subset", type=int, default=20)
    parser.add_argument("--assignments", nargs="+", default=["01_overview", "02_regression"])
    parser.add_argument("--no-sandbox", action="store_true")
    parser.add_argument("--keep", default=None, help="keep the course copies in this folder")
    parser.add_argument("--slurm", action="store_true",
                        help="through the grading cluster on Slurm, gradebook on PostgreSQL (see above)")
    parser.add_argument("--slurm-settings", default=None,
                        help="TOML file with the [tool.lossgrader.slurm] table (default: pyproject.toml)")
    parser.add_argument("--pg-url", default=None, help="PostgreSQL server URL for --slurm (default: a "
                                                       "throw-away server)")
    args = parser.parse_args()
    import contextlib

    from lossgrader.sandbox import bwrap_problem

    sandbox = not args.no_sandbox and bwrap_problem() is None
    handins = cohort(args.handins or (1000 if args.slurm else 200), args.assignments)
    subset = handins[:args.nbgrader_subset]
    tmp = args.keep or tempfile.mkdtemp(prefix="bench-cohort-")
    n = len(handins)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    times, course = {}, {}
    with contextlib.ExitStack() as stack:
        if args.slurm:
            table, new_database, services = start_services(args, stack)
        print(f"synthetic class: {n} hand-ins ({', '.join(args.assignments)} x {', '.join(SAMPLES)}), "
              f"{os.cpu_count()} CPUs, load average {load:.1f} at start, sandbox {'on' if sandbox else 'OFF'}"
              + (f"\n{services}" if args.slurm else ""), flush=True)
        try:
            course["nbgrader"] = fresh_course(tmp, "nbgrader", subset, sorted({a for _, a, _ in subset}))
            use_stock_autograde(course["nbgrader"])    # the anchor: nbgrader as it ships
            t = nbgrader(course["nbgrader"], sorted({a for _, a, _ in subset}))
            times["nbgrader"] = t * n / len(subset)
            print(f"nbgrader autograde: {len(subset)} hand-ins in {t:.1f} s -> {times['nbgrader']:.0f} s "
                  f"extrapolated to {n}", flush=True)
            if args.slurm:
                runs = ((f"lossgrader -j {args.jobs}", ["-j", str(args.jobs)]),
                        ("lossgrader --dask slurm", ["--dask", "slurm"]))
            else:
                runs = ((f"lossgrader -j {args.jobs}", ["-j", str(args.jobs)]),
                        (f"lossgrader --dask local:{args.jobs}", ["--dask", f"local:{args.jobs}"]))
            for label, executor in runs:
                name = label.split()[-1].replace(":", "_").lstrip("-")
                extra = {}
                if args.slurm:
                    extra = {"db_url": new_database(f"bench_cohort_{name.replace('-', '_')}"), "slurm_table": table}
                course[label] = fresh_course(tmp, name, handins, args.assignments, **extra)
                times[label] = lossgrader(course[label], executor, sandbox)
                print(f"{label}: {n} hand-ins in {times[label]:.1f} s", flush=True)
            load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")

            print(f"\n{'grader':<34}{'wall s':>9}{'s/hand-in':>11}{'x nbgrader':>12}")
            for label, t in times.items():
                name = f"nbgrader autograde (x{n}/{len(subset)})" if label == "nbgrader" else label
                print(f"{name:<34}{t:>9.1f}{t / n:>11.2f}{t / times['nbgrader']:>12.2f}")
            print(f"(load average {load:.1f} at start, {load_end:.1f} at the end: a shared machine)")

            labels = [k for k in times if k != "nbgrader"]
            for label in labels:
                phases, failed = breakdown(course[label])
                print(f"\nwhere a hand-in's time goes, {label} (median / max over hand-ins, s):")
                for phase, values in sorted(phases.items(), key=lambda kv: -statistics.median(kv[1])):
                    print(f"  {phase:<32}{statistics.median(values):>7.2f}{max(values):>8.2f}")
                if failed:
                    print("  failed hand-ins:", ", ".join(failed))
                batch_phases, batch = slurm_phases(course[label])
                if batch_phases:
                    print(f"the batch's Slurm phases, {label} (s, once per batch): "
                          f"jobs {', '.join(batch.get('submitted', []))}, replaced {batch.get('replaced', 0)}")
                    for phase in ("cluster start", "first worker", "close"):
                        if phase in batch_phases:
                            print(f"  slurm: {phase:<24}{batch_phases[phase]:>7.2f}")

            reference = grades(course[labels[0]])
            status = 0
            if len(reference) != n:
                print(f"\n{labels[0]} graded {len(reference)} of {n} hand-ins")
                status = 1
            for label in labels[1:]:
                other = grades(course[label])
                diff = sorted(k for k in set(reference) | set(other) if reference.get(k) != other.get(k))
                if diff:
                    status = 1
                    print(f"\nDIFFERENT GRADES, {labels[0]} vs {label}: {len(diff)} hand-ins, e.g. "
                          + "; ".join(f"{k}: {reference.get(k)} vs {other.get(k)}" for k in diff[:5]))
                else:
                    print(f"\nidentical grades, cell by cell: {labels[0]} and {label} ({len(other)} hand-ins)")
            plain = grades(course["nbgrader"])
            same = sum(1 for k in plain if {c: v for c, v in plain[k].items() if c in reference.get(k, {})}
                       == {c: v for c, v in reference.get(k, {}).items() if c in plain[k]})
            print(f"nbgrader's own grades on its subset agree cell by cell on {same}/{len(plain)} hand-ins")
            return status
        finally:
            from lossgrader.gradebook import dispose_engines

            dispose_engines()
            if not args.keep:
                shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
