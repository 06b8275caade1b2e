"""The training loop: windows, steps, validation, learning-rate schedule, early stopping,
checkpoints (`best` and `last`), a metrics log, a progress bar on stderr, and clean stops.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from charrnn import checkpoint as ckpt
from charrnn.backends import make_backend
from charrnn.batches import Batches
from charrnn.corpus import CorpusError, Vocab, describe_chars, split
from charrnn.evaluate import evaluate, summary
from charrnn.model import ModelConfig, Params, init_params
from charrnn.optim import Optimizer, parse_clip

LOG2 = math.log(2)


@dataclass
class TrainOptions:
    # model
    hidden: int = 256
    layers: int = 2
    cell: str = "lstm"
    embed: int = 0
    dropout: float = 0.0
    activation: str = "tanh"
    forget_bias: float = 1.0
    init: str = "uniform"
    # data
    seq_len: int = 100
    batch_size: int = 64
    val_frac: float = 0.05
    test_frac: float = 0.05
    # optimisation
    optimizer: str = "adam"
    lr: float = 2e-3
    beta1: float | None = None
    beta2: float | None = None
    alpha: float | None = None
    momentum: float | None = None
    eps: float | None = None
    weight_decay: float = 0.0
    l1: float = 0.0
    clip: str = "norm:5"
    lr_schedule: str = "cosine"    # cosine: anneal to lr_floor * lr over the run (steps or --minutes); constant
    lr_floor: float = 0.1
    lr_decay: float = 1.0          # multiply the rate by this each epoch after lr_decay_after
    lr_decay_after: int = 10
    lr_plateau: float = 1.0        # multiply the rate by this when validation does not improve
    patience: int = 0              # stop after this many validations without improvement; 0 = never
    # run
    max_epochs: float = 50.0
    minutes: float = 0.0           # wall-clock budget; 0 = none
    max_steps: int = 0             # 0 = no step limit (tests and benchmarks)
    val_every: int = 0             # steps between validations; 0 = once per epoch
    seed: int = 0
    device: str = "cpu"
    out: str = ""


class TrainingInterrupted(Exception):
    def __init__(self, signum: int):
        self.signum = signum
        self.exit_code = 128 + signum


class Trainer:
    """One run: owns the backend, optimizer, data cursor and schedule; `run()` trains."""

    def __init__(self, opts: TrainOptions, text: str | bytes, out_dir: Path,
                 log: Callable[[str], None] = lambda m: None, show_progress: bool = True,
                 resume: ckpt.Checkpoint | None = None, init_from: ckpt.Checkpoint | None = None):
        self.o, self.log, self.out = opts, log, Path(out_dir)
        self.source: dict | None = None          # where the text came from, so `eval --split` can find it
        self.show_progress = show_progress
        base = resume or init_from
        self.vocab = base.vocab if base else Vocab.from_text(text)
        missing = self.vocab.unknown(text)
        if missing:
            raise CorpusError(f"the text has {len(missing)} characters outside the checkpoint's vocabulary: "
                              f"{describe_chars(missing)}")
        codes = self.vocab.encode(text)
        self.train_codes, self.val_codes, self.test_codes = split(codes, opts.val_frac, opts.test_frac)
        if len(self.train_codes) < 2:
            raise CorpusError("the text is too short to train on (the training split needs at least 2 characters)")
        self.batches = Batches(self.train_codes, opts.batch_size, opts.seq_len, warn=log)
        if base:
            self.cfg = base.config
        else:
            self.cfg = ModelConfig(vocab_size=self.vocab.size, hidden=opts.hidden, layers=opts.layers,
                                   cell=opts.cell, embed=opts.embed, dropout=opts.dropout,
                                   activation=opts.activation, forget_bias=opts.forget_bias, init=opts.init)
        self.rng = np.random.default_rng(opts.seed)
        params = base.params.astype(np.float32) if base else init_params(self.cfg, self.rng)
        hyper = {k: getattr(opts, k) for k in ("beta1", "beta2", "alpha", "momentum", "eps")}
        hyper = {k: v for k, v in hyper.items() if v is not None and k in _HYPER[opts.optimizer]}
        self.opt = Optimizer(opts.optimizer, params.flat.size, np.float32, opts.weight_decay, opts.l1, **hyper)
        self.clip = parse_clip(opts.clip)
        self.step = self.epoch = self.cursor = 0
        self.lr = opts.lr
        self.best_val = math.inf
        self.bad_evals = 0
        self.chars_seen = 0
        self.elapsed = 0.0
        self.state = None
        if resume:
            self._restore(resume)
        self.be = make_backend(opts.device, self.cfg, params, notify=log)
        if self.state is None:
            self.state = self.be.zero_state(self.batches.batch)

    def _restore(self, ck: ckpt.Checkpoint) -> None:
        pr = ck.progress
        self.step, self.epoch, self.cursor = int(pr.get("step", 0)), int(pr.get("epoch", 0)), int(pr.get("cursor", 0))
        self.lr = float(pr.get("lr", self.o.lr))
        self.best_val = float(pr.get("best_val", math.inf))
        self.bad_evals = int(pr.get("bad_evals", 0))
        self.chars_seen = int(pr.get("chars_seen", 0))
        self.elapsed = float(pr.get("elapsed", 0.0))
        if ck.optimizer and ck.optimizer.get("name") == self.opt.name:
            self.opt = Optimizer.from_meta(ck.optimizer, ck.params.flat.size)
            for k, arr in ck.optim_state.items():
                if k in self.opt.state:
                    self.opt.state[k][:] = arr
        if ck.rng:
            self.rng.bit_generator.state = ck.rng
        if ck.state is not None and ck.state.shape[2] == self.batches.batch:
            self.state = ck.state.copy()

    # -- checkpoints ----------------------------------------------------------------
    def _checkpoint(self, metrics: dict) -> ckpt.Checkpoint:
        progress = {"step": self.step, "epoch": self.epoch, "cursor": self.cursor, "lr": self.lr,
                    "best_val": self.best_val if math.isfinite(self.best_val) else None,
                    "bad_evals": self.bad_evals, "chars_seen": self.chars_seen, "elapsed": self.elapsed}
        return ckpt.Checkpoint(config=self.cfg, vocab=self.vocab, params=self.be.params_host(),
                               optimizer=self.opt.to_meta(), optim_state=self.opt.state,
                               state=np.asarray(self.state, np.float32), progress=progress,
                               rng=self.rng.bit_generator.state,
                               train_args=dict(dataclasses.asdict(self.o), source=self.source),
                               metrics=metrics)

    def save(self, name: str, metrics: dict | None = None) -> Path:
        path = self.out / f"{name}.safetensors"
        ckpt.save(path, self._checkpoint(metrics or {}))
        return path

    # -- validation -------------------------------------------------------------------
    def validate(self) -> float | None:
        if len(self.val_codes) < 2:
            return None
        nats, n = evaluate(self.be, self.val_codes)
        return summary(nats, n)["bits_per_char"]

    # -- the loop ---------------------------------------------------------------------
    def run(self) -> dict:
        o, bt = self.o, self.batches
        chars_per_step = bt.batch * bt.seq_len
        val_every = o.val_every or bt.n_windows
        budget = o.minutes * 60.0 if o.minutes > 0 else math.inf
        total_steps = int(math.ceil(o.max_epochs * bt.n_windows))
        if o.max_steps:
            total_steps = min(total_steps, o.max_steps)
        stopped = {"signum": 0}

        def on_signal(signum, frame):
            stopped["signum"] = signum
        old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        bar = None
        if self.show_progress:
            from tqdm import tqdm
            bar = tqdm(total=total_steps, initial=self.step, unit="step", file=sys.stderr, disable=None,
                       dynamic_ncols=True, leave=True)
        ema = None
        t_start = time.perf_counter() - self.elapsed
        last_val_t = time.perf_counter()
        reason = "finished the epochs"
        val_bpc = None
        try:
            while self.step < total_steps:
                if self.cursor >= bt.n_windows:          # new epoch: reset the carried state
                    self.cursor = 0
                    self.epoch += 1
                    self.state = self.be.zero_state(bt.batch)
                    if o.lr_decay != 1.0 and self.epoch >= o.lr_decay_after:
                        self.lr *= o.lr_decay
                x, y = bt.window(self.cursor)
                seed = int(self.rng.integers(1 << 62)) if self.cfg.dropout else 0
                loss, self.state = self.be.train_step(x, y, self.state, seed)
                lr_now = self.lr * self._anneal(max(self.step / total_steps, self.elapsed / budget))
                gnorm = self.be.optimizer_step(self.opt, lr_now, self.clip)
                self.step += 1
                self.cursor += 1
                self.chars_seen += chars_per_step
                bpc = loss / chars_per_step / LOG2
                ema = bpc if ema is None else 0.95 * ema + 0.05 * bpc
                self.elapsed = time.perf_counter() - t_start
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix_str(f"epoch {self.epoch + self.cursor / bt.n_windows:.2f}  train {ema:.3f} bpc  "
                                        f"{self.chars_seen / max(self.elapsed, 1e-9):,.0f} chars/s", refresh=False)
                out_of_time = self.elapsed >= budget
                due = self.step % val_every == 0 or time.perf_counter() - last_val_t > 300
                if due or out_of_time or self.step == total_steps or stopped["signum"]:
                    if stopped["signum"]:
                        break
                    val_bpc = self.validate()
                    last_val_t = time.perf_counter()
                    improved = val_bpc is not None and val_bpc < self.best_val
                    if improved:
                        self.best_val, self.bad_evals = val_bpc, 0
                    elif val_bpc is not None:
                        self.bad_evals += 1
                        if o.lr_plateau != 1.0:
                            self.lr *= o.lr_plateau
                    rec = {"step": self.step, "epoch": round(self.epoch + self.cursor / bt.n_windows, 4),
                           "chars": self.chars_seen, "elapsed_s": round(self.elapsed, 2),
                           "train_bpc": round(ema, 5), "val_bpc": None if val_bpc is None else round(val_bpc, 5),
                           "lr": lr_now, "grad_norm": round(gnorm, 5)}
                    self._append_metrics(rec)
                    self._record_sample(rec)
                    if bar is not None:
                        bar.write(f"step {self.step}  epoch {rec['epoch']:.2f}  train {ema:.4f}  "
                                  f"val {'n/a' if val_bpc is None else f'{val_bpc:.4f}'} bpc", file=sys.stderr)
                    self.save("last", rec)
                    if improved or (val_bpc is None and not (self.out / "best.safetensors").exists()):
                        self.save("best", rec)
                    if o.patience and self.bad_evals >= o.patience:
                        reason = f"early stop: no improvement in {o.patience} validations"
                        break
                if out_of_time:
                    reason = f"time budget of {o.minutes:g} minutes reached"
                    break
            if stopped["signum"]:
                raise TrainingInterrupted(stopped["signum"])
        except TrainingInterrupted:
            self.save("last", {"step": self.step, "interrupted": True})
            raise
        finally:
            if bar is not None:
                bar.close()
            for s, h in old.items():
                signal.signal(s, h)
        if reason.startswith("early stop"):
            self._append_metrics({"step": self.step, "event": "stop", "reason": reason})
        return {"steps": self.step, "epochs": self.epoch + self.cursor / bt.n_windows,
                "best_val_bpc": self.best_val if math.isfinite(self.best_val) else None,
                "last_val_bpc": val_bpc, "reason": reason, "elapsed_s": self.elapsed,
                "out": str(self.out)}

    # the report's per-validation samples: fixed seed and temperature, so they compare across steps
    sample_chars, sample_temp, sample_seed = 300, 0.8, 1234

    def _record_sample(self, rec: dict) -> None:
        """Append a short sample to samples.jsonl for `charrnn report`. generate() runs its own
        batch-1 state on the backend, so the training state and RNG are untouched."""
        if self.sample_chars <= 0:
            return
        from charrnn.sample import generate
        v = self.vocab
        start = v.encode(b"\n") if v.byte_mode else v.encode("\n" if "\n" in v.chars else v.chars[0])
        codes = [int(c[0]) for c, _ in generate(self.be, start, self.sample_chars, self.sample_temp,
                                                 self.sample_seed)]
        text = v.decode(codes)
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        line = {"step": rec["step"], "chars": rec["chars"], "temp": self.sample_temp,
                "seed": self.sample_seed, "text": text}
        with open(self.out / "samples.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")

    def _anneal(self, progress: float) -> float:
        """The schedule's factor on the base rate at `progress` in [0, 1] of the run: the run ends
        when its steps or its time budget run out, so the rate reaches its floor either way."""
        if self.o.lr_schedule == "constant":
            return 1.0
        p = min(max(progress, 0.0), 1.0)
        return self.o.lr_floor + (1.0 - self.o.lr_floor) * 0.5 * (1.0 + math.cos(math.pi * p))

    def _append_metrics(self, rec: dict) -> None:
        with open(self.out / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")


_HYPER = {"adam": ("beta1", "beta2", "eps"), "rmsprop": ("alpha", "eps"), "adagrad": ("eps",),
          "nesterov": ("momentum",)}


def prepare_out_dir(out: str | os.PathLike) -> Path:
    """Create the run directory and prove it is writable now, not an hour from now."""
    path = Path(out)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-probe-{os.getpid()}"
        with open(probe, "wb") as f:
            f.write(b"\0" * 65536)
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as e:
        raise CorpusError(f"cannot write checkpoints to {path}: {e.strerror or e}") from None
    return path
