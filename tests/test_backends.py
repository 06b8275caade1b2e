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
