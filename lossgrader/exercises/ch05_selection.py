"""Exercises of assignment 05_selection (第 5 章 选择损失函数), one entry each."""
from .common import (_evaluate_imbalanced, _evaluate_robust_fit, _imbalanced_cases, OutcomeExercise,
                     _robust_fit_cases)

ENTRIES = [
    OutcomeExercise(
        id="robust_fit",
        book="book/02_regression.html#huber",
        title="用 Huber 损失稳健地拟合直线",
        func_name="fit_line_robust",
        signature="(x, y) -> (w, b)",
        points=2,
        assignment="05_selection",
        reference=None,
        make_cases=_robust_fit_cases,
        evaluate=_evaluate_robust_fit,
        returns="pair",
        time_limit=30.0,
    ),
    OutcomeExercise(
        id="imbalanced_recall",
        book="book/05_selection.html#ce-ce-focal-loss",
        title="不平衡数据：提高少数类召回率",
        func_name="train_imbalanced",
        signature="(x, y) -> model",
        points=2,
        assignment="05_selection",
        reference=None,
        make_cases=_imbalanced_cases,
        evaluate=_evaluate_imbalanced,
        returns="model",
        request_fields=("x_test",),
        time_limit=60.0,
    ),
]
