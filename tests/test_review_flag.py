"""A test cell the grader's signals cannot decide goes to a person (issue 14, item 3).

The flag's interface, which nbgrader's own autograde path also builds on:

* the autograded notebook's test cell carries ``metadata["lossgrader"]["review"] =
  {"reason": English, "auto_score": the judge's score}``, its feedback output says in
  Chinese that it waits for a teacher and shows that score, and its score is 0.0;
* ``HandinResult.review``: grade_id -> the same dict;
* the gradebook stores auto_score 0.0 and needs_manual_grade True (the formgrader lists the
  cell as needing a manual grade); a manual score given there is kept and counts, also
  after autograding again;
* ``lossgrader export`` shows the hand-in as "needs manual grading".
"""
import os
import shutil

import nbformat
import pytest

import hostile_notebooks as H
from course_copy import copy_course
from lossgrader import gradebook
from lossgrader.results import HandinResult

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
A = "02_regression"
STUDENT = "debugger"


def _full():
    return nbformat.read(os.path.join(ROOT, "samples", "submitted", "demo_full", A, A + ".ipynb"), as_version=4)


def _grades(root, student):
    """{grade_id: (auto_score, manual_score, needs_manual_grade, score)} of a submission."""
    from nbgrader.api import Gradebook
    with Gradebook(gradebook.db_url(root)) as gb:
        sub = gb.find_submission(A, student)
        return {g.cell.name: (g.auto_score, g.manual_score, g.needs_manual_grade, g.score)
                for nb in sub.notebooks for g in nb.grades}


def _formgrader_gives(root, student, grade_id, manual_score):
    """What the formgrader's Save does: nbgrader's own GradeHandler.put on the grade row."""
    import inspect

    from nbgrader.api import Gradebook
    from nbgrader.server_extensions.formgrader.apihandlers import GradeHandler

    with Gradebook(gradebook.db_url(root)) as gb:
        sub = gb.find_submission(A, student)
        row = next(g for nb in sub.notebooks for g in nb.grades if g.cell.name == grade_id)

        class Request:
            gradebook = gb
            written = []

            def get_json_body(self):
                return {"manual_score": manual_score}

            def write(self, text):
                self.written.append(text)
        inspect.unwrap(GradeHandler.put)(Request(), row.id)


def test_write_result_stores_a_flagged_cell_for_manual_grading(tmp_path):
    """The gradebook side alone (no sandbox needed): a flagged test cell gets 0.0 and
    needs_manual_grade, whatever score the result carries; a manual score counts and stays."""
    pytest.importorskip("nbgrader")
    root = copy_course(tmp_path / "course", [A], exercises=False)
    gradebook.register(root, [A])
    url = gradebook.db_url(root)
    tests = {"test_mse": 1.0, "test_mse_grad": 1.0, "test_mae": 1.0, "test_mae_grad": 1.0,
             "test_huber": 1.0, "test_smooth_l1": 1.0}
    result = HandinResult("s", A, scores={**tests, "test_mse": 0.0}, max_scores=dict(tests),
                          review={"test_mse": {"reason": "globals() in cell 5", "auto_score": 1.0}})
    gradebook.write_result(url, result)
    rows = _grades(root, "s")
    assert rows["test_mse"][:3] == (0.0, None, True)
    assert rows["test_mae"][:3] == (1.0, None, False)
    rows = {r["student_id"]: r for r in gradebook.grade_rows(root)}
    assert rows["s"]["status"] == "needs manual grading" and "test_mse" in rows["s"]["reason"]
    _formgrader_gives(root, "s", "test_mse", 1.0)
    assert _grades(root, "s")["test_mse"][1:] == (1.0, False, 1.0)
    assert gradebook.submission_scores(url, A, "s")[0] == 6.0
    gradebook.write_result(url, result)          # graded again: the person's score stays and counts
    assert _grades(root, "s")["test_mse"] == (0.0, 1.0, True, 1.0)
    assert gradebook.submission_scores(url, A, "s")[0] == 6.0
    with pytest.raises(gradebook.InvalidResult):
        gradebook.write_result(url, HandinResult("s", A, scores=tests, max_scores=dict(tests),
                                                 review={"bonus": {"reason": "x", "auto_score": 1.0}}))


@pytest.mark.timeout(600)
def test_an_honest_debug_wrapper_is_flagged_with_its_scores_not_zeroed(tmp_path):
    """Correct answers wrapped through globals() by a debug decorator (tests/hostile_notebooks.py
    debug_wrappers): the back-door scan once zeroed the notebook; now every test cell waits for a
    person, who sees the automatic full marks, and whose score then counts."""
    pytest.importorskip("nbgrader")
    from lossgrader.autograde import autograde
    from lossgrader.feedback import feedback
    from lossgrader.sandbox import bwrap_problem
    if bwrap_problem():
        pytest.skip(f"no sandbox here: {bwrap_problem()}")
    root = copy_course(tmp_path / "course", [A])
    text, expected = H.debug_wrappers(_full())
    folder = os.path.join(root, "submitted", STUDENT, A)
    os.makedirs(folder)
    with open(os.path.join(folder, A + ".ipynb"), "w", encoding="utf-8") as fh:
        fh.write(text)
    autograde(root, cell_timeout=60, progress=False, quiet=True)

    graded = nbformat.read(os.path.join(root, "autograded", STUDENT, A, A + ".ipynb"), as_version=4)
    flagged = {c.metadata["nbgrader"]["grade_id"]: c for c in graded.cells if "lossgrader" in c.metadata}
    assert flagged.keys() == H.REVIEWED["debug_wrappers"].keys()
    for grade_id, cell in flagged.items():
        review = cell.metadata["lossgrader"]["review"]
        assert review["auto_score"] == H.REVIEWED["debug_wrappers"][grade_id]
        assert "globals" in review["reason"] and "namespace introspection" in review["reason"]
        out = cell.outputs[0]
        assert out["data"]["text/plain"] == "0.0"
        assert "等待老师人工复核" in out["data"]["text/html"] and "1 / 1" in out["data"]["text/html"]
        assert "全部通过" in out["data"]["text/html"]        # the automatic result, for the person to confirm

    rows = _grades(root, STUDENT)
    assert {g: r[:3] for g, r in rows.items()} == {g: (0.0, None, True) for g in expected}
    row = next(r for r in gradebook.grade_rows(root) if r["student_id"] == STUDENT)
    assert row["status"] == "needs manual grading" and row["score"] == 0.0
    assert all(g in row["reason"] for g in expected)

    feedback(root, progress=False)
    with open(os.path.join(root, "feedback", STUDENT, A, A + ".html"), encoding="utf-8") as fh:
        page = fh.read()
    assert page.count("等待老师人工复核") == len(expected)

    _formgrader_gives(root, STUDENT, "test_mse", 1.0)
    assert _grades(root, STUDENT)["test_mse"][1:] == (1.0, False, 1.0)
    shutil.rmtree(os.path.join(root, "autograded"))
    autograde(root, cell_timeout=60, progress=False, quiet=True)    # again: the person's score stays
    rows = _grades(root, STUDENT)
    assert rows["test_mse"] == (0.0, 1.0, True, 1.0)
    assert gradebook.submission_scores(gradebook.db_url(root), A, STUDENT)[0] == 1.0
