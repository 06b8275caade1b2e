"""Dynamic evaluation (Krause et al., "Dynamic Evaluation of Neural Sequence Models", 2018): the
model keeps learning from the text it reads.

The text is read as one stream in segments of `seq_len` characters. Each segment is first scored
with the current weights (that score is the one reported), then the weights take one gradient
step on that segment's mean loss, and the state carries on into the next segment. Two rules:

- "sgd":  w <- w - lr * g
- "rms":  w <- w - lr * g / (ms + eps * mean(ms));  then  w <- w + min(1, decay * ms / mean(ms)) * (w0 - w)
  where ms is the root mean square of the gradient over windows of the training text, computed
  once with the trained weights w0 (`gradient_rms`), and the decay pulls each weight back toward
  w0, the more so where the training gradient was large.

The weights live in the backend, updated through `Backend.set_params`; the checkpoint on disk is
never touched. With lr 0 the result equals static evaluation over windows of `seq_len`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path
from typing import Callable

import numpy as np

from charrnn.errors import InputError
from charrnn.options import DYNAMIC_LR, Dynamic

__all__ = ["Dynamic", "gradient_rms", "stats_file", "load_or_compute_stats", "checkpoint_stats", "dynamic_evaluate",
           "search_lr", "adapt"]

# ---------------------------------------------------------------- the gradient statistics
STATS_CHARS = 200_000       # training characters the RMS statistics read (measured enough: bench/RESULTS.md)
STATS_BATCH = 32            # streams per window while reading them


def gradient_rms(backend, codes: np.ndarray, seq_len: int, batch: int = STATS_BATCH,
                 max_chars: int = STATS_CHARS, progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Root mean square, per weight, of the gradient of each window's mean loss over the first
    `max_chars` of `codes`, read as `batch` contiguous streams in windows of `seq_len` with the
    state carried. The backend's weights are left as they were."""
    codes = np.asarray(codes[:max_chars + 1], dtype=np.int64)
    B = max(1, min(batch, (len(codes) - 1) // max(seq_len, 1)))
    per = (len(codes) - 1) // B
    if per < 1:
        raise InputError("too little training text to compute the gradient statistics")
    starts = np.arange(B) * per
    sq, n, state = None, 0, backend.zero_state(B)
    for t0 in range(0, per, seq_len):
        t1 = min(per, t0 + seq_len)
        x = codes[starts[None, :] + np.arange(t0, t1)[:, None]]
        y = codes[starts[None, :] + np.arange(t0 + 1, t1 + 1)[:, None]]
        _, state = backend.train_step(x, y, state, noise=False)
        g = np.asarray(backend.grad_host().flat, dtype=np.float64)
        sq = g * g if sq is None else sq + g * g
        n += 1
        if progress:
            progress((t1 - t0) * B)
    return np.sqrt(sq / n).astype(np.float32)


def stats_file(checkpoint: Path, cache: Path) -> Path:
    """Where a checkpoint's statistics are kept: beside it (`best.gradstats` for
    `best.safetensors`) when that folder is writable, else in charrnn's cache (a shipped model)."""
    import os
    beside = checkpoint.with_suffix(".gradstats")
    if os.access(checkpoint.parent, os.W_OK):
        return beside
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()[:16]
    return cache / "gradstats" / f"{checkpoint.stem}-{digest}.gradstats"


def _stats_key(params_flat: np.ndarray, seq_len: int, source: str, chars: int) -> str:
    """What the statistics depend on: the weights, the window length and the text read."""
    h = hashlib.sha256(np.ascontiguousarray(params_flat, dtype="<f4").tobytes())
    h.update(json.dumps([seq_len, source, chars]).encode())
    return h.hexdigest()


def load_or_compute_stats(path: Path, backend, codes: np.ndarray, seq_len: int, source: str,
                          log: Callable[[str], None] = lambda m: None) -> np.ndarray:
    """The cached statistics at `path` if they were computed for these weights, window and text;
    otherwise compute them (and save them, if the folder lets us)."""
    from charrnn.checkpoint import FORMAT, VERSION, read_raw, write_tensors
    from charrnn.errors import CheckpointError

    chars = min(len(codes) - 1, STATS_CHARS)
    key = _stats_key(backend.params_host().flat, seq_len, source, chars)
    if path.is_file():
        try:
            meta, tensors = read_raw(path)
            ms = tensors.get("gradient_rms")
            if meta.get("kind") == "gradstats" and meta.get("key") == key and ms is not None \
                    and ms.size == backend.params_host().flat.size and np.isfinite(ms).all():
                return np.array(ms, dtype=np.float32)
        except CheckpointError:
            pass                                    # unreadable: compute it again
    log(f"computing the gradient statistics over {chars:,} characters of {source} (once; kept in {path})")
    ms = gradient_rms(backend, codes, seq_len)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_tensors(path, {"gradient_rms": np.ascontiguousarray(ms, dtype="<f4")},
                      {"format": FORMAT, "version": str(VERSION), "kind": "gradstats", "key": key,
                       "source": source, "chars": str(chars), "seq_len": str(seq_len)})
    except OSError as e:
        log(f"could not keep the gradient statistics in {path}: {e.strerror or e}")
    return ms


def checkpoint_stats(ck, ck_path: Path, backend, seq_len: int, own: np.ndarray | None = None,
                     stats_text: str | None = None, log: Callable[[str], None] = lambda m: None) -> np.ndarray:
    """The rms rule's statistics for a checkpoint: over its training split (`own`: its text's
    codes, when already read) or over the file `stats_text`, kept beside it (stats_file).
    Raises InputError when the training text is not at hand."""
    from charrnn import catalog
    from charrnn.corpus import MODEL_HINT, read_input
    from charrnn.evaluate import _encode, own_codes, split_of

    if stats_text is not None:
        codes, _ = _encode(ck.vocab, read_input(stats_text, byte_mode=ck.vocab.byte_mode, hint=MODEL_HINT), log)
        source = stats_text
    else:
        codes = split_of(own_codes(ck)[0] if own is None else own, ck.train_args, "train")
        source = "the training split"
    return load_or_compute_stats(stats_file(Path(ck_path), catalog.cache_dir()), backend, codes, seq_len, source, log)


# ---------------------------------------------------------------- adapting while scoring
def dynamic_evaluate(backend, codes: np.ndarray, dyn: Dynamic, ms: np.ndarray | None = None,
                     progress: Callable[[int], None] | None = None, state=None) -> tuple[float, int, object]:
    """Summed loss in nats over codes[1:] given codes[:-1], read as one stream from `state` (zero
    when None) with the weights adapting after each segment; returns (nats, count, final state).
    The backend keeps the adapted weights. `ms` (gradient_rms) is needed by the "rms" rule."""
    n = len(codes) - 1
    if state is None:
        state = backend.zero_state(1)
    if n < 1:
        return 0.0, 0, state
    if dyn.rule == "rms" and ms is None:
        raise ValueError("the rms rule needs the gradient statistics (gradient_rms)")
    w0 = np.array(backend.params_host().flat)            # the backend's dtype: float32, or float64 in tests
    w, dt = w0.copy(), w0.dtype.type
    if dyn.rule == "rms":
        ms = np.asarray(ms, dtype=dt)
        mean = float(np.mean(ms, dtype=np.float64))
        denom = ms + dt(dyn.eps * mean)
        pull = np.minimum(dt(1), dt(dyn.decay / mean) * ms) if mean > 0 else np.zeros_like(w0)
    codes = np.asarray(codes, dtype=np.int64)
    total = 0.0
    for start in range(0, n, dyn.seq_len):
        end = min(n, start + dyn.seq_len)
        x, y = codes[start:end].reshape(-1, 1), codes[start + 1:end + 1].reshape(-1, 1)
        loss, state = backend.train_step(x, y, state, noise=False)   # the score, before this segment's step
        g = np.asarray(backend.grad_host().flat, dtype=dt)
        if dyn.rule == "sgd":
            w -= dt(dyn.lr) * g
        else:
            w -= dt(dyn.lr) * g / denom
            if dyn.decay:
                w += pull * (w0 - w)
        # 10x worse than guessing uniformly: no trained model starts there, so the steps blew up
        if not (loss <= 10 * math.log(backend.cfg.vocab_size) * (end - start) and np.isfinite(w).all()):
            raise InputError(f"dynamic evaluation diverged at character {end:,}: "
                             f"--dynamic-lr {dyn.lr:g} is too high")
        backend.set_params(w)
        total += float(loss)
        if progress:
            progress(end - start)
    return total, n, state


def search_lr(make_backend, codes: np.ndarray, dyn: Dynamic, ms: np.ndarray | None,
              rates: tuple[float, ...], log: Callable[[str], None] = lambda m: None) -> tuple[float, list]:
    """The rate of `rates` that scores `codes` best dynamically (each run on fresh trained
    weights from make_backend()); returns it and [(rate, bits/char), ...]."""
    tried = []
    for lr in rates:
        try:
            nats, count, _ = dynamic_evaluate(make_backend(), codes, dataclasses.replace(dyn, lr=lr), ms)
            bpc = nats / max(count, 1) / math.log(2)
        except InputError:                       # diverged: as bad as can be
            bpc = math.inf
        tried.append((lr, bpc))
        log(f"--dynamic-lr {lr:g}: {bpc:.4f} bits/char")
    best = min(tried, key=lambda t: t[1])
    return best[0], tried


# ---------------------------------------------------------------- adapting before sampling
def adapt(ck, ck_path: Path, device: str, file_arg: str, dyn: Dynamic | None = None,
          log: Callable[[str], None] = lambda m: None):
    """`charrnn sample --adapt FILE`: read FILE with dynamic evaluation and return (backend
    holding the adapted weights, FILE's codes), or None when FILE has nothing to learn from (the
    sample is then exactly what it is without --adapt). One line on `log` gives the characters
    read and FILE's bits/char under the trained and the adapted weights."""
    from charrnn.backends import compile_notices, make_backend
    from charrnn.corpus import MODEL_HINT, read_input
    from charrnn.evaluate import _encode, evaluate
    from charrnn.model import Params

    codes, _ = _encode(ck.vocab, read_input(file_arg, byte_mode=ck.vocab.byte_mode, hint=MODEL_HINT,
                                            allow_empty=True), log)
    name = "stdin" if file_arg == "-" else file_arg
    if len(codes) < 2:
        log(f"--adapt: {name} has fewer than two characters the model knows; nothing adapted")
        return None
    dyn = dyn or Dynamic()
    cfg = ck.config.scoring()
    be = make_backend(device, cfg, Params(cfg, ck.params.flat.copy()), notify=compile_notices(log))
    ms = None
    if dyn.rule == "rms":
        try:
            ms = checkpoint_stats(ck, ck_path, be, dyn.seq_len, log=log)
        except InputError:
            dyn = Dynamic("sgd", lr=DYNAMIC_LR["sgd"], seq_len=dyn.seq_len)
            log("--adapt: the training text is not at hand for the rms rule's statistics; adapting with sgd")
    before, n = evaluate(be, codes, seq_len=dyn.seq_len)
    dynamic_evaluate(be, codes, dyn, ms)
    after, _ = evaluate(be, codes, seq_len=dyn.seq_len)
    bpc = 1 / (max(n, 1) * math.log(2))
    log(f"adapted to {n + 1:,} characters of {name}: {before * bpc:.4f} bits/char before, {after * bpc:.4f} after "
        f"({dyn.rule}, lr {dyn.lr:g})")
    return be, codes
