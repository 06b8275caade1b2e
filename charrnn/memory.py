"""Will it fit? Lower-bound estimates of the memory a training run or a sampling batch needs,
checked against the memory this machine has available before anything is allocated, so a model
or batch that cannot fit is one line with the estimate, not a MemoryError (or a machine brought
to its knees) minutes later. The estimates count only what must exist at once (weights,
gradients, optimizer state, the rollback copy, one window's activations): a refusal is certain,
a pass is no promise.
"""
from __future__ import annotations

import math
import os

from charrnn.config import ModelConfig
from charrnn.errors import InputError

F32 = 4


def available_bytes() -> int | None:
    """Physical memory available to a new allocation now: Linux's MemAvailable (free memory plus
    what the page cache would give back), else the free pages sysconf reports; None if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def n_weights(cfg: ModelConfig) -> int:
    """Weights of the model, counted without allocating (Python integers: no overflow): the
    sizes table of one and of two layers, since every layer past the first is alike."""
    import dataclasses

    from charrnn.model import param_shapes

    def count(layers: int) -> int:
        return sum(math.prod(shape) for _, shape in param_shapes(dataclasses.replace(cfg, layers=layers)))
    one = count(1)
    return one + (cfg.layers - 1) * (count(2) - one)


def training_bytes(cfg: ModelConfig, seq_len: int, batch: int, optimizer_slots: int, device: str = "cpu") -> int:
    """Host bytes a training run needs at least: the weights, their gradient, the optimizer's
    slots and the rollback snapshot, and on the CPU one window's gate activations, states and
    output probabilities, with layer normalisation its normalised values, with recurrent dropout
    and zoneout their masks (on a GPU those live in its memory)."""
    n = n_weights(cfg)
    need = F32 * n * (3 + optimizer_slots)
    if device == "cpu":
        per_step = cfg.layers * (cfg.gates + 2 * cfg.n_states) * cfg.hidden + 2 * cfg.vocab_size
        if cfg.norm == "layer":      # the normalised gates and cell (cpu_layers.Layer's xh, xc), and their 1/sigma
            per_step += cfg.layers * ((cfg.gates + 1) * cfg.hidden + cfg.gates + 1)
        if cfg.recurrent_dropout:    # its masks, read again by the backward
            per_step += cfg.layers * cfg.hidden
        if cfg.zoned:                # zoneout's keep factors on c and h
            per_step += 2 * cfg.layers * cfg.hidden
        need += F32 * seq_len * batch * per_step
    return need


def sampling_bytes(cfg: ModelConfig, batch: int) -> int:
    """Bytes `batch` samples drawn together need at least: the weights, each row's state and
    probabilities."""
    return F32 * (n_weights(cfg) + batch * (cfg.layers * cfg.n_states * cfg.hidden + 3 * cfg.vocab_size))


def _check(need: int, what: str) -> None:
    have = available_bytes()
    if have is not None and need > have:
        raise InputError(f"{what} need about {_size(need)} of memory and {_size(have)} is available; "
                         f"make them smaller")


def check_training(cfg: ModelConfig, opts, optimizer_slots: int, n_codes: int) -> None:
    """Refuse a model and batch that cannot fit in this machine's memory (opts: TrainOptions)."""
    window = min(opts.seq_len * opts.batch_size, max(n_codes, 1))     # short texts shrink the batch
    need = training_bytes(cfg, window, 1, optimizer_slots, opts.device)
    _check(need, f"the model and batch (--hidden {cfg.hidden}, --layers {cfg.layers}, --embed {cfg.embed}, "
                 f"--batch-size {opts.batch_size}, --seq-len {opts.seq_len})")


def check_sampling(cfg: ModelConfig, batch: int) -> None:
    """Refuse --num-samples that cannot fit next to the model in this machine's memory."""
    _check(sampling_bytes(cfg, batch), f"--num-samples {batch} of this {cfg.layers}x{cfg.hidden} model")


def _size(b: int) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if b >= scale:
            return f"{b / scale:.1f} {unit}"
    return f"{b / 1e3:.1f} kB"
