"""``charrnn warm``: parsed here, done by charrnn.warm.warm. Registered in the main CLI."""
from __future__ import annotations

import click

from charrnn.cli_base import CONTEXT, say


@click.command(context_settings=CONTEXT)
@click.option("--cell", "cells", multiple=True, type=click.Choice(["lstm", "gru", "rnn"]),
              help="Cell to compile for; repeat for several [default: lstm].")
def warm(cells: tuple[str, ...]) -> None:
    """Compile the CPU kernels of `charrnn sample` and `charrnn train` now, into Numba's cache.

    For container images and CI: run it once where the cache will be kept (the same
    NUMBA_CACHE_DIR, the same kind of CPU), and the first sample or training step in a fresh
    process loads the kernels instead of compiling them. Covers the default model shape and
    options; other shapes may still compile a kernel on first use.

    \b
    Example:
      charrnn warm
      charrnn warm --cell lstm --cell gru
      NUMBA_CACHE_DIR=/opt/numba-cache charrnn warm   # in a Dockerfile, with the same variable at run time
    """
    from charrnn.warm import warm as warm_kernels

    warm_kernels(cells or ("lstm",), log=say)
