"""Autograding the sample class: plain ``nbgrader autograde`` against ``lossgrader autograde``.

Both run in one invocation on fresh copies of the course with the sample class
(samples/submitted/: 3 students x 6 assignments) and print their wall times side by side,
the ratio, and where lossgrader's time goes per hand-in (kernel start, answer cells, test
cells, student code inside the tests), from the timings the trusted judge recorded.

    python benchmarks/bench_autograde.py [--jobs 2] [--no-sandbox]

Target (issues 7 and 10): ratio <= 0.25 with the sandbox on and -j 2.
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

from lossgrader.nbgrader_plugins import use_stock_autograde

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COURSE = ("nbgrader_config.py", "_config.yml", "solutions", "tools")


def fresh_course(parent, name):
    root = os.path.join(parent, name)
    os.makedirs(root)
    for item in COURSE:
        src = os.path.join(ROOT, item)
        (shutil.copytree if os.path.isdir(src) else shutil.copy)(src, os.path.join(root, item))
    shutil.copytree(os.path.join(ROOT, "samples", "submitted"), os.path.join(root, "submitted"))
    return root


def assignments(root):
    return sorted(os.listdir(os.path.join(root, "solutions")))


def register(root):
    """Both graders start from a gradebook that knows the assignments (not timed)."""
    subprocess.run([sys.executable, "-c", "import sys; from lossgrader.gradebook import register; "
                    "register(sys.argv[1], sys.argv[2:])", root, *assignments(root)], check=True, cwd=root)


def run_nbgrader(root):
    t0 = time.perf_counter()
    for aid in assignments(root):
        subprocess.run(["nbgrader", "autograde", aid, "--force", "--create", "--log-level=ERROR"],
                       cwd=root, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def run_lossgrader(root, jobs, sandbox):
    cmd = [sys.executable, "-m", "lossgrader.cli", "autograde", "-j", str(jobs), "--quiet"]
    if not sandbox:
        cmd.append("--no-sandbox")
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=root, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def breakdown(root):
    with open(os.path.join(root, "lossgrader-status.json"), encoding="utf-8") as fh:
        status = json.load(fh)
    phases = {}
    for entry in status.values():
        for phase, seconds in (entry.get("timings") or {}).items():
            phases.setdefault(phase, []).append(seconds)
    return status, phases


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", "-j", type=int, default=2)
    parser.add_argument("--no-sandbox", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-autograde-") as tmp:
        plain, ours = fresh_course(tmp, "nbgrader"), fresh_course(tmp, "lossgrader")
        use_stock_autograde(plain)       # the anchor: nbgrader as it ships, not this course's sandboxed steps
        register(plain)
        register(ours)
        n = sum(len(os.listdir(os.path.join(plain, "submitted", s))) for s in os.listdir(os.path.join(plain, "submitted")))
        t_plain = run_nbgrader(plain)
        t_ours = run_lossgrader(ours, args.jobs, not args.no_sandbox)
        status, phases = breakdown(ours)
    label = f"lossgrader autograde -j {args.jobs}" + (" --no-sandbox" if args.no_sandbox else " (sandboxed)")
    print(f"sample class: {n} hand-ins, {os.cpu_count()} CPUs")
    print(f"{'grader':<44}{'wall s':>8}{'s/hand-in':>11}")
    print(f"{'nbgrader autograde (sequential)':<44}{t_plain:>8.1f}{t_plain / n:>11.2f}")
    print(f"{label:<44}{t_ours:>8.1f}{t_ours / n:>11.2f}")
    print(f"ratio lossgrader / nbgrader: {t_ours / t_plain:.2f}  (target <= 0.25)")
    print("\nwhere a hand-in's time goes (lossgrader, median and max over hand-ins, seconds):")
    for phase, values in sorted(phases.items(), key=lambda kv: -statistics.median(kv[1])):
        print(f"  {phase:<26}{statistics.median(values):>7.2f}{max(values):>8.2f}")
    failed = [k for k, v in status.items() if v.get("status") != "autograded"]
    if failed:
        print("failed hand-ins:", ", ".join(failed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
