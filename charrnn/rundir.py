"""The run directory: which one a run writes to, and that it belongs to that run alone.

- Naming (`choose`): `--out DIR`, `--name NAME` (checkpoints/NAME, never outside checkpoints/),
  a resumed run's own directory, or checkpoints/<text stem>; conflicting or empty names refused.
- Ownership (`claim`): a directory that holds a run (a `best`/`last` checkpoint or a metrics log)
  is never silently reused. A resumed run may continue in its own; otherwise a named directory
  is refused with one line naming the run found there, a default name moves on to a fresh one
  (checkpoints/notes-2, -3, ...), and `--overwrite` moves the old run aside (DIR.old-N), never
  deleting it.
- The lock (`RunLock`): the file `run.lock` holding the owner's pid, host and start time, locked
  with flock(2) for the whole run, so a second live run on the directory is refused at once and
  the lock of a killed run (the kernel drops its flock) is taken over. Where flock is not
  available the pid in the file decides, on the same host.
- Hygiene: the directory is made and proved writable at start-up (`prepare_out_dir`), the disk
  checked for room (`check_free_space`), and temporary files of killed runs swept.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from charrnn.errors import CorpusError, InputError, UserError

ROOT = "checkpoints"          # where named and default runs live
LOCK_NAME = "run.lock"
RUN_FILES = ("best.safetensors", "last.safetensors", "metrics.jsonl")   # any of them: a run lives here


class RunDirError(UserError):
    """The run directory is taken (by a finished run or a live one) or cannot be used."""


# ---------------------------------------------------------------- naming
def check_path_text(flag: str, value: str) -> None:
    """A path given on the command line that the file system can take: not empty, no NUL, and
    encodable as a file name here."""
    if not value.strip():
        raise InputError(f"{flag}: an empty name")
    if "\0" in value:
        raise InputError(f"{flag}: a name cannot hold a NUL character")
    try:
        os.fsencode(value)
    except UnicodeError:
        raise InputError(f"{flag}: {value!r} cannot be a file name here") from None


def name_dir(name: str, root: str = ROOT) -> str:
    """checkpoints/NAME for --name NAME, which must stay inside checkpoints/."""
    check_path_text("--name", name)
    parts = Path(name).parts
    if Path(name).is_absolute() or ".." in parts or not [p for p in parts if p != "."]:
        raise InputError(f"--name: {name!r} would leave ./{root}; give a plain name, or --out DIR for "
                         f"another place")
    return str(Path(root, name))


def choose(text: str, *, out: str | None, name: str | None, resume_dir: Path | None,
           root: str = ROOT) -> tuple[str, bool]:
    """The run directory a run asks for, and whether the name is a default (which may move on to
    a fresh one when taken) rather than one the user gave."""
    if out is not None and name is not None:
        raise InputError("give --out DIR or --name NAME, not both (--name NAME is --out checkpoints/NAME)")
    if out is not None:
        check_path_text("--out", out)
        return out, False
    if name is not None:
        return name_dir(name, root), False
    if resume_dir is not None:
        return str(resume_dir), False
    stem = Path(text).stem if text != "-" else ""
    if text != "-" and Path(text).is_dir():         # a folder of documents: the run takes its name
        stem = Path(text).resolve().name
    if not stem or stem.startswith(".") or "\0" in stem:
        raise InputError("reading stdin: name the run with --out DIR or --name NAME" if text == "-" else
                         f"cannot name a run after {text!r}: give --out DIR or --name NAME")
    return str(Path(root, stem)), True


# ---------------------------------------------------------------- what a directory holds
def run_summary(path: Path) -> str | None:
    """A few words on the run in `path` ("best 4.82 bits/char, step 10"), or None if it holds none."""
    if not any((path / f).exists() for f in RUN_FILES):
        return None
    from charrnn.checkpoint import read_metadata
    best = step = None
    for which in ("last", "best"):
        f = path / f"{which}.safetensors"
        if not f.is_file():
            continue
        try:
            meta = read_metadata(f)
            progress = json.loads(meta.get("progress", "{}"))
            metrics = json.loads(meta.get("metrics", "{}"))
        except (UserError, ValueError, TypeError):
            continue
        if step is None and isinstance(progress, dict) and isinstance(progress.get("step"), int):
            step = progress["step"]
        if which == "best" and isinstance(metrics, dict) and isinstance(metrics.get("val_bpc"), (int, float)):
            best = float(metrics["val_bpc"])
    if step is None:
        step = _last_logged_step(path / "metrics.jsonl")
    parts = []
    if best is not None:
        parts.append(f"best {best:.2f} bits/char")
    if step is not None:
        parts.append(f"step {step}")
    if not (path / "best.safetensors").exists() and not (path / "last.safetensors").exists():
        parts.append("no checkpoint")
    return ", ".join(parts)


def _last_logged_step(metrics: Path) -> int | None:
    try:
        lines = metrics.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), int):
            return rec["step"]
    return None


# ---------------------------------------------------------------- the lock
class RunLock:
    """The run's hold on its directory: `run.lock`, flock-ed while the file descriptor is open.
    `previous` describes an owner whose lock was taken over (it had died), else None."""

    def __init__(self, path: Path, fd: int, previous: str | None):
        self.path, self.fd, self.previous = path, fd, previous

    def release(self) -> None:
        """Remove the lock file (if it is still this lock's) and let go."""
        if self.fd is None:
            return
        try:
            st, now = os.fstat(self.fd), os.stat(self.path)
            if (st.st_ino, st.st_dev) == (now.st_ino, now.st_dev):
                os.unlink(self.path)
        except OSError:
            pass
        os.close(self.fd)          # closing drops the flock
        self.fd = None

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _holder(text: str) -> dict:
    try:
        d = json.loads(text)
    except ValueError:
        return {}
    return d if isinstance(d, dict) else {}


def _describe(h: dict) -> str:
    if not isinstance(h.get("pid"), int):
        return "an unknown process"
    since = f", since {h['started']}" if isinstance(h.get("started"), str) else ""
    return f"pid {h['pid']} on {h.get('host', '?')}{since}"


def _read_fd(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, 4096).decode("utf-8", "replace")


def _write_holder(fd: int) -> None:
    me = {"pid": os.getpid(), "host": socket.gethostname(),
          "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    os.lseek(fd, 0, os.SEEK_SET)
    os.ftruncate(fd, 0)
    os.write(fd, (json.dumps(me) + "\n").encode())
    os.fsync(fd)


def _busy(run_dir: Path, h: dict) -> RunDirError:
    return RunDirError(f"{run_dir} is in use by a live run ({_describe(h)}); wait for it to end, "
                       f"or pick another --out/--name")


def acquire(run_dir: Path) -> RunLock:
    """Lock `run_dir` for this process, or raise RunDirError at once if a live run holds it. A
    lock left by a process that is gone is taken over (RunLock.previous says whose it was)."""
    path = run_dir / LOCK_NAME
    try:
        import fcntl
    except ImportError:             # no flock here: the pid in the file decides
        return _acquire_by_pid(run_dir)
    for _ in range(20):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as e:
            raise CorpusError(f"cannot write checkpoints to {run_dir}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            h = _holder(_read_fd(fd))
            os.close(fd)
            raise _busy(run_dir, h) from None
        except OSError as e:
            empty = os.fstat(fd).st_size == 0
            os.close(fd)
            if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                if empty:           # made by the open above: the pid-file scheme creates its own
                    path.unlink(missing_ok=True)
                return _acquire_by_pid(run_dir)
            raise CorpusError(f"cannot lock {path}: {e.strerror or e}") from None
        try:   # the file may have been unlinked by its releasing owner between open and flock
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        previous = _read_fd(fd).strip()
        _write_holder(fd)
        return RunLock(path, fd, _describe(_holder(previous)) if previous else None)
    raise RunDirError(f"cannot lock {path}: it keeps changing under another process")


def _acquire_by_pid(run_dir: Path) -> RunLock:
    path = run_dir / LOCK_NAME
    previous = None
    for _ in range(20):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:
                h = _holder(path.read_text(encoding="utf-8", errors="replace"))
            except FileNotFoundError:
                continue
            if h.get("host") == socket.gethostname() and isinstance(h.get("pid"), int) and not _alive(h["pid"]):
                previous = _describe(h)
                try:
                    path.unlink()
                except FileNotFoundError:
                    pass
                continue
            raise _busy(run_dir, h) from None
        except OSError as e:
            raise CorpusError(f"cannot write checkpoints to {run_dir}: {e.strerror or e}") from None
        _write_holder(fd)
        return RunLock(path, fd, previous)
    raise RunDirError(f"cannot lock {path}: it keeps changing under another process")


# ---------------------------------------------------------------- claiming a directory
@dataclass
class Claim:
    """A run directory this run owns: its path and lock. `abandon()` on a failed start-up lets go
    and removes the directory again if this run made it and left it empty."""
    path: Path
    lock: RunLock
    created: bool
    n: int = 1              # path is numbered(the name asked for, n)

    def release(self) -> None:
        self.lock.release()

    def abandon(self) -> None:
        self.lock.release()
        if self.created:
            try:
                self.path.rmdir()
            except OSError:
                pass


def numbered(base: Path, n: int) -> Path:
    """The n-th directory tried for a default name: base itself, then base-2, base-3, ..."""
    return base if n <= 1 else base.with_name(f"{base.name}-{n}")


def _make(path: Path) -> bool:
    """mkdir -p; True if the directory itself was made now."""
    existed = path.is_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CorpusError(f"cannot write checkpoints to {path}: {e.strerror or e}") from None
    return not existed


def _aside(path: Path) -> Path:
    for k in range(1, 10_000):
        target = path.with_name(f"{path.name}.old-{k}")
        if not target.exists():
            return target
    raise RunDirError(f"cannot move the run in {path} aside: {path}.old-1 ... -9999 all exist")


def claim(out: str, *, fresh_name: bool = False, overwrite: bool = False, resume_dir: Path | None = None,
          log: Callable[[str], None] = lambda m: None) -> Claim:
    """Make `out` this run's directory and lock it (see the module's docstring). `resume_dir`:
    the directory of the checkpoint being resumed (a run may continue in its own directory)."""
    base = Path(out)
    taken = ""              # why the default name was passed over
    for n in range(1, 10_000):
        path = numbered(base, n)
        if fresh_name and n > 1 and run_summary(path) is not None:
            continue
        created = _make(path)
        try:
            lock = acquire(path)
        except RunDirError as e:
            if fresh_name:
                taken = taken or str(e).split(";")[0].replace(f"{path} is", "is")
                continue
            raise
        if lock.previous:
            log(f"took over the lock of {path} from a run that is gone ({lock.previous})")
        found = run_summary(path)
        own = resume_dir is not None and path.resolve() == Path(resume_dir).resolve()
        if found is None or own:
            if n > 1:
                log(f"{base} {taken}: this run goes to {path}/ "
                    f"(--resume {base} continues that one; --name or --out picks the name)")
            return Claim(path, lock, created, n)
        if overwrite:
            return _replace(path, lock, found, log)
        lock.release()
        taken = taken or f"holds a run ({found})"
        if not fresh_name:
            raise RunDirError(f"{path} holds a run ({found}); --resume it, pick --out/--name, or --overwrite")
    raise RunDirError(f"{base} and its numbered siblings up to -9999 all hold runs; pick --out/--name")


def _replace(path: Path, lock: RunLock, found: str, log: Callable[[str], None]) -> Claim:
    """--overwrite: move the run in `path` (locked by `lock`) aside and claim `path` afresh."""
    target = _aside(path)
    try:
        os.rename(path, target)
    except OSError as e:
        lock.release()
        raise RunDirError(f"cannot move the run in {path} aside to {target}: {e.strerror or e}") from None
    lock.path = target / LOCK_NAME            # the held lock moved with the directory
    try:
        created = _make(path)
        new = acquire(path)
    finally:
        lock.release()
    log(f"--overwrite: moved the run in {path} ({found}) aside to {target}")
    return Claim(path, new, created)


# ---------------------------------------------------------------- hygiene
def prepare_out_dir(out: str | os.PathLike) -> Path:
    """Create the run directory and prove it is writable now, not an hour from now; sweep away the
    temporary files of runs that were killed (their process is gone)."""
    path = Path(out)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-probe-{os.getpid()}"
        try:
            with open(probe, "wb") as f:
                f.write(b"\0" * 65536)
                f.flush()
                os.fsync(f.fileno())
        finally:
            if probe.exists():
                probe.unlink()
    except OSError as e:
        raise CorpusError(f"cannot write checkpoints to {path}: {e.strerror or e}") from None
    for stale in path.glob(".*"):
        m = _TEMP_NAME.fullmatch(stale.name)
        if m and not _alive(int(m.group(1))):
            try:
                stale.unlink()
            except OSError:
                pass
    return path


# what checkpoint.save, the probe and corpus.load_corpus leave behind when killed, with their pid
_TEMP_NAME = re.compile(r"\.(?:.+\.tmp|write-probe|codes)-(\d+)(?:\.bin)?")


def check_free_space(path: Path, need: int) -> None:
    """Fail at start-up when the disk cannot hold the checkpoints (`last`, `best` and a temporary copy)."""
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        return
    if free < need:
        raise CorpusError(f"not enough space in {path}: the checkpoints need about {need / 1e6:.1f} MB "
                          f"and {free / 1e6:.1f} MB is free")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OverflowError, ValueError):
        return False
    return True
