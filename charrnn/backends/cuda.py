"""CUDA backend: the backend contract in numba.cuda kernels. They live by concern beside it:
cuda_device.py (launch shapes, nonlinearities, block reductions), cuda_cells.py (each cell's
step, forward and backward, written once), cuda_gemm.py, cuda_gates.py (per-step and elementwise
kernels), cuda_recurrence.py (the persistent time loop), cuda_softmax.py, cuda_optim.py
(optim.RULES' kernels, clipping) and cuda_sampling.py.

Parameters, gradients, optimizer moments, carried state and the current window live on the
device. Per training step the window's codes go up and the loss scalar (and the gradient norm)
come back; nothing else crosses. The flow per layer and window follows the CPU backend: the
input products of all T steps are one GEMM (a row gather for one-hot input); then the time loop,
and after the backward time loop the weight gradients are one GEMM each over the whole window.
The time loop is one persistent cooperative launch per layer and direction (recurrent product
fused with the gates, steps separated by a grid barrier); where cooperative launches are not
available it falls back to a recurrent GEMM and a fused gate kernel per step.

Sampling has its own fused path: `generate` runs whole steps (every layer's matrix-vector
products and gates, then scoring, temperature, top-k and the draw) in one cooperative launch
per chunk of characters, and only the codes come home (sample.stream uses it unless top-p or a
stop string is asked for); `step` (the generic contract) returns logits each step.

Checkpoints stay device-neutral: `params_host()` returns host float32 (and brings the optimizer
moments home into the Optimizer's own arrays), so a GPU run's weights load on the CPU bit for bit.
"""
from __future__ import annotations

import math
import threading
import time
import warnings
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
from numba import cuda
from numba.core import config as _numba_config

from charrnn.backends import cuda_device as D
from charrnn.backends import cuda_gates as gates_k
from charrnn.backends import cuda_optim as optim_k
from charrnn.backends import cuda_sampling as sampling_k
from charrnn.backends import cuda_softmax as softmax_k
from charrnn.backends.cuda_gemm import make_gemm
from charrnn.backends.cuda_recurrence import make_recurrence
from charrnn.model import ModelConfig, Params, param_offsets, param_views, zero_state
from charrnn.optim import OPTIMIZERS, RULES, Optimizer

if TYPE_CHECKING:
    from charrnn.decoding import Decoding

CELL_CODE = {"lstm": D.LSTM, "gru": D.GRU, "rnn": D.RNN}

# tile shapes (TM, TN, TK, RM, RN): large products, small products (a recurrent step), and
# the simulator's (16 threads a block, so the Python-threaded simulator stays quick)
TILES = {"large": (64, 64, 16, 4, 4), "small": (32, 32, 32, 2, 2), "sim": (8, 8, 4, 2, 2)}
# the persistent recurrence's tile (TB rows, TJ units, TK deep) on a GPU and in the simulator
REC_TILES = {"gpu": (16, 16, 64), "sim": (2, 2, 2)}
_kernels: dict = {}


def _gemm_kernel(name: str):
    if name not in _kernels:
        _kernels[name] = make_gemm(*TILES[name])
    return _kernels[name]


def _rec_kernels():
    key = "rec-sim" if _simulating() else "rec-gpu"
    if key not in _kernels:
        _kernels[key] = (make_recurrence(*REC_TILES[key[4:]]), REC_TILES[key[4:]])
    return _kernels[key]


# whether cooperative launches work here (numba needs the device runtime library to link
# grid syncs); None until tried, then the per-step kernels stand in when they do not
_persistent_ok: list = [None]


class DeviceState:
    """Carried state (L, S, B, H) kept on the device; np.asarray() copies it home."""

    def __init__(self, dev):
        self.dev = dev

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.dev.shape)

    def __array__(self, dtype=None, copy=None):
        a = self.dev.copy_to_host()
        return a if dtype is None else a.astype(dtype)


