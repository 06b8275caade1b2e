"""What every command module shares: Click's context settings, the line on stderr, and the one
place a `UserError` becomes one line and exit status 2. Light on purpose: `--help` imports it.
"""
from __future__ import annotations

import sys

import click

from charrnn.errors import UserError

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
