"""charrnn: character-level RNN text generation (LSTM, GRU, RNN) in NumPy and Numba.

Importing the package (or any module of it) changes nothing global. A process that wants
CHARRNN_THREADS honoured calls charrnn.threads.setup_threads() before NumPy loads, as the
commands do.
"""

__version__ = "0.1.0"
