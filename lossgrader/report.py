"""The result of a check: a number for nbgrader, Chinese feedback for the student.

In a notebook the report is a cell's result: its text/plain repr is the score alone
(nbgrader reads it as the cell's partial credit) and its text/html repr is the
feedback table, the hints, what the student's code printed and, for element-wise
losses that fail, a plot of the student's curve against the reference.
"""
from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from typing import Optional

STATUS_LABELS = {
    "pass": ("✔", "通过", "#1a7f37"),
    "fail": ("✘", "错误", "#cf222e"),
    "error": ("✘", "异常", "#cf222e"),
    "notimpl": ("…", "尚未实现", "#9a6700"),
    "timeout": ("⏱", "超时", "#cf222e"),
    "forbidden": ("✘", "不允许", "#cf222e"),
    "skipped": ("–", "未运行", "#6e7781"),
}


@dataclass
class Report:
    exercise: object
    points: float
    score: float
    results: list
    captured: object = None
    plot: Optional[object] = None   # plots.CurveData: drawn when the HTML is asked for
    device: str = "cpu"
    hidden: bool = False
    seconds: float = 0.0
    hints: list = field(init=False)

    def __post_init__(self):
        self.hints = []
        for r in self.results:
            if r.hint and r.hint not in self.hints:
                self.hints.append(r.hint)

    @property
    def plot_png(self) -> Optional[str]:
        """The feedback plot as base64 PNG (None when there is none)."""
        return self.plot.png_base64() if self.plot is not None else None

    @property
    def max_score(self) -> float:
        return self.points

    @property
    def passed(self) -> bool:
        return bool(self.results) and all(r.passed for r in self.results)

    @property
    def exercise_id(self) -> str:
        return self.exercise.id

    def __float__(self) -> float:
        return float(self.score)

    def __repr__(self) -> str:
        # nbgrader reads an autograder cell's text/plain result as its partial credit
        return repr(float(self.score))

    def summary(self) -> str:
        n_pass = sum(r.passed for r in self.results)
        state = "全部通过" if self.passed else f"通过 {n_pass}/{len(self.results)} 个用例"
        return f"{self.exercise.title}（{self.exercise.id}）：{state}，得分 {self.score:g} / {self.points:g}"

    def __str__(self) -> str:
        lines = [self.summary()]
        for r in self.results:
            mark, label, _ = STATUS_LABELS[r.status]
            line = f"  {mark} {r.name}"
            if r.inputs:
                line += f" [{r.inputs}]"
            if r.message:
                line += f"：{_strip_tags(r.message)}"
            lines.append(line)
        for h in self.hints:
            lines.append(f"  提示：{h}")
        out = self.captured.text() if self.captured else ""
        if out:
            lines.append("  你的代码的输出：")
            lines.extend("    " + line for line in out.rstrip().splitlines()[:40])
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        # A light card that sets its own text colour on every box: in a dark theme
        # (JupyterLab, Colab) the notebook's light text would otherwise land on the
        # report's light backgrounds, and the theme's table stripes under dark text.
        ok = self.passed
        color = "#1a7f37" if ok else ("#9a6700" if self.score > 0 else "#cf222e")
        title = html.escape(self.exercise.title)
        head = (f'<div class="lossgrader-report" style="{_CARD}border-left:6px solid {color};'
                f'border-radius:6px;padding:10px 14px;margin:6px 0;font-family:sans-serif;font-size:14px;">'
                f'<div style="font-size:15px;margin-bottom:6px;color:{_TEXT};"><b>{title}</b> '
                f'<code style="{_CODE}">{html.escape(self.exercise.id)}</code> — '
                f'<b style="color:{color}">得分 {self.score:g} / {self.points:g}</b>'
                f'{"　✔ 全部通过" if ok else ""}</div>')
        meta = (f'<div style="color:{_MUTED};font-size:12px;margin-bottom:6px;">'
                f'设备：{html.escape(self.device)}　用例：{len(self.results)} 个'
                f'{"（含隐藏测试）" if self.hidden else ""}　用时：{self.seconds:.2f} 秒</div>')
        rows = []
        for r in self.results:
            mark, label, c = STATUS_LABELS[r.status]
            rows.append(f'<tr style="{_ROW}"><td style="{_CELL}color:{c};white-space:nowrap;">{mark} {label}</td>'
                        f'<td style="{_CELL}">{html.escape(r.name)}</td>'
                        f'<td style="{_CELL}color:{_MUTED};font-size:12px;">{html.escape(r.inputs)}</td>'
                        f'<td style="{_CELL}">{_safe(r.message)}</td></tr>')
        header = "".join(f'<th style="{_HEAD}">{name}</th>' for name in ("结果", "用例", "输入", "说明"))
        table = (f'<table style="border-collapse:collapse;width:100%;color:{_TEXT};background-color:{_BG};">'
                 f'<thead><tr style="{_ROW}">{header}</tr></thead><tbody>' + "".join(rows) + "</tbody></table>")
        parts = [head, meta, table]
        if self.hints:
            items = "".join(f'<li style="color:{_TEXT};">{_safe(h)}</li>' for h in self.hints)
            parts.append(f'<div style="margin-top:8px;background-color:#fff8c5;color:{_TEXT};'
                         f'border:1px solid #d4a72c;padding:6px 10px;border-radius:4px;">'
                         f'<b>提示</b><ul style="margin:4px 0;">{items}</ul></div>')
        png = self.plot_png
        if png:
            parts.append(f'<div style="margin-top:8px;color:{_TEXT};"><b>你的实现与参考实现的对比</b><br>'
                         f'<img alt="你的实现与参考实现的曲线对比" src="data:image/png;base64,{png}"></div>')
        out = self.captured.text() if self.captured else ""
        if out:
            if len(out) > 4000:
                out = out[:4000] + "\n…（输出过长，已截断）"
            parts.append(f'<details style="margin-top:8px;color:{_TEXT};"><summary>你的代码在检查期间的输出（print / 警告）</summary>'
                         f'<pre style="background-color:{_SUBTLE};color:{_TEXT};padding:6px;margin:4px 0;'
                         f'white-space:pre-wrap;">{html.escape(out)}</pre></details>')
        parts.append("</div>")
        return "".join(parts)


