"""The live training page: `train --report` keeps report.html current in the run directory, and
`report --serve` serves that directory, read-only, on the loopback interface.

The page reloads itself while the run is alive; it knows the run has ended when the last line of
metrics.jsonl is the trainer's final `stop` record (written however the run ends, short of a
SIGKILL), and then it stops reloading.
"""
from __future__ import annotations

import os
import time
import urllib.parse
from functools import partial
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPORT = "report.html"
REWRITE_EVERY_S = 30.0      # between validations the page is rewritten at most this often


class LiveReport:
    """Rewrites RUN/report.html atomically: at every validation, and for other progress (the
    diagnostics lines) at most every REWRITE_EVERY_S seconds."""

    def __init__(self, run_dir: str | os.PathLike):
        self.run = Path(run_dir)
        self.written_at = -float("inf")
        self.seconds = 0.0           # time spent building and writing pages, for the curious

    def update(self, validation: bool) -> None:
        if validation or time.monotonic() - self.written_at >= REWRITE_EVERY_S:
            self.write()

    def write(self) -> bool:
        """Build and replace the page; False when there is nothing to draw yet."""
        from charrnn.report import ReportError, build_report
        t0 = time.perf_counter()
        try:
            html = build_report(self.run, live=True)
        except ReportError:              # no validation yet: nothing to draw
            return False
        out = self.run / REPORT
        tmp = self.run / f".{REPORT}.tmp-{os.getpid()}"
        try:
            tmp.write_text(html, encoding="utf-8")
            os.replace(tmp, out)
        except OSError:                  # a page is a convenience: never stop training for it
            tmp.unlink(missing_ok=True)
        self.written_at = time.monotonic()
        self.seconds += time.perf_counter() - t0
        return True


class RunDirHandler(SimpleHTTPRequestHandler):
    """GET and HEAD of files under one directory and nothing else: `..`, encoded or not, is
    resolved by the URL normalisation, and a symlink that leads outside the directory is
    answered 404 like a missing file. '/' goes to the report."""

    server_version = "charrnn"

    def __init__(self, *args, directory: str, **kw):
        self.root = os.path.realpath(directory)
        super().__init__(*args, directory=self.root, **kw)

    def _inside(self, path: str) -> bool:
        real = os.path.realpath(path)
        return real == self.root or real.startswith(self.root + os.sep)

    def send_head(self):
        raw = urllib.parse.urlsplit(self.path).path
        if raw in ("", "/"):
            self.send_response(HTTPStatus.FOUND)
            self.send_header("Location", "/" + REPORT)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        if not self._inside(self.translate_path(self.path)):
            self.send_error(HTTPStatus.NOT_FOUND, "File not found")
            return None
        return super().send_head()

    def list_directory(self, path):
        self.send_error(HTTPStatus.NOT_FOUND, "File not found")
        return None

    def end_headers(self):
        self.send_header("Cache-Control", "no-store")      # the page changes under the browser
        super().end_headers()

    def log_message(self, format, *args):                 # quiet: stderr is for the user's messages
        pass


def make_server(run_dir: str | os.PathLike, port: int = 8765, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """A server for one run directory on host:port (port 0: any free port); call serve_forever()."""
    return ThreadingHTTPServer((host, port), partial(RunDirHandler, directory=str(run_dir)))
