"""The zoo: pretrained models shipped inside the package, and how a checkpoint argument finds them.

A zoo model is a weights-only checkpoint (`charrnn export --weights-only`) in the shipped data
folder (``corpora/``, installed as ``charrnn.corpora``), named by its file stem; its metadata
holds how it was made (``provenance``: command, date, commit, validation and test bits/char).
`sample`, `eval` and `train --init-from` accept a zoo name wherever a checkpoint goes, and fall
back to the default model when no checkpoint is given and none is under ./checkpoints.
Library code never prints: :func:`resolve` returns the note the command should show.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from charrnn import catalog
from charrnn.checkpoint import CheckpointError, find_latest
from charrnn.checkpoint import resolve as resolve_path

DEFAULT = "shakespeare"
SUFFIX = ".safetensors"


def zoo_dir() -> Path:
    """Where the shipped models live (the shipped data folder)."""
    return catalog.data_dir()


def names() -> list[str]:
    """The shipped models' names, sorted."""
    folder = zoo_dir()
    return sorted(p.name[: -len(SUFFIX)] for p in folder.glob(f"*{SUFFIX}") if p.is_file())


def path_of(name: str) -> Path | None:
    """The file of zoo model ``name``, or None if no such model ships."""
    return zoo_dir() / f"{name}{SUFFIX}" if name in names() else None


def describe(ck) -> str:
    """A short description of a checkpoint for notes and listings: shape, corpus, scores."""
    c, prov = ck.config, ck.provenance
    shape = f"{c.layers}x{c.hidden} {c.cell.upper()}"
    scores = [f"{k} {prov[k + '_bpc']:.3f}" for k in ("val", "test") if isinstance(prov.get(k + "_bpc"), (int, float))]
    return shape + (f", {' / '.join(scores)} bits/char" if scores else "")


def resolve(arg: str | None, root: str = "checkpoints") -> tuple[Path, str | None]:
    """A checkpoint argument to a file, as (path, note for stderr or None).

    An existing file or run directory wins; then a zoo name; with no argument the newest
    ``best`` under ``root``, else the default zoo model, with a one-line note saying so."""
    if arg is None:
        found = find_latest(root)
        if found is not None:
            return found, None
        default = path_of(DEFAULT)
        if default is None:
            return resolve_path(None, root), None       # its error: nothing to fall back on
        return default, (f"no checkpoint under ./{root}: using the shipped model '{DEFAULT}' "
                         f"({default}); `charrnn train` makes your own")
    if Path(arg).exists():
        return resolve_path(arg), None
    found = path_of(arg) if catalog._is_bare(arg) else None
    if found is not None:
        return found, None
    shipped = ", ".join(names()) or "none"
    raise CheckpointError(f"no such checkpoint, run directory or shipped model: {arg} (shipped models: {shipped})")


def load_checkpoint(arg: str | None, log: Callable[[str], None] = lambda m: None):
    """The checkpoint `sample` and `eval` use: a path, a run directory, a shipped model's name, or
    (none given) the newest under ./checkpoints, else the shipped model, which `log` hears of."""
    from charrnn.checkpoint import load
    path, note = resolve(arg)
    if note:
        log(note)
    return load(path)


def listing() -> str:
    """`charrnn zoo list`'s table: each shipped model's name, shape and scores, file size and how it
    was trained (a damaged file says so in its row), then the folder they live in."""
    from charrnn.checkpoint import load
    rows = [("NAME", "MODEL", "SIZE", "TRAINED")]
    for name in names():
        path = zoo_dir() / f"{name}{SUFFIX}"
        try:
            ck = load(path)
        except CheckpointError as err:
            rows.append((name, f"damaged: {err}", "", ""))
            continue
        prov = ck.provenance
        trained = " ".join(str(prov[k]) for k in ("date", "command") if prov.get(k))
        rows.append((name, describe(ck), f"{path.stat().st_size / 1e6:.2f} MB", trained or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[3] for row in rows]
    return "\n".join(lines) + f"\n\nfolder: {zoo_dir()}"
