"""``charrnn zoo list`` (the models shipped with charrnn) and ``charrnn export`` (a checkpoint
for sharing or shipping: weights only, with how it was made). Registered in the main CLI.
"""
from __future__ import annotations

import json

import click

from charrnn.cli_base import Group
from charrnn.errors import InputError


@click.group("zoo", cls=Group)
def zoo_group() -> None:
    """Pretrained models shipped with charrnn.

    A model's name works wherever a checkpoint does: `charrnn sample NAME`,
    `charrnn eval NAME FILE`, `charrnn train FILE --init-from NAME`.

    \b
    Example:
      charrnn zoo list
    """


@zoo_group.command("list")
def list_() -> None:
    """List the shipped models: name, shape, scores, size, how they were trained.

    \b
    Example:
      charrnn zoo list
    """
    from charrnn.zoo import listing
    click.echo(listing())


def _meta_value(text: str):
    """KEY=VALUE's value: JSON when it parses (numbers, true, null), else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


@click.command("export")
@click.argument("source", metavar="RUN_OR_CKPT")
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True, help="File to write.")
@click.option("--weights-only", is_flag=True,
              help="Leave out the optimizer moments, carried state and RNG (sample, eval and "
                   "--init-from need none of them; --resume does).")
@click.option("--half", is_flag=True,
              help="With --weights-only: store the weights as float16, half the size (sampling and "
                   "evaluation widen them to float32; on the shipped model the scores moved by 3e-6 bits/char).")
@click.option("--meta", "metas", multiple=True, metavar="KEY=VALUE",
              help="Add to the file's provenance record (e.g. command=..., commit=..., val_bpc=2.06).")
def export(source: str, output: str, weights_only: bool, half: bool, metas: tuple[str, ...]) -> None:
    """Write a copy of a checkpoint (a run directory's best, or a file) to FILE, stamped with the
    date and any --meta KEY=VALUE pairs, for sharing or shipping.

    \b
    Example:
      charrnn export checkpoints/shakespeare --weights-only -o model.safetensors
      charrnn export run/last.safetensors --weights-only -o m.safetensors --meta commit=abc123
      charrnn export checkpoints/shakespeare --weights-only --half -o small.safetensors
    """
    from charrnn.checkpoint import export as export_checkpoint

    meta = {}
    for item in metas:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise InputError(f"--meta takes KEY=VALUE, got {item!r}")
        meta[key] = _meta_value(value)
    export_checkpoint(source, output, only_weights=weights_only, half=half, meta=meta)
    click.echo(f"wrote {output}" + (" (weights only, float16)" if half else " (weights only)" if weights_only else ""),
               err=True)
