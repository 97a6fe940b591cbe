"""The one CJK font of the course: a subset of Noto Sans CJK SC shipped in lossgrader/fonts/.

Both the grader's feedback plots and the book's figures draw Chinese text with it, so that
they render on Colab and on fresh machines that have no system CJK font.

    from lossgrader.cjkfont import use_cjk_font
    use_cjk_font()        # matplotlib's default sans-serif family becomes the subset
"""
from __future__ import annotations

import os
import threading

FONT_PATH = os.path.join(os.path.dirname(__file__), "fonts", "NotoSansSC-lossgrader-subset.otf")
FALLBACK = "DejaVu Sans"   # matplotlib's own font: the Latin glyphs the subset lacks (ŷ, −)

_FAMILY = None
_LOCK = threading.Lock()


def family() -> list:
    """Font family list with the bundled subset first, registered with matplotlib's font
    manager before the list is returned.

    Thread-safe: the grading threads of one process (``lossgrader autograde -j N``, a Dask
    worker with several threads) draw their first feedback plots side by side, and with an
    empty matplotlib cache they all arrive here together, released at once by the import
    of ``matplotlib.font_manager``. The list is published only after the subset is
    registered (the list once published before, so one thread drew its first plot in
    DejaVu Sans, a box for every Chinese character). A font manager that matplotlib
    rebuilt since (a stale font cache makes ``findfont`` rebuild it in place) gets the
    subset again."""
    global _FAMILY
    from .privileges import as_root

    with _LOCK:
        with as_root():      # a grading thread run as root may write root's font cache
            from matplotlib import font_manager
        if _FAMILY is None or (len(_FAMILY) > 1 and not _registered(font_manager)):
            found = [FALLBACK]
            if os.path.exists(FONT_PATH):
                font_manager.fontManager.addfont(FONT_PATH)
                found = [font_manager.FontProperties(fname=FONT_PATH).get_name(), FALLBACK]
            _FAMILY = found
        return list(_FAMILY)


def _registered(font_manager) -> bool:
    return any(entry.fname == FONT_PATH for entry in font_manager.fontManager.ttflist)


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
