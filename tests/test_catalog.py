"""Corpus catalogue: downloads from a real HTTP server on 127.0.0.1, resolution order, local builds, CLI.

Nothing here leaves the machine: every test runs with a socket guard that
refuses connections to anything but the loopback address.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import json
import multiprocessing
import socket
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from charrnn import catalog as cat
from charrnn.cli_corpus import corpus

BODY = b"".join(f"{i:05d} the quick brown fox jumps over the lazy dog\n".encode() for i in range(4000))
SHA = hashlib.sha256(BODY).hexdigest()
HALF = len(BODY) // 2


def _zipped(member: str, data: bytes) -> bytes:
    import io
    import zipfile
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(member, data)
    return buf.getvalue()


ZIP = _zipped("tiny", BODY)          # an archive holding the corpus, as enwik8.zip holds enwik8
SHARED = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "tinyshakespeare.txt"


class Handler(http.server.BaseHTTPRequestHandler):
    """Routes: /file.txt honours Range, /norange.txt ignores it, /short.txt promises
    the whole body but sends half and hangs up, /wrong.txt sends other bytes of the
    same length; /corpus.zip and /short.zip are the same for a zip holding BODY;
    anything else is 404."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        rng = self.headers.get("Range")
        self.server.log.append((self.path, rng))
        full = ZIP if self.path.endswith(".zip") else BODY
        body, status, extra = full, 200, {}
        if self.path in ("/file.txt", "/corpus.zip") and rng:
            start = int(rng.removeprefix("bytes=").rstrip("-"))
            if start >= len(full):
                self.send_error(416)
                return
            body, status = full[start:], 206
            extra["Content-Range"] = f"bytes {start}-{len(full) - 1}/{len(full)}"
        elif self.path == "/wrong.txt":
            body = BODY.upper()
        elif self.path not in ("/file.txt", "/norange.txt", "/short.txt", "/corpus.zip", "/short.zip"):
            self.send_error(404)
            return
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        for key, value in extra.items():
            self.send_header(key, value)
        self.end_headers()
        if self.path.startswith("/short."):
            body = body[:len(full) // 2]  # Content-Length says more: the client must notice
            self.close_connection = True
        # counted before the write: the client may have read the whole body, and the test gone on
        # to read `sent`, before this thread runs its next line
        self.server.sent += len(body)
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Own cache, no offline dir, no proxies, no catalogue override, loopback only."""
    monkeypatch.setenv("CHARRNN_CACHE", str(tmp_path / "cache"))
    for var in ("CHARRNN_CORPORA", "CHARRNN_CATALOG", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    real = socket.create_connection

    def loopback_only(address, *args, **kwargs):  # type: ignore[no-untyped-def]
        assert address[0] in ("127.0.0.1", "localhost", "::1"), f"a test tried to reach {address}"
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", loopback_only)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def server():  # type: ignore[no-untyped-def]
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.log, httpd.sent = [], 0
    httpd.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def entry(url: str, name: str = "tiny", size: int = len(BODY), sha: str = SHA, **extra: object) -> dict:
    return {
        "name": name,
        "title": f"Test corpus {name}",
        "url": url,
        "bytes": size,
        "sha256": sha,
        "licence": "CC0",
        "description": "made by the test",
        "preprocessing": "none",
        **extra,
    }


def use_catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *entries: dict) -> Path:
    """Write a test catalogue and make it the default through CHARRNN_CATALOG."""
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps({"format": 1, "corpora": list(entries)}))
    monkeypatch.setenv("CHARRNN_CATALOG", str(path))
    return path


def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def leftovers(tmp_path: Path) -> list[str]:
    d = cache(tmp_path)
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


# --------------------------------------------------------------------------- downloads


def test_download_then_cache(server, tmp_path, monkeypatch):
    use_catalog(tmp_path, monkeypatch, entry(server.base + "/file.txt"))
    path, desc = cat.resolve("tiny")
    assert path == cache(tmp_path) / "tiny.txt"
    assert path.read_bytes() == BODY
    assert "downloaded from" in desc and "sha256 verified" in desc
    assert leftovers(tmp_path) == ["tiny.txt"]
    assert server.log == [("/file.txt", None)]

    path2, desc2 = cat.resolve("tiny.txt")  # NAME.txt names the same corpus
    assert path2 == path and "from the cache" in desc2
    assert len(server.log) == 1


@pytest.mark.parametrize(
    "route,size,sha",
    [
        ("/wrong.txt", len(BODY), SHA),  # right size, wrong bytes
        ("/file.txt", len(BODY), "0" * 64),  # catalogue hash disagrees
        ("/file.txt", len(BODY) - 10, SHA),  # server sends more than the catalogue says
        ("/file.txt", len(BODY) + 10, SHA),  # complete body, but too short
    ],
)
def test_mismatch_leaves_no_file(server, tmp_path, monkeypatch, route, size, sha):
    use_catalog(tmp_path, monkeypatch, entry(server.base + route, size=size, sha=sha))
    with pytest.raises(cat.CorpusError, match="checksum mismatch.*partial file was deleted"):
        cat.resolve("tiny")
    assert leftovers(tmp_path) == []


def test_server_closing_mid_body_keeps_part_then_resumes(server, tmp_path, monkeypatch):
    use_catalog(tmp_path, monkeypatch, entry(server.base + "/short.txt"))
    with pytest.raises(cat.CorpusError, match=f"broke off after {HALF} of {len(BODY)} bytes") as err:
        cat.resolve("tiny")
    assert "\n" not in str(err.value)
    assert "run it again to resume" in str(err.value)
    part = cache(tmp_path) / "tiny.txt.part"
    assert leftovers(tmp_path) == ["tiny.txt.part"]
    assert part.read_bytes() == BODY[:HALF]

    # Same corpus, now from a server that finishes the job with a Range request.
    use_catalog(tmp_path, monkeypatch, entry(server.base + "/file.txt"))
    server.sent = 0
    path, _ = cat.resolve("tiny")
    assert path.read_bytes() == BODY
    assert server.log[-1] == ("/file.txt", f"bytes={HALF}-")
    assert server.sent == len(BODY) - HALF
    assert leftovers(tmp_path) == ["tiny.txt"]


def test_resume_with_range(server, tmp_path, monkeypatch):
    use_catalog(tmp_path, monkeypatch, entry(server.base + "/file.txt"))
    cache(tmp_path).mkdir()
    (cache(tmp_path) / "tiny.txt.part").write_bytes(BODY[:50000])
    path, _ = cat.resolve("tiny")
    assert path.read_bytes() == BODY
    assert server.log == [("/file.txt", "bytes=50000-")]
    assert server.sent == len(BODY) - 50000


def test_clean_restart_when_range_is_ignored(server, tmp_path, monkeypatch):
    use_catalog(tmp_path, monkeypatch, entry(server.base + "/norange.txt"))
    cache(tmp_path).mkdir()
    (cache(tmp_path) / "tiny.txt.part").write_bytes(b"junk" * 1000)  # appending to this would fail the hash
    path, _ = cat.resolve("tiny")
    assert path.read_bytes() == BODY
    assert server.log == [("/norange.txt", "bytes=4000-")]
    assert leftovers(tmp_path) == ["tiny.txt"]


def test_range_not_satisfiable_restarts(server, tmp_path, monkeypatch):
    # The catalogue expects more bytes than the server has: Range past the end is 416,
    # the download starts over, and the complete but short body is a mismatch.
    use_catalog(tmp_path, monkeypatch, entry(server.base + "/file.txt", size=len(BODY) + 5))
    cache(tmp_path).mkdir()
    (cache(tmp_path) / "tiny.txt.part").write_bytes(BODY)
    with pytest.raises(cat.CorpusError, match="checksum mismatch"):
        cat.resolve("tiny")
    assert server.log == [("/file.txt", f"bytes={len(BODY)}-"), ("/file.txt", None)]
    assert leftovers(tmp_path) == []


def test_complete_part_is_used_without_a_request(server, tmp_path, monkeypatch):
    use_catalog(tmp_path, monkeypatch, entry(server.base + "/file.txt"))
    cache(tmp_path).mkdir()
    (cache(tmp_path) / "tiny.txt.part").write_bytes(BODY)
    path, _ = cat.resolve("tiny")
    assert path.read_bytes() == BODY and server.log == []


def test_404(server, tmp_path, monkeypatch):
    use_catalog(tmp_path, monkeypatch, entry(server.base + "/missing.txt"))
    with pytest.raises(cat.CorpusError, match="HTTP 404") as err:
        cat.resolve("tiny")
    assert server.base + "/missing.txt" in str(err.value)
    assert not (cache(tmp_path) / "tiny.txt").exists()


def test_no_network_explains_manual_placement(tmp_path, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/tiny.txt"
    use_catalog(tmp_path, monkeypatch, entry(url))
    with pytest.raises(cat.CorpusError) as err:
        cat.resolve("tiny")
    msg = str(err.value)
    assert "\n" not in msg
    assert url in msg and SHA in msg and str(len(BODY)) in msg and "CHARRNN_CORPORA" in msg
    assert leftovers(tmp_path) == []


def test_download_function_directly(server, tmp_path):
    e = cat.load_catalog({"corpora": [entry(server.base + "/file.txt")]})["tiny"]
    path = cat.download(e, tmp_path / "elsewhere", progress=False)
    assert path == tmp_path / "elsewhere" / "tiny.txt" and path.read_bytes() == BODY


# --------------------------------------------------------------------------- resolution


def test_offline_directory(server, tmp_path, monkeypatch):
    use_catalog(tmp_path, monkeypatch, entry(server.base + "/file.txt", filenames=["tiny-alt.txt"]))
    off = tmp_path / "offline"
    off.mkdir()
    monkeypatch.setenv("CHARRNN_CORPORA", str(off))

    for placed in ("tiny", "tiny.txt", "tiny-alt.txt"):
        (off / placed).write_bytes(BODY)
        for spec in ("tiny", "tiny.txt", "tiny-alt.txt"):
            path, desc = cat.resolve(spec)
            assert path == off / placed
            assert "$CHARRNN_CORPORA" in desc and "sha256 verified" in desc
        (off / placed).unlink()
    assert server.log == []

    (off / "tiny.txt").write_bytes(BODY.upper())  # a wrong copy is an error naming the file
    with pytest.raises(cat.CorpusError, match=f"{off / 'tiny.txt'} has sha256"):
        cat.resolve("tiny")
    (off / "tiny.txt").write_bytes(BODY[:-1])
    with pytest.raises(cat.CorpusError, match="is 199999 bytes|bytes, but corpus 'tiny'"):
        cat.resolve("tiny")
    assert server.log == []

    (off / "notes.txt").write_text("my own text\n")  # not in the catalogue: used unverified
    path, desc = cat.resolve("notes")
    assert path == off / "notes.txt" and "not in the catalogue" in desc


def test_resolution_order(server, tmp_path, monkeypatch):
    use_catalog(tmp_path, monkeypatch, entry(server.base + "/file.txt"))
    off = tmp_path / "offline"
    off.mkdir()
    monkeypatch.setenv("CHARRNN_CORPORA", str(off))
    cache(tmp_path).mkdir()
    (tmp_path / "tiny").write_text("a file in the working directory\n")
    (off / "tiny.txt").write_bytes(BODY)
    (cache(tmp_path) / "tiny.txt").write_bytes(BODY)

    assert cat.resolve("tiny") == (Path("tiny"), "file tiny")  # 1. an existing path
    (tmp_path / "tiny").unlink()
    assert cat.resolve("tiny")[0] == off / "tiny.txt"  # 2. $CHARRNN_CORPORA
    (off / "tiny.txt").unlink()
    path, desc = cat.resolve("tiny")  # 3. the cache
    assert path == cache(tmp_path) / "tiny.txt" and "from the cache" in desc
    path.unlink()
    assert server.log == []
    with pytest.raises(cat.CorpusError, match="not present locally.*corpus get tiny"):
        cat.resolve("tiny", fetch=False)
    path, desc = cat.resolve("tiny")  # 4. the catalogue
    assert "downloaded" in desc and len(server.log) == 1


def test_shipped_copy_comes_after_the_cache_and_before_the_network(server, tmp_path, monkeypatch):
    (tmp_path / "tiny.txt.gz").write_bytes(gzip.compress(BODY))
    use_catalog(tmp_path, monkeypatch, entry(server.base + "/file.txt", shipped="tiny.txt.gz"))
    cache(tmp_path).mkdir()
    (cache(tmp_path) / "tiny.txt").write_bytes(BODY)
    assert "from the cache" in cat.resolve("tiny")[1]
    (cache(tmp_path) / "tiny.txt").unlink()
    assert cat.locate(cat.lookup("tiny")) == (tmp_path / "tiny.txt.gz", "shipped")
    path, desc = cat.resolve("tiny", fetch=False)  # unpacking is local: allowed without fetching
    assert path == cache(tmp_path) / "tiny.txt" and path.read_bytes() == BODY
    assert "shipped with charrnn (sha256 verified)" in desc and "\n" not in desc
    assert server.log == [] and leftovers(tmp_path) == ["tiny.txt"]
    assert "from the cache" in cat.resolve("tiny")[1]  # unpacked once


def test_shipped_copy_that_does_not_match_is_refused(server, tmp_path, monkeypatch):
    (tmp_path / "tiny.txt.gz").write_bytes(gzip.compress(BODY.upper()))
    use_catalog(tmp_path, monkeypatch, entry(server.base + "/file.txt", shipped="tiny.txt.gz"))
    with pytest.raises(cat.CorpusError, match="installation is damaged"):
        cat.resolve("tiny")
    (tmp_path / "tiny.txt.gz").write_bytes(b"not gzip at all")
    with pytest.raises(cat.CorpusError, match="cannot unpack the shipped corpus 'tiny'"):
        cat.resolve("tiny")
    assert leftovers(tmp_path) == [] and server.log == []


def test_an_install_without_the_shipped_file_downloads(server, tmp_path, monkeypatch):
    use_catalog(tmp_path, monkeypatch, entry(server.base + "/file.txt", shipped="tiny.txt.gz"))
    path, desc = cat.resolve("tiny")
    assert "downloaded" in desc and path.read_bytes() == BODY


def test_shipped_must_name_a_gzip_file_beside_the_catalogue():
    with pytest.raises(cat.CorpusError, match="'shipped' names a .gz file"):
        cat.load_catalog({"corpora": [entry("http://x/", shipped="../elsewhere.gz")]})
    with pytest.raises(cat.CorpusError, match="'shipped' names a .gz file"):
        cat.load_catalog({"corpora": [entry("http://x/", shipped="tiny.txt")]})


def test_damaged_cache_is_replaced_when_fetching(server, tmp_path, monkeypatch):
    use_catalog(tmp_path, monkeypatch, entry(server.base + "/file.txt"))
    cache(tmp_path).mkdir()
    (cache(tmp_path) / "tiny.txt").write_bytes(BODY.upper())
    with pytest.raises(cat.CorpusError, match="has sha256"):
        cat.resolve("tiny", fetch=False)
    path, desc = cat.resolve("tiny")
    assert path.read_bytes() == BODY and "damaged cached copy" in desc


def test_unknown_names_and_directories(tmp_path, monkeypatch):
    use_catalog(tmp_path, monkeypatch, entry("http://127.0.0.1:9/x"), entry("http://127.0.0.1:9/y", name="other"))
    with pytest.raises(cat.CorpusError, match=r"no such file or catalogue corpus 'nope' \(known: tiny, other\)"):
        cat.resolve("nope")
    with pytest.raises(cat.CorpusError, match="no such file"):
        cat.resolve("some/dir/tiny")  # a path-like spec is never a catalogue name
    (tmp_path / "adir").mkdir()
    with pytest.raises(cat.CorpusError, match="is a directory"):
        cat.resolve("adir")


def test_catalogue_checks(tmp_path, monkeypatch):
    with pytest.raises(cat.CorpusError, match="sha256"):
        cat.load_catalog({"corpora": [entry("http://x/", sha="abc")]})
    with pytest.raises(cat.CorpusError, match="lacks licence"):
        cat.load_catalog({"corpora": [{k: v for k, v in entry("http://x/").items() if k != "licence"}]})
    with pytest.raises(cat.CorpusError, match="twice"):
        cat.load_catalog({"corpora": [entry("http://x/"), entry("http://x/")]})
    with pytest.raises(cat.CorpusError, match="unknown build"):
        cat.load_catalog({"corpora": [entry(None, build="nothing")]})
    monkeypatch.setenv("CHARRNN_CATALOG", str(tmp_path / "absent.json"))
    with pytest.raises(cat.CorpusError, match="cannot read catalogue"):
        cat.load_catalog()


def test_shipped_catalogue():
    shipped = cat.load_catalog()
    assert list(shipped) == ["shakespeare", "python", "warandpeace", "shakespeare-complete", "enwik8", "text8",
                             "code"]
    sh = shipped["shakespeare"]
    assert sh["bytes"] == 1115394
    assert sh["sha256"] == "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
    assert sh["url"].startswith("https://raw.githubusercontent.com/karpathy/char-rnn/")
    assert shipped["python"]["build"] == "python-stdlib" and shipped["python"]["url"] is None


def test_shakespeare_ships_with_charrnn_and_verifies_offline():
    path, desc = cat.resolve("shakespeare")  # no $CHARRNN_CORPORA, an empty cache, no network
    assert "shipped with charrnn (sha256 verified)" in desc
    assert cat.file_sha256(path) == cat.lookup("shakespeare")["sha256"]
    assert cat.shipped_file(cat.lookup("shakespeare")).stat().st_size < 500_000


@pytest.mark.skipif(not SHARED.is_file(), reason="no shared copy of tinyshakespeare")
def test_shipped_shakespeare_entry_matches_the_shared_copy(monkeypatch):
    monkeypatch.setenv("CHARRNN_CORPORA", str(SHARED.parent))
    path, desc = cat.resolve("shakespeare")
    assert path == SHARED and "sha256 verified" in desc


def test_cache_dir_defaults(tmp_path, monkeypatch):
    monkeypatch.delenv("CHARRNN_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cat.cache_dir() == tmp_path / "xdg" / "charrnn"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cat.cache_dir() == tmp_path / "home" / ".cache" / "charrnn"
    assert cat.offline_dir() is None


# --------------------------------------------------------------------------- unpinned and archived corpora


def test_a_corpus_without_a_catalogue_hash_is_pinned_by_its_first_download(server, tmp_path, monkeypatch):
    use_catalog(tmp_path, monkeypatch, entry(server.base + "/file.txt", size=None, sha=None))
    path, _ = cat.resolve("tiny")
    record = json.loads((cache(tmp_path) / "tiny.txt.json").read_text())
    assert path.read_bytes() == BODY and record["sha256"] == SHA and record["bytes"] == len(BODY)
    assert leftovers(tmp_path) == ["tiny.txt", "tiny.txt.json"]
    assert cat.resolve("tiny")[0] == path and len(server.log) == 1        # from the cache, checked
    path.write_bytes(BODY.upper())                                          # same size, other bytes
    with pytest.raises(cat.CorpusError, match="has sha256"):
        cat.resolve("tiny", fetch=False)


def test_an_archived_corpus_keeps_its_member_and_a_record_and_drops_the_zip(server, tmp_path, monkeypatch):
    use_catalog(tmp_path, monkeypatch, entry(server.base + "/corpus.zip", size=len(ZIP), sha=None,
                                             archive="zip", member="tiny"))
    path, _ = cat.resolve("tiny")
    assert path == cache(tmp_path) / "tiny.txt" and path.read_bytes() == BODY
    record = json.loads((cache(tmp_path) / "tiny.txt.json").read_text())
    assert record["sha256"] == SHA and record["download_bytes"] == len(ZIP) and record["member"] == "tiny"
    assert leftovers(tmp_path) == ["tiny.txt", "tiny.txt.json"]


def test_an_archive_cut_off_halfway_resumes_and_a_wrong_member_leaves_nothing(server, tmp_path, monkeypatch):
    use_catalog(tmp_path, monkeypatch, entry(server.base + "/short.zip", size=len(ZIP), sha=None,
                                             archive="zip", member="tiny"))
    with pytest.raises(cat.CorpusError, match="broke off.*run it again to resume"):
        cat.resolve("tiny")
    assert leftovers(tmp_path) == ["tiny.zip.part"]
    use_catalog(tmp_path, monkeypatch, entry(server.base + "/corpus.zip", size=len(ZIP), sha=None,
                                             archive="zip", member="tiny"))
    server.sent = 0
    assert cat.resolve("tiny")[0].read_bytes() == BODY
    assert server.sent == len(ZIP) - len(ZIP) // 2                      # only the rest came
    for p in cache(tmp_path).iterdir():
        p.unlink()
    use_catalog(tmp_path, monkeypatch, entry(server.base + "/corpus.zip", size=len(ZIP), sha=None,
                                             archive="zip", member="enwik8"))
    with pytest.raises(cat.CorpusError, match="not a zip holding enwik8"):
        cat.resolve("tiny")
    assert leftovers(tmp_path) == []


def test_an_archive_whose_member_is_pinned_is_verified_and_a_wrong_member_is_deleted(server, tmp_path, monkeypatch):
    zipped = dict(size=len(ZIP), sha=hashlib.sha256(ZIP).hexdigest(), archive="zip", member="tiny")
    use_catalog(tmp_path, monkeypatch, entry(server.base + "/corpus.zip", member_bytes=len(BODY),
                                             member_sha256=SHA, **zipped))
    path, _ = cat.resolve("tiny")
    assert path.read_bytes() == BODY and leftovers(tmp_path) == ["tiny.txt", "tiny.txt.json"]
    path.write_bytes(BODY.upper())                           # the pin, not the record, now vouches
    (cache(tmp_path) / "tiny.txt.json").unlink()
    with pytest.raises(cat.CorpusError, match="has sha256"):
        cat.resolve("tiny", fetch=False)
    for p in cache(tmp_path).iterdir():
        p.unlink()
    other = hashlib.sha256(BODY.upper()).hexdigest()
    use_catalog(tmp_path, monkeypatch, entry(server.base + "/corpus.zip", member_bytes=len(BODY),
                                             member_sha256=other, **zipped))
    with pytest.raises(cat.CorpusError, match="checksum mismatch for corpus 'tiny': tiny in .*deleted"):
        cat.resolve("tiny")
    assert leftovers(tmp_path) == []


def test_a_catalogue_split_and_archive_are_checked(tmp_path, monkeypatch):
    for bad in ({"split": {"val_frac": 1.5, "test_frac": 0.1}}, {"archive": "tar"}, {"archive": "zip"},
                {"archive": "zip", "member": "m", "member_bytes": 3, "member_sha256": None},
                {"archive": "zip", "member": "m", "member_bytes": 3, "member_sha256": "ABC"},
                {"member_bytes": 3, "member_sha256": SHA}):
        use_catalog(tmp_path, monkeypatch, entry("http://127.0.0.1:1/x", **bad))
        with pytest.raises(cat.CorpusError):
            cat.load_catalog()


def test_the_shipped_catalogue_names_the_classic_corpora_with_their_splits():
    c = cat.load_catalog()
    assert {"warandpeace", "shakespeare-complete", "enwik8", "text8", "code"} <= set(c)
    assert c["enwik8"]["split"]["val_frac"] == c["enwik8"]["split"]["test_frac"] == 0.05   # 90M/5M/5M
    assert c["enwik8"]["archive"] == "zip" and c["text8"]["member"] == "text8"
    for name in ("enwik8", "text8"):    # the Hutter Prize zips and their members are pinned
        assert c[name]["sha256"] and c[name]["member_sha256"] and c[name]["member_bytes"] == 100_000_000
    assert all(c[n]["url"].startswith("https://www.gutenberg.org/cache/epub/")
               for n in ("warandpeace", "shakespeare-complete"))


def test_corpus_build_code_joins_a_folders_text_files_and_train_finds_it(tmp_path, monkeypatch):
    src = tmp_path / "proj"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "b.c").write_text("int b;\n")
    (src / "a.c").write_text("int a;")
    (src / "logo.png").write_bytes(b"\x89PNG\0")
    (src / "notes.md").write_text("# notes\n")
    res = CliRunner().invoke(corpus, ["build", "code", str(src), "--glob", "*.c"])
    assert res.exit_code == 0, res.output
    path = Path(res.stdout.strip())
    assert path.read_text() == "# ==== a.c ====\nint a;\n# ==== pkg/b.c ====\nint b;\n"
    assert cat.resolve("code")[0] == path
    listed = CliRunner().invoke(corpus, ["list"])
    row = next(line.split() for line in listed.stdout.splitlines() if line.startswith("code "))
    assert row[1:3] == [str(path.stat().st_size), "B"] and "cached" in row and row[-1] == str(path)


# --------------------------------------------------------------------------- the python corpus


def test_corpus_get_python_is_deterministic(tmp_path, monkeypatch):
    runner = CliRunner()
    first = runner.invoke(corpus, ["get", "python"])
    assert first.exit_code == 0, first.output
    path = Path(first.stdout.strip())
    assert path == cache(tmp_path) / "python.txt"
    sha1 = cat.file_sha256(path)
    record = json.loads((cache(tmp_path) / "python.txt.json").read_text())
    assert record["sha256"] == sha1 and record["bytes"] == path.stat().st_size > 1_000_000

    again = runner.invoke(corpus, ["get", "python", "--force"])  # rebuild from scratch
    assert again.exit_code == 0, again.output
    assert "built locally" in again.stderr
    assert cat.file_sha256(path) == sha1

    monkeypatch.setenv("CHARRNN_CACHE", str(tmp_path / "cache2"))  # and into another cache
    assert cat.file_sha256(cat.resolve("python")[0]) == sha1

    headers = [line for line in path.read_text(encoding="utf-8").splitlines() if line.startswith("# ==== ")]
    assert len(headers) == record["files"]
    rels = [h.removeprefix("# ==== ").removesuffix(" ====") for h in headers]
    assert rels == sorted(rels) and "os.py" in rels
    for rel in rels:
        parts = set(rel.split("/"))
        assert not parts & {"test", "tests", "idle_test", "site-packages", "dist-packages"}, rel


# --------------------------------------------------------------------------- CLI


def test_cli_list_get_path(server, tmp_path, monkeypatch):
    use_catalog(
        tmp_path,
        monkeypatch,
        entry(server.base + "/file.txt"),
        entry(server.base + "/missing.txt", name="gone"),
    )
    runner = CliRunner()
    listed = runner.invoke(corpus, ["list"])
    assert listed.exit_code == 0
    rows = {line.split()[0]: line.split() for line in listed.stdout.splitlines()[1:3]}
    assert rows["tiny"][1:5] == ["200.0", "kB", "CC0", "downloadable"]
    assert rows["gone"][4] == "downloadable"

    path = runner.invoke(corpus, ["path", "tiny"])
    assert path.exit_code == 2 and "not present locally" in path.stderr and "Traceback" not in path.output

    got = runner.invoke(corpus, ["get", "tiny"])
    assert got.exit_code == 0, got.output
    assert got.stdout.strip() == str(cache(tmp_path) / "tiny.txt")
    assert "downloaded from" in got.stderr

    path = runner.invoke(corpus, ["path", "tiny.txt"])
    assert path.exit_code == 0 and path.stdout.strip() == str(cache(tmp_path) / "tiny.txt")
    listed = runner.invoke(corpus, ["list"])
    assert f"cached        -      {cache(tmp_path) / 'tiny.txt'}" in listed.stdout

    unknown = runner.invoke(corpus, ["get", "nope"])
    assert unknown.exit_code == 2 and "no catalogue corpus 'nope'" in unknown.stderr
    assert unknown.exception is None or isinstance(unknown.exception, SystemExit)
    failed = runner.invoke(corpus, ["get", "gone"])
    assert failed.exit_code == 1 and "HTTP 404" in failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1



def _unpack_after(barrier, dest, errors) -> None:
    barrier.wait()
    try:
        cat.unpack_shipped(cat.lookup("shakespeare"), dest)
    except cat.CorpusError as e:
        errors.put(str(e))


def test_processes_unpacking_the_shipped_corpus_at_once_all_succeed(tmp_path):
    """The ranks of one job unpack into one cache at the same moment on a fresh machine: each
    writes a file of its own and renames it into place (one shared NAME.part made the second
    rank's rename fail, ending `mpiexec -n 2 charrnn train shakespeare`)."""
    ctx = multiprocessing.get_context("fork")
    entry = cat.lookup("shakespeare")
    for round_ in range(3):
        dest = tmp_path / str(round_)
        barrier, errors = ctx.Barrier(4), ctx.Queue()
        procs = [ctx.Process(target=_unpack_after, args=(barrier, dest, errors)) for _ in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert errors.empty(), errors.get()
        assert [p.exitcode for p in procs] == [0] * 4
        assert [p.name for p in dest.iterdir()] == [cat._filename(entry)]
        assert hashlib.sha256((dest / cat._filename(entry)).read_bytes()).hexdigest() == entry["sha256"]
