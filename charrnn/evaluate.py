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


SPLITS = ("val", "test", "tail")


def split_of(codes: np.ndarray, train_args: dict, which: str) -> np.ndarray:
    """A part of a checkpoint's text by the checkpoint's own fractions: "train", "val", "test",
    or "tail", validation and test as one stream (the last val_frac + test_frac of the text:
    tinyshakespeare's last 10%, the text nanoGPT's shakespeare_char scores). A run split by
    document takes the documents its record assigns (charrnn/documents.py); its tail is the
    validation documents, then the test ones."""
    docs = train_args.get("documents")
    if docs and train_args.get("split_by") == "document":
        from charrnn.documents import parts
        cut = parts(codes, docs)
        cut["tail"] = np.concatenate([cut["val"], cut["test"]])
        return cut[which]
    from charrnn.corpus import split
    train, val, test = split(codes, train_args.get("val_frac", 0.05), train_args.get("test_frac", 0.05))
    return {"train": train, "val": val, "test": test, "tail": codes[len(train):]}[which]


def training_text(ck) -> str:
    """The path of a checkpoint's training text, found again (a file, or a catalogue corpus)."""
    src = ck.train_args.get("source") or {}
    path = src.get("path")
    if (not path or not Path(path).is_file()) and src.get("corpus"):
        from charrnn import catalog
        entry = catalog.lookup(src["corpus"])
        path = str(catalog.ensure(entry, fetch=False)[0]) if entry else None
    if not path or path == "-" or not Path(path).is_file():
        raise InputError("this checkpoint's training text is not at hand; name a FILE to evaluate on")
    return path


def _encode(vocab, text, log) -> tuple[np.ndarray, int]:
    """Codes of a text, characters outside the vocabulary skipped (`log` hears how many)."""
    from charrnn.corpus import describe_chars
    unknown = vocab.unknown(text)
    skipped = sum(text.count(c) for c in unknown)
    if unknown:
        log(f"skipping {skipped} occurrences of {len(unknown)} characters outside the vocabulary: "
            f"{describe_chars(unknown)}")
    return vocab.encode(text, skip_unknown=True), skipped


def own_codes(ck, log: Callable[[str], None] = lambda m: None) -> tuple[np.ndarray, int, str]:
    """A checkpoint's training text found again, read in its recorded encoding and encoded:
    (codes, characters skipped, its path)."""
    from charrnn.corpus import read_input
    encoding = (ck.train_args.get("source") or {}).get("encoding", "utf-8")
    docs = ck.train_args.get("documents")
    if docs:                        # several documents: each read again, checked and joined as in training
        from charrnn.documents import reread
        return reread(docs, ck.vocab, encoding), 0, f"{len(docs)} documents"
    path = training_text(ck)
    text = read_input(path, byte_mode=ck.vocab.byte_mode, encoding=encoding)
    codes, skipped = _encode(ck.vocab, text, log)
    return codes, skipped, path


