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

from .judge import BOOK_LOCAL, BOOK_SECTIONS, scoring_groups

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
    book_base: str = BOOK_LOCAL     # where the hints' book links point: BOOK_ONLINE from check()
    hints: list = field(init=False)
    hint_books: dict = field(init=False)   # hint text -> book section (a key of BOOK_SECTIONS)

    def __post_init__(self):
        self.hints, self.hint_books = [], {}
        for r in self.results:
            if r.hint and r.hint not in self.hints:
                self.hints.append(r.hint)
                if getattr(r, "book", None):
                    self.hint_books[r.hint] = r.book

    def book_links(self) -> dict:
        """{hint text: (section title, address)} of the hints that point to the book."""
        return {h: (BOOK_SECTIONS.get(b, b), self.book_base + b) for h, b in self.hint_books.items()}

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
        groups_passed, groups = scoring_groups(self.results)
        if not self.passed and groups != len(self.results):
            state += f"（按用例组计分：通过 {groups_passed}/{groups} 组，一组中的用例全部通过才得分）"
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
        links = self.book_links()
        for h in self.hints:
            lines.append(f"  提示：{h}" + (f"（课本：{links[h][0]}）" if h in links else ""))
        out = self.captured.text() if self.captured else ""
        if out:
            lines.append("  你的代码的输出：")
            lines.extend("    " + line for line in out.rstrip().splitlines()[:40])
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        # The card takes its text and background from the notebook's theme (Colab's and
        # JupyterLab's CSS variables; light colours where there are none, e.g. on a feedback
        # page) and mixes every other colour from those two, so it reads the same in light
        # and dark themes. Every box that paints a background sets its text colour too.
        ok = self.passed
        state = "pass" if ok else ("warn" if self.score > 0 else "fail")
        title = html.escape(self.exercise.title)
        head = (f'<div class="lossgrader-report" style="{_THEME}{_CARD}border-left:6px solid {_ACCENT[state]};'
                f'border-radius:6px;padding:10px 14px;margin:6px 0;font-family:sans-serif;font-size:14px;">'
                f'{_DARK_PLOT_STYLE}'
                f'<div style="font-size:15px;margin-bottom:6px;color:{_TEXT};"><b>{title}</b> '
                f'<code style="{_CODE}">{html.escape(self.exercise.id)}</code> — '
                f'<b style="{_chip(state)}">得分 {self.score:g} / {self.points:g}</b>'
                f'{"　✔ 全部通过" if ok else ""}</div>')
        meta = (f'<div style="color:{_MUTED};font-size:12px;margin-bottom:6px;">'
                f'设备：{html.escape(self.device)}　用例：{len(self.results)} 个'
                f'{"（含隐藏测试）" if self.hidden else ""}，{scoring_groups(self.results)[1]} 个计分组'
                f'　用时：{self.seconds:.2f} 秒</div>')
        rows = []
        for r in self.results:
            mark, label, _ = STATUS_LABELS[r.status]
            rows.append(f'<tr style="{_ROW}"><td style="{_CELL}white-space:nowrap;">'
                        f'<span style="{_chip(_STATE_OF.get(r.status, "skip"))}">{mark} {label}</span></td>'
                        f'<td style="{_CELL}">{html.escape(r.name)}</td>'
                        f'<td style="{_CELL}color:{_MUTED};font-size:12px;">{html.escape(r.inputs)}</td>'
                        f'<td style="{_CELL}">{_safe(r.message)}</td></tr>')
        header = "".join(f'<th style="{_HEAD}">{name}</th>' for name in ("结果", "用例", "输入", "说明"))
        table = (f'<table style="border-collapse:collapse;width:100%;color:{_TEXT};background-color:{_BG};">'
                 f'<thead><tr style="{_ROW}">{header}</tr></thead><tbody>' + "".join(rows) + "</tbody></table>")
        parts = [head, meta, table]
        if self.hints:
            links = self.book_links()
            items = "".join(f'<li style="color:{_TEXT};">{_safe(h)}{_book_link(*links[h]) if h in links else ""}</li>'
                            for h in self.hints)
            parts.append(f'<div style="margin-top:8px;background-color:var(--lg-hint-bg,#fff8c5);color:{_TEXT};'
                         f'border:1px solid var(--lg-hint-line,#d4a72c);padding:6px 10px;border-radius:4px;">'
                         f'<b>提示</b><ul style="margin:4px 0;">{items}</ul></div>')
        png = self.plot_png
        if png:
            # transparent: the card's background shows through; a dark theme inverts it
            # (_DARK_PLOT_STYLE), so its black lines and text become light
            parts.append(f'<div style="margin-top:8px;color:{_TEXT};"><b>你的实现与参考实现的对比</b><br>'
                         f'<img class="lossgrader-plot" alt="你的实现（虚线）与参考实现（实线）的曲线对比图" '
                         f'src="data:image/png;base64,{png}"></div>')
        out = self.captured.text() if self.captured else ""
        if out:
            if len(out) > 4000:
                out = out[:4000] + "\n…（输出过长，已截断）"
            parts.append(f'<details style="margin-top:8px;color:{_TEXT};"><summary>你的代码在检查期间的输出（print / 警告）</summary>'
                         f'<pre style="background-color:{_SUBTLE};color:{_TEXT};padding:6px;margin:4px 0;'
                         f'white-space:pre-wrap;">{html.escape(out)}</pre></details>')
        parts.append("</div>")
        return "".join(parts)


