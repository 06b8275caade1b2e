"""Named corpora: the catalogue, the local cache, downloads, local builds and resolution.

The catalogue (``corpora/catalog.json``, installed as ``charrnn.corpora``) names
texts to learn from without shipping them.  An entry is either downloadable
(``url``, ``bytes``, ``sha256``) or built on the user's machine (``build``).

:func:`resolve` turns what the user typed after ``charrnn train`` into a file:

1. an existing path, used as it is;
2. ``$CHARRNN_CORPORA/NAME``, ``NAME.txt`` or one of the entry's ``filenames``;
3. the cache (``$CHARRNN_CACHE``, else the platform's user cache folder from
   platformdirs: ``$XDG_CACHE_HOME/charrnn`` or ``~/.cache/charrnn`` on Linux);
4. the copy shipped inside the package (an entry's ``shipped`` gzip file, only
   tinyshakespeare), unpacked into the cache once its sha256 matches;
5. the catalogue: build the corpus or download it into the cache.

Library code never prints: functions return a one-line description of where a
corpus came from, and only tqdm writes (a progress bar, on stderr).
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import importlib.resources
import json
import os
import platform
import re
import sysconfig
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tqdm import tqdm

from charrnn.corpus import CorpusError  # one error type for every "this text can't be used" case

__all__ = [
    "CorpusError",
    "build_code",
    "build_python",
    "cache_dir",
    "data_dir",
    "download",
    "ensure",
    "file_sha256",
    "load_catalog",
    "locate",
    "lookup",
    "obtain",
    "offline_dir",
    "resolve",
    "shipped_file",
    "unpack_shipped",
]

Entry = dict[str, Any]
Catalog = dict[str, Entry]

CATALOG_ENV = "CHARRNN_CATALOG"
CACHE_ENV = "CHARRNN_CACHE"
OFFLINE_ENV = "CHARRNN_CORPORA"

CHUNK = 1 << 16
TIMEOUT_S = 30.0
USER_AGENT = "charrnn-corpus/1"

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_REQUIRED = ("name", "title", "url", "bytes", "sha256", "licence", "description", "preprocessing")
# Directory names left out of the python corpus: test suites are large, repetitive
# and partly machine-generated; site-/dist-packages are third-party code.
_PY_EXCLUDED_DIRS = frozenset(
    {"test", "tests", "idle_test", "__pycache__", "site-packages", "dist-packages"}
)


# --------------------------------------------------------------------------- catalogue


def load_catalog(source: str | os.PathLike[str] | Mapping[str, Any] | None = None) -> Catalog:
    """Load and check a catalogue; return ``{name: entry}`` in catalogue order.

    ``source`` may be a path to a JSON file, an already parsed mapping
    (``{"corpora": [...]}``), or None: then ``$CHARRNN_CATALOG`` if set, else the
    catalogue in the source tree, else the installed ``charrnn.corpora`` package.
    """
    if source is None and os.environ.get(CATALOG_ENV):
        source = os.environ[CATALOG_ENV]
    if isinstance(source, Mapping):
        return _check_catalog(source, "the given catalogue", data_dir())
    if source is not None:
        path = Path(source).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise CorpusError(f"cannot read catalogue {path}: {err.strerror or err}") from None
        return _check_catalog(_parse_json(text, str(path)), str(path), path.parent)
    base = data_dir()
    try:
        text = (base / "catalog.json").read_text(encoding="utf-8")
    except OSError as err:
        raise CorpusError(f"the corpus catalogue is missing from this installation ({err})") from None
    origin = str(base / "catalog.json")
    return _check_catalog(_parse_json(text, origin), origin, base)


def data_dir() -> Path:
    """The folder of shipped data (catalogue, default corpus, zoo): ``corpora/`` in a source
    tree, else the installed ``charrnn.corpora`` package."""
    tree = Path(__file__).resolve().parent.parent / "corpora"
    if (tree / "catalog.json").is_file():
        return tree
    try:
        return Path(str(importlib.resources.files("charrnn.corpora")))
    except ModuleNotFoundError as err:
        raise CorpusError(f"the corpus catalogue is missing from this installation ({err})") from None


def _parse_json(text: str, origin: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise CorpusError(f"catalogue {origin} is not valid JSON: {err}") from None


def _check_catalog(data: Any, origin: str, base: Path) -> Catalog:
    entries = data.get("corpora") if isinstance(data, Mapping) else None
    if not isinstance(entries, list):
        raise CorpusError(f"catalogue {origin} has no 'corpora' list")
    out: Catalog = {}
    for raw in entries:
        entry = dict(raw) if isinstance(raw, Mapping) else {}
        name = entry.get("name")
        where = f"catalogue {origin}, entry {name!r}"
        missing = [k for k in _REQUIRED if k not in entry]
        if missing:
            raise CorpusError(f"{where} lacks {', '.join(missing)}")
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise CorpusError(f"{where}: a name is lower-case letters, digits, '-' and '_'")
        if name in out:
            raise CorpusError(f"{where} appears twice")
        if entry.get("build") is not None:
            if entry["build"] not in BUILDERS:
                raise CorpusError(f"{where}: unknown build {entry['build']!r} (known: {', '.join(BUILDERS)})")
        else:
            size, sha = entry["bytes"], entry["sha256"]
            ok = (
                isinstance(entry["url"], str)
                and entry["url"]
                and (size is None or isinstance(size, int) and not isinstance(size, bool) and size >= 0)
                and (sha is None or isinstance(sha, str) and _SHA_RE.match(sha))
            )
            if not ok:
                raise CorpusError(f"{where}: a downloadable entry needs a url, and bytes and sha256 that are null "
                                  "(recorded at the first download) or a count and a lower-case hex sha256")
            archive = entry.setdefault("archive", None)
            if archive is not None and (archive != "zip" or not isinstance(entry.get("member"), str)
                                        or not entry["member"]):
                raise CorpusError(f"{where}: 'archive' is \"zip\", with the file to take from it as 'member'")
            m_size, m_sha = entry.setdefault("member_bytes", None), entry.setdefault("member_sha256", None)
            if (m_size is None) != (m_sha is None) or (m_size is not None and (
                    archive is None or not isinstance(m_size, int) or isinstance(m_size, bool) or m_size < 0
                    or not isinstance(m_sha, str) or not _SHA_RE.match(m_sha))):
                raise CorpusError(f"{where}: 'member_bytes' and 'member_sha256' are both null, or an archive "
                                  "member's size and lower-case hex sha256")
        split = entry.setdefault("split", None)
        if split is not None and not (isinstance(split, Mapping) and all(
                isinstance(split.get(k), (int, float)) and not isinstance(split.get(k), bool)
                and 0 <= split[k] < 1 for k in ("val_frac", "test_frac"))):
            raise CorpusError(f"{where}: 'split' is null or holds val_frac and test_frac, each in [0, 1)")
        names = entry.setdefault("filenames", [])
        if not isinstance(names, list) or not all(_is_bare(n) for n in names):
            raise CorpusError(f"{where}: 'filenames' must be a list of plain file names")
        shipped = entry.get("shipped")
        if shipped is not None:
            if not (_is_bare(shipped) and shipped.endswith(".gz")) or entry.get("build") is not None:
                raise CorpusError(f"{where}: 'shipped' names a .gz file beside the catalogue, for a downloadable entry")
            entry["shipped_path"] = base / shipped  # absent in a stripped install: then it downloads
        out[name] = entry
    return out


def lookup(spec: str, catalog: Catalog | None = None) -> Entry | None:
    """The catalogue entry that ``spec`` names (``NAME``, ``NAME.txt`` or an alternative file name), or None."""
    cat = load_catalog() if catalog is None else catalog
    if spec in cat:
        return cat[spec]
    if spec.endswith(".txt") and spec[:-4] in cat:
        return cat[spec[:-4]]
    for entry in cat.values():
        if spec in entry.get("filenames", ()):
            return entry
    return None


def _unknown(spec: str, cat: Catalog) -> CorpusError:
    known = ", ".join(cat) or "none"
    return CorpusError(f"no such file or catalogue corpus {spec!r} (known: {known})")


# --------------------------------------------------------------------------- places


def _env_dir(var: str) -> Path | None:
    value = os.environ.get(var, "")
    return Path(value).expanduser() if value else None


def cache_dir() -> Path:
    """Where downloaded and built corpora are kept; not created here: $CHARRNN_CACHE, else the
    platform's user cache folder (platformdirs: $XDG_CACHE_HOME/charrnn or ~/.cache/charrnn on
    Linux, ~/Library/Caches/charrnn on macOS, %LOCALAPPDATA%\\charrnn\\Cache on Windows)."""
    explicit = _env_dir(CACHE_ENV)
    if explicit is not None:
        return explicit
    import platformdirs
    return Path(platformdirs.user_cache_dir("charrnn", appauthor=False))


def offline_dir() -> Path | None:
    """``$CHARRNN_CORPORA``: a directory of corpora placed by hand, or None when unset."""
    return _env_dir(OFFLINE_ENV)


def _filename(entry: Entry) -> str:
    return f"{entry['name']}.txt"


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _is_bare(spec: Any) -> bool:
    return (
        isinstance(spec, str)
        and spec not in ("", ".", "..")
        and "/" not in spec
        and os.sep not in spec
        and (os.altsep is None or os.altsep not in spec)
    )


# --------------------------------------------------------------------------- verification


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def pinned(entry: Entry) -> bool:
    """Whether the catalogue itself holds the corpus file's size and sha256 (a plain download
    with both). Otherwise a record beside the file holds them: written when it was built, taken
    from an archive, or downloaded for the first time."""
    return entry.get("build") is None and entry.get("archive") is None and entry.get("sha256") is not None \
        and entry.get("bytes") is not None


def _expected(entry: Entry, path: Path) -> tuple[int, str] | None:
    """(bytes, sha256) that ``path`` must have, or None if a corpus that is not pinned has no valid record."""
    if pinned(entry):
        return entry["bytes"], entry["sha256"]
    if entry.get("member_sha256") is not None:   # an archive whose member the catalogue pins
        return entry["member_bytes"], entry["member_sha256"]
    # Built corpora differ between Python versions, texts taken from an archive are not the
    # download, and a text the catalogue holds no hash for (Project Gutenberg revises its
    # files) is pinned when first fetched: their size and hash live in a record beside them.
    try:
        record = json.loads(_sidecar(path).read_text(encoding="utf-8"))
        size, sha = record["bytes"], record["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if isinstance(size, int) and isinstance(sha, str) and _SHA_RE.match(sha):
        return size, sha
    return None


def _verify(entry: Entry, path: Path, expected: tuple[int, str]) -> None:
    size, sha = expected
    actual = path.stat().st_size
    if actual != size:  # cheap check first
        raise CorpusError(
            f"{path} is {actual} bytes, but corpus '{entry['name']}' is {size} bytes "
            f"(sha256 {sha}); replace or remove the file"
        )
    digest = file_sha256(path)
    if digest != sha:
        raise CorpusError(
            f"{path} has sha256 {digest}, but corpus '{entry['name']}' has sha256 {sha}; "
            "replace or remove the file"
        )


def _find_offline(entry: Entry) -> tuple[Path, str] | None:
    """A verified copy in $CHARRNN_CORPORA as (path, note); a copy that fails verification is an error."""
    off = offline_dir()
    if off is None:
        return None
    names = dict.fromkeys([entry["name"], _filename(entry), *entry.get("filenames", ())])
    for name in names:
        path = off / name
        if path.is_file():
            expected = _expected(entry, path)
            if expected is None:
                # A hand-placed built corpus without its record: the user's own file, trusted as is.
                return path, f"not verified: no {_sidecar(path).name} beside it"
            _verify(entry, path, expected)
            return path, "sha256 verified"
    return None


def _find_cached(entry: Entry) -> Path | None:
    """The verified cached copy, None if absent; CorpusError if present but damaged."""
    path = cache_dir() / _filename(entry)
    if not path.is_file():
        return None
    expected = _expected(entry, path)
    if expected is None:
        again = ("build it again" if entry.get("build") else
                 f"fetch it again: charrnn corpus get {entry['name']} --force")
        raise CorpusError(f"{path} has no valid record {_sidecar(path).name}; {again}")
    _verify(entry, path, expected)
    return path


def shipped_file(entry: Entry) -> Path | None:
    """The compressed copy of a corpus shipped inside the package, or None."""
    path = entry.get("shipped_path")
    return path if path is not None and path.is_file() else None


def locate(entry: Entry) -> tuple[Path, str] | None:
    """Where a catalogue corpus is present locally, as (path, "offline", "cache" or "shipped"), or None.

    Raises CorpusError when a local copy exists but fails verification.
    """
    found = _find_offline(entry)
    if found is not None:
        return found[0], "offline"
    cached = _find_cached(entry)
    if cached is not None:
        return cached, "cache"
    shipped = shipped_file(entry)
    return (shipped, "shipped") if shipped is not None else None


def unpack_shipped(entry: Entry, dest_dir: str | os.PathLike[str] | None = None) -> Path:
    """Decompress the shipped copy of a corpus into ``dest_dir`` (default: the cache).

    As with a download, the text goes to a ``.part`` file (named for this process) and is
    renamed into place only once its size and sha256 match the catalogue's.
    """
    source = shipped_file(entry)
    if source is None:
        raise CorpusError(f"corpus '{entry['name']}' is not shipped with this installation")
    dest = Path(dest_dir).expanduser() if dest_dir is not None else cache_dir()
    target = dest / _filename(entry)
    part = target.with_name(f"{target.name}.{os.getpid()}.part")   # processes may unpack side by side
    hasher, size = hashlib.sha256(), 0
    try:
        dest.mkdir(parents=True, exist_ok=True)
        with gzip.open(source, "rb") as src, open(part, "wb") as out:
            while block := src.read(1 << 20):
                hasher.update(block)
                size += len(block)
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
        if size != entry["bytes"] or hasher.hexdigest() != entry["sha256"]:
            part.unlink()
            raise CorpusError(
                f"the shipped copy {source} unpacks to {size} bytes with sha256 {hasher.hexdigest()}, "
                f"but corpus '{entry['name']}' is {entry['bytes']} bytes with sha256 {entry['sha256']}; "
                "the installation is damaged"
            )
        os.replace(part, target)
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        part.unlink(missing_ok=True)
        raise CorpusError(f"cannot unpack the shipped corpus '{entry['name']}' from {source} into {dest}: {err}") from None
    return target


# --------------------------------------------------------------------------- download


def _manual_hint(entry: Entry) -> str:
    off = offline_dir()
    place = f"{off}/{_filename(entry)}" if off is not None else f"DIR/{_filename(entry)} and set {OFFLINE_ENV}=DIR"
    known = f" ({entry['bytes']} bytes, sha256 {entry['sha256']})" if entry.get("sha256") else ""
    what = f"its member {entry['member']}" if entry.get("archive") else "it"
    return (
        f"to install it by hand, fetch {entry['url']}{known}{', unzip it' if entry.get('archive') else ''} "
        f"and save {what} as {place}, or as {cache_dir() / _filename(entry)}"
    )


def _open(entry: Entry, start: int) -> Any:
    """Open the URL, asking for bytes from ``start`` on; None if the server refuses that range (416)."""
    headers = {"User-Agent": USER_AGENT}
    if start:
        headers["Range"] = f"bytes={start}-"
    request = urllib.request.Request(entry["url"], headers=headers)
    what = f"cannot download corpus '{entry['name']}' from {entry['url']}"
    try:
        return urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as err:
        err.close()
        if err.code == 416 and start:
            return None
        raise CorpusError(f"{what}: HTTP {err.code} {err.reason}; {_manual_hint(entry)}") from None
    except urllib.error.URLError as err:
        raise CorpusError(f"{what}: {err.reason}; {_manual_hint(entry)}") from None
    except (OSError, http.client.HTTPException, ValueError) as err:
        raise CorpusError(f"{what}: {err or type(err).__name__}; {_manual_hint(entry)}") from None


def _resume_from(resp: Any, start: int) -> bool:
    """Whether the response continues our partial file at byte ``start``."""
    status = getattr(resp, "status", None) or 200
    content_range = resp.headers.get("Content-Range", "")
    match = re.match(r"bytes\s+(\d+)-", content_range)
    if status == 206 and match and int(match.group(1)) == start:
        return True
    if status == 206:
        raise CorpusError(f"the server sent an unexpected range ({content_range!r}) for {resp.url}")
    return False


def download(entry: Entry, dest_dir: str | os.PathLike[str], progress: bool = True) -> Path:
    """Download a catalogue corpus into ``dest_dir``; return the verified file.

    The bytes go to ``NAME.txt.part`` beside the target and are renamed into
    place only once size and sha256 match, so the target is either absent or
    right.  A ``.part`` left by an interrupted download is resumed with an HTTP
    Range request; a server that ignores Range sends the whole file, which
    replaces the partial one.  A mismatch deletes the partial file; a network
    failure keeps it (to resume) and explains how to place the file by hand.
    """
    if entry.get("build") is not None or not entry.get("url"):
        raise CorpusError(f"corpus '{entry['name']}' is built locally, not downloaded")
    dest = Path(dest_dir).expanduser()
    try:
        dest.mkdir(parents=True, exist_ok=True)
        if pinned(entry):
            return _download(entry, dest / _filename(entry), progress)[0]
        # an archive, or a file the catalogue holds no hash for: fetched whole, then its text
        # and the record that vouches for it from now on
        fetched = dest / (f"{entry['name']}.zip" if entry.get("archive") else _filename(entry))
        path, size, sha = _download(entry, fetched, progress)
        return _keep_with_record(entry, path, size, sha)
    except OSError as err:  # network errors are CorpusErrors by now: these are local ones
        raise CorpusError(f"cannot write corpus '{entry['name']}' into {dest}: {err}") from None


def _keep_with_record(entry: Entry, fetched: Path, size: int, sha: str) -> Path:
    """The corpus text from what was fetched (the file itself, or an archive's member, unzipped
    and the archive removed) and its record: the text's bytes and sha256, and the download's."""
    target = fetched.with_name(_filename(entry))
    record_path = _sidecar(target)
    record_path.unlink(missing_ok=True)          # a stale record must not vouch for a new file
    record = {"name": entry["name"], "url": entry["url"], "download_bytes": size, "download_sha256": sha}
    if entry.get("archive"):
        import zipfile
        part = target.with_name(f"{target.name}.{os.getpid()}.part")
        try:
            with zipfile.ZipFile(fetched) as z, z.open(entry["member"]) as src, open(part, "wb") as out:
                while block := src.read(1 << 20):
                    out.write(block)
            os.replace(part, target)
        except (KeyError, zipfile.BadZipFile) as err:
            part.unlink(missing_ok=True)
            fetched.unlink(missing_ok=True)
            raise CorpusError(f"corpus '{entry['name']}': {entry['url']} is not a zip holding {entry['member']} "
                              f"({err}); it was deleted") from None
        fetched.unlink()
        record["member"] = entry["member"]
    else:
        record["note"] = "no sha256 in the catalogue: recorded at the first download, verified from then on"
    got = (target.stat().st_size, file_sha256(target))
    if entry.get("archive"):
        pin = (entry["member_bytes"], entry["member_sha256"])
        if pin[1] is not None and got != pin:
            target.unlink()
            raise CorpusError(f"checksum mismatch for corpus '{entry['name']}': {entry['member']} in {entry['url']} "
                              f"is {got[0]} bytes with sha256 {got[1]}, expected {pin[0]} bytes with sha256 "
                              f"{pin[1]}; it was deleted")
    record.update({"bytes": got[0], "sha256": got[1]})
    tmp = record_path.with_name(f"{record_path.name}.{os.getpid()}.part")
    tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, record_path)
    return target


def _download(entry: Entry, target: Path, progress: bool) -> tuple[Path, int, str]:
    """Fetch the entry's URL into ``target`` through ``target.part``, resuming a partial file;
    verified against the catalogue's size and sha256 where it has them. (path, bytes, sha256)."""
    name, url, size, sha = entry["name"], entry["url"], entry["bytes"], entry["sha256"]
    part = target.with_name(target.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    if size is not None and have > size:
        part.unlink()
        have = 0
    if size is not None and have == size:
        # An earlier run got every byte but stopped before the rename: check, don't refetch.
        if sha is None or file_sha256(part) == sha:
            os.replace(part, target)
            return target, size, file_sha256(target)
        part.unlink()
        have = 0

    resp = _open(entry, have)
    if resp is None:  # 416: the server cannot continue our partial file; start again
        part.unlink()
        have = 0
        resp = _open(entry, 0)
    with resp:
        if not _resume_from(resp, have):
            have = 0  # Range ignored (or none asked): the whole file is coming
        length = resp.headers.get("Content-Length")
        body_expected = int(length) if length and length.isdigit() else None
        hasher = hashlib.sha256()
        if have:
            with open(part, "rb") as f:
                while block := f.read(1 << 20):
                    hasher.update(block)
        got, body, broke = have, 0, None
        with open(part, "ab" if have else "wb") as out, tqdm(
            total=size,
            initial=have,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=name,
            disable=None if progress else True,
        ) as bar:
            while size is None or got <= size:
                try:
                    chunk = resp.read(CHUNK)
                except (OSError, http.client.HTTPException) as err:
                    broke = err
                    break
                if not chunk:
                    break
                got += len(chunk)
                body += len(chunk)
                if size is not None and got > size:
                    break  # already too long: no need to read the rest
                out.write(chunk)
                hasher.update(chunk)
                bar.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())

    # http.client returns a short body silently when the server closes early, so
    # compare with Content-Length ourselves.  A short body is an interruption
    # (keep the .part to resume); a complete body of the wrong size or hash is a
    # mismatch (delete it).
    cut_short = broke is not None or (body_expected is not None and body < body_expected)
    if (size is None and cut_short) or (size is not None and got < size and (cut_short or body_expected is None)):
        reason = f" ({broke})" if broke else ""
        raise CorpusError(
            f"download of corpus '{name}' from {url} broke off after {got} of {size or body_expected or '?'} "
            f"bytes{reason}; "
            f"run it again to resume from {part}, or {_manual_hint(entry)}"
        )
    digest = hasher.hexdigest()
    if (size is not None and got != size) or (sha is not None and digest != sha):
        part.unlink(missing_ok=True)
        got_text = f"more than {size}" if size is not None and got > size else str(got)
        detail = f"sha256 {digest}" if got == size else f"{got_text} bytes"
        raise CorpusError(
            f"checksum mismatch for corpus '{name}' from {url}: got {detail}, expected {size} bytes "
            f"with sha256 {sha}; the partial file was deleted"
        )
    os.replace(part, target)
    return target, got, digest


