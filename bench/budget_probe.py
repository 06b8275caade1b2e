"""What `charrnn train TEXT --minutes M` (no model flags) would choose on this machine, and the
speed of every width it timed on the way (charrnn/budget.py).

    python bench/budget_probe.py tinyshakespeare.txt --minutes 10
"""
from __future__ import annotations

import argparse

from charrnn import budget
from charrnn.corpus import load_corpus, split
from charrnn.options import TrainOptions
from charrnn.optim import new_optimizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("text")
    ap.add_argument("--minutes", type=float, default=10.0)
    a = ap.parse_args()
    data = load_corpus(a.text)
    o = TrainOptions(minutes=a.minutes)
    n = len(split(data.codes, o.val_frac, o.test_frac)[0])
    choose, shown = budget.choose, set()

    def report(rates, params, seconds, train_chars, dropout):
        h = max(rates)
        seen = rates[h] * seconds
        if h not in shown:
            shown.add(h)
            print(f"2x{h}: {rates[h]:,.0f} chars/s, {seen / train_chars:.1f} passes, "
                  f"{seen / params[h]:.0f} chars/param")
        return choose(rates, params, seconds, train_chars, dropout)

    budget.choose = report
    s = budget.measure(o.model_config(data.vocab.size), o.device, o.seq_len, o.batch_size, a.minutes * 60, n,
                       lambda k: new_optimizer(o, k))
    print(s.describe(a.minutes))


if __name__ == "__main__":
    main()
