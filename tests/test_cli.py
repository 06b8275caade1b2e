"""charrnn/cli.py: the command tree itself. `--help` of every command, walked from the root,
shows an example and answers without importing NumPy or Numba (the command bodies import
what they need); --version."""
from __future__ import annotations

import json
import subprocess
import sys

_WALK = """
import json, sys
import click
from click.testing import CliRunner
from charrnn.cli import cli

def walk(cmd, path):
    yield path
    if isinstance(cmd, click.Group):
        for name, sub in sorted(cmd.commands.items()):
            yield from walk(sub, path + [name])

seen = []
for path in walk(cli, []):
    r = CliRunner().invoke(cli, path + ["--help"])
    assert r.exit_code == 0 and "Example" in r.output, (path, r.output)
    seen.append([" ".join(path), "numpy" in sys.modules, "numba" in sys.modules,
                 "starlette" in sys.modules or "uvicorn" in sys.modules])
print(json.dumps(seen))
"""


def test_help_of_every_command_shows_an_example_and_imports_neither_numpy_nor_numba():
    r = subprocess.run([sys.executable, "-c", _WALK], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout)
    names = {row[0] for row in seen}
    assert {"", "train", "sample", "eval", "corpus", "corpus list", "corpus get", "lr-find", "zoo", "export",
            "report", "viz", "serve", "warm"} <= names
    assert [row for row in seen if any(row[1:])] == []


def test_version_prints_the_version():
    from click.testing import CliRunner
    from charrnn import __version__
    from charrnn.cli import cli
    res = CliRunner().invoke(cli, ["--version"])
    assert res.exit_code == 0 and __version__ in res.output


def test_every_device_option_offers_the_backends_choices_and_default():
    from charrnn.backends import DEFAULT_DEVICE, DEVICES
    from charrnn.cli import cli
    seen = []
    for name, cmd in cli.commands.items():
        for p in cmd.params:
            if p.name == "device":
                seen.append(name)
                assert tuple(p.type.choices) == DEVICES and p.default == DEFAULT_DEVICE, name
    assert {"train", "lr-find", "sample", "eval"} <= set(seen)


def test_lr_find_command_defaults_are_the_library_functions():
    import inspect
    from charrnn.cli import cli
    from charrnn.lrfind import lr_find
    defaults = {k: v.default for k, v in inspect.signature(lr_find).parameters.items()}
    params = {p.name: p for p in cli.commands["lr-find"].params}
    for k in ("steps", "start", "end"):
        assert params[k].default == defaults[k], k
    assert params["steps"].type.min == 13
