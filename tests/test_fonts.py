"""Every figure of the book draws its text with fonts that have the glyphs, on a machine
without any system CJK font (Colab, a fresh install).

The book's notebooks are executed (their code cells, in an IPython shell with the inline
backend the book build uses) in a subprocess whose matplotlib font list holds only fonts
without CJK glyphs: a fresh MPLCONFIGDIR with a font cache built from the system fonts
minus every font that maps a CJK ideograph (Debian's fonts-noto-cjk included). What
the figures need must then come from the course's own subset, lossgrader/fonts/, which
the chapters load with ``use_cjk_font()``.

Three independent witnesses of a missing glyph, all recorded in the subprocess:

* every text artist that is drawn: each character outside ``$...$`` math must be in the
  cmap of one of the fonts matplotlib resolves the artist's font properties to (the
  fallback chain), and a CJK character in the course subset itself;
* matplotlib's "Glyph ... missing from font(s) ..." warnings (even where a chapter
  silences warnings);
* matplotlib's log messages at WARNING or above (mathtext's "substituting with a dummy
  symbol").

``tools/make_font_subset.py --check`` is run as well: a character of a code cell or a
grader label that the subset lacks fails it even before anything is drawn.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BOOK = Path(os.environ.get("LOSSBOOK_ROOT", REPO)).resolve() / "book"
RUN_TIMEOUT_S = 300

#: CJK ideographs, kana, hangul, CJK punctuation and full-width forms: these must come
#: from the course subset, never from another font.
CJK_RE = re.compile(r"[\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\ufe30-\ufe4f\uff00-\uffef]")
#: Unescaped $...$ math spans of a matplotlib string (mathtext draws them with its own fonts).
#: matplotlib's messages about fonts and glyphs (other warnings are the build's business).
FONT_MESSAGE_RE = re.compile(r"glyph|font", re.IGNORECASE)
MATH_RE = re.compile(r"(?<!\\)\$(?:\\\$|[^$])*?(?<!\\)\$")


def _has_cjk_glyphs(path: str) -> bool:
    from matplotlib import ft2font
    try:
        font = ft2font.FT2Font(path)
        faces = [font] + [ft2font.FT2Font(path, face_index=i) for i in range(1, font.num_faces)]
    except Exception:
        return False
    return any(any(0x4E00 <= c <= 0x9FFF for c in face.get_charmap()) for face in faces)


def make_font_cache_without_cjk(config_dir: Path) -> list[str]:
    """Write matplotlib's font cache into config_dir, built from the system fonts minus every
    font with CJK glyphs; returns the fonts left out."""
    from matplotlib import font_manager

    excluded: list[str] = []
    original = font_manager.findSystemFonts

    def without_cjk(fontpaths=None, fontext="ttf"):
        found = []
        for path in original(fontpaths, fontext):
            if fontext != "afm" and _has_cjk_glyphs(path):
                excluded.append(path)
            else:
                found.append(path)
        return found

    font_manager.findSystemFonts = without_cjk
    try:
        manager = font_manager.FontManager()
    finally:
        font_manager.findSystemFonts = original
    config_dir.mkdir(parents=True, exist_ok=True)
    font_manager.json_dump(manager, config_dir / f"fontlist-v{font_manager.FontManager.__version__}.json")
    return sorted(set(excluded))


def book_notebooks() -> list[Path]:
    return sorted(BOOK.glob("*.ipynb"))


def run_notebooks_without_cjk_fonts(notebooks, tmp_path: Path) -> dict:
    """Execute notebooks in subprocesses that see no system CJK font (one per CPU core, up
    to 3, the notebooks dealt out among them); returns their merged report."""
    config_dir = tmp_path / "mplconfig"
    excluded = make_font_cache_without_cjk(config_dir)
    env = dict(os.environ)
    env.update(
        MPLCONFIGDIR=str(config_dir),
        MPLBACKEND="module://matplotlib_inline.backend_inline",
        LOSSGRADER_DEVICE="cpu",
        OMP_NUM_THREADS="1",  # one thread per runner: the runners share the cores
        PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]),
    )
    notebooks = [str(nb) for nb in notebooks]
    workers = max(1, min(len(notebooks), os.cpu_count() or 1, 3))
    runs = []
    for index in range(workers):
        report_path, log_path = tmp_path / f"report-{index}.json", tmp_path / f"runner-{index}.log"
        with open(log_path, "w") as log:
            proc = subprocess.Popen([sys.executable, __file__, str(report_path), *notebooks[index::workers]],
                                    cwd=BOOK, env=env, stdout=subprocess.DEVNULL, stderr=log, text=True)
        runs.append((proc, report_path, log_path))
    merged = {"visible_cjk_fonts": [], "errors": {}, "missing": [], "warnings": [],
              "texts_checked": 0, "cjk_texts": 0, "seconds": {}, "excluded": excluded, "stderr": ""}
    deadline = time.monotonic() + RUN_TIMEOUT_S
    for proc, report_path, log_path in runs:
        try:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        stderr = log_path.read_text(encoding="utf-8", errors="replace")
        if not report_path.exists():
            pytest.fail(f"the figure runner crashed (exit {proc.returncode}):\n{stderr[-4000:]}")
        report = json.loads(report_path.read_text(encoding="utf-8"))
        for key in ("visible_cjk_fonts", "missing", "warnings"):
            merged[key] += report[key]
        for key in ("errors", "seconds"):
            merged[key].update(report[key])
        for key in ("texts_checked", "cjk_texts"):
            merged[key] += report[key]
        merged["stderr"] += stderr
    merged["visible_cjk_fonts"] = sorted(set(merged["visible_cjk_fonts"]))
    return merged


def test_font_subset_covers_the_book_code_and_grader_labels():
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "make_font_subset.py"), "--check"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout


def test_font_module_uses_the_shipped_subset():
    from fontTools.ttLib import TTFont
    from lossgrader import cjkfont
    assert Path(cjkfont.FONT_PATH).is_file()
    cmap = TTFont(cjkfont.FONT_PATH).getBestCmap()
    # The commonly used characters (GB 2312 level 1) and CJK punctuation are all there.
    for char in "损失函数的梯度与学习率，。：；（）“”、—" + "αβγδεθλμσ":
        assert ord(char) in cmap, char
    # its own family name, which no system font has
    assert cjkfont.family()[0] == "Noto Sans CJK SC Lossgrader"


@pytest.fixture(scope="module")
def book_figures(tmp_path_factory):
    notebooks = book_notebooks()
    if not notebooks:
        pytest.skip(f"no notebooks in {BOOK}")
    return run_notebooks_without_cjk_fonts(notebooks, tmp_path_factory.mktemp("fonts"))


def test_no_system_cjk_font_is_visible_to_the_figures(book_figures):
    assert book_figures["visible_cjk_fonts"] == [], "the isolation from system CJK fonts failed"


def test_book_notebooks_run(book_figures):
    failed = {nb: error for nb, error in book_figures["errors"].items() if error}
    assert not failed, failed


def test_every_figure_text_has_its_glyphs(book_figures):
    assert book_figures["texts_checked"] > 0
    assert not book_figures["missing"], "\n".join(
        f"{m['notebook']}: {m['char']!r} (U+{ord(m['char']):04X}) of {m['text']!r} has no glyph in "
        f"{m['fonts']}" for m in book_figures["missing"])


def test_matplotlib_reports_no_missing_glyph(book_figures):
    assert not book_figures["warnings"], "\n".join(book_figures["warnings"])


def test_chinese_figure_text_is_drawn_with_the_course_font(book_figures):
    """Every chapter that draws Chinese text draws it (and so registers) the subset."""
    assert book_figures["cjk_texts"] > 0, "no figure of the book has Chinese text"


def test_a_character_missing_from_the_subset_is_caught(tmp_path):
    """The checks fail on a chapter that draws a character the subset lacks (龘)."""
    from fontTools.ttLib import TTFont
    from lossgrader import cjkfont
    rare = "龘"
    assert ord(rare) not in TTFont(cjkfont.FONT_PATH).getBestCmap()
    cell = ("import matplotlib.pyplot as plt\n"
            "from lossgrader.cjkfont import use_cjk_font\n"
            "use_cjk_font()\n"
            "import warnings; warnings.simplefilter('ignore')\n"
            f"fig, ax = plt.subplots(); ax.set_title('损失 {rare}'); ax.set_xlabel('残差 $y-\\\\hat{{y}}$')\n"
            "plt.show()\n")
    notebook = {"cells": [{"cell_type": "code", "source": cell, "metadata": {}, "outputs": [],
                           "execution_count": None}],
                "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "rare.ipynb"
    path.write_text(json.dumps(notebook, ensure_ascii=False), encoding="utf-8")
    report = run_notebooks_without_cjk_fonts([path], tmp_path)
    assert report["errors"][str(path)] is None
    assert {m["char"] for m in report["missing"]} == {rare}
    assert any("missing from font" in w for w in report["warnings"])


# -- feedback plots of a grading process, with an empty font cache ----------------------

def _empty_cache_env(tmp_path: Path) -> dict:
    config = tmp_path / "empty-mplconfig"
    config.mkdir()
    env = dict(os.environ, MPLCONFIGDIR=str(config), LOSSGRADER_DEVICE="cpu", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    env.pop("MPLBACKEND", None)
    return env


def _no_missing_glyph(report: dict, output: str) -> None:
    assert report["cjk_texts"] > 0, "no Chinese text was drawn"
    assert not report["missing"], "\n".join(
        f"{m['notebook']}: {m['char']!r} of {m['text']!r} has no glyph in {m['fonts']}" for m in report["missing"])
    assert not report["warnings"], "\n".join(report["warnings"])
    assert not re.search(r"Glyph .* missing from font|missing from font\(s\)", output), output[-3000:]


def test_first_feedback_plots_of_fresh_grading_threads_have_every_glyph(tmp_path):
    """A fresh process with an empty MPLCONFIGDIR: four threads draw their first feedback
    plot at once (the import of matplotlib's font manager, building the cache, releases them
    together). Each plot's Chinese legend and axis label are drawn with the course subset,
    and nothing about glyphs reaches stderr. Before the font list was published after the
    subset's registration, one of them drew in DejaVu Sans with 28 warnings."""
    report_path = tmp_path / "threads.json"
    proc = subprocess.run([sys.executable, __file__, "--fresh-threads", str(report_path), "4"],
                          env=_empty_cache_env(tmp_path), cwd=tmp_path, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(report_path.read_text(encoding="utf-8"))
    assert report["plots"] == 4
    _no_missing_glyph(report, proc.stdout + proc.stderr)
    subset = os.path.realpath(os.path.join(REPO, "lossgrader", "fonts", "NotoSansSC-lossgrader-subset.otf"))
    assert {d["where"] for d in report["drawn"] if subset in d["fonts"]} == {f"grading-{n}" for n in range(4)}


def test_autograde_with_an_empty_font_cache_draws_its_first_plots_with_the_course_font(tmp_path):
    """``lossgrader autograde -j 2`` in a fresh process with an empty MPLCONFIGDIR, on four
    hand-ins with the sample class's typical mistakes (every failed element-wise loss gets
    a plot): no feedback plot, the first one included, lacks a glyph, and the instructor's
    terminal shows no font warning. The course font's first read is made slow, the window in
    which the other grading thread used to draw its first plot in DejaVu Sans."""
    from course_copy import copy_course

    aids = ["02_regression", "03_classification"]
    root = copy_course(tmp_path / "course", aids, exercises=False)
    for n in (1, 2):
        for aid in aids:
            dest = Path(root, "submitted", f"s{n}_{aid[:2]}", aid)
            dest.mkdir(parents=True)
            shutil.copy2(REPO / "samples" / "submitted" / "demo_bugs" / aid / f"{aid}.ipynb", dest)
    report_path = tmp_path / "autograde.json"
    proc = subprocess.run([sys.executable, __file__, "--grading-process", str(report_path), "2",
                           "--course", root, "autograde", "-j", "2", "--cell-timeout", "120"],
                          env=_empty_cache_env(tmp_path), cwd=root, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    report = json.loads(report_path.read_text(encoding="utf-8"))
    _no_missing_glyph(report, proc.stdout + proc.stderr)
    drawn_by = {d["where"] for d in report["drawn"]}
    assert len(drawn_by) == 2, drawn_by            # both grading threads drew plots
    # the feedback plots are in the autograded notebooks
    pngs = sum(json.dumps(json.loads(p.read_text(encoding="utf-8"))).count("image/png")
               for p in Path(root, "autograded").rglob("*.ipynb"))
    assert pngs >= 4


# -- the runner (executed in the subprocess) ---------------------------------------------


def _record_glyphs(report: dict, label) -> None:
    """Record in ``report`` every drawn text whose characters lack a glyph in the fonts
    matplotlib resolves it to (a CJK character must come from the course subset), and
    matplotlib's font warnings and log messages; ``label()`` names where it was drawn.
    Patches matplotlib's classes, so it sees every thread of the process."""
    import logging

    from matplotlib import _api, font_manager, ft2font
    from matplotlib.text import Text

    for key, empty in (("missing", []), ("warnings", []), ("texts_checked", 0), ("cjk_texts", 0),
                       ("drawn", [])):
        report.setdefault(key, empty)
    subset_path = os.path.realpath(os.path.join(REPO, "lossgrader", "fonts", "NotoSansSC-lossgrader-subset.otf"))
    cmaps: dict[str, set] = {}

    def cmap(path):
        if path not in cmaps:
            cmaps[path] = set(ft2font.FT2Font(path).get_charmap())
        return cmaps[path]

    original_draw = Text.draw

    def checked_draw(self, renderer):
        text = self.get_text() if self.get_visible() else ""
        if text:
            report["texts_checked"] += 1
            plain = text if self.get_usetex() else MATH_RE.sub("", text)
            fonts = [os.path.realpath(p) for p in
                     font_manager.fontManager._find_fonts_by_props(self.get_fontproperties())]
            if CJK_RE.search(plain):
                report["cjk_texts"] += 1
                report["drawn"].append({"where": label(), "text": text, "fonts": fonts})
            for char in sorted(set(plain) - set(" \n\t")):
                owners = [p for p in fonts if ord(char) in cmap(p)]
                cjk = CJK_RE.match(char)
                entry = {"notebook": label(), "text": text, "char": char, "fonts": fonts}
                if (not owners or (cjk and subset_path not in owners)) and entry not in report["missing"]:
                    report["missing"].append(entry)
        return original_draw(self, renderer)

    Text.draw = checked_draw

    original_warn = _api.warn_external

    def recording_warn(message, category=None):
        if FONT_MESSAGE_RE.search(str(message)):
            report["warnings"].append(f"{label()}: {message}")
        return original_warn(message, category)

    _api.warn_external = recording_warn

    class Recorder(logging.Handler):
        def emit(self, record):
            if FONT_MESSAGE_RE.search(record.getMessage()):
                report["warnings"].append(f"{label()}: [{record.name}] {record.getMessage()}")

    logging.getLogger("matplotlib").addHandler(Recorder(level=logging.WARNING))


def _runner(report_path: str, notebooks: list[str]) -> None:
    import warnings

    import matplotlib
    from IPython.core.interactiveshell import InteractiveShell
    from matplotlib import font_manager

    report = {"visible_cjk_fonts": [], "errors": {}, "missing": [], "warnings": [],
              "texts_checked": 0, "cjk_texts": 0, "seconds": {}}
    report["visible_cjk_fonts"] = sorted({f.fname for f in font_manager.fontManager.ttflist
                                          if _has_cjk_glyphs(f.fname)})
    current = {"notebook": None}
    _record_glyphs(report, lambda: current["notebook"])

    shell = InteractiveShell.instance()
    import matplotlib.pyplot as plt
    for notebook in notebooks:
        current["notebook"] = notebook
        report["errors"][notebook] = None
        started = time.monotonic()
        shell.reset(new_session=False)
        plt.close("all")
        with warnings.catch_warnings():
            matplotlib.rcdefaults()  # each chapter sets up its own fonts
            cells = json.loads(Path(notebook).read_text(encoding="utf-8"))["cells"]
            for index, cell in enumerate(c for c in cells if c["cell_type"] == "code"):
                source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
                result = shell.run_cell(source, store_history=False, silent=False)
                if not result.success:
                    error = result.error_in_exec or result.error_before_exec
                    report["errors"][notebook] = f"code cell {index}: {error!r}"
                    break
            for number in plt.get_fignums():  # figures a chapter never showed
                plt.figure(number).canvas.draw()
            plt.close("all")
        report["seconds"][notebook] = round(time.monotonic() - started, 1)
    Path(report_path).write_text(json.dumps(report, ensure_ascii=False, indent=1), encoding="utf-8")


def _fresh_threads(report_path: str, threads: int) -> None:
    """A fresh process: ``check()`` finds the same typical BCE mistake ``threads`` times,
    then as many threads draw their reports' feedback plots at once, as the grading
    threads of ``lossgrader autograde -j N`` draw their first ones."""
    import threading

    import torch

    from lossgrader import check

    def bce_without_the_negative_class(probs, target):     # demo_bugs' BCE: the (1 - y) term left out
        return -(target * torch.log(probs)).mean()

    reports = [check("bce", bce_without_the_negative_class, device="cpu") for _ in range(threads)]
    assert all(r.plot is not None for r in reports), "no feedback plot to draw"
    assert "matplotlib.font_manager" not in sys.modules      # nothing touched the fonts before the threads
    report: dict = {}
    _record_glyphs(report, lambda: threading.current_thread().name)
    barrier = threading.Barrier(threads)
    pages = {}

    def draw(n):
        barrier.wait()
        pages[n] = reports[n]._repr_html_()

    workers = [threading.Thread(target=draw, args=(n,), name=f"grading-{n}") for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    report["plots"] = sum("data:image/png;base64," in page for page in pages.values())
    Path(report_path).write_text(json.dumps(report, ensure_ascii=False, indent=1), encoding="utf-8")


def _grading_process(report_path: str, slow_seconds: float, argv: list[str]) -> int:
    """``lossgrader`` itself (lossgrader.cli.main(argv)) with the glyph recorder, and the
    course font's first read made ``slow_seconds`` slower (a cold disk, a network home):
    the time in which a second grading thread used to draw its first plot without it."""
    import atexit
    import threading

    from matplotlib import font_manager

    report: dict = {}
    _record_glyphs(report, lambda: threading.current_thread().name)
    original_addfont = font_manager.FontManager.addfont

    def slow_addfont(self, path):
        time.sleep(slow_seconds)
        return original_addfont(self, path)

    font_manager.FontManager.addfont = slow_addfont
    atexit.register(lambda: Path(report_path).write_text(json.dumps(report, ensure_ascii=False, indent=1),
                                                         encoding="utf-8"))
    from lossgrader.cli import main
    return main(argv)


if __name__ == "__main__":
    if sys.argv[1] == "--fresh-threads":
        _fresh_threads(sys.argv[2], int(sys.argv[3]))
    elif sys.argv[1] == "--grading-process":
        sys.exit(_grading_process(sys.argv[2], float(sys.argv[3]), sys.argv[4:]))
    else:
        _runner(sys.argv[1], sys.argv[2:])
