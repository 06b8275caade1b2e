"""Several inputs as documents: the paths `charrnn train` is given (files, folders searched
recursively, "-" for stdin) found in order, read and checked, joined with the end-of-document
symbol, and split into training, validation and test by whole documents.

- Finding (`find`): arguments in the order given; a folder's files in sorted order of their
  path inside it, hidden names (a leading ".") left out, `--glob` and `--exclude` choosing among
  them (a file named on the command line is always read). A file met twice is read once.
- Reading (`read`): each file is one document; in text mode a file holding a NUL byte (binary)
  or not valid in the encoding, and any empty file, is skipped and counted (`strict` refuses it).
- Joining (`join`): with two or more documents the vocabulary gains the end-of-document symbol
  (charrnn/corpus.py, `Vocab.eod`) and every document is followed by it, so a training stream
  that runs from one document into the next has read the symbol there: no state crosses a
  boundary the model did not see.
- Splitting (`assign`, `parts`): a document goes to validation or test by a hash of its name and
  the seed, so adding a file leaves every other file where it was. The record of each document
  (name, path, bytes, sha256, characters, split) travels in the checkpoint (`train_args`), and
  `charrnn eval --split` cuts the same parts from it (`reread`, `parts`).
"""
from __future__ import annotations

import fnmatch
import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from charrnn.corpus import Corpus, CorpusError, Vocab, codes_digest, describe_chars
from charrnn.options import SPLIT_BY  # noqa: F401  (the choices, written once there)
DOCUMENT_SPLIT_AT = 20       # "auto" splits by document from this many documents on
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Source:
    """A file to read as one document: its name (recorded; it decides the document's split)
    and its path ("-" for stdin)."""
    name: str
    path: str


# ---------------------------------------------------------------- finding
def _matches(rel: Path, patterns: Sequence[str]) -> bool:
    """Whether a path inside a folder matches any pattern, as a whole or by one of its parts."""
    posix = rel.as_posix()
    return any(fnmatch.fnmatchcase(posix, p) or any(fnmatch.fnmatchcase(part, p) for part in rel.parts)
               for p in patterns)


def _chosen(rel: Path, globs: Sequence[str]) -> bool:
    """--glob: a pattern with a "/" matches the path inside the folder, one without it the file name."""
    return any(fnmatch.fnmatchcase(rel.as_posix() if "/" in g else rel.name, g) for g in globs)


def _folder_files(root: Path, globs: Sequence[str], exclude: Sequence[str]) -> list[Path]:
    """The files under `root` (paths relative to it) that the patterns choose, sorted."""
    found = []
    for folder, dirs, files in os.walk(root, onerror=_walk_error):
        here = Path(folder).relative_to(root)
        dirs[:] = [d for d in dirs if not d.startswith(".") and not _matches(here / d, exclude)]
        for f in files:
            rel = here / f
            if f.startswith(".") or _matches(rel, exclude) or not _chosen(rel, globs):
                continue
            if (root / rel).is_file():
                found.append(rel)
    return sorted(found, key=lambda p: p.as_posix())   # os.walk's order is the file system's


def _walk_error(err: OSError) -> None:
    raise CorpusError(f"cannot read folder {err.filename}: {err.strerror or err}")


def _folder_name(arg: str) -> str:
    """The name a folder's documents are recorded under: the folder's own name ("." and ".."
    give the name of the folder they stand for)."""
    return Path(os.path.abspath(arg)).name or "root"


def find(paths: Sequence[str], glob: Sequence[str] = (), exclude: Sequence[str] = (),
         resolve: Callable[[str], str] | None = None) -> list[Source]:
    """The documents the arguments name, in order: a file (as given), each file of a folder
    (recorded as FOLDER/path inside it), "-" for stdin (once). An argument that is no path is
    handed to `resolve` (a catalogue name), which returns the file to read."""
    globs = list(glob) or ["*"]
    out: list[Source] = []
    seen: set[str] = set()
    if list(paths).count("-") > 1:
        raise CorpusError("stdin (-) can be read only once")
    for arg in paths:
        if arg == "-":
            out.append(Source("-", "-"))
            continue
        p = Path(arg)
        if p.is_dir():
            base = _folder_name(arg)
            rels = _folder_files(p, globs, exclude)
            if not rels:
                raise CorpusError(f"{arg} holds no files to read" + (f" matching --glob {' '.join(glob)}" if glob
                                                                      else ""))
            items = [(f"{base}/{r.as_posix()}", p / r) for r in rels]
        elif p.exists():
            items = [(Path(os.path.normpath(arg)).as_posix(), p)]
        elif resolve is not None:
            items = [(arg, Path(resolve(arg)))]
        else:
            raise CorpusError(f"no such file or folder: {arg}")
        for name, path in items:
            key = os.path.realpath(path)
            if key not in seen:
                seen.add(key)
                out.append(Source(name, str(path.resolve())))
    return out


