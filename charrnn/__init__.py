"""charrnn: character-level RNN text generation (LSTM, GRU, RNN) in NumPy and Numba."""

import os as _os

__version__ = "0.1.0"

# Numba's OpenMP pool and OpenBLAS's pool both spin while idle; on a small machine two
# spinning pools slow each other by 30x. Until the CPU backend schedules its own threads,
# let BLAS own the cores and run the pointwise kernels on the calling thread.
_os.environ.setdefault("NUMBA_NUM_THREADS", "1")
