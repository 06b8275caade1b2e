"""A `charrnn serve` subprocess on a free loopback port and a small HTTP client for it, for
test_serve.py and test_serve_page.py (standard library only; server-sent events parsed by hand)."""
from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import sys
import tempfile
import time

MODEL = "shakespeare"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A `charrnn serve` process and small HTTP helpers for it."""

    def __init__(self, *args: str, key: str | None = None, models: tuple[str, ...] = (MODEL,)):
        self.port = free_port()
        self.key = key
        self.log = tempfile.TemporaryFile()        # stderr: a pipe nobody reads could fill and stall it
        self.proc = subprocess.Popen([sys.executable, "-m", "charrnn", "serve", *models, "--port", str(self.port),
                                      *args], stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.monotonic() + 240          # a cold Numba cache compiles the kernels first
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"the server exited: {self.log.read().decode(errors='replace')}")
            try:
                if self.request("GET", "/health")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError("the server did not become ready")

    def conn(self, timeout: float = 60) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def headers(self, extra: dict | None = None) -> dict:
        h = {"Content-Type": "application/json"}
        if self.key:
            h["Authorization"] = f"Bearer {self.key}"
        return {**h, **(extra or {})}

    def request(self, method: str, path: str, body=None, headers: dict | None = None) -> tuple[int, bytes]:
        c = self.conn()
        try:
            data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
            c.request(method, path, data, self.headers(headers))
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def complete(self, **body) -> dict:
        status, data = self.request("POST", "/v1/completions", body)
        assert status == 200, data
        return json.loads(data)

    def open_stream(self, **body) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        c = self.conn()
        c.request("POST", "/v1/completions", json.dumps({**body, "stream": True}).encode(), self.headers())
        r = c.getresponse()
        assert r.status == 200, r.read()
        assert r.getheader("content-type").startswith("text/event-stream")
        return c, r

    def metric(self, name: str) -> float:
        status, data = self.request("GET", "/metrics")
        assert status == 200
        for line in data.decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise KeyError(name)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        finally:
            self.log.close()


def events(resp: http.client.HTTPResponse, limit: int | None = None):
    """The `data:` payloads of a server-sent event stream, parsed; '[DONE]' as the string."""
    seen = 0
    while True:
        line = resp.readline()
        if not line:
            return
        line = line.rstrip(b"\r\n")
        if not line:
            continue
        assert line.startswith(b"data: "), line
        payload = line[6:].decode()
        yield payload if payload == "[DONE]" else json.loads(payload)
        seen += 1
        if limit is not None and seen >= limit:
            return
