"""The one CJK font of the course: a subset of Noto Sans CJK SC shipped in lossgrader/fonts/.

Both the grader's feedback plots and the book's figures draw Chinese text with it, so that
they render on Colab and on fresh machines that have no system CJK font.

    from lossgrader.cjkfont import use_cjk_font
    use_cjk_font()        # matplotlib's default sans-serif family becomes the subset
"""
from __future__ import annotations

import os

FONT_PATH = os.path.join(os.path.dirname(__file__), "fonts", "NotoSansSC-lossgrader-subset.otf")
FALLBACK = "DejaVu Sans"   # matplotlib's own font: the Latin glyphs the subset lacks (ŷ, −)

_FAMILY = None


def family() -> list:
    """Font family list with the bundled subset first; registered with matplotlib once."""
    global _FAMILY
    if _FAMILY is None:
        from matplotlib import font_manager
        _FAMILY = [FALLBACK]
        if os.path.exists(FONT_PATH):
            font_manager.fontManager.addfont(FONT_PATH)
            _FAMILY = [font_manager.FontProperties(fname=FONT_PATH).get_name(), FALLBACK]
    return list(_FAMILY)


def font_properties():
    from matplotlib import font_manager
    return font_manager.FontProperties(family=family())


def use_cjk_font() -> None:
    """Make the subset matplotlib's default font (titles, labels, legends, annotations).

    ``font.family`` is the list itself, not the generic "sans-serif": a generic family
    resolves to one font only, so characters the subset lacks (ŷ) would not fall back to
    DejaVu Sans.
    """
    import matplotlib
    matplotlib.rcParams["font.family"] = family()
    matplotlib.rcParams["font.sans-serif"] = family() + [
        f for f in matplotlib.rcParams["font.sans-serif"] if f not in family()]
    matplotlib.rcParams["axes.unicode_minus"] = False
