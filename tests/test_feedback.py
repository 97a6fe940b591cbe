"""The feedback plot renders every label with real glyphs (on Colab too, where there is
no system CJK font) and appears exactly when a student's curve can be compared."""
import base64
import os
import warnings

import pytest
import torch
from fontTools.ttLib import TTFont

from lossgrader import check, plots
from lossgrader.exercises import plot_label_characters


def _cmap(path):
    return set(TTFont(path, fontNumber=0).getBestCmap())


def test_font_subset_ships_with_the_package():
    assert os.path.exists(plots.FONT_PATH)


def test_every_label_character_has_a_glyph():
    from matplotlib import font_manager
    subset = _cmap(plots.FONT_PATH)
    dejavu = _cmap(font_manager.findfont("DejaVu Sans", fallback_to_default=False))
    missing = [ch for ch in plot_label_characters() if ord(ch) not in subset | dejavu]
    assert not missing, f"characters without a glyph in the plot fonts: {missing}"
    # the Chinese characters themselves must come from the bundled subset
    assert all(ord(ch) in subset for ch in plot_label_characters() if ord(ch) > 0x2E80)


def mae_computing_mse(pred, target):
    return ((pred - target) ** 2).mean()


def test_failed_elementwise_check_draws_the_curves_without_font_warnings():
    report = check("mae", mae_computing_mse, device="cpu")
    assert not report.passed
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns "Glyph ... missing from font(s)"
        png = base64.b64decode(report.plot_png)
    assert png.startswith(b"\x89PNG")
    assert "data:image/png;base64," in report._repr_html_()


@pytest.mark.parametrize("solution", [None, lambda p, t: (p - t).abs().mean()], ids=["none", "correct"])
def test_no_plot_when_nothing_to_compare(solution):
    report = check("mae", solution, device="cpu")
    assert report.plot_png is None
    assert "data:image/png" not in report._repr_html_()


def test_no_plot_for_code_that_does_not_run():
    def unfinished(pred, target):
        raise NotImplementedError()
    report = check("mae", unfinished, device="cpu")
    assert report.score == 0 and report.plot_png is None
    assert "尚未实现" in report._repr_html_()


def test_plot_shows_a_sum_instead_of_a_mean():
    report = check("mse", lambda p, t: ((p - t) ** 2).sum(), device="cpu")
    data = report.plot
    x = max(range(len(data.xs)), key=lambda i: abs(data.xs[i]))
    from lossgrader.exercises import CURVE_BATCH
    assert data.got[x] == pytest.approx(CURVE_BATCH * data.expected[x], rel=1e-6)


def test_report_is_a_number_for_nbgrader_and_chinese_html_for_the_student():
    report = check("mse", lambda p, t: ((p - t) ** 2).mean(), points=2, device="cpu")
    assert float(repr(report)) == report.score == 2.0 == float(report)
    html = report._repr_html_()
    assert "得分 2 / 2" in html and "全部通过" in html


def test_check_restores_the_thread_count():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        check("mse", lambda p, t: ((p - t) ** 2).mean(), device="cpu")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("hidden", [False, True], ids=["visible", "hidden"])
def test_a_print_in_the_student_function_shows_once_per_case(hidden):
    # a failing function: the typical-mistake diagnosis must not run the student's code again
    def mae_computing_mse(pred, target):
        print("来自学生函数的输出")
        return ((pred - target) ** 2).mean()

    report = check("mae", mae_computing_mse, device="cpu", hidden=hidden)
    assert not report.passed
    assert report.captured.text().count("来自学生函数的输出") == len(report.results)
    assert report._repr_html_().count("来自学生函数的输出") == len(report.results)


def test_report_html_escapes_what_the_student_code_printed_or_raised():
    def hostile(pred, target):
        print("<script>alert(1)</script>")
        raise ValueError("<img src=x onerror=alert(2)>")

    html = check("mae", hostile, device="cpu")._repr_html_()
    assert "<script>" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "&lt;img src=x onerror=alert(2)&gt;" in html


def test_every_box_of_the_report_sets_its_own_text_colour():
    """A fixed light background with the theme's (light, in dark mode) text is unreadable:
    whatever paints a background-color also sets color (see test_feedback_page for the
    rendering on JupyterLab's and a Colab-like dark theme)."""
    import re

    report = check("mae", mae_computing_mse, device="cpu")
    html = report._repr_html_()
    styles = re.findall(r'style="([^"]*)"', html)
    assert styles and all("color:" in s for s in styles if "background" in s)
