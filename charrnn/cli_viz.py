"""``charrnn report`` and ``charrnn viz``: the training report and the cell-activation viewer.

Registered in the main CLI with ``cli.add_command(report)`` and ``cli.add_command(viz)``.
Both write one self-contained HTML file (no network fetches when opened).
"""
from __future__ import annotations

from pathlib import Path

import click

from charrnn.cli_base import CONTEXT, write_page
from charrnn.errors import InputError


@click.command(context_settings=CONTEXT)
@click.argument("run_dir", required=False)
@click.option("-o", "--output", default="report.html", show_default=True, help="HTML file to write; - for stdout.")
@click.option("--serve", is_flag=True,
              help="Instead, serve RUN_DIR read-only on 127.0.0.1 (for `train --report`'s live page; from a "
                   "remote machine, through an SSH tunnel) until Ctrl-C.")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True, help="Port for --serve.")
def report(run_dir: str | None, output: str, serve: bool, port: int) -> None:
    """Write an HTML report of a training run: learning curves, diagnostics, samples, config,
    final metrics.

    RUN_DIR is a directory `charrnn train` wrote (default: the newest under ./checkpoints).

    \b
    Example:
      charrnn report checkpoints/shakespeare -o report.html
      charrnn train shakespeare --report &  charrnn report --serve checkpoints/shakespeare
      ssh -L 8765:127.0.0.1:8765 gpu-box   # then open http://127.0.0.1:8765/ here
    """
    from charrnn.report import build_report, find_run_dir
    run = find_run_dir(run_dir)
    if serve:
        _serve(run, port)
        return
    write_page(output, build_report(run))


def _serve(run: Path, port: int) -> None:
    from charrnn.live import REPORT, make_server
    try:
        server = make_server(run, port)
    except OSError as e:
        raise InputError(f"cannot listen on 127.0.0.1:{port}: {e.strerror or e}") from None
    host, real_port = server.server_address[:2]
    click.echo(f"serving {run} at http://{host}:{real_port}/ (read-only; Ctrl-C stops)", err=True)
    if not (run / REPORT).is_file():
        click.echo(f"no {REPORT} there yet: train with --report, or write one with "
                   f"charrnn report {run} -o {run / REPORT}", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@click.command(context_settings=CONTEXT)
@click.argument("args", nargs=-1, metavar="[CHECKPOINT] TEXT_FILE")
@click.option("-o", "--output", default="cells.html", show_default=True, help="HTML file to write; - for stdout.")
@click.option("--cell", "cells", multiple=True, metavar="LAYER:INDEX",
              help="A cell to show (0-based layer and index); repeatable.")
@click.option("--state", type=click.Choice(["c", "h"]), default=None,
              help="Colour by the LSTM cell state c (shown as tanh(c), the default) or the output h "
                   "(the only state of GRU and RNN cells).")
@click.option("--gate", type=click.Choice(["input", "forget", "output", "update", "reset"]), default=None,
              help="Colour by a gate instead: input/forget/output (LSTM) or update/reset (GRU).")
@click.option("--find", is_flag=True,
              help="Rank the cells that track position in line, quotes and brackets; plot gate saturation. "
                   "The default when no --cell is given.")
@click.option("--top", type=click.IntRange(1, 50), default=3, show_default=True, help="Cells listed per property.")
@click.option("--length", type=click.IntRange(2), default=10000, show_default=True,
              help="Characters of the text to analyse.")
@click.option("--show", type=click.IntRange(1), default=2000, show_default=True,
              help="Characters drawn per cell (the first ones of the analysed text).")
def viz(args: tuple[str, ...], output: str, cells: tuple[str, ...], state: str | None, gate: str | None,
        find: bool, top: int, length: int, show: int) -> None:
    """Colour each character of TEXT_FILE by a cell's state or a gate, as the model reads it.

    CHECKPOINT defaults to the newest best under ./checkpoints. Hovering a character shows the
    value and the model's top-5 predictions for the next character.

    \b
    Example:
      charrnn viz checkpoints/shakespeare input.txt --find -o cells.html
      charrnn viz input.txt --cell 1:37 --cell 0:5 --gate forget
    """
    from charrnn.viz import page_for

    if not args or len(args) > 2:
        raise click.UsageError("give a TEXT_FILE, optionally after a CHECKPOINT")
    ck_arg, text_arg = (None, args[0]) if len(args) == 1 else args
    write_page(output, page_for(ck_arg, text_arg, list(cells), state, gate, find or not cells, top, length, show))
