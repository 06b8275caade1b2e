"""charrnn: character-level RNN text generation (LSTM, GRU, RNN) in NumPy and Numba."""

import os as _os

__version__ = "0.1.0"

# CHARRNN_THREADS=n sets how many cores the CPU backend uses. It must act before NumPy and
# Numba load, hence here. BLAS or charrnn's own lanes (backends/lanes.py) own the cores, never
# Numba's parallel pool: a second spinning pool (Numba's OpenMP) beside OpenBLAS's slowed both
# by up to 30x on a 2-core machine.
_threads = _os.environ.get("CHARRNN_THREADS", "").strip()
if _threads.isdigit() and int(_threads) > 0:
    _os.environ["OPENBLAS_NUM_THREADS"] = _threads
else:   # an MPI rank shares its node: its share of the cores (charrnn/dist.py), read from the environment
    from charrnn.dist import blas_threads_for as _for, detect as _detect
    _share = _for(_detect())
    if _share:
        _os.environ.setdefault("OPENBLAS_NUM_THREADS", str(_share))
_os.environ.setdefault("NUMBA_NUM_THREADS", "1")
