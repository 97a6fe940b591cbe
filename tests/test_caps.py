"""Everything kept per hand-in is capped by the coordinator (lossgrader/autograde.py:
bound_result, status_entry; docs/instructor.md, "Threat model"), whatever a worker returns.

A worker's result is untrusted data: on Dask it comes from another process, and most of it
(outputs, case messages, the log) was produced by the hand-in. The batch below is graded by
the real pipeline (local pool, the sample class, trusted: no sandbox needed), with the
worker's grade_handin wrapped so that three hand-ins come back hostile:

* ``x_flood``: graded honestly (a copy of demo_full), then its result is inflated: megabytes
  of output in every cell, a huge message and hint in every case record, a huge log, reason
  and timings, and a student name, an assignment and a notebook name that point outside;
* ``x_garbage``: a result whose notebook is megabytes of text that is not JSON;
* ``x_retry``: a failure "grading failed: ..." with a huge reason and log (graded again once).

Then: each autograded notebook, status entry, log and feedback page is within its cap, with
a Chinese note in the notebook and the page and an English one in the status and log; the
rest of the batch is graded, and the gradebook holds the right scores.
"""
from __future__ import annotations

import io
import json
import os
import shutil

import nbformat
import pytest

pytest.importorskip("nbgrader")

from lossgrader import autograde as ag  # noqa: E402
from lossgrader import course as lcourse  # noqa: E402
from lossgrader import gradebook, worker  # noqa: E402
from lossgrader.feedback import DEFAULT_MAX_PAGE_BYTES, PageRenderer, course_config, feedback  # noqa: E402
from lossgrader.results import CaseRecord, HandinResult  # noqa: E402

import hostile_notebooks as H  # noqa: E402
from course_copy import copy_course  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
A = H.ASSIGNMENT
HONEST = ("demo_full", "demo_unfinished")
HOSTILE = ("x_flood", "x_garbage", "x_retry")
HUGE_MESSAGE = "错误信息" * 250_000                  # 1,000,000 characters, 3 MB, in every case record
HUGE_LOG = "worker log line\n" * 2_500_000          # 40 MB
CELL_OUTPUT = "打印" * 600_000 + "\n"                # 3.6 MB of stdout per cell


def _inflate(result: HandinResult) -> HandinResult:
    """The honest result of x_flood as a hostile worker could return it."""
    nb = json.loads(result.notebooks[A])
    for cell in nb["cells"]:
        meta = cell["metadata"].get("nbgrader", {})
        if cell["cell_type"] == "code" and not (meta.get("grade") and not meta.get("solution")):   # not a test cell
            cell["outputs"] = cell.get("outputs", []) + [
                {"output_type": "stream", "name": "stdout", "text": CELL_OUTPUT},
                {"output_type": "display_data", "metadata": {}, "data": {"text/html": "<b>粗</b>" * 200_000}},
                {"output_type": "error", "ename": "E", "evalue": "v", "traceback": ["栈" * 1_000] * 500}]
    nb["cells"] += [nbformat.v4.new_code_cell("print('刷屏')", outputs=[
        nbformat.v4.new_output("stream", name="stdout", text=CELL_OUTPUT)]) for _ in range(20)]
    result.notebooks = {A: json.dumps(nb, ensure_ascii=False),
                        "../../../escaped": "{}", "/tmp/escaped-abs": "{}"}
    result.cases = [CaseRecord(c.grade_id, c.exercise, c.case * 1_000, c.status, HUGE_MESSAGE, HUGE_MESSAGE)
                    for c in result.cases]
    result.log = HUGE_LOG
    result.reason = "注：" + HUGE_MESSAGE
    result.timings = {f"phase {i}": float(i) for i in range(10_000)}
    result.student, result.assignment = "../../escaped", "../escaped"
    result.max_scores = {name: 1e9 for name in result.max_scores}
    return result


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    base = tmp_path_factory.mktemp("caps")
    root = copy_course(base / "course", [A])
    for student in HONEST:
        shutil.copytree(os.path.join(ROOT, "samples", "submitted", student, A),
                        os.path.join(root, "submitted", student, A))
    for student in HOSTILE:
        shutil.copytree(os.path.join(ROOT, "samples", "submitted", "demo_full", A),
                        os.path.join(root, "submitted", student, A))
    real = worker.grade_handin
    calls = []

    def hostile_worker(task):
        student = task["student"]
        calls.append(student)
        if student == "x_flood":
            return _inflate(real(task))
        if student == "x_garbage":
            result = real(task)
            result.notebooks = {A: "{\"cells\": [" * 1_000_000}
            return result
        if student == "x_retry":
            return HandinResult.failure(student, A, "grading failed: " + HUGE_MESSAGE, {}, log=HUGE_LOG)
        return real(task)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(worker, "grade_handin", hostile_worker)
        # the sample class is trusted: no sandbox, so that the test runs where bwrap cannot
        results = ag.autograde(root, sandbox=False, jobs=1, progress=False, stream=io.StringIO(),
                               cell_timeout=60)
    return {"root": root, "base": str(base), "results": results, "calls": calls}


