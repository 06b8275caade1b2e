"""``charrnn corpus``: list the catalogue's corpora, fetch them into the cache, show where they live.

Registered in the main CLI with ``cli.add_command(corpus)``.
"""

from __future__ import annotations

import os

import click

from charrnn.cli_base import Group
from charrnn.errors import CorpusError, InputError

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from . import catalog as cat


def _cat():
    """charrnn.catalog, imported on first use: it brings NumPy, which `--help` must not load."""
    from . import catalog
    return catalog


def _load() -> cat.Catalog:
    try:
        return _cat().load_catalog()
    except CorpusError as err:
        raise click.ClickException(str(err)) from None


def _entry(name: str, catalog: cat.Catalog) -> cat.Entry:
    entry = _cat().lookup(name, catalog)
    if entry is None:
        raise InputError(f"no catalogue corpus {name!r} (known: {', '.join(catalog) or 'none'})")
    return entry


def _size(n: int) -> str:
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


@click.group("corpus", cls=Group)
def corpus() -> None:
    """Named corpora from the catalogue: list, fetch and locate them.

    A name works wherever a text file does, e.g. `charrnn train shakespeare`.
    shakespeare ships with charrnn; for others offline, put the files into a
    directory and point CHARRNN_CORPORA at it.

    \b
    Examples:
      charrnn corpus list
      charrnn corpus get python
      CHARRNN_CORPORA=~/texts charrnn corpus path shakespeare
    """


@corpus.command("list")
def list_() -> None:
    """List the corpora: size, licence, whether and where present.

    One row per catalogue entry; WHERE is $CHARRNN_CORPORA, the cache or the
    copy shipped with charrnn.

    \b
    Example:
      charrnn corpus list
    """
    catalog = _load()
    rows = [("NAME", "SIZE", "LICENCE", "LOCAL", "WHERE")]
    for name, entry in catalog.items():
        try:
            found = _cat().locate(entry)
        except CorpusError as err:
            rows.append((name, "?", entry["licence"], "no", f"damaged: {err}"))
            continue
        if found is None:
            size = _size(entry["bytes"]) if entry.get("bytes") is not None else "(built)"
            rows.append((name, size, entry["licence"], "no", "-"))
        else:
            path, where = found
            label = {"offline": f"${_cat().OFFLINE_ENV}", "shipped": "shipped (gzip)"}.get(where, where)
            size = _size(entry["bytes"] if where == "shipped" else path.stat().st_size)
            rows.append((name, size, entry["licence"], "yes", f"{label}: {path}"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[4])
    off = _cat().offline_dir()
    click.echo(f"\ncache: {_cat().cache_dir()}")
    click.echo(f"offline (${_cat().OFFLINE_ENV}): {off if off is not None else 'unset'}")
    from charrnn import zoo
    if zoo.names():
        click.echo(f"shipped models: {', '.join(zoo.names())} (`charrnn zoo list`)")


@corpus.command("get")
@click.argument("name")
@click.option("--force", is_flag=True, help="Download or build into the cache again even if a copy is present.")
def get(name: str, force: bool) -> None:
    """Download or build corpus NAME into the cache; print its path.

    Downloads are verified against the catalogue's sha256 and resumed if
    interrupted.

    A verified copy already in CHARRNN_CORPORA or the cache is used as it is;
    the copy shipped with charrnn is unpacked into the cache.
    The cache is CHARRNN_CACHE, else $XDG_CACHE_HOME/charrnn or ~/.cache/charrnn.

    \b
    Example:
      charrnn corpus get shakespeare
    """
    entry = _entry(name, _load())
    try:
        path, desc = _cat().ensure(entry, force=force)
    except CorpusError as err:
        raise click.ClickException(str(err)) from None
    click.echo(desc, err=True)
    click.echo(os.path.abspath(path))


@corpus.command("path")
@click.argument("name")
def path(name: str) -> None:
    """Print where corpus NAME lives (exit status 2 if absent).

    Nothing is downloaded or built; the resolution order is the one of
    `charrnn train`: a path, CHARRNN_CORPORA, the cache, the shipped copy
    (unpacked into the cache).

    \b
    Example:
      charrnn corpus path shakespeare
    """
    catalog = _load()
    found, desc = _cat().resolve(name, fetch=False, catalog=catalog)
    click.echo(desc, err=True)
    click.echo(os.path.abspath(found))
