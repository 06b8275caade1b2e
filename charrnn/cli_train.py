"""``charrnn train`` and ``charrnn lr-find``: the options that describe a model, its optimizer
and its run, parsed and handed whole to charrnn.train and charrnn.lrfind. Registered in the
main CLI.
"""
from __future__ import annotations

import sys
from typing import Callable

import click

from charrnn.cli_base import CONTEXT, Finite, device_option, say, write_page
from charrnn.config import ACTIVATIONS, CELLS, INITS, MODEL_DEFAULTS
from charrnn.errors import InputError
from charrnn.options import (AVERAGES, CELL_LR as _CELL_LR, DEFAULT_MAX_EPOCHS, F32_MAX, INT_MAX, LN_BETA2,
                             LN_WINDOW as _LN_WINDOW, LR_FIND_END, LR_FIND_MIN_STEPS, LR_FIND_START, LR_FIND_STEPS,
                             NORM_DEFAULT as _NORM_DEFAULT, NORMS as _NORMS, OPTIMIZER_DEFAULTS as _OPT, RANGES,
                             RULE_LR as _RULE_LR, SPLIT_BY, TrainOptions)

_D = TrainOptions()      # every default below is read from here, written once in options.py
_CAPS = (INT_MAX, F32_MAX, 1e9)   # technical upper bounds: checked by TrainOptions.check, not shown in --help


def _num(name: str) -> click.ParamType:
    """The type of a numeric option, from its range in options.RANGES (finite floats only)."""
    lo, hi, lo_open, hi_open = RANGES[name]
    shown = None if hi in _CAPS else hi
    default = MODEL_DEFAULTS[name] if name in MODEL_DEFAULTS else getattr(_D, name)
    if isinstance(default, int) and not isinstance(default, bool):
        return click.IntRange(lo, shown, min_open=lo_open, max_open=hi_open and shown is not None)
    return Finite(lo, shown, min_open=lo_open, max_open=hi_open and shown is not None)


def _e(x: float) -> str:
    """1e-08 as 1e-8, for help text."""
    return f"{x:g}".replace("e-0", "e-")


# ---------------------------------------------------------------- train
def _given(kw: dict) -> set[str]:
    """The names among `kw` that the command line (or the environment) gave, not their defaults."""
    from click.core import ParameterSource
    ctx = click.get_current_context()
    return {k for k in kw
            if ctx.get_parameter_source(k) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)}


def _options(options: list) -> Callable:
    """Apply a list of click options as one decorator (train and lr-find share them)."""
    def apply(f):
        for o in reversed(options):
            f = o(f)
        return f
    return apply


MODEL_OPTIONS = [
    click.option("--hidden", type=_num("hidden"), default=_D.model.hidden, show_default=True, help="Units per layer."),
    click.option("--layers", type=_num("layers"), default=_D.model.layers, show_default=True, help="Stacked layers."),
    click.option("--cell", type=click.Choice(CELLS), default=_D.model.cell, show_default=True),
    click.option("--embed", type=_num("embed"), default=_D.model.embed, show_default=True,
                 help="Size of a learned embedding; 0 feeds one-hot characters."),
    click.option("--dropout", type=_num("dropout"), default=_D.model.dropout, show_default=True,
                 help="Inverted dropout between layers and before the output layer."),
    click.option("--recurrent-dropout", type=_num("recurrent_dropout"), default=_D.model.recurrent_dropout,
                 show_default=True,
                 help="Dropout inside the cell on what each step writes to the memory (the candidate g; "
                      "Semeniuta et al. 2016), fresh masks every step; layer-normalised LSTM only."),
    click.option("--zoneout-cell", type=_num("zoneout_cell"), default=_D.model.zoneout_cell, show_default=True,
                 help="Zoneout on the memory c (Krueger et al. 2016): in training each unit keeps its previous "
                      "value with this probability; sampling and scoring blend by it. Layer-normalised LSTM only."),
    click.option("--zoneout-hidden", type=_num("zoneout_hidden"), default=_D.model.zoneout_hidden,
                 show_default=True, help="Zoneout on the output h, as --zoneout-cell."),
    click.option("--activation", type=click.Choice(ACTIVATIONS), default=_D.model.activation, show_default=True,
                 help="The cell's squashing nonlinearity (gates stay sigmoid)."),
    click.option("--init", "init", type=click.Choice(INITS), default=_D.model.init, show_default=True,
                 help="uniform is U(-0.08, 0.08) as in char-rnn; xavier is Glorot uniform."),
    click.option("--forget-bias", type=_num("forget_bias"), default=_D.model.forget_bias, show_default=True, help="LSTM forget-gate bias at init."),
    click.option("--norm", type=click.Choice(_NORMS), default=_NORM_DEFAULT, show_default=True,
                 help="layer: a layer-normalised LSTM (each gate block's input and the cell normalised; LSTM "
                      "only, CPU backend only for now); auto: layer for an LSTM on the CPU, else none."),
    click.option("--seq-len", type=_num("seq_len"), default=_D.seq_len,
                 help=f"Steps per window (truncated BPTT length) [{_LN_WINDOW['seq_len']} for a new layer-normalised "
                      f"LSTM, else {_D.seq_len}]."),
    click.option("--batch-size", type=_num("batch_size"), default=_D.batch_size,
                 help=f"Parallel streams [{_LN_WINDOW['batch_size']} for a new layer-normalised LSTM, else "
                      f"{_D.batch_size}]."),
    click.option("--val-frac", type=_num("val_frac"), default=_D.val_frac, show_default=True),
    click.option("--test-frac", type=_num("test_frac"), default=_D.test_frac, show_default=True),
]

