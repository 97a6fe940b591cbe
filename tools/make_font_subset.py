#!/usr/bin/env python
"""Build the course's CJK font (lossgrader/fonts/) from Noto Sans CJK SC, or check it.

The book's figures and the grader's feedback plots draw Chinese text with one font, a
subset of Noto Sans CJK SC shipped in the lossgrader package (``lossgrader.cjkfont``),
so that they render on Colab and on machines without a system CJK font. The subset's
character set is derived, not hand-listed:

* the 3755 level-1 hanzi of GB 2312 (the commonly used characters) and GB 2312's
  punctuation, full-width forms, Greek and pinyin rows, enumerated with Python's
  ``gb2312`` codec;
* CJK punctuation (U+3000-303F), full-width forms (U+FF00-FFEF), Greek, Latin-1,
  general punctuation, arrows, mathematical operators, super- and subscripts;
* every character that appears in the book (``book/``: Markdown pages, every cell of
  every notebook) and in the grader's plot labels (``lossgrader.exercises.plot_label_characters``).

Characters Noto Sans CJK SC does not have (e.g. ŷ) are left to matplotlib's own DejaVu
Sans, which ``lossgrader.cjkfont`` puts second in the font family list.

Usage (Debian: ``apt-get install fonts-noto-cjk``)::

    python tools/make_font_subset.py           # rewrite lossgrader/fonts/NotoSansSC-lossgrader-subset.otf
    python tools/make_font_subset.py --check   # exit 1 when a character that the book's code
                                               # cells or the grader's labels use has no glyph

``--check`` needs neither the system font nor a rebuild: it reads the shipped subset.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import unicodedata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE_FONT = Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc")
SOURCE_FAMILY = "Noto Sans CJK SC"
#: The subset's own family name: on a machine with fonts-noto-cjk, matplotlib would
#: otherwise find two "Noto Sans CJK SC" and might draw with the system one, so that a
#: build would not show what Colab (subset only) shows.
SUBSET_FAMILY = "Noto Sans CJK SC Lossgrader"

sys.path.insert(0, str(ROOT))
from lossgrader.cjkfont import FONT_PATH  # noqa: E402  (the one place the path is written)

#: Unicode blocks taken whole (where the source font has the character).
RANGES = (
    (0x0020, 0x007E),  # printable ASCII
    (0x00A0, 0x00FF),  # Latin-1 supplement: ° ± × ÷ ² ³ · ...
    (0x0391, 0x03C9),  # Greek capitals and small letters
    (0x2010, 0x205E),  # general punctuation: – — ‘ ’ “ ” … ‰ ′ ″
    (0x2070, 0x209C),  # superscripts and subscripts
    (0x2100, 0x214F),  # letterlike symbols: ℃ ℝ №
    (0x2150, 0x218F),  # number forms: ½ Ⅰ Ⅱ
    (0x2190, 0x21FF),  # arrows
    (0x2200, 0x22FF),  # mathematical operators: − ≤ ≥ ≈ ∑ √ ∞ ∂ ∇
    (0x2460, 0x24FF),  # enclosed alphanumerics: ① ②
    (0x25A0, 0x25FF),  # geometric shapes: ■ □ ▲ ●
    (0x3000, 0x303F),  # CJK symbols and punctuation: 、。「」【】
    (0xFF01, 0xFF5E),  # full-width ASCII: ，：；（）！？
    (0xFF5F, 0xFFEE),  # half-width CJK punctuation, full-width signs ￥
)

#: GB 2312 rows (EUC-CN lead bytes) taken whole: 1 symbols, 2 numerals, 3 full-width
#: ASCII, 6 Greek, 8 pinyin; 16-55 the level-1 hanzi.
GB2312_ROWS = (1, 2, 3, 6, 8, *range(16, 56))


def gb2312_characters(rows=GB2312_ROWS) -> set[str]:
    chars = set()
    for row in rows:
        for cell in range(1, 95):
            try:
                chars.add(bytes([0xA0 + row, 0xA0 + cell]).decode("gb2312"))
            except UnicodeDecodeError:
                pass  # unassigned position
    return chars


def range_characters() -> set[str]:
    return {chr(c) for lo, hi in RANGES for c in range(lo, hi + 1)}


def _notebook_cells(path: Path, cell_type: str | None = None) -> list[str]:
    notebook = json.loads(path.read_text(encoding="utf-8"))
    sources = []
    for cell in notebook.get("cells", []):
        if cell_type is None or cell.get("cell_type") == cell_type:
            source = cell.get("source", "")
            sources.append("".join(source) if isinstance(source, list) else source)
    return sources


def book_code_characters(root: Path = ROOT) -> set[str]:
    """Characters of the code cells of the book's notebooks: what its figures can draw."""
    text = "".join(s for nb in sorted((root / "book").glob("*.ipynb")) for s in _notebook_cells(nb, "code"))
    return set(text)


def book_characters(root: Path = ROOT) -> set[str]:
    """Every character of the book's pages (Markdown and every notebook cell)."""
    chars = set()
    for path in sorted((root / "book").glob("*")):
        if path.suffix == ".ipynb":
            chars.update("".join(_notebook_cells(path)))
        elif path.suffix == ".md":
            chars.update(path.read_text(encoding="utf-8"))
    return chars


def label_characters() -> set[str]:
    from lossgrader.exercises import plot_label_characters as grader_labels
    return set(grader_labels())


