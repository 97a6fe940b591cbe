"""End-to-end test of the instructor pipeline (lossgrader autograde/feedback/export) on a
temporary copy of the course: the sample class plus broken and hostile hand-ins of
02_regression (see tests/hostile_notebooks.py and docs/instructor.md).

Nothing is written into the repository: the gradebook, submitted/, autograded/ and
feedback/ live under pytest's tmp_path."""
import csv
import os
import re
import shutil
import subprocess
import sys

import nbformat
import pytest

pytest.importorskip("nbgrader")

from lossgrader import gradebook  # noqa: E402
from lossgrader.autograde import autograde  # noqa: E402
from lossgrader.cli import main as cli_main  # noqa: E402
from lossgrader.export import export  # noqa: E402
from lossgrader.feedback import feedback  # noqa: E402

import hostile_notebooks as H  # noqa: E402
from course_copy import copy_course  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
A = H.ASSIGNMENT
CELL_TIMEOUT = 30          # seconds per cell: the loops below cost one timeout each
SAMPLES = ("demo_full", "demo_bugs", "demo_unfinished")


def _sample(student):
    return os.path.join(ROOT, "samples", "submitted", student, A, A + ".ipynb")


def _copy_course(dest):
    copy_course(dest, [A])


def _submit(root, student, text):
    d = os.path.join(root, "submitted", student, A)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, A + ".ipynb"), "w", encoding="utf-8") as fh:
        fh.write(text)


def _cells(root, student):
    return gradebook.submission_scores(gradebook.db_url(root), A, student)


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("course"))
    _copy_course(root)
    full = nbformat.read(_sample("demo_full"), as_version=4)
    bugs = nbformat.read(_sample("demo_bugs"), as_version=4)
    expected = {}
    for student in SAMPLES:
        shutil.copytree(os.path.join(ROOT, "samples", "submitted", student, A),
                        os.path.join(root, "submitted", student, A))
    for name in ("exits", "loops", "import_crash", "noisy", "cheats", "import_tricks",
                 "display_tricks", "tampered", "stripped", "not_json", "not_notebook"):
        text, cells = getattr(H, name)(full)
        _submit(root, "x_" + name, text)
        expected["x_" + name] = cells
    _submit(root, "colab_full", H.as_colab(full))
    _submit(root, "colab_bugs", H.as_colab(bugs))
    results = autograde(root, cell_timeout=CELL_TIMEOUT, progress=False, jobs=2)
    return {"root": root, "expected": expected, "results": results}


def test_every_submission_has_an_explicit_grade(course):
    root = course["root"]
    path, rows = export(root)
    students = sorted(os.listdir(os.path.join(root, "submitted")))
    assert sorted(r["student_id"] for r in rows) == students
    with open(path, newline="", encoding="utf-8") as fh:
        exported = list(csv.DictReader(fh))
    assert len(exported) == len(students)
    for row in exported:
        assert row["assignment"] == A
        assert float(row["max_score"]) == 6.0
        assert row["score"] != ""
        assert row["status"] in ("autograded", "failed")
        if row["status"] == "failed":
            assert row["reason"]
    for student in students:
        score, max_score, cells = _cells(root, student)
        assert max_score == 6.0
        assert sorted(cells) == sorted(H.TESTS)
        assert all(v is not None for v in cells.values()), (student, cells)


def test_samples_get_the_expected_grades(course):
    root = course["root"]
    full = _cells(root, "demo_full")
    assert full[0] == 6.0 and all(v == 1.0 for v in full[2].values())
    unfinished = _cells(root, "demo_unfinished")[2]
    assert unfinished == H.scores(mae_grad=0, huber=0, smooth_l1=0)
    bugs = _cells(root, "demo_bugs")[2]
    # the seed's mistakes (an MAE that computes MSE, an MSE gradient without 1/n) and two more
    # lose marks; a bug can still pass some cases (e.g. the 1/n does not matter when n = 1)
    assert bugs["test_mse"] == 1.0
    for test in ("test_mse_grad", "test_mae", "test_mae_grad", "test_huber"):
        assert bugs[test] < 1.0, (test, bugs[test])


@pytest.mark.parametrize("case", ["exits", "loops", "import_crash", "noisy", "cheats", "import_tricks",
                                  "display_tricks", "tampered", "stripped"])
def test_hostile_submission_gets_what_it_deserves(course, case):
    student = "x_" + case
    expected = course["expected"][student]
    score, max_score, cells = _cells(course["root"], student)
    assert course["results"][(student, A)]["status"] == "autograded", course["results"][(student, A)]
    assert cells == expected, f"{case}: got {cells}, expected {expected}"
    assert max_score == 6.0
    assert score == sum(expected.values())


@pytest.mark.parametrize("case,words", [("not_json", "JSON"), ("not_notebook", "notebook")])
def test_unreadable_submission_gets_zero_and_a_reason(course, case, words):
    student = "x_" + case
    entry = course["results"][(student, A)]
    assert entry["status"] == "failed" and words in entry["reason"]
    score, max_score, cells = _cells(course["root"], student)
    assert score == 0.0 and max_score == 6.0
    assert all(v == 0.0 for v in cells.values())
    rows = {r["student_id"]: r for r in gradebook.grade_rows(course["root"])}
    assert rows[student]["status"] == "failed" and words in rows[student]["reason"]


def test_colab_notebook_grades_like_jupyter(course):
    root = course["root"]
    assert _cells(root, "colab_full") == _cells(root, "demo_full")
    assert _cells(root, "colab_bugs") == _cells(root, "demo_bugs")