# --------------------------------------------------------------------------- local builds


def _stdlib_sources(root: Path) -> list[str]:
    rels = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in _PY_EXCLUDED_DIRS]
        for f in files:
            if f.endswith(".py"):
                rels.append(Path(folder, f).relative_to(root).as_posix())
    return sorted(rels)  # sort full relative paths: os.walk order is filesystem-dependent


def build_python(dest_dir: str | os.PathLike[str]) -> Path:
    """Build the ``python`` corpus from this interpreter's standard library into ``dest_dir``.

    Writes ``python.txt`` and its build record ``python.txt.json`` (bytes,
    sha256, Python version, file counts).  The same interpreter always gives the
    same bytes.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise CorpusError(f"the standard library directory {root} does not exist")
    extra = {"build": "python-stdlib", "python": platform.python_version(),
             "implementation": platform.python_implementation(), "stdlib": str(root)}
    return _build_joined("python", root, _stdlib_sources(root), dest_dir, extra, refuse_nul=False)


def build_code(dest_dir: str | os.PathLike[str], root: str | os.PathLike[str], glob: tuple[str, ...] = (),
               exclude: tuple[str, ...] = ()) -> Path:
    """Build the ``code`` corpus from the source tree at ``root`` (a kernel, a project) into
    ``dest_dir``: its files in sorted order, hidden names and those `exclude` names left out,
    only those `glob` matches if given (as `charrnn train FOLDER` chooses them,
    charrnn/documents.py), each under a header line, as the python corpus is made."""
    from charrnn import documents
    root = Path(root).expanduser()
    if not root.is_dir():
        raise CorpusError(f"{root} is not a folder to build the code corpus from")
    rels = [s.name.split("/", 1)[1] for s in documents.find([str(root)], glob, exclude)]
    return _build_joined("code", root, rels, dest_dir, {"build": "code-dir", "root": str(root.resolve())},
                         refuse_nul=True)


def _build_joined(name: str, root: Path, rels: list[str], dest_dir: str | os.PathLike[str], extra: dict,
                  refuse_nul: bool) -> Path:
    """Write the files ``rels`` under ``root`` as one text, NAME.txt in ``dest_dir``, each preceded
    by a line '# ==== relative/path ====' and ending with a newline; files that are not UTF-8
    (or, `refuse_nul`, hold a NUL byte: binary) are left out and listed. The record NAME.txt.json beside it holds
    the bytes, sha256 and file counts."""
    dest = Path(dest_dir).expanduser()
    target = dest / f"{name}.txt"
    part = target.with_name(f"{target.name}.{os.getpid()}.part")   # processes may build side by side
    record_path = _sidecar(target)
    try:
        dest.mkdir(parents=True, exist_ok=True)
        record_path.unlink(missing_ok=True)  # a stale record must not vouch for the new file
        hasher, total, used, skipped = hashlib.sha256(), 0, 0, []
        with open(part, "wb") as out:
            for rel in rels:
                try:
                    data = (root / rel).read_bytes()
                    data.decode("utf-8")
                except (OSError, UnicodeDecodeError):
                    skipped.append(rel)
                    continue
                if refuse_nul and b"\0" in data:
                    skipped.append(rel)
                    continue
                if data and not data.endswith(b"\n"):
                    data += b"\n"
                block = f"# ==== {rel} ====\n".encode("utf-8") + data
                out.write(block)
                hasher.update(block)
                total += len(block)
                used += 1
            out.flush()
            os.fsync(out.fileno())
        if not used:
            part.unlink()
            raise CorpusError(f"no UTF-8 text files under {root} to build corpus '{name}' from")
        os.replace(part, target)
        record = {"name": name, **extra, "bytes": total, "sha256": hasher.hexdigest(), "files": used,
                  "skipped": skipped}
        tmp = record_path.with_name(f"{record_path.name}.{os.getpid()}.part")
        tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, record_path)
    except OSError as err:
        part.unlink(missing_ok=True)
        raise CorpusError(f"cannot build corpus '{name}' into {dest}: {err}") from None
    return target


def _no_default_build(dest_dir: str | os.PathLike[str]) -> Path:
    raise CorpusError("corpus 'code' is built from a folder you name: charrnn corpus build code DIR")


BUILDERS: dict[str, Callable[[str | os.PathLike[str]], Path]] = {"python-stdlib": build_python,
                                                                  "code-dir": _no_default_build}


# --------------------------------------------------------------------------- resolution


def obtain(entry: Entry, dest_dir: str | os.PathLike[str] | None = None, *, progress: bool = True) -> tuple[Path, str]:
    """Build or download a catalogue corpus into ``dest_dir`` (default: the cache), unconditionally."""
    dest = Path(dest_dir) if dest_dir is not None else cache_dir()
    if entry.get("build") is not None:
        path = BUILDERS[entry["build"]](dest)
        return path, f"corpus '{entry['name']}' built locally ({entry['title']}) into {path}"
    path = download(entry, dest, progress=progress)
    return path, f"corpus '{entry['name']}' downloaded from {entry['url']} into {path} (sha256 verified)"


def ensure(entry: Entry, *, fetch: bool = True, force: bool = False, progress: bool = True) -> tuple[Path, str]:
    """A local copy of a catalogue corpus: $CHARRNN_CORPORA, the cache, the shipped copy (unpacked
    into the cache, even when ``fetch`` is False: nothing leaves the machine), then build or download.

    ``force`` skips the local copies and builds or downloads into the cache anew.
    A damaged cached copy is replaced when ``fetch`` allows; a damaged copy in
    $CHARRNN_CORPORA is the user's file and is an error.
    """
    name = entry["name"]
    note = ""
    if not force:
        found = _find_offline(entry)
        if found is not None:
            return found[0], f"corpus '{name}' from ${OFFLINE_ENV}: {found[0]} ({found[1]})"
        try:
            cached = _find_cached(entry)
        except CorpusError as err:
            if not fetch:
                raise
            cached, note = None, f"; it replaces a damaged cached copy ({err})"
        if cached is not None:
            return cached, f"corpus '{name}' from the cache: {cached}"
        if shipped_file(entry) is not None:
            path = unpack_shipped(entry)
            return path, f"corpus '{name}' from the copy shipped with charrnn (sha256 verified), unpacked into {path}{note}"
        if not fetch:
            off = offline_dir()
            looked = f"${OFFLINE_ENV}={off}" if off is not None else f"${OFFLINE_ENV} (unset)"
            raise CorpusError(
                f"corpus '{name}' is not present locally (looked in {looked} and the cache {cache_dir()}); "
                f"`charrnn corpus get {name}` fetches or builds it"
            )
    path, desc = obtain(entry, progress=progress)
    return path, desc + note


def resolve(
    spec: str, *, fetch: bool = True, catalog: Catalog | None = None, progress: bool = True
) -> tuple[Path, str]:
    """Turn a training-text argument into a file: (path, one-line description of where it came from).

    Order: an existing path; ``$CHARRNN_CORPORA/NAME`` (or ``NAME.txt``, or an
    entry's alternative file names), verified for catalogue corpora; the cache;
    the shipped copy; the catalogue, built or downloaded unless ``fetch`` is False.  ``NAME.txt``
    names catalogue corpus ``NAME`` too.  ``-`` (stdin) is the caller's business.
    """
    if not spec:
        raise CorpusError("no corpus given")
    path = Path(spec).expanduser()
    if path.exists():
        if path.is_dir():
            raise CorpusError(f"{path} is a directory, not a text file")
        return path, f"file {path}"
    cat = load_catalog() if catalog is None else catalog
    entry = lookup(spec, cat) if _is_bare(spec) else None
    if entry is not None:
        return ensure(entry, fetch=fetch, progress=progress)
    off = offline_dir()
    if off is not None and _is_bare(spec):
        # Not in the catalogue: $CHARRNN_CORPORA is also the user's own shelf of texts.
        for name in dict.fromkeys([spec, spec if spec.endswith(".txt") else spec + ".txt"]):
            if (off / name).is_file():
                return off / name, f"file {off / name} from ${OFFLINE_ENV} (not in the catalogue, not verified)"
    raise _unknown(spec, cat)