OPTIMIZER_OPTIONS = [
    click.option("--optimizer", type=click.Choice(list(_OPT)), default=_D.optimizer, show_default=True,
                 help="sgd is plain (heavy-ball with --momentum); adamw decays the weights apart from the gradient; "
                      "adadelta's step is scaled by --lr. Each rule has its own default --lr."),
    click.option("--beta1", type=_num("beta1"), default=None, help=f"Adam/AdamW beta1 [{_OPT['adam']['beta1']:g}]."),
    click.option("--beta2", type=_num("beta2"), default=None,
                 help=f"Adam/AdamW beta2 [{LN_BETA2:g} for a layer-normalised LSTM, else {_OPT['adam']['beta2']:g}]."),
    click.option("--alpha", type=_num("alpha"), default=None, help=f"RMSProp decay [{_OPT['rmsprop']['alpha']:g}]."),
    click.option("--momentum", type=_num("momentum"), default=None,
                 help=f"Nesterov momentum [{_OPT['nesterov']['momentum']:g}]; SGD momentum [{_OPT['sgd']['momentum']:g}]."),
    click.option("--rho", type=_num("rho"), default=None, help=f"Adadelta decay [{_OPT['adadelta']['rho']:g}]."),
    click.option("--eps", type=_num("eps"), default=None,
                 help=f"Optimizer epsilon [Adam {_e(_OPT['adam']['eps'])}, Adagrad {_e(_OPT['adagrad']['eps'])}, "
                      f"Adadelta {_e(_OPT['adadelta']['eps'])}]."),
    click.option("--weight-decay", type=_num("weight_decay"), default=_D.weight_decay, show_default=True,
                 help="L2 penalty; with adamw, decoupled decay (weights shrink by lr * this each step)."),
    click.option("--l1", type=_num("l1"), default=_D.l1, show_default=True, help="L1 penalty."),
    click.option("--clip", default=_D.clip, show_default=True,
                 help="norm:X (global norm), value:X (element-wise, as char-rnn) or none."),
]


@click.command(context_settings=CONTEXT)
@click.argument("text", metavar="PATH...", nargs=-1, required=True)
@_options(MODEL_OPTIONS)
@click.option("--lr", type=_num("lr"), default=_D.lr,
              help="Learning rate [adam, adamw: " + ", ".join(f"{_e(r)} for {c}" for c, r in _CELL_LR.items())
              + "; " + ", ".join(f"{o} {_e(r)}" for o, r in _RULE_LR.items()) + "].")
@_options(OPTIMIZER_OPTIONS)
@click.option("--lr-schedule", type=click.Choice(["cosine", "constant"]), default=_D.lr_schedule, show_default=True,
              help="cosine anneals the rate to --lr-floor times --lr by the end of the run "
                   "(its epochs or its --minutes, whichever ends first).")
@click.option("--lr-floor", type=_num("lr_floor"), default=_D.lr_floor, show_default=True)
@click.option("--lr-decay", type=_num("lr_decay"), default=_D.lr_decay, show_default=True,
              help="Multiply the rate by this each epoch from --lr-decay-after on.")
@click.option("--lr-decay-after", type=_num("lr_decay_after"), default=_D.lr_decay_after, show_default=True)
@click.option("--lr-plateau", type=_num("lr_plateau"), default=_D.lr_plateau, show_default=True,
              help="Multiply the rate by this when validation does not improve.")
@click.option("--patience", type=_num("patience"), default=_D.patience, show_default=True,
              help="Stop after this many validations without improvement (0: never).")
@click.option("--max-epochs", type=_num("max_epochs"), default=None,
              help=f"End the run after this many epochs [{DEFAULT_MAX_EPOCHS:g}; none with --minutes].")
@click.option("--minutes", type=_num("minutes"), default=_D.minutes, show_default=True,
              help="Wall-clock budget; 0 means none. The run uses all of it unless --max-epochs "
                   "is given, and the cosine schedule spans it. A new run given no model flags "
                   "sizes --hidden and --dropout to the budget, timed on this machine.")
