"""bench/torch_crosscheck.py: PyTorch's nn.LSTM / GRU / RNN, loaded with a checkpoint's weights,
scores a text as `charrnn eval` does, within 1e-5 relative, also in the regime of large weights.
Slow (PyTorch imports in seconds) and skipped where torch is not installed."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from charrnn import checkpoint as ckpt
from charrnn.corpus import Vocab
from charrnn.model import init_params
from tiny_models import tiny_config

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")]
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

TEXT = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 40


@pytest.mark.parametrize("cell,embed,scale", [("lstm", 0, 1.0), ("lstm", 0, 10.0), ("lstm", 8, 10.0),
                                              ("gru", 0, 5.0), ("gru", 8, 1.0), ("rnn", 0, 3.0)])
def test_pytorch_scores_a_checkpoint_as_charrnn_eval_does(tmp_path, cell, embed, scale):
    """scale multiplies every weight: at 10 the LSTM's cell states grow into the hundreds, the
    regime where the fast kernels' tanh once returned 0."""
    from torch_crosscheck import crosscheck
    vocab = Vocab.from_text(TEXT)
    cfg = tiny_config(vocab_size=vocab.size, hidden=32, layers=2, cell=cell, embed=embed)
    params = init_params(cfg, np.random.default_rng(1))
    params.flat *= scale
    path = tmp_path / "m.safetensors"
    ckpt.save(path, ckpt.Checkpoint(config=cfg, vocab=vocab, params=params))
    (tmp_path / "t.txt").write_text(TEXT)
    res = crosscheck(str(path), str(tmp_path / "t.txt"))
    assert res["chars"] == len(TEXT) - 1
    assert res["relative_difference"] < 1e-5, res
