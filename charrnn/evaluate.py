"""Bits per character on held-out text: one stream, the state carried through the whole text
(the reference figure `charrnn eval` reports), or, cheaper for validation during training,
several contiguous streams side by side in one batch, the state carried within each."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from charrnn.backends import DEFAULT_DEVICE
from charrnn.errors import InputError


def evaluate(backend, codes: np.ndarray, seq_len: int = 256,
             progress: Callable[[int], None] | None = None, streams: int = 1) -> tuple[float, int]:
    """Summed loss in nats over every prediction codes[1:] given codes[:-1], and its count.

    With streams = S > 1 the text is cut into S contiguous pieces of n // S predictions, scored
    as one batch of S streams that each start from the zero state; the n % S predictions left at
    the end continue the last stream on its own. Every prediction is scored once; each piece
    after the first starts without the context the one-stream score has there, which costs a
    little (bench/RESULTS.md gives how much)."""
    n = len(codes) - 1
    if n < 1:
        return 0.0, 0
    S = max(1, min(int(streams), n))
    if S == 1:
        return _one_stream(backend, codes, seq_len, progress, backend.zero_state(1))[0], n
    m = n // S
    total, state = 0.0, backend.zero_state(S)
    # piece s covers predictions s*m .. s*m + m - 1: column s of the (T, S) windows
    inputs = np.asarray(codes[:S * m + 1], dtype=np.int64)
    for start in range(0, m, seq_len):
        end = min(m, start + seq_len)
        cols = np.arange(S) * m
        x = inputs[cols[None, :] + np.arange(start, end)[:, None]]
        y = inputs[cols[None, :] + np.arange(start + 1, end + 1)[:, None]]
        loss, state = backend.loss(x, y, state)
        total += loss
        if progress:
            progress((end - start) * S)
    if S * m < n:                                  # the remainder, after the last piece
        tail, _ = _one_stream(backend, codes[S * m:], seq_len, progress, _column(state, S - 1))
        total += tail
    return total, n


def _column(state, s: int):
    """Stream s of a batch's carried state (L, S, B, H), as a batch of one."""
    host = np.asarray(state)
    return np.ascontiguousarray(host[:, :, s:s + 1])


def _one_stream(backend, codes, seq_len, progress, state) -> tuple[float, object]:
    """Summed loss over codes[1:] as one stream from `state`, and the state after it."""
    total = 0.0
    for start in range(0, len(codes) - 1, seq_len):
        end = min(len(codes) - 1, start + seq_len)
        x = codes[start:end].astype(np.int64).reshape(-1, 1)
        y = codes[start + 1:end + 1].astype(np.int64).reshape(-1, 1)
        loss, state = backend.loss(x, y, state)
        total += loss
        if progress:
            progress(end - start)
    return total, state


def summary(nats_sum: float, count: int) -> dict:
    """nats/char, bits/char and perplexity from a summed loss."""
    nats = nats_sum / max(count, 1)
    return {"chars": count, "nats_per_char": nats, "bits_per_char": nats / math.log(2),
            "perplexity": math.exp(nats) if nats < 709 else math.inf}    # a wild model's exp() overflows


def evaluate_checkpoint(args: Sequence[str] = (), which: str = "test", device: str = DEFAULT_DEVICE,
                        log: Callable[[str], None] = lambda m: None) -> dict:
    """`charrnn eval` as one call: args is [CHECKPOINT] [FILE|-] (one argument is taken for a
    checkpoint when it is a directory, a .safetensors file or a shipped model's name). Without a
    FILE the checkpoint's own training text is found again and its `which` split ("val" or
    "test") scored. Characters outside the vocabulary are skipped, and `log` hears how many.
    Returns summary()'s numbers plus `text` (what was scored) and `skipped_chars`."""
    from charrnn import zoo
    from charrnn.backends import compile_notices, make_backend, pick_device
    from charrnn.corpus import MODEL_HINT, describe_chars, read_input, split

    ck_arg, file_arg = None, None
    if len(args) == 2:
        ck_arg, file_arg = args
    elif len(args) == 1:
        a = Path(args[0])
        if a.is_dir() or a.suffix == ".safetensors" or (not a.exists() and args[0] in zoo.names()):
            ck_arg = args[0]
        else:
            file_arg = args[0]
    ck = zoo.load_checkpoint(ck_arg, log)
    vocab = ck.vocab
    if file_arg is not None:
        text = read_input(file_arg, byte_mode=vocab.byte_mode, hint=MODEL_HINT)
        what = "stdin" if file_arg == "-" else file_arg
    else:
        src = ck.train_args.get("source") or {}
        path = src.get("path")
        if (not path or not Path(path).is_file()) and src.get("corpus"):
            from charrnn import catalog
            entry = catalog.lookup(src["corpus"])
            path = str(catalog.ensure(entry, fetch=False)[0]) if entry else None
        if not path or path == "-" or not Path(path).is_file():
            raise InputError("this checkpoint's training text is not at hand; name a FILE to evaluate on")
        text = read_input(path, byte_mode=vocab.byte_mode, encoding=src.get("encoding", "utf-8"))
        what = f"{which} split of {path}"
    unknown = vocab.unknown(text)
    skipped = sum(text.count(c) for c in unknown)
    if unknown:
        log(f"skipping {skipped} occurrences of {len(unknown)} characters outside the vocabulary: "
            f"{describe_chars(unknown)}")
    codes = vocab.encode(text, skip_unknown=True)
    if file_arg is None:
        _, val, test = split(codes, ck.train_args.get("val_frac", 0.05), ck.train_args.get("test_frac", 0.05))
        codes = val if which == "val" else test
    if len(codes) < 2:
        raise InputError(f"{what} has fewer than two characters to score")
    be = make_backend(pick_device(device, log, announce=False), ck.config, ck.params, notify=compile_notices(log))
    nats, n = evaluate(be, codes)
    res = summary(nats, n)
    res.update({"text": what, "skipped_chars": skipped})
    return res
