"""Will it fit (charrnn/memory.py): the weight count without allocating, and refusals that carry
the estimate, judged against the memory available."""
import dataclasses

import pytest

from charrnn import memory
from charrnn.errors import InputError
from charrnn.model import n_params
from charrnn.options import TrainOptions
from tiny_models import tiny_config


@pytest.mark.parametrize("kw", [dict(cell="lstm", layers=1), dict(cell="gru", layers=3), dict(cell="rnn", layers=2),
                                dict(cell="lstm", layers=4, embed=5)])
def test_the_weight_count_matches_the_sizes_table_without_building_it(kw):
    cfg = tiny_config(vocab_size=11, hidden=7, **kw)
    assert memory.n_weights(cfg) == n_params(cfg)
    huge = dataclasses.replace(cfg, hidden=10 ** 10, layers=900)      # Python integers: no overflow, no list
    assert memory.n_weights(huge) > 10 ** 20


def test_a_run_that_cannot_fit_is_refused_with_its_estimate(monkeypatch):
    cfg = tiny_config(vocab_size=65, hidden=256, layers=2)
    opts = TrainOptions.from_dict({"seq_len": 50, "batch_size": 50, "device": "cpu"})
    need = memory.training_bytes(cfg, 50 * 50, 1, 2)
    assert need > 4 * memory.n_weights(cfg) * 5          # weights, gradient, 2 slots, snapshot, activations
    monkeypatch.setattr(memory, "available_bytes", lambda: need - 1)
    with pytest.raises(InputError, match=r"--hidden 256, --layers 2.*need about [\d.]+ MB of memory and [\d.]+ MB "
                                         r"is available"):
        memory.check_training(cfg, opts, 2, 10 ** 6)
    monkeypatch.setattr(memory, "available_bytes", lambda: need)
    memory.check_training(cfg, opts, 2, 10 ** 6)
    monkeypatch.setattr(memory, "available_bytes", lambda: need - 1)
    memory.check_training(cfg, opts, 2, 100)              # a short text shrinks the window: it fits
    monkeypatch.setattr(memory, "available_bytes", lambda: None)
    memory.check_training(cfg, opts, 2, 10 ** 6)          # unknown: nothing to judge by


def test_many_samples_that_cannot_fit_are_refused(monkeypatch):
    cfg = tiny_config(vocab_size=65, hidden=256, layers=2)
    monkeypatch.setattr(memory, "available_bytes", lambda: 10 ** 9)
    memory.check_sampling(cfg, 1000)
    with pytest.raises(InputError, match="--num-samples 10000000 of this 2x256 model need about"):
        memory.check_sampling(cfg, 10 ** 7)


def test_the_memory_available_is_read_from_this_machine():
    have = memory.available_bytes()
    assert have is None or have > 0


@pytest.mark.parametrize("kw", [dict(), dict(norm="layer"), dict(norm="layer", recurrent_dropout=0.25),
                                dict(norm="layer", recurrent_dropout=0.25, zoneout_cell=0.5), dict(cell="gru")])
def test_the_window_estimate_covers_the_buffers_the_cpu_window_holds(kw):
    """A window's share of the estimate is at least what cpu_window.Buffers allocates for its
    layers in training (layer normalisation's normalised values, recurrent dropout's and
    zoneout's masks included), the gradient buffers aside."""
    import numpy as np

    from charrnn.backends.cpu_window import Buffers
    from charrnn.model import Params
    cfg = tiny_config(vocab_size=11, hidden=16, layers=2, **kw)
    T, B = 7, 5
    buf = Buffers(cfg, Params(cfg), T, B, np.float32, shared=True)
    if cfg.norm == "layer":
        buf.for_recurrent(cfg.recurrent_dropout > 0)
        buf.for_zoneout(cfg.zoned)
    held = sum(a.nbytes for ly in buf.layers for a in vars(ly).values()
               if isinstance(a, np.ndarray) and a.base is None and a is not ly.WhT)
    window = memory.training_bytes(cfg, T, B, 2) - memory.training_bytes(cfg, 0, 0, 2)
    assert window >= held
