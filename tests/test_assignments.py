"""The nbgrader assignments: solutions/<id>/<id>.ipynb (instructor) and exercises/<id>/<id>.ipynb
(generated student versions).

Checks the structure against the lossgrader registry, that exercises/ is what
``tools/generate_exercises.py`` produces now, that every URL comes from _config.yml, and
runs every notebook top to bottom in a real kernel: the instructor versions (hidden
tests included) get full marks, the student versions 0 with a "not implemented" message.
"""
import ast
import os
import re
import subprocess
import sys
import textwrap

import nbformat
import pytest
from nbclient import NotebookClient
from nbgrader.utils import determine_grade

from lossgrader import EXERCISES
from lossgrader.notebooks import graded_cell_source

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import generate_exercises  # noqa: E402
from stamp_repository import PLACEHOLDERS, StampRepository, colab_url, read_repository  # noqa: E402

ASSIGNMENTS = ["01_overview", "02_regression", "03_classification", "04_other", "05_selection", "06_code"]
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
URL_RE = re.compile(r"https?://[^\s)\"'<>\]`]+")
TOTAL_RE = re.compile(r"本作业共 \*\*(\d+(?:\.\d+)?) 分\*\*")
HEADING_RE = re.compile(r"^## 练习 (\d+)：.*（(\d+(?:\.\d+)?) 分）$", re.M)
HIDDEN_BEGIN, HIDDEN_END = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"


def notebook_path(kind, assignment):
    return os.path.join(ROOT, kind, assignment, assignment + ".ipynb")


def read(kind, assignment):
    return nbformat.read(notebook_path(kind, assignment), as_version=4)


def nbg(cell):
    return cell.get("metadata", {}).get("nbgrader", {})


def is_grade(cell):
    return cell.cell_type == "code" and nbg(cell).get("grade", False)


def is_answer(cell):
    return cell.cell_type == "code" and nbg(cell).get("solution", False)


def check_calls(source):
    """(function name, exercise id, student object name, keywords) of every check-like call."""
    calls = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("check", "_check"):
            args = node.args
            calls.append((node.func.id,
                          args[0].value if args and isinstance(args[0], ast.Constant) else None,
                          args[1].id if len(args) > 1 and isinstance(args[1], ast.Name) else None,
                          {k.arg: ast.literal_eval(k.value) for k in node.keywords}))
    return calls


def split_hidden(source):
    assert source.count(HIDDEN_BEGIN) == 1 and source.count(HIDDEN_END) == 1, "one hidden block per test cell"
    visible, rest = source.split(HIDDEN_BEGIN)
    hidden, after = rest.split(HIDDEN_END)
    assert after.strip() == "", "nothing may follow the hidden block"
    return visible, hidden


def last_expression_call(source):
    body = ast.parse(textwrap.dedent(source)).body
    assert body and isinstance(body[-1], ast.Expr) and isinstance(body[-1].value, ast.Call), \
        "the check call must be the cell's last expression (its value is nbgrader's partial credit)"
    return check_calls(ast.unparse(body[-1]))[0]


