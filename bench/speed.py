"""CPU speed, charrnn against PyTorch on the same machine in the same run (issue 4).

For each configuration and thread count, two worker processes are started side by side, one per
library (so each one's peak RSS is its own), and the parent asks them for timed windows in turn:
charrnn, PyTorch, charrnn, PyTorch, ... with a short pause between windows so one side's idle
spinning threads never steal the other's cores. Reported: median chars/s over the windows, with
min and max, after warm-up. Without PyTorch installed the charrnn side still runs and the table
says what was skipped.

    python bench/speed.py                       # the full run (~10-15 min on 2 cores)
    python bench/speed.py --quick --configs a   # a smoke run while iterating
    python bench/speed.py --write               # also replace the "CPU speed" section of bench/RESULTS.md
    python bench/speed.py --native-blas         # let OpenBLAS pick its kernels by CPUID (see below)
    python bench/speed.py --threads 2 --cell gru   # the same sizes as GRUs, against nn.GRU (or rnn: nn.RNN)

Some machines set OPENBLAS_CORETYPE (and OPENBLAS_L2_SIZE) in the environment, because old
OpenBLAS builds crashed on their CPUs; on an AVX-512 CPU that pins NumPy's current OpenBLAS to
its AVX2 ("Haswell") kernels, about half the speed of its AVX-512 ones. `--native-blas` drops
both variables for the processes this script starts, and the report names the kernels that ran.

Metrics: training (forward, backward, clip by global norm 5, Adam; truncated BPTT with the
state carried and detached), evaluation (one stream, windows of 256, state carried),
sampling at batch 1 and 64 (config b only), peak RSS, first-call compile time with a cold
Numba cache, and the wall time of a warm-cache `charrnn sample --length 200` process.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VOCAB = 65
GATES = {"lstm": 4, "gru": 3, "rnn": 1}
CONFIGS = {  # name: (layers, hidden, T, B)
    "a": (2, 128, 50, 50),
    "b": (2, 512, 100, 64),
    "c": (3, 512, 100, 32),
    "d": (1, 256, 64, 128),
}
TARGETS = {("train", "a"): 1.5, ("train", "b"): 1.0, ("train", "c"): 1.0, ("train", "d"): 1.3,
           ("sample1", "b"): 6.0, ("sample64", "b"): 1.0}
FMA_PEAK_2C = 199.0  # GFLOP/s, 2 cores, from an FMA loop (issue 4; not this EPYC's, see sgemm_peak)
PINNED_BLAS_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
EVAL_WINDOW = 256
TEXT = 1 << 20          # evaluation text; a window reads at most half of it


def batch1_bytes_per_char(metric: str, layers: int, hidden: int, gates: int = 4, vocab: int = VOCAB,
                          word: int = 4) -> int:
    """Weight bytes (`word` bytes a weight) one character at batch 1 must read (issue 33): sampling reads every
    layer's recurrent and input matrix (layer 0's input is one row: one-hot) and the output layer
    per step; evaluation runs the input and output products over whole windows, so per character
    only the recurrent matrices are read again. At batch 1 these reads bound the speed."""
    G = gates * hidden
    recurrent = layers * hidden * G
    if metric == "eval":
        return word * recurrent
    return word * (recurrent + (layers - 1) * hidden * G + G + hidden * vocab)


def train_flops_per_char(layers: int, hidden: int, gates: int = 4) -> float:
    """Useful FLOPs of one training character: 3 products (forward, two in backward) of 2 FLOPs
    per multiply-add. The one-hot first layer is a row gather and counts nothing."""
    G = gates * hidden
    macs = sum((hidden * G if l > 0 else 0) + hidden * G for l in range(layers)) + hidden * VOCAB
    return 6.0 * macs


# ================================================================ workers (one library each)
class CharrnnSide:
    name = "charrnn"

    def __init__(self, layers, hidden, T, B, seed=0, cell="lstm", weights="f32"):
        try:                     # first: CHARRNN_THREADS must act before NumPy loads
            from charrnn.threads import setup_threads
            setup_threads()
        except ImportError:      # an older tree (ab_speed.py's `before`) maps it when charrnn is imported
            import charrnn  # noqa: F401
        import numpy as np
        from charrnn.backends.cpu import CpuBackend
        from charrnn.model import ModelConfig, init_params
        from charrnn.optim import Optimizer
        self.np = np
        self.cfg = ModelConfig(vocab_size=VOCAB, hidden=hidden, layers=layers, dropout=0.0, cell=cell)
        kw = {"weights": weights} if weights != "f32" else {}   # an older tree (ab_speed.py) has no weights
        self.be = CpuBackend(self.cfg, init_params(self.cfg, np.random.default_rng(seed)), **kw)
        self.opt = Optimizer("adam", self.be.p.flat.size, np.float32)
        self.T, self.B = T, B
        self.rng = np.random.default_rng(seed)
        self.state = self.be.zero_state(B)
        self.text = self.rng.integers(0, VOCAB, TEXT)

    def train(self, steps):
        np = self.np
        for _ in range(steps):
            xy = self.rng.integers(0, VOCAB, (self.T + 1, self.B))
            _, self.state = self.be.train_step(xy[:-1], xy[1:], self.state)
            self.be.optimizer_step(self.opt, 2e-3, ("norm", 5.0))
        return steps * self.T * self.B

    def eval(self, chars):
        from charrnn.evaluate import evaluate
        start = int(self.rng.integers(0, len(self.text) - chars - 1))
        evaluate(self.be, self.text[start:start + chars + 1], EVAL_WINDOW)
        return chars

    def sample(self, batch, steps):
        from charrnn.sample import Decoding, generate
        np = self.np
        for _ in generate(self.be, np.array([1]), Decoding(length=steps, batch=batch)):
            pass
        return batch * steps


class TorchSide:
    name = "pytorch"

    def __init__(self, layers, hidden, T, B, seed=0, cell="lstm"):
        import torch
        from torch import nn
        self.torch, self.nn = torch, nn
        torch.manual_seed(seed)
        self.kind = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}[cell]   # nn.RNN is tanh, as charrnn's
        self.net = getattr(nn, self.kind)(VOCAB, hidden, layers)
        self.lin = nn.Linear(hidden, VOCAB)
        self.params = list(self.net.parameters()) + list(self.lin.parameters())
        self.opt = torch.optim.Adam(self.params, lr=2e-3)
        self.T, self.B, self.L, self.H = T, B, layers, hidden
        self.state = self._zeros(B)
        self.gen = torch.Generator().manual_seed(seed)
        self.text = torch.randint(0, VOCAB, (TEXT,), generator=self.gen)
        Cell = getattr(nn, f"{self.kind}Cell")
        self.cells = nn.ModuleList(Cell(VOCAB if l == 0 else hidden, hidden) for l in range(layers))
        with torch.no_grad():
            for l, cell in enumerate(self.cells):
                for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    getattr(cell, kind).copy_(getattr(self.net, f"{kind}_l{l}"))
        self.variant = {}

    def _onehot(self, x):
        return self.torch.nn.functional.one_hot(x, VOCAB).float()

    def _zeros(self, batch):
        """nn.LSTM's state is (h, c); nn.GRU's and nn.RNN's is h."""
        z = self.torch.zeros(self.L, batch, self.H)
        return (z, z.clone()) if self.kind == "LSTM" else z

    def train(self, steps):
        torch, F = self.torch, self.torch.nn.functional
        with torch.backends.mkldnn.flags(enabled=True):
            for _ in range(steps):
                xy = torch.randint(0, VOCAB, (self.T + 1, self.B), generator=self.gen)
                out, state = self.net(self._onehot(xy[:-1]), self.state)
                loss = F.cross_entropy(self.lin(out).reshape(-1, VOCAB), xy[1:].reshape(-1))
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.params, 5.0)
                self.opt.step()
                self.state = tuple(s.detach() for s in state) if self.kind == "LSTM" else state.detach()
        return steps * self.T * self.B

    # -- evaluation: one stream, state carried; the faster of oneDNN on/off, chosen at warm-up
    def _eval_run(self, chars, onednn):
        torch, F = self.torch, self.torch.nn.functional
        start = int(torch.randint(0, len(self.text) - chars - 1, (1,), generator=self.gen))
        codes = self.text[start:start + chars + 1]
        state = self._zeros(1)
        total = 0.0
        with torch.inference_mode(), torch.backends.mkldnn.flags(enabled=onednn):
            for s in range(0, chars, EVAL_WINDOW):
                e = min(chars, s + EVAL_WINDOW)
                out, state = self.net(self._onehot(codes[s:e]).unsqueeze(1), state)
                total += float(F.cross_entropy(self.lin(out[:, 0]), codes[s + 1:e + 1], reduction="sum"))
        return chars

    def eval(self, chars):
        if "eval" not in self.variant:
            self.variant["eval"] = _fastest({f"onednn {'on' if v else 'off'}": (lambda v=v: self._eval_run(chars, v))
                                             for v in (True, False)})
        on = self.variant["eval"] == "onednn on"
        return self._eval_run(chars, on)

    # -- sampling: the fastest of LSTMCell, nn.LSTM oneDNN off, nn.LSTM default
    def _sample_run(self, batch, steps, how):
        torch = self.torch
        x = torch.ones(batch, dtype=torch.long)
        with torch.inference_mode():
            if how.endswith("Cell"):
                lstm = self.kind == "LSTM"
                hc = [(torch.zeros(batch, self.H), torch.zeros(batch, self.H)) if lstm else torch.zeros(batch, self.H)
                      for _ in range(self.L)]
                for _ in range(steps):
                    inp = self._onehot(x)
                    for l, cell in enumerate(self.cells):
                        hc[l] = cell(inp, hc[l])
                        inp = hc[l][0] if lstm else hc[l]
                    probs = torch.softmax(self.lin(inp), dim=1)
                    x = torch.multinomial(probs, 1, generator=self.gen)[:, 0]
            else:
                state = self._zeros(batch)
                with torch.backends.mkldnn.flags(enabled=how.endswith("oneDNN on")):
                    for _ in range(steps):
                        out, state = self.net(self._onehot(x).unsqueeze(0), state)
                        probs = torch.softmax(self.lin(out[0]), dim=1)
                        x = torch.multinomial(probs, 1, generator=self.gen)[:, 0]
        return batch * steps

    def sample(self, batch, steps):
        key = f"sample{batch}"
        if key not in self.variant:
            self.variant[key] = _fastest({how: (lambda how=how: self._sample_run(batch, max(steps // 4, 5), how))
                                          for how in (f"{self.kind}Cell", f"nn.{self.kind} oneDNN off",
                                                      f"nn.{self.kind} oneDNN on")})
        return self._sample_run(batch, steps, self.variant[key])


def _fastest(runs: dict) -> str:
    """Name of the fastest variant (each run twice, best of two)."""
    best = {}
    for name, fn in runs.items():
        rates = []
        for _ in range(2):
            t = time.perf_counter()
            n = fn()
            rates.append(n / (time.perf_counter() - t))
        best[name] = max(rates)
    return max(best, key=best.get)


def worker_main(side: str, spec: str) -> None:
    """Serve timed windows over stdin/stdout, one JSON object per line. spec: "layers,hidden,T,B"
    and optionally ",cell" (lstm, gru or rnn; LSTM without it)."""
    layers, hidden, T, B, *cell = spec.split(",")
    layers, hidden, T, B = int(layers), int(hidden), int(T), int(B)
    if side == "pytorch":
        import torch
        torch.set_num_threads(int(os.environ["BENCH_THREADS"]))
        w = TorchSide(layers, hidden, T, B, cell=cell[0] if cell else "lstm")
    else:                 # "charrnn" or "charrnn-bf16" / "charrnn-f16": 16-bit weights (sampling, eval)
        w = CharrnnSide(layers, hidden, T, B, cell=cell[0] if cell else "lstm",
                        weights=side.split("-")[1] if "-" in side else "f32")
    out = sys.stdout
    sys.stdout = sys.stderr  # nothing else may write on the protocol channel
    print(json.dumps({"ready": True}), file=out, flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "quit":
            break
        if cmd["op"] == "rss":
            import resource
            reply = {"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                     "variant": getattr(w, "variant", {})}
            if side == "charrnn":           # the 16-bit sides take the same paths but for batch 1
                from charrnn.backends.cpu_kernels import blas_core
                lanes = w.be._lanes_for(T, B)
                reply["variant"] = dict(reply["variant"], blas=f"OpenBLAS {blas_core()} kernels",
                                        train=f"{lanes} lanes, 1 BLAS thread each" if lanes > 1 else
                                        "1 lane, BLAS threads the products")
                b1 = getattr(w.be, "_batch1", None)       # cpu_batch1, when evaluation took it
                if b1 is not None:
                    rates = ", ".join(f"{p} worker(s) {r:,.0f} chars/s" for p, r in sorted(b1.pick.rate.items()))
                    reply["variant"]["eval B=1"] = f"cpu_batch1, up to {b1.parts} workers" + (
                        f" (last window: {rates})" if rates else "")
        else:
            t = time.perf_counter()
            n = getattr(w, cmd["op"])(*cmd["args"])
            reply = {"chars": n, "s": time.perf_counter() - t}
        print(json.dumps(reply), file=out, flush=True)


# ================================================================ the parent
NATIVE_BLAS = False   # --native-blas


def child_env(**extra: str) -> dict:
    """The environment of the processes started here: this one's, less the OpenBLAS pins
    under --native-blas, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not (NATIVE_BLAS and k in PINNED_BLAS_ENV)}
    env.update(extra)
    return env


class Worker:
    def __init__(self, side: str, cfg: tuple, threads: int):
        env = child_env(BENCH_THREADS=str(threads), CHARRNN_THREADS=str(threads),
                        OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        self.p = subprocess.Popen([sys.executable, __file__, "--worker", side, ",".join(map(str, cfg))],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        self.side = side
        self._read()

    def _read(self) -> dict:
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.side} worker died (see its stderr above)")
        return json.loads(line)

    def ask(self, op: str, *args) -> dict:
        self.p.stdin.write(json.dumps({"op": op, "args": args}) + "\n")
        self.p.stdin.flush()
        return self._read()

    def close(self) -> None:
        try:
            self.p.stdin.write('{"op": "quit"}\n')
            self.p.stdin.close()
        except BrokenPipeError:
            pass
        self.p.wait(timeout=60)


def have_torch() -> str | None:
    try:
        import importlib.metadata as md
        return md.version("torch")
    except Exception:
        return None


def measure(workers: list[Worker], op: str, args_for, windows: int, target_s: float, pause: float) -> dict:
    """Warm up, size each side's window to ~target_s, then alternate windows; rates in chars/s."""
    sizes = {}
    for w in workers:
        w.ask(op, *args_for(w, 1))                       # warm-up (first call, variant choice)
        r = w.ask(op, *args_for(w, 1))
        sizes[w.side] = max(1, round(target_s / r["s"]))
        time.sleep(pause)
    rates = {w.side: [] for w in workers}
    for _ in range(windows):
        for w in workers:
            r = w.ask(op, *args_for(w, sizes[w.side]))
            rates[w.side].append(r["chars"] / r["s"])
            time.sleep(pause)
    return rates


METRICS = ("train", "eval", "sample1", "sample64")


def run_config(name: str, threads: int, sides: list[str], quick: bool, cell: str = "lstm",
               metrics: tuple = METRICS) -> dict:
    layers, hidden, T, B = CONFIGS[name]
    windows, target, pause = (3, 0.3, 0.15) if quick else (5, 0.8, 0.25)
    ws = [Worker(s, (layers, hidden, T, B, cell), threads) for s in sides]
    res = {}
    try:
        if "train" in metrics and any("-" in w.side for w in ws):
            raise ValueError("--weights sides run evaluation and sampling only (--metrics eval,sample1)")
        if "train" in metrics:
            res["train"] = measure(ws, "train", lambda w, k: (k,), windows, target, pause)
        eval_chars = EVAL_WINDOW * 4
        if "eval" in metrics:
            res["eval"] = measure(ws, "eval", lambda w, k: (min(eval_chars * k, TEXT // 2),), windows, target / 2,
                                  pause)
        if name == "b":
            for batch in (b for b in (1, 64) if f"sample{b}" in metrics):
                res[f"sample{batch}"] = measure(ws, "sample", lambda w, k, b=batch: (b, 20 * k),
                                                windows, target / 2, pause)
        info = {w.side: w.ask("rss") for w in ws if "-" not in w.side}
        res["rss"] = {s: [i["rss_mb"]] for s, i in info.items()}
        res["variants"] = {s: i["variant"] for s, i in info.items() if i["variant"]}
    finally:
        for w in ws:
            w.close()
    return res


def compile_time(threads: int) -> dict:
    """Seconds from import to the first train step, loss and step having run, with a cold
    (fresh) and then a warm Numba cache, each in its own process."""
    code = ("import time; t=time.perf_counter()\n"
            "import numpy as np\n"
            "from charrnn.backends.cpu import CpuBackend\n"
            "from charrnn.model import ModelConfig, init_params\n"
            "from charrnn.optim import Optimizer\n"
            "cfg=ModelConfig(vocab_size=65, hidden=128, layers=2, dropout=0.0)\n"
            "be=CpuBackend(cfg, init_params(cfg, np.random.default_rng(0)))\n"
            "x=np.zeros((50,50),np.int64); s=be.zero_state(50)\n"
            "be.train_step(x,x,s); be.optimizer_step(Optimizer('adam', be.p.flat.size), 1e-3, ('norm',5.0))\n"
            "be.loss(x[:,:1],x[:,:1],be.zero_state(1)); be.step(x[0,:1], be.zero_state(1))\n"
            "print(time.perf_counter()-t)\n")
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        env = child_env(NUMBA_CACHE_DIR=cache, CHARRNN_THREADS=str(threads))
        for label in ("cold", "warm"):
            r = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True)
            if r.returncode:
                raise RuntimeError(r.stderr)
            out[label] = float(r.stdout.strip().splitlines()[-1])
    return out


def sgemm_peak(threads: int) -> float:
    """GFLOP/s of NumPy's float32 4096^3 product at this thread count (best of 5), in a process
    with the benchmark's environment: the practical ceiling of any training step here."""
    code = ("from charrnn.threads import setup_threads; setup_threads()\n"
            "import time, numpy as np\n"
            "a=np.ones((4096,4096),np.float32); c=a@a; best=1e9\n"
            "for _ in range(5):\n"
            "    t=time.perf_counter(); np.matmul(a,a,out=c); best=min(best,time.perf_counter()-t)\n"
            "print(2*4096**3/best/1e9)\n")
    r = subprocess.run([sys.executable, "-c", code], env=child_env(CHARRNN_THREADS=str(threads)), cwd=ROOT,
                       capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(r.stderr)
    return float(r.stdout.strip().splitlines()[-1])


def sample_wall(threads: int, runs: int) -> list[float]:
    """Wall seconds of whole `charrnn sample --length 200` processes on b's model, warm cache."""
    import numpy as np
    from charrnn import checkpoint as ckpt
    from charrnn.corpus import Vocab
    from charrnn.model import ModelConfig, init_params
    layers, hidden, _, _ = CONFIGS["b"]
    cfg = ModelConfig(vocab_size=VOCAB, hidden=hidden, layers=layers, dropout=0.0)
    chars = "\n" + "".join(chr(c) for c in range(32, 32 + VOCAB - 1))
    exe = shutil.which("charrnn", path=str(Path(sys.executable).parent))
    cmd = [exe] if exe else [sys.executable, "-m", "charrnn"]
    times = []
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "b.safetensors"
        ckpt.save(path, ckpt.Checkpoint(config=cfg, vocab=Vocab(chars=chars),
                                        params=init_params(cfg, np.random.default_rng(0))))
        env = child_env(CHARRNN_THREADS=str(threads))
        for i in range(runs + 1):                        # the first run warms the cache
            t = time.perf_counter()
            r = subprocess.run(cmd + ["sample", str(path), "--length", "200", "--seed", "1"],
                               env=env, cwd=d, capture_output=True)
            if r.returncode:
                raise RuntimeError(r.stderr.decode())
            if i:
                times.append(time.perf_counter() - t)
    return times


# ================================================================ the report
def fmt_rate(v: list[float]) -> str:
    med = statistics.median(v)
    if len(v) == 1:
        return f"{med:,.0f}"
    return f"{med:,.0f} ({min(v):,.0f}–{max(v):,.0f})"


def table(results: dict, torch_version: str | None, peaks: dict, cell: str = "lstm") -> str:
    rows = ["| config | threads | metric | charrnn, median (min–max) | PyTorch, median (min–max) | ratio | target |",
            "|---|---|---|---|---|---|---|"]
    labels = {"train": "train chars/s", "eval": "eval chars/s (B=1)", "sample1": "sample chars/s, B=1",
              "sample64": "sample chars/s, B=64", "rss": "peak RSS MB"}
    for (name, threads), res in results.items():
        layers, hidden, T, B = CONFIGS[name]
        desc = f"{name}: {layers}x{hidden} T{T} B{B}" + ("" if cell == "lstm" else f" {cell.upper()}")
        for metric in ("train", "eval", "sample1", "sample64", "rss"):
            if metric not in res:
                continue
            cr = res[metric].get("charrnn")
            pt = res[metric].get("pytorch")
            ratio = "–"
            if cr and pt:
                r = statistics.median(cr) / statistics.median(pt)
                ratio = f"{1 / r:.2f}x less" if metric == "rss" else f"{r:.2f}x"
            target = TARGETS.get((metric, name)) if threads == 2 and cell == "lstm" else None
            tgt = f"≥{target}x" if target else ("≤1x" if metric == "rss" and threads == 2 else "")
            if target and cr and pt:
                tgt += " ✓" if statistics.median(cr) / statistics.median(pt) >= target else " ✗"
            if metric == "rss" and cr and pt and threads == 2:
                tgt += " ✓" if cr[0] <= pt[0] else " ✗"
            pt_s = fmt_rate(pt) if pt else ("skipped (no torch)" if not torch_version else "–")
            label = labels[metric]
            if metric == "train" and cr:
                gf = statistics.median(cr) * train_flops_per_char(layers, hidden, GATES[cell]) / 1e9
                label += f"; charrnn {gf:.0f} GFLOP/s"
                if peaks.get(threads):
                    label += f" = {gf / peaks[threads]:.0%} of SGEMM peak {peaks[threads]:.0f}"
                if pt:
                    gp = statistics.median(pt) * train_flops_per_char(layers, hidden, GATES[cell]) / 1e9
                    label += f", PyTorch {gp:.0f}"
            if metric in ("eval", "sample1") and cr:
                per = batch1_bytes_per_char(metric, layers, hidden, GATES[cell])
                label += f"; {per / 1e6:.2f} MB of weights a character, charrnn {statistics.median(cr) * per / 1e9:.1f} GB/s"
                if pt:
                    label += f", PyTorch {statistics.median(pt) * per / 1e9:.1f}"
            rows.append(f"| {desc} | {threads} | {label} | {fmt_rate(cr) if cr else '–'} | {pt_s} | {ratio} | {tgt} |")
            for side in sorted(s for s in res[metric] if s.startswith("charrnn-") and metric != "rss"):
                v = res[metric][side]
                per = batch1_bytes_per_char(metric, layers, hidden, GATES[cell], word=2)
                vs32 = f"; {statistics.median(v) / statistics.median(cr):.2f}x float32" if cr else ""
                ratio16 = f"{statistics.median(v) / statistics.median(pt):.2f}x" if pt else "–"
                rows.append(f"| {desc} | {threads} | {labels[metric]}, {side[8:]} weights; {per / 1e6:.2f} MB a "
                            f"character, {statistics.median(v) * per / 1e9:.1f} GB/s{vs32} | {fmt_rate(v)} | "
                            f"{pt_s} | {ratio16} | |")
        for side, v in res.get("variants", {}).items():
            what = ", ".join(f"{k}: {x}" for k, x in v.items())
            cells = f"{what} | " if side == "charrnn" else f" | {what}"
            rows.append(f"| {desc} | {threads} | {side} paths chosen | {cells} | | |")
    return "\n".join(rows)


def machine() -> str:
    model = platform.processor() or "?"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        m = re.search(r"Model name:\s*(.+)", out)
        c = re.search(r"^CPU\(s\):\s*(\d+)", out, re.M)
        model = f"{m.group(1).strip()} ({c.group(1)} CPUs)" if m and c else model
    except OSError:
        pass
    return model


def versions(torch_version: str | None) -> str:
    import numba
    import numpy
    import charrnn
    return (f"charrnn {charrnn.__version__}, Python {platform.python_version()}, NumPy {numpy.__version__}, "
            f"Numba {numba.__version__}, PyTorch {torch_version or 'not installed'}")


def write_results(text: str) -> None:
    path = ROOT / "bench" / "RESULTS.md"
    start, end = "<!-- cpu-speed:start -->", "<!-- cpu-speed:end -->"
    block = f"{start}\n{text.strip()}\n{end}"
    old = path.read_text() if path.exists() else "# Benchmark results\n\nEach section is owned by the issue it names.\n"
    if start in old and end in old:
        new = old[:old.index(start)] + block + old[old.index(end) + len(end):]
    else:
        new = old.rstrip() + "\n\n" + block + "\n"
    path.write_text(new)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="a,b,c,d", help="comma-separated subset of a,b,c,d")
    ap.add_argument("--threads", default="2,1", help="comma-separated thread counts")
    ap.add_argument("--quick", action="store_true", help="fewer, shorter windows; no wall-time runs")
    ap.add_argument("--no-torch", action="store_true", help="run the charrnn side only")
    ap.add_argument("--cell", choices=tuple(GATES), default="lstm",
                    help="the configs' sizes with a GRU or RNN against nn.GRU / nn.RNN (targets are the LSTM's)")
    ap.add_argument("--write", action="store_true", help="replace the CPU speed section of bench/RESULTS.md")
    ap.add_argument("--native-blas", action="store_true",
                    help=f"drop {' and '.join(PINNED_BLAS_ENV)} for the benchmark's processes")
    ap.add_argument("--metrics", default=",".join(METRICS),
                    help="comma-separated subset of " + ",".join(METRICS) + " (sampling runs on config b only)")
    ap.add_argument("--weights", default="",
                    help="comma-separated bf16,f16: also time charrnn with 16-bit weights (eval and sample1 only)")
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return worker_main(*a.worker)
    if a.write and a.cell != "lstm":
        ap.error("--write replaces the LSTM's section; give --cell only without it")
    global NATIVE_BLAS
    NATIVE_BLAS = a.native_blas
    configs = [c for c in a.configs.split(",") if c]
    bad = [c for c in configs if c not in CONFIGS]
    if bad:
        ap.error(f"unknown config {bad[0]!r} (choose from {', '.join(CONFIGS)})")
    threads = [int(t) for t in a.threads.split(",")]
    metrics = tuple(m for m in a.metrics.split(",") if m)
    if any(m not in METRICS for m in metrics):
        ap.error(f"unknown metric in {a.metrics!r} (choose from {', '.join(METRICS)})")
    torch_version = None if a.no_torch else have_torch()
    sixteen = [w for w in a.weights.split(",") if w]
    if any(w not in ("bf16", "f16") for w in sixteen):
        ap.error("--weights takes bf16 and/or f16")
    sides = ["charrnn"] + [f"charrnn-{w}" for w in sixteen] + (["pytorch"] if torch_version else [])
    if not torch_version:
        print("PyTorch not installed (pip install torch==2.13.0): its side is skipped", file=sys.stderr)
    t0 = time.perf_counter()
    load0 = os.getloadavg()[0]
    peaks = {n: sgemm_peak(n) for n in threads}
    peaks_text = ", ".join(f"{v:.0f} GFLOP/s at {n} thread(s)" for n, v in peaks.items())
    print(f"SGEMM 4096^3 peak: {peaks_text}", file=sys.stderr)
    pinned = {k: os.environ[k] for k in PINNED_BLAS_ENV if k in os.environ}
    if NATIVE_BLAS or not pinned:
        blas_env = "OpenBLAS chose its kernels by CPUID" + (f" ({', '.join(pinned)} dropped by --native-blas)"
                                                             if pinned else "")
    else:
        blas_env = "OpenBLAS kernels pinned by " + ", ".join(f"{k}={v}" for k, v in pinned.items())
    results = {}
    for n in threads:
        for c in configs:
            print(f"config {c}, {n} thread(s)...", file=sys.stderr, flush=True)
            results[(c, n)] = run_config(c, n, sides, a.quick, a.cell, metrics)
            print(table({(c, n): results[(c, n)]}, torch_version, peaks, a.cell), file=sys.stderr, flush=True)
    extra = []
    if not a.quick:
        print("compile time and sample wall time...", file=sys.stderr, flush=True)
        ct = compile_time(threads[0])
        walls = sample_wall(threads[0], 3)
        extra = [f"- First call (import, build, first train step + loss + step on config a), cold Numba cache: "
                 f"{ct['cold']:.1f} s; warm cache: {ct['warm']:.2f} s.",
                 f"- Warm-cache `charrnn sample --length 200` on b's model (2x512), whole process wall time, "
                 f"{threads[0]} threads: median {statistics.median(walls):.2f} s "
                 f"(min {min(walls):.2f}, max {max(walls):.2f}; target ≤ 1.5 s)."]
    cmd = "flock /tmp/charrnn-cpu.lock .venv/bin/python bench/speed.py " + " ".join(sys.argv[1:])
    out = "\n".join([
        "## CPU speed (issue 4)", "",
        f"Produced by `{cmd.strip()}` on {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
        f"{time.perf_counter() - t0:.0f} s; load average {load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the "
        "end (the machine is shared: other work runs beside the benchmark).",
        f"Machine: {machine()}. {versions(torch_version)}.",
        f"BLAS: {blas_env}; the kernels that ran are in each config's \"paths chosen\" row. SGEMM peak "
        f"(NumPy float32 4096^3, best of 5, same environment): {peaks_text}"
        f" (issue 4 assumed a {FMA_PEAK_2C:.0f} GFLOP/s 2-core FMA peak).",
        f"Vocabulary 65, one-hot input, {a.cell.upper()}, Adam, clip by global norm 5, float32. Ratios are charrnn / PyTorch "
        "from the same run (windows alternated); targets apply at 2 threads. GFLOP/s counts the useful "
        "multiply-adds of a training character (one-hot gather excluded), 2 FLOPs each.", "",
        table(results, torch_version, peaks, a.cell), "", *extra])
    print(out)
    if a.write:
        write_results(out)


if __name__ == "__main__":
    main()
