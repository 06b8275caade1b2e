"""The CUDA backend held to reference.py, optim.py and sample.py: loss, every gradient, carried
state, step logits, optimizer steps, device-side sampling, device-neutral checkpoints.

Three ways these run:
  - with NUMBA_ENABLE_CUDASIM=1 (kernels as Python, tiny shapes): every test not marked gpu;
  - in a plain run without a GPU, `test_cuda_backend_under_the_simulator` starts that run in
    a subprocess (the simulator must be switched on before numba.cuda is first imported);
  - on a GPU machine (bench/gpu_check.sh): the same tests in-process, plus the `gpu` ones with
    the production tile shapes on sizes that cross tile edges.
Without the simulator, every kernel is also compiled to sm_90 PTX with the types the backend
passes (where NVVM is installed, e.g. pip's nvidia-cuda-nvcc-cu12), since the simulator never
type-checks a kernel.
"""
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from numba import cuda      # a module global: the simulator swaps it while a kernel runs

from charrnn import reference as ref
from charrnn.dropout import masks as dropout_masks
from charrnn.model import init_params, param_shapes
from tiny_models import PerStep, carried_state, count_calls, random_case, tiny_config, trained_like

ROOT = Path(__file__).resolve().parent.parent
SIM = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


def _mode():
    if SIM:
        return "sim"
    from charrnn.backends import cuda_available
    return "gpu" if cuda_available() else None


MODE = _mode()
# more cells and options of a case already run: in the simulator each costs 15-35 s, so the CI
# suite runs one of each and the slow run the rest (test_cuda_backend_slow_cases_under_the_simulator)
SIM_SLOW = pytest.mark.slow
needs_cuda = pytest.mark.skipif(MODE is None, reason="no GPU here: run under the simulator by "
                                "test_cuda_backend_under_the_simulator")
needs_gpu = pytest.mark.skipif(MODE != "gpu", reason="needs a real CUDA GPU")


def _backend(cfg, params, **kw):
    from charrnn.backends.cuda import CudaBackend
    return CudaBackend(cfg, params, **kw)


def _case(cfg, T, B, seed=0):
    return random_case(cfg, T, B, np.float64, seed)


def _rel(a, b):
    return np.max(np.abs(np.asarray(a) - b)) / max(np.max(np.abs(b)), 1e-30)


def _check(cfg, T, B, tol=1e-4, seed=0, **kw):
    p64, x, y, state = _case(cfg, T, B, seed)
    masks = None
    if cfg.dropout:
        masks = dropout_masks(seed + 11, (cfg.layers, T, B, cfg.hidden), cfg.dropout, np.float64)
    loss, cache, s_ref = ref.forward(p64, cfg, x, y, state, masks)
    g_ref = p64.like()
    ref.backward(p64, g_ref, cfg, cache, 1.0 / (T * B))

    be = _backend(cfg, p64.astype(np.float32), **kw)
    s32 = state.astype(np.float32)
    got, s_got = be.train_step(x, y, s32, dropout_seed=seed + 11)
    assert abs(got - loss) / loss < tol
    assert _rel(s_got, s_ref) < tol
    grads = be.grad_host()
    for name, _ in param_shapes(cfg):
        assert _rel(grads[name], g_ref[name]) < tol, name
    if not cfg.dropout:
        got_eval, s_eval = be.loss(x, y, s32)
        assert abs(got_eval - loss) / loss < tol
        assert _rel(s_eval, s_ref) < tol
    logits_ref, _, s1_ref = ref.forward(p64, cfg, x[:1], None, state)
    logits, s1 = be.step(x[0], s32)
    assert _rel(logits, logits_ref[0]) < tol and _rel(s1, s1_ref) < tol


# ---------------------------------------------------------------- parity with reference.py
@needs_cuda
def test_shares_of_the_streams_sum_to_the_whole_batch_step():
    """A data-parallel rank's share (streams=(lo, B)): global dropout masks, 1/(T*B) scale."""
    cfg = tiny_config(vocab_size=5, hidden=3, layers=2, cell="lstm", embed=2, dropout=0.4)
    p64, x, y, state = _case(cfg, 3, 3)
    whole = _backend(cfg, p64.astype(np.float32))
    s32 = state.astype(np.float32)
    loss, _ = whole.train_step(x, y, s32, 5)
    part = _backend(cfg, p64.astype(np.float32))
    total, grad = 0.0, 0.0
    for lo, hi in ((0, 1), (1, 3)):
        lp, _ = part.train_step(x[:, lo:hi], y[:, lo:hi], s32[:, :, lo:hi].copy(), 5, streams=(lo, 3))
        total += lp
        grad = grad + part.grad_host().flat
    assert abs(total - loss) < 1e-5 * loss
    assert _rel(grad, whole.grad_host().flat) < 1e-5


