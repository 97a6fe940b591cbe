"""``lossgrader``: the instructor's commands, one per step (see docs/instructor.md).

    lossgrader generate [ASSIGNMENT...]     student notebooks -> exercises/, assignments -> gradebook
    lossgrader collect SRC                  hand-ins (folder or zip, nbgrader/Canvas/Moodle) -> submitted/
    lossgrader autograde [ASSIGNMENT...]    run the tests of every submission (0 + reason when impossible)
    lossgrader feedback [ASSIGNMENT...]     feedback/<student>/<assignment>/<assignment>.html
    lossgrader export [--to grades.csv]     grades CSV (score, max_score, status, reason) and a table
                     [--format canvas|moodle]   or a CSV the platform's gradebook import accepts
    lossgrader report [--to report/index.html]  class report: score distributions, typical mistakes, failures, times
    lossgrader restore [BACKUP]             bring back a gradebook backup (.lossgrader/backups/)
    lossgrader demo [--dir DIR]             all of the above on the sample class in samples/submitted/,
                                            in a scratch course (default _build/demo-course/)
    lossgrader cluster slurm [--jobs N]     the grading cluster on Slurm (settings: [tool.lossgrader.slurm]
                                            in the course's pyproject.toml) until Ctrl-C; then
                                            lossgrader autograde --dask slurm grades on it

Student code is graded in a bubblewrap sandbox, one per hand-in (``--no-sandbox`` turns
that off and says that it is unsafe); only this process writes the gradebook.
"""
import argparse
import os
import subprocess
import sys
import time


def _root(args):
    from .course import find_course_root

    return find_course_root(args.course)


def cmd_generate(args):
    from .course import assignments
    from .gradebook import register

    root = _root(args)
    ids = args.assignments or assignments(root)
    script = os.path.join(root, "tools", "generate_exercises.py")
    if not args.gradebook_only:
        # the course's own generator (nbgrader generate_assignment in a clean copy, stamped URLs)
        proc = subprocess.run([sys.executable, script] + list(args.assignments), cwd=root)
        if proc.returncode != 0:
            return proc.returncode
    done = register(root, ids, force=True)
    print("registered in gradebook.db:", " ".join(done) if done else "(nothing to do)")
    return 0


def cmd_collect(args):
    from .collect import CollectError, collect

    root = _root(args)
    try:
        copied = collect(root, args.source, args.assignment or None, fmt=args.format, pattern=args.pattern,
                         roster=args.roster, report=args.report)
    except CollectError as exc:
        print(f"lossgrader collect: {exc}", file=sys.stderr)
        return 2
    for student, aid in copied:
        print(f"submitted/{student}/{aid}/")
    for row in copied.problems():
        print(f"{row['status']}: {row['file']}"
              + (f" ({row['student_id']}/{row['assignment']})" if row["student_id"] and row["assignment"] else "")
              + (f": {row['detail']}" if row["detail"] else ""))
    for message in copied.same_person:
        print(f"warning: {message}")
    unmatched = sum(1 for r in copied.rows if r["status"] == "unmatched")
    print(f"{len(copied)} submissions collected ({copied.format} layout)"
          + (f", {len(copied.no_notebook)} of them without a notebook (no notebook: 0 when autograded)"
             if copied.no_notebook else "")
          + (f"; {unmatched} files could not be matched" if unmatched else "") + f"; report: {copied.report}")
    return 0 if copied else 1


def _limits(args):
    limits = {}
    if getattr(args, "memory", None):
        limits["memory_bytes"] = int(args.memory * 2 ** 30)
    return limits


def cmd_autograde(args):
    from .autograde import autograde
    from .export import export, format_table

    root = _root(args)
    t0 = time.monotonic()
    results = autograde(root, args.assignments or None, args.student or None,
                        cell_timeout=args.cell_timeout, submission_timeout=args.timeout, jobs=args.jobs,
                        sandbox=not args.no_sandbox, limits=_limits(args), quiet=args.quiet,
                        dask=_dask_address(args.dask, root))
    failed = sum(1 for e in results.values() if e["status"] == "failed")
    print(f"autograded {len(results)} submissions in {time.monotonic() - t0:.1f} s"
          + (f"; {failed} could not be autograded (0 points, reason in the export)" if failed else ""))
    if not args.quiet:
        _, rows = export(root)
        print(format_table(rows))
    return 0


