"""The training loop: windows, steps, validation, learning-rate schedule, early stopping,
checkpoints (`best` and `last`), a metrics log, a progress bar on stderr, and clean stops.

Faults it survives: SIGINT/SIGTERM save `last` between steps and exit 130/143; a non-finite
loss, gradient or weight rolls back to an in-memory copy of the last good state with half the
learning rate (at most `max_nan_retries` times); `--resume` repeats an uninterrupted run bit
for bit, because the step, epoch, cursor, rates, validation counters, RNG, optimizer moments
and carried state all travel in the checkpoint.

Data parallel (`dist`, a charrnn.dist.Comm): each rank trains its contiguous share of the B
streams; the gradient, the loss and the stop signals travel in one all-reduced buffer per step,
so every decision is taken on the same numbers everywhere and no rank skips a collective.
Rank 0 writes checkpoints (with the carried state of all streams), metrics and samples.
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
from charrnn import diagnostics
from charrnn.backends import make_backend
from charrnn.batches import Batches
from charrnn.corpus import Corpus, CorpusError, Vocab, codes_digest, describe_chars, split
from charrnn.errors import InputError
from charrnn.evaluate import evaluate, summary
from charrnn.model import Params, init_params
from charrnn.optim import Optimizer, Schedule, parse_clip
from charrnn.progress import Progress
from charrnn.rundir import check_free_space, prepare_out_dir  # noqa: F401 (prepare_out_dir: the library's)
from charrnn.step import train_step
from charrnn.options import OPTIMIZER_DEFAULTS, TRAIN_OPTION_NAMES, TrainOptions

LOG2 = math.log(2)




class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM arrived; `last` has been saved. Exit with 128 + the signal number."""

    def __init__(self, signum: int):
        super().__init__(f"interrupted by signal {signum}")
        self.signum = signum
        self.exit_code = 128 + signum


class TrainingDiverged(Exception):
    """The loss or the gradients stayed non-finite after every allowed rollback."""


SAVE_EVERY_S = 300.0   # between validations `last` is still refreshed this often: a crash loses minutes, not hours
SNAPSHOT_EVERY = 100   # steps between in-memory copies of the last good state, for rolling back a NaN


@dataclass
class _Snapshot:
    """Host copies of everything a training step changes, taken when the state was known good."""
    progress: Progress
    flat: np.ndarray
    opt_state: dict
    opt_t: int
    rng: dict
    state: np.ndarray


class _Signals:
    """SIGINT and SIGTERM only set a flag; the loop checks it between steps, so a step and a
    checkpoint are never cut in half. Outside the main thread (tests) nothing is installed."""

    def __init__(self):
        self.signum = 0
        self.old: dict = {}

    def _on(self, signum, frame):
        self.signum = signum

    def __enter__(self) -> "_Signals":
        try:
            self.old = {s: signal.signal(s, self._on) for s in (signal.SIGINT, signal.SIGTERM)}
        except ValueError:
            self.old = {}
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self.old.items():
            signal.signal(s, h)


