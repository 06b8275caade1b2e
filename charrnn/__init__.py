"""charrnn: character-level RNN text generation (LSTM, GRU, RNN) in NumPy and Numba."""

__version__ = "0.1.0"
