"""The sampling layer alone (charrnn/decoding.py): the filtering rules on hand-made logits, and
that the module is a leaf the backends and the CLI can import cheaply. On models: test_sample.py."""
from __future__ import annotations

import subprocess
import sys

import numpy as np

from charrnn.decoding import DEFAULTS, Decoding, distribution, draw


def test_temp_zero_puts_all_mass_on_the_argmax():
    logits = np.array([[0.1, 2.0, -1.0], [3.0, 0.0, 2.9]])
    assert distribution(logits, 0).tolist() == [[0, 1, 0], [1, 0, 0]]


def test_top_k_keeps_the_k_likeliest_renormalised():
    p = distribution(np.log([[0.5, 0.1, 0.3, 0.1]]), 1.0, top_k=2)[0]
    np.testing.assert_allclose(p, [0.625, 0, 0.375, 0])


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = np.log([[0.5, 0.1, 0.3, 0.1]])
    np.testing.assert_allclose(distribution(logits, 1.0, top_p=0.5)[0], [1, 0, 0, 0])
    np.testing.assert_allclose(distribution(logits, 1.0, top_p=0.7)[0], [0.625, 0, 0.375, 0])
    np.testing.assert_allclose(distribution(logits, 1.0, top_p=1.0)[0], [0.5, 0.1, 0.3, 0.1])


def test_temperature_sharpens_and_flattens():
    logits = np.log([[0.7, 0.2, 0.1]])
    cold, hot = distribution(logits, 0.5)[0], distribution(logits, 2.0)[0]
    assert cold[0] > 0.7 > hot[0] and hot[2] > 0.1 > cold[2]


def test_draw_picks_the_code_whose_cdf_interval_holds_the_uniform():
    probs = np.array([[0.2, 0.5, 0.3]] * 3)
    rngs = [np.random.default_rng(s) for s in (0, 1, 2)]
    want = [int(np.searchsorted(np.cumsum(probs[0]), np.random.default_rng(s).random(), side="right"))
            for s in (0, 1, 2)]
    assert draw(probs, rngs).tolist() == want


def test_defaults_are_one_object_the_cli_and_sample_run_read():
    import inspect

    from charrnn import sample
    from charrnn.cli_sample import sample as cmd
    assert DEFAULTS == Decoding()
    sig = inspect.signature(sample.run).parameters
    assert (sig["length"].default, sig["temp"].default, sig["top_k"].default, sig["top_p"].default,
            sig["num_samples"].default) == (DEFAULTS.length, DEFAULTS.temperature, DEFAULTS.top_k,
                                            DEFAULTS.top_p, DEFAULTS.batch)
    opts = {p.name: p.default for p in cmd.params}
    assert (opts["length"], opts["temp"], opts["top_k"], opts["top_p"], opts["num_samples"]) == \
        (DEFAULTS.length, DEFAULTS.temperature, DEFAULTS.top_k, DEFAULTS.top_p, DEFAULTS.batch)


def test_importing_it_loads_neither_numpy_nor_any_charrnn_module_but_errors():
    code = ("import sys, charrnn; before = set(sys.modules); import charrnn.decoding; "
            "print(sorted(m for m in set(sys.modules) - before if m.startswith(('charrnn', 'numpy'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert eval(out) == ["charrnn.decoding", "charrnn.errors"]


def test_the_backends_do_not_import_the_sampler():
    code = "import sys, charrnn.backends.cpu; print('charrnn.sample' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
