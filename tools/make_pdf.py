#!/usr/bin/env python
"""Build the whole book as one PDF: cover, table of contents, the chapters in TOC order,
the errata appendix; formulas typeset, figures kept, fonts embedded, page numbers, a
table of contents whose entries link to the headings.

    python tools/make_pdf.py                    # -> _build/pdf/book.pdf

Two steps:

1. ``jupyter-book build . --builder custom --custom-builder singlehtml``: the whole book
   on one HTML page (``_build/singlehtml/``). It shares the notebook cache
   (``_build/.jupyter_cache``) with the HTML build, so after ``jupyter-book build .`` no
   notebook is executed again.
2. ``book/_ext/headless.py``'s ``print_book``: Playwright drives headless Chromium, which
   opens that page from 127.0.0.1 (nothing else is contacted), waits until MathJax has
   typeset every formula and every figure has loaded, adds the cover and the table of
   contents and prints it to A4. Chinese text is set in the course's own font
   (``lossgrader/fonts/``), so the PDF needs no system CJK font.

Needs Debian's ``chromium`` (``apt-get install chromium``) and ``playwright`` from PyPI
(requirements.txt), which drives it through ``executable_path``: no browser is downloaded.

Options: ``--path-output DIR`` builds into ``DIR/_build`` instead (e.g. a scratch
folder), ``--no-build`` prints an existing singlehtml build, ``--out FILE`` names the PDF.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "book" / "_ext"))
import headless  # noqa: E402


def build_single_html(book_root: Path, path_output: Path) -> Path:
    """Build the book on one page; returns the folder of that build."""
    exe = shutil.which("jupyter-book") or str(Path(sys.executable).with_name("jupyter-book"))
    env = dict(os.environ)
    env.pop("MPLBACKEND", None)  # the kernels must use the inline backend, as in the HTML build
    command = [exe, "build", str(book_root), "--builder", "custom", "--custom-builder", "singlehtml",
               "--path-output", str(path_output), "-n", "--keep-going"]
    proc = subprocess.run(command, cwd=book_root, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    out_dir = path_output / "_build" / "singlehtml"
    if proc.returncode != 0 or not (out_dir / headless.single_page(out_dir)).exists():
        print(proc.stdout[-6000:], file=sys.stderr)
        raise SystemExit(f"the singlehtml build failed (exit code {proc.returncode})")
    return out_dir


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--book-root", type=Path, default=ROOT,
                        help="the book to build (a checkout's root; default: this one)")
    parser.add_argument("--path-output", type=Path, default=None,
                        help="build into PATH/_build (default: the book root, sharing the HTML build's cache)")
    parser.add_argument("--out", type=Path, default=None, help="the PDF (default: <path-output>/_build/pdf/book.pdf)")
    parser.add_argument("--no-build", action="store_true", help="print the existing singlehtml build")
    args = parser.parse_args(argv)
    book_root = args.book_root.resolve()
    path_output = (args.path_output or book_root).resolve()
    out = (args.out or path_output / "_build" / "pdf" / "book.pdf").resolve()

    if not headless.find_chromium():
        raise SystemExit("Chromium not found (Debian: apt-get install chromium)")
    start = time.monotonic()
    if args.no_build:
        single = path_output / "_build" / "singlehtml"
    else:
        single = build_single_html(book_root, path_output)
    built = time.monotonic()
    checked = headless.print_book(single, out)
    pages = headless.pdf_page_count(out)
    print(f"{out}: {pages} pages, {out.stat().st_size / 2**20:.1f} MiB, {checked['headings']} headings, "
          f"{checked['formulas']} formulas, {checked['images']} figures "
          f"(build {built - start:.0f} s, print {time.monotonic() - built:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