# ----------------------------------------------------------------------------- structure
def test_every_exercise_in_exactly_one_assignment():
    seen = {}
    for assignment in ASSIGNMENTS:
        for cell in read("solutions", assignment).cells:
            if is_grade(cell):
                visible, _ = split_hidden(cell.source)
                ex_id = last_expression_call(visible)[1]
                seen.setdefault(ex_id, []).append(assignment)
    assert set(seen) == set(EXERCISES), (set(seen) ^ set(EXERCISES))
    for ex_id, where in seen.items():
        assert where == [EXERCISES[ex_id].assignment], f"{ex_id} is tested in {where}"


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_solution_notebook_structure(assignment):
    nb = read("solutions", assignment)
    cells = nb.cells
    code = [c for c in cells if c.cell_type == "code"]

    # Setup: the first code cell, locked and not graded; it imports check.
    setup = code[0]
    assert nbg(setup) and nbg(setup)["locked"] and not nbg(setup)["grade"] and not nbg(setup)["solution"]
    assert "from lossgrader import check" in setup.source
    assert cells[0].cell_type == "markdown" and "@COLAB_URL@" in cells[0].source and BADGE_IMAGE in cells[0].source

    grade_ids = [nbg(c)["grade_id"] for c in cells if nbg(c)]
    assert len(grade_ids) == len(set(grade_ids)), "duplicate nbgrader grade_id"
    for c in cells:
        if nbg(c):
            assert nbg(c)["schema_version"] == 3 and re.fullmatch(r"[A-Za-z0-9_-]+", nbg(c)["grade_id"])
        assert not c.get("outputs"), "commit solution notebooks without outputs"

    expected_ids = sorted(e.id for e in EXERCISES.values() if e.assignment == assignment)
    tested, total = [], 0.0
    for i, cell in enumerate(cells):
        if not is_grade(cell):
            continue
        meta = nbg(cell)
        assert meta["locked"] and not meta["solution"], f"{meta['grade_id']}: test cells are locked, not answers"
        visible, hidden = split_hidden(cell.source)
        fn, ex_id, obj, kw = last_expression_call(visible)
        ex = EXERCISES[ex_id]
        assert fn == "check" and obj == ex.func_name, (fn, obj, ex.func_name)
        assert kw == {"points": ex.points}, kw
        assert float(meta["points"]) == float(ex.points), f"{ex_id}: cell points {meta['points']} != {ex.points}"
        # Hidden part: the same check on the hidden cases; the whole cell is the registry's.
        assert last_expression_call(hidden) == ("check", ex_id, ex.func_name, {"points": ex.points, "hidden": True})
        assert cell.source == graded_cell_source(ex), f"{ex_id}: run python tools/generate_exercises.py"
        # The answer cell right before defines the function/class between solution markers.
        answer = cells[i - 1]
        assert is_answer(answer) and not is_grade(answer), f"{ex_id}: no answer cell right before its test cell"
        assert answer.source.count("### BEGIN SOLUTION") == answer.source.count("### END SOLUTION") >= 1
        defined = {n.name for n in ast.parse(answer.source).body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        assert ex.func_name in defined, f"{ex_id}: answer cell defines {defined}, not {ex.func_name}"
        # The exercise's heading states its points.
        heading = cells[i - 2]
        m = HEADING_RE.search(heading.source)
        assert heading.cell_type == "markdown" and m, f"{ex_id}: no '## 练习 k：…（p 分）' heading"
        assert float(m.group(2)) == float(ex.points)
        tested.append(ex_id)
        total += float(meta["points"])
    assert sorted(tested) == expected_ids
    numbers = [int(n) for n, _ in HEADING_RE.findall("\n".join(c.source for c in cells if c.cell_type == "markdown"))]
    assert numbers == list(range(1, len(tested) + 1)), "exercises are numbered 1, 2, ..."

    stated = [float(x) for c in cells if c.cell_type == "markdown" for x in TOTAL_RE.findall(c.source)]
    assert stated == [total], f"stated total {stated} != sum of the test cells' points {total}"
    assert total == sum(e.points for e in EXERCISES.values() if e.assignment == assignment)


# ----------------------------------------------------------------------------- generation and URLs
def test_exercises_are_up_to_date():
    problems = generate_exercises.stale()
    assert problems == [], "exercises/ is stale; run python tools/generate_exercises.py\n" + "\n".join(problems)


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_student_notebook_is_the_nbgrader_release(assignment):
    """Stubs instead of solutions, no hidden tests, no outputs, placeholders stamped."""
    nb = read("exercises", assignment)
    stub = re.compile(r"^( *)# 在此处编写你的代码\n\1raise NotImplementedError\(\)$", re.M)
    sol = read("solutions", assignment)
    assert [c.get("id") for c in nb.cells] == [c.get("id") for c in sol.cells]
    for cell in nb.cells:
        assert not any(p in cell.source for p in PLACEHOLDERS)
        assert "BEGIN SOLUTION" not in cell.source and "HIDDEN" not in cell.source and "hidden=True" not in cell.source
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
        if is_answer(cell):
            assert stub.search(cell.source), f"{cell.get('id')}: no student stub"
        if is_grade(cell) or nbg(cell).get("locked"):
            assert cell.metadata.get("editable") is False and cell.metadata.get("deletable") is False


def test_every_url_comes_from_config_yml():
    url, branch, owner, repo = read_repository(os.path.join(ROOT, "_config.yml"))
    for assignment in ASSIGNMENTS:
        colab = colab_url(owner, repo, branch, "exercises", assignment, assignment)
        expected = {
            "solutions": set(),                      # instructor notebooks only carry placeholders
            "exercises": {url, colab},
        }
        for kind, allowed in expected.items():
            nb = read(kind, assignment)
            found = {u for c in nb.cells for u in URL_RE.findall(c.source)} - {BADGE_IMAGE}
            assert found <= allowed, f"{kind}/{assignment}: URLs not from _config.yml: {found - allowed}"
            if kind == "exercises":
                assert found == allowed
                assert nb.cells[0].source == f"[![Open In Colab]({BADGE_IMAGE})]({colab})"
                setup = next(c for c in nb.cells if c.cell_type == "code").source
                assert f'REPOSITORY_URL = "{url}"' in setup and f'REPOSITORY_BRANCH = "{branch}"' in setup


def test_stamping_follows_config_yml(tmp_path):
    """The preprocessor takes the address from whatever _config.yml says (nothing hard-coded)."""
    config = tmp_path / "_config.yml"
    config.write_text("repository:\n  url: https://github.com/some-fork/course-copy.git\n  branch: dev\n",
                      encoding="utf-8")
    nb = read("solutions", "03_classification")
    stamper = StampRepository(config_file=str(config), release_directory="exercises")
    out, _ = stamper.preprocess(nb, {"nbgrader": {"assignment": "03_classification", "notebook": "03_classification"}})
    text = "\n".join(c.source for c in out.cells)
    assert "https://colab.research.google.com/github/some-fork/course-copy/blob/dev/exercises/" \
           "03_classification/03_classification.ipynb" in text
    assert 'REPOSITORY_URL = "https://github.com/some-fork/course-copy"' in text
    assert 'REPOSITORY_BRANCH = "dev"' in text
    assert "lossfn-course" not in text and not any(p in text for p in PLACEHOLDERS)
    config.write_text("repository:\n  url: git@github.com:x/y.git\n", encoding="utf-8")
    with pytest.raises(ValueError):
        read_repository(str(config))


def test_nbgrader_config():
    from traitlets.config.loader import PyFileConfigLoader

    cfg = PyFileConfigLoader("nbgrader_config.py", path=ROOT).load_config()
    assert cfg.CourseDirectory.source_directory == "solutions"
    assert cfg.CourseDirectory.release_directory == "exercises"
    assert cfg.ClearSolutions.code_stub == {"python": "# 在此处编写你的代码\nraise NotImplementedError()"}
    assert cfg.Execute.timeout >= 120 and cfg.ExecutePreprocessor.timeout >= 120
    assert cfg.GenerateAssignment.preprocessors[0] is StampRepository
    names = [p.__name__ for p in cfg.GenerateAssignment.preprocessors]
    assert names.index("StampRepository") < names.index("SaveCells") < names.index("ClearHiddenTests")

    # IgnorePattern drops a stderr chunk made only of warnings, and keeps anything else.
    from nbgrader.preprocessors import IgnorePattern

    ignore = IgnorePattern(config=cfg)
    assert ignore.enabled
    warning = ("/usr/lib/python3/site-packages/torch/cuda/__init__.py:128: UserWarning: CUDA initialization: "
               "no driver\n  return torch._C._cuda_getDeviceCount() > 0\n")
    deprecation = "/x/numpy/core/fromnumeric.py:59: DeprecationWarning: old API\n"
    kept = ["Traceback (most recent call last):\n  File \"x\", line 1\nValueError: boom\n",
            warning + "something else printed by the student\n",
            "student output that mentions UserWarning: x\n"]
    outputs = [nbformat.v4.new_output("stream", name="stderr", text=t) for t in [warning, warning + deprecation] + kept]
    outputs.append(nbformat.v4.new_output("execute_result", data={"text/plain": "1.0"}))
    cell = nbformat.v4.new_code_cell("x", outputs=outputs)
    cell, _ = ignore.preprocess_cell(cell, {}, 0)
    assert [o.get("text") for o in cell.outputs if o.output_type == "stream"] == kept


# ----------------------------------------------------------------------------- the setup cell
def _run_setup(source, cwd, find_spec_none):
    """Execute a setup cell in a fresh interpreter; subprocess.run is recorded, never run."""
    driver = textwrap.dedent("""
        import importlib.util, json, subprocess, sys
        calls = []
        def fake_run(cmd, **kw):
            calls.append(cmd)
            return subprocess.CompletedProcess(cmd, 0, "", "")
        subprocess.run = fake_run
        if FIND_SPEC_NONE:
            real = importlib.util.find_spec
            importlib.util.find_spec = lambda name, *a: None if name == "lossgrader" else real(name, *a)
        exec(compile(SOURCE, "setup", "exec"), {"__name__": "__main__"})
        print("CALLS=" + json.dumps(calls))
        print("PATH0=" + sys.path[0])
    """).replace("FIND_SPEC_NONE", repr(find_spec_none)).replace("SOURCE", repr(source))
    proc = subprocess.run([sys.executable, "-c", driver], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_setup_cell_installs_only_when_needed(tmp_path):
    import json

    url, branch, _, _ = read_repository(os.path.join(ROOT, "_config.yml"))
    setup = next(c for c in read("exercises", "02_regression").cells if c.cell_type == "code").source

    # lossgrader importable (local install, nbgrader autograde without network): no pip.
    out = _run_setup(setup, os.path.join(ROOT, "exercises", "02_regression"), find_spec_none=False)
    assert "CALLS=[]" in out and "使用设备：" in out

    # A local clone without an installed lossgrader: the repository's own copy, no pip.
    out = _run_setup(setup, os.path.join(ROOT, "exercises", "02_regression"), find_spec_none=True)
    assert "CALLS=[]" in out and f"PATH0={ROOT}\n" in out

    # Colab (no lossgrader, no checkout around the notebook): pip installs from _config.yml's address.
    work = tmp_path / "content" / "nb"
    work.mkdir(parents=True)
    out = _run_setup(setup, str(work), find_spec_none=True)
    calls = json.loads(out.split("CALLS=")[1].splitlines()[0])
    assert len(calls) == 1 and calls[0][1:4] == ["-m", "pip", "install"]
    assert f"lossgrader @ git+{url}@{branch}" in calls[0]


# ----------------------------------------------------------------------------- run the notebooks
def execute(kind, assignment):
    path = notebook_path(kind, assignment)
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": os.path.dirname(path)}}).execute()
    return nb


_NOTEBOOK_TESTS = {"test_solution_notebook_gets_full_marks": "solutions",
                   "test_student_notebook_runs_and_scores_zero": "exercises"}


@pytest.fixture(scope="module")
def executed(request):
    """Run the notebooks the selected tests need, a few kernels at a time (most of a
    notebook's time is the kernel start and the torch import), and hand them out."""
    from concurrent.futures import ThreadPoolExecutor

    wanted = []
    for item in request.session.items:
        kind = _NOTEBOOK_TESTS.get(getattr(item, "originalname", None))
        if kind and hasattr(item, "callspec"):
            wanted.append((kind, item.callspec.params["assignment"]))
    with ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 2))) as pool:
        futures = {key: pool.submit(execute, *key) for key in dict.fromkeys(wanted)}
        yield lambda kind, assignment: futures[(kind, assignment)].result()