def _status(root):
    with open(os.path.join(root, lcourse.STATUS_FILE), encoding="utf-8") as fh:
        return json.load(fh)


def test_the_whole_batch_is_graded_with_the_right_scores(graded):
    root = graded["root"]
    url = gradebook.db_url(root)
    full = gradebook.submission_scores(url, A, "demo_full")
    assert full[0] == 6.0 and full[2] == H.scores()
    assert gradebook.submission_scores(url, A, "demo_unfinished")[2] == H.scores(mae_grad=0, huber=0, smooth_l1=0)
    # the flood keeps the scores its (honest) grading gave, and the released points
    assert gradebook.submission_scores(url, A, "x_flood") == full
    for student in ("x_garbage", "x_retry"):
        score, max_score, cells = gradebook.submission_scores(url, A, student)
        assert (score, max_score) == (0.0, 6.0) and set(cells.values()) == {0.0}
    rows = {r["student_id"]: r for r in gradebook.grade_rows(root)}
    assert sorted(rows) == sorted(HONEST + HOSTILE)
    assert rows["x_garbage"]["status"] == "failed" and "not JSON" in rows["x_garbage"]["reason"]
    assert rows["x_retry"]["status"] == "failed" and rows["x_retry"]["reason"].startswith("grading failed: ")
    assert graded["calls"].count("x_retry") == 2                     # graded once more, as any grader failure
    status = _status(root)
    assert status[f"x_flood/{A}"]["score"] == 6.0 and status[f"x_flood/{A}"]["max_score"] == 6.0
    assert status[f"x_retry/{A}"]["attempts"] == 2


def test_nothing_is_written_where_the_result_points(graded):
    """The student, assignment and notebook names of a result name files: the coordinator
    takes them from its own task and the release, never from the worker."""
    base = graded["base"]
    found = [os.path.join(d, n) for d, dirs, files in os.walk(base) for n in dirs + files if "escaped" in n]
    assert not found, found
    assert not os.path.exists("/tmp/escaped-abs.ipynb")
    assert sorted(os.listdir(os.path.join(graded["root"], "autograded"))) == sorted(HONEST + ("x_flood",))
    files = set(os.listdir(os.path.join(graded["root"], "autograded", "x_flood", A)))
    assert A + ".ipynb" in files and files <= {A + ".ipynb", "timestamp.txt"}
    assert set(_status(graded["root"])) == {f"{s}/{A}" for s in HONEST + HOSTILE}


def test_the_autograded_notebook_is_capped_with_a_chinese_note(graded):
    path = os.path.join(graded["root"], "autograded", "x_flood", A, A + ".ipynb")
    assert os.path.getsize(path) <= ag.MAX_AUTOGRADED_BYTES
    nb = nbformat.read(path, as_version=4)
    notes = [o["data"]["text/plain"] for c in nb.cells if c.cell_type == "code" for o in c.outputs
             if o.get("output_type") == "display_data" and "lg-cut-note" in o["data"].get("text/html", "")]
    assert notes and all("超出了每份作业保存" in n and "已删去" in n for n in notes), notes[:3]
    # every graded cell of the release is still there, and the honest hand-ins are untouched
    released = {c["name"] for c in gradebook.released(graded["root"], A)["notebooks"][A]["cells"]}
    kept = {c.metadata.get("nbgrader", {}).get("grade_id") for c in nb.cells}
    assert released <= kept
    honest = nbformat.read(os.path.join(graded["root"], "autograded", "demo_full", A, A + ".ipynb"), as_version=4)
    assert not any("超出了每份作业保存" in json.dumps(c.get("outputs", []), ensure_ascii=False) for c in honest.cells)


def test_each_status_entry_is_capped_with_an_english_note(graded):
    root = graded["root"]
    status = _status(root)
    for key, entry in status.items():
        written = json.dumps({key: entry}, ensure_ascii=False, indent=1, sort_keys=True)   # as in the file
        assert len(written.encode()) <= ag.MAX_STATUS_ENTRY_BYTES, key
        assert len(entry["reason"]) <= ag.MAX_REASON_CHARS, key
        assert len(entry["timings"]) <= ag.MAX_TIMINGS
        for case in entry["cases"]:
            assert len(case["message"]) <= ag.MAX_MESSAGE_CHARS
            assert case["hint"] is None or len(case["hint"]) <= ag.MAX_MESSAGE_CHARS
            assert len(case["case"]) <= 200
    flood = status[f"x_flood/{A}"]
    assert flood["cases"] and flood["cases"][0]["message"].startswith("错误信息")
    assert "cut by lossgrader" in flood["cases"][0]["message"] and "cut by lossgrader" in flood["reason"]
    capped = " ".join(flood["capped"])
    assert "autograded notebook" in capped and "status entry" in capped and "log" in capped
    assert "capped" not in status[f"demo_full/{A}"]                   # an honest hand-in is kept whole
    # the whole record stays small: what one hostile hand-in costs every later rewrite
    assert os.path.getsize(os.path.join(root, lcourse.STATUS_FILE)) <= len(status) * ag.MAX_STATUS_ENTRY_BYTES


