"""Headless Chromium, driven over the DevTools protocol, for checking and printing the book.

Used by tests/test_browser.py (open every chapter, check math/images/console/search,
take screenshots) and from the command line to print the built chapters to PDF:

    python book/_ext/headless.py pdf [--html _build/html] [--out _build/pdf]

Only the standard library and ``websocket-client`` (already installed as a Jupyter
dependency) are needed. Chromium is started with every background service off and a
fresh profile, and the book is served from 127.0.0.1, so nothing but localhost is
contacted; requests to any other host are recorded so that a test can fail on them.
"""

from __future__ import annotations

import argparse
import base64
import functools
import http.server
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import websocket  # websocket-client

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "chromium", "google-chrome")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--disable-domain-reliability",
    "--metrics-recording-only",
    "--hide-scrollbars",
    "--mute-audio",
)

#: The chapters in reading order (the files listed in _toc.yml, as built HTML paths).
ROOT = Path(__file__).resolve().parents[2]


def find_chromium() -> str | None:
    for candidate in CHROMIUM_CANDIDATES:
        path = shutil.which(candidate)
        if path:
            return path
    return None


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - signature from the base class
        pass


class StaticServer:
    """Serve a folder on 127.0.0.1 in a background thread (``with StaticServer(d) as s``)."""

    def __init__(self, directory: Path):
        handler = functools.partial(_QuietHandler, directory=str(directory))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = self.httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "StaticServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)


class CDPError(RuntimeError):
    pass


class Browser:
    """One headless Chromium process with one page, controlled over the DevTools protocol.

    Events of interest are collected while commands run: console errors, uncaught
    exceptions, failed loads and requests to hosts other than localhost.
    """

    def __init__(self, chromium: str | None = None, width: int = 1280, height: int = 900):
        self.chromium = chromium or find_chromium()
        if not self.chromium:
            raise FileNotFoundError("Chromium not found (apt-get install chromium)")
        self.width, self.height = width, height
        self._ids = itertools.count(1)
        self.events: list[dict] = []
        self.proc: subprocess.Popen | None = None
        self.ws: websocket.WebSocket | None = None
        self.profile = tempfile.mkdtemp(prefix="lossbook-chromium-")

    # -- process -----------------------------------------------------------------------
    def __enter__(self) -> "Browser":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        args = [
            self.chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={self.profile}",
            f"--window-size={self.width},{self.height}",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            "about:blank",
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text().strip():
            if self.proc.poll() is not None:
                raise CDPError(f"Chromium exited early with code {self.proc.returncode}")
            if time.monotonic() > deadline:
                raise CDPError("Chromium did not open its DevTools port within 30 s")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as resp:
            targets = json.load(resp)
        page = next(t for t in targets if t.get("type") == "page")
        self.ws = websocket.create_connection(
            page["webSocketDebuggerUrl"], timeout=60, suppress_origin=True
        )
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable")
        self._set_viewport(self.width, self.height)

    def close(self) -> None:
        if self.ws is not None:
            try:
                self.ws.close()
            except Exception:
                pass
            self.ws = None
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
            self.proc = None
        shutil.rmtree(self.profile, ignore_errors=True)

    # -- protocol ----------------------------------------------------------------------
    def send(self, method: str, **params):
        """Send one command and return its result; events arriving meanwhile are kept."""
        msg_id = next(self._ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise CDPError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def wait_event(self, method: str, timeout: float = 30.0) -> dict:
        """Wait for the next event named ``method`` (events already received count)."""
        for i, event in enumerate(self.events):
            if event.get("method") == method:
                return self.events.pop(i)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.ws.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                msg = json.loads(self.ws.recv())
            except websocket.WebSocketTimeoutException:
                break
            finally:
                self.ws.settimeout(60)
            if msg.get("method") == method:
                return msg
            if "method" in msg:
                self.events.append(msg)
        raise CDPError(f"timed out waiting for {method}")

    def evaluate(self, expression: str, await_promise: bool = True, timeout_ms: int = 30000):
        result = self.send(
            "Runtime.evaluate",
            expression=expression,
            awaitPromise=await_promise,
            returnByValue=True,
            timeout=timeout_ms,
        )
        if "exceptionDetails" in result:
            raise CDPError(f"JavaScript error: {result['exceptionDetails']}")
        return result["result"].get("value")

    # -- pages -------------------------------------------------------------------------
    def open(self, url: str) -> None:
        """Navigate, wait for the load event, MathJax and every image."""
        self.events = [e for e in self.events if e.get("method") != "Page.loadEventFired"]
        self.send("Page.navigate", url=url)
        self.wait_event("Page.loadEventFired", timeout=60)
        self.evaluate(WAIT_FOR_PAGE_JS)

    def problems(self, allowed_hosts=("127.0.0.1", "localhost")) -> list[str]:
        """Console errors, exceptions, failed loads and off-host requests seen so far."""
        found = []
        urls = {
            e["params"]["requestId"]: e["params"]["request"]["url"]
            for e in self.events
            if e.get("method") == "Network.requestWillBeSent"
        }
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                text = details.get("exception", {}).get("description") or details.get("text")
                found.append(f"uncaught exception: {text}")
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                args = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
                found.append(f"console.{params.get('type')}: {args}")
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                entry = params["entry"]
                found.append(f"log error: {entry.get('text')} {entry.get('url', '')}".strip())
            elif method == "Network.loadingFailed" and not params.get("canceled"):
                url = urls.get(params.get("requestId"), "?")
                found.append(f"failed load: {params.get('errorText')} {url}")
            elif method == "Network.requestWillBeSent":
                url = params.get("request", {}).get("url", "")
                scheme = urllib.parse.urlsplit(url).scheme
                host = urllib.parse.urlsplit(url).hostname
                if scheme in ("http", "https", "ws", "wss") and host not in allowed_hosts:
                    found.append(f"request to another host: {url}")
        return found

    def clear_events(self) -> None:
        self.events = []

    def screenshot(self, path: Path, full_page: bool = True, max_height: int = 60000) -> None:
        """PNG of the page; full_page makes the viewport as tall as the page first.

        (Capturing "beyond the viewport" instead would leave the theme's sticky,
        viewport-high sidebars at their first-screen size.)
        """
        if full_page:
            height = int(self.evaluate("document.documentElement.scrollHeight"))
            self._set_viewport(self.width, min(max(height, self.height), max_height))
            self.evaluate(WAIT_FOR_PAGE_JS)
        try:
            data = self.send("Page.captureScreenshot", format="png")
        finally:
            if full_page:
                self._set_viewport(self.width, self.height)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data["data"]))

    def _set_viewport(self, width: int, height: int) -> None:
        self.send(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )

    def print_pdf(self, path: Path) -> None:
        data = self.send(
            "Page.printToPDF",
            printBackground=True,
            preferCSSPageSize=False,
            paperWidth=8.27,  # A4
            paperHeight=11.69,
            marginTop=0.5,
            marginBottom=0.5,
            marginLeft=0.5,
            marginRight=0.5,
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data["data"]))


