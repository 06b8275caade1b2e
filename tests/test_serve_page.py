"""The page `charrnn serve` answers at / (charrnn/serve_page.py), in headless Chromium driven
over the DevTools protocol on a pipe (--remote-debugging-pipe: fd 3 in, fd 4 out, NUL-ended
JSON messages; standard library only): a prompt is typed, Generate pressed, and the text is seen
growing before it ends with exactly what the API gives for the same seed.

Skips, saying why, when no Chromium is installed (Debian: apt-get install chromium).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from serve_client import Server  # noqa: E402

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed "
                                "(apt-get install chromium); browser checks skipped")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--hide-scrollbars"]


class DevTools:
    """Chromium with its DevTools protocol on two pipes, and one page attached."""

    def __init__(self, profile):
        to_r, self._to = os.pipe()            # Chromium reads commands on its fd 3
        self._from, from_w = os.pipe()        # and writes replies and events on its fd 4
        self.proc = subprocess.Popen(
            ["bash", "-c", f'exec "$0" "$@" 3<&{to_r} 4>&{from_w}', CHROMIUM, *FLAGS,
             f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"],
            pass_fds=(to_r, from_w), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_r)
        os.close(from_w)
        self._buf, self._id, self.session = b"", 0, None

    def call(self, method: str, timeout: float = 30, **params) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params}
        if self.session:
            msg["sessionId"] = self.session
        os.write(self._to, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" not in self._buf:
                assert time.monotonic() < deadline, f"no reply to {method}"
                chunk = os.read(self._from, 1 << 16)
                assert chunk, "Chromium closed its pipe"
                self._buf += chunk
            raw, self._buf = self._buf.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                assert "error" not in reply, reply
                return reply["result"]

    def open(self, url: str) -> None:
        target = self.call("Target.createTarget", url=url)["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def js(self, expr: str):
        res = self.call("Runtime.evaluate", expression=expr, returnByValue=True)
        assert "exceptionDetails" not in res, res
        return res["result"].get("value")

    def wait_for(self, expr: str, timeout: float = 30):
        deadline = time.monotonic() + timeout
        while not (value := self.js(expr)):
            assert time.monotonic() < deadline, f"timed out waiting for {expr}"
            time.sleep(0.05)
        return value

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        os.close(self._to)
        os.close(self._from)


def test_typing_a_prompt_streams_the_text_in(tmp_path):
    server = Server()
    browser = DevTools(tmp_path / "profile")
    try:
        browser.open(f"http://127.0.0.1:{server.port}/")
        # right after createTarget the new page may have no document element yet: not loaded, not an error
        browser.wait_for("document.documentElement?.getAttribute('data-models') === '1'")
        for field, text in (("prompt", "JULIET:"), ("max_tokens", "1500"), ("seed", "42"), ("temperature", "0.9")):
            browser.js(f"var e = document.getElementById('{field}'); e.focus(); e.select(); true")
            browser.call("Input.insertText", text=text)          # typed, as a keyboard would
        browser.js("document.getElementById('go').click(); true")
        lengths = set()
        while (status := browser.js("document.documentElement.getAttribute('data-status')")) == "generating":
            lengths.add(browser.js("document.getElementById('out').textContent.length"))
            time.sleep(0.01)
        out = browser.js("document.getElementById('out').textContent")
        assert status in ("finished: length", "done"), status
        assert browser.js("document.documentElement.getAttribute('data-errors')") is None
        want = server.complete(prompt="JULIET:", max_tokens=1500, seed=42, temperature=0.9)["choices"][0]["text"]
        assert out == "JULIET:" + want
        assert len({n for n in lengths if 7 < n < len(out)}) >= 2, lengths      # seen part-way, twice
    finally:
        browser.close()
        assert server.stop() == 0
