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


def status(entry: cat.Entry) -> tuple[str, str, str]:
    """(size, status, where) of a catalogue corpus: local ($CHARRNN_CORPORA), cached, shipped,
    downloadable or to build, and where it lies."""
    try:
        found = _cat().locate(entry)
    except CorpusError as err:
        return "?", "damaged", str(err)
    if found is None:
        size = _size(entry["bytes"]) if entry.get("bytes") is not None else "?"
        if entry.get("build") is not None:
            how = "build code DIR" if entry["build"] == "code-dir" else f"get {entry['name']}"
            return "?", "to build", f"charrnn corpus {how}"
        return size, "downloadable", entry["url"]
    path, where = found
    label = {"offline": "local", "cache": "cached", "shipped": "shipped"}[where]
    size = _size(entry["bytes"] if where == "shipped" else path.stat().st_size)
    return size, label, str(path) + (" (gzip, unpacked on first use)" if where == "shipped" else "")


@corpus.command("list")
def list_() -> None:
    """List the corpora: size, licence, status and where each lies.

    STATUS is local (in $CHARRNN_CORPORA), cached, shipped (inside charrnn),
    downloadable or to build; SPLIT is the split the literature uses, where it
    has one (a run on the corpus takes it unless --val-frac or --test-frac is
    given).

    \b
    Example:
      charrnn corpus list
    """
    catalog = _load()
    rows = [("NAME", "SIZE", "LICENCE", "STATUS", "SPLIT", "WHERE")]
    for name, entry in catalog.items():
        size, state, where = status(entry)
        split = entry.get("split")
        frac = "-" if not split else f"{1 - split['val_frac'] - split['test_frac']:.0%}/{split['val_frac']:.0%}/" \
                                     f"{split['test_frac']:.0%}"
        rows.append((name, size, entry["licence"], state, frac, where))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for row in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[5])
    off = _cat().offline_dir()
    click.echo(f"\ncache: {_cat().cache_dir()}")
    click.echo(f"offline (${_cat().OFFLINE_ENV}): {off if off is not None else 'unset'}")
    from charrnn import zoo
    if zoo.names():
        click.echo(f"shipped models: {', '.join(zoo.names())} (`charrnn zoo list`)")


@corpus.command("build")
@click.argument("kind", type=click.Choice(["code"]))
@click.argument("folder", type=click.Path(file_okay=False))
@click.option("--glob", "globs", multiple=True, metavar="PATTERN",
              help="Only files whose name matches (a pattern with / matches the path inside FOLDER); repeatable.")
@click.option("--exclude", multiple=True, metavar="PATTERN",
              help="Leave out files and folders whose name or path matches; repeatable.")
def build(kind: str, folder: str, globs: tuple[str, ...], exclude: tuple[str, ...]) -> None:
    """Build corpus `code` from the source tree FOLDER into the cache; print its path.

    The text files under FOLDER (a kernel, a project) in sorted path order,
    each under a line '# ==== path ====', as one text that `charrnn train code`
    then reads. Binary and non-UTF-8 files are skipped; hidden names are left
    out. To keep the files as separate documents, train on FOLDER itself.

    \b
    Example:
      charrnn corpus build code ~/src/linux --glob '*.[ch]' --exclude Documentation
    """
    path = _cat().build_code(_cat().cache_dir(), folder, globs, exclude)
    import json
    record = json.loads(path.with_name(path.name + ".json").read_text(encoding="utf-8"))
    click.echo(f"corpus 'code' built from {record['root']}: {record['files']} files, {_size(record['bytes'])}"
               + (f", {len(record['skipped'])} skipped (not UTF-8 text)" if record["skipped"] else ""), err=True)
    click.echo(os.path.abspath(path))


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
