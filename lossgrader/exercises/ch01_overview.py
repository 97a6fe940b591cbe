"""Exercises of assignment 01_overview (第 1 章 概述), one entry each."""
from .common import (AUTOGRAD, GradExercise, Mistake, _numgrad_cases, ref, Tolerance)

ENTRIES = [
    GradExercise(
        id="numerical_grad",
        title="数值梯度（中心差分）",
        func_name="numerical_gradient",
        signature="(f, x, eps=1e-6)",
        points=2,
        assignment="01_overview",
        reference=ref.numerical_gradient,
        make_cases=_numgrad_cases,
        forbidden=[AUTOGRAD],
        time_limit=20.0,
        book="book/01_overview.html#h",
        graph=False,                 # a difference quotient: no autograd graph, and its own ε is the step
        epsilon_hint=None,
        tol=Tolerance(1e-6, 1e-9, "the student's central differences must equal the reference's own (same ε, "
                      "same formula): forward differences are off by O(ε) ≈ 1e-6 relative, more than the "
                      "table's float64 tolerance would catch"),
        mistakes=[
            Mistake("你用的是前向差分 (f(x+ε) − f(x))/ε，误差是 O(ε)；中心差分 (f(x+ε) − f(x−ε))/(2ε) 的误差是 O(ε²)。",
                    lambda f, x, eps=1e-6: ref._finite_differences(f, x, eps, forward=True)),
            Mistake("中心差分的分母应是 2ε：你少除了 2。", lambda f, x, eps=1e-6: 2 * ref._finite_differences(f, x, eps)),
            Mistake("分母多了一个 2（或步长用了 2ε）。", lambda f, x, eps=1e-6: 0.5 * ref._finite_differences(f, x, eps)),
        ],
    ),
]
