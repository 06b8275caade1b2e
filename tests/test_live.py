"""The live training page (`train --report`) and `report --serve`: when the page is rewritten,
that it reloads while the run is alive and stops once it has ended, and that the server is
read-only and shows nothing outside the run directory."""
from __future__ import annotations

import http.client
import json
import os
import threading

import pytest
from click.testing import CliRunner

from charrnn import live
from charrnn.cli import cli
from charrnn.rundir import prepare_out_dir
from charrnn.train import Trainer, TrainOptions
from vizrun import synthetic_text

TEXT = synthetic_text(200)


def opts(**kw) -> TrainOptions:
    base = dict(hidden=8, layers=1, seq_len=16, batch_size=4, max_steps=15, val_every=5, diag_every=2,
                dropout=0.0, lr=1e-2, device="cpu", report=True)
    return TrainOptions.from_dict({**base, **kw})


def test_the_page_is_rewritten_at_each_validation_and_stops_reloading_at_the_end(tmp_path, monkeypatch):
    pages = []
    real = live.LiveReport.write

    def keep(self):
        if real(self):
            pages.append((self.run / "report.html").read_text(encoding="utf-8"))
        return True
    monkeypatch.setattr(live.LiveReport, "write", keep)
    monkeypatch.setattr(live, "REWRITE_EVERY_S", 3600.0)       # only validations and the end rewrite it
    t = Trainer(opts(), TEXT, prepare_out_dir(tmp_path), show_progress=False)
    t.run()
    assert len(pages) == 3 + 1
    for k, html in enumerate(pages[:3], start=1):
        assert f'data-live="1" data-validations="{k}"' in html and "location.reload()" in html
    assert 'data-live="0" data-validations="3"' in pages[-1] and "location.reload()" not in pages[-1]
    assert (tmp_path / "report.html").read_text(encoding="utf-8") == pages[-1]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".report")]    # no temporary left
    last = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert last == {"step": 15, "event": "stop", "reason": "reached --max-steps 15"}


def test_between_validations_the_page_is_rewritten_at_most_every_30_s(tmp_path, monkeypatch):
    now, writes = [0.0], []

    def write(self):
        writes.append(now[0])
        self.written_at = now[0]
    monkeypatch.setattr(live.LiveReport, "write", write)
    monkeypatch.setattr(live.time, "monotonic", lambda: now[0])
    page = live.LiveReport(tmp_path)
    page.written_at = 0.0
    for t in range(10, 130, 10):
        now[0] = t
        page.update(validation=False)
    assert writes == [30, 60, 90, 120]
    now[0] = 125
    page.update(validation=True)                    # a validation is always drawn at once
    assert writes[-1] == 125


def test_a_run_without_report_writes_no_page(tmp_path):
    Trainer(opts(report=False), TEXT, prepare_out_dir(tmp_path), show_progress=False).run()
    assert not (tmp_path / "report.html").exists()


# ---------------------------------------------------------------- the server
@pytest.fixture
def served(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "report.html").write_text("<html>the report</html>", encoding="utf-8")
    (run / "metrics.jsonl").write_text("{}\n", encoding="utf-8")
    (run / "sub").mkdir()
    (run / "sub" / "inner.txt").write_text("inside", encoding="utf-8")
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET", encoding="utf-8")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "x.txt").write_text("TOP-SECRET too", encoding="utf-8")
    os.symlink(secret, run / "leak.txt")
    os.symlink(tmp_path / "outside", run / "leakdir")
    os.symlink(run / "report.html", run / "alias.html")          # a link that stays inside is fine
    server = live.make_server(run, 0)
    th = threading.Thread(target=server.serve_forever, daemon=True)
    th.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def fetch(port: int, path: str, method: str = "GET") -> tuple[int, bytes, dict]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.putrequest(method, path, skip_host=False, skip_accept_encoding=True)   # the path goes out as written
    c.endheaders()
    r = c.getresponse()
    body = r.read()
    c.close()
    return r.status, body, dict(r.getheaders())


def test_serve_gives_the_run_directory_files(served):
    assert fetch(served, "/report.html")[:2] == (200, b"<html>the report</html>")
    assert fetch(served, "/sub/inner.txt")[:2] == (200, b"inside")
    assert fetch(served, "/alias.html")[:2] == (200, b"<html>the report</html>")
    status, _, headers = fetch(served, "/")
    assert status == 302 and headers["Location"] == "/report.html"
    assert fetch(served, "/report.html")[2]["Cache-Control"] == "no-store"


@pytest.mark.parametrize("path", ["/../secret.txt", "/../../secret.txt", "/sub/../../secret.txt",
                                  "/%2e%2e/secret.txt", "/%2E%2E%2Fsecret.txt", "/..%2fsecret.txt",
                                  "/sub/%2e%2e/%2e%2e/secret.txt", "/leak.txt", "/leakdir/x.txt", "/leakdir/",
                                  "/sub/", "//etc/passwd", "/..\\secret.txt"])
def test_serve_reaches_nothing_outside_the_run_directory(served, path):
    status, body, _ = fetch(served, path)
    assert status == 404 and b"TOP-SECRET" not in body and b"inside" not in body


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_serve_is_read_only(served, method):
    assert fetch(served, "/report.html", method)[0] == 501


def test_serve_refuses_a_port_in_use_with_one_line(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("", encoding="utf-8")
    busy = live.make_server(run, 0)
    try:
        res = CliRunner().invoke(cli, ["report", str(run), "--serve", "--port", str(busy.server_address[1])])
    finally:
        busy.server_close()
    assert res.exit_code == 2 and "cannot listen on 127.0.0.1:" in res.output