def _dask_address(address, root):
    """--dask slurm names the course's grading cluster: the executor gets the course folder."""
    return f"slurm:{root}" if address == "slurm" else address


def cmd_cluster(args):
    from .cluster import serve

    scheduler_file = os.path.abspath(args.scheduler_file) if args.scheduler_file else None
    return serve(_root(args), {"jobs": args.jobs, "scheduler_file": scheduler_file})


def cmd_feedback(args):
    from .feedback import feedback
    from .gradebook import check_readable, db_url

    root = _root(args)
    check_readable(db_url(root))   # an unreachable or damaged gradebook: one clear message (main), no page written
    written = feedback(root, args.assignments or None, args.student or None)
    print(f"{len(written)} feedback files under feedback/")
    return 0


def cmd_export(args):
    from .collect import CollectError
    from .export import ExportError, export, export_lms, format_table

    root = _root(args)
    if args.format != "csv":
        try:
            path, rows, notes = export_lms(root, args.format, to=args.to, roster=args.roster,
                                           assignment=args.assignment, column=args.column,
                                           points=args.points, worksheet=args.worksheet, language=args.language)
        except (ExportError, CollectError, OSError) as exc:
            print(f"lossgrader export: {exc}", file=sys.stderr)
            return 2
        for problem in notes:
            print(f"left out: {problem}")
        for mark in notes.marked:
            print(f"marked: {mark}")
        for note in notes.notes:
            print(f"note: {note}")
        print(f"written: {path} ({len(rows)} students, {args.format} gradebook import)")
        return 0 if rows else 1
    path, rows = export(root, args.to)
    print(format_table(rows))
    print(f"\nwritten: {path}")
    return 0


def cmd_report(args):
    from .classreport import class_report

    path = class_report(_root(args), args.to)
    print(f"written: {path}")
    return 0


def cmd_restore(args):
    from .gradebook import backup_records, restore

    root = _root(args)
    records = backup_records(root)
    if args.list:
        if not records:
            print("no gradebook backups yet (each autograde batch takes one first)")
            return 0
        print(f"gradebook backups in {os.path.dirname(records[0]['path'])}/, oldest first: "
              "`lossgrader restore NAME` brings one back, `lossgrader restore` the newest (the last)")
        for record in records:
            print(f"{record['name']}  {_local_time(record['time'])}  {_preceded(record)}")
        return 0
    path = restore(root, args.backup)
    was = {r["path"]: r for r in records}.get(path)
    print(f"restored {path} -> gradebook.db" + (f" (taken {_local_time(was['time'])}, {_preceded(was)})" if was else "")
          + "; the gradebook it replaced was backed up first")
    return 0


def _local_time(when):
    return when.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def _preceded(record, shown=5):
    """What a backup was taken before, and the hand-ins graded after it (what restoring it takes back)."""
    if record["graded"] is None:
        return "made by an older lossgrader: what it preceded is not recorded"
    graded = record["graded"]
    text = f"before {record['before']}; "
    if not graded:
        return text + "nothing graded after it"
    more = f" and {len(graded) - shown} more" if len(graded) > shown else ""
    return text + f"graded after it: {len(graded)} hand-in{'s' if len(graded) > 1 else ''} ({', '.join(graded[:shown])}{more})"


def cmd_demo(args):
    from .demo import demo

    root = _root(args)
    print(demo(root, cell_timeout=args.cell_timeout, jobs=args.jobs, dest=args.dir))
    return 0


