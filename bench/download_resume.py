"""Does a download resume after a dropped connection? pooch (hash-checked cache, retries) against
charrnn's own downloader (charrnn/catalog.py), on a loopback server that serves a file of
enwik8.zip's size (36,445,475 bytes) and drops the first connection halfway.

Reported: the bytes the server sent in all, and whether the file arrived verified. A downloader
that resumes sends the rest (about 1.0x the file); one that starts again sends 1.5x, and one that
gives up leaves the user to start again by hand.

    python bench/download_resume.py          # needs pooch (pip install pooch); no network
"""
from __future__ import annotations

import hashlib
import http.server
import os
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

SIZE = 36_445_475
BODY = (hashlib.sha256(b"seed").digest() * (SIZE // 32 + 1))[:SIZE]
SHA = hashlib.sha256(BODY).hexdigest()


class Server(http.server.ThreadingHTTPServer):
    sent = 0
    requests = 0
    drop_first = True


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        srv = self.server
        srv.requests += 1
        start = 0
        m = re.match(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if m:
            start = int(m.group(1))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{SIZE - 1}/{SIZE}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(SIZE - start))
        self.end_headers()
        end = SIZE
        if srv.drop_first:
            srv.drop_first = False
            end = SIZE // 2           # then the connection drops
        for at in range(start, end, 1 << 16):
            chunk = BODY[at:min(end, at + (1 << 16))]
            self.wfile.write(chunk)
            srv.sent += len(chunk)
        self.close_connection = True

    def log_message(self, *a):
        pass


def serve() -> Server:
    srv = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def try_pooch(tmp: Path) -> str:
    import pooch
    srv = serve()
    url = f"http://127.0.0.1:{srv.server_address[1]}/enwik8.zip"
    p = pooch.create(path=tmp / "pooch", base_url=url.rsplit("/", 1)[0] + "/",
                     registry={"enwik8.zip": f"sha256:{SHA}"}, retry_if_failed=2)
    t0 = time.perf_counter()
    try:
        path = p.fetch("enwik8.zip", progressbar=False)
        ok = Path(path).stat().st_size == SIZE
        outcome = "arrived, verified" if ok else "arrived, wrong size"
    except Exception as e:  # noqa: BLE001 (what pooch raises is the measurement)
        outcome = f"failed: {type(e).__name__}"
    left = sorted(x.name for x in (tmp / "pooch").iterdir()) if (tmp / "pooch").exists() else []
    srv.shutdown()
    return (f"pooch {pooch.__version__}, retry_if_failed=2: {outcome}; {srv.requests} requests, "
            f"{srv.sent / SIZE:.2f}x the file sent, {time.perf_counter() - t0:.1f} s; left in its folder: {left}")


def try_charrnn(tmp: Path) -> str:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from charrnn import catalog
    from charrnn.errors import CorpusError
    srv = serve()
    entry = {"name": "enwik8", "url": f"http://127.0.0.1:{srv.server_address[1]}/enwik8.zip", "bytes": SIZE,
             "sha256": SHA, "filenames": []}
    t0 = time.perf_counter()
    tries = 0
    while True:
        tries += 1
        try:
            path = catalog.download(entry, tmp / "charrnn", progress=False)
            outcome = "arrived, verified" if catalog.file_sha256(path) == SHA else "arrived, wrong hash"
            break
        except CorpusError as e:
            if tries >= 3:
                outcome = f"failed: {e}"
                break
    srv.shutdown()
    return (f"charrnn catalog.download, run again after the break: {outcome} after {tries} runs; "
            f"{srv.requests} requests, {srv.sent / SIZE:.2f}x the file sent, {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    os.environ.pop("http_proxy", None)
    with tempfile.TemporaryDirectory() as d:
        print(try_pooch(Path(d)))
        print(try_charrnn(Path(d)))