#: Resolves once MathJax has typeset the page (if the page loads MathJax) and every
#: image has either loaded or failed.
WAIT_FOR_PAGE_JS = r"""
(async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    await MathJax.startup.promise;
  }
  const images = Array.from(document.images);
  images.forEach((img) => { img.loading = "eager"; });
  await Promise.all(images.map((img) => img.complete ? null :
      new Promise((resolve) => { img.addEventListener("load", resolve); img.addEventListener("error", resolve); })));
  await document.fonts.ready;
  return true;
})()
"""


def chapter_pages(html_dir: Path) -> list[str]:
    """HTML pages of the chapters in TOC order (relative to html_dir)."""
    import yaml

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    files = [toc["root"]]
    for part in toc.get("parts", [{"chapters": toc.get("chapters", [])}]):
        files.extend(ch["file"] for ch in part["chapters"])
    return [f"{Path(f).with_suffix('')}.html" for f in files]


def print_chapters(html_dir: Path, out_dir: Path) -> list[Path]:
    """Print every chapter of the built book to PDF, after MathJax has typeset it."""
    written = []
    with StaticServer(html_dir) as server, Browser() as browser:
        for page in chapter_pages(html_dir):
            browser.open(server.base_url + page)
            pdf = out_dir / (Path(page).stem + ".pdf")
            browser.print_pdf(pdf)
            written.append(pdf)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    pdf = sub.add_parser("pdf", help="print each built chapter to PDF")
    pdf.add_argument("--html", type=Path, default=ROOT / "_build" / "html")
    pdf.add_argument("--out", type=Path, default=ROOT / "_build" / "pdf")
    args = parser.parse_args(argv)
    if args.command == "pdf":
        if not (args.html / "index.html").exists():
            print(f"{args.html} has no built book: run `jupyter-book build .` first", file=sys.stderr)
            return 1
        for path in print_chapters(args.html, args.out):
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
