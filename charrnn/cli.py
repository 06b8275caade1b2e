"""The command line: parse, make one library call, report. Heavy imports (NumPy, Numba) happen
inside the commands so `--help` stays fast. stdout carries only the product; everything
else goes to stderr. Exit codes: 0 success, 1 runtime failure, 2 usage or input error.
"""
from __future__ import annotations

import os
import sys

import click

from charrnn import __version__
from charrnn.cli_base import CONTEXT, Group, is_help, silence_stdout, usage_line
from charrnn.cli_corpus import corpus
from charrnn.cli_sample import eval_, sample
from charrnn.cli_serve import serve
from charrnn.cli_train import lr_find, train
from charrnn.cli_viz import report, viz
from charrnn.cli_warm import warm
from charrnn.cli_zoo import export, zoo_group
from charrnn.errors import UserError


@click.group(cls=Group, context_settings=CONTEXT)
@click.version_option(__version__, "-V", "--version", prog_name="charrnn")
def cli() -> None:
    """Character-level RNN text generator: train on a text, sample new text, score held-out text.

    \b
    Example:
      charrnn train shakespeare          # checkpoints go to checkpoints/shakespeare/
      charrnn sample --temp 0.8 | head   # stream text from the newest best checkpoint
      charrnn eval --split test          # bits per character on the held-back test split
      charrnn lr-find shakespeare        # suggest a learning rate
      charrnn serve                      # the model behind http://127.0.0.1:8000
    """
    from charrnn.threads import setup_threads
    setup_threads()            # before any command loads NumPy: CHARRNN_THREADS, an MPI rank's share


cli.add_command(train)
cli.add_command(lr_find)
cli.add_command(sample)
cli.add_command(eval_)
cli.add_command(serve)
cli.add_command(corpus)
cli.add_command(zoo_group)
cli.add_command(export)
cli.add_command(report)
cli.add_command(viz)
cli.add_command(warm)


def main() -> None:
    """Entry point: turn known failures into one line and an exit code, never a traceback. In a
    data-parallel run a failing rank ends every rank with its exit code (charrnn/dist.py)."""
    from charrnn import dist
    try:
        _main()
    except SystemExit as e:
        dist.abort_on_failure(e.code)
        raise
    except BaseException:             # CHARRNN_DEBUG: the traceback first, then the job ends
        if dist.current() is not None:
            import traceback
            traceback.print_exc()
            dist.abort_on_failure(1)
        raise


def _main() -> None:
    from charrnn.dist import DistError
    try:
        # standalone_mode=False returns ctx.exit(code)'s code instead of exiting: pass it on
        rv = cli.main(prog_name="charrnn", auto_envvar_prefix="CHARRNN", standalone_mode=False)
        if isinstance(rv, int) and not isinstance(rv, bool) and rv:
            sys.exit(rv)
    except SystemExit as e:
        # Click answers EPIPE on stdout with exit 1 after wrapping stdout; a reader that went away
        # (`| head`) is not a failure
        if e.code == 1 and isinstance(sys.stdout, click.utils.PacifyFlushWrapper):
            silence_stdout()
            sys.exit(0)
        raise
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.UsageError as e:     # the group's own options and arguments (`charrnn --bogus`)
        if is_help(e):
            e.show()
        else:
            click.echo(f"charrnn: error: {usage_line(e)}", err=True)
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except UserError as e:            # raised outside a command body (a parameter callback)
        click.echo(f"charrnn: error: {e}", err=True)
        sys.exit(e.exit_code)
    except DistError as e:
        click.echo(f"charrnn: error: {e}", err=True)
        sys.exit(1)
    except BrokenPipeError:
        silence_stdout()
        sys.exit(0)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except MemoryError:
        click.echo("charrnn: error: out of memory", err=True)
        sys.exit(1)
    except OSError as e:
        click.echo(f"charrnn: error: {e.strerror or e}" + (f": {e.filename}" if e.filename else ""), err=True)
        sys.exit(1)
    except Exception as e:
        if os.environ.get("CHARRNN_DEBUG"):
            raise
        click.echo(f"charrnn: internal error: {type(e).__name__}: {e} (set CHARRNN_DEBUG=1 for details)", err=True)
        sys.exit(1)
