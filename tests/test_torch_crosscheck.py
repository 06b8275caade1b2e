"""bench/torch_crosscheck.py: PyTorch's nn.LSTM / GRU / RNN (a layer-normalised LSTM in PyTorch's
operations), loaded with a checkpoint's weights,
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


def _trained(cfg, params, codes, steps: int):
    """params after `steps` Adam steps (rate 1e-2) on random windows of 20 characters, 8 at a time."""
    from charrnn.backends.cpu import CpuBackend
    from charrnn.optim import Optimizer
    be = CpuBackend(cfg, params)
    opt, r = Optimizer("adam", params.flat.size), np.random.default_rng(0)
    for _ in range(steps):
        at = r.integers(0, len(codes) - 21, 8)
        x, y = (np.stack([codes[i + d:i + d + 20] for i in at], 1) for d in (0, 1))
        be.train_step(x, y, be.zero_state(8), dropout_seed=int(r.integers(1 << 62)))
        be.optimizer_step(opt, 1e-2, ("norm", 5.0))
    return be.params_host()


@pytest.mark.parametrize("cell,embed,scale,norm,zoneout", [
    ("lstm", 0, 1.0, "none", 0), ("lstm", 0, 10.0, "none", 0), ("lstm", 8, 10.0, "none", 0),
    ("gru", 0, 5.0, "none", 0), ("gru", 8, 1.0, "none", 0), ("rnn", 0, 3.0, "none", 0),
    ("lstm", 0, 1.0, "layer", 0), ("lstm", 8, 1.0, "layer", 0), ("lstm", 0, 1.0, "layer", 1)])
def test_pytorch_scores_a_checkpoint_as_charrnn_eval_does(tmp_path, cell, embed, scale, norm, zoneout):
    """scale multiplies every weight: at 10 the LSTM's cell states grow into the hundreds, the
    regime where the fast kernels' tanh once returned 0. A layer-normalised LSTM is checked after
    60 Adam steps on the text (with zoneout, trained with its masks and scored in its expectation):
    at its initial weights the normalisation scales a small spread up to
    its gains, and the untrained model is sensitive to float32 rounding itself (reference.py in
    float32 parts from float64 by 7e-5 to 6e-4 over these 3,400 characters, as the fast kernels do,
    while they agree with it to 1e-12 in float64). Trained, it is not: 6e-9 here, and PyTorch comes
    within 6e-9 of four ten-minute models over 55,768 characters (bench/RESULTS.md, "Layer
    normalisation")."""
    from torch_crosscheck import crosscheck
    vocab = Vocab.from_text(TEXT)
    cfg = tiny_config(vocab_size=vocab.size, hidden=32, layers=2, cell=cell, embed=embed, norm=norm,
                      zoneout_cell=0.5 * zoneout, zoneout_hidden=0.1 * zoneout)
    params = init_params(cfg, np.random.default_rng(1))
    params.flat *= scale
    if norm == "layer":
        params = _trained(cfg, params, vocab.encode(TEXT), steps=60)
    path = tmp_path / "m.safetensors"
    ckpt.save(path, ckpt.Checkpoint(config=cfg, vocab=vocab, params=params))
    (tmp_path / "t.txt").write_text(TEXT)
    res = crosscheck(str(path), str(tmp_path / "t.txt"))
    assert res["chars"] == len(TEXT) - 1
    assert res["relative_difference"] < 1e-5, res
