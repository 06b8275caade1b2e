"""Text in, integer codes out: reading, the vocabulary, encoding and the train/val/test split.

The vocabulary is the sorted set of distinct code points of the text (or all 256 byte values
in byte mode). Codes are uint8 when the vocabulary fits, uint16 otherwise; the corpus is never
expanded into one-hot rows.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class CorpusError(Exception):
    """Bad input text: the message is one sentence for the user."""


@dataclass(frozen=True)
class Vocab:
    """chars: the symbols in code order (text mode); byte_mode: 256 raw byte values instead."""
    chars: str = ""
    byte_mode: bool = False

    @property
    def size(self) -> int:
        return 256 if self.byte_mode else len(self.chars)

    @property
    def dtype(self):
        return np.uint8 if self.size <= 256 else np.uint16

    @classmethod
    def from_text(cls, text: str | bytes) -> "Vocab":
        if isinstance(text, bytes):
            return cls(byte_mode=True)
        return cls(chars="".join(sorted(set(text))))

    def to_meta(self) -> dict:
        return {"byte_mode": self.byte_mode, "chars": self.chars}

    @classmethod
    def from_meta(cls, meta: dict) -> "Vocab":
        if not isinstance(meta, dict) or not isinstance(meta.get("chars", ""), str) \
                or not isinstance(meta.get("byte_mode", False), bool):
            raise ValueError("vocabulary must be {'chars': str, 'byte_mode': bool}")
        v = cls(chars=meta.get("chars", ""), byte_mode=meta.get("byte_mode", False))
        if not v.byte_mode and (len(set(v.chars)) != len(v.chars) or not v.chars):
            raise ValueError("vocabulary characters must be distinct and non-empty")
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
        if self.byte_mode:
            return bytes(np.asarray(codes, dtype=np.uint8))
        return "".join(self.chars[int(c)] for c in codes)


def describe_chars(chars: list[str], limit: int = 20) -> str:
    shown = " ".join(repr(c) for c in chars[:limit])
    return shown + (f" (and {len(chars) - limit} more)" if len(chars) > limit else "")


def read_input(source: str, byte_mode: bool = False, encoding: str = "utf-8") -> str | bytes:
    """Read a file path, or stdin for '-'. Text mode strips one leading BOM and keeps the rest
    exactly (CRLF stays CRLF); byte mode returns the raw bytes."""
    if source == "-":
        raw = sys.stdin.buffer.read()
        where = "stdin"
    else:
        path = Path(source)
        if not path.exists():
            raise CorpusError(f"no such file: {source}")
        if path.is_dir():
            raise CorpusError(f"{source} is a directory, not a text file")
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise CorpusError(f"cannot read {source}: {e.strerror or e}") from None
        where = source
    if not raw:
        raise CorpusError(f"{where} is empty")
    if byte_mode:
        return raw
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as e:
        raise CorpusError(f"{where} is not valid {encoding}: bad byte 0x{raw[e.start]:02x} at offset {e.start}; "
                          f"use --bytes to train on raw bytes, or --encoding to name the file's encoding") from None
    except LookupError:
        raise CorpusError(f"unknown encoding {encoding!r}") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    if not text:
        raise CorpusError(f"{where} is empty")
    return text


def split(codes: np.ndarray, val_frac: float, test_frac: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Contiguous split by position: train, then validation, then test (90/5/5 by default)."""
    n = len(codes)
    n_val, n_test = int(n * val_frac), int(n * test_frac)
    n_train = n - n_val - n_test
    return codes[:n_train], codes[n_train:n_train + n_val], codes[n_train + n_val:]
