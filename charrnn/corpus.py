"""Text in, integer codes out: reading, the vocabulary, encoding and the train/val/test split.

The vocabulary is the sorted set of distinct code points of the text (or all 256 byte values
in byte mode). A text of several documents (charrnn/documents.py) adds one reserved symbol, the
end of a document, as the last code (`Vocab.eod`): no character maps to it and it never
decodes to output. Codes are uint8 when the vocabulary fits, uint16 otherwise; the corpus is never
expanded into one-hot rows.
"""
from __future__ import annotations

import codecs
import io
import os
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np

from charrnn.errors import CorpusError


@dataclass(frozen=True)
class Vocab:
    """chars: the symbols in code order (text mode); byte_mode: 256 raw byte values instead;
    eod: one more code after them, the end-of-document symbol (`eod_code`)."""
    chars: str = ""
    byte_mode: bool = False
    eod: bool = False

    @property
    def size(self) -> int:
        return (256 if self.byte_mode else len(self.chars)) + self.eod

    @property
    def eod_code(self) -> int | None:
        """The end-of-document symbol's code (the last), or None when the vocabulary has none."""
        return self.size - 1 if self.eod else None

    @property
    def dtype(self):
        return np.uint8 if self.size <= 256 else np.uint16

    @classmethod
    def from_text(cls, text: str | bytes) -> "Vocab":
        if isinstance(text, bytes):
            return cls(byte_mode=True)
        return cls(chars="".join(sorted(set(text))))

    def to_meta(self) -> dict:
        meta = {"byte_mode": self.byte_mode, "chars": self.chars}
        if self.eod:          # written only when set: a one-document model's metadata is as before
            meta["eod"] = True
        return meta

    @classmethod
    def from_meta(cls, meta: dict) -> "Vocab":
        if not isinstance(meta, dict) or not isinstance(meta.get("chars", ""), str) \
                or not isinstance(meta.get("byte_mode", False), bool) or not isinstance(meta.get("eod", False), bool):
            raise ValueError("vocabulary must be {'chars': str, 'byte_mode': bool, 'eod': bool}")
        v = cls(chars=meta.get("chars", ""), byte_mode=meta.get("byte_mode", False), eod=meta.get("eod", False))
        if not v.byte_mode and (len(set(v.chars)) != len(v.chars) or not v.chars):
            raise ValueError("vocabulary characters must be distinct and non-empty")
        if not v.byte_mode and list(v.chars) != sorted(v.chars):
            raise ValueError("vocabulary characters must be sorted")      # encode() relies on it
        if v.byte_mode and v.chars:
            raise ValueError("a byte-mode vocabulary has no characters")
        return v

    def unknown(self, text: str | bytes) -> list[str]:
        """Symbols of `text` outside the vocabulary, sorted."""
        if self.byte_mode:
            return []
        return sorted(set(text) - set(self.chars))

    def encode(self, text: str | bytes, skip_unknown: bool = False) -> np.ndarray:
        if self.byte_mode:
            if isinstance(text, str):
                text = text.encode("utf-8")
            return np.frombuffer(text, dtype=np.uint8).copy()
        if isinstance(text, bytes):
            raise CorpusError("this model was trained on text, not bytes")
        if not text:
            return np.zeros(0, self.dtype)
        points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        table = np.frombuffer(self.chars.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        idx = np.searchsorted(table, points)            # chars are sorted by code point
        idx_c = np.minimum(idx, len(table) - 1)
        known = table[idx_c] == points
        if not known.all():
            if not skip_unknown:
                raise CorpusError("characters outside the vocabulary: " + describe_chars(self.unknown(text)))
            idx_c = idx_c[known]
        return idx_c.astype(self.dtype)

    def decode(self, codes) -> str | bytes:
        """The text of `codes`; the end-of-document symbol writes nothing."""
        if self.eod:
            codes = [c for c in np.asarray(codes).tolist() if c != self.eod_code]
        if self.byte_mode:
            return bytes(np.asarray(codes, dtype=np.uint8))
        return "".join(self.chars[int(c)] for c in codes)


def describe_chars(chars: list[str], limit: int = 20) -> str:
    shown = " ".join(repr(c) for c in chars[:limit])
    return shown + (f" (and {len(chars) - limit} more)" if len(chars) > limit else "")


TRAIN_HINT = "use --bytes to train on raw bytes, or --encoding to name the file's encoding"
# for a text read with a trained model's vocabulary (sample's prime, eval's and viz's text): no such flags there
MODEL_HINT = "a text model reads UTF-8 (only a byte model, trained with --bytes, takes any bytes)"


def check_encoding(encoding: str) -> None:
    """--encoding must name a text codec Python knows (not, say, base64 or rot13, which map bytes
    to bytes or text to text)."""
    try:
        info = codecs.lookup(encoding)
    except (LookupError, ValueError, TypeError):
        raise CorpusError(f"--encoding: unknown encoding {encoding!r}") from None
    if not getattr(info, "_is_text_encoding", True):
        raise CorpusError(f"--encoding: {encoding!r} is not a text encoding")


def read_input(source: str, byte_mode: bool = False, encoding: str = "utf-8", hint: str = TRAIN_HINT,
               allow_empty: bool = False) -> str | bytes:
    """Read a file path, or stdin for '-'. Text mode strips one leading BOM and keeps the rest
    exactly (CRLF stays CRLF); byte mode returns the raw bytes. `hint` ends the message on a text
    that does not decode: what the command reading it offers. An empty input is an error unless
    `allow_empty`."""
    if source == "-":
        raw = sys.stdin.buffer.read()
        where = "stdin"
    else:
        check_source(source, allow_empty)
        try:
            raw = Path(source).read_bytes()
        except OSError as e:
            raise CorpusError(f"cannot read {source}: {e.strerror or e}") from None
        where = source
    if not raw and not allow_empty:
        raise CorpusError(f"{where} is empty")
    if byte_mode:
        return raw
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as e:
        raise CorpusError(f"{where} is not valid {encoding}: bad byte 0x{raw[e.start]:02x} at offset {e.start}; "
                          f"{hint}") from None
    except UnicodeError as e:
        raise CorpusError(f"{where} is not valid {encoding}: {e}; {hint}") from None
    except LookupError:
        raise CorpusError(f"unknown encoding {encoding!r}") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    if not text and not allow_empty:
        raise CorpusError(f"{where} is empty")
    return text


def split(codes: np.ndarray, val_frac: float, test_frac: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Contiguous split by position: train, then validation, then test (90/5/5 by default)."""
    n = len(codes)
    n_val, n_test = int(n * val_frac), int(n * test_frac)
    n_train = n - n_val - n_test
    return codes[:n_train], codes[n_train:n_train + n_val], codes[n_train + n_val:]


# ---------------------------------------------------------------- large corpora
CHUNK = 1 << 20                 # bytes of input decoded and encoded at a time
SPILL_OVER = 16 << 20           # code arrays larger than this live in a memory-mapped file


@dataclass
class Corpus:
    """A text already encoded: its vocabulary, its codes (an array, or a read-only memory map for
    large inputs) and a digest of the codes, so `--resume` can tell the same text from another.
    A text of several documents also carries their record (charrnn/documents.py): one dict per
    document, in the order of the codes."""
    vocab: Vocab
    codes: np.ndarray
    digest: str
    documents: list[dict] | None = None


def codes_digest(codes: np.ndarray) -> str:
    """crc32 of the codes, as 8 hex digits."""
    return f"{zlib.crc32(np.ascontiguousarray(codes)) & 0xFFFFFFFF:08x}"


def check_source(source: str, allow_empty: bool = False) -> None:
    """Fail early, before any output directory is made, on a missing path, a directory or an empty file."""
    if source == "-":
        return
    path = Path(source)
    if not path.exists():
        raise CorpusError(f"no such file: {source}")
    if path.is_dir():
        raise CorpusError(f"{source} is a directory, not a text file")
    try:
        size = path.stat().st_size
    except OSError as e:
        raise CorpusError(f"cannot read {source}: {e.strerror or e}") from None
    if size == 0 and path.is_file() and not allow_empty:
        raise CorpusError(f"{source} is empty")


def load_corpus(source: str, encoding: str = "utf-8", byte_mode: bool = False, vocab: Vocab | None = None,
                spill_dir: str | os.PathLike | None = None, spill_over: int = SPILL_OVER) -> Corpus:
    """Read and encode a file (or stdin, '-') in chunks, so memory stays bounded however large it is.

    Two passes over the input: the first finds the vocabulary (or, given `vocab`, the characters
    outside it: an error that lists them) and the length; the second writes the codes. Codes
    larger than `spill_over` bytes go to a file in `spill_dir`, mapped read-only and unlinked at
    once, so nothing is left behind however the process ends. The text is never held whole.
    """
    check_source(source)
    where = "stdin" if source == "-" else source
    if vocab is not None and vocab.byte_mode:
        byte_mode = True
    if vocab is not None and byte_mode and not vocab.byte_mode:
        raise CorpusError("this model was trained on text, not bytes")
    try:
        with _open_source(source) as f:
            if byte_mode:
                return _bytes_corpus(f, source, where, spill_dir, spill_over)
            seen, n = _scan(f, where, encoding)
            if n == 0:
                raise CorpusError(f"{where} is empty")
            if vocab is None:
                vocab = Vocab(chars="".join(sorted(seen)))
            else:
                missing = sorted(seen - set(vocab.chars))
                if missing:
                    raise CorpusError(f"the text has {len(missing)} characters outside the checkpoint's "
                                      f"vocabulary: {describe_chars(missing)}")
            f.seek(0)
            pieces = (_encode_piece(vocab, s) for s in _decoded(f, where, encoding))
            codes, digest = _collect(pieces, n, np.dtype(vocab.dtype), spill_dir, spill_over)
    except OSError as e:
        raise CorpusError(f"cannot read {where}: {e.strerror or e}") from None
    return Corpus(vocab, codes, digest)


def _open_source(source: str) -> BinaryIO:
    if source == "-":
        return io.BytesIO(sys.stdin.buffer.read())     # stdin cannot be read twice: hold it once
    return open(source, "rb")


def _decoded(f: BinaryIO, where: str, encoding: str) -> Iterator[str]:
    """The text in pieces; invalid input names its byte offset. Strips one leading BOM."""
    check_encoding(encoding)
    dec = codecs.getincrementaldecoder(encoding)("strict")
    pos, first = 0, True
    while True:
        raw = f.read(CHUNK)
        pending = dec.getstate()[0]
        try:
            s = dec.decode(raw, final=not raw)
        except UnicodeDecodeError as e:
            data = pending + raw
            off = pos - len(pending) + e.start
            bad = f"bad byte 0x{data[e.start]:02x}" if e.start < len(data) else "truncated character"
            raise CorpusError(f"{where} is not valid {encoding}: {bad} at offset {off}; {TRAIN_HINT}") from None
        except UnicodeError as e:       # a codec's own complaint, e.g. utf-16 without its byte-order mark
            raise CorpusError(f"{where} is not valid {encoding}: {e}; {TRAIN_HINT}") from None
        pos += len(raw)
        if first and s:
            s, first = (s[1:] if s[0] == "\ufeff" else s), False
        if s:
            yield s
        if not raw:
            return


def _scan(f: BinaryIO, where: str, encoding: str) -> tuple[set, int]:
    """The set of characters and their count."""
    seen: set = set()
    ascii_seen = np.zeros(128, bool)
    n = 0
    for s in _decoded(f, where, encoding):
        n += len(s)
        if s.isascii():        # the common case, at memory speed
            ascii_seen[np.unique(np.frombuffer(s.encode("ascii"), np.uint8))] = True
        else:
            seen.update(s)
    seen.update(chr(c) for c in np.flatnonzero(ascii_seen))
    return seen, n


def _encode_piece(vocab: Vocab, s: str) -> np.ndarray:
    if s.isascii():
        table = np.zeros(128, vocab.dtype)
        for i, c in enumerate(vocab.chars):
            if ord(c) < 128:
                table[ord(c)] = i
        return table[np.frombuffer(s.encode("ascii"), np.uint8)]
    return vocab.encode(s)


def _collect(pieces, n: int, dtype: np.dtype, spill_dir, spill_over: int) -> tuple[np.ndarray, str]:
    """Gather encoded pieces into one array of n codes, in memory or in a mapped file."""
    crc = 0
    if n * dtype.itemsize <= spill_over or spill_dir is None:
        codes = np.empty(n, dtype)
        at = 0
        for p in pieces:
            codes[at:at + len(p)] = p
            crc = zlib.crc32(p, crc)
            at += len(p)
        return codes, f"{crc & 0xFFFFFFFF:08x}"
    path = Path(spill_dir) / f".codes-{os.getpid()}.bin"
    try:
        with open(path, "wb") as out:      # written, not mapped: dirty pages never count against us
            for p in pieces:
                out.write(p.tobytes())
                crc = zlib.crc32(p, crc)
        codes = np.memmap(path, dtype=dtype, mode="r", shape=(n,))
    except OSError as e:
        raise CorpusError(f"cannot write the encoded corpus to {spill_dir}: {e.strerror or e}") from None
    finally:
        try:
            path.unlink()                  # the mapping keeps the data; no file outlives us
        except OSError:
            pass
    return codes, f"{crc & 0xFFFFFFFF:08x}"


def _bytes_corpus(f: BinaryIO, source: str, where: str, spill_dir, spill_over: int) -> Corpus:
    """Byte mode: the codes are the bytes; a large file is mapped as it is, never copied."""
    crc, n = 0, 0
    while True:
        raw = f.read(CHUNK)
        if not raw:
            break
        crc = zlib.crc32(raw, crc)
        n += len(raw)
    if n == 0:
        raise CorpusError(f"{where} is empty")
    if source != "-" and n > spill_over:
        codes = np.memmap(source, dtype=np.uint8, mode="r", shape=(n,))
    else:
        f.seek(0)
        codes = np.frombuffer(f.read(), np.uint8)
    return Corpus(Vocab(byte_mode=True), codes, f"{crc & 0xFFFFFFFF:08x}")
