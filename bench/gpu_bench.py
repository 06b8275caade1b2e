"""GPU timings for issue 5: charrnn's CUDA backend against PyTorch on the same shapes, same run.

    PYTHONPATH=. python bench/gpu_bench.py --json $OUT/gpu_bench.json
    NUMBA_ENABLE_CUDASIM=1 PYTHONPATH=. python bench/gpu_bench.py --smoke --json /tmp/smoke.json

Times (wall clock, device synchronised, after warm-up; each is the median of --repeats runs):
  - training: train_step + Adam with norm clipping on an LSTM (2x512, T 100, B 64, vocabulary 65),
    the loss scalar read back every step, against torch.nn.LSTM (cuDNN) + Linear + cross-entropy
    + Adam + clip_grad_norm_, also reading loss.item() every step; PyTorch both with its default
    (TF32 allowed in cuDNN) and in strict float32, since charrnn's kernels are plain float32;
  - sampling at batch 1 and 64: CudaBackend.generate (all on the device, codes home in chunks)
    against PyTorch's eager per-step loop (LSTM step, Linear, softmax, multinomial), with the code
    read back every step (.item()/.cpu(), as a streaming sampler does) and without;
  - the generic contract path at batch 1 (backend.step + host-side draw, as sample.py uses it).
--smoke: tiny shapes, a few steps; runs under the CUDA simulator, PyTorch on the CPU if present.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np


def _sync():
    from numba import cuda
    cuda.synchronize()


def _median_rate(fn, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


# ---------------------------------------------------------------- charrnn
def charrnn_train(V, H, L, T, B, steps, repeats, persistent=None):
    from charrnn.backends.cuda import CudaBackend
    from charrnn.model import ModelConfig, init_params
    from charrnn.optim import Optimizer
    cfg = ModelConfig(vocab_size=V, hidden=H, layers=L, dropout=0.0)
    be = CudaBackend(cfg, init_params(cfg, np.random.default_rng(0)))
    if persistent is not None and hasattr(be, "persistent"):
        be.persistent = persistent and be.persistent
    opt = Optimizer("adam", be.w.shape[0])
    r = np.random.default_rng(1)
    windows = [r.integers(0, V, (T + 1, B)) for _ in range(4)]
    st = {"state": be.zero_state(B), "i": 0, "loss": 0.0}

    def run(n):
        for _ in range(n):
            w = windows[st["i"] % len(windows)]
            st["i"] += 1
            st["loss"], st["state"] = be.train_step(w[:-1], w[1:], st["state"], 0)
            be.optimizer_step(opt, 2e-3, ("norm", 5.0))
        _sync()

    run(1)                                   # compile / warm up
    med, times = _median_rate(lambda: run(steps), repeats)
    def forward_only():
        for _ in range(steps):
            be.loss(windows[0][:-1], windows[0][1:], st["state"])
        _sync()
    fwd_med, _ = _median_rate(forward_only, repeats)
    return {"chars_per_s": steps * T * B / med, "ms_per_step": 1e3 * med / steps,
            "forward_only_ms_per_window": 1e3 * fwd_med / steps, "last_loss_per_char": st["loss"] / (T * B),
            "runs_s": times, "persistent": bool(getattr(be, "persistent", False))}


def charrnn_sample(V, H, L, B, n, repeats):
    from charrnn.backends.cuda import CudaBackend
    from charrnn.model import ModelConfig, init_params
    from charrnn.sample import Decoding
    cfg = ModelConfig(vocab_size=V, hidden=H, layers=L, dropout=0.0)
    be = CudaBackend(cfg, init_params(cfg, np.random.default_rng(0)))
    prime = np.array([0, 1, 2])

    def run(k):
        for _ in be.generate(prime, Decoding(length=k, batch=B), chunk=256):
            pass
    run(min(8, n))
    med, times = _median_rate(lambda: run(n), repeats)
    return {"chars_per_s": n * B / med, "us_per_step": 1e6 * med / n, "runs_s": times}


def charrnn_sample_path(V, H, L, n, repeats):
    """What `charrnn sample` runs at batch 1: sample.generate -> sample.stream, which takes the
    backend's own loop when it can (no top-p, no stop string). Until commit 543e009 this was
    step() plus a host-side draw (908 chars/s on the H200)."""
    from charrnn.backends.cuda import CudaBackend
    from charrnn.model import ModelConfig, init_params
    from charrnn.sample import Decoding, generate
    cfg = ModelConfig(vocab_size=V, hidden=H, layers=L, dropout=0.0)
    be = CudaBackend(cfg, init_params(cfg, np.random.default_rng(0)))

    def run(k):
        for _ in generate(be, np.array([0, 1]), Decoding(length=k)):
            pass
    run(2)
    med, times = _median_rate(lambda: run(n), repeats)
    return {"chars_per_s": n / med, "us_per_step": 1e6 * med / n, "runs_s": times}


def gemm_variants(shapes, variants, repeats):
    """Each tile shape of the GEMM on the training window's products: error against NumPy in
    float64 on fresh random inputs, then median time and TFLOP/s. Data for choosing TILES."""
    from numba import cuda
    from charrnn.backends import cuda_gemm as K
    from charrnn.backends.cuda import prepare_numba
    prepare_numba()                  # what a backend sets before its first compile
    r = np.random.default_rng(7)
    out = {}
    for name, (M, N, Kd, ta, tb) in shapes.items():
        A = r.standard_normal((Kd, M) if ta else (M, Kd)).astype(np.float32)
        B = r.standard_normal((N, Kd) if tb else (Kd, N)).astype(np.float32)
        ref = (A.T if ta else A).astype(np.float64) @ (B.T if tb else B).astype(np.float64)
        dA, dB, dummy = cuda.to_device(A), cuda.to_device(B), cuda.to_device(np.zeros(1, np.float32))
        for tiles in variants:
            kern, (TM, TN), threads = K.make_gemm(*tiles)
            grid = ((N + TN - 1) // TN, (M + TM - 1) // TM)
            dC = cuda.to_device(np.full((M, N), np.nan, np.float32))       # poisoned: every element must be written
            launch = lambda: kern[grid, threads](dA, dB, dC, ta, tb, np.float32(0), dummy, 0)  # noqa: E731
            launch()
            _sync()
            C = dC.copy_to_host()
            err = float(np.linalg.norm(C - ref) / np.linalg.norm(ref))

            def run():
                for _ in range(10):
                    launch()
                _sync()
            med, _ = _median_rate(run, repeats)
            out[f"{name} {'x'.join(map(str, tiles))}"] = {
                "rel_err": err, "us": 1e6 * med / 10, "tflops": 2 * M * N * Kd * 10 / med / 1e12, "blocks": grid[0] * grid[1]}
    return out


# ---------------------------------------------------------------- PyTorch
def _torch():
    try:
        import torch
        return torch
    except Exception:
        return None


def torch_train(torch, dev, V, H, L, T, B, steps, repeats, tf32):
    import torch.nn.functional as F
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(V, H, L).to(dev)
    head = torch.nn.Linear(H, V).to(dev)
    params = list(lstm.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=2e-3)
    r = np.random.default_rng(1)
    windows = [r.integers(0, V, (T + 1, B)) for _ in range(4)]
    st = {"h": (torch.zeros(L, B, H, device=dev), torch.zeros(L, B, H, device=dev)), "i": 0, "loss": 0.0}

    def sync():
        if dev == "cuda":
            torch.cuda.synchronize()

    def run(n):
        for _ in range(n):
            w = torch.from_numpy(windows[st["i"] % len(windows)]).to(dev)
            st["i"] += 1
            x = F.one_hot(w[:-1], V).float()
            out, (h, c) = lstm(x, st["h"])
            loss = F.cross_entropy(head(out).reshape(-1, V), w[1:].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 5.0)
            opt.step()
            st["h"] = (h.detach(), c.detach())
            st["loss"] = loss.item()
        sync()
    run(1)
    med, times = _median_rate(lambda: run(steps), repeats)
    return {"chars_per_s": steps * T * B / med, "ms_per_step": 1e3 * med / steps, "last_loss_per_char": st["loss"],
            "runs_s": times, "tf32": tf32, "cudnn": bool(dev == "cuda" and torch.backends.cudnn.is_available())}


def torch_sample(torch, dev, V, H, L, B, n, repeats, per_step_readback):
    import torch.nn.functional as F
    torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(V, H, L).to(dev)
    head = torch.nn.Linear(H, V).to(dev)

    def sync():
        if dev == "cuda":
            torch.cuda.synchronize()

    @torch.no_grad()
    def run(k):
        hc = (torch.zeros(L, B, H, device=dev), torch.zeros(L, B, H, device=dev))
        code = torch.zeros(B, dtype=torch.long, device=dev)
        for _ in range(k):
            out, hc = lstm(F.one_hot(code, V).float().view(1, B, V), hc)
            probs = torch.softmax(head(out[0]) / 1.0, dim=-1)
            code = torch.multinomial(probs, 1).view(B)
            if per_step_readback:
                code.cpu()
        sync()
    run(min(8, n))
    med, times = _median_rate(lambda: run(n), repeats)
    return {"chars_per_s": n * B / med, "us_per_step": 1e6 * med / n, "runs_s": times,
            "per_step_readback": per_step_readback}


# ---------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    if a.smoke:
        V, H, L, T, B, steps, n1, n64, B64, reps = 5, 2, 1, 2, 2, 1, 2, 1, 2, 1
    else:
        V, H, L, T, B, steps, n1, n64, B64, reps = 65, 512, 2, 100, 64, 20, 2000, 300, 64, a.repeats
    from numba import cuda
    sim = bool(getattr(__import__("numba.core.config", fromlist=["x"]), "ENABLE_CUDASIM", 0))
    gpu = "CUDA simulator" if sim else cuda.get_current_device().name
    gpu = gpu.decode() if isinstance(gpu, bytes) else str(gpu)
    res = {"gpu": gpu, "config": {"vocab": V, "hidden": H, "layers": L, "seq_len": T, "batch": B,
                                  "train_steps_timed": steps, "sample_len_b1": n1, "sample_len_b64": n64,
                                  "repeats": reps}, "charrnn": {}, "torch": {}}

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    def attempt(where, key, fn):
        t0 = time.perf_counter()
        try:
            where[key] = fn()
            log(f"{key}: {json.dumps({k: v for k, v in where[key].items() if k != 'runs_s'})} "
                f"({time.perf_counter() - t0:.1f} s)")
        except Exception as e:                      # one failing measurement must not lose the others
            where[key] = {"error": f"{type(e).__name__}: {e}"}
            log(f"{key}: FAILED {type(e).__name__}: {e}")

    c, t = res["charrnn"], res["torch"]
    attempt(c, "train", lambda: charrnn_train(V, H, L, T, B, steps, reps))
    attempt(c, "train_per_step_kernels", lambda: charrnn_train(V, H, L, T, B, steps, reps, persistent=False))
    attempt(c, "sample_b1", lambda: charrnn_sample(V, H, L, 1, n1, reps))
    attempt(c, f"sample_b{B64}", lambda: charrnn_sample(V, H, L, B64, n64, reps))
    attempt(c, "sample_path_b1", lambda: charrnn_sample_path(V, H, L, n1, reps))
    GH, N = 4 * H, T * B
    shapes = {"input xW": (N, GH, H, 0, 0), "dWh h^T dA": (H, GH, N, 1, 0), "dinp dA W^T": (N, H, GH, 0, 1),
              "step hWh": (B, GH, H, 0, 0)}
    variants = [(64, 64, 16, 4, 4), (32, 32, 32, 2, 2), (128, 64, 16, 8, 4), (64, 64, 32, 4, 4)]
    if a.smoke:
        variants = [(8, 8, 4, 2, 2)]
    attempt(c, "gemm_variants", lambda: gemm_variants(shapes, variants, reps))
    torch = _torch()
    if torch is None:
        res["torch"] = {"skipped": "PyTorch is not installed here"}
    else:
        dev = "cuda" if torch.cuda.is_available() else "cpu"
        res["torch_device"] = dev if dev == "cpu" else torch.cuda.get_device_name(0)
        attempt(t, "train_default_tf32", lambda: torch_train(torch, dev, V, H, L, T, B, steps, reps, True))
        attempt(t, "train_strict_fp32", lambda: torch_train(torch, dev, V, H, L, T, B, steps, reps, False))
        attempt(t, "sample_b1_eager_readback", lambda: torch_sample(torch, dev, V, H, L, 1, n1, reps, True))
        attempt(t, "sample_b1_eager_no_readback", lambda: torch_sample(torch, dev, V, H, L, 1, n1, reps, False))
        attempt(t, f"sample_b{B64}_eager_readback", lambda: torch_sample(torch, dev, V, H, L, B64, n64, reps, True))

    def ratio(x, y):
        try:
            return c[x]["chars_per_s"] / t[y]["chars_per_s"]
        except (KeyError, TypeError, ZeroDivisionError):
            return None
    res["ratios"] = {
        "train_vs_cudnn_default": ratio("train", "train_default_tf32"),
        "train_vs_cudnn_strict_fp32": ratio("train", "train_strict_fp32"),
        "sample_b1_vs_eager_readback": ratio("sample_b1", "sample_b1_eager_readback"),
        "sample_b1_vs_eager_no_readback": ratio("sample_b1", "sample_b1_eager_no_readback"),
        f"sample_b{B64}_vs_eager_readback": ratio(f"sample_b{B64}", f"sample_b{B64}_eager_readback"),
    }
    with open(a.json, "w") as f:
        json.dump(res, f, indent=1)
    log("ratios: " + json.dumps(res["ratios"]))
    print(json.dumps({"gpu": gpu, "ratios": res["ratios"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