class Trainer:
    """One run: owns the backend, optimizer, data cursor and schedule; `run()` trains.

    `text` is a str, bytes, or a `Corpus` already encoded in chunks (large files). Everything a
    step depends on is in the checkpoint's progress, so a resumed run repeats an uninterrupted
    one bit for bit on the same backend and thread count."""

    def __init__(self, opts: TrainOptions, text: str | bytes | Corpus, out_dir: Path,
                 log: Callable[[str], None] = lambda m: None, show_progress: bool = True,
                 resume: ckpt.Checkpoint | None = None, init_from: ckpt.Checkpoint | None = None,
                 dist=None, notify: Callable[[str], None] | None = None, source: dict | None = None):
        self.o, self.log, self.out = opts, log, Path(out_dir)
        self.notify = notify or log             # the backend's compile notices
        self.dist = dist
        self.root = dist is None or dist.is_root
        self.source = source                     # where the text came from, so `eval --split` can find it
        self.show_progress = show_progress
        base = resume or init_from
        if isinstance(text, Corpus):
            if base and text.vocab != base.vocab:
                raise CorpusError("the text was encoded with a vocabulary other than the checkpoint's")
            self.vocab, codes, self.digest = text.vocab, text.codes, text.digest
        else:
            self.vocab = base.vocab if base else Vocab.from_text(text)
            missing = self.vocab.unknown(text)
            if missing:
                raise CorpusError(f"the text has {len(missing)} characters outside the checkpoint's vocabulary: "
                                  f"{describe_chars(missing)}")
            codes = self.vocab.encode(text)
            self.digest = codes_digest(codes)
        self.n_codes = len(codes)
        self.train_codes, self.val_codes, self.test_codes = split(codes, opts.val_frac, opts.test_frac)
        if len(self.train_codes) < 2:
            raise CorpusError(f"the text is too short to train on: the training split has {len(self.train_codes)} "
                              f"characters and needs at least 2")
        try:
            self.batches = Batches(self.train_codes, opts.batch_size, opts.seq_len, warn=log,
                                   share=(dist.rank, dist.size) if dist else (0, 1))
        except ValueError as e:
            raise CorpusError(str(e)) from None
        self.cfg = base.config if base else opts.model_config(self.vocab.size)
        self.rng = np.random.default_rng(opts.seed)
        params = base.params.astype(np.float32) if base else init_params(self.cfg, self.rng)
        if dist:
            dist.bcast_(params.flat)
        self.opt = new_optimizer(opts, params.flat.size)
        self.clip = parse_clip(opts.clip)
        # the counters of the run; its `lr` is the schedule's base, filled in when saved or snapshotted
        self.progress = Progress(digest=self.digest, n_codes=self.n_codes, world_size=dist.size if dist else 1)
        self.sched = Schedule(opts.lr, opts.lr_schedule, opts.lr_floor, opts.lr_decay, opts.lr_decay_after,
                              opts.lr_plateau)
        self.lr_now, self.gnorm = self.sched.base, 0.0
        self.state = None
        self._stop_signal = 0           # data parallel: the largest signal any rank caught, reduced
        self._val_every = 0
        self._diag: dict | None = None     # the tensor diagnostics of the last step that took them
        self.live = None
        if opts.report:
            from charrnn.live import LiveReport
            self.live = LiveReport(self.out)
        self._probe = diagnostics.probe_codes(self.val_codes if len(self.val_codes) >= 2 else self.train_codes)
        if resume:
            self._restore(resume)
        if dist:
            for arr in self.opt.state.values():
                dist.bcast_(arr)
        self.be = make_backend(opts.device, self.cfg, params, notify=self.notify)
        self._bind_backend()
        if self.state is None:
            self.state = self.be.zero_state(self.batches.local_batch)
        if dist:
            self._warm_up_in_turn()
        n = self.be.params_host().flat.size
        check_free_space(self.out, 3 * 4 * n * (1 + len(self.opt.state)) + (1 << 20))

    @property
    def lr(self) -> float:
        """The base rate now (before annealing): the schedule's, saved as progress `lr`."""
        return self.sched.base

    @lr.setter
    def lr(self, value: float) -> None:
        self.sched.base = value

    def _restore(self, ck: ckpt.Checkpoint) -> None:
        pr = Progress.from_dict(ck.progress)      # checkpoint.load has vetted it
        if pr.digest not in (None, self.digest):
            raise CorpusError("this is not the text the checkpoint was trained on (its codes differ); "
                              "use --init-from to fine-tune on a new text")
        ranks = pr.world_size
        # other batch flags may leave the cursor past the epoch's windows: the next epoch starts
        self.progress = dataclasses.replace(pr, digest=self.digest, n_codes=self.n_codes,
                                            world_size=self.dist.size if self.dist else 1,
                                            cursor=min(pr.cursor, self.batches.n_windows))
        self.lr = pr.lr if pr.lr is not None else self.o.lr
        if ck.optimizer and ck.optimizer.get("name") == self.opt.name:
            self.opt = Optimizer.from_meta(ck.optimizer, ck.params.flat.size)
            for k, arr in ck.optim_state.items():
                if k in self.opt.state:
                    self.opt.state[k][:] = arr
        if ck.rng:
            self.rng.bit_generator.state = ck.rng
        bt = self.batches
        if ck.state is not None and ck.state.shape[2] == bt.batch:
            self.state = ck.state[:, :, bt.lo:bt.hi].copy()
        now = self.progress.world_size
        if ranks != now and self.root:
            self.log(f"resuming a run of {ranks} process(es) on {now}: the streams are re-sliced, so it "
                     f"continues the run only approximately (another summation order), not bit for bit")

    # -- data parallel ---------------------------------------------------------------------
    def _bind_backend(self) -> None:
        """Data parallel: the step's all-reduce buffer, from the backend: the gradient followed by
        a tail [loss_sum, elapsed per rank..., signal per rank...]."""
        if self.dist:
            self._packed = self.be.reduce_buffer(1 + 2 * self.dist.size)

    def _reduce_step(self, loss: float, t0: float) -> float:
        """All-reduce this step's gradient, loss, elapsed time and signal; returns the global loss
        sum and keeps the largest elapsed time and signal of any rank."""
        d, n = self.dist, self.dist.size
        g = self._packed
        tail = g[g.size - 1 - 2 * n:]
        tail[:] = 0
        tail[0] = loss
        tail[1 + d.rank] = time.perf_counter() - t0
        tail[1 + n + d.rank] = self._sig.signum
        self.be.reduce_gradient(d.allreduce_)
        self.progress.elapsed = max(self.progress.elapsed, float(tail[1:1 + n].max()))
        self._stop_signal = int(tail[1 + n:].max())
        return float(tail[0])

    def _warm_up_in_turn(self) -> None:
        """The first rank on each node compiles the kernels into the on-disk cache while the
        others wait; then they load it instead of compiling the same code side by side."""
        bt, d = self.batches, self.dist
        if d.local_rank:
            d.barrier(node_only=True)
        self.be.warm_up(bt.seq_len, bt.local_batch, self.opt)
        if not d.local_rank:
            d.barrier(node_only=True)

    # -- checkpoints ----------------------------------------------------------------
    def _checkpoint(self, metrics: dict, state: np.ndarray) -> ckpt.Checkpoint:
        progress = dataclasses.replace(self.progress, lr=self.lr).to_dict()
        return ckpt.Checkpoint(config=self.cfg, vocab=self.vocab, params=self.be.params_host(),
                               optimizer=self.opt.to_meta(), optim_state=self.opt.state,
                               state=state, progress=progress,
                               rng=self.rng.bit_generator.state,
                               train_args=dict(self.o.to_dict(), model=self.cfg.to_dict(), source=self.source),
                               metrics=metrics)

    def save(self, name: str, metrics: dict | None = None) -> Path:
        """Rank 0 writes; with several ranks this is a collective (the carried state of every
        stream is gathered), and nobody leaves it before the file is in place."""
        path = self.out / f"{name}.safetensors"
        state = np.asarray(self.state, np.float32)
        if self.dist:
            state = self.dist.gather_streams(state, 2)
        if self.root:
            ckpt.save(path, self._checkpoint(metrics or {}, state))
        if self.dist:
            self.dist.barrier()
        return path

    # -- validation -------------------------------------------------------------------
    def validate(self, progress: Callable[[int], None] | None = None) -> float | None:
        """Bits/char on the validation split. Data parallel: rank r of N scores the r-th of N
        contiguous pieces, each from a zero state, and the sums are all-reduced (docs/mpi.md)."""
        codes = self.val_codes
        if len(codes) < 2:
            return None
        if not self.dist:
            nats, n = evaluate(self.be, codes, progress=progress, streams=self.o.val_streams)
            return summary(nats, n)["bits_per_char"]
        d, m = self.dist, len(codes) - 1
        lo, hi = d.rank * m // d.size, (d.rank + 1) * m // d.size
        sums = np.array(evaluate(self.be, codes[lo:hi + 1]) if hi > lo else (0.0, 0), np.float64)
        d.allreduce_(sums)
        return summary(float(sums[0]), int(sums[1]))["bits_per_char"]

    # -- numerical faults -------------------------------------------------------------
    def _snapshot(self) -> _Snapshot:
        return _Snapshot(dataclasses.replace(self.progress, lr=self.lr),
                         self.be.params_host().flat.copy(), {k: v.copy() for k, v in self.opt.state.items()},
                         self.opt.t, self.rng.bit_generator.state, np.array(self.state, copy=True))

    def _weights_finite(self) -> bool:
        return bool(np.isfinite(self.be.params_host().flat).all())

    def _rollback(self, what: str) -> None:
        """Back to the last good snapshot with half the learning rate, or give up after K times."""
        bad_step = self.progress.step + 1
        self.progress.nan_retries += 1
        if self.progress.nan_retries > self.o.max_nan_retries:
            last = self.out / "last.safetensors"
            raise TrainingDiverged(f"training diverged: {what} is not finite at step {bad_step} after "
                                   f"{self.o.max_nan_retries} rollbacks with the learning rate halved each time; "
                                   + (f"the last good checkpoint is {last}" if last.exists() else
                                      "no checkpoint was written") + "; try a lower --lr or a tighter --clip")
        sn, lr = self._snap, self.lr * 0.5
        now = self.progress           # the rollbacks, the time and the validation record go on
        self.progress = dataclasses.replace(sn.progress, elapsed=now.elapsed, nan_retries=now.nan_retries,
                                            best_val=now.best_val, sched_best=now.sched_best,
                                            bad_evals=now.bad_evals)
        for k, v in sn.opt_state.items():
            self.opt.state[k][:] = v
        self.opt.t = sn.opt_t
        self.rng.bit_generator.state = sn.rng
        self.state = sn.state.copy()
        self.lr = lr
        self._diag = None
        self.be = make_backend(self.o.device, self.cfg, Params(self.cfg, sn.flat.copy()), notify=self.notify)
        self._bind_backend()
        self.log(f"step {bad_step}: {what} is not finite; rolled back to step {sn.progress.step} and halved the "
                 f"learning rate to {lr:g} ({self.progress.nan_retries} of {self.o.max_nan_retries})")
        self._append_metrics({"step": bad_step, "event": "rollback", "what": what, "to_step": sn.progress.step,
                              "lr": lr})

    # -- the loop ---------------------------------------------------------------------
    def _train_step(self, t0: float) -> str | None:
        """One window: returns None, or what went non-finite (then nothing was counted)."""
        bt = self.batches
        if self.progress.cursor >= bt.n_windows:     # new epoch: reset the carried state
            self.progress.cursor = 0
            self.progress.epoch += 1
            self.state = self.be.zero_state(bt.local_batch)
            self.sched.on_epoch(self.progress.epoch)
        x, y = bt.window(self.progress.cursor)
        seed = int(self.rng.integers(1 << 62)) if self.cfg.dropout else 0
        watch = self._diag_due(self.progress.step + 1)
        seen: dict = {}

        def before_update():    # the raw gradient and the weights before the update, for the ratios
            seen["grad_norm"] = diagnostics.norms(self.be.grad_host())
            seen["before"] = self.be.params_host().flat.copy()

        def rate():             # after the reduction, which agrees on the elapsed time
            return self.sched.rate(self.progress.step, self.progress.elapsed)

        def reduce(loss):
            return self._reduce_step(loss, t0)
        st = train_step(self.be, self.opt, x, y, self.state, rate, self.clip, seed,
                        streams=(bt.lo, bt.batch) if self.dist else None, reduce=reduce if self.dist else None,
                        before_update=before_update if watch else None)
        if st.fault:
            return st.fault
        if watch:
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                after = self.be.params_host()
                self._diag = {"step": self.progress.step + 1,
                              "update_ratio": diagnostics.update_ratios(seen["before"], after),
                              "param_norm": diagnostics.norms(after), "grad_norm": seen["grad_norm"]}
        loss, state, lr_now, gnorm = st.loss, st.state, st.lr, st.grad_norm
        chars = bt.batch * bt.seq_len
        self.state, self.lr_now, self.gnorm = state, lr_now, gnorm
        self.progress.step += 1
        self.progress.cursor += 1
        self.progress.chars_seen += chars
        bpc = loss / chars / LOG2
        self.progress.ema = bpc if self.progress.ema is None else 0.95 * self.progress.ema + 0.05 * bpc
        if not self.dist:
            self.progress.elapsed = time.perf_counter() - t0
        return None

    def _epochs(self) -> float:
        """Epochs done, with the fraction of the current one."""
        return self.progress.epoch + self.progress.cursor / self.batches.n_windows

    # -- diagnostics ------------------------------------------------------------------
    def _diag_due(self, step: int) -> bool:
        """Whether the step numbered `step` records the tensor diagnostics (its validation or
        its --diag-every turn)."""
        o = self.o
        return o.diag and ((self._val_every and step % self._val_every == 0)
                           or (o.diag_every and step % o.diag_every == 0))

    def _diagnostics(self) -> dict | None:
        """The last step's tensor diagnostics with the layer statistics of the weights now."""
        if self._diag is None:
            return None
        d = dict(self._diag)
        if self._probe is not None:
            d["layers"] = diagnostics.layer_stats(self.cfg, self.be.params_host(), self._probe)
        return d

    def _validate_and_save(self, scheduled: bool, sig: _Signals, bar) -> bool:
        """Validate, log, save `last` (and `best` when it is the best yet); True means stop early.
        Only scheduled validations move the plateau and patience counters, so where a run was
        paused (--max-steps, a signal) never changes what a resumed run does."""
        if not self._weights_finite():
            self._rollback("a weight")
            return False

        def check(_):       # one process alone may stop mid-validation; ranks stop only between steps
            if sig.signum:
                raise TrainingInterrupted(sig.signum)
        val_bpc = self.validate(progress=check)
        o = self.o
        if scheduled and val_bpc is not None:
            improved = val_bpc < self.progress.sched_best
            if improved:
                self.progress.sched_best, self.progress.bad_evals = val_bpc, 0
            else:
                self.progress.bad_evals += 1
            self.sched.on_validation(improved)
        ema = self.progress.ema if self.progress.ema is not None else math.nan
        rec = {"step": self.progress.step, "epoch": round(self._epochs(), 4),
               "chars": self.progress.chars_seen, "elapsed_s": round(self.progress.elapsed, 2),
               "train_bpc": None if self.progress.ema is None else round(self.progress.ema, 5),
               "val_bpc": None if val_bpc is None else round(val_bpc, 5),
               "lr": self.lr_now, "grad_norm": round(self.gnorm, 5)}
        if not scheduled:
            rec["scheduled"] = False
        if o.diag and self._diag is not None:
            rec["diag"] = self._diagnostics()
            rec["hist"] = diagnostics.histograms(self.be.params_host())
        self._append_metrics(rec)
        if self.root:
            self._record_sample(rec)
        if bar is not None:
            bar.write(f"step {self.progress.step}  epoch {rec['epoch']:.2f}  train {ema:.4f}  "
                      f"val {'n/a' if val_bpc is None else f'{val_bpc:.4f}'} bpc", file=sys.stderr)
        best = (val_bpc is not None and val_bpc < self.progress.best_val) or \
            (val_bpc is None and not (self.out / "best.safetensors").exists())
        if best and val_bpc is not None:
            self.progress.best_val = val_bpc
        self.save("last", rec)
        if best:
            self.save("best", rec)
        self.last_val_bpc = val_bpc
        self._snap = self._snapshot()
        if self.live:
            self.live.update(validation=True)
        return bool(o.patience and self.progress.bad_evals >= o.patience)

    def run(self) -> dict:
        o, bt = self.o, self.batches
        val_every = self._val_every = o.val_every or bt.n_windows
        budget = o.minutes * 60.0 if o.minutes > 0 else math.inf
        # the schedule's length comes from the epochs (none under a budget without --max-epochs)
        # and the budget alone: --max-steps only pauses the run, so N steps, a resume and M more
        # follow the same learning rates as N+M at once
        epochs = o.epoch_limit()
        horizon = max(1, int(math.ceil(epochs * bt.n_windows))) if math.isfinite(epochs) else math.inf
        stop_at = min(horizon, o.max_steps) if o.max_steps else horizon
        self.sched.horizon, self.sched.budget = horizon, budget
        bar = None
        if self.show_progress and self.root:
            from tqdm import tqdm
            bar = tqdm(total=stop_at if math.isfinite(stop_at) else None, initial=min(self.progress.step, stop_at),
                       unit="step", file=sys.stderr,
                       disable=None, dynamic_ncols=True, leave=True)
        t0 = time.perf_counter() - self.progress.elapsed
        saved_at = self.progress.elapsed   # `last` is refreshed by (reduced) elapsed time, the same on every rank
        validated_at = self.progress.step or -1       # a resumed checkpoint was saved at its step
        self.last_val_bpc = None
        self._snap = self._snapshot()
        reason = ""
        with _Signals() as sig:
            self._sig = sig
            try:
                while True:
                    stop = self._stop_signal if self.dist else sig.signum
                    if stop:
                        raise TrainingInterrupted(stop)
                    if self.progress.step >= stop_at:
                        reason = "finished the epochs" if stop_at == horizon else f"reached --max-steps {o.max_steps}"
                        break
                    if self.progress.elapsed >= budget:
                        reason = f"time budget of {o.minutes:g} minutes reached"
                        break
                    fault = self._train_step(t0)
                    if fault:
                        self._rollback(fault)
                        if bar is not None:
                            bar.n = self.progress.step
                            bar.refresh()
                        continue
                    if bar is not None:
                        bar.update(1)
                        pr = self.progress
                        bar.set_postfix_str(f"epoch {self._epochs():.2f}  train {pr.ema:.3f} bpc  "
                                            f"{pr.chars_seen / max(pr.elapsed, 1e-9):,.0f} "
                                            f"chars/s", refresh=False)
                    step = self.progress.step
                    if o.diag and o.diag_every and step % o.diag_every == 0 and step % val_every:
                        self._append_metrics({"step": step, "diag": self._diagnostics()})
                        if self.live:
                            self.live.update(validation=False)
                    if step % val_every == 0:
                        validated_at, saved_at = step, self.progress.elapsed
                        if self._validate_and_save(True, sig, bar):
                            reason = f"early stop: no improvement in {o.patience} validations"
                            break
                    elif self.progress.elapsed - saved_at > SAVE_EVERY_S and self._weights_finite():
                        self.save("last", {"step": step})
                        saved_at = self.progress.elapsed
                    if self.progress.step % SNAPSHOT_EVERY == 0 and self._weights_finite():   # a rollback moves it
                        self._snap = self._snapshot()
                if self.progress.step != validated_at:      # the end of a run is validated too
                    self._validate_and_save(False, sig, bar)
            except TrainingInterrupted as e:
                self._save_interrupted()
                self._finish(f"interrupted by signal {e.signum}")
                raise
            except TrainingDiverged:
                self._finish("diverged")
                raise
            finally:
                if bar is not None:
                    bar.close()
        self._finish(reason)
        return {"steps": self.progress.step, "epochs": self._epochs(),
                "best_val_bpc": _finite_or_none(self.progress.best_val), "last_val_bpc": self.last_val_bpc,
                "reason": reason, "elapsed_s": self.progress.elapsed, "out": str(self.out)}

    def _finish(self, reason: str) -> None:
        """The run's last metrics line, however it ends: a live page stops reloading on it."""
        self._append_metrics({"step": self.progress.step, "event": "stop", "reason": reason})
        if self.live:
            self.live.write()

    def _save_interrupted(self) -> None:
        """`last` on a signal: the state after the last whole step, if its weights are sound."""
        if self._weights_finite():
            self.save("last", {"step": self.progress.step, "interrupted": True})

    claim = None    # the run directory's lock (rundir.Claim) when prepare_run made the trainer

    # the report's per-validation samples: fixed seed and temperature, so they compare across steps
    sample_chars, sample_temp, sample_seed = 300, 0.8, 1234

    def _record_sample(self, rec: dict) -> None:
        """Append a short sample to samples.jsonl for `charrnn report`. generate() runs its own
        batch-1 state on the backend, so the training state and RNG are untouched."""
        if self.sample_chars <= 0:
            return
        from charrnn.sample import Decoding, generate
        v = self.vocab
        start = v.encode(b"\n") if v.byte_mode else v.encode("\n" if "\n" in v.chars else v.chars[0])
        codes = [int(c[0]) for c, _ in generate(self.be, start, Decoding(
            length=self.sample_chars, temperature=self.sample_temp, seed=self.sample_seed))]
        text = v.decode(codes)
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        line = {"step": rec["step"], "chars": rec["chars"], "temp": self.sample_temp,
                "seed": self.sample_seed, "text": text}
        with open(self.out / "samples.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")

    def _append_metrics(self, rec: dict) -> None:
        if not self.root:
            return
        with open(self.out / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")


def new_optimizer(opts: TrainOptions, size: int) -> Optimizer:
    """The update rule the options name, with the hyperparameters given for it, fresh state."""
    hyper = {k: getattr(opts, k) for k in ("beta1", "beta2", "alpha", "momentum", "rho", "eps")}
    hyper = {k: v for k, v in hyper.items() if v is not None and k in OPTIMIZER_DEFAULTS[opts.optimizer]}
    return Optimizer(opts.optimizer, size, np.float32, opts.weight_decay, opts.l1, **hyper)


def _finite_or_none(v: float) -> float | None:
    return v if math.isfinite(v) else None


def resume_options(train_args: dict, overrides: dict) -> TrainOptions:
    """The options of a resumed run: the checkpoint's own (nested as saved now, or flat as before),
    then whatever was given on the command line. Architecture options are kept for the record
    only (the checkpoint's config wins). Names this version no longer knows are dropped."""
    known = {k: v for k, v in train_args.items() if k == "model" or k in TRAIN_OPTION_NAMES}
    try:
        return TrainOptions.from_dict({**known, **overrides})
    except ValueError as e:
        raise ckpt.CheckpointError(f"the checkpoint's training options are malformed ({e})") from None


def resolve_text(text: str, log: Callable[[str], None]) -> tuple[str, str | None]:
    """FILE as `train` and `lr-find` take it: "-", a path, or a catalogue name (resolved, fetched
    or built, which `log` hears of). Returns the path to read and the catalogue name, if any."""
    if text == "-":
        return text, None
    from charrnn import catalog
    path, where = catalog.resolve(text)
    corpus_name = None
    if not Path(text).exists():
        log(where)
        entry = catalog.lookup(text)
        corpus_name = entry["name"] if entry else None
    return str(path), corpus_name


def prepare_run(text: str, options: dict, given: frozenset[str] | set[str] = frozenset(), *,
                name: str | None = None, encoding: str = "utf-8", byte_mode: bool = False,
                resume: str | None = None, init_from: str | None = None, overwrite: bool = False,
                dist_mode: str = "off", dist_timeout: float = 600.0,
                log: Callable[[str], None] = lambda m: None) -> Trainer:
    """Everything `charrnn train` does before the first step, as one call; `run()` the result.

    text: a path, "-" for stdin, or a catalogue name. options: TrainOptions' fields by name (and
    `out`, the run directory or None). given: the names among them the user set explicitly;
    on --resume only those override the checkpoint's own options. dist_mode "auto" joins the
    data-parallel job this process was started in, if any. `log` hears the progress lines (the
    root rank's only). The run directory is claimed and locked here (charrnn/rundir.py): the
    trainer holds the claim as `trainer.claim`; `release()` it when the run ends (the process's
    end drops the lock in any case)."""
    from charrnn import dist as distributed
    from charrnn import rundir
    from charrnn.backends import compile_notices, pick_device
    from charrnn.corpus import check_encoding, check_source, load_corpus

    comm = distributed.start(dist_timeout) if dist_mode == "auto" else None
    tell = log if comm is None or comm.is_root else (lambda m: None)
    if resume and init_from:
        raise InputError("give --resume (continue a run) or --init-from (fine-tune on a new text), not both")
    resume_path = ckpt.resolve(resume) if resume else None
    out, fresh_name = rundir.choose(text, out=options.get("out"), name=name,
                                    resume_dir=resume_path.parent if resume_path else None)
    if overwrite and resume_path and Path(out).resolve() == resume_path.parent.resolve():
        raise InputError("--overwrite starts a new run in place of the old; --resume continues it: not both")
    settings = {k: v for k, v in options.items() if k != "out"}
    new_options(settings)    # bad values fail before anything is read or written (the defaults are sound)
    check_encoding(encoding)
    if comm is not None and comm.local_rank:   # the node's first rank fetches or unpacks into the cache
        comm.barrier(node_only=True)
    source, corpus_name = resolve_text(text, tell)
    if comm is not None and not comm.local_rank:
        comm.barrier(node_only=True)
    check_source(source)
    base_resume = ckpt.load(resume_path) if resume_path else None
    if init_from:
        from charrnn import zoo
        base_init = ckpt.load(zoo.resolve(init_from)[0])
    else:
        base_init = None
    base = base_resume or base_init
    if base_resume:   # the run's own options, except those given again on this command line
        refuse_weights_only(base_resume, resume)
        opts = resume_options(base_resume.train_args, {k: v for k, v in settings.items() if k in given})
    else:
        opts = new_options(settings)
    if base:
        keep_to_checkpoint(base, settings, given, byte_mode, "--resume" if base_resume else "--init-from", tell)
    if comm is not None and text == "-":
        raise InputError("a data-parallel run reads a file, not stdin: every rank opens it")
    claim = None
    if comm is None or comm.is_root:
        claim = rundir.claim(out, fresh_name=fresh_name, overwrite=overwrite,
                             resume_dir=resume_path.parent if resume_path else None, log=tell)
    if comm is not None:        # every rank writes to the directory the root claimed
        chosen = np.array([claim.n if claim else 0], np.int64)
        comm.bcast_(chosen)
        opts.out = str(rundir.numbered(Path(out), int(chosen[0])))
    else:
        opts.out = str(claim.path)
    try:
        # --device is resolved on this machine, even on resume: a run may move between CPU and GPU
        opts.device = pick_device(settings.get("device", opts.device), log, announce=comm is None or comm.is_root)
        if comm is not None:
            if opts.device == "cuda":
                comm.pick_gpu()
            tell(f"data parallel: {comm.size} processes, {opts.batch_size} streams in all")
        run_dir = prepare_out_dir(opts.out)
        data = load_corpus(source, encoding=encoding, byte_mode=byte_mode, vocab=base.vocab if base else None,
                           spill_dir=run_dir)
        if base is None and comm is None and opts.minutes > 0 and not given & SIZED_BY_BUDGET:
            size_to_budget(opts, data, tell)
        from charrnn.memory import check_training
        check_training(base.config if base else opts.model_config(data.vocab.size), opts, new_optimizer_slots(opts),
                       len(data.codes))
        where_from = {"path": os.path.abspath(source) if source != "-" else "-", "encoding": encoding}
        if corpus_name:       # lets `eval --split` find the text again after the cache is cleared
            where_from["corpus"] = corpus_name
        trainer = Trainer(opts, data, run_dir, log=tell, resume=base_resume, init_from=base_init, dist=comm,
                          notify=compile_notices(tell), source=where_from)
    except BaseException:
        if claim is not None:
            claim.abandon()
        raise
    trainer.claim = claim
    if base_resume and "lr" in given:     # a rate given again replaces the run's (decays and halvings)
        trainer.lr = opts.lr
    return trainer


def new_options(settings: dict) -> TrainOptions:
    """The options of a new run from the command line's values, each checked (a bad one is a
    usage error naming its flag)."""
    try:
        return TrainOptions.from_dict(settings)
    except ValueError as e:
        raise InputError(str(e)) from None


def new_optimizer_slots(opts: TrainOptions) -> int:
    """Arrays of optimizer state, each the size of the weights, that the options' rule keeps."""
    from charrnn.optim import STATE_NAMES
    return len(STATE_NAMES[opts.optimizer])


# the model flags that cannot change a checkpoint's weights: its shape, and how fresh weights are drawn
SHAPE_FLAGS = ("hidden", "layers", "cell", "embed", "activation", "init", "forget_bias")


def refuse_weights_only(ck: ckpt.Checkpoint, arg: str) -> None:
    """--resume needs what only a full checkpoint has: the optimizer's state and the random stream."""
    if ck.optimizer is None or ck.rng is None:
        raise InputError(f"--resume {arg}: a weights-only file (no optimizer state or random stream) cannot "
                         f"continue a run exactly; use --init-from {arg} to train on from its weights")


def keep_to_checkpoint(base: ckpt.Checkpoint, settings: dict, given, byte_mode: bool, how: str,
                       log: Callable[[str], None]) -> None:
    """No flag is silently ignored next to a checkpoint: a shape flag that disagrees with it is an
    error, a --dropout given takes effect (said on `log`), and text/byte mode must match."""
    cfg = base.config
    for k in SHAPE_FLAGS:
        if k in given and settings.get(k) != getattr(cfg, k):
            flag = "--" + k.replace("_", "-")
            raise InputError(f"{flag} {settings[k]} disagrees with the checkpoint's {getattr(cfg, k)}: {how} keeps "
                             f"the checkpoint's model; leave {flag} out, or train a new model without {how}")
    if "dropout" in given and settings.get("dropout") != cfg.dropout:
        log(f"--dropout {settings['dropout']:g} replaces the checkpoint's {cfg.dropout:g}")
        base.config = dataclasses.replace(cfg, dropout=settings["dropout"])
    if byte_mode and not base.vocab.byte_mode:
        raise InputError(f"--bytes: the checkpoint of {how} is a text model; leave --bytes out")
    if how == "--init-from" and base.vocab.byte_mode and not byte_mode:
        raise InputError("--init-from: the checkpoint is a byte model (trained with --bytes); give --bytes to "
                         "fine-tune it on raw bytes")


# architecture flags: giving any of them (or --max-epochs, which may end the run before the budget)
# keeps the defaults as they are instead of sizing the model to the budget
SIZED_BY_BUDGET = frozenset({"hidden", "layers", "cell", "embed", "dropout", "max_epochs"})


def size_to_budget(opts: TrainOptions, data: Corpus, log: Callable[[str], None]) -> None:
    """Set the model's hidden and dropout from the speed of this machine and the length of the
    text (charrnn/budget.py): a fresh run with a time budget and no architecture flags."""
    from charrnn import budget
    cfg = opts.model_config(data.vocab.size)
    train_chars = len(split(data.codes, opts.val_frac, opts.test_frac)[0])
    T, B = min(opts.seq_len, max(1, train_chars - 1)), opts.batch_size
    sizing = budget.measure(cfg, opts.device, T, B, opts.minutes * 60.0, train_chars,
                            lambda n: new_optimizer(opts, n))
    opts.model = dataclasses.replace(opts.model, hidden=sizing.hidden, dropout=sizing.dropout)
    log(sizing.describe(opts.minutes))


def summary_line(result: dict, run_dir: Path) -> str:
    """The last line of a finished run, for stderr."""
    best = result["best_val_bpc"]
    saved = any((Path(run_dir) / f"{n}.safetensors").exists() for n in ("best", "last"))
    return (f"done: {result['reason']}; {result['steps']} steps, {result['epochs']:.2f} epochs, "
            f"{result['elapsed_s'] / 60:.1f} min; best validation "
            f"{'n/a' if best is None else f'{best:.4f} bits/char'}; "
            + (f"checkpoints in {run_dir}" if saved else f"no checkpoint was written to {run_dir}"))
