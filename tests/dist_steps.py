"""Data-parallel steps at the backend level, in any float type, for tests/test_dist.py (not a
test module). The trainer keeps float32 weights; this runs the same per-rank work as
Trainer._train_step (its streams, global dropout masks, 1/(T*B) scaling, one all-reduce through
the backend's reduce_buffer/reduce_gradient, then
clipping and the update) on CpuBackend in float64 too.

`mpiexec -n N python tests/dist_steps.py DIR` writes rank 0's results for each cell and float
type as raw float64 files DIR/<cell>-<type>.bin and DIR/<cell>-<type>-norms.bin.
"""
import sys
from pathlib import Path

if __name__ == "__main__":   # an MPI rank: its share of the cores, set before NumPy loads
    from charrnn.threads import setup_threads
    setup_threads()
import numpy as np  # noqa: E402

from charrnn import dist  # noqa: E402
from charrnn.backends.cpu import CpuBackend  # noqa: E402
from charrnn.batches import Batches  # noqa: E402
from charrnn.model import init_params  # noqa: E402
from charrnn.optim import Optimizer  # noqa: E402
from tiny_models import tiny_config  # noqa: E402

CELLS = ("lstm", "gru", "lnlstm")     # lnlstm: the layer-normalised LSTM, with recurrent dropout and zoneout
CLIP = 0.05         # below every norm these steps reach: clipping acts on each step


def train(cell: str, comm=None, dtype=np.float64, steps: int = 20, B: int = 6, T: int = 12):
    """Weights after `steps` Adam steps and the gradient norm of each step."""
    codes = np.random.default_rng(5).integers(0, 11, 4000)
    cfg = tiny_config(vocab_size=11, hidden=12, layers=2, cell=cell.replace("ln", ""), embed=5, dropout=0.3,
                      norm="layer" if cell == "lnlstm" else "none",
                      recurrent_dropout=0.2 if cell == "lnlstm" else 0.0,
                      zoneout_cell=0.3 if cell == "lnlstm" else 0.0, zoneout_hidden=0.1 if cell == "lnlstm" else 0.0)
    be = CpuBackend(cfg, init_params(cfg, np.random.default_rng(1), dtype))
    bt = Batches(codes, B, T, share=(comm.rank, comm.size) if comm else (0, 1))
    n = be.p.flat.size
    packed = be.reduce_buffer(1)                          # gradient, then the loss: one buffer
    opt = Optimizer("adam", n, dtype)
    state = be.zero_state(bt.local_batch)
    norms = []
    for k in range(steps):
        x, y = bt.window(k)
        packed[n], state = be.train_step(x, y, state, 1000 + k, streams=(bt.lo, B))
        if comm:
            be.reduce_gradient(comm.allreduce_)
        norms.append(be.optimizer_step(opt, 1e-2, ("norm", CLIP)))
    return be.p.flat.copy(), np.array(norms)


if __name__ == "__main__":
    comm = dist.start(60)
    for cell in CELLS:
        for dt in (np.float64, np.float32):
            w, norms = train(cell, comm, dt)
            if comm is None or comm.is_root:
                key = f"{cell}-{np.dtype(dt).name}"
                w.astype(np.float64).tofile(Path(sys.argv[1]) / f"{key}.bin")
                norms.astype(np.float64).tofile(Path(sys.argv[1]) / f"{key}-norms.bin")