def drawable(chars: set[str]) -> set[str]:
    """Drop control, format and other invisible characters (newlines, tabs, U+200B)."""
    return {c for c in chars if unicodedata.category(c)[0] != "C" and c not in "\n\r\t"}


def used_characters(root: Path = ROOT) -> set[str]:
    """What --check requires: the characters the book's code cells and the grader's labels use."""
    return drawable(book_code_characters(root) | label_characters())


def wanted_characters(root: Path = ROOT) -> set[str]:
    return drawable(gb2312_characters() | range_characters() | book_characters(root) | label_characters())


def cmap(path, font_number: int = 0) -> set[int]:
    from fontTools.ttLib import TTFont
    return set(TTFont(str(path), fontNumber=font_number, lazy=True).getBestCmap())


def source_font_number(path: Path = SOURCE_FONT) -> int:
    from fontTools.ttLib import TTCollection
    for number, font in enumerate(TTCollection(str(path), lazy=True).fonts):
        if font["name"].getDebugName(1) == SOURCE_FAMILY:
            return number
    raise SystemExit(f"{path} holds no {SOURCE_FAMILY!r}")


def fallback_cmap() -> set[int]:
    """The characters matplotlib's own DejaVu Sans draws (the family's second font)."""
    from matplotlib import font_manager
    return cmap(font_manager.findfont("DejaVu Sans", fallback_to_default=False))


def build(out: Path = Path(FONT_PATH), source: Path = SOURCE_FONT) -> tuple[set[str], set[str]]:
    """Write the subset; returns (characters kept, characters the source font lacks)."""
    from fontTools import subset

    if not source.exists():
        raise SystemExit(f"{source} not found (Debian: apt-get install fonts-noto-cjk)")
    number = source_font_number(source)
    available = cmap(source, number)
    wanted = wanted_characters()
    kept = {c for c in wanted if ord(c) in available}

    options = subset.Options()
    options.font_number = number
    options.name_IDs = ["*"]           # keep the copyright and the OFL licence records
    options.name_languages = ["*"]
    options.layout_features = []       # matplotlib does no OpenType shaping: no GSUB/GPOS closure
    options.hinting = False            # matplotlib's Agg auto-hints; CFF hints only add bytes
    options.notdef_outline = True
    font = subset.load_font(str(source), options)
    subsetter = subset.Subsetter(options)
    subsetter.populate(unicodes=sorted(ord(c) for c in kept))
    subsetter.subset(font)
    rename(font, SUBSET_FAMILY)
    out.parent.mkdir(parents=True, exist_ok=True)
    subset.save_font(font, str(out), options)
    return kept, wanted - kept


def rename(font, family: str) -> None:
    """Give the font the family name ``family`` (name table and CFF); the PostScript name
    and the copyright and licence records stay."""
    full = f"{family} Regular"
    for record in font["name"].names:
        if record.nameID in (1, 16):
            record.string = family
        elif record.nameID in (3, 4):
            record.string = full
    if "CFF " in font:
        top = font["CFF "].cff.topDictIndex[0]
        top.FamilyName, top.FullName = family, full


def check(font: Path = Path(FONT_PATH)) -> list[str]:
    """Characters used by the book's code cells or the grader's labels without a glyph in
    the subset (CJK ones) or in subset + DejaVu Sans (the others)."""
    if not font.exists():
        return sorted(used_characters())
    in_subset = cmap(font)
    in_family = in_subset | fallback_cmap()
    missing = []
    for char in sorted(used_characters()):
        # A CJK character must come from the subset itself; others may fall back.
        is_cjk = ord(char) >= 0x2E80
        if ord(char) not in (in_subset if is_cjk else in_family):
            missing.append(char)
    return missing


def describe(chars) -> str:
    return ", ".join(f"{c!r} U+{ord(c):04X} {unicodedata.name(c, '?')}" for c in sorted(chars))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when a character of the book's code cells or the grader's labels has no glyph")
    parser.add_argument("--output", type=Path, default=Path(FONT_PATH),
                        help="where to write (or, with --check, which font to check)")
    args = parser.parse_args(argv)
    font = args.output.resolve()
    if args.check:
        missing = check(font)
        if missing:
            print(f"{font} lacks {len(missing)} character(s) used by the book's code "
                  f"or the grader's labels: {describe(missing)}\n"
                  f"rebuild it: python tools/make_font_subset.py", file=sys.stderr)
            return 1
        print(f"{font} covers every character of the book's code cells and the grader's labels")
        return 0
    kept, lacking = build(font)
    from fontTools.ttLib import TTFont
    glyphs = TTFont(str(font))["maxp"].numGlyphs
    print(f"wrote {font}: {len(kept)} characters, {glyphs} glyphs, "
          f"{os.path.getsize(font) / 1024:.0f} KiB")
    from_book = lacking & drawable(book_characters() | label_characters())
    if from_book:
        fallback = fallback_cmap()
        print(f"not in {SOURCE_FAMILY}, left to DejaVu Sans: {describe(c for c in from_book if ord(c) in fallback)}")
        nowhere = {c for c in from_book if ord(c) not in fallback}
        if nowhere:
            print(f"in neither font: {describe(nowhere)}")
    missing = check(font)
    if missing:
        print(f"still without a glyph: {describe(missing)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