@needs_cuda
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_one_layer_matches_reference(cell):
    _check(tiny_config(vocab_size=5, hidden=3, layers=1, cell=cell), 3, 2)


@needs_cuda
@pytest.mark.parametrize("cell,activation", [   # the layers, embedding and dropout are the cells' common code
    ("lstm", "softsign"), pytest.param("gru", "tanh", marks=SIM_SLOW), pytest.param("rnn", "softsign", marks=SIM_SLOW)])
def test_two_layers_with_embedding_and_dropout_match_reference(cell, activation):
    cfg = tiny_config(vocab_size=6, hidden=3, layers=2, cell=cell, embed=4, dropout=0.3, activation=activation)
    _check(cfg, 3, 2, seed=2)


@needs_cuda
def test_two_one_hot_layers_without_dropout_match_reference():
    _check(tiny_config(vocab_size=5, hidden=3, layers=2, cell="gru", activation="softsign"), 2, 2, seed=5)


@needs_cuda
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_one_launch_per_step_matches_reference(cell):
    # the stand-in where cooperative launches (the persistent time loop) are not available
    _check(tiny_config(vocab_size=5, hidden=3, layers=1, cell=cell), 3, 2, persistent=False)


@needs_cuda
def test_persistent_loop_handles_partial_tiles():
    _check(tiny_config(vocab_size=5, hidden=3, layers=1, cell="gru"), 2, 3, seed=8)   # 2x2 tiles in the simulator


@needs_cuda
def test_production_tile_shapes_match_reference_on_a_small_model():
    # the simulator normally uses 8x8 tiles; this holds the real tile code to the reference
    _check(tiny_config(vocab_size=5, hidden=3, layers=1), 2, 1, tiles=("large", "small"))


