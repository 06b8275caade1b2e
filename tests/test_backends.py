"""charrnn/backends/__init__.py: the Backend protocol is what both backends implement."""
import inspect

import numpy as np

from charrnn.backends import Backend
from charrnn.backends.cpu import CpuBackend
from charrnn.model import init_params
from tiny_models import tiny_config

MEMBERS = ["train_step", "loss", "step", "generate", "optimizer_step", "params_host", "grad_host", "zero_state"]


def test_the_protocol_names_the_contract_and_the_cpu_backend_meets_it():
    assert all(hasattr(Backend, m) for m in MEMBERS)
    cfg = tiny_config(vocab_size=5, hidden=3, layers=1)
    assert isinstance(CpuBackend(cfg, init_params(cfg, np.random.default_rng(0))), Backend)


def test_the_cuda_backend_defines_every_member_with_the_protocols_parameters():
    from charrnn.backends.cuda import CudaBackend
    for m in MEMBERS:
        want = set(inspect.signature(getattr(Backend, m)).parameters)
        got = set(inspect.signature(getattr(CudaBackend, m)).parameters)
        assert want <= got, (m, want - got)
        got = set(inspect.signature(getattr(CpuBackend, m)).parameters)
        assert want <= got, (m, want - got)


def test_a_layer_normalised_lstm_is_refused_by_the_cuda_backend_and_auto_takes_the_cpu(tmp_path, monkeypatch):
    """The CUDA kernels have no layer normalisation yet: asking for them is one clear error, and
    `--device auto` on a machine with a GPU scores such a model on the CPU instead."""
    import pytest

    import charrnn.backends as backends
    from charrnn import checkpoint as ckpt
    from charrnn.corpus import Vocab
    from charrnn.errors import InputError
    from charrnn.evaluate import evaluate_checkpoint
    cfg = tiny_config(vocab_size=4, hidden=4, layers=1, norm="layer")
    params = init_params(cfg, np.random.default_rng(0))
    assert backends.cpu_only(cfg) and not backends.cpu_only(tiny_config(vocab_size=4, hidden=4, layers=1))
    with pytest.raises(InputError, match="layer normalisation .* CPU backend only .* --device cpu"):
        backends.make_backend("cuda", cfg, params)
    ckpt.save(tmp_path / "ln.safetensors", ckpt.Checkpoint(config=cfg, vocab=Vocab("\nabc"), params=params))
    (tmp_path / "t.txt").write_text("abcabc\nabc\n" * 5)
    monkeypatch.setattr(backends, "cuda_available", lambda: True)
    said = []
    res = evaluate_checkpoint([str(tmp_path / "ln.safetensors"), str(tmp_path / "t.txt")], device="auto",
                              log=said.append)
    assert res["chars"] == 54 and np.isfinite(res["bits_per_char"]) and not any("cuda" in m for m in said)
