"""``charrnn sample`` and ``charrnn eval``: parsed here, done by charrnn.sample.run and
charrnn.evaluate.evaluate_checkpoint. Registered in the main CLI.
"""
from __future__ import annotations

import sys

import click

from charrnn.cli_base import CONTEXT, Finite, device_option, quiet_pipe, say, weights_option
from charrnn.decoding import DEFAULTS as D
from charrnn.errors import InputError
from charrnn.options import DYNAMIC_LR, DYNAMIC_RULES, Dynamic

MAX_SEED = 2 ** 62          # sample i draws with seed + i: room to add
MIN_TEMP = 1e-4             # below this (but above 0) logits / temp overflows float32; it is argmax anyway


# ---------------------------------------------------------------- sample
@click.command(context_settings=CONTEXT)
@click.argument("checkpoint", required=False)
@click.option("--length", "-n", type=click.IntRange(0), default=D.length, show_default=True,
              help="Characters (bytes for a byte model) per sample, after the prime; 0 is endless.")
@click.option("--temp", "-t", type=Finite(0), default=D.temperature, show_default=True,
              help="Temperature: lower is safer, higher is wilder; 0 is greedy argmax.")
@click.option("--top-k", type=click.IntRange(0), default=D.top_k, show_default=True, help="Keep the k likeliest (0: all).")
@click.option("--top-p", type=Finite(0, 1, min_open=True), default=D.top_p, show_default=True,
              help="Nucleus: keep the smallest set with this much probability.")
@click.option("--num-samples", "-N", type=click.IntRange(1), default=D.batch, show_default=True,
              help="Samples generated together in one batch; row 0 streams, the rest follow in order.")
@click.option("--separator", default="",
              help="Line written between plain samples (default: a blank line).")
@click.option("--stop", metavar="STRING", default=None,
              help="End a sample when its generated text ends with STRING (kept).")
@click.option("--prime", "-p", default=None, help="Text to start from, or - to read it from stdin.")
@click.option("--prime-file", type=click.Path(dir_okay=False, allow_dash=True), default=None,
              help="Read the prime from FILE (- for stdin).")
@click.option("--echo/--no-echo", default=True, show_default=True, help="Write the prime before each sample.")
@click.option("--adapt", metavar="FILE", type=click.Path(dir_okay=False, allow_dash=True), default=None,
              help="First let the model learn from FILE as it reads it (dynamic evaluation), then sample "
                   "from the adapted weights, continuing FILE. Unlike --prime, the weights change.")
@click.option("--unknown", type=click.Choice(["error", "skip"]), default="error", show_default=True,
              help="Prime characters outside the vocabulary: stop with an error listing them, or drop them.")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON line per sample: text, seed, log-probability and bits/char under the model.")
@click.option("--documents", type=click.IntRange(1), default=None, metavar="N",
              help="A model trained on several documents: write N whole documents, each ended by the model's "
                   "end-of-document symbol (not written), a blank line between them; no length limit unless "
                   "--length is given.")
@click.option("--until-end", is_flag=True,
              help="A model trained on several documents: run one sample to its document's end, with no "
                   "length limit unless --length is given.")
@click.option("--seed", type=click.IntRange(0, MAX_SEED), default=None,
              help="Random seed (sample i uses SEED+i); the same seed gives the same text [random].")
@device_option
@weights_option
def sample(checkpoint: str | None, prime: str | None, prime_file: str | None, separator: str,
           stop: str | None, unknown: str, echo: bool, seed: int | None, device: str, adapt: str | None,
           documents: int | None, until_end: bool, **kw) -> None:
    """Stream generated text to stdout from CHECKPOINT (default: the newest best under ./checkpoints,
    else the shipped model).

    CHECKPOINT is a .safetensors file, a run directory or a shipped model's name (`charrnn zoo list`).

    A model trained on several documents starts each sample at the beginning of a document and
    ends it where the model ends the document (--documents N, --until-end), or at --length.

    A byte model (trained with --bytes) writes raw bytes, so `sample > out.bin` keeps them exactly.

    \b
    Example:
      charrnn sample --temp 0.8 --length 500
      charrnn sample checkpoints/shakespeare --prime "ROMEO:" --seed 7 | head -20
      charrnn sample shakespeare -n 300           # the shipped model, always
      printf 'To be' | charrnn sample --prime - --top-p 0.9 -n 200
      charrnn sample --adapt my_letter.txt -n 400  # learn from the letter, then continue it
      charrnn sample -N 8 --stop $'\\n' --json --temp 0.7    # eight lines, one JSON object each
      charrnn sample checkpoints/poems --documents 3   # three whole poems
    """
    from click.core import ParameterSource

    from charrnn import sample as smp

    if prime is not None and prime_file is not None:
        raise click.UsageError("give --prime or --prime-file, not both")
    if 0 < kw["temp"] < MIN_TEMP:
        raise InputError(f"--temp: {kw['temp']:g} is too small to compute; 0 is greedy argmax, the same draw")
    if sys.stdout is None:          # started with stdout closed (`>&-`)
        raise InputError("stdout is closed: nowhere to write the samples (redirect it to a file or /dev/null)")
    if adapt is not None and kw["weights"] != "f32":
        raise click.UsageError("--adapt changes the weights as it reads; it takes float32 weights, not --weights")
    if adapt == "-" and "-" in (prime, prime_file):
        raise click.UsageError("--adapt - and the prime cannot both read stdin")
    ctx = click.get_current_context()
    whole = bool(documents) or until_end          # the model's end symbol ends each sample
    if documents and ctx.get_parameter_source("num_samples") == ParameterSource.COMMANDLINE:
        raise click.UsageError("--documents N is N samples: give it or --num-samples, not both")
    if whole and ctx.get_parameter_source("length") != ParameterSource.COMMANDLINE:
        kw["length"] = 0
    if kw["length"] == 0 and not stop and not whole and (kw["as_json"] or kw["num_samples"] > 1):
        raise click.UsageError("--length 0 (endless) streams one plain sample; with --json or "
                               "--num-samples give --stop STRING or a --length")
    try:
        with quiet_pipe():
            smp.run(checkpoint, sys.stdout.buffer, prime=prime, prime_file=prime_file, separator=separator,
                    stop=stop, unknown=unknown, echo=echo, seed=seed, device=device, adapt=adapt,
                    documents=documents or 0, until_end=until_end, log=say, **kw)
    except smp.Interrupted:                 # the usual end of endless output: quiet, exit 130
        sys.exit(130)