def build_parser():
    parser = argparse.ArgumentParser(
        prog="lossgrader",
        description="Instructor pipeline of the loss-functions course (nbgrader underneath).")
    parser.add_argument("--course", help="course directory (default: the one holding nbgrader_config.py "
                                         "at or above the current directory)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="generate exercises/ from solutions/ and register the assignments")
    p.add_argument("assignments", nargs="*")
    p.add_argument("--gradebook-only", action="store_true",
                   help="only (re)register the assignments in gradebook.db, leave exercises/ as committed")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("collect", help="copy hand-ins from a folder or zip (nbgrader, Canvas, Moodle) into submitted/")
    p.add_argument("source", help="folder or .zip: <student>/<assignment>/<assignment>.ipynb, "
                                  "<student>/<assignment>.ipynb, <student>_<assignment>.ipynb, "
                                  "a Canvas or a Moodle submissions download")
    p.add_argument("--assignment", action="append",
                   help="only this assignment (repeatable); with one, every notebook of a Canvas/Moodle/"
                        "--pattern download is a hand-in of it whatever its name")
    p.add_argument("--format", choices=["auto", "nbgrader", "canvas", "moodle"], default="auto",
                   help="file-naming convention of the source (default: detected)")
    p.add_argument("--pattern", default=None,
                   help="regular expression searched in each file's path, with the named group "
                        "(?P<student>...) and optionally (?P<assignment>...), (?P<timestamp>...)")
    p.add_argument("--roster", default=None,
                   help="CSV mapping platform ids/names to student ids (columns: see docs/instructor.md)")
    p.add_argument("--report", default="collect-report.csv",
                   help="CSV listing every file and what became of it (default collect-report.csv)")
    p.set_defaults(func=cmd_collect)

    p = sub.add_parser("autograde", help="autograde the submissions in submitted/")
    p.add_argument("assignments", nargs="*")
    p.add_argument("--student", action="append", help="only this student (repeatable)")
    p.add_argument("--cell-timeout", type=int, default=None,
                   help="seconds per cell (default: nbgrader_config.py's Execute.timeout)")
    p.add_argument("--timeout", type=float, default=900,
                   help="seconds for one whole submission before its grader is killed (default 900)")
    p.add_argument("--jobs", "-j", type=int, default=1,
                   help="submissions graded side by side (one sandboxed kernel each; default 1)")
    p.add_argument("--memory", type=float, default=None,
                   help="memory limit of one hand-in's sandbox in GiB (default 4)")
    p.add_argument("--dask", metavar="CLUSTER", default=None,
                   help="grade on Dask distributed instead of local threads: local[:N] (a LocalCluster of N "
                        "single-thread worker processes), tcp://HOST:PORT (a running scheduler), the path of "
                        "a scheduler file (scheduler.json) or slurm (the course's grading cluster: the one "
                        "lossgrader cluster slurm runs, or one started on Slurm for the batch); see "
                        "docs/instructor.md, 'Beyond one machine'")
    p.add_argument("--no-sandbox", action="store_true",
                   help="run student code without the bubblewrap sandbox (UNSAFE: only for trusted hand-ins)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress and no grade table (for scripts)")
    p.set_defaults(func=cmd_autograde)

    p = sub.add_parser("feedback", help="write the HTML feedback of the autograded submissions")
    p.add_argument("assignments", nargs="*")
    p.add_argument("--student", action="append")
    p.set_defaults(func=cmd_feedback)

    p = sub.add_parser("export", help="write the grades CSV and print the grade table")
    p.add_argument("--to", default=None, help="CSV path (default grades.csv, canvas-grades.csv or "
                                              "moodle-grades-<assignment>.csv in the course directory)")
    p.add_argument("--format", choices=["csv", "canvas", "moodle"], default="csv",
                   help="csv: lossgrader's grades.csv; canvas/moodle: that platform's gradebook import")
    p.add_argument("--roster", default=None, help="CSV with the students' platform ids (see docs/instructor.md)")
    p.add_argument("--assignment", default=None, help="the one assignment to export (required for Moodle)")
    p.add_argument("--column", default=None,
                   help="Canvas column title, e.g. 'Homework 2 (12345)' from a Canvas gradebook export (default: the "
                        "--worksheet or --roster column that names the assignment)")
    p.add_argument("--points", type=float, default=None,
                   help="rescale scores to this maximum (the assignment's points on the platform)")
    p.add_argument("--worksheet", default=None,
                   help="Moodle: fill in the grading worksheet downloaded from Moodle (English or Chinese) instead "
                        "of writing a new one; Canvas: a Canvas gradebook export, for the column titles, points, "
                        "names and sections")
    p.add_argument("--language", choices=["en", "zh_cn"], default=None,
                   help="Moodle: the teacher's interface language of a new worksheet (column names, 'Participant N' "
                        "or '参与人N'); default: the worksheet's, else en")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("report", help="write the class report (one offline HTML page for the instructor)")
    p.add_argument("--to", default=None,
                   help="HTML path (default report/index.html in the course directory)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("restore", help="bring back a gradebook backup (default: the newest)")
    p.add_argument("backup", nargs="?", default=None, help="backup file name or path (see --list)")
    p.add_argument("--list", action="store_true",
                   help="list the backups, oldest first and newest last, each with the time it was taken, what it "
                        "was taken before (an autograde batch, a restore) and the hand-ins graded after it")
    p.set_defaults(func=cmd_restore)

    p = sub.add_parser("demo", help="grade the sample class in samples/submitted/ end to end, in a scratch "
                                    "course (the course's own submitted/ and gradebook are not touched)")
    p.add_argument("--cell-timeout", type=int, default=None)
    p.add_argument("--jobs", "-j", type=int, default=2,
                   help="submissions graded side by side (default 2)")
    p.add_argument("--dir", default=None,
                   help="where to make the scratch course (default _build/demo-course/ in the course folder; "
                        "made afresh on every run)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("cluster", help="run the grading cluster (Dask on Slurm) until Ctrl-C; "
                                       "lossgrader autograde --dask slurm grades on it")
    p.add_argument("system", choices=["slurm"], help="the batch system (settings: [tool.lossgrader.slurm] in "
                                                    "the course's pyproject.toml; docs/instructor.md, 'Slurm')")
    p.add_argument("--jobs", type=int, default=None, help="Slurm jobs to keep running (default: the settings' jobs)")
    p.add_argument("--scheduler-file", default=None,
                   help="where to write the scheduler file (default: the settings' scheduler_file, "
                        ".lossgrader/slurm/scheduler.json)")
    p.set_defaults(func=cmd_cluster)
    return parser


#: Commands that lossgrader's libraries run by name from PATH, and the module each one is:
#: nbgrader runs ``alembic heads`` when it creates a gradebook (lossgrader generate, the
#: first autograde).
TOOLS_RUN_BY_NAME = {"alembic": "alembic"}


def use_this_environment():
    """Make the commands run by name (TOOLS_RUN_BY_NAME) this environment's, as if it were
    activated: called by its full path (``~/venv/bin/lossgrader`` from cron, a script, a
    pipx install), PATH does not hold the environment's bin/, and nbgrader's ``alembic``
    was not found (or another Python's ran). The environment's bin/ goes first on PATH;
    a tool it lacks there (a ``--system-site-packages`` environment keeps its dependencies'
    scripts with the base Python) is run as ``python -m MODULE`` by this Python, through
    a small script in a private folder that goes first as well. Returns the folders added
    to PATH."""
    import atexit
    import shlex
    import shutil
    import tempfile

    bindir = os.path.dirname(os.path.abspath(sys.executable))
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p]
    added = [] if path[:1] == [bindir] else [bindir]
    missing = {tool: module for tool, module in TOOLS_RUN_BY_NAME.items()
               if not os.access(os.path.join(bindir, tool), os.X_OK)}
    if missing:
        shims = tempfile.mkdtemp(prefix="lossgrader-tools-")
        atexit.register(shutil.rmtree, shims, True)
        for tool, module in missing.items():
            script = os.path.join(shims, tool)
            with open(script, "w", encoding="utf-8") as fh:
                fh.write(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m {module} \"$@\"\n")
            os.chmod(script, 0o755)
        added.insert(0, shims)
    if added:
        os.environ["PATH"] = os.pathsep.join(added + [p for p in path if p not in added])
    # Jupyter's data files (nbconvert's base templates, which the feedback pages extend) are
    # in the base Python's share/jupyter when the environment was made with
    # --system-site-packages: jupyter_core looks in the environment's own only
    base = os.path.join(sys.base_prefix, "share", "jupyter")
    jupyter_path = [p for p in os.environ.get("JUPYTER_PATH", "").split(os.pathsep) if p]
    if sys.base_prefix != sys.prefix and os.path.isdir(base) and base not in jupyter_path:
        os.environ["JUPYTER_PATH"] = os.pathsep.join(jupyter_path + [base])
    return added


def main(argv=None):
    from .gradebook import GradebookError

    args = build_parser().parse_args(argv)
    use_this_environment()
    try:
        return args.func(args)
    except GradebookError as exc:   # an unreadable gradebook, an unreachable db_url: the message, no traceback
        print(f"lossgrader {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
