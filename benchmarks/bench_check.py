"""Times lossgrader.check on every exercise with the model solution and prints a table.

Targets (CPU): median <= 20 ms per exercise after import, and all exercises together
in under half the time `python -c "import torch"` takes on the same machine.

    python benchmarks/bench_check.py [--repeat 7] [--device cpu]
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def time_import_torch(runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch"], check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="timed passes after the first one")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--import-runs", type=int, default=3)
    args = parser.parse_args()

    import_torch_s = time_import_torch(args.import_runs)

    import torch  # noqa: F401  (imported here: the figures below are "after import")
    from lossgrader import EXERCISES, check
    from lossgrader.notebooks import assignment_notebook, load_answers

    answers = {}
    for ex in EXERCISES.values():
        if ex.assignment not in answers:
            answers[ex.assignment] = load_answers(assignment_notebook(ROOT, ex.assignment))

    first, runs = {}, {ex_id: [] for ex_id in EXERCISES}
    for pass_no in range(args.repeat + 1):
        for ex_id, ex in EXERCISES.items():
            solution = answers[ex.assignment][ex.func_name]
            start = time.perf_counter()
            report = check(ex_id, solution, points=ex.points, device=args.device)
            elapsed = time.perf_counter() - start
            if not report.passed:
                print(f"model solution of {ex_id} did not pass:\n{report}", file=sys.stderr)
                return 1
            if pass_no == 0:
                first[ex_id] = elapsed
            else:
                runs[ex_id].append(elapsed)

    medians = {ex_id: statistics.median(t) for ex_id, t in runs.items()}
    print(f"{'exercise':26s} {'kind':9s} {'first ms':>9s} {'median ms':>10s}")
    for ex_id, ex in EXERCISES.items():
        print(f"{ex_id:26s} {ex.kind:9s} {first[ex_id] * 1e3:9.1f} {medians[ex_id] * 1e3:10.1f}")
    median_of_medians = statistics.median(medians.values())
    total_first = sum(first.values())
    total_warm = sum(medians.values())
    print()
    print(f"device                               {args.device}")
    print(f"median over exercises (warm)         {median_of_medians * 1e3:8.1f} ms   (target <= 20 ms)")
    print(f"all exercises, first pass            {total_first * 1e3:8.1f} ms")
    print(f"all exercises, warm (sum of medians) {total_warm * 1e3:8.1f} ms")
    print(f"python -c 'import torch' (median)    {import_torch_s * 1e3:8.1f} ms")
    print(f"ratio all-exercises / import torch   first pass {total_first / import_torch_s:.2f}, "
          f"warm {total_warm / import_torch_s:.2f}   (target < 0.5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