def test_each_log_is_capped_and_says_what_was_cut(graded):
    logs = os.path.join(graded["root"], lcourse.STATE_DIR, "logs")
    for student in HOSTILE:
        with open(os.path.join(logs, f"{student}__{A}.log"), encoding="utf-8") as fh:
            text = fh.read()
        assert len(text) <= ag.MAX_LOG_CHARS + 2_000, student      # and the English lines of what was cut
    with open(os.path.join(logs, f"x_flood__{A}.log"), encoding="utf-8") as fh:
        text = fh.read()
    assert "characters of the worker's log dropped here" in text
    assert "lossgrader: kept within the caps: autograded notebook" in text


def test_feedback_pages_are_capped(graded):
    root = graded["root"]
    written = feedback(root, progress=False)
    assert len(written) == len(HONEST + HOSTILE)
    for path in written:
        assert os.path.getsize(path) <= DEFAULT_MAX_PAGE_BYTES, path
    with open(os.path.join(root, "feedback", "x_flood", A, A + ".html"), encoding="utf-8") as fh:
        page = fh.read()
    assert "本页内容有删减" in page and "超出了每份作业保存输出的上限" in page
    assert page.count('class="lossgrader-report"') == 6                  # every report of the grader
    with open(os.path.join(root, "feedback", "x_retry", A, A + ".html"), encoding="utf-8") as fh:
        page = fh.read()
    assert "自动评分失败" in page and len(page) < 20_000


def test_a_page_is_capped_whatever_the_notebook_holds(graded, tmp_path):
    """LimitPageSize and the renderer's measurement cap the whole page: every kind of output
    of every size, the grader's reports, sources and thousands of cells at once."""
    root = graded["root"]
    nb = nbformat.read(os.path.join(root, "autograded", "demo_full", A, A + ".ipynb"), as_version=4)
    big_png = "iVBORw0KGgo" + "A" * 400_000
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.source += "\n# " + "长" * 50_000
            cell.outputs += [
                nbformat.v4.new_output("stream", name="stdout", text="出" * 300_000),
                nbformat.v4.new_output("display_data", data={"text/html": "<p>段</p>" * 50_000}),
                nbformat.v4.new_output("display_data", data={"image/png": big_png}),
                nbformat.v4.new_output("display_data", data={"image/svg+xml": "<svg>" + "<g/>" * 100_000 + "</svg>"}),
                nbformat.v4.new_output("display_data", data={"text/markdown": "**粗**" * 100_000}),
                nbformat.v4.new_output("error", ename="E", evalue="v", traceback=["栈" * 1_000] * 300)]
        else:
            cell.source += "\n\n" + "文" * 100_000
    nb.cells += [nbformat.v4.new_markdown_cell("多余的单元 " * 200) for _ in range(3_000)]
    path = tmp_path / f"{A}.ipynb"
    nbformat.write(nb, path)
    renderer = PageRenderer(course_config(root), gradebook.db_url(root))
    for limit in (DEFAULT_MAX_PAGE_BYTES, 400_000):
        page = renderer.render(str(path), "demo_full", A, max_page_bytes=limit,
                               assignment_notebook=os.path.join(root, "solutions", A, A + ".ipynb"))
        assert len(page.encode()) <= limit
        assert "本页内容有删减" in page and page.count('class="lossgrader-report"') == 6


# ------------------------------------------------------------------------ unit level

def _notebook():
    return nbformat.read(os.path.join(ROOT, "samples", "submitted", "demo_full", A, A + ".ipynb"), as_version=4)


