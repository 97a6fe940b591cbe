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

It takes long (tens of minutes on 2 cores): it is a benchmark, not a test.
"""
import argparse
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_autograde  # noqa: E402  (its breakdown of the recorded timings)
from lossgrader.nbgrader_plugins import use_stock_autograde  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLES = ("demo_full", "demo_bugs", "demo_unfinished")


def cohort(n, aids):
    """[(student, assignment, sample)] of the synthetic class."""
    return [(f"s{i:03d}", aids[i % len(aids)], SAMPLES[(i // len(aids)) % len(SAMPLES)]) for i in range(n)]


def fresh_course(parent, name, handins, aids):
    root = os.path.join(parent, name)
    os.makedirs(root)
    for item in ("nbgrader_config.py", "_config.yml"):
        shutil.copy(os.path.join(ROOT, item), os.path.join(root, item))
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
    """{(student, assignment): {grade cell: score}} straight from the gradebook (SQLite)."""
    con = sqlite3.connect(os.path.join(root, "gradebook.db"))
    rows = con.execute(
        "SELECT student.id, assignment.name, base_cell.name, "
        "COALESCE(grade.manual_score, grade.auto_score) "
        "FROM grade JOIN submitted_notebook ON grade.notebook_id = submitted_notebook.id "
        "JOIN submitted_assignment ON submitted_notebook.assignment_id = submitted_assignment.id "
        "JOIN student ON submitted_assignment.student_id = student.id "
        "JOIN assignment ON submitted_assignment.assignment_id = assignment.id "
        "JOIN base_cell ON grade.cell_id = base_cell.id").fetchall()
    con.close()
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--handins", type=int, default=200)
    parser.add_argument("--jobs", "-j", type=int, default=2)
    parser.add_argument("--nbgrader-subset", type=int, default=20)
    parser.add_argument("--assignments", nargs="+", default=["01_overview", "02_regression"])
    parser.add_argument("--no-sandbox", action="store_true")
    parser.add_argument("--keep", default=None, help="keep the course copies in this folder")
    args = parser.parse_args()
    from lossgrader.sandbox import bwrap_problem

    sandbox = not args.no_sandbox and bwrap_problem() is None
    handins = cohort(args.handins, args.assignments)
    subset = handins[:args.nbgrader_subset]
    tmp = args.keep or tempfile.mkdtemp(prefix="bench-cohort-")
    n = len(handins)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"synthetic class: {n} hand-ins ({', '.join(args.assignments)} x {', '.join(SAMPLES)}), "
          f"{os.cpu_count()} CPUs, load average {load:.1f} at start, sandbox {'on' if sandbox else 'OFF'}",
          flush=True)
    times, course = {}, {}
    try:
        course["nbgrader"] = fresh_course(tmp, "nbgrader", subset, sorted({a for _, a, _ in subset}))
        use_stock_autograde(course["nbgrader"])    # the anchor: nbgrader as it ships
        t = nbgrader(course["nbgrader"], sorted({a for _, a, _ in subset}))
        times["nbgrader"] = t * n / len(subset)
        print(f"nbgrader autograde: {len(subset)} hand-ins in {t:.1f} s -> {times['nbgrader']:.0f} s "
              f"extrapolated to {n}", flush=True)
        for label, executor in ((f"lossgrader -j {args.jobs}", ["-j", str(args.jobs)]),
                                (f"lossgrader --dask local:{args.jobs}", ["--dask", f"local:{args.jobs}"])):
            course[label] = fresh_course(tmp, label.split()[-1].replace(":", "_").lstrip("-"), handins,
                                         args.assignments)
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
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
