"""Backends: the same contract on different hardware, chosen once per run.

A backend owns the parameter buffer it computes with and offers:
    train_step(x, y, state, dropout_seed) -> (loss_sum, new_state)   gradients of the mean loss into .grad
    loss(x, y, state) -> (loss_sum, new_state)                        no gradients, dropout off
    step(codes, state) -> (logits (B, V), new_state)                  one step, for sampling
    optimizer_step(opt, lr, clip) -> grad_norm                        clip and update, in place
    params_host() -> Params                                           weights as host float32, for checkpoints
and may offer its own sampling loop, which sample.stream() runs when the options allow (no top-p,
no stop string):
    generate(prime_codes, length, temp, seed, top_k, batch=, state=) -> per step (codes (B,), log-probs (B,))
The training loop, sampler and evaluator only ever call these.
"""
from __future__ import annotations

from typing import Callable

import numpy as _np

from charrnn.errors import DeviceError

# numba-cuda releases up to at least 0.2x register an overload for np.row_stack, which NumPy 2.4
# removed; without the alias their first kernel compile fails with AttributeError. Harmless
# elsewhere: it only names an existing function.
if not hasattr(_np, "row_stack"):
    _np.row_stack = _np.vstack

DEVICES = ("auto", "cpu", "cuda")


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


def make_backend(device: str, cfg, params, notify: Callable[[str], None] | None = None):
    """Build the backend for an already-resolved device ('cpu' or 'cuda')."""
    if device == "cuda":
        from charrnn.backends.cuda import CudaBackend
        return CudaBackend(cfg, params, notify=notify)
    from charrnn.backends.cpu import CpuBackend
    return CpuBackend(cfg, params, notify=notify)
