"""The training loop: windows, steps, validation, learning-rate schedule, early stopping,
checkpoints (`best` and `last`), a metrics log, a progress bar on stderr, and clean stops.

Faults it survives: SIGINT/SIGTERM save `last` between steps and exit 130/143; a non-finite
loss, gradient or weight rolls back to an in-memory copy of the last good state with half the
learning rate (at most `max_nan_retries` times); `--resume` repeats an uninterrupted run bit
for bit, because the step, epoch, cursor, rates, validation counters, RNG, optimizer moments
and carried state all travel in the checkpoint.

Averaged weights (--average ema, charrnn/average.py): an exponential moving average of the
weights follows every step; each validation scores the raw weights and the average, and
`best` holds whichever scored better (its metrics' "weights" says which: "raw" or "average").

Data parallel (`dist`, a charrnn.dist.Comm): each rank trains its contiguous share of the B
streams; the gradient, the loss and the stop signals travel in one all-reduced buffer per step,
so every decision is taken on the same numbers everywhere and no rank skips a collective.
Rank 0 writes checkpoints (with the carried state of all streams), metrics and samples.
"""
from __future__ import annotations

import dataclasses
import json
import math
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from charrnn import average as averaging
from charrnn import checkpoint as ckpt
from charrnn import diagnostics
from charrnn.backends import make_backend
from charrnn.batches import Batches
from charrnn.corpus import Corpus, CorpusError, Vocab, codes_digest, describe_chars, split
from charrnn.evaluate import evaluate, summary
from charrnn.model import Params, init_params
from charrnn.optim import Optimizer, Schedule, new_optimizer, parse_clip
from charrnn.options import TrainOptions
from charrnn.progress import Progress
from charrnn.rundir import check_free_space
from charrnn.step import LOG2, train_step


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
    average: np.ndarray | None


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
        codes = self._encode(text, base)
        self._split_and_batch(codes)
        # the order below is the random stream's: the weights are drawn from the seed's generator first
        self.cfg = base.config if base else opts.model_config(self.vocab.size)
        self.rng = np.random.default_rng(opts.seed)
        params = self._initial_weights(base)
        # the average starts from the weights the run starts from (a resume then loads its own)
        self.average = params.flat.copy() if opts.average == "ema" else None
        self.opt = new_optimizer(opts, params.flat.size)
        self.clip = parse_clip(opts.clip)
        self._start_counters()
        if resume:
            self._restore(resume)
        if dist:
            for arr in self.opt.state.values():
                dist.bcast_(arr)
        self._start_backend(params)
        n = self.be.params_host().flat.size
        check_free_space(self.out, 3 * 4 * n * (1 + len(self.opt.state) + (self.average is not None)) + (1 << 20))

    # -- assembly, in the order __init__ takes the steps ------------------------------------
    def _encode(self, text: str | bytes | Corpus, base: ckpt.Checkpoint | None) -> np.ndarray:
        """The text as codes, in the checkpoint's vocabulary when there is one (or a new one);
        sets `vocab` and `digest`."""
        self.documents = None       # several documents: their record (charrnn/documents.py)
        if isinstance(text, Corpus):
            if base and text.vocab != base.vocab:
                raise CorpusError("the text was encoded with a vocabulary other than the checkpoint's")
            self.vocab, self.digest = text.vocab, text.digest
            if text.documents is not None and len(text.documents) > 1:
                self.documents = text.documents
            return text.codes
        self.vocab = base.vocab if base else Vocab.from_text(text)
        missing = self.vocab.unknown(text)
        if missing:
            raise CorpusError(f"the text has {len(missing)} characters outside the checkpoint's vocabulary: "
                              f"{describe_chars(missing)}")
        codes = self.vocab.encode(text)
        self.digest = codes_digest(codes)
        return codes

    def _split_and_batch(self, codes: np.ndarray) -> None:
        """The training, validation and test splits, and the windows of this rank's streams."""
        o, dist = self.o, self.dist
        self.n_codes = len(codes)
        if o.split_by == "document" and self.documents:
            from charrnn.documents import parts
            cut = parts(codes, self.documents)
            self.train_codes, self.val_codes, self.test_codes = cut["train"], cut["val"], cut["test"]
        else:
            self.train_codes, self.val_codes, self.test_codes = split(codes, o.val_frac, o.test_frac)
        if len(self.train_codes) < 2:
            raise CorpusError(f"the text is too short to train on: the training split has {len(self.train_codes)} "
                              f"characters and needs at least 2")
        try:
            self.batches = Batches(self.train_codes, o.batch_size, o.seq_len, warn=self.log,
                                   share=(dist.rank, dist.size) if dist else (0, 1))
        except ValueError as e:
            raise CorpusError(str(e)) from None

    def _initial_weights(self, base: ckpt.Checkpoint | None) -> Params:
        """The checkpoint's weights, or fresh ones from the seed; data parallel, rank 0's everywhere."""
        params = base.params.astype(np.float32) if base else init_params(self.cfg, self.rng)
        if self.dist:
            self.dist.bcast_(params.flat)
        return params

    def _start_counters(self) -> None:
        """The run's counters, schedule and reporting at step 0 (a resume then overwrites them)."""
        o = self.o
        # the counters of the run; its `lr` is the schedule's base, filled in when saved or snapshotted
        self.progress = Progress(digest=self.digest, n_codes=self.n_codes,
                                 world_size=self.dist.size if self.dist else 1)
        self.sched = Schedule.of(o)
        self.lr_now, self.gnorm = self.sched.base, 0.0
        self.state = None
        self._stop_signal = 0           # data parallel: the largest signal any rank caught, reduced
        self._val_every = 0
        self._diag: dict | None = None     # the tensor diagnostics of the last step that took them
        self.live = None
        if o.report:
            from charrnn.live import LiveReport
            self.live = LiveReport(self.out)
        self._probe = diagnostics.probe_codes(self.val_codes if len(self.val_codes) >= 2 else self.train_codes)

    def _start_backend(self, params: Params) -> None:
        """The weights on the device, the carried state (zero unless resumed), and, data parallel,
        the all-reduce buffer and the kernels compiled one rank per node at a time."""
        self.be = make_backend(self.o.device, self.cfg, params, notify=self.notify)
        self._bind_backend()
        if self.state is None:
            self.state = self.be.zero_state(self.batches.local_batch)
        if self.dist:
            self._warm_up_in_turn()

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
        if self.average is not None and ck.average is not None:
            self.average[:] = ck.average
        elif self.average is not None and self.root:
            self.log("the checkpoint holds no averaged weights: the average starts from its weights")
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
    def _checkpoint(self, metrics: dict, state: np.ndarray, params: Params | None = None) -> ckpt.Checkpoint:
        progress = dataclasses.replace(self.progress, lr=self.lr).to_dict()
        return ckpt.Checkpoint(config=self.cfg, vocab=self.vocab, params=params or self.be.params_host(),
                               optimizer=self.opt.to_meta(), optim_state=self.opt.state,
                               state=state, average=self.average, progress=progress,
                               rng=self.rng.bit_generator.state,
                               train_args=self._train_args(),
                               metrics=metrics)

    def _train_args(self) -> dict:
        """The options, the model and where the text came from; several documents add their record."""
        args = dict(self.o.to_dict(), model=self.cfg.to_dict(), source=self.source)
        if self.documents:
            args["documents"] = self.documents
        return args

    def save(self, name: str, metrics: dict | None = None, params: Params | None = None) -> Path:
        """Rank 0 writes; with several ranks this is a collective (the carried state of every
        stream is gathered), and nobody leaves it before the file is in place. `params`: the
        weights to write in place of the raw ones (`best` when the average scored better)."""
        path = self.out / f"{name}.safetensors"
        state = np.asarray(self.state, np.float32)
        if self.dist:
            state = self.dist.gather_streams(state, 2)
        if self.root:
            ckpt.save(path, self._checkpoint(metrics or {}, state, params))
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

    def validate_average(self, progress: Callable[[int], None] | None = None) -> float | None:
        """Bits/char of the averaged weights on the validation split: they take the raw weights'
        place in the backend for the scoring, and the raw weights are put back bit for bit."""
        raw = self.be.params_host().flat.copy()
        self.be.set_params(self.average)
        try:
            return self.validate(progress)
        finally:
            self.be.set_params(raw)

    # -- numerical faults -------------------------------------------------------------
    def _snapshot(self) -> _Snapshot:
        return _Snapshot(dataclasses.replace(self.progress, lr=self.lr),
                         self.be.params_host().flat.copy(), {k: v.copy() for k, v in self.opt.state.items()},
                         self.opt.t, self.rng.bit_generator.state, np.array(self.state, copy=True),
                         None if self.average is None else self.average.copy())

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
        if sn.average is not None:
            self.average[:] = sn.average
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
        seed = int(self.rng.integers(1 << 62)) if self.cfg.draws_masks else 0
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
        if self.average is not None:
            averaging.update_(self.average, self.be.params_host().flat, self.o.average_decay, self.progress.step)
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
        val_bpc = raw_bpc = self.validate(progress=check)
        avg_bpc = self.validate_average(progress=check) if self.average is not None else None
        use_average = avg_bpc is not None and avg_bpc < raw_bpc
        if use_average:         # the run's figure is the better one's: best, plateau and patience go by it
            val_bpc = avg_bpc
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
               "val_bpc": None if raw_bpc is None else round(raw_bpc, 5),
               "lr": self.lr_now, "grad_norm": round(self.gnorm, 5)}
        if avg_bpc is not None:
            rec["val_bpc_average"] = round(avg_bpc, 5)
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
                      f"val {'n/a' if raw_bpc is None else f'{raw_bpc:.4f}'}"
                      + ("" if avg_bpc is None else f", averaged {avg_bpc:.4f}") + " bpc", file=sys.stderr)
        best = (val_bpc is not None and val_bpc < self.progress.best_val) or \
            (val_bpc is None and not (self.out / "best.safetensors").exists())
        if best and val_bpc is not None:
            self.progress.best_val = val_bpc
        self.save("last", rec)
        if best and self.average is None:
            self.save("best", rec)
        elif best:              # the winner's weights and figure, and which they were
            self.save("best", dict(rec, val_bpc=None if val_bpc is None else round(val_bpc, 5),
                                   weights="average" if use_average else "raw"),
                      params=Params(self.cfg, self.average.copy()) if use_average else None)
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
        if v.eod:                 # a model of documents: the sample begins one
            start = np.array([v.eod_code], np.int64)
        else:
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


def _finite_or_none(v: float) -> float | None:
    return v if math.isfinite(v) else None


def summary_line(result: dict, run_dir: Path) -> str:
    """The last line of a finished run, for stderr."""
    best = result["best_val_bpc"]
    saved = any((Path(run_dir) / f"{n}.safetensors").exists() for n in ("best", "last"))
    return (f"done: {result['reason']}; {result['steps']} steps, {result['epochs']:.2f} epochs, "
            f"{result['elapsed_s'] / 60:.1f} min; best validation "
            f"{'n/a' if best is None else f'{best:.4f} bits/char'}; "
            + (f"checkpoints in {run_dir}" if saved else f"no checkpoint was written to {run_dir}"))
