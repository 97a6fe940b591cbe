"""Every model solution (the answer cells of solutions/) gets full marks, visible and
hidden cases, on the CPU and on CUDA when this machine has it."""
import os

import pytest
import torch

from lossgrader import EXERCISES, check
from lossgrader.notebooks import assignment_notebook, load_answers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(scope="module")
def answers():
    cache = {}

    def get(assignment):
        if assignment not in cache:
            cache[assignment] = load_answers(assignment_notebook(ROOT, assignment))
        return cache[assignment]
    return get


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("exercise_id", sorted(EXERCISES))
def test_model_solution_gets_full_marks(answers, exercise_id, device):
    ex = EXERCISES[exercise_id]
    solution = answers(ex.assignment).get(ex.func_name)
    assert solution is not None, f"{ex.assignment} defines no {ex.func_name}"
    for hidden in (False, True):
        report = check(exercise_id, solution, points=ex.points, device=device, hidden=hidden)
        assert report.passed, str(report)
        assert report.score == ex.points
        assert report.device.startswith(device)
