"""The report and the cell viewer in a real browser: headless Chromium loads each file, runs its
script without an error or console message, and renders a screenshot that is not blank.

Skips, saying why, when no Chromium is installed (Debian: apt-get install chromium).
"""
from __future__ import annotations

import base64
import re
import shutil
import subprocess

import pytest

from charrnn import checkpoint as ckpt
from charrnn.report import build_report
from charrnn.viz import build
from vizrun import synthetic_text, train_tiny

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed "
                                "(apt-get install chromium); browser checks skipped")
# Without the background-networking flags Chromium dials out, and on a closed network that fails.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--hide-scrollbars"]


def chromium(tmp_path, url: str, *extra: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"      # a fresh one per launch
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *extra, url],
                          capture_output=True, text=True, timeout=90)


# Counts non-white pixels and distinct colours of a PNG in a canvas: the browser decodes the file.
PIXELS = """<!DOCTYPE html><html><body><img id="i" src="data:image/png;base64,{b64}"><pre id="out"></pre>
<script>window.addEventListener('load', function () {{
  var img = document.getElementById('i'), c = document.createElement('canvas');
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  var g = c.getContext('2d'); g.drawImage(img, 0, 0);
  var d = g.getImageData(0, 0, c.width, c.height).data, ink = 0, seen = {{}}, n = 0;
  for (var k = 0; k < d.length; k += 4) {{
    if (d[k] < 235 || d[k + 1] < 235 || d[k + 2] < 235) ink++;
    var key = (d[k] << 16) | (d[k + 1] << 8) | d[k + 2];
    if (!seen[key]) {{ seen[key] = 1; n++; }}
  }}
  document.getElementById('out').textContent = 'size ' + c.width + 'x' + c.height + ' ink ' + ink + ' colours ' + n;
}});</script></body></html>"""


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    d = tmp_path_factory.mktemp("pages")
    text = synthetic_text()
    run = train_tiny(d / "run", text)
    (d / "report.html").write_text(build_report(run), encoding="utf-8")
    html, _ = build(ckpt.load(run / "best.safetensors"), synthetic_text(120, seed=3), [], find=True)
    (d / "cells.html").write_text(html, encoding="utf-8")
    return d


@pytest.mark.parametrize("name", ["report.html", "cells.html"])
def test_page_renders_in_headless_chromium_without_errors(name, pages, tmp_path):
    url = (pages / name).as_uri()
    dom = chromium(tmp_path, url, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    root = re.search(r"<html[^>]*>", dom.stdout).group(0)
    assert 'data-ready="1"' in root, "the page's load handler never ran"
    assert "data-errors" not in root, f"script errors: {root}"

    shot = tmp_path / "shot.png"
    res = chromium(tmp_path, url, "--enable-logging=stderr", "--v=0", f"--screenshot={shot}",
                   "--window-size=1100,1400")
    assert res.returncode == 0 and shot.is_file(), res.stderr[-2000:]
    console = [line for line in res.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, "console messages (our pages log none): " + "\n".join(console)

    probe = tmp_path / "pixels.html"
    probe.write_text(PIXELS.format(b64=base64.b64encode(shot.read_bytes()).decode()), encoding="utf-8")
    out = chromium(tmp_path, probe.as_uri(), "--dump-dom").stdout
    m = re.search(r"size (\d+)x(\d+) ink (\d+) colours (\d+)", out)
    assert m, "could not measure the screenshot"
    w, h, ink, colours = map(int, m.groups())
    assert (w, h) == (1100, 1400)
    assert ink > 0.01 * w * h, f"screenshot is (nearly) blank: {ink} inked pixels"
    assert colours > 20, f"screenshot has only {colours} colours"


# Appended by the test (not part of the product): hover the sixth character of the first panel.
HOVER = """<script>window.addEventListener('load', function () {
  var s = document.querySelector('.panel').children[5];
  s.dispatchEvent(new MouseEvent('mousemove', {bubbles: true, clientX: 20, clientY: 20}));
});</script></body>"""


def test_hovering_a_character_shows_its_value_and_top5_guesses(pages, tmp_path):
    page = tmp_path / "hover.html"
    page.write_text((pages / "cells.html").read_text(encoding="utf-8").replace("</body>", HOVER),
                    encoding="utf-8")
    dom = chromium(tmp_path, page.as_uri(), "--dump-dom").stdout
    tip = re.search(r'<div id="tip" style="([^"]*)">(.*?)</div>', dom, re.S)
    assert tip and "display: block" in tip.group(1), "the tooltip did not open"
    lines = tip.group(2).splitlines()
    assert lines[0].startswith("char 5: ") and "value " in lines[0]
    assert lines[1] == "next-character guesses:" and len(lines) == 2 + 5
    assert all(re.fullmatch(r'\s+".*"\s+\d+\.\d%', line) for line in lines[2:]), lines


def test_live_page_shows_a_new_validation_after_the_run_writes_one(tmp_path, monkeypatch):
    """A run with --report paused after its first validation; Chromium opens the page through
    `report --serve`'s server; the run then validates again and ends. The reloaded page must
    show the second validation and have stopped reloading, with no script error or console line."""
    import threading

    from charrnn import live, report
    from charrnn.rundir import prepare_out_dir
    from charrnn.train import Trainer, TrainOptions

    monkeypatch.setattr(report, "RELOAD_S", 1)
    run = prepare_out_dir(tmp_path / "run")
    opts = TrainOptions.from_dict(dict(hidden=8, layers=1, seq_len=16, batch_size=4, max_steps=10, val_every=5,
                                       dropout=0.0, device="cpu", report=True))
    t = Trainer(opts, synthetic_text(200), run, show_progress=False)
    go, done, first = threading.Event(), threading.Event(), []
    real_step = t.be.train_step

    def paused(*a):
        if t.progress.step == 5:
            go.wait(60)                      # until the browser has the one-validation page
        return real_step(*a)
    t.be.train_step = paused

    class Gated(live.RunDirHandler):
        def send_head(self):
            if self.path.startswith("/report.html"):
                if not first:
                    first.append((run / "report.html").read_text(encoding="utf-8"))
                    go.set()
                else:
                    done.wait(60)           # later loads: once the run has written its end
            return super().send_head()

    from functools import partial
    from http.server import ThreadingHTTPServer
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Gated, directory=str(run)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    trainer = threading.Thread(target=lambda: (t.run(), done.set()), daemon=True)
    trainer.start()
    try:
        for _ in range(600):
            if (run / "report.html").exists():
                break
            threading.Event().wait(0.05)
        url = f"http://127.0.0.1:{server.server_address[1]}/report.html"
        res = chromium(tmp_path, url, "--dump-dom", "--virtual-time-budget=30000", "--enable-logging=stderr",
                       "--v=0")
    finally:
        go.set()
        trainer.join(60)
        server.shutdown()
        server.server_close()
    assert first and 'data-live="1" data-validations="1"' in first[0]
    dom = res.stdout
    root = re.search(r"<html[^>]*>", dom).group(0)
    assert 'data-ready="1"' in root and "data-errors" not in root, root
    assert 'data-live="0" data-validations="2"' in dom, "the page did not reload to the ended run"
    assert re.search(r'data-series="validation" data-points="2"', dom)
    console = [line for line in res.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, "\n".join(console)