@needs_cuda
@pytest.mark.parametrize("ta,tb", [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_gemm_every_transpose_with_accumulate_and_bias_over_partial_tiles(ta, tb):
    from numba import cuda
    from charrnn.backends.cuda import TILES
    from charrnn.backends.cuda_gemm import make_gemm
    r = np.random.default_rng(ta * 2 + tb)
    M, N, Kd = 9, 10, 11                   # several K slices and ragged edges for any tile here
    A = r.standard_normal((Kd, M) if ta else (M, Kd)).astype(np.float32)
    B = r.standard_normal((N, Kd) if tb else (Kd, N)).astype(np.float32)
    C0 = r.standard_normal((M, N)).astype(np.float32)
    bias = r.standard_normal(N).astype(np.float32)
    kern, (TM, TN), threads = make_gemm(*TILES["sim" if SIM else "large"])
    dC = cuda.to_device(C0)
    kern[((N + TN - 1) // TN, (M + TM - 1) // TM), threads](cuda.to_device(A), cuda.to_device(B), dC, ta, tb,
                                                            np.float32(0.5), cuda.to_device(bias), 1)
    want = 0.5 * C0 + (A.T if ta else A).astype(np.float64) @ (B.T if tb else B) + bias
    np.testing.assert_allclose(dC.copy_to_host(), want, rtol=1e-5, atol=1e-5)


def _activations_kernel():
    """A kernel writing sig, tanh and softsign of each x (its body names the module's `cuda`,
    which the simulator swaps while a kernel runs)."""
    from charrnn.backends import cuda_device as CK

    @cuda.jit
    def acts(x, sig, th, soft):
        i = cuda.grid(1)
        if i < x.shape[0]:
            sig[i] = CK.sig(x[i])
            th[i] = CK.act(x[i], CK.TANH)
            soft[i] = CK.act(x[i], CK.SOFTSIGN)
    return acts


@needs_cuda
def test_device_activations_hold_over_the_whole_float32_range():
    """The gate kernels' sigmoid, tanh and softsign (cuda_device.sig, act) on a sweep of the
    float32 range, +-inf, subnormals and the old forms' breaking points (e^-x overflowing past
    88.7): within 2 ulps on a GPU (libdevice, no fastmath); the simulator checks the forms."""
    from numba import cuda
    from charrnn.backends import cuda_device as CK
    acts = _activations_kernel()
    pos = np.concatenate([np.arange(0, 0x7F800000, 0x7F800000 // 700, dtype=np.uint32).view(np.float32),
                          np.array([1e-45, 44.5, 88.0, 88.8, 89.5, 104.0, 120.0, 1e4, 3.4e38, np.inf], np.float32)])
    x = np.concatenate([pos, -pos])
    out = [cuda.device_array(x.size, np.float32) for _ in range(3)]
    acts[CK.blocks(x.size), CK.THREADS](cuda.to_device(x), *out)
    got = [o.copy_to_host() for o in out]
    xl = x.astype(np.longdouble)
    e = np.exp(-np.abs(xl))
    m = np.minimum(np.abs(xl), np.longdouble(2.0) ** 80)
    for g, want in zip(got, (np.where(xl >= 0, 1 / (1 + e), e / (1 + e)), np.tanh(xl), np.sign(xl) * m / (1 + m))):
        spacing = np.spacing(np.abs(want.astype(np.float32))).astype(np.longdouble)
        assert np.max(np.abs(g.astype(np.longdouble) - want) / spacing) <= 2.0


@needs_cuda
@pytest.mark.parametrize("ta,tb", [(0, 0), (1, 1)])
def test_gemm_large_tiles_over_several_k_slices(ta, tb):
    """The production 64x64 tile with K = 40 (three 16-deep slices, the last one partial)."""
    from numba import cuda
    from charrnn.backends.cuda import TILES
    from charrnn.backends.cuda_gemm import make_gemm
    r = np.random.default_rng(7)
    M, N, Kd = 9, 10, 40
    A = r.standard_normal((Kd, M) if ta else (M, Kd)).astype(np.float32)
    B = r.standard_normal((N, Kd) if tb else (Kd, N)).astype(np.float32)
    kern, (TM, TN), threads = make_gemm(*TILES["large"])
    assert Kd > TILES["large"][2] * 2
    dC = cuda.to_device(np.zeros((M, N), np.float32))
    kern[((N + TN - 1) // TN, (M + TM - 1) // TM), threads](cuda.to_device(A), cuda.to_device(B), dC, ta, tb,
                                                            np.float32(0.0), cuda.to_device(np.zeros(N, np.float32)), 0)
    want = (A.T if ta else A).astype(np.float64) @ (B.T if tb else B)
    np.testing.assert_allclose(dC.copy_to_host(), want, rtol=1e-5, atol=1e-5)


@needs_cuda
@pytest.mark.parametrize("cell", ["lstm", pytest.param("gru", marks=SIM_SLOW)])
def test_saturated_model_with_a_wide_vocabulary_matches_reference_and_optim(cell):
    """Trained-like weights (pre-activations past +-50, carried |c| up to 1e4), V = 70 (more than
    two reduction blocks of the simulator: the output kernels' strided loops) and a parameter
    buffer far larger than the norm reduction's grid; then one clipped Adam step on the device
    against optim.py's."""
    from charrnn.backends import cuda_device as CK
    from charrnn.optim import Optimizer, clip_
    cfg = tiny_config(vocab_size=70, hidden=4, layers=1, cell=cell)
    p64 = trained_like(cfg, 11, scale=60.0)
    assert cfg.vocab_size > 2 * CK.RED and p64.flat.size > 4 * CK.NORM_BLOCKS * CK.RED
    r = np.random.default_rng(11)
    x, y = r.integers(0, 70, (6, 2)), r.integers(0, 70, (6, 2))
    state = carried_state(cfg, 2, 11, 1e4)
    with np.errstate(over="ignore"):
        loss, cache, s_ref = ref.forward(p64, cfg, x, y, state)
        g_ref = p64.like()
        ref.backward(p64, g_ref, cfg, cache, 1.0 / 12)
    be = _backend(cfg, p64.astype(np.float32))
    got, s_got = be.train_step(x, y, state.astype(np.float32))
    assert abs(got - loss) / loss < 1e-4 and _rel(s_got, s_ref) < 1e-4
    grads = be.grad_host()
    for name, _ in param_shapes(cfg):
        assert _rel(grads[name], g_ref[name]) < 1e-4, name
    w, g = be.params_host().flat.copy(), grads.flat.copy()
    host = Optimizer("adam", w.size)
    norm = clip_(g, "norm", 0.5)
    host.step(w, g, 0.01)
    assert abs(be.optimizer_step(Optimizer("adam", w.size), 0.01, ("norm", 0.5)) - norm) <= 1e-5 * norm
    np.testing.assert_allclose(be.params_host().flat, w, rtol=1e-5, atol=1e-6)


@needs_cuda
@pytest.mark.parametrize("seed", [3, (1 << 62) - 1])
def test_dropout_kernel_applies_the_masks_of_charrnn_dropout(seed):
    from numba import cuda
    from charrnn.backends import cuda_device as D, cuda_gates as K
    L, T, B, H, p = 2, 3, 2, 5, 0.4
    masks = dropout_masks(seed, (L, T, B, H), p)
    src = np.random.default_rng(seed % 97).standard_normal(T * B * H).astype(np.float32)
    for l in range(L):
        dst = cuda.device_array_like(src)
        K.dropout[D.blocks(src.size), D.THREADS](cuda.to_device(src), dst, np.uint64(seed), np.uint64(l * src.size),
                                                 p, np.float32(1.0 / (1.0 - p)), np.uint64(B * H), np.uint64(B * H),
                                                 np.uint64(0))
        assert np.array_equal(dst.copy_to_host(), src * masks[l].reshape(-1))


@needs_cuda
def test_the_gradient_is_staged_through_the_reduce_buffer_and_the_sum_comes_back():
    """Data parallel: reduce_gradient copies the device gradient into the head of reduce_buffer's
    host array, hands the array to the reduction and takes its sum back as the gradient."""
    cfg = tiny_config(vocab_size=5, hidden=3, layers=1, cell="rnn")
    p64, x, y, state = _case(cfg, 2, 1)
    be = _backend(cfg, p64.astype(np.float32))
    packed = be.reduce_buffer(3)
    be.train_step(x, y, state.astype(np.float32))
    g = be.grad_host().flat.copy()
    seen = []

    def reduce(buf):
        seen.append(buf.copy())
        buf *= 2
    be.reduce_gradient(reduce)
    assert packed.size == g.size + 3 and len(seen) == 1 and np.any(g)
    assert np.array_equal(seen[0][:g.size], g) and np.array_equal(be.grad_host().flat, 2 * g)


@needs_cuda
def test_state_can_stay_on_the_device_between_windows():
    cfg = tiny_config(vocab_size=5, hidden=3, layers=1)
    p, x, y, state = _case(cfg, 2, 2)
    be = _backend(cfg, p.astype(np.float32))
    _, s1 = be.train_step(x, y, state.astype(np.float32))
    host_state = np.asarray(s1, np.float32)
    l_dev, s_dev = be.train_step(x, y, s1)
    l_host, s_host = be.train_step(x, y, host_state)
    assert l_dev == l_host and np.array_equal(np.asarray(s_dev), np.asarray(s_host))
    assert np.asarray(be.zero_state(3)).shape == (1, 2, 3, 3) and not np.asarray(be.zero_state(3)).any()


# ---------------------------------------------------------------- optimizers and clipping
@needs_cuda
@pytest.mark.parametrize("name,clip,decay", [("adam", ("norm", 0.5), (0.01, 0.001)), ("rmsprop", ("value", 0.05), (0, 0)),
                                             ("adagrad", ("none", 0.0), (0.1, 0)), ("nesterov", ("value", 0.1), (0, 0.01)),
                                             ("adamw", ("norm", 0.5), (0.1, 0.001)), ("adadelta", ("value", 0.05), (0.01, 0)),
                                             ("sgd", ("none", 0.0), (0.01, 0.01))])
def test_optimizer_steps_match_optim(name, clip, decay):
    from charrnn.optim import Optimizer, clip_
    cfg = tiny_config(vocab_size=4, hidden=2, layers=1)
    r = np.random.default_rng(3)
    w0 = init_params(cfg, r)
    be = _backend(cfg, w0)
    w = w0.flat.copy()
    host_opt = Optimizer(name, w.size, weight_decay=decay[0], l1=decay[1])
    dev_opt = Optimizer(name, w.size, weight_decay=decay[0], l1=decay[1])
    for _ in range(3):
        g = r.normal(0, 0.2, w.size).astype(np.float32)
        be.g.copy_to_device(g)
        norm = clip_(g, *clip)
        host_opt.step(w, g, 0.01)
        dev_norm = be.optimizer_step(dev_opt, 0.01, clip)
        assert abs(dev_norm - norm) <= 1e-5 * norm
    assert dev_opt.t == host_opt.t == 3
    np.testing.assert_allclose(be.params_host().flat, w, rtol=1e-5, atol=1e-6)
    for k in host_opt.state:
        np.testing.assert_allclose(dev_opt.state[k], host_opt.state[k], rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------- sampling on the device
@needs_cuda
@pytest.mark.parametrize("cell,layers,embed,temp,top_k,persistent", [
    ("lstm", 2, 0, 0.0, 0, True), pytest.param("gru", 2, 3, 0.8, 3, True, marks=SIM_SLOW),
    ("rnn", 1, 0, 1.0, 0, True), ("lstm", 1, 0, 0.7, 2, False)])
def test_device_sampling_draws_what_the_host_sampler_draws(cell, layers, embed, temp, top_k, persistent):
    from charrnn.backends.cpu import CpuBackend
    from charrnn.sample import Decoding, generate
    cfg = tiny_config(vocab_size=6, hidden=2, layers=layers, cell=cell, embed=embed)
    p, *_ = _case(cfg, 1, 1, seed=4)
    p = p.astype(np.float32)
    dec = Decoding(length=3, temperature=temp, seed=9, top_k=top_k, batch=2)
    host = list(generate(PerStep(CpuBackend(cfg, p)), np.array([1, 2]), dec))
    dev = list(_backend(cfg, p, persistent=persistent).generate(np.array([1, 2]), dec, chunk=2))
    assert [c.tolist() for c, _ in dev] == [c.tolist() for c, _ in host]
    np.testing.assert_allclose(np.array([lp for _, lp in dev]), np.array([lp for _, lp in host]), atol=1e-4)


def _write(be, n, length, temp, top_k, top_p=1.0, stop=None, as_json=False, seed=3):
    import io
    from charrnn.corpus import Vocab
    from charrnn.sample import Decoding, write_samples
    vocab = Vocab(chars="abcdef")
    out = io.BytesIO()
    dec = Decoding(batch=n, length=length, temperature=temp, top_k=top_k, top_p=top_p, seed=seed,
                   stop=() if stop is None else vocab.encode(stop).tolist())
    write_samples(be, vocab, out, vocab.encode("cab").astype(np.int64), dec, b"cab", as_json=as_json)
    return out.getvalue()


def _same_samples(dev: bytes, host: bytes, as_json: bool) -> None:
    import json
    if not as_json:
        assert dev == host
        return
    d, h = [json.loads(x) for x in dev.splitlines()], [json.loads(x) for x in host.splitlines()]
    assert [dict(r, logprob=0, bits_per_char=0) for r in d] == [dict(r, logprob=0, bits_per_char=0) for r in h]
    np.testing.assert_allclose([r["logprob"] for r in d], [r["logprob"] for r in h], atol=1e-4)


@needs_cuda
@pytest.mark.parametrize("cell,layers,n,temp,top_k,as_json", [
    ("lstm", 1, 1, 1.0, 0, False), pytest.param("gru", 2, 2, 0.7, 3, True, marks=SIM_SLOW),
    pytest.param("rnn", 1, 3, 0.0, 0, False, marks=SIM_SLOW)])
def test_write_samples_runs_the_device_loop_and_writes_what_the_cpu_per_step_path_writes(
        cell, layers, n, temp, top_k, as_json):
    from charrnn.backends.cpu import CpuBackend
    cfg = tiny_config(vocab_size=6, hidden=4, layers=layers, cell=cell)
    p = _case(cfg, 1, 1, seed=6)[0].astype(np.float32)
    be = _backend(cfg, p)
    calls = count_calls(be, "generate", "step")
    dev = _write(be, n, 10, temp, top_k, as_json=as_json)
    assert calls == {"generate": 1, "step": 0}
    _same_samples(dev, _write(PerStep(CpuBackend(cfg, p)), n, 10, temp, top_k, as_json=as_json), as_json)


@needs_cuda
@pytest.mark.parametrize("top_p,stop", [(0.8, None), pytest.param(1.0, "a", marks=SIM_SLOW)])
def test_top_p_or_a_stop_string_falls_back_to_per_step_sampling(top_p, stop):
    from charrnn.backends.cpu import CpuBackend
    cfg = tiny_config(vocab_size=6, hidden=4, layers=1)
    p = _case(cfg, 1, 1, seed=6)[0].astype(np.float32)
    be = _backend(cfg, p)
    calls = count_calls(be, "generate", "step")
    dev = _write(be, 2, 6, 1.0, 0, top_p=top_p, stop=stop, as_json=True)
    assert calls["generate"] == 0 and calls["step"] > 0
    _same_samples(dev, _write(PerStep(CpuBackend(cfg, p)), 2, 6, 1.0, 0, top_p=top_p, stop=stop, as_json=True),
                  True)


# ---------------------------------------------------------------- checkpoints are device-neutral
@needs_cuda
def test_weights_round_trip_bit_for_bit_and_optimizer_moments_come_home():
    from charrnn.optim import Optimizer
    cfg = tiny_config(vocab_size=5, hidden=3, layers=1)
    p, x, y, state = _case(cfg, 2, 2)
    p32 = p.astype(np.float32)
    be = _backend(cfg, p32)
    assert be.params_host().flat.tobytes() == p32.flat.tobytes()      # CPU -> GPU -> host, exact
    opt = Optimizer("adam", p32.flat.size)
    be.train_step(x, y, state.astype(np.float32))
    be.optimizer_step(opt, 0.01, ("norm", 5.0))
    host = be.params_host()
    assert opt.state["m"].any() and opt.state["v"].any()
    again = _backend(cfg, host).params_host()                           # GPU -> host -> GPU, exact
    assert again.flat.tobytes() == host.flat.tobytes()


@needs_cuda
def test_dynamic_evaluation_on_the_device_follows_the_cpu():
    """charrnn/dynamic.py through the device: set_params between segments, the RMS rule with
    decay, the carried state; scores and adapted weights as on the CPU."""
    from charrnn.backends.cpu import CpuBackend
    from charrnn.dynamic import Dynamic, dynamic_evaluate
    cfg = tiny_config(vocab_size=5, hidden=3, layers=1)
    p, *_ = _case(cfg, 2, 2)
    codes = np.random.default_rng(7).integers(0, 5, 13)              # three segments of 4
    ms = np.random.default_rng(8).uniform(0.1, 1.0, p.flat.size).astype(np.float32)
    dyn = Dynamic("rms", lr=0.01, decay=0.1, seq_len=4)
    cpu, dev = CpuBackend(cfg, p.astype(np.float32)), _backend(cfg, p.astype(np.float32))
    (a, n, sa), (b, m, sb) = dynamic_evaluate(cpu, codes, dyn, ms), dynamic_evaluate(dev, codes, dyn, ms)
    assert n == m == 12 and abs(a - b) / a < 1e-5
    assert _rel(dev.params_host().flat, cpu.params_host().flat) < 1e-5
    assert _rel(np.asarray(sb), sa) < 1e-5
    assert not np.array_equal(dev.params_host().flat, p.astype(np.float32).flat)


@needs_cuda
@pytest.mark.gpu          # 13 steps take ~70 s in the simulator: kept out of its CI run, not out of a GPU's
def test_lr_find_on_the_device_follows_the_cpu_curve(small_text):
    from charrnn.lrfind import lr_find
    from charrnn.train import TrainOptions
    text = small_text.read_text()[:400]
    opts = {"hidden": 3, "layers": 1, "seq_len": 4, "batch_size": 2, "dropout": 0.0}
    curves = [lr_find(TrainOptions.from_dict({**opts, "device": dev}), text, steps=13, start=1e-3, end=1.0)
              for dev in ("cpu", "cuda")]
    assert len(curves[0].lr) == len(curves[1].lr) == 13
    np.testing.assert_allclose(curves[1].loss, curves[0].loss, rtol=1e-4)


@needs_cuda
def test_training_on_the_device_writes_a_checkpoint_the_cpu_loads(small_text, tmp_path):
    from charrnn import checkpoint as ckpt
    from charrnn.backends.cpu import CpuBackend
    from charrnn.train import Trainer, TrainOptions
    opts = TrainOptions.from_dict(dict(hidden=3, layers=1, seq_len=3, batch_size=2, max_steps=2, val_frac=0.0,
                                       test_frac=0.0, device="cuda", dropout=0.2, optimizer="rmsprop"))
    tr = Trainer(opts, small_text.read_text()[:300], tmp_path, show_progress=False)
    tr.sample_chars = 0                     # the report's samples: slow under the simulator, not this test's
    tr.run()
    ck = ckpt.load(tmp_path / "last.safetensors")
    assert ck.params.flat.tobytes() == tr.be.params_host().flat.tobytes()
    assert np.array_equal(ck.state, np.asarray(tr.state, np.float32))
    assert ck.optimizer["t"] == 2 and ck.optim_state["sq"].any()
    cpu = CpuBackend(ck.config, ck.params)
    x = np.array([[1, 2], [3, 0]])
    l_cpu, _ = cpu.loss(x, x, ck.state)
    l_gpu, _ = tr.be.loss(x, x, ck.state)
    assert abs(l_cpu - l_gpu) < 1e-4 * l_cpu


# ---------------------------------------------------------------- real hardware
@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("embed,dropout", [(0, 0.0), (24, 0.25)])
def test_gpu_matches_reference_across_tile_edges(cell, embed, dropout):
    cfg = tiny_config(vocab_size=70, hidden=40, layers=2, cell=cell, embed=embed, dropout=dropout)
    _check(cfg, 5, 33, tol=2e-4, seed=1)


@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("persistent", [True, False])
def test_gpu_large_tiles_match_reference(persistent):
    cfg = tiny_config(vocab_size=65, hidden=96, layers=2)
    _check(cfg, 4, 70, tol=2e-4, seed=6, persistent=persistent)


@needs_gpu
@pytest.mark.gpu
def test_gpu_persistent_loop_is_in_use():
    from charrnn.backends.cuda import CudaBackend
    from charrnn.optim import Optimizer
    cfg = tiny_config(vocab_size=5, hidden=8, layers=1)
    be = CudaBackend(cfg, init_params(cfg, np.random.default_rng(0)))
    be.warm_up(2, 1, Optimizer("adam", be.w.shape[0]))     # compiles, and learns whether they run here
    assert be.persistent


# ---------------------------------------------------------------- kernels compile for the real target
def _kernel_signatures():
    from numba import types as nt
    from charrnn.backends import cuda_gates as GK, cuda_optim as OK, cuda_sampling as SK, cuda_softmax as XK
    from charrnn.backends.cuda_gemm import make_gemm
    from charrnn.backends.cuda_recurrence import make_recurrence
    from charrnn.optim import RULES
    f32, f64, i64, u64 = nt.float32, nt.float64, nt.int64, nt.uint64
    A1, A2, A3, A2s = nt.float32[::1], nt.float32[:, ::1], nt.float32[:, :, ::1], nt.float32[:, :]
    I1, I2, D1, D2 = nt.int64[::1], nt.int64[:, ::1], nt.float64[::1], nt.float64[:, ::1]
    from charrnn.backends.cuda import REC_TILES, TILES
    gemms = [make_gemm(*TILES[name])[0] for name in ("large", "small")]
    rec_fwd, rec_bwd = make_recurrence(*REC_TILES["gpu"])
    # each rule's kernel with the arguments optim.RULES says it takes: w, g, the state, then the scalars
    rules = [(getattr(OK, r.cuda), (A1, A1) + (A1,) * len(r.state)
              + (f64,) * (1 + len(r.hyper) + 2 * r.bias_corrected + r.decoupled)) for r in RULES.values()]
    return [(g, (A2, A2, A2, i64, i64, f32, A1, i64)) for g in gemms] + rules + [
        (GK.gather_rows, (A2, A1, I1, A2)), (GK.scatter_add_rows, (A2, I1, A2)), (GK.colsum_add, (A1, A2s)),
        (GK.fill, (A1, f32)), (GK.copy, (A1, A1)), (GK.dropout, (A1, A1, u64, u64, f64, f32, u64, u64, u64)),
        (GK.lstm_fwd, (A2, A2, A2, i64, A2, A2, A2, A2)), (GK.lstm_bwd, (A2, A2, A2, A2, A2, A2, i64, A2)),
        (GK.gru_fwd, (A2, A2, A1, A2, i64, A2, A2, A2)), (GK.gru_bwd, (A2, A2, A2, A2, A2, i64, A2, A2)),
        (GK.rnn_fwd, (A2, A2, i64, A2)), (GK.rnn_bwd, (A2, A2, A2, i64, A2)),
        (XK.softmax_xent, (A2, I1, f64, i64, D1)), (XK.sum_into, (D1, D1)), (OK.penalties, (A1, A1, f64, f64)),
        (OK.sumsq_partial, (A1, D1)), (OK.clip_by_norm, (A1, D1, f64)), (OK.clip_by_value, (A1, f32)),
        (SK.sample_layer, (A2, A1, A1, I1, A2, i64, A2, A2, i64, i64, A2, A2)),
        (SK.sample_out, (A2, A1, A2, A2, D2, f64, i64, D2, i64, i64, I1, I2, D2)),
        (rec_fwd, (i64, i64, i64, A2, A2, A1, A3, A3, A3, A3, A3)),
        (rec_bwd, (i64, i64, A3, A2, A3, A3, A3, A3, A3, A3, A3, A2, A2)),
        (SK.sample_loop, (i64, i64, i64, i64, A1, I1, I1, A1, I1, I1, nt.float32[:, :, :, :, ::1], i64, A2, A1,
                          A2, D2, f64, i64, D2, I1, I2, D2)),
    ]


@pytest.mark.skipif(SIM, reason="the simulator does not compile")
def test_every_kernel_compiles_for_hopper_with_registers_only(monkeypatch):
    # the simulator runs kernels as Python and never types them; this compiles each one to PTX
    # for sm_90 with the types the backend passes, so a typing error cannot first appear on a GPU
    from numba.cuda import compile_ptx
    if MODE is None:
        # no device to ask for a compute capability while compiling the device functions
        import numba.cuda.api as api
        import numba.cuda.dispatcher as disp

        class Hopper:
            compute_capability = (9, 0)
        monkeypatch.setattr(api, "get_current_device", lambda: Hopper())
        monkeypatch.setattr(disp, "get_current_device", lambda: Hopper(), raising=False)
    from charrnn.backends.cuda import prepare_numba
    prepare_numba()                             # as building a backend does, before its first compile
    try:
        compile_ptx(lambda a: None, "void(float32[::1])", cc=(9, 0))
    except Exception as e:                      # no NVVM here (it comes with the CUDA toolkit)
        pytest.skip(f"cannot compile CUDA here: {type(e).__name__}")
    for kernel, sig in _kernel_signatures():
        ptx, _ = compile_ptx(kernel.py_func, sig, cc=(9, 0))
        assert ".local" not in ptx or kernel.py_func.__name__ in ("sample_out", "sample_loop"), \
            kernel.py_func.__name__


# ---------------------------------------------------------------- without a GPU
def _env_without_sim():
    env = dict(os.environ)
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.mark.skipif(SIM or MODE == "gpu", reason="only meaningful without a GPU, once")
def test_device_cuda_without_a_gpu_is_one_line_and_exit_2(small_text, tmp_path):
    r = subprocess.run([sys.executable, "-m", "charrnn", "train", str(small_text), "--device", "cuda",
                        "--out", str(tmp_path / "run")], capture_output=True, text=True, env=_env_without_sim(),
                       timeout=120)
    assert r.returncode == 2
    assert r.stdout == "" and len(r.stderr.strip().splitlines()) == 1 and "cuda" in r.stderr.lower()


@pytest.mark.skipif(SIM, reason="once is enough")
def test_cli_imports_and_auto_picks_cpu_without_cuda_libraries():
    code = ("import sys; sys.modules['numba.cuda'] = None\n"
            "import charrnn.cli\n"
            "from charrnn.backends import DeviceError, resolve_device, cuda_available\n"
            "assert not cuda_available() and resolve_device('auto') == 'cpu'\n"
            "try:\n    resolve_device('cuda')\nexcept DeviceError:\n    print('refused')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env_without_sim(),
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "refused"


def _simulate_start(marks: str) -> tuple[subprocess.Popen, object, float]:
    """Start this file's tests in a child process under the simulator; output goes to a
    temporary file, so the child never blocks on a pipe nobody reads yet."""
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    out = tempfile.TemporaryFile(mode="w+")
    p = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-m", marks,
                          "-W", "ignore::RuntimeWarning", __file__], stdout=out, stderr=subprocess.STDOUT,
                         text=True, env=env, cwd=ROOT)
    return p, out, time.monotonic()


def _simulate_finish(run: tuple[subprocess.Popen, object, float], limit_s: float = 900) -> None:
    p, out, t0 = run
    try:
        p.wait(timeout=max(1.0, limit_s - (time.monotonic() - t0)))
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        raise
    out.seek(0)
    text = out.read()
    out.close()
    assert p.returncode == 0, text[-6000:]
    assert " passed" in text and " failed" not in text


def _simulate(marks: str) -> None:
    _simulate_finish(_simulate_start(marks))


_EARLY: dict = {}


def _start_early() -> None:
    """Called by tests/conftest.py once the selection is known: the simulator run (about 3.5
    minutes on one core, most of CI's longest test) then overlaps the rest of the suite."""
    _EARLY.setdefault("run", _simulate_start("not gpu and not slow"))


def _stop_early() -> None:
    run = _EARLY.pop("run", None)
    if run is not None and run[0].poll() is None:
        run[0].kill()
        run[0].wait()


@pytest.mark.skipif(SIM or MODE == "gpu", reason="this is the launcher of the simulator run")
@pytest.mark.background(_start_early, _stop_early)
def test_cuda_backend_under_the_simulator():
    run = _EARLY.pop("run", None)
    if run is None:                   # not started early (this file run without tests/conftest.py's hook)
        run = _simulate_start("not gpu and not slow")
    _simulate_finish(run)


@pytest.mark.slow
@pytest.mark.skipif(SIM or MODE == "gpu", reason="this is the launcher of the simulator run")
def test_cuda_backend_slow_cases_under_the_simulator():
    """The further cells and options of the cases above (the simulator runs each for 15-35 s)."""
    _simulate("not gpu and slow")
