"""charrnn/model.py: the sizes table, the offset table both backends read, and Params' views."""
import numpy as np
import pytest

from charrnn.model import Params, n_params, param_offsets, param_shapes, param_views
from tiny_models import tiny_config


@pytest.mark.parametrize("cell,embed", [("lstm", 0), ("gru", 3), ("rnn", 0)])
def test_offsets_follow_the_sizes_table_end_to_end(cell, embed):
    cfg = tiny_config(vocab_size=7, hidden=4, layers=2, cell=cell, embed=embed)
    offs, end = param_offsets(cfg), 0
    assert list(offs) == [name for name, _ in param_shapes(cfg)]
    for name, shape in param_shapes(cfg):
        assert offs[name] == end, name
        end += int(np.prod(shape))
    assert end == n_params(cfg)


def test_views_share_the_flat_buffer_at_the_offsets():
    cfg = tiny_config(vocab_size=7, hidden=4, layers=2, cell="gru")
    flat = np.arange(n_params(cfg), dtype=np.float32)
    views = param_views(cfg, flat)
    for name, shape in param_shapes(cfg):
        assert views[name].shape == shape and views[name].base is flat
        assert views[name].reshape(-1)[0] == param_offsets(cfg)[name]
    p = Params(cfg, flat)
    p["out.b"] += 1
    assert flat[param_offsets(cfg)["out.b"]] == views["out.b"][0] == n_params(cfg) - cfg.vocab_size + 1