# ---------------------------------------------------------------- reading
@dataclass
class Read:
    """The documents read, with their record, and the files skipped (name, why)."""
    texts: list
    records: list[dict]
    skipped: list[tuple[str, str]]


def _why_not(raw: bytes, encoding: str, byte_mode: bool) -> tuple[str | bytes | None, str]:
    """The document's text, or None and why it cannot be one."""
    if not raw:
        return None, "empty"
    if byte_mode:
        return raw, ""
    if b"\0" in raw:
        return None, "binary"
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as e:
        return None, f"not valid {encoding} (bad byte 0x{raw[e.start]:02x} at offset {e.start})"
    except UnicodeError as e:
        return None, f"not valid {encoding} ({e})"
    if text.startswith("\ufeff"):
        text = text[1:]
    return (text, "") if text else (None, "empty")


def read(sources: Sequence[Source], encoding: str = "utf-8", byte_mode: bool = False,
         strict: bool = False) -> Read:
    """Read every document; skip (or, `strict`, refuse) a binary, undecodable or empty file."""
    out = Read([], [], [])
    for src in sources:
        try:
            raw = sys.stdin.buffer.read() if src.path == "-" else Path(src.path).read_bytes()
        except OSError as e:
            raise CorpusError(f"cannot read {src.name}: {e.strerror or e}") from None
        text, why = _why_not(raw, encoding, byte_mode)
        if text is None:
            if strict:
                raise CorpusError(f"{src.name} is {why} (--strict refuses it; leave --strict out to skip such files)")
            out.skipped.append((src.name, why))
            continue
        out.texts.append(text)
        out.records.append({"name": src.name, "path": src.path, "bytes": len(raw),
                            "sha256": hashlib.sha256(raw).hexdigest(), "chars": len(text)})
    if not out.texts:
        raise CorpusError("none of the inputs is a text to train on" + (f" ({skipped_line(out.skipped)})"
                                                                          if out.skipped else ""))
    return out


def skipped_line(skipped: Sequence[tuple[str, str]]) -> str:
    """One line on the files skipped: how many, of which kinds, and the first."""
    kinds: dict[str, int] = {}
    for _, why in skipped:
        kind = why.split(" (")[0]
        kinds[kind] = kinds.get(kind, 0) + 1
    detail = ", ".join(f"{n} {k}" for k, n in kinds.items())
    return f"skipped {len(skipped)} file(s): {detail} (first: {skipped[0][0]}, {skipped[0][1]})"


# ---------------------------------------------------------------- joining and splitting
def join(texts: Sequence, vocab: Vocab | None = None) -> tuple[Vocab, np.ndarray]:
    """The documents as one array of codes, each followed by the end-of-document symbol, in
    `vocab` or a new one (the documents' characters and the symbol)."""
    byte_mode = isinstance(texts[0], bytes)
    if vocab is None:
        vocab = Vocab(chars="" if byte_mode else "".join(sorted(set().union(*map(set, texts)))),
                      byte_mode=byte_mode, eod=True)
    if not vocab.eod:
        raise CorpusError("the checkpoint's model was trained on one text and has no end-of-document symbol; "
                          "train on several documents from a fresh model, or join them into one file")
    if vocab.byte_mode != byte_mode:
        raise CorpusError("this model was trained on text, not bytes")
    missing = sorted(set().union(*map(set, texts)) - set(vocab.chars)) if not byte_mode else []
    if missing:
        raise CorpusError(f"the documents have {len(missing)} characters outside the checkpoint's vocabulary: "
                          f"{describe_chars(missing)}")
    end = np.array([vocab.eod_code], vocab.dtype)
    pieces = []
    for t in texts:
        pieces += [vocab.encode(t).astype(vocab.dtype), end]
    return vocab, np.concatenate(pieces)


