"""What every command module shares: Click's context settings, the line on stderr, the one
place a `UserError` becomes one line and exit status 2, a quiet end when the reader of stdout
goes away, and writing a page. Light on purpose: `--help` imports it.
"""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import click

from charrnn.backends import DEFAULT_DEVICE, DEVICES, WEIGHTS
from charrnn.errors import InputError, UserError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class Finite(click.FloatRange):
    """A float range that also refuses NaN and infinity (Click's own range lets NaN through, since
    every comparison with NaN is false)."""
    name = "finite float range"

    def convert(self, value, param, ctx):
        try:
            f = float(value)
        except (TypeError, ValueError):
            f = None
        if f is not None and not math.isfinite(f):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return super().convert(value, param, ctx)


def say(msg: str) -> None:
    """A line for the human, on stderr (never stdout), without breaking a progress bar."""
    try:
        from tqdm import tqdm
        tqdm.write(msg, file=sys.stderr)
    except Exception:
        click.echo(msg, err=True)


class UserFailure(click.ClickException):
    """A UserError leaving a command: one line on stderr, the error's exit code (2)."""

    def __init__(self, err: UserError):
        super().__init__(str(err))
        self.exit_code = err.exit_code

    def show(self, file=None) -> None:
        click.echo(f"charrnn: error: {self.message}", err=True)


class UsageFailure(click.ClickException):
    """Click's usage error (bad option value, unknown option, missing argument) as one line."""
    exit_code = 2

    def __init__(self, err: click.UsageError):
        super().__init__(usage_line(err))

    def show(self, file=None) -> None:
        click.echo(f"charrnn: error: {self.message}", err=True)


def usage_line(e: click.UsageError) -> str:
    """Click's message on one line, led by the option it is about, with where help is."""
    if isinstance(e, click.BadParameter) and not isinstance(e, click.MissingParameter) and e.param is not None:
        p = e.param
        name = max(p.opts, key=len) if isinstance(p, click.Option) else (p.metavar or p.name or "").upper()
        msg = f"{name}: {e.message}"
    else:
        msg = e.format_message()
    msg = " ".join(msg.split()).rstrip(".")
    where = e.ctx.command_path if e.ctx is not None else "charrnn"
    return f"{msg[:1].lower() + msg[1:] if msg[1:2].islower() else msg} (see {where} --help)"


def is_help(e: click.UsageError) -> bool:
    """`charrnn` alone (or a group alone): Click shows the help, which stays as it is."""
    return type(e).__name__ == "NoArgsIsHelpError"


class Group(click.Group):
    """A command group whose commands' UserErrors (nested groups' included) become UserFailures,
    and Click's usage errors UsageFailures, so main() and Click's own runner (tests) report them
    the same way: one line, exit 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as e:
            raise UserFailure(e) from None
        except click.UsageError as e:
            if is_help(e):
                raise
            raise UsageFailure(e) from None


class quiet_pipe:
    """A reader that goes away (`| head`) ends the command quietly with exit 0."""

    def __enter__(self):
        return self

    def __exit__(self, typ, exc, tb):
        if typ is not None and issubclass(typ, BrokenPipeError):
            silence_stdout()
            sys.exit(0)
        return False


def silence_stdout() -> None:
    # Python's documented recipe: point stdout at devnull so the exit-time flush cannot fail again
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


# --device, as every command that runs a model takes it
device_option = click.option("--device", type=click.Choice(DEVICES), default=DEFAULT_DEVICE, show_default=True)
weights_option = click.option(
    "--weights", type=click.Choice(WEIGHTS), default=WEIGHTS[0], show_default=True,
    help="Round the weights to 16 bits (bfloat16 or IEEE half) when loading: half the bytes a character reads, "
         "sums still in float32 (CPU, LSTM models; bench/RESULTS.md states the bits/char cost).")


def write_page(path: str, html: str) -> None:
    """Write the page to PATH (atomically), or to stdout for '-'."""
    if path == "-":
        click.echo(html, nl=False)
        return
    out = Path(path)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(html, encoding="utf-8")
        os.replace(tmp, out)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise InputError(f"cannot write {path}: {e.strerror or e}") from None
    click.echo(f"wrote {out} ({out.stat().st_size / 1024:.0f} kB)", err=True)