def evaluate_checkpoint(args: Sequence[str] = (), which: str = "test", device: str = DEFAULT_DEVICE,
                        log: Callable[[str], None] = lambda m: None, dynamic=None, auto_lr: bool = False,
                        stats_text: str | None = None, weights: str = "f32") -> dict:
    """`charrnn eval` as one call: args is [CHECKPOINT] [FILE|-] (one argument is taken for a
    checkpoint when it is a directory, a .safetensors file or a shipped model's name). Without a
    FILE the checkpoint's own training text is found again and its `which` split (SPLITS)
    scored. Characters outside the vocabulary are skipped, and `log` hears how many.

    `dynamic` (a dynamic.Dynamic) scores with dynamic evaluation instead; `auto_lr` first picks
    its rate on the validation split; the "rms" rule's gradient statistics come from the training
    split (or the file `stats_text`). `weights`: "f32", or "bf16"/"f16" for 16-bit copies (not
    with `dynamic`; on the CPU). Returns summary()'s numbers plus `text` (what was scored),
    `skipped_chars`, and with `dynamic` the settings used."""
    from charrnn import zoo
    from charrnn.backends import compile_notices, cpu_only, make_backend, pick_device
    from charrnn.corpus import MODEL_HINT, read_input

    if which not in SPLITS:
        raise InputError(f"--split must be one of {', '.join(SPLITS)}")
    ck_arg, file_arg = None, None
    if len(args) == 2:
        ck_arg, file_arg = args
    elif len(args) == 1:
        a = Path(args[0])
        if a.is_dir() or a.suffix == ".safetensors" or (not a.exists() and args[0] in zoo.names()):
            ck_arg = args[0]
        else:
            file_arg = args[0]
    ck_path, note = zoo.resolve(ck_arg)
    if note:
        log(note)
    from charrnn.checkpoint import load
    ck = load(ck_path)
    vocab = ck.vocab
    own = None                     # the training text's codes, when it is read
    if file_arg is not None:
        codes, skipped = _encode(vocab, read_input(file_arg, byte_mode=vocab.byte_mode, hint=MODEL_HINT), log)
        what = "stdin" if file_arg == "-" else file_arg
    else:
        own, skipped, path = own_codes(ck, log)
        codes = split_of(own, ck.train_args, which)
        what = f"{which} split of {path}"
    if len(codes) < 2:
        raise InputError(f"{what} has fewer than two characters to score")
    device = pick_device("cpu" if cpu_only(ck.config, weights) and device == "auto" else device, log,
                         announce=False)
    if dynamic is None:
        be = make_backend(device, ck.config, ck.params, notify=compile_notices(log), weights=weights)
        nats, n = evaluate(be, codes)
        res = summary(nats, n)
        res.update({"text": what, "skipped_chars": skipped})
        return res
    return _dynamic(ck, ck_path, device, codes, what, skipped, own, dynamic, auto_lr, stats_text, log)


LR_GRID = {"rms": (3e-5, 6e-5, 1e-4, 2e-4, 4e-4), "sgd": (0.03, 0.1, 0.3, 1.0)}


def _dynamic(ck, ck_path, device, codes, what, skipped, own, dyn, auto_lr, stats_text, log) -> dict:
    """evaluate_checkpoint's dynamic half: statistics, the rate search, the adapting score."""
    import dataclasses

    from charrnn import dynamic as dy
    from charrnn.backends import compile_notices, make_backend
    from charrnn.model import Params

    cfg = ck.config.scoring()     # no dropout in the steps either
    notify = compile_notices(log)

    def fresh():
        return make_backend(device, cfg, Params(cfg, ck.params.flat.copy()), notify=notify)

    if auto_lr and own is None:
        try:
            own = own_codes(ck)[0]
        except InputError:
            raise InputError("--dynamic-lr auto searches on the checkpoint's validation split, and its "
                             "training text is not at hand; give --dynamic-lr") from None
    ms = None
    if dyn.rule == "rms":
        try:
            ms = dy.checkpoint_stats(ck, ck_path, fresh(), dyn.seq_len, own, stats_text, log)
        except InputError:
            if stats_text is not None:
                raise
            raise InputError("the rms rule needs gradient statistics from the training text, which is not "
                             "at hand; give --dynamic-stats FILE or --dynamic-rule sgd") from None
    searched = None
    if auto_lr:
        val = split_of(own, ck.train_args, "val")
        log(f"searching --dynamic-lr on the validation split ({len(val) - 1:,} characters)")
        lr, searched = dy.search_lr(fresh, val, dyn, ms, LR_GRID[dyn.rule], log)
        if not math.isfinite(min(b for _, b in searched)):
            raise InputError("every --dynamic-lr tried diverged on the validation split")
        dyn = dataclasses.replace(dyn, lr=lr)
        log(f"chose --dynamic-lr {lr:g}")
    nats, n, _ = dy.dynamic_evaluate(fresh(), codes, dyn, ms)
    res = summary(nats, n)
    res.update({"text": what, "skipped_chars": skipped, "dynamic": dyn.to_dict()})
    if searched is not None:
        res["dynamic_search"] = [{"lr": lr, "val_bits_per_char": b} for lr, b in searched]
    return res
