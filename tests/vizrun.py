"""A tiny trained run for the report and viewer tests: a few seconds of training on a synthetic
text that has lines, words, "quotes" and (brackets), so every --find property can be ranked."""
from __future__ import annotations

from pathlib import Path

import numpy as np

TEMPLATES = ['say("{w}")\n', "x = ({w} + {w})\n", 'print("{w}", [{w}])\n', "{w} {w} {w}\n", "# {w}\n"]
WORDS = ["alpha", "beta", "gamma", "cat", "dog", "zeta"]


def synthetic_text(n_lines: int = 600, seed: int = 0) -> str:
    r = np.random.default_rng(seed)
    lines = []
    for _ in range(n_lines):
        t = TEMPLATES[r.integers(len(TEMPLATES))]
        while "{w}" in t:
            t = t.replace("{w}", WORDS[r.integers(len(WORDS))], 1)
        lines.append(t)
    return "".join(lines)


def train_tiny(out: Path, text: str, cell: str = "lstm", steps: int = 30, val_every: int = 10,
               sample_chars: int | None = None) -> Path:
    """Train hidden 12, 2 layers for `steps` steps (under a second); returns the run directory."""
    from charrnn.train import Trainer, TrainOptions
    opts = TrainOptions.from_dict(dict(hidden=12, layers=2, cell=cell, seq_len=16, batch_size=4, max_steps=steps,
                                       val_every=val_every, dropout=0.0, lr=1e-2, out=str(out)))
    out.mkdir(parents=True, exist_ok=True)
    tr = Trainer(opts, text, out, show_progress=False)
    if sample_chars is not None:
        tr.sample_chars = sample_chars
    tr.run()
    return out
