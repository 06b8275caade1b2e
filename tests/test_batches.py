"""charrnn/batches.py: the training windows, each stream continuing where it left off."""
import numpy as np

from charrnn.batches import Batches


def test_windows_continue_each_stream_so_state_can_carry():
    b = Batches(np.arange(1001), batch=4, seq_len=10)
    x0, y0 = b.window(0)
    x1, _ = b.window(1)
    assert x0.shape == (10, 4)
    assert np.array_equal(x1[0], x0[-1] + 1)          # row b of window 1 continues row b of window 0
    assert np.array_equal(y0, x0 + 1)


def test_short_split_shrinks_batch_then_length_with_a_warning():
    warnings = []
    b = Batches(np.arange(30), batch=8, seq_len=10, warn=warnings.append)
    assert (b.batch, b.seq_len) == (2, 10) and warnings
    b = Batches(np.arange(6), batch=8, seq_len=10, warn=warnings.append)
    assert (b.batch, b.seq_len) == (1, 5)
