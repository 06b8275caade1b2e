"""The learning-rate range test (Smith, "Cyclical Learning Rates for Training Neural Networks",
2017): train a fresh model for a few hundred steps while the rate grows exponentially from
`start` to `end`, and read a good rate off the curve of loss against rate.

The loss is smoothed with a bias-corrected moving average (one batch is noisy); the test stops
early once the smoothed loss passes 4x its minimum (the rate has become too high and nothing
more is learnt). Two suggestions come from the smoothed curve: the rate where it falls fastest
per decade of rate, and a tenth of the rate at its minimum. Nothing is saved: it is a probe.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from charrnn.assemble import new_options, resolve_text, settle_ln_defaults, settle_norm
from charrnn.backends import make_backend
from charrnn.batches import Batches
from charrnn.corpus import Corpus, CorpusError, Vocab, check_encoding, split
from charrnn.model import init_params
from charrnn.optim import new_optimizer, new_optimizer_slots, parse_clip
from charrnn.options import (LR_FIND_END, LR_FIND_MIN_STEPS, LR_FIND_SKIP, LR_FIND_START, LR_FIND_STEPS,
                             NORM_DEFAULT, TrainOptions)
from charrnn.step import LOG2, train_step

SMOOTHING = 0.9        # weight of the past in the moving average of the loss
DIVERGED = 4.0         # stop once the smoothed loss exceeds this multiple of its minimum
SKIP_START = LR_FIND_SKIP   # the first points: the average is still mostly one batch (options.py)


@dataclass
class LrCurve:
    lr: list[float] = field(default_factory=list)            # the rate of each step
    loss: list[float] = field(default_factory=list)          # that step's training bits/char
    smoothed: list[float] = field(default_factory=list)
    steepest: float | None = None       # rate where the smoothed loss falls fastest against log(rate)
    min_loss_lr: float | None = None    # rate at the smoothed loss's minimum
    stopped: str = ""                   # why it ended before `steps`, or ""

    @property
    def min_over_10(self) -> float | None:
        return None if self.min_loss_lr is None else self.min_loss_lr / 10

    @property
    def suggestion(self) -> float | None:
        """The rate to try: the steepest descent, capped at min-loss/10 from above (a steep
        stretch just before the blow-up is no place to train)."""
        cands = [v for v in (self.steepest, self.min_over_10) if v is not None]
        return min(cands) if cands else None

    def to_dict(self) -> dict:
        return {**asdict(self), "min_over_10": self.min_over_10, "suggestion": self.suggestion}


def rate_at(i: int, steps: int, start: float, end: float) -> float:
    """The exponential ramp: start at step 0, end at step steps-1."""
    return start * (end / start) ** (i / max(steps - 1, 1))


def suggest(lrs: list[float], smoothed: list[float]) -> tuple[float | None, float | None]:
    """(steepest-descent rate, min-loss rate) of a smoothed curve. The steepest descent is looked
    for between the warm-up points and the minimum, as a slope per decade of rate."""
    n = len(smoothed)
    if n < LR_FIND_MIN_STEPS:
        return None, None
    s = np.asarray(smoothed, float)
    lo = SKIP_START
    imin = lo + int(np.argmin(s[lo:]))
    if imin - lo < 2:
        return None, float(lrs[imin])
    x = np.log10(np.asarray(lrs, float))
    slope = np.gradient(s[lo:imin + 1], x[lo:imin + 1])
    return float(lrs[lo + int(np.argmin(slope))]), float(lrs[imin])


def lr_find(opts: TrainOptions, text: str | bytes | Corpus, steps: int = LR_FIND_STEPS,
            start: float = LR_FIND_START, end: float = LR_FIND_END, log: Callable[[str], None] = lambda m: None,
            progress: Callable[[int], None] | None = None) -> LrCurve:
    """Run the range test on a fresh model built from `opts` (architecture, batch shape,
    optimizer, clipping, seed, device); `opts.lr` and the schedule are ignored."""
    if not 0 < start < end:
        raise ValueError("the range must have 0 < --start < --end")
    if steps < LR_FIND_MIN_STEPS:
        raise ValueError(f"--steps must be at least {LR_FIND_MIN_STEPS}")
    if isinstance(text, Corpus):
        vocab, codes = text.vocab, text.codes
    else:
        vocab = Vocab.from_text(text)
        codes = vocab.encode(text)
    train_codes = split(codes, opts.val_frac, opts.test_frac)[0]
    if len(train_codes) < 2:
        raise CorpusError("the text is too short for a range test")
    batches = Batches(train_codes, opts.batch_size, opts.seq_len, warn=log)
    cfg = opts.model_config(vocab.size)
    rng = np.random.default_rng(opts.seed)
    params = init_params(cfg, rng)
    opt = new_optimizer(opts, params.flat.size)
    clip = parse_clip(opts.clip)
    be = make_backend(opts.device, cfg, params, notify=log)
    state, cursor = be.zero_state(batches.batch), 0
    chars = batches.batch * batches.seq_len
    curve, avg, best = LrCurve(), 0.0, math.inf
    for i in range(steps):
        if cursor >= batches.n_windows:
            cursor, state = 0, be.zero_state(batches.batch)
        x, y = batches.window(cursor)
        cursor += 1
        lr = rate_at(i, steps, start, end)
        seed = int(rng.integers(1 << 62)) if cfg.draws_masks else 0
        st = train_step(be, opt, x, y, state, lr, clip, seed)
        state = st.state
        if progress:
            progress(1)
        if st.fault:
            curve.stopped = f"the loss or gradient became non-finite at rate {lr:.3g}"
            break
        bpc = st.loss / chars / LOG2
        avg = SMOOTHING * avg + (1 - SMOOTHING) * bpc
        sm = avg / (1 - SMOOTHING ** (i + 1))
        curve.lr.append(lr)
        curve.loss.append(bpc)
        curve.smoothed.append(sm)
        if i >= SKIP_START:
            best = min(best, sm)
            if sm > DIVERGED * best:
                curve.stopped = f"the smoothed loss passed {DIVERGED:g}x its minimum at rate {lr:.3g}"
                break
    curve.steepest, curve.min_loss_lr = suggest(curve.lr, curve.smoothed)
    return curve


def summary_table(curve: LrCurve, rows: int = 12) -> str:
    """A few points of the curve, evenly spaced in log(rate), as aligned text."""
    n = len(curve.lr)
    if not n:
        return "(no points)"
    idx = sorted(set(np.linspace(0, n - 1, min(rows, n)).round().astype(int).tolist()))
    out = [f"{'rate':>10}  {'bits/char':>9}  {'smoothed':>9}"]
    out += [f"{curve.lr[i]:>10.3g}  {curve.loss[i]:>9.4f}  {curve.smoothed[i]:>9.4f}" for i in idx]
    return "\n".join(out)


def suggestion_line(curve: LrCurve) -> str:
    if curve.suggestion is None:
        return "no suggestion: the curve is too short or never fell (try a lower --start or more --steps)"
    parts = [f"suggested --lr {curve.suggestion:.2g}"]
    if curve.steepest is not None:
        parts.append(f"steepest descent at {curve.steepest:.2g}")
    parts.append(f"minimum at {curve.min_loss_lr:.2g}, a tenth of it {curve.min_over_10:.2g}")
    return parts[0] + " (" + "; ".join(parts[1:]) + ")"


def build_page(curve: LrCurve, title: str, subtitle: str = "") -> str:
    """A self-contained HTML page: the curve on a log rate axis with the suggestions marked."""
    from html import escape

    from charrnn.htmlpage import page, table
    from charrnn.svg import Mark, Series, line_chart
    marks = []
    if curve.steepest is not None:
        marks.append(Mark(f"steepest {curve.steepest:.2g}", curve.steepest, color="#009e73"))
    if curve.min_loss_lr is not None:
        marks.append(Mark(f"min/10 {curve.min_over_10:.2g}", curve.min_over_10, color="#cc79a7"))
        marks.append(Mark(f"min {curve.min_loss_lr:.2g}", curve.min_loss_lr, color="#999"))
    lo = min(curve.smoothed) if curve.smoothed else 0.0
    hi = curve.smoothed[0] if curve.smoothed else 1.0
    ylim = (lo - 0.1 * (hi - lo), max(hi, lo) + 0.25 * (hi - lo) + 1e-9)   # the raw noise may leave the frame
    chart = line_chart([Series("bits/char (each step)", curve.lr, [min(v, ylim[1]) for v in curve.loss]),
                        Series("smoothed", curve.lr, curve.smoothed)],
                       "Training loss against learning rate", "learning rate (log scale)", "bits/char",
                       width=760, height=380, logx=True, marks=marks, ylim=ylim)
    rows = [("suggested --lr", curve.suggestion if curve.suggestion is not None else "none"),
            ("steepest descent", curve.steepest if curve.steepest is not None else "none"),
            ("rate at the minimum", curve.min_loss_lr if curve.min_loss_lr is not None else "none"),
            ("steps run", len(curve.lr)), ("ended early", curve.stopped or "no")]
    body = [f"<h1>{escape(title)}</h1>", f'<p class="sub">{escape(subtitle)}</p>' if subtitle else "",
            chart, table(rows, ("", "value")),
            '<p class="note">The rate rose exponentially, one step per point; the smoothed curve is a '
            'bias-corrected moving average. Train a little below where it falls fastest; the minimum itself '
            'is already too fast.</p>']
    return page(title, "\n".join(body))


def prepare(text: str, options: dict, *, given=None, encoding: str = "utf-8", byte_mode: bool = False,
            log: Callable[[str], None] = lambda m: None) -> tuple[TrainOptions, Corpus]:
    """The options and the encoded text `charrnn lr-find` tests with: FILE as `train` takes it
    (a path, "-" or a catalogue name), options by TrainOptions' field names, --device resolved,
    and what a new run settles by its model (the norm, beta2, the window) settled as `train` does;
    `given` names the options the user gave (None: all of `options`)."""
    from charrnn.backends import pick_device
    from charrnn.corpus import load_corpus
    source, _ = resolve_text(text, log)
    options = {"norm": NORM_DEFAULT, **options}
    opts = new_options(options)
    check_encoding(encoding)
    opts.device = pick_device(opts.device, log)
    settle_norm(opts, options["norm"], log)
    settle_ln_defaults(opts, opts.model.norm, set(options) if given is None else given)
    data = load_corpus(source, encoding=encoding, byte_mode=byte_mode)
    from charrnn.memory import check_training      # a model that cannot fit: one line, before allocating
    check_training(opts.model_config(data.vocab.size), opts, new_optimizer_slots(opts), len(data.codes))
    return opts, data


def page_for(curve: LrCurve, opts: TrainOptions, text: str) -> str:
    """build_page() titled with the text's name and the model, batch and optimizer tested."""
    from pathlib import Path
    name = "stdin" if text == "-" else text
    return build_page(curve, f"charrnn lr-find: {Path(name).name}",
                      f"{opts.model.layers}x{opts.model.hidden} {opts.model.cell.upper()}, {opts.optimizer}, "
                      f"batch {opts.batch_size} x {opts.seq_len}, {len(curve.lr)} steps")