class CudaBackend:
    """The backend contract on an NVIDIA GPU (see charrnn/backends/__init__.py)."""

    name = "cuda"

    def __init__(self, cfg: ModelConfig, params: Params, notify: Callable[[str], None] | None = None,
                 tiles: tuple[str, str] | None = None, persistent: bool = True):
        """tiles: GEMM tile names for (large, small) products; persistent: run each layer's time
        loop as one cooperative launch where this machine allows it, else a launch per step."""
        if cfg.norm != "none":
            raise ValueError("layer normalisation runs on the CPU backend only for now")
        prepare_numba()
        self.cfg = cfg
        self.notify = notify
        self.kind = D.TANH if cfg.activation == "tanh" else D.SOFTSIGN
        self.cell = CELL_CODE[cfg.cell]
        self.w = cuda.to_device(np.ascontiguousarray(params.flat, dtype=np.float32))
        self.g = cuda.device_array(self.w.shape[0], np.float32)
        self.P = param_views(cfg, self.w)
        self.G = param_views(cfg, self.g)
        self.tiles = tiles or (("sim", "sim") if _simulating() else ("large", "small"))
        self._dummy = cuda.to_device(np.zeros(1, np.float32))
        self._dummy2 = cuda.to_device(np.zeros((1, 1), np.float32))
        self._zeros_d = cuda.to_device(np.zeros(max(cfg.embed, 1), np.float32))
        self._scalar = cuda.device_array(1, np.float64)
        self._part = cuda.device_array(D.NORM_BLOCKS, np.float64)
        self._ws = {}
        self._opt = None
        self._opt_dev: dict = {}
        self._sampler = None
        self._streams: tuple[int, int] | None = None   # a data-parallel share, set by train_step
        self._step_bufs = None
        self.persistent = persistent and _persistent_ok[0] is not False
        self._dummy3 = cuda.to_device(np.zeros((1, 1, 1), np.float32))
        self._warm = False

    def _ready(self) -> None:
        """Before this backend's first computation: compile (or load from the cache) every kernel
        its model takes, and learn whether the persistent kernels run on this machine."""
        if not self._warm:
            self._warm = True
            _warm_up(self, self.notify)
            self.persistent = self.persistent and _persistent_ok[0] is not False

    # -- launch helpers -----------------------------------------------------------------
    def _mm(self, A, B, C, ta=0, tb=0, beta=0.0, bias=None):
        """C = beta*C + op(A) @ op(B) (+ bias), picking the tile shape by how many blocks it makes."""
        M, N = C.shape
        kern, (TM, TN), threads = _gemm_kernel(self.tiles[0])
        if ((M + TM - 1) // TM) * ((N + TN - 1) // TN) < 128:
            kern, (TM, TN), threads = _gemm_kernel(self.tiles[1])
        grid = ((N + TN - 1) // TN, (M + TM - 1) // TM)
        kern[grid, threads](A, B, C, ta, tb, np.float32(beta),
                            self._dummy if bias is None else bias, 0 if bias is None else 1)

    def _rec_launch(self, B: int) -> tuple:
        """(grid, block) of the persistent recurrence: one block per tile, at most one per
        multiprocessor (always co-resident, as a cooperative launch needs); one in the simulator."""
        _, (TB, TJ, _) = _rec_kernels()
        tiles = ((B + TB - 1) // TB) * ((self.cfg.hidden + TJ - 1) // TJ)
        if _simulating():
            return 1, (TJ, TB)
        return min(tiles, cuda.get_current_device().MULTIPROCESSOR_COUNT), (TJ, TB)

    def _loop_grid(self, B: int) -> int:
        """Blocks of the sampling loop: as many as there is work, at most one per multiprocessor."""
        if _simulating():
            return 1
        return min(self.cfg.hidden * B, cuda.get_current_device().MULTIPROCESSOR_COUNT)

    @staticmethod
    def _pointwise(kern, n, *args):
        kern[D.blocks(n), D.THREADS](*args)

    # -- workspace per window shape --------------------------------------------------------
    def _workspace(self, T: int, B: int) -> dict:
        key = (T, B)
        if key in self._ws:
            return self._ws[key]
        cfg = self.cfg
        H, GH, V = cfg.hidden, cfg.gates * cfg.hidden, cfg.vocab_size
        f32 = np.float32
        dev = cuda.device_array
        ws = {"codes": dev(T * B, np.int64), "y": dev(T * B, np.int64),
              "logits": dev((T * B, V), f32), "losses": dev(T * B, np.float64),
              "hw": dev((B, GH), f32), "dh_next": dev((B, H), f32), "dc_next": dev((B, H), f32),
              "dxw": dev((T, B, GH), f32), "dhw": dev((T, B, GH), f32) if cfg.cell == "gru" else None,
              "emb": dev((T * B, cfg.embed), f32) if cfg.embed else None,
              "layers": []}
        # two ping-pong buffers for the gradient on a layer's input, (T*B, H) or (T*B, embed)
        width = max(H, cfg.embed)
        bufs = [dev(T * B * width, f32), dev(T * B * width, f32)]
        ws["d_h"] = [b[:T * B * H].reshape(T * B, H) for b in bufs]
        ws["d_h_t"] = [[d.reshape(T, B, H)[t] for t in range(T)] for d in ws["d_h"]]
        ws["d_e"] = [b[:T * B * cfg.embed].reshape(T * B, cfg.embed) for b in bufs] if cfg.embed else None
        for _ in range(cfg.layers):
            lay = {"xw": dev((T * B, GH), f32), "hs": dev((T + 1, B, H), f32),
                   "out": dev((T * B, H), f32) if cfg.dropout > 0 else None}
            if cfg.cell == "lstm":
                lay.update(gates=dev((T, B, GH), f32), cs=dev((T + 1, B, H), f32), tcs=dev((T, B, H), f32))
            elif cfg.cell == "gru":
                lay.update(gates=dev((T, B, GH), f32), hn=dev((T, B, H), f32))
            # per-step views, made once: slicing device arrays costs Python time every call
            lay["hs_t"] = [lay["hs"][t] for t in range(T + 1)]
            lay["xw_t"] = [lay["xw"][t * B:(t + 1) * B] for t in range(T)]
            for name in ("gates", "cs", "tcs", "hn"):
                if name in lay:
                    lay[name + "_t"] = [lay[name][t] for t in range(lay[name].shape[0])]
            lay["hs_flat"] = lay["hs"].reshape((T + 1) * B * H)
            lay["hs_in"] = lay["hs"][:T].reshape(T * B, H)     # h_{t-1} for every step, for dWh
            lay["hs_top"] = lay["hs"][1:].reshape(T * B, H)    # the layer's outputs
            ws["layers"].append(lay)
        ws["dxw_t"] = [ws["dxw"][t] for t in range(T)]
        ws["dhw_t"] = [ws["dhw"][t] for t in range(T)] if ws["dhw"] is not None else ws["dxw_t"]
        self._ws = {key: ws}          # one shape at a time: training and validation alternate rarely
        return ws

    def _upload_codes(self, dst, x) -> None:
        dst.copy_to_device(np.ascontiguousarray(np.asarray(x).reshape(-1), dtype=np.int64))

    def _state_dev(self, state):
        if isinstance(state, DeviceState):
            return state.dev
        return cuda.to_device(np.ascontiguousarray(np.asarray(state), dtype=np.float32))

    # -- forward over a window -------------------------------------------------------------
    def _forward(self, ws, T, B, state, seed, train):
        """Fills the workspace; returns (top output (T*B, H), new state device array)."""
        cfg, P = self.cfg, self.P
        H = cfg.hidden
        n_bh = B * H
        new_state = cuda.device_array(state.shape, np.float32)
        codes = ws["codes"]
        inp = None
        if cfg.embed:
            inp = ws["emb"]
            self._pointwise(gates_k.gather_rows, T * B * cfg.embed, P["embed"], self._zeros_d, codes, inp)
        for l in range(cfg.layers):
            lay = ws["layers"][l]
            Wx, Wh, b = P[f"l{l}.Wx"], P[f"l{l}.Wh"], P[f"l{l}.b"]
            if inp is None:
                self._pointwise(gates_k.gather_rows, T * B * Wx.shape[1], Wx, b, codes, lay["xw"])
            else:
                self._mm(inp, Wx, lay["xw"], bias=b)
            hs_t, xw_t, hw = lay["hs_t"], lay["xw_t"], ws["hw"]
            self._pointwise(gates_k.copy, n_bh, hs_t[0].reshape(n_bh), state[l, 0].reshape(n_bh))
            if cfg.cell == "lstm":
                self._pointwise(gates_k.copy, n_bh, lay["cs_t"][0].reshape(n_bh), state[l, 1].reshape(n_bh))
            if self.persistent:
                d3 = self._dummy3
                (fwd, _), _ = _rec_kernels()
                fwd[self._rec_launch(B)](self.cell, self.kind, T, lay["xw"], Wh,
                                         P[f"l{l}.bh"] if cfg.cell == "gru" else self._dummy, lay["hs"],
                                         lay.get("gates", d3), lay.get("cs", d3), lay.get("tcs", d3),
                                         lay.get("hn", d3))
                if cfg.cell == "lstm":
                    self._pointwise(gates_k.copy, n_bh, new_state[l, 1].reshape(n_bh), lay["cs_t"][T].reshape(n_bh))
            elif cfg.cell == "lstm":
                cs_t, g_t, tc_t = lay["cs_t"], lay["gates_t"], lay["tcs_t"]
                for t in range(T):
                    self._mm(hs_t[t], Wh, hw)
                    self._pointwise(gates_k.lstm_fwd, n_bh, xw_t[t], hw, cs_t[t], self.kind,
                                    g_t[t], cs_t[t + 1], tc_t[t], hs_t[t + 1])
                self._pointwise(gates_k.copy, n_bh, new_state[l, 1].reshape(n_bh), cs_t[T].reshape(n_bh))
            elif cfg.cell == "gru":
                g_t, hn_t, bh = lay["gates_t"], lay["hn_t"], P[f"l{l}.bh"]
                for t in range(T):
                    self._mm(hs_t[t], Wh, hw)
                    self._pointwise(gates_k.gru_fwd, n_bh, xw_t[t], hw, bh, hs_t[t], self.kind,
                                    g_t[t], hn_t[t], hs_t[t + 1])
            else:
                for t in range(T):
                    self._mm(hs_t[t], Wh, hw)
                    self._pointwise(gates_k.rnn_fwd, n_bh, xw_t[t], hw, self.kind, hs_t[t + 1])
            self._pointwise(gates_k.copy, n_bh, new_state[l, 0].reshape(n_bh), hs_t[T].reshape(n_bh))
            inp = lay["hs_top"]
            if train and cfg.dropout > 0:
                self._dropout(inp, lay["out"], seed, l, T, B)
                inp = lay["out"]
        logits = ws["logits"]
        self._mm(inp, P["out.W"], logits, bias=P["out.b"])
        return inp, new_state

    def _dropout(self, src, dst, seed, layer, T, B):
        H, p = self.cfg.hidden, self.cfg.dropout
        n = T * B * H
        lo, total = self._streams or (0, B)
        self._pointwise(gates_k.dropout, n, src.reshape(n), dst.reshape(n), np.uint64(seed),
                        np.uint64(layer * T * total * H), float(p), np.float32(1.0 / (1.0 - p)),
                        np.uint64(B * H), np.uint64(total * H), np.uint64(lo * H))

    def _loss_sum(self, ws, n, scale, want_grad) -> float:
        softmax_k.softmax_xent[n, D.RED](ws["logits"], ws["y"], float(scale), int(want_grad), ws["losses"])
        softmax_k.sum_into[1, D.RED](ws["losses"], self._scalar)
        return float(self._scalar.copy_to_host()[0])

    def loss(self, x: np.ndarray, y: np.ndarray, state) -> tuple[float, DeviceState]:
        self._ready()
        T, B = np.shape(x)
        ws = self._workspace(T, B)
        self._upload_codes(ws["codes"], x)
        self._upload_codes(ws["y"], y)
        _, new_state = self._forward(ws, T, B, self._state_dev(state), 0, train=False)
        return self._loss_sum(ws, T * B, 1.0, False), DeviceState(new_state)

    def train_step(self, x: np.ndarray, y: np.ndarray, state, dropout_seed: int = 0,
                   streams: tuple[int, int] | None = None, noise: bool = True) -> tuple[float, DeviceState]:
        """`streams` = (offset, total): x holds streams offset.. of a global batch of `total`
        (a data-parallel rank's share): dropout masks by global stream, gradients over T*total.
        noise=False asks for a model built without dropout (ModelConfig.scoring()): the kernels'
        buffers follow the configuration's rate."""
        self._ready()
        cfg, P, G = self.cfg, self.P, self.G
        if not noise and cfg.dropout > 0:
            raise ValueError("train_step(noise=False) needs a backend built from ModelConfig.scoring()")
        T, B = np.shape(x)
        self._streams = streams
        H = cfg.hidden
        n_bh = B * H
        ws = self._workspace(T, B)
        self._upload_codes(ws["codes"], x)
        self._upload_codes(ws["y"], y)
        top, new_state = self._forward(ws, T, B, self._state_dev(state), dropout_seed, train=True)
        loss = self._loss_sum(ws, T * B, 1.0 / (T * (streams[1] if streams else B)), True)
        dlogits = ws["logits"]
        self._pointwise(gates_k.fill, self.g.shape[0], self.g, np.float32(0))
        self._mm(top, dlogits, G["out.W"], ta=1)
        self._colsum(G["out.b"], dlogits)
        cur = 0
        dinp = ws["d_h"][cur]
        self._mm(dlogits, P["out.W"], dinp, tb=1)
        codes = ws["codes"]
        for l in reversed(range(cfg.layers)):
            lay = ws["layers"][l]
            Wx, Wh = P[f"l{l}.Wx"], P[f"l{l}.Wh"]
            if cfg.dropout > 0:
                self._dropout(dinp, dinp, dropout_seed, l, T, B)
            dh_t = ws["d_h_t"][cur]
            dh_next, dc_next = ws["dh_next"], ws["dc_next"]
            self._pointwise(gates_k.fill, n_bh, dh_next.reshape(n_bh), np.float32(0))
            dxw_t, dhw_t, hs_t = ws["dxw_t"], ws["dhw_t"], lay["hs_t"]
            if self.persistent:
                d3 = self._dummy3
                (_, bwd), _ = _rec_kernels()
                bwd[self._rec_launch(B)](self.cell, self.kind, dinp.reshape(T, B, H), Wh, lay["hs"],
                                         lay.get("gates", d3), lay.get("cs", d3), lay.get("tcs", d3),
                                         lay.get("hn", d3), ws["dxw"], ws["dxw"] if ws["dhw"] is None else ws["dhw"],
                                         dc_next, dh_next)
                if cfg.cell == "gru":
                    self._colsum(G[f"l{l}.bh"], ws["dhw"].reshape(T * B, 3 * H)[:, 2 * H:])
            elif cfg.cell == "lstm":
                self._pointwise(gates_k.fill, n_bh, dc_next.reshape(n_bh), np.float32(0))
                g_t, cs_t, tc_t = lay["gates_t"], lay["cs_t"], lay["tcs_t"]
                for t in range(T - 1, -1, -1):
                    self._pointwise(gates_k.lstm_bwd, n_bh, dh_t[t], dh_next, dc_next, g_t[t], cs_t[t], tc_t[t],
                                    self.kind, dxw_t[t])
                    self._mm(dxw_t[t], Wh, dh_next, tb=1)
            elif cfg.cell == "gru":
                g_t, hn_t = lay["gates_t"], lay["hn_t"]
                for t in range(T - 1, -1, -1):
                    self._pointwise(gates_k.gru_bwd, n_bh, dh_t[t], dh_next, g_t[t], hn_t[t], hs_t[t], self.kind,
                                    dxw_t[t], dhw_t[t])
                    self._mm(dhw_t[t], Wh, dh_next, tb=1, beta=1.0)
                self._colsum(G[f"l{l}.bh"], ws["dhw"].reshape(T * B, 3 * H)[:, 2 * H:])
            else:
                for t in range(T - 1, -1, -1):
                    self._pointwise(gates_k.rnn_bwd, n_bh, dh_t[t], dh_next, hs_t[t + 1], self.kind, dxw_t[t])
                    self._mm(dxw_t[t], Wh, dh_next, tb=1)
            GH = Wx.shape[1]
            dxw2 = ws["dxw"].reshape(T * B, GH)
            dhw2 = dxw2 if ws["dhw"] is None else ws["dhw"].reshape(T * B, GH)
            self._mm(lay["hs_in"], dhw2, G[f"l{l}.Wh"], ta=1)
            self._colsum(G[f"l{l}.b"], dxw2)
            if l == 0 and not cfg.embed:
                self._pointwise(gates_k.scatter_add_rows, T * B * GH, G[f"l{l}.Wx"], codes, dxw2)
            else:
                inp = ws["emb"] if l == 0 else self._layer_input(ws, l - 1)
                self._mm(inp, dxw2, G[f"l{l}.Wx"], ta=1)
                cur = 1 - cur
                dinp = ws["d_h"][cur] if l > 0 else ws["d_e"][cur]
                self._mm(dxw2, Wx, dinp, tb=1)
        if cfg.embed:
            self._pointwise(gates_k.scatter_add_rows, T * B * cfg.embed, G["embed"], codes, dinp)
        return loss, DeviceState(new_state)

    def _layer_input(self, ws, l):
        lay = ws["layers"][l]
        return lay["out"] if self.cfg.dropout > 0 else lay["hs_top"]

    def _colsum(self, g, d):
        gates_k.colsum_add[(d.shape[1] + 31) // 32, (32, D.CS_ROWS)](g, d)

    # -- update ------------------------------------------------------------------------------
    def _sumsq(self, g) -> None:
        optim_k.sumsq_partial[D.NORM_BLOCKS, D.RED](g, self._part)
        softmax_k.sum_into[1, D.RED](self._part, self._scalar)

    def optimizer_step(self, opt: Optimizer, lr: float, clip: tuple[str, float]) -> float:
        """optim.clip_ then opt.step, on the device buffers; opt.t advances on the host and the
        moments stay on the device until params_host() (or sync_optimizer()) brings them home."""
        self._ready()
        n = self.g.shape[0]
        self._sumsq(self.g)
        mode, value = clip
        if mode == "norm":
            self._pointwise(optim_k.clip_by_norm, n, self.g, self._scalar, float(value))
        elif mode == "value":
            self._pointwise(optim_k.clip_by_value, n, self.g, np.float32(value))
        if opt is not self._opt:
            self._opt = opt
            self._opt_dev = {k: cuda.to_device(np.ascontiguousarray(v, dtype=np.float32))
                             for k, v in opt.state.items()}
        w, g = self.w, self.g
        if opt.coupled_l2 or opt.l1:
            self._pointwise(optim_k.penalties, n, w, g, float(opt.coupled_l2), float(opt.l1))
        opt.t += 1
        rule = RULES[opt.name]
        self._pointwise(getattr(optim_k, rule.cuda), n, w, g, *(self._opt_dev[k] for k in rule.state),
                        *rule.scalars(opt, float(lr), corrections=True))
        self._sampler = None          # the weights moved: the sampler's transposed copies are stale
        return math.sqrt(float(self._scalar.copy_to_host()[0]))

    def sync_optimizer(self) -> None:
        """Copy the device moments into the Optimizer's host arrays (for a checkpoint)."""
        if self._opt is not None:
            for k, d in self._opt_dev.items():
                d.copy_to_host(self._opt.state[k])

    def warm_up(self, T: int, B: int, opt: Optimizer) -> None:
        """Compile (or load from the cache) now every kernel this model takes, whatever the
        window and the optimizer (they are few, and one tiny twin exercises them all)."""
        self._ready()

    def params_host(self) -> Params:
        self.sync_optimizer()
        return Params(self.cfg, self.w.copy_to_host())

    def grad_host(self) -> Params:
        return Params(self.cfg, self.g.copy_to_host())

    def set_params(self, flat: np.ndarray) -> None:
        self.w.copy_to_device(np.ascontiguousarray(flat, dtype=np.float32))
        self._sampler = None          # the weights moved: the sampler's transposed copies are stale

    def zero_state(self, batch: int) -> DeviceState:
        return DeviceState(cuda.to_device(zero_state(self.cfg, batch, np.float32)))

    # -- data parallel -------------------------------------------------------------------------
    def reduce_buffer(self, extra: int) -> np.ndarray:
        """Pinned host memory: the gradient is staged through it around each reduction."""
        self._reduce_buf = cuda.pinned_array(self.g.shape[0] + extra, np.float32)
        return self._reduce_buf

    def reduce_gradient(self, reduce: Callable[[np.ndarray], None]) -> None:
        head = self._reduce_buf[:self.g.shape[0]]
        self.g.copy_to_host(head)
        reduce(self._reduce_buf)
        self.g.copy_to_device(head)

    # -- sampling ------------------------------------------------------------------------------
    def _sample_weights(self) -> dict:
        """[Wx; Wh].T per layer, contiguous per gate row, made once per set of weights."""
        if self._sampler is None:
            cfg, host = self.cfg, Params(self.cfg, self.w.copy_to_host())
            sw = {"WT": [], "b": [], "bh": []}
            tables = []
            for l in range(cfg.layers):
                Wx = host[f"l{l}.Wx"]
                if l == 0 and cfg.embed:
                    Wx = host["embed"] @ Wx            # an embedding then a linear map: one table
                tables.append(np.ascontiguousarray(np.concatenate([Wx, host[f"l{l}.Wh"]]).T))
                sw["WT"].append(cuda.to_device(tables[-1]))
                sw["b"].append(self.P[f"l{l}.b"])
                sw["bh"].append(self.P[f"l{l}.bh"] if cfg.cell == "gru" else self._dummy)
            # the same tables packed flat, with offsets, for the one-launch sampling loop
            offsets = param_offsets(cfg)
            sw["WT_flat"] = cuda.to_device(np.concatenate([t.ravel() for t in tables]))
            sw["wofs"] = cuda.to_device(np.cumsum([0] + [t.size for t in tables[:-1]]).astype(np.int64))
            sw["win"] = cuda.to_device(np.array([t.shape[1] - cfg.hidden for t in tables], np.int64))
            sw["bofs"] = cuda.to_device(np.array([offsets[f"l{l}.b"] for l in range(cfg.layers)], np.int64))
            sw["bhofs"] = cuda.to_device(np.array([offsets.get(f"l{l}.bh", 0) for l in range(cfg.layers)],
                                                  np.int64))
            self._sampler = sw
        return self._sampler

    def _layer_views(self, st) -> list:
        """Per layer (h, c) views of a state array (c is h for cells without one)."""
        lstm = self.cfg.cell == "lstm"
        return [(st[l, 0], st[l, 1] if lstm else st[l, 0]) for l in range(self.cfg.layers)]

    def _sample_layers(self, sw, codes_d, src, dst) -> None:
        """One step of every layer: codes_d (B,) and the state views src -> the state views dst."""
        x = self._dummy2
        for l in range(self.cfg.layers):
            sampling_k.sample_layer[self.cfg.hidden, 32 * self.cfg.gates](
                sw["WT"][l], sw["b"][l], sw["bh"][l], codes_d, x, 1 if l == 0 else 0,
                src[l][0], src[l][1], self.cell, self.kind, dst[l][0], dst[l][1])
            x = dst[l][0]

    def _out_buffers(self, B: int, steps: int) -> dict:
        V = self.cfg.vocab_size
        return {"logits": cuda.device_array((B, V), np.float32), "probs": cuda.device_array((B, V), np.float64),
                "codes": cuda.device_array(B, np.int64), "hist": cuda.device_array((steps, B), np.int64),
                "logp": cuda.device_array((steps, B), np.float64), "u": cuda.device_array((steps, B), np.float64)}

    def step(self, codes: np.ndarray, state) -> tuple[np.ndarray, DeviceState]:
        self._ready()
        codes = np.ascontiguousarray(np.asarray(codes).reshape(-1), dtype=np.int64)
        B = codes.shape[0]
        st = self._state_dev(state)
        out = cuda.device_array(st.shape, np.float32)
        dst = self._layer_views(out)
        self._sample_layers(self._sample_weights(), cuda.to_device(codes), self._layer_views(st), dst)
        if self._step_bufs is None or self._step_bufs["codes"].shape[0] != B:
            self._step_bufs = self._out_buffers(B, 1)          # reused: step() runs once a character
        ob = self._step_bufs
        sampling_k.sample_out[B, D.RED](self.P["out.W"], self.P["out.b"], dst[-1][0], ob["logits"], ob["probs"],
                               1.0, 0, ob["u"], 0, 0, ob["codes"], ob["hist"], ob["logp"])
        return ob["logits"].copy_to_host(), DeviceState(out)

    def generate(self, prime_codes: np.ndarray, dec: Decoding, state=None,
                 chunk: int = 256) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """sample.generate on the device (temperature and top-k; no top-p): yields (codes (batch,),
        log-probabilities) per step. Row i draws its uniforms from PCG64 seeded seed + i, as
        sample.stream does, so the same seed gives the same text as the host sampler (up to float
        rounding at a CDF boundary). Codes come home `chunk` steps at a time; the device never
        waits for the host in between. `state` (L, S, batch, H), when given, is the state after
        prime_codes[:-1] (sample.prime_state's, primed in windows): only the last code is fed."""
        self._ready()
        if not dec.own_loop_ok:
            raise ValueError("top-p and stop strings are drawn by sample.step_loop")
        length, batch = dec.length, dec.batch
        rngs = [np.random.default_rng(dec.seed + i) for i in range(batch)]
        cfg = self.cfg
        sw = self._sample_weights()
        prime = np.asarray(prime_codes, dtype=np.int64)
        S = cuda.to_device(np.zeros((2,) + zero_state(cfg, batch).shape, np.float32))   # ping-pong states
        views = [self._layer_views(S[0]), self._layer_views(S[1])]
        src = 0
        if state is not None:
            st = self._state_dev(state)
            if tuple(st.shape) != tuple(S.shape[1:]):
                raise ValueError(f"state shape {tuple(st.shape)} is not {tuple(S.shape[1:])}")
            self._pointwise(gates_k.copy, st.size, S[0].reshape(st.size), st.reshape(st.size))
        else:
            for c in prime[:-1]:
                self._sample_layers(sw, cuda.to_device(np.full(batch, c, np.int64)), views[src], views[1 - src])
                src = 1 - src
        ob = self._out_buffers(batch, chunk)
        ob["codes"].copy_to_device(np.full(batch, prime[-1], np.int64))
        Wo, bo, codes_d = self.P["out.W"], self.P["out.b"], ob["codes"]
        temp, top_k = float(dec.temperature), int(dec.top_k)
        n = 0
        while length == 0 or n < length:
            steps = chunk if length == 0 else min(chunk, length - n)
            u = np.zeros((chunk, batch))
            for i, r in enumerate(rngs):
                u[:steps, i] = r.random(steps)
            ob["u"].copy_to_device(u)
            if self.persistent:
                sampling_k.sample_loop[self._loop_grid(batch), D.RED](
                    self.cell, self.kind, cfg.layers, steps, sw["WT_flat"], sw["wofs"], sw["win"], self.w,
                    sw["bofs"], sw["bhofs"], S, src, Wo, bo, ob["logits"], ob["probs"], temp, top_k,
                    ob["u"], codes_d, ob["hist"], ob["logp"])
                src = (src + steps) % 2
            else:
                for s in range(steps):
                    self._sample_layers(sw, codes_d, views[src], views[1 - src])
                    src = 1 - src
                    sampling_k.sample_out[batch, D.RED](Wo, bo, views[src][-1][0], ob["logits"], ob["probs"], temp, top_k,
                                               ob["u"], s, 1, codes_d, ob["hist"], ob["logp"])
            hc, lp = ob["hist"].copy_to_host(), ob["logp"].copy_to_host()
            for s in range(steps):
                yield hc[s], lp[s]
            n += steps


def prepare_numba() -> None:
    """What this backend needs of the process's NumPy and Numba, set when a backend is built
    (never at import; a caller that compiles the kernels itself calls it first):
      - numba-cuda releases up to at least 0.2x register an overload for np.row_stack, which
        NumPy 2.4 removed; without the alias their first kernel compile fails with
        AttributeError. Harmless elsewhere: it only names an existing function.
      - small launches (one step at batch 1) are the point here, not a mistake to warn about:
        Numba's low-occupancy warning is off.
      - in the simulator, the dropout hash runs on NumPy scalars, which warn on the wrap-around
        it relies on."""
    if not hasattr(np, "row_stack"):
        np.row_stack = np.vstack
    _numba_config.CUDA_LOW_OCCUPANCY_WARNINGS = 0
    warnings.filterwarnings("ignore", message=r"Grid size \d+ will likely result in GPU under-utilization")
    if _simulating():
        warnings.filterwarnings("ignore", r"overflow encountered in scalar", RuntimeWarning, "charrnn.dropout")


def _simulating() -> bool:
    from numba.core import config
    return bool(config.ENABLE_CUDASIM)


_warmed: set = set()


def _warm_up(be: CudaBackend, notify) -> None:
    """Compile the kernels this model uses, on a tiny twin of it, saying so on stderr if that
    takes a while (numba compiles on first use; a first run should never look hung)."""
    cfg = be.cfg
    key = (cfg.cell, cfg.activation, bool(cfg.embed), cfg.dropout > 0, cfg.layers > 1, be.tiles, be.persistent)
    if key in _warmed or _simulating():
        return
    done = threading.Event()

    def tell():
        if not done.wait(0.7) and notify:
            notify("compiling GPU kernels, first run only...")

    threading.Thread(target=tell, daemon=True).start()
    t0 = time.perf_counter()
    from charrnn.model import init_params
    tiny_cfg = ModelConfig(vocab_size=3, hidden=2, layers=min(cfg.layers, 2), cell=cfg.cell,
                           embed=2 if cfg.embed else 0, dropout=0.5 if cfg.dropout else 0.0,
                           activation=cfg.activation)
    _warmed.add(key)                     # before the twin is built, so it does not recurse
    tiny = CudaBackend(tiny_cfg, init_params(tiny_cfg, np.random.default_rng(0)), tiles=be.tiles,
                       persistent=be.persistent)
    try:
        _exercise(tiny)
        if tiny.persistent:
            _persistent_ok[0] = True
    except Exception as e:
        if not tiny.persistent:
            raise
        _persistent_ok[0] = False
        if notify:
            notify(f"persistent recurrent kernels unavailable here ({type(e).__name__}: {e}); "
                   "using one launch per step")
        tiny.persistent = False
        _exercise(tiny)
    done.set()
    if notify and time.perf_counter() - t0 > 0.7:
        notify(f"GPU kernels ready ({time.perf_counter() - t0:.0f} s)")


def _exercise(tiny: CudaBackend) -> None:
    """Every operation once, so that each kernel this model needs is compiled."""
    x = np.zeros((2, 1), np.int64)
    tiny.train_step(x, x, tiny.zero_state(1), 1)
    tiny.loss(x, x, tiny.zero_state(1))
    tiny.step(x[0], tiny.zero_state(1))
    from charrnn.decoding import Decoding
    for _ in tiny.generate(np.array([0, 1]), Decoding(length=2, temperature=1.0, top_k=2), chunk=2):
        pass
    for _ in tiny.generate(np.array([0]), Decoding(length=1, temperature=0.0), chunk=1):
        pass
    for name in OPTIMIZERS:
        for clip in (("norm", 1.0), ("value", 1.0)):
            tiny.optimizer_step(Optimizer(name, tiny.w.shape[0], weight_decay=1e-9, l1=1e-9), 0.0, clip)
    tiny.params_host()
