"""The errors a user can cause, as one family. A `UserError` means "what you asked for cannot be
done" (a bad file, flag, checkpoint or device), never "charrnn broke": the CLI prints its message
as one line on stderr and exits with status 2. The subclasses let callers tell the kinds apart;
each module that raises one re-exports it under its old home (`charrnn.corpus.CorpusError`, ...).
Imports nothing, so `--help` stays light.
"""
from __future__ import annotations


class UserError(Exception):
    """Bad input: the message is one sentence for the user; exit status 2."""
    exit_code = 2


class InputError(UserError):
    """Flags or arguments that cannot go together, or input a command cannot use."""


class CorpusError(UserError):
    """A text (file, stdin or catalogue corpus) that cannot be read or trained on."""


class CheckpointError(UserError):
    """The file is not a usable charrnn checkpoint; the message says why in one sentence."""


class DeviceError(UserError):
    """The requested device cannot be used here."""


class SampleError(UserError, ValueError):
    """A prime or stop string this model cannot take."""


class ReportError(UserError):
    """A run directory or metrics file that a report cannot be made from."""


class VizError(UserError):
    """A checkpoint, text or cell selection that a visualisation cannot be made from."""