# ---------------------------------------------------------------- eval
_DYN = Dynamic()


@click.command("eval", context_settings=CONTEXT)
@click.argument("args", nargs=-1, metavar="[CHECKPOINT] [FILE|-]")
@click.option("--split", "which", type=click.Choice(["val", "test", "tail"]), default="test", show_default=True,
              help="The held-back split of the training text, used when no FILE is given; tail is "
                   "validation and test as one stream (the last 10% by default).")
@click.option("--dynamic", is_flag=True,
              help="Dynamic evaluation: after scoring each segment, take a gradient step on it, so the "
                   "model adapts to the text as it reads (slower; the checkpoint is not changed).")
@click.option("--dynamic-rule", type=click.Choice(list(DYNAMIC_RULES)), default=_DYN.rule, show_default=True,
              help="rms: steps scaled by the training gradient's RMS, with --dynamic-decay; sgd: plain steps.")
@click.option("--dynamic-lr", metavar="RATE|auto", default=None,
              help="Step size, or auto to pick it on the validation split ["
                   + "; ".join(f"{k}: {v:g}" for k, v in DYNAMIC_LR.items()) + "].")
@click.option("--dynamic-decay", type=Finite(0), default=_DYN.decay, show_default=True,
              help="rms: pull toward the trained weights at each step.")
@click.option("--dynamic-seq-len", type=click.IntRange(1, 100_000), default=_DYN.seq_len, show_default=True,
              help="Characters per segment (one step each).")
@click.option("--dynamic-stats", type=click.Path(dir_okay=False, allow_dash=False), default=None,
              help="rms: compute the gradient statistics on FILE instead of the checkpoint's training split.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@device_option
@weights_option
def eval_(args: tuple[str, ...], which: str, dynamic: bool, dynamic_rule: str, dynamic_lr: str | None,
          dynamic_decay: float, dynamic_seq_len: int, dynamic_stats: str | None, as_json: bool, device: str,
          weights: str) -> None:
    """Bits per character of a checkpoint on FILE, or on its training text's held-back split.

    \b
    Example:
      charrnn eval --split test
      charrnn eval checkpoints/shakespeare held_out.txt --json
      charrnn eval shakespeare play.txt            # the shipped model on any text
      charrnn eval shakespeare --split tail --dynamic --dynamic-lr auto
    """
    import json

    from charrnn.errors import InputError
    from charrnn.evaluate import evaluate_checkpoint

    if len(args) > 2:
        raise click.UsageError("give at most a CHECKPOINT and a FILE")
    dyn, auto = None, False
    given = [n for n, v in (("--dynamic-lr", dynamic_lr), ("--dynamic-stats", dynamic_stats)) if v is not None]
    if given and not dynamic:
        raise InputError(f"{given[0]} needs --dynamic")
    if dynamic and weights != "f32":
        raise click.UsageError("--dynamic changes the weights as it reads; it takes float32 weights, not --weights")
    if dynamic:
        auto = dynamic_lr == "auto"
        try:
            lr = DYNAMIC_LR[dynamic_rule]
            if dynamic_lr is not None and not auto:
                lr = float(dynamic_lr)
            dyn = Dynamic(rule=dynamic_rule, lr=lr, decay=dynamic_decay, seq_len=dynamic_seq_len)
        except ValueError as e:
            msg = str(e) if "--dynamic" in str(e) else f"--dynamic-lr must be a number or auto, not {dynamic_lr!r}"
            raise InputError(msg) from None
    res = evaluate_checkpoint(args, which, device, log=say, dynamic=dyn, auto_lr=auto, stats_text=dynamic_stats,
                              weights=weights)
    with quiet_pipe():
        if as_json:
            click.echo(json.dumps(res))
        else:
            how = ""
            if dyn is not None:
                d = res["dynamic"]
                how = f" (dynamic: {d['rule']}, lr {d['lr']:g}" + (f", decay {d['decay']:g}" if d["rule"] == "rms" else "") \
                    + f", segments of {d['seq_len']})"
            click.echo(f"{res['bits_per_char']:.4f} bits/char  {res['nats_per_char']:.4f} nats/char  "
                       f"perplexity {res['perplexity']:.3f}  over {res['chars']:,} characters of {res['text']}{how}")