@click.option("--max-steps", type=_num("max_steps"), default=_D.max_steps, hidden=True)
@click.option("--val-every", type=_num("val_every"), default=_D.val_every, show_default=True,
              help="Steps between validations (0: once per epoch).")
@click.option("--val-streams", type=_num("val_streams"), default=_D.val_streams, show_default=True,
              help="Score validation as this many contiguous pieces side by side in one batch: faster "
                   "where batch 1 is slow, a little higher than the one-stream figure of `charrnn eval`.")
@click.option("--average", type=click.Choice(AVERAGES), default=_D.average, show_default=True,
              help="ema: keep an exponential moving average of the weights beside them; each validation "
                   "scores both, and best.safetensors keeps the better (its metrics say which).")
@click.option("--average-decay", type=_num("average_decay"), default=_D.average_decay, show_default=True,
              help="The average's forgetting factor per step (0.998: about the last 500 steps).")
@click.option("--diag/--no-diag", default=_D.diag, show_default=True,
              help="Log Deeplearning4j-style diagnostics to metrics.jsonl at each validation: update:parameter "
                   "ratios, weight and gradient norms per tensor, mean |h| and |c| and saturated gates per "
                   "layer, weight histograms.")
@click.option("--diag-every", type=_num("diag_every"), default=_D.diag_every, show_default=True,
              help="Also log the diagnostics every this many steps (0: at validations only).")
@click.option("--report", is_flag=True, default=_D.report,
              help="Keep report.html current in the run directory while training (rewritten at each "
                   "validation); the page reloads itself until the run ends. See `charrnn report --serve`.")
@click.option("--max-nan-retries", type=_num("max_nan_retries"), default=_D.max_nan_retries, show_default=True,
              help="On a NaN/Inf loss or gradient, roll back to the last good state with half the rate, "
                   "at most this many times.")
@click.option("--seed", type=_num("seed"), default=_D.seed, show_default=True)
@device_option
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Run directory [checkpoints/<file stem or folder name>, or checkpoints/<stem>-2, -3, ... when that "
                   "holds a run].")
@click.option("--name", default=None, help="Run name: the directory checkpoints/<name>.")
@click.option("--overwrite", is_flag=True,
              help="Start afresh in a run directory that holds a run, moving the old run aside to "
                   "DIR.old-N (nothing is deleted).")
@click.option("--encoding", default="utf-8", show_default=True, help="Text encoding of the files.")
@click.option("--bytes", "byte_mode", is_flag=True,
              help="Train on raw bytes (256 symbols): any file works, binary or mixed encodings.")
@click.option("--glob", "globs", multiple=True, metavar="PATTERN",
              help="In folders, read only files whose name matches (a pattern with / matches the path "
                   "inside the folder); repeatable. Files named on the command line are always read.")
@click.option("--exclude", multiple=True, metavar="PATTERN",
              help="In folders, leave out files and folders whose name or path matches; repeatable.")
@click.option("--strict", is_flag=True,
              help="Refuse a binary, undecodable or empty file among several inputs instead of skipping it.")
@click.option("--split-by", type=click.Choice(SPLIT_BY), default=_D.split_by, show_default=True,
              help="Several documents: hold out whole documents (chosen by a hash of their names) or the "
                   "end of the joined text; auto is document from 20 documents on.")
@click.option("--resume", type=click.Path(dir_okay=True), default=None,
              help="Continue a run exactly from its checkpoint.")
@click.option("--init-from", type=click.Path(dir_okay=True), default=None,
              help="Start from a checkpoint's weights, or a shipped model's (`charrnn zoo list`): "
                   "fine-tuning on a new text.")
@click.option("--dist", "dist_mode", type=click.Choice(["auto", "off"]), default="auto", show_default=True,
              help="auto: under mpiexec or srun, train data-parallel across the ranks; off: one process.")
@click.option("--dist-timeout", type=Finite(0, min_open=True), default=600.0, show_default=True,
              help="Seconds a rank waits for the others before ending the whole job.")
