"""Sizing the model to a time budget. With `--minutes` and no architecture flags, `charrnn train`
times a training step of each width on LADDER on this machine and takes the widest that the
budget lets either read the training text MIN_PASSES times over, or read CHARS_PER_PARAM
characters per parameter of fresh text (and never fewer than MIN_CHARS_PER_PARAM, so a short
text does not buy a model the budget cannot train); dropout, which only pays when the text is read many
times, is kept only from DROPOUT_MIN_PASSES passes. Without a budget the defaults stand.

Why (bench/RESULTS.md, "Sizing to the budget"): on tinyshakespeare, read ten times in ten minutes
on two cores, 2x256 beats 2x192; on one core, where 2x256 reads it only four times, 2x192 (7.6
times) and 2x128 beat it. On the 12 MB `python` corpus, which no width reads more than twice in ten
minutes, 2x128 without dropout beats 2x192 by 0.09 bits/char and 2x256 (dropout 0.2) by 0.26: there the
narrowest model, reading the most text, wins.

A width timed while other processes held the cores (read from /proc/stat) is timed again, up
to RETIMES times, and its fastest timing kept: a probe slowed by a passing job once sized War
and Peace's model one width too narrow (bench/RESULTS.md, "Two more texts").
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from typing import Callable

LADDER = (128, 192, 256, 384, 512)   # widths tried, two layers each (the default depth)
MIN_PASSES = 7.0          # 2x192 at 7.6 passes beat 2x256 at 4.0; 2x384 would read 5.8 on two cores
CHARS_PER_PARAM = 100.0   # above the 65 at which 2x128 beat 2x192 (17) on the python corpus
MIN_CHARS_PER_PARAM = 5.0 # and never fewer: 2x256 at 4.6 lost on one core, at 12 won on two
DROPOUT_MIN_PASSES = 4.0  # python at 2 passes did best without; tinyshakespeare at 7.6+ with 0.2
PROBE_S = 0.4                        # timed steps per width, at least this long (and two steps)
RETIMES = 2               # times a width timed on a crowded machine is timed again


@dataclass(frozen=True)
class Sizing:
    hidden: int
    dropout: float
    chars_per_s: float       # training speed measured for this width
    chars_per_param: float   # characters it reads within the budget, per parameter
    passes: float            # times it reads the training text within the budget
    crowded: bool = False    # other processes held the cores through every timing of some width

    def describe(self, minutes: float) -> str:
        crowd = ("; other processes held the cores while it was timed, so an idle machine may "
                 "train a wider model" if self.crowded else "")
        return (f"sized to the budget: {minutes:g} min at {self.chars_per_s:,.0f} chars/s reads "
                f"{self.chars_per_param:.0f} chars per parameter ({self.passes:.1f} passes over the text) "
                f"with --hidden {self.hidden} --dropout {self.dropout:g}{crowd}; give --hidden to choose")


def cpu_now() -> tuple[float, float] | None:
    """(CPU seconds used so far by every process on the machine, by this process), or None where
    there is no /proc/stat. Steal time counts as others' use: the hypervisor gave our core away."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]
        busy = sum(ticks) - ticks[3] - ticks[4]          # all but idle and iowait
        hz = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
    t = os.times()
    return busy / hz, t.user + t.system


def crowded(before: tuple[float, float] | None, after: tuple[float, float] | None, wall: float,
            cpus: int | None = None) -> bool:
    """Whether, between two `cpu_now` readings `wall` seconds apart, the machine's cores were all
    busy with other processes holding more than a quarter of one of them (so this process got
    less than it would alone). Unknown readings count as not crowded."""
    if before is None or after is None or wall <= 0:
        return False
    ours = (after[1] - before[1]) / wall
    others = max(0.0, (after[0] - before[0]) / wall - ours)
    return others > 0.25 and ours + others > (cpus or os.cpu_count() or 1) - 0.25


def choose(rates: dict[int, float], params: dict[int, int], seconds: float, train_chars: int,
           dropout: float) -> Sizing:
    """The sizing for measured training speeds `rates` (chars/s by width) and parameter counts
    `params` (by width): the widest width whose `seconds` of training read the `train_chars`
    characters MIN_PASSES times or CHARS_PER_PARAM characters per parameter, and at least
    MIN_CHARS_PER_PARAM per parameter in any case, else the narrowest.
    `dropout` is kept if that width reads the text DROPOUT_MIN_PASSES times, else 0."""
    def fits(h: int) -> bool:
        seen = rates[h] * seconds
        if seen < MIN_CHARS_PER_PARAM * params[h]:     # a short text must not buy a model the budget cannot train
            return False
        return seen >= MIN_PASSES * train_chars or seen >= CHARS_PER_PARAM * params[h]

    widths = sorted(rates)
    pick = max((h for h in widths if fits(h)), default=widths[0])
    seen = rates[pick] * seconds
    passes = seen / max(train_chars, 1)
    return Sizing(pick, dropout if passes >= DROPOUT_MIN_PASSES else 0.0, rates[pick],
                  seen / params[pick], passes)


def time_steps(be, opt, x, y, state, seconds: float):
    """(steps, wall seconds, state after): training steps of backend `be` with optimizer `opt` on
    the windows x, y, from `state`, for at least two steps and `seconds`."""
    from charrnn.step import train_step
    steps, t0 = 0, time.perf_counter()
    while steps < 2 or time.perf_counter() - t0 < seconds:
        state = train_step(be, opt, x, y, state, 1e-3, ("norm", 5.0), dropout_seed=steps + 2).state
        steps += 1
    return steps, time.perf_counter() - t0, state


def measure(cfg, device: str, T: int, B: int, seconds: float, train_chars: int, opt_for: Callable,
            notify: Callable[[str], None] | None = None) -> Sizing:
    """Time training steps (forward, backward, update) of `cfg` at each width of LADDER, from
    the narrowest up, stopping after the first that does not fit; returns `choose`'s sizing.
    opt_for(n_params) builds the run's optimizer for a buffer that size."""
    import numpy as np

    from charrnn.backends import make_backend
    from charrnn.model import init_params, n_params
    from charrnn.step import train_step

    rng = np.random.default_rng(0)
    x = rng.integers(0, cfg.vocab_size, (T, B))
    y = rng.integers(0, cfg.vocab_size, (T, B))
    rates: dict[int, float] = {}
    params: dict[int, int] = {}
    crowd = False
    for h in LADDER:
        c = replace(cfg, hidden=h)
        p = init_params(c, rng)
        be = make_backend(device, c, p, notify=notify)
        opt = opt_for(p.flat.size)
        state = be.zero_state(B)
        be.warm_up(T, B, opt)
        state = train_step(be, opt, x, y, state, 1e-3, ("norm", 5.0), dropout_seed=1).state  # buffers, caches
        for _ in range(1 + RETIMES):
            c0 = cpu_now()
            steps, wall, state = time_steps(be, opt, x, y, state, PROBE_S)
            rates[h] = max(rates.get(h, 0.0), steps * T * B / wall)
            busy = crowded(c0, cpu_now(), wall)
            if not busy:
                break
        crowd = crowd or busy
        params[h] = n_params(c)
        if choose(rates, params, seconds, train_chars, cfg.dropout).hidden != h:
            break
    return replace(choose(rates, params, seconds, train_chars, cfg.dropout), crowded=crowd)