def _outputs(cell, kind):
    return [o for o in cell.outputs if o.output_type == kind]


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_solution_notebook_gets_full_marks(assignment, executed):
    nb = executed("solutions", assignment)
    graded = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        name = nbg(cell).get("grade_id", cell.get("id"))
        errors = _outputs(cell, "error")
        assert not errors, f"{name}: {errors[0].ename}: {errors[0].evalue}"
        stderr = [o.text for o in _outputs(cell, "stream") if o.name == "stderr"]
        assert not stderr, f"{name} wrote to stderr: {stderr}"
        if is_grade(cell):
            score, max_score = determine_grade(cell)      # exactly what nbgrader's autograder computes
            assert score == max_score == float(nbg(cell)["points"]), f"{name}: {score}/{max_score}"
            graded += 1
    assert graded == sum(1 for e in EXERCISES.values() if e.assignment == assignment)


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_student_notebook_runs_and_scores_zero(assignment, executed):
    nb = executed("exercises", assignment)
    graded = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        name = nbg(cell).get("grade_id", cell.get("id"))
        if not is_answer(cell):
            errors = _outputs(cell, "error")
            assert not errors, f"{name} (not an answer cell) raised {errors[0].ename}: {errors[0].evalue}"
        if is_grade(cell):
            assert not [o for o in _outputs(cell, "stream") if o.name == "stderr"], f"{name} wrote to stderr"
            score, max_score = determine_grade(cell)
            assert score == 0 and max_score == float(nbg(cell)["points"]), f"{name}: {score}/{max_score}"
            html = _outputs(cell, "execute_result")[0].data["text/html"]
            assert "尚未实现" in html, f"{name}: feedback does not say the exercise is not implemented yet"
            graded += 1
    assert graded == sum(1 for e in EXERCISES.values() if e.assignment == assignment)