def train(text: tuple[str, ...], name: str | None, overwrite: bool, encoding: str, byte_mode: bool,
          globs: tuple[str, ...], exclude: tuple[str, ...], strict: bool, resume: str | None,
          init_from: str | None, dist_mode: str, dist_timeout: float, **kw) -> None:
    """Train on PATH: a file, - for stdin, a catalogue name such as shakespeare, or several of
    them, or a folder (read recursively, files in sorted order).

    Several files are several documents: the model also learns where each ends (an end symbol
    that `charrnn sample --documents N` stops at), and from 20 documents on whole documents are
    held out for validation and test (--split-by). One file trains exactly as it always has.

    Progress goes to stderr; `best` and `last` checkpoints and metrics.jsonl (learning curves and
    diagnostics) go to the run directory, and with --report a live report.html. Pick --lr with
    `charrnn lr-find` first. A run directory belongs to one run: a directory holding a run is
    refused (--resume it, or --overwrite), and a second live run on it is refused at once.

    \b
    Example:
      charrnn train shakespeare --minutes 10
      charrnn train shakespeare --report --lr 3e-3   # then: charrnn report --serve checkpoints/shakespeare
      charrnn train notes.txt --hidden 512 --layers 3 --dropout 0.2 --out runs/notes
      cat a.txt b.txt | charrnn train - --name ab
      charrnn train poems/ --glob '*.txt' --exclude drafts   # each file a document
      charrnn train --bytes firmware.bin --out runs/bin
      mpiexec -n 4 charrnn train big.txt --batch-size 128   # data parallel, 4 processes
    """
    from charrnn import dist
    from charrnn.assemble import prepare_run
    from charrnn.train import TrainingDiverged, TrainingInterrupted, summary_line

    trainer = prepare_run(text[0] if len(text) == 1 else text, kw, _given(kw), name=name, encoding=encoding,
                          byte_mode=byte_mode, resume=resume, init_from=init_from, overwrite=overwrite,
                          dist_mode=dist_mode, dist_timeout=dist_timeout, glob=globs, exclude=exclude,
                          strict=strict, log=say)
    try:
        result = trainer.run()
    except TrainingInterrupted as e:
        dist.agreed_exit()
        trainer.log(f"interrupted at step {trainer.progress.step}: saved {trainer.out / 'last.safetensors'}")
        sys.exit(e.exit_code)
    except TrainingDiverged as e:
        dist.agreed_exit()
        trainer.log(f"charrnn: error: {e}")
        sys.exit(1)
    finally:
        if trainer.claim is not None:       # the lock of the run directory (rank 0's)
            trainer.claim.release()
    trainer.log(summary_line(result, trainer.out))


# ---------------------------------------------------------------- lr-find
@click.command("lr-find", context_settings=CONTEXT)
@click.argument("text", metavar="FILE")
@_options(MODEL_OPTIONS)
@_options(OPTIMIZER_OPTIONS)
@click.option("--steps", type=click.IntRange(LR_FIND_MIN_STEPS), default=LR_FIND_STEPS, show_default=True,
              help="Steps of the test (it may stop earlier, once the loss blows up).")
@click.option("--start", type=Finite(0, min_open=True), default=LR_FIND_START, show_default=True,
              help="The first learning rate.")
@click.option("--end", type=Finite(0, min_open=True), default=LR_FIND_END, show_default=True,
              help="The last learning rate; the rate grows exponentially in between.")
@click.option("--json", "as_json", is_flag=True, help="Print the curve and the suggestion as JSON on stdout.")
@click.option("-o", "--output", default=None, help="Also write an HTML page with the curve to this file.")
@click.option("--seed", type=_num("seed"), default=_D.seed, show_default=True)
@device_option
@click.option("--encoding", default="utf-8", show_default=True, help="Text encoding of FILE.")
@click.option("--bytes", "byte_mode", is_flag=True, help="Read FILE as raw bytes (256 symbols).")
def lr_find(text: str, steps: int, start: float, end: float, as_json: bool, output: str | None, encoding: str,
            byte_mode: bool, **kw) -> None:
    """Find a learning rate: the range test (Smith, 2017) on a fresh model.

    The rate rises exponentially from --start to --end over --steps training steps while the
    loss is recorded; stderr gets a short table and a suggested --lr (where the smoothed loss
    falls fastest, and a tenth of the rate at its minimum). Nothing is saved. Give the model,
    batch and optimizer flags you mean to train with.

    \b
    Example:
      charrnn lr-find shakespeare -o lr.html
      charrnn lr-find notes.txt --hidden 512 --optimizer rmsprop --json > lr.json
    """
    import json

    from tqdm import tqdm

    from charrnn import lrfind

    if not start < end:
        raise InputError("--start must be below --end")
    opts, data = lrfind.prepare(text, kw, given=_given(kw), encoding=encoding, byte_mode=byte_mode, log=say)
    with tqdm(total=steps, unit="step", file=sys.stderr, disable=None, leave=False) as bar:
        curve = lrfind.lr_find(opts, data, steps, start, end, log=say, progress=bar.update)
    say(lrfind.summary_table(curve))
    if curve.stopped:
        say(f"stopped after {len(curve.lr)} steps: {curve.stopped}")
    say(lrfind.suggestion_line(curve))
    if output:
        write_page(output, lrfind.page_for(curve, opts, text))
    if as_json:
        click.echo(json.dumps(curve.to_dict()))