def test_feedback_shows_hidden_results_not_hidden_code(course):
    root = course["root"]
    written = feedback(root, only_students=["demo_bugs", "x_not_json", "x_exits"], progress=False)
    assert len(written) == 3
    with open(os.path.join(root, "feedback", "demo_bugs", A, A + ".html"), encoding="utf-8") as fh:
        page = fh.read()
    # the hidden test code is shown neither in the cells nor in tracebacks quoting them
    assert "hidden=True" not in page and "BEGIN HIDDEN TESTS" not in page
    shown = re.search(r"得分 <b>([0-9.]+) / 6</b>", page)
    assert shown and float(shown.group(1)) == pytest.approx(_cells(root, "demo_bugs")[0], abs=0.006)  # 2 decimals
    assert "MAE" in page and "<table" in page            # the Chinese feedback tables of check
    with open(os.path.join(root, "feedback", "x_not_json", A, A + ".html"), encoding="utf-8") as fh:
        failed = fh.read()
    assert "自动评分失败" in failed and "JSON" in failed
    with open(os.path.join(root, "feedback", "x_exits", A, A + ".html"), encoding="utf-8") as fh:
        assert "内核" in fh.read()                        # the restarted-kernel notice is shown


def test_autograding_again_changes_nothing(course):
    root = course["root"]
    before = {r["student_id"]: (r["score"], r["status"]) for r in gradebook.grade_rows(root)}
    cells_before = {s: _cells(root, s) for s in before}
    autograde(root, only_students=["demo_bugs", "x_exits", "x_not_json"],
                       cell_timeout=CELL_TIMEOUT, progress=False)
    after = {r["student_id"]: (r["score"], r["status"]) for r in gradebook.grade_rows(root)}
    assert after == before
    assert {s: _cells(root, s) for s in before} == cells_before


def test_resubmitting_a_broken_file_removes_old_marks(course, tmp_path):
    """A student graded 6/6 who then hands in an unreadable file must not keep the old marks."""
    root = str(tmp_path)
    _copy_course(root)
    shutil.copytree(os.path.join(course["root"], "submitted", "demo_full"), os.path.join(root, "submitted", "demo_full"))
    shutil.copy2(os.path.join(course["root"], "gradebook.db"), os.path.join(root, "gradebook.db"))
    assert _cells(root, "demo_full")[0] == 6.0
    _submit(root, "demo_full", "{ not json")
    autograde(root, cell_timeout=CELL_TIMEOUT, progress=False)
    assert _cells(root, "demo_full")[0] == 0.0
    assert _cells(root, "demo_bugs") == _cells(course["root"], "demo_bugs")   # others kept


def test_submission_over_its_time_limit_is_killed_and_zeroed(tmp_path):
    root = str(tmp_path)
    _copy_course(root)
    full = nbformat.read(_sample("demo_full"), as_version=4)
    a = H.answer(full, "mse")
    a.source = H.UNINTERRUPTIBLE_LOOP + a.source
    _submit(root, "slow", H.text(full))
    shutil.copytree(os.path.join(ROOT, "samples", "submitted", "demo_unfinished", A),
                    os.path.join(root, "submitted", "zz_after", A))
    # the cell timeout is far away: only the limit for the whole hand-in can stop "slow"
    results = autograde(root, cell_timeout=600, submission_timeout=45, progress=False)
    assert results[("slow", A)]["status"] == "failed"
    assert "time limit" in results[("slow", A)]["reason"]
    assert _cells(root, "slow")[0] == 0.0
    # the batch went on after the kill
    assert results[("zz_after", A)]["status"] == "autograded"
    assert _cells(root, "zz_after")[0] == 3.0
    # no kernel of the killed worker is left running in the course directory
    if os.path.isdir("/proc"):
        leftover = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if os.readlink(f"/proc/{pid}/cwd").startswith(root):
                    leftover.append(pid)
            except OSError:
                pass
        assert leftover == []


def test_cli_collect_and_export(course, tmp_path, capsys):
    root = str(tmp_path / "c")
    os.makedirs(root)
    _copy_course(root)
    inbox = tmp_path / "inbox"
    (inbox / "li_lei").mkdir(parents=True)
    shutil.copy2(_sample("demo_bugs"), inbox / "li_lei" / (A + ".ipynb"))
    shutil.copy2(_sample("demo_full"), inbox / ("han_meimei_" + A + ".ipynb"))
    assert cli_main(["--course", root, "collect", str(inbox)]) == 0
    assert os.path.isfile(os.path.join(root, "submitted", "li_lei", A, A + ".ipynb"))
    assert os.path.isfile(os.path.join(root, "submitted", "han_meimei", A, A + ".ipynb"))
    shutil.copy2(os.path.join(course["root"], "gradebook.db"), os.path.join(root, "gradebook.db"))
    capsys.readouterr()
    assert cli_main(["--course", root, "export"]) == 0
    out = capsys.readouterr().out
    assert "demo_full" in out and "6/6" in out
    assert os.path.isfile(os.path.join(root, "grades.csv"))


def test_committed_samples_match_the_exercises():
    """samples/submitted/ is what samples/make_samples.py derives from exercises/ and solutions/."""
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "samples", "make_samples.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    students = sorted(os.listdir(os.path.join(ROOT, "samples", "submitted")))
    assert students == sorted(SAMPLES)
    for student in SAMPLES:
        assert sorted(os.listdir(os.path.join(ROOT, "samples", "submitted", student))) == sorted(
            os.listdir(os.path.join(ROOT, "exercises")))