# Colours of the HTML report (GitHub's light palette; every status colour reaches WCAG AA,
# 4.5:1, on the white card). Each box sets background and text colour together.
_TEXT = "#1f2328"
_BG = "#ffffff"
_MUTED = "#57606a"
_SUBTLE = "#f6f8fa"
_CARD = f"background-color:{_BG};color:{_TEXT};border:1px solid #d0d7de;"
_ROW = f"background-color:{_BG};"
_BOX = f"text-align:left;vertical-align:top;padding:3px 8px;color:{_TEXT};border:none;border-bottom:1px solid #eaeef2;"
_CELL = f"{_BOX}background-color:{_BG};"
_HEAD = f"{_BOX}background-color:{_SUBTLE};font-weight:bold;"
_CODE = f"background-color:#eff1f3;color:{_TEXT};padding:0 3px;border-radius:3px;"


def _strip_tags(text: str) -> str:
    return text.replace("<code>", "`").replace("</code>", "`")


def _safe(text: str) -> str:
    """Escape a message for HTML, keeping the <code> tags our own messages use.

    Every < and > is escaped, so no tag but <code> can come out of it. Entities that are
    already there stay as they are: the judge escapes what it quotes from student code,
    and escaping that again would show "&lt;" to the student."""
    text = _BARE_AMPERSAND.sub("&amp;", text or "")
    text = text.replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
    return text.replace("&lt;code&gt;", f'<code style="{_CODE}">').replace("&lt;/code&gt;", "</code>")


_BARE_AMPERSAND = re.compile(r"&(?!(?:[A-Za-z][A-Za-z0-9]*|#[0-9]+|#[xX][0-9A-Fa-f]+);)")
