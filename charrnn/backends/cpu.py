"""CPU backend: NumPy's OpenBLAS for the products, Numba @njit kernels for everything else.

The backend contract (backends/__init__.py) on the CPU: `train_step` and `loss` run a window
through the one window driver (cpu_window.py), which composes each cell's chunk forward and
backward (cpu_layers.py) into a task graph and runs it on several lanes (lanes.py) or on the
calling thread; sampling runs every layer of an LSTM step in one compiled call (cpu_kernels.
lstm_step, lstm_generate), and a GRU's or RNN's step as a one-step window. One stream with
16-bit weights (`weights="bf16"|"f16"`, sampling and evaluation only) runs cpu_batch1.py's
kernels on per-core workers (float32 evaluation too where CpuTuning.batch1_min_h asks). This module decides
which path a window takes (`CpuTuning`, measured in bench/RESULTS.md) and compiles each path
before its first use (`_warm_up`). Works in float32 (training) and float64 (tests against
reference.py).

Threads (CHARRNN_THREADS, see charrnn/threads.py): a stacked model with at least as many
layers as threads runs its windows on that many lanes, BLAS on one thread per lane; otherwise
BLAS owns the cores and the kernels run on the calling thread. Either way results are
bit-identical from run to run for a given thread count.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np

from charrnn.backends import cpu_batch1 as B1
from charrnn.backends import cpu_kernels as K
from charrnn.backends import cpu_norm
from charrnn.backends.cpu_window import Dropout, WindowDriver, chunk_bounds
from charrnn.backends.lanes import lanes, run_graph
from charrnn.backends.cpu_kernels import SOFTSIGN, TANH
from charrnn.model import ModelConfig, Params, param_offsets, zero_state
from charrnn.optim import Optimizer, clip_

if TYPE_CHECKING:
    from charrnn.decoding import Decoding

__all__ = ["CpuBackend", "CpuTuning", "TANH", "SOFTSIGN"]


@dataclass(frozen=True)
class CpuTuning:
    """Sizes at which the backend switches between paths that compute the same thing, chosen by
    speed on a 2-core AVX-512 EPYC (measurements in bench/RESULTS.md, "CPU path thresholds").
    A backend holds one; tests pass their own to force a path on small shapes."""
    # the recurrent products run transposed (cpu_kernels.lstm_forward) for narrow batches of wide
    # layers; where the plain product is already efficient the transposes cost more than they save
    transposed_min_h: int = 256
    transposed_max_b: int = 64
    small_step_macs: int = 1_000_000     # per-step recurrent products below this run on one BLAS thread
    lanes: int | None = None             # lanes for stacked models: None chooses (CpuBackend._lane_count)
    lane_chunks: int = 8                 # a window splits into this many chunks of steps for the lanes,
    lane_end_chunk: float = 0.5          # the first and last this much shorter than the others
    # below these sizes the lanes' hand-offs (tens of microseconds a task) cost more than they save
    lanes_min_chunk_macs: int = 2_000_000    # recurrent multiply-adds of one layer over one chunk
    lanes_min_params: int = 500_000          # the optimizer splits its buffer over the lanes from this size
    # one stream of an LSTM (cpu_batch1.py): 16-bit weights always take the batch-1 kernels,
    # float32 evaluation windows from batch1_min_h units (None: never) where the window driver
    # would run them on one lane: two workers, each with its half of Wh in its own L2, measured
    # 1.4-1.8x the driver at 1x256-1x512 on an idle machine, one worker (what Pick falls back
    # to under load) 0.9-1.0x; below 256 units the driver won (the matrix fits one L2), and a
    # stacked model on two lanes already keeps both cores busy (one worker there: 0.5x)
    # (bench/RESULTS.md, "Batch 1 in float32"). From batch1_parts_min_h units on up to
    # batch1_parts workers (None: the BLAS thread count), each owning a block of the units,
    # cpu_batch1.Pick choosing 1 or that many by speed
    batch1_min_h: int | None = 256
    batch1_parts_min_h: int = 128
    batch1_parts: int | None = None
    # step_rows runs the two halves of a batch this large on two lanes (rows are independent,
    # so a row's bits do not change); below it the hand-off costs more than it saves
    rows_split_min: int = 16


class CpuBackend:
    """The backend contract on the CPU (see charrnn/backends/__init__.py)."""

    name = "cpu"

    def __init__(self, cfg: ModelConfig, params: Params, notify: Callable[[str], None] | None = None,
                 tuning: CpuTuning = CpuTuning(), weights: str = "f32"):
        """weights: "bf16" or "f16" rounds every weight to 16 bits once, here, for sampling and
        evaluation (cpu_batch1.py); such a backend refuses to train."""
        self.tuning = tuning
        self.cfg = cfg
        self.weights, self._words = weights, None
        if weights != "f32":
            if cfg.cell != "lstm" or cfg.norm != "none" or params.flat.dtype != np.float32:
                raise ValueError("16-bit weights are for float32 LSTM models without layer normalisation")
            self._words = B1.narrow(params.flat, weights)
            params = Params(cfg, B1.widen(self._words))
        self.p = params
        self.grad = params.like()
        self.dtype = params.flat.dtype
        self.kind = TANH if cfg.activation == "tanh" else SOFTSIGN
        where = param_offsets(cfg)
        self._offs = np.array([[where[f"l{l}.{n}"] for n in ("Wx", "Wh", "b")] for l in range(cfg.layers)],
                              dtype=np.int64)
        self._noffs = None             # the layer-normalised LSTM's gains and cell bias (cpu_norm.ln_step)
        if cfg.norm == "layer":
            self._noffs = np.array([[where[f"l{l}.{n}"] for n in ("ln_g", "lnc_g", "lnc_b")]
                                    for l in range(cfg.layers)], dtype=np.int64)
        self._embed_off = where.get("embed", -1)
        self._out_off = where["out.W"]
        self._driver = WindowDriver(cfg, params, self.kind)
        self._notify = notify
        self._batch1: B1.Batch1 | None = None

    def _batch1_for(self, B: int, T: int = 256) -> B1.Batch1 | None:
        """The batch-1 kernels (cpu_batch1.py) for a window of T steps of one stream of an LSTM,
        else None: always with 16-bit weights; in float32 (or float64) only where CpuTuning.
        batch1_min_h asks and there are two workers or more to share the units."""
        cfg, tu = self.cfg, self.tuning
        if B != 1 or cfg.cell != "lstm" or cfg.norm != "none":
            return None
        parts = tu.batch1_parts if tu.batch1_parts is not None else K.blas_threads()
        parts = max(1, min(parts, cfg.hidden // 16)) if cfg.hidden >= tu.batch1_parts_min_h else 1
        if self._words is None and (tu.batch1_min_h is None or cfg.hidden < tu.batch1_min_h or parts < 2
                                    or self._lanes_for(T, 1) > 1):
            return None
        if self._batch1 is None:
            self._batch1 = B1.Batch1(self.p.flat, self._words, self._offs, self._embed_off, cfg.embed, self._out_off,
                                     cfg.hidden, cfg.layers, cfg.vocab_size, self.kind, parts)
        return self._batch1

    def _step_threads(self, B: int) -> int:
        """BLAS threads for the per-step recurrent products: one for tiny products, where waking
        a second thread costs more than it saves (tuning.small_step_macs; bench/RESULTS.md); on
        a busy machine every one of the window's 2T calls may wait for a descheduled thread."""
        H = self.cfg.hidden
        return 1 if B * H * self.cfg.gates * H < self.tuning.small_step_macs else 1 << 30

    def _transposed(self, B: int) -> bool:
        """Whether the LSTM's recurrent products run transposed (see cpu_kernels.lstm_forward)."""
        tu = self.tuning
        return (self.cfg.cell == "lstm" and self.cfg.norm == "none" and K.SMALL_M < B <= tu.transposed_max_b
                and self.cfg.hidden >= tu.transposed_min_h)

    def _lane_count(self) -> int:
        """Lanes for this model's windows (cpu_window.py): a stacked model with at least as many
        layers as BLAS threads runs its layers side by side, one core each, with BLAS on one
        thread; otherwise one lane, and BLAS threads the products."""
        cfg = self.cfg
        if cfg.layers < 2:
            return 1
        if self.tuning.lanes is not None:
            return self.tuning.lanes
        n = K.blas_threads()
        return n if 2 <= n <= cfg.layers else 1

    def _lanes_for(self, T: int, B: int) -> int:
        """Lanes for a window of T steps and B streams: _lane_count, unless the chunks are too
        small to pay for the hand-offs (lanes_min_chunk_macs). A lane count set in the tuning
        is taken without size checks."""
        H, tu = self.cfg.hidden, self.tuning
        if tu.lanes is None and T / min(T, tu.lane_chunks) * B * H * self.cfg.gates * H < tu.lanes_min_chunk_macs:
            return 1
        return self._lane_count()

    def _lanes_for_update(self) -> int:
        if self.tuning.lanes is None and self.p.flat.size < self.tuning.lanes_min_params:
            return 1
        return self._lane_count()

    # -- windows (cpu_window.py) -------------------------------------------------------------
    def _window(self, x, y, state, drop, train, n_lanes, total=None):
        T, B = x.shape
        tu = self.tuning
        bounds = chunk_bounds(T, tu.lane_chunks, tu.lane_end_chunk) if n_lanes > 1 else [(0, T)]
        return self._driver.run(x, y, state, drop, self.grad if train else None, bounds, n_lanes, self._transposed(B),
                                self._step_threads(B) if n_lanes == 1 else 1, total)

    def loss(self, x: np.ndarray, y: np.ndarray, state: np.ndarray) -> tuple[float, np.ndarray]:
        b1 = self._batch1_for(x.shape[1], x.shape[0])
        if b1 is not None:
            _warm_up(self, "loss1")
            return b1.loss(x, y, np.ascontiguousarray(state, dtype=self.dtype))
        n_lanes = self._lanes_for(*x.shape)
        _warm_up(self, "loss", n_lanes, transposed=self._transposed(x.shape[1]))
        state = np.ascontiguousarray(state, dtype=self.dtype)
        loss, new_state = self._window(x, y, state, None, False, n_lanes)
        return float(loss), new_state

    def train_step(self, x: np.ndarray, y: np.ndarray, state: np.ndarray, dropout_seed: int = 0,
                   streams: tuple[int, int] | None = None, noise: bool = True) -> tuple[float, np.ndarray]:
        cfg = self.cfg
        if self._words is not None:
            raise ValueError("16-bit weights are for sampling and evaluation, not training")
        T, B = x.shape
        total = streams[1] if streams else B
        n_lanes = self._lanes_for(T, B)
        _warm_up(self, "train_step", n_lanes, transposed=self._transposed(B))
        drop = None    # masks hashed where the forward applies them (charrnn/dropout.py), kept for the backward
        if noise and cfg.draws_masks:
            drop = Dropout(dropout_seed, cfg.dropout, self.dtype, cfg.layers, T, B, cfg.hidden,
                           streams[0] if streams else 0, total, cfg.recurrent_dropout, cfg.zoneout_cell,
                           cfg.zoneout_hidden)
        state = np.ascontiguousarray(state, dtype=self.dtype)
        loss, new_state = self._window(x, y, state, drop, True, n_lanes, total)
        return float(loss), new_state

    def warm_up(self, T: int, B: int, opt: Optimizer) -> None:
        """Compile (or load from the cache) now every path a training run of T x B windows with
        optimizer `opt` takes."""
        _warm_up(self, "train_step", self._lanes_for(T, B), transposed=self._transposed(B))
        _warm_up(self, "optimizer_step", self._lanes_for_update(), opt)
        _warm_up(self, "loss1" if self._batch1_for(1) else "loss", self._lanes_for(256, 1))
        _warm_up(self, "generate")

    # -- one step, for sampling ---------------------------------------------------------
    def step(self, codes: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # a few rows (sampling) take step_rows' exact products, so `charrnn sample` and
        # `charrnn serve` write the same text for a seed; more go to BLAS
        return self._step(codes, state, self._plain_lstm and np.size(codes) <= K.SMALL_M, False)

    def step_rows(self, codes: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """step() where each row's result is bit-identical whatever the other rows and their
        number (`charrnn serve` batches unrelated requests; a seeded one must not depend on its
        neighbours). An LSTM computes every product with cpu_kernels.mm_exact_batch (the bits of
        mm_exact, which sampling takes) instead of BLAS, a batch of tuning.rows_split_min rows or
        more in two halves, one lane each; a layer-normalised LSTM takes the same products in
        cpu_norm.ln_step, its cell row by row; a GRU or an RNN steps its rows one at a time."""
        return self._step(codes, state, True, True)

    def _step(self, codes: np.ndarray, state: np.ndarray, fixed: bool,
              batched: bool) -> tuple[np.ndarray, np.ndarray]:
        _warm_up(self, "step")
        codes = np.ascontiguousarray(np.asarray(codes).reshape(-1), dtype=np.int64)
        state = np.ascontiguousarray(state, dtype=self.dtype)
        if self.cfg.norm == "layer":     # exact products and the cell row by row, whatever is asked
            new_state = np.empty_like(state)
            logits = np.empty((codes.size, self.cfg.vocab_size), self.dtype)
            cpu_norm.ln_step(self.p.flat, self._offs, self._noffs, self._embed_off, self.cfg.embed, self._out_off,
                             codes, state, new_state, logits, self.kind, self.cfg.zoneout_cell,
                             self.cfg.zoneout_hidden)
            return logits, new_state
        if not self._plain_lstm:
            if not fixed or codes.size == 1:
                return self._step_recurrent(codes, state)
            rows = [self._step_recurrent(codes[i:i + 1], state[:, :, i:i + 1]) for i in range(codes.size)]
            return np.concatenate([r[0] for r in rows]), np.concatenate([r[1] for r in rows], axis=2)
        new_state = np.empty_like(state)
        logits = np.empty((codes.size, self.cfg.vocab_size), self.dtype)
        cells = K.lstm_cells_at(self.dtype)
        n = min(2, K.blas_threads()) if fixed and codes.size >= self.tuning.rows_split_min else 1
        if n == 1:
            K.lstm_step(self.p.flat, self._offs, self._embed_off, self.cfg.embed, self._out_off,
                        codes, state, new_state, logits, self.kind, cells, fixed, batched)
            return logits, new_state
        # the rows in n parts, one lane each: each part's state and new state contiguous
        edges = [codes.size * i // n for i in range(n + 1)]
        parts = [(np.ascontiguousarray(state[:, :, lo:hi]), np.empty_like(state[:, :, lo:hi]))
                 for lo, hi in zip(edges, edges[1:])]

        def part(lane: int) -> None:
            lo, hi = edges[lane], edges[lane + 1]
            K.lstm_step(self.p.flat, self._offs, self._embed_off, self.cfg.embed, self._out_off,
                        codes[lo:hi], parts[lane][0], parts[lane][1], logits[lo:hi], self.kind, cells, fixed,
                        batched)
        lanes(n).run(part)
        for (lo, hi), (_, new) in zip(zip(edges, edges[1:]), parts):
            new_state[:, :, lo:hi] = new
        return logits, new_state

    @property
    def _plain_lstm(self) -> bool:
        """An LSTM without layer normalisation: the cell with cpu_kernels' step and sampling kernels
        (the layer-normalised one has cpu_norm's)."""
        return self.cfg.cell == "lstm" and self.cfg.norm == "none"

    def _step_recurrent(self, codes: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """GRU and RNN: one step of every layer through the window kernels, without the window
        driver's task graph and thread settings, whose fixed cost dominates a batch-1 step."""
        cfg, p, dt = self.cfg, self.p, self.dtype
        B, H = codes.size, cfg.hidden
        new_state = np.empty_like(state)
        inp = p["embed"][codes] if cfg.embed else None
        for l in range(cfg.layers):
            Wx = p[f"l{l}.Wx"]
            pre = (Wx[codes] if inp is None else inp @ Wx).reshape(1, B, -1)
            hs = np.empty((2, B, H), dt)
            hs[0] = state[l, 0]
            if cfg.cell == "gru":
                K.gru_forward(pre, p[f"l{l}.b"], p[f"l{l}.bh"], p[f"l{l}.Wh"], hs, np.empty((1, B, H), dt), self.kind)
            else:
                K.rnn_forward(pre, p[f"l{l}.b"], p[f"l{l}.Wh"], hs, self.kind)
            new_state[l, 0] = inp = hs[1]
        logits = inp @ p["out.W"]
        logits += p["out.b"]
        return logits, new_state

    def generate(self, prime_codes: np.ndarray, dec: Decoding, state: np.ndarray | None = None,
                 chunk: int = 256) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """sample.stream's loop (temperature and top-k) in compiled chunks: yields (codes (batch,),
        log-probabilities) per step. Row i draws its uniforms from PCG64 seeded seed + i, as
        sample.stream does. `state` is the state after prime_codes[:-1] (zeros when None and the
        prime is one code; otherwise the prime is fed here). Chunks start short, so the first
        characters of a slow model show at once, and grow to `chunk`."""
        if not dec.own_loop_ok:
            raise ValueError("top-p and stop strings are drawn by sample.step_loop")
        length, batch = dec.length, dec.batch
        if batch == 1 and self._words is not None:
            _warm_up(self, "generate1")
        else:
            _warm_up(self, "generate", many_rows=batch > K.SMALL_M)
        rngs = [np.random.default_rng(dec.seed + i) for i in range(batch)]
        prime = np.asarray(prime_codes, dtype=np.int64).reshape(-1)
        if state is None:
            state = self.zero_state(batch)
            for c in prime[:-1]:
                _, state = self.step(np.full(batch, c, np.int64), state)
        state = np.array(state, dtype=self.dtype, order="C")       # a copy: the loop writes it
        codes = np.full(batch, prime[-1], np.int64)
        logits = np.empty((batch, self.cfg.vocab_size), self.dtype)
        temp, top_k = float(dec.temperature), int(dec.top_k)
        n, size = 0, 8
        while length == 0 or n < length:
            steps = size if length == 0 else min(size, length - n)
            u = np.empty((steps, batch))
            for i, r in enumerate(rngs):
                u[:, i] = r.random(steps)
            out_codes = np.empty((steps, batch), np.int64)
            out_logp = np.empty((steps, batch))
            if batch == 1 and self._words is not None:     # 16-bit weights: cpu_batch1's workers
                self._batch1_for(1).generate(codes, state, u, temp, top_k, out_codes, out_logp)
            elif self.cfg.norm == "layer":
                cpu_norm.ln_generate(self.p.flat, self._offs, self._noffs, self._embed_off, self.cfg.embed,
                                     self._out_off, codes, state, logits, self.kind, self.cfg.zoneout_cell,
                                     self.cfg.zoneout_hidden, u, temp, top_k, out_codes, out_logp)
            elif self._plain_lstm:
                gen = K.lstm_generate if batch <= K.SMALL_M else K.lstm_generate_many
                args = (self.p.flat, self._offs, self._embed_off, self.cfg.embed, self._out_off, codes,
                        state, logits, self.kind, u, temp, top_k, out_codes, out_logp)
                K.call_with_cells(gen, self.dtype, *args, draw=True)
            else:
                for s in range(steps):
                    lg, state = self.step(codes, state)
                    K.draw_rows(lg, u[s], temp, top_k, out_codes[s], out_logp[s])
                    codes = out_codes[s].copy()
            yield from zip(out_codes, out_logp)
            n += steps
            size = min(2 * size, chunk)

    # -- update ----------------------------------------------------------------------------
    def optimizer_step(self, opt: Optimizer, lr: float, clip: tuple[str, float]) -> float:
        n, run = self._lanes_for_update(), None
        _warm_up(self, "optimizer_step", n, opt)
        if n > 1:                   # the lanes split the buffer; the result is the same either way
            pool = lanes(n)
            run = lambda jobs: run_graph(pool, [(job, [], (0,)) for job in jobs])   # noqa: E731
        norm = clip_(self.grad.flat, clip[0], clip[1], run, n)
        opt.step(self.p.flat, self.grad.flat, lr, run, n)
        return norm

    def params_host(self) -> Params:
        return self.p

    def grad_host(self) -> Params:
        return self.grad

    def set_params(self, flat: np.ndarray) -> None:
        np.copyto(self.p.flat, flat)        # in place: the window driver holds these views

    def zero_state(self, batch: int) -> np.ndarray:
        return zero_state(self.cfg, batch, self.dtype)

    # -- data parallel -----------------------------------------------------------------------
    def reduce_buffer(self, extra: int) -> np.ndarray:
        """The gradient is computed straight into the buffer's head from now on: nothing is copied."""
        n = self.p.flat.size
        self._reduce_buf = np.zeros(n + extra, self.dtype)
        self.grad = Params(self.cfg, self._reduce_buf[:n])
        return self._reduce_buf

    def reduce_gradient(self, reduce: Callable[[np.ndarray], None]) -> None:
        reduce(self._reduce_buf)


_warmed: set = set()
_told: list = []      # a compile notice was given in this process: the first path's is the one line

# What each path compiles on an empty cache, for the notice, and about how long it takes: CPU
# seconds measured on a 2-core AMD EPYC (bench/RESULTS.md, "Cold start"), rounded up; a training
# step's includes the update that follows it, and it and sampling's are the wall seconds to the
# first output on two cores, where a second process compiles part (compile_cells_aside). A
# loaded machine takes longer: "about".
_PATHS = {"generate": ("sampling", 5), "step": ("sampling", 5), "loss": ("scoring", 4),
          "generate1": ("sampling", 5), "loss1": ("scoring", 5),
          "train_step": ("training", 7), "optimizer_step": ("the update", 1)}


def _aside_first(path: str, transposed: bool) -> str:
    """What the second process compiles before the cell (cpu_kernels.compile_cells_aside's
    `first`), so that both cores stay busy up to the first training step: with the forward run
    through a stand-in cell (cpu_kernels._stand_in_at), this process compiles the step's kernels
    one after another, 7-8 s of CPU on a cold cache, while the cell takes the other core for 3-4
    s. The LSTM backward (1.5-2 s), with the argument types the window driver gives it (all
    C-contiguous), is compiled there first, before this process comes to it after the forward
    and the softmax, and is loaded from the cache here; the softmax is reached too early to go
    there. Tiny consistent shapes (T = B = H = 1), no carry: nothing is read out of bounds."""
    if path != "train_step":
        return ""
    kernel, W = ("lstm_backward_t", "(1, 4)") if transposed else ("lstm_backward", "(4, 1)")
    return ("z = lambda *s: np.zeros(s, dt)\n"
            f"K.{kernel}(z(1, 1, 1), np.zeros({W}, dt), z(1, 1, 1), z(1, 1, 4), z(1, 1, 1), 0, z(1, 1, 4), "
            "z(1, 1), z(1, 1), False)")


def _warm_up(be: CpuBackend, path: str, n_lanes: int = 1, opt: Optimizer | None = None,
             transposed: bool = False, many_rows: bool = False) -> None:
    """Before a path's first real call in this process, run it once on a tiny model so its
    kernels compile (or load from the on-disk cache) up front, and say so on stderr, in one
    line with the time it expects, if that takes long instead of looking hung (once per
    process: a command's later paths, e.g. a training run's update, compile without a line). Per path, dtype,
    cell, product orientation and (for an update) optimizer and penalties, so a command compiles
    only what it uses: on a cold cache every kernel left out is seconds saved. n_lanes and
    transposed: the lanes and the LSTM product the real call will use (the tiny model takes
    the same path); many_rows: sampling more than SMALL_M rows, which has a kernel of its own."""
    rule = (opt.name, bool(opt.weight_decay or opt.l1)) if opt is not None else None
    key = (path, be.dtype.str, be.cfg.cell, be.cfg.norm, be.cfg.embed > 0, be.cfg.recurrent_dropout > 0, n_lanes > 1,
           transposed, many_rows, rule, be.weights)
    if key in _warmed:
        return
    _warmed.add(key)                   # first, so the tiny model's own calls do not recurse
    notify = be._notify
    done = threading.Event()
    what, expect = _PATHS[path]

    def tell():
        if not done.wait(0.7) and notify and not _told:
            _told.append(path)
            notify(f"compiling kernels for {what}, first run only (about {expect} s; cached for next time)...")

    watcher = threading.Thread(target=tell, daemon=True)
    watcher.start()
    if be._plain_lstm:
        from charrnn import dist
        if dist.current() is None:     # not beside MPI ranks: one more process per rank is no gain
            K.compile_cells_aside(be.dtype, draw=path == "generate", first=_aside_first(path, transposed))
    from charrnn.model import ModelConfig as MC, init_params
    b1 = path in ("loss1", "generate1")    # cpu_batch1's kernels in the weights' format, on workers of 16 units
    tiny = MC(vocab_size=3, hidden=32 if b1 else 2, layers=min(be.cfg.layers, 4), cell=be.cfg.cell,
              embed=2 if be.cfg.embed else 0, dropout=0.5 if be.cfg.dropout else 0.0, norm=be.cfg.norm,
              recurrent_dropout=0.5 if be.cfg.recurrent_dropout else 0.0)
    tuning = replace(be.tuning, lanes=n_lanes)
    B = K.SMALL_M + 1 if many_rows else 1
    if transposed:                     # the tiny model's batch and width must take that product too
        B = K.SMALL_M + 1
        tuning = replace(tuning, transposed_min_h=0, transposed_max_b=max(B, tuning.transposed_max_b))
    if b1:
        tuning = replace(tuning, batch1_min_h=0, batch1_parts_min_h=0)
    tb = CpuBackend(tiny, init_params(tiny, np.random.default_rng(0), be.dtype), tuning=tuning, weights=be.weights)
    tb._driver.stand_in = True         # its windows need not wait for a cell compiling aside (cpu_kernels._stand_in_at)
    x = np.zeros((2, B), np.int64)
    if path == "train_step":
        tb.train_step(x, x, tb.zero_state(B))
    elif path in ("loss", "loss1"):
        tb.loss(x, x, tb.zero_state(B))
    elif path == "step":
        tb.step(x[0], tb.zero_state(B))
    elif path in ("generate", "generate1"):
        from charrnn.decoding import Decoding
        for _ in tb.generate(x[:1, 0], Decoding(length=2, top_k=1, batch=B)):   # one prime code: no step() before
            pass
    else:
        tb.grad.flat[:] = 1.0          # a norm above the clip, so clipping's rescaling compiles too
        tb.optimizer_step(Optimizer(opt.name, tb.p.flat.size, be.dtype, weight_decay=1e-9 if rule[1] else 0.0),
                          0.0, ("norm", 1.0))
    done.set()
