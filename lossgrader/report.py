"""The result of a check: a number for nbgrader, Chinese feedback for the student.

In a notebook the report is a cell's result: its text/plain repr is the score alone
(nbgrader reads it as the cell's partial credit) and its text/html repr is the
feedback table, the hints, what the student's code printed and, for element-wise
losses that fail, a plot of the student's curve against the reference.
"""
from __future__ import annotations

import html
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
        ok = self.passed
        color = "#1a7f37" if ok else ("#9a6700" if self.score > 0 else "#cf222e")
        title = html.escape(self.exercise.title)
        head = (f'<div class="lossgrader-report" style="border:1px solid #d0d7de;border-left:6px solid {color};'
                f'border-radius:6px;padding:10px 14px;margin:6px 0;font-family:sans-serif;font-size:14px;">'
                f'<div style="font-size:15px;margin-bottom:6px;"><b>{title}</b> '
                f'<code>{html.escape(self.exercise.id)}</code> — '
                f'<b style="color:{color}">得分 {self.score:g} / {self.points:g}</b>'
                f'{"　✔ 全部通过" if ok else ""}</div>')
        meta = (f'<div style="color:#6e7781;font-size:12px;margin-bottom:6px;">'
                f'设备：{html.escape(self.device)}　用例：{len(self.results)} 个'
                f'{"（含隐藏测试）" if self.hidden else ""}　用时：{self.seconds:.2f} 秒</div>')
        rows = []
        for r in self.results:
            mark, label, c = STATUS_LABELS[r.status]
            rows.append(f'<tr><td style="text-align:left;vertical-align:top;padding:3px 8px;color:{c};white-space:nowrap;">{mark} {label}</td>'
                        f'<td style="text-align:left;vertical-align:top;padding:3px 8px;">{html.escape(r.name)}</td>'
                        f'<td style="text-align:left;vertical-align:top;padding:3px 8px;color:#57606a;font-size:12px;">{html.escape(r.inputs)}</td>'
                        f'<td style="text-align:left;vertical-align:top;padding:3px 8px;">{_safe(r.message)}</td></tr>')
        table = ('<table style="border-collapse:collapse;width:100%;">'
                 '<thead><tr style="background:#f6f8fa;text-align:left;"><th style="text-align:left;vertical-align:top;padding:3px 8px;">结果</th>'
                 '<th style="text-align:left;vertical-align:top;padding:3px 8px;">用例</th><th style="text-align:left;vertical-align:top;padding:3px 8px;">输入</th>'
                 '<th style="text-align:left;vertical-align:top;padding:3px 8px;">说明</th></tr></thead><tbody>' + "".join(rows) + "</tbody></table>")
        parts = [head, meta, table]
        if self.hints:
            items = "".join(f"<li>{_safe(h)}</li>" for h in self.hints)
            parts.append(f'<div style="margin-top:8px;background:#fff8c5;padding:6px 10px;border-radius:4px;">'
                         f'<b>提示</b><ul style="margin:4px 0;">{items}</ul></div>')
        png = self.plot_png
        if png:
            parts.append('<div style="margin-top:8px;"><b>你的实现与参考实现的对比</b><br>'
                         f'<img alt="你的实现与参考实现的曲线对比" src="data:image/png;base64,{png}"></div>')
        out = self.captured.text() if self.captured else ""
        if out:
            if len(out) > 4000:
                out = out[:4000] + "\n…（输出过长，已截断）"
            parts.append('<details style="margin-top:8px;"><summary>你的代码在检查期间的输出（print / 警告）</summary>'
                         f'<pre style="background:#f6f8fa;padding:6px;">{html.escape(out)}</pre></details>')
        parts.append("</div>")
        return "".join(parts)


def _strip_tags(text: str) -> str:
    return text.replace("<code>", "`").replace("</code>", "`")


def _safe(text: str) -> str:
    """Escape everything but the <code> tags our own messages use."""
    return html.escape(text or "").replace("&lt;code&gt;", "<code>").replace("&lt;/code&gt;", "</code>")