def score(name: str, seed: int) -> float:
    """A document's place in [0, 1): a hash of its name and the seed, nothing else."""
    digest = hashlib.sha256(f"{seed}\0{name}".encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def assign(names: Sequence[str], val_frac: float, test_frac: float, seed: int) -> list[str]:
    """Each document's split: validation below val_frac, test below val_frac + test_frac, by
    score(). Only when a split asked for would be empty does it take the lowest-scored document
    of training, or, where training has only one, of the other held-out split if that has two or
    more (three documents scored into train, test, test give train, val, test); and when none
    would train, the highest-scored document of a held-out split of two or more trains. So a
    file added later moves no other file, unless it fills such a gap."""
    s = [score(n, seed) for n in names]
    out = ["val" if x < val_frac else "test" if x < val_frac + test_frac else "train" for x in s]
    if "train" not in out:               # every document scored held out: the highest-scored trains
        free = [i for i, o in enumerate(out) if out.count(o) > 1]
        if free:
            out[max(free, key=lambda i: s[i])] = "train"
    for which, other, frac in (("val", "test", val_frac), ("test", "val", test_frac)):
        if frac > 0 and which not in out:
            for donor in ("train", other):
                free = [i for i, o in enumerate(out) if o == donor]
                if len(free) > 1:        # the donor keeps a document
                    out[min(free, key=lambda i: s[i])] = which
                    break
    return out


def choose_split(split_by: str, n_documents: int) -> str:
    """The split a run uses: --split-by as given, auto by the number of documents."""
    if split_by == "auto":
        return "document" if n_documents >= DOCUMENT_SPLIT_AT else "position"
    if split_by == "document" and n_documents < 3:
        raise CorpusError(f"--split-by document needs at least 3 documents (training, validation, test); "
                          f"there are {n_documents}")
    return split_by


def parts(codes: np.ndarray, records: Sequence[dict]) -> dict[str, np.ndarray]:
    """The training, validation and test codes of a document split: each split's documents (with
    their end symbols) in their order, from the joined codes and the documents' record."""
    pieces: dict[str, list] = {k: [] for k in SPLITS}
    at = 0
    for r in records:
        n = r["chars"] + 1
        pieces[r.get("split", "train")].append(codes[at:at + n])
        at += n
    if at != len(codes):
        raise CorpusError("the documents' record does not match the text (the files changed?)")
    return {k: np.concatenate(v) if v else codes[:0] for k, v in pieces.items()}


# ---------------------------------------------------------------- the whole
def load(sources: Sequence[Source], *, strict: bool = False, encoding: str = "utf-8", byte_mode: bool = False,
         vocab: Vocab | None = None, log: Callable[[str], None] = lambda m: None) -> Corpus:
    """The documents `find` gave as one Corpus with their record. Two or more are joined with the
    end-of-document symbol; one is encoded as a single text is (corpus.load_corpus: the same
    vocabulary and codes, no symbol)."""
    got = read(sources, encoding, byte_mode, strict)
    if got.skipped:
        log(skipped_line(got.skipped) + "; --strict refuses them instead")
    if len(got.texts) == 1:
        text = got.texts[0]
        one = vocab or Vocab.from_text(text)
        missing = one.unknown(text)
        if missing:
            raise CorpusError(f"the text has {len(missing)} characters outside the checkpoint's vocabulary: "
                              f"{describe_chars(missing)}")
        codes = one.encode(text)
        return Corpus(one, codes, codes_digest(codes), documents=got.records)
    vocab, codes = join(got.texts, vocab)
    return Corpus(vocab, codes, codes_digest(codes), documents=got.records)


def reread(records: Sequence[dict], vocab: Vocab, encoding: str = "utf-8") -> np.ndarray:
    """A checkpoint's documents read again from their recorded paths, each checked against its
    recorded sha256, and joined as in training."""
    texts = []
    for r in records:
        if r["path"] == "-":
            raise CorpusError(f"document {r['name']} came from stdin and cannot be read again; "
                              f"name a FILE to evaluate on")
        try:
            raw = Path(r["path"]).read_bytes()
        except OSError as e:
            raise CorpusError(f"document {r['name']} is not at hand ({r['path']}: {e.strerror or e}); "
                              f"name a FILE to evaluate on") from None
        if hashlib.sha256(raw).hexdigest() != r["sha256"]:
            raise CorpusError(f"document {r['name']} ({r['path']}) changed since training: its sha256 differs")
        text, why = _why_not(raw, encoding, vocab.byte_mode)
        if text is None:
            raise CorpusError(f"document {r['name']} is {why}")
        texts.append(text)
    return join(texts, vocab)[1]


def check_record(records) -> bool:
    """Whether a checkpoint's documents record has the shape the readers above rely on."""
    def ok(r) -> bool:
        return (isinstance(r, dict) and all(isinstance(r.get(k), str) for k in ("name", "path", "sha256"))
                and all(isinstance(r.get(k), int) and not isinstance(r.get(k), bool) and r[k] >= 0
                        for k in ("bytes", "chars"))
                and r.get("split", "train") in SPLITS)
    return isinstance(records, list) and all(ok(r) for r in records)
