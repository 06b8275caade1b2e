"""What every command module shares: Click's context settings, the line on stderr, the one
place a `UserError` becomes one line and exit status 2, a quiet end when the reader of stdout
goes away, and writing a page. Light on purpose: `--help` imports it.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from charrnn.errors import InputError, UserError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


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


class Group(click.Group):
    """A command group whose commands' UserErrors (nested groups' included) become UserFailures,
    so main() and Click's own runner (tests) report them the same way."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as e:
            raise UserFailure(e) from None


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
