"""Backends: the same contract on different hardware, chosen once per run. `Backend` states the
contract; CpuBackend (backends/cpu.py) and CudaBackend (backends/cuda.py) implement it, and the
training loop, sampler and evaluator only ever call what it names.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Protocol, runtime_checkable

from charrnn.errors import DeviceError, InputError

DEVICES = ("auto", "cpu", "cuda")     # --device of every command; the CLI reads them here (no NumPy)
DEFAULT_DEVICE = "auto"
WEIGHTS = ("f32", "bf16", "f16")      # --weights of sample and eval: 16-bit copies for the CPU (cpu_batch1.py)


@runtime_checkable
class Backend(Protocol):
    """A model's weights on one device and the computations on them. x, y: int codes (T, B);
    state: the carried hidden state (L, S, B, H) as the backend keeps it (a host array on the CPU,
    device memory on the GPU), made by zero_state and returned by every call that runs the model.
    The gradient of the last train_step lives with the backend; grad_host() copies it out."""

    name: str                 # "cpu" or "cuda"

    def train_step(self, x: Any, y: Any, state: Any, dropout_seed: int = 0,
                   streams: tuple[int, int] | None = None, noise: bool = True) -> tuple[float, Any]:
        """Summed loss and new state; the gradient of the mean loss (over `streams`' total
        (offset, batch) when data parallel) replaces the previous one. dropout_seed seeds the
        masks (charrnn/dropout.py); 0 with dropout off. noise=False: the model as it scores
        (dynamic evaluation's gradient): no masks, zoneout's expectation; a backend built from
        ModelConfig.scoring() has no dropout to leave out."""
        ...

    def loss(self, x: Any, y: Any, state: Any) -> tuple[float, Any]:
        """Summed loss and new state, no gradient, dropout off."""
        ...

    def step(self, codes: Any, state: Any) -> tuple[Any, Any]:
        """One step for sampling: logits (B, V) on the host and the new state."""
        ...

    def generate(self, prime_codes: Any, dec: Any, state: Any = None) -> Iterator[tuple[Any, Any]]:
        """The compiled sampling loop for a decoding.Decoding with no top-p and no stop string
        (Decoding.own_loop_ok; sample.stream runs it then): per step (codes (batch,),
        log-probabilities (batch,)) for dec.length steps (0: endless), row i drawing from PCG64
        seeded dec.seed + i, from `state` after prime_codes[:-1] (None: the prime is fed here)."""
        ...

    def warm_up(self, T: int, B: int, opt: Any) -> None:
        """Compile (or load from the cache) now every kernel a training run of T x B windows
        with `opt` takes, rather than on first use (data parallel: one rank per node at a time)."""
        ...

    def reduce_buffer(self, extra: int) -> Any:
        """Data parallel: a host array of the gradient's size plus `extra` places for the caller
        (the loss, timings, signals), which one all-reduce sums over the ranks; made once and
        returned, and the one reduce_gradient hands to the reduction from then on."""
        ...

    def reduce_gradient(self, reduce: Callable[[Any], None]) -> None:
        """Sum the last train_step's gradient over the ranks: the gradient goes into the head of
        reduce_buffer's array (where it is not computed there already), reduce(array) sums the
        whole array in place, and the sum becomes the gradient optimizer_step uses."""
        ...

    def optimizer_step(self, opt: Any, lr: float, clip: tuple[str, float]) -> float:
        """Clip the gradient and update the weights in place with `opt` (optim.Optimizer) at
        rate lr; returns the gradient's global norm before clipping."""
        ...

    def params_host(self) -> Any:
        """The weights as host float32 Params (for checkpoints, snapshots and diagnostics)."""
        ...

    def grad_host(self) -> Any:
        """The last gradient as host Params."""
        ...

    def set_params(self, flat: Any) -> None:
        """Replace the weights with a host float32 flat buffer in Params' layout (dynamic
        evaluation moves them between windows; charrnn/dynamic.py)."""
        ...

    def zero_state(self, batch: int) -> Any:
        """The all-zero carried state for `batch` streams."""
        ...


def cuda_available() -> bool:
    """True when numba.cuda imports and sees a GPU (or the simulator is on). Never raises."""
    try:
        from numba import cuda
        return bool(cuda.is_available())
    except Exception:
        return False


def resolve_device(device: str) -> str:
    """auto -> cuda when a GPU is usable, else cpu; cuda without one raises DeviceError."""
    if device not in DEVICES:
        raise DeviceError(f"unknown device {device!r} (choose from {', '.join(DEVICES)})")
    if device == "cpu":
        return "cpu"
    ok = cuda_available()
    if device == "cuda" and not ok:
        raise DeviceError("--device cuda: no usable CUDA GPU found (numba.cuda.is_available() is false)")
    if ok:
        try:
            from charrnn.backends import cuda as _  # noqa: F401
        except ImportError:
            if device == "cuda":
                raise DeviceError("--device cuda: this build has no CUDA backend")
            return "cpu"
        return "cuda"
    return "cpu"


def cpu_only(cfg, weights: str = "f32") -> bool:
    """Whether a model runs on the CPU backend only (so `--device auto` picks it): 16-bit weights,
    or a layer-normalised LSTM, which the CUDA kernels do not have yet."""
    return weights != "f32" or cfg.norm != "none"


def pick_device(name: str, tell: Callable[[str], None], announce: bool = True) -> str:
    """Resolve --device; `auto` says what it picked (with announce=False only when it is not the
    CPU, so a plain `charrnn sample | head` keeps stderr empty)."""
    dev = resolve_device(name)
    if name == "auto" and (announce or dev != "cpu"):
        tell(f"device: {dev}")
    return dev


def compile_notices(tell: Callable[[str], None]) -> Callable[[str], None]:
    """A backend `notify` that speaks only once Numba really compiles. The CPU backend's notices
    are timed (0.7 s), and loading cached kernels on a busy machine can take that long, which must
    not put "compiling" on the stderr of `charrnn sample | head`. A notice held back is said when
    the first compilation starts; Numba raises no compile event for a cache hit."""
    try:
        from numba.core import event
    except Exception:                          # no event API: say everything, as before
        return tell
    held: list[str] = []
    compiling = []

    class _Listener(event.Listener):
        def on_start(self, ev):
            if not compiling:
                compiling.append(True)
                for msg in held:
                    tell(msg)
                held.clear()

        def on_end(self, ev):
            pass

    event.register("numba:compile", _Listener())

    def notify(msg: str) -> None:
        if compiling:
            tell(msg)
        elif not msg.startswith("kernels ready"):   # nothing compiled: the 'ready' notice is moot
            held[:] = [msg]
    return notify


def make_backend(device: str, cfg, params, notify: Callable[[str], None] | None = None, weights: str = "f32"):
    """Build the backend for an already-resolved device ('cpu' or 'cuda'). weights: one of
    WEIGHTS; the 16-bit ones (sampling and evaluation only) run on the CPU, for LSTM models."""
    if weights != "f32":
        if device == "cuda":
            raise InputError(f"--weights {weights} runs on the CPU: give --device cpu")
        if cfg.cell != "lstm":
            raise InputError(f"--weights {weights} is for LSTM models; this one is a {cfg.cell.upper()}")
        if cfg.norm != "none":
            raise InputError(f"--weights {weights} is for LSTM models without layer normalisation; "
                             "this one has it: leave --weights out")
    if device == "cuda":
        if cfg.norm != "none":
            raise InputError("layer normalisation (norm 'layer') runs on the CPU backend only for now: "
                             "give --device cpu")
        from charrnn.backends.cuda import CudaBackend
        return CudaBackend(cfg, params, notify=notify)
    from charrnn.backends.cpu import CpuBackend
    try:
        return CpuBackend(cfg, params, notify=notify, weights=weights)
    except ValueError as e:                  # f16 out of range
        raise InputError(str(e)) from None