@pytest.mark.parametrize("attack", ["outputs", "cells", "sources", "metadata", "attachments", "lines"])
def test_cap_notebooks_on_each_kind_of_bulk(attack):
    nb = _notebook()
    if attack == "outputs":
        for cell in nb.cells:
            if cell.cell_type == "code":
                cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="x" * 3_000_000)]
    elif attack == "cells":
        nb.cells += [nbformat.v4.new_code_cell("print(1)\n" * 100) for _ in range(20_000)]
    elif attack == "sources":
        for cell in nb.cells:
            cell.source += "#" + "x" * 3_000_000
    elif attack == "metadata":
        nb.metadata["junk"] = "x" * 20_000_000
        nb.cells[0].metadata["junk"] = "y" * 20_000_000
    elif attack == "attachments":
        for cell in nb.cells:
            if cell.cell_type == "markdown":
                cell["attachments"] = {"a.png": {"image/png": "A" * 3_000_000}}
    elif attack == "lines":
        for cell in nb.cells:
            if cell.cell_type == "code":
                cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="ab\n" * 1_000_000)]
    text = nbformat.writes(nb)
    assert len(text.encode()) > ag.MAX_AUTOGRADED_BYTES
    kept, notes, problem = ag._cap_notebooks({A: text})
    assert problem is None
    assert len(kept[A].encode()) <= ag.MAX_AUTOGRADED_BYTES
    assert notes and notes[0].startswith("autograded notebook: ")
    back = nbformat.reads(kept[A], as_version=4)
    grade_ids = [c.metadata.get("nbgrader", {}).get("grade_id") for c in back.cells]
    assert [g for g in grade_ids if g] == [c.metadata["nbgrader"]["grade_id"] for c in nb.cells
                                           if c.metadata.get("nbgrader", {}).get("grade_id")]
    if attack in ("outputs", "cells", "sources", "attachments", "lines"):
        assert "每份作业保存" in kept[A]          # the Chinese note where something was cut


def test_an_honest_notebook_is_kept_byte_for_byte():
    text = nbformat.writes(_notebook())
    kept, notes, problem = ag._cap_notebooks({A: text})
    assert kept == {A: text} and notes == [] and problem is None


@pytest.mark.parametrize("text, words", [
    ("[" * 10_000_000, "not JSON"),
    (json.dumps([1] * 5_000_000), "not a notebook"),
    (json.dumps({"cells": [{"cell_type": "code", "source": "x" * 100,
                            "metadata": {"nbgrader": {"grade": True, "grade_id": "t"}}}] * 100_000}), "still"),
])
def test_a_notebook_that_cannot_be_capped_fails_the_hand_in(text, words):
    kept, notes, problem = ag._cap_notebooks({A: text})
    assert kept == {} and problem.startswith("invalid grading result: ") and words in problem
    result, _ = ag.bound_result(HandinResult("s", A, scores={"test_mse": 1.0}, max_scores={"test_mse": 1.0},
                                             notebooks={A: text}))
    assert result.status == "failed" and result.scores == {"test_mse": 0.0} and words in result.reason


def test_fields_of_the_wrong_type_fail_the_hand_in_and_every_string_is_storable():
    bad = HandinResult("s", A, scores={"test_mse": "1.0"}, max_scores={"test_mse": 1.0}, notebooks={A: "{}"})
    result, _ = ag.bound_result(bad)
    assert result.status == "failed" and "scores" in result.reason
    bad = HandinResult("s", A, scores={"test_mse": 1.0}, max_scores={"test_mse": 1.0}, notebooks={A: b"{}"})
    assert "notebooks" in ag.bound_result(bad)[0].reason
    lone = "\ud800"
    odd = HandinResult("s", A, status="failed", reason=["not", "a", "string"], log=lone * 10,
                       cases=[CaseRecord("t", "mse", lone, "fail", {"a": 1}, 7), {"message": lone}, "junk"],
                       timings={"ok": 1.0, "nan": float("nan"), 3: 1.0, "s": "1"}, attempts="2")
    result, _ = ag.bound_result(odd)
    entry = ag.status_entry(result, 1.0, [])
    json.dumps(entry, ensure_ascii=False).encode("utf-8")          # storable: no lone surrogate left
    result.log.encode("utf-8")
    assert result.reason == "" and result.attempts == 1 and entry["timings"] == {"ok": 1.0}
    assert [c["message"] for c in entry["cases"]] == ["", "?", ""] and entry["cases"][0]["hint"] == "7"


def test_one_message_copied_into_every_case_record_is_kept_small():
    """The attack that made a 6.6 MiB status record: one error message in every case."""
    cases = [CaseRecord("test_mse", "mse", f"用例 {i}", "error", HUGE_MESSAGE, HUGE_MESSAGE)
             for i in range(3 * ag.MAX_CASES)]
    result, notes = ag.bound_result(HandinResult("s", A, status="failed", reason="grading failed: x", cases=cases))
    entry = ag.status_entry(result, 1.0, notes)
    written = json.dumps({"s/" + A: entry}, ensure_ascii=False, indent=1, sort_keys=True)
    assert len(written.encode()) <= ag.MAX_STATUS_ENTRY_BYTES
    assert 0 < len(entry["cases"]) <= ag.MAX_CASES
    assert entry["cases"][0]["message"].startswith("错误信息") and len(entry["cases"][0]["message"]) <= 200
    capped = " ".join(entry["capped"])
    assert "3,000 returned" in capped and "case records dropped" in capped