#: The theme's two colours, and the rest mixed from them (custom properties of the card's
#: root). Colab's variables first, then JupyterLab's (JupyterLab never sets Colab's); a
#: page without either, or a sanitiser that drops custom properties (the feedback pages'
#: nh3, JupyterLab's for untrusted output), leaves every var() below on its light fallback.
_THEME = ("--lg-text:var(--colab-primary-text-color,var(--jp-content-font-color1,#1f2328));"
          "--lg-bg:var(--colab-primary-surface-color,var(--jp-layout-color0,#ffffff));"
          "--lg-muted:color-mix(in srgb,var(--lg-text) 72%,var(--lg-bg));"
          "--lg-subtle:color-mix(in srgb,var(--lg-text) 7%,var(--lg-bg));"
          "--lg-line:color-mix(in srgb,var(--lg-text) 18%,var(--lg-bg));"
          "--lg-code:color-mix(in srgb,var(--lg-text) 11%,var(--lg-bg));"
          "--lg-hint-bg:color-mix(in srgb,#d4a72c 20%,var(--lg-bg));"
          "--lg-hint-line:color-mix(in srgb,#d4a72c 75%,var(--lg-bg));"
          "--lg-pass:color-mix(in srgb,#2da44e 24%,var(--lg-bg));"
          "--lg-warn:color-mix(in srgb,#d4a72c 30%,var(--lg-bg));"
          "--lg-fail:color-mix(in srgb,#cf222e 24%,var(--lg-bg));"
          "--lg-skip:color-mix(in srgb,var(--lg-text) 12%,var(--lg-bg));")
#: In a dark theme (JupyterLab marks its <body>, Colab its <html>) the transparent plot is
#: inverted, with the hue turned back: black text and axes become light, the curves keep
#: their colours. A sanitiser that removes <style> leaves the card light (see _THEME).
_DARK_PLOT_STYLE = ('<style>body[data-jp-theme-light="false"] img.lossgrader-plot,'
                    'html[theme="dark"] img.lossgrader-plot{filter:invert(1) hue-rotate(180deg);}</style>')
_TEXT = "var(--lg-text,#1f2328)"
_BG = "var(--lg-bg,#ffffff)"
_MUTED = "var(--lg-muted,#57606a)"
_SUBTLE = "var(--lg-subtle,#f6f8fa)"
_ACCENT = {"pass": "#2da44e", "warn": "#d4a72c", "fail": "#cf222e"}
#: Each status is a chip: a background tinted with its hue, the theme's text on it (a
#: coloured text cannot keep 4.5:1 on both a white and a dark grey background).
_CHIP_LIGHT = {"pass": "#dafbe1", "warn": "#fff8c5", "fail": "#ffebe9", "skip": "#eaeef2"}
_STATE_OF = {"pass": "pass", "fail": "fail", "error": "fail", "timeout": "fail", "forbidden": "fail",
             "notimpl": "warn", "skipped": "skip"}


def _chip(state: str) -> str:
    return (f"background-color:var(--lg-{state},{_CHIP_LIGHT[state]});color:{_TEXT};"
            "border-radius:3px;padding:0 5px;white-space:nowrap;")


_CARD = f"background-color:{_BG};color:{_TEXT};border:1px solid var(--lg-line,#d0d7de);"
_ROW = f"background-color:{_BG};"
_BOX = (f"text-align:left;vertical-align:top;padding:3px 8px;color:{_TEXT};border:none;"
        "border-bottom:1px solid var(--lg-line,#eaeef2);")
_CELL = f"{_BOX}background-color:{_BG};"
_HEAD = f"{_BOX}background-color:{_SUBTLE};font-weight:bold;"
_CODE = f"background-color:var(--lg-code,#eff1f3);color:{_TEXT};padding:0 3px;border-radius:3px;"


def _book_link(title: str, address: str) -> str:
    """The hint's link to the book: online from a notebook, the local build from a feedback page."""
    return (f' <a href="{html.escape(address)}" target="_blank" rel="noopener" style="color:inherit;">'
            f'（课本：{html.escape(title)}）</a>')


def _strip_tags(text: str) -> str:
    return text.replace("<br>", " ").replace("<code>", "`").replace("</code>", "`")


def _safe(text: str) -> str:
    """Escape a message for HTML, keeping the <code> tags our own messages use.

    Every < and > is escaped, so no tag but <code> can come out of it. Entities that are
    already there stay as they are: the judge escapes what it quotes from student code,
    and escaping that again would show "&lt;" to the student."""
    text = _BARE_AMPERSAND.sub("&amp;", text or "")
    text = text.replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
    text = text.replace("&lt;br&gt;", "<br>")    # the judge's line break before an exception's own message
    return text.replace("&lt;code&gt;", f'<code style="{_CODE}">').replace("&lt;/code&gt;", "</code>")


_BARE_AMPERSAND = re.compile(r"&(?!(?:[A-Za-z][A-Za-z0-9]*|#[0-9]+|#[xX][0-9A-Fa-f]+);)")
