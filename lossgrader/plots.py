"""Feedback plots: the student's curve against the reference for element-wise losses.

Drawn with matplotlib's object API (no pyplot state, no GUI backend) and only when a
check fails. Labels are Chinese, set in a small subset of Noto Sans CJK SC shipped with
the package (fonts/), so they render on Colab and fresh machines alike.
"""
from __future__ import annotations

import base64
import io

import torch

from .cjkfont import FONT_PATH, font_properties  # noqa: F401  (FONT_PATH: where the plot font lies)

LEGEND_REFERENCE = "参考实现"
LEGEND_STUDENT = "你的实现"
POINTS = 97
PLOT_SECONDS = 3.0


class Curve:
    """How to draw one exercise: ``point(x)`` turns a 0-dim tensor x into the student
    function's (args, kwargs) for one element; each point is evaluated on its own."""

    def __init__(self, reference, point, *, xlabel, lo, hi):
        self.reference = getattr(reference, "__wrapped_reference__", reference)
        self.point = point
        self.xlabel = xlabel
        self.lo, self.hi = lo, hi

    seconds = PLOT_SECONDS

    def points(self):
        """(xs, the runtime's point requests, the reference's values): what the judge needs
        to ask the runtime for the student's curve (see runtime.probe)."""
        from .runtime import encode_arg
        xs = torch.linspace(self.lo, self.hi, POINTS, dtype=torch.float64)
        requests, expected = [], []
        for x in xs:
            args, kwargs = self.point(x)
            requests.append({"args": [encode_arg(a) for a in args], "kwargs": dict(kwargs)})
            y = self.reference(*args, **kwargs)
            expected.append(float(torch.as_tensor(y).detach().reshape(-1)[0]))
        return xs.tolist(), requests, expected

    def data(self, xs, expected, got):
        return CurveData(xs, expected, [float(y) for y in got], self.xlabel)


class CurveData:
    """Plot data kept by a Report; the PNG is drawn the first time it is asked for."""

    def __init__(self, xs, expected, got, xlabel):
        self.xs, self.expected, self.got, self.xlabel = xs, expected, got, xlabel
        self._png = None

    def png_base64(self) -> str:
        if self._png is None:
            self._png = draw(self.xs, self.expected, self.got, self.xlabel)
        return self._png


def draw(xs, expected, got, xlabel) -> str:
    from matplotlib.figure import Figure

    font = font_properties()
    fig = Figure(figsize=(5.2, 3.0), dpi=96)
    ax = fig.add_subplot()
    ax.plot(xs, expected, color="#1f77b4", lw=2.2, label=LEGEND_REFERENCE)
    ax.plot(xs, got, color="#d62728", lw=1.6, ls="--", label=LEGEND_STUDENT)
    ax.set_xlabel(xlabel, fontproperties=font)
    ax.grid(alpha=0.3)
    ax.legend(prop=font)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", transparent=True)   # the card's (theme's) background shows through
    return base64.b64encode(buf.getvalue()).decode("ascii")
