"""Checkpoints: one file in the safetensors layout, read and written here with the standard
library and NumPy alone, so loading a file from a stranger can never run code (no pickle).

    8 bytes   little-endian u64: header length N
    N bytes   JSON header: {"__metadata__": {str: str}, name: {"dtype", "shape", "data_offsets"}}
    rest      raw little-endian tensor data, packed in header order

Tensors: "param/<name>" for every weight (model.py's names), "optim/<name>" for optimizer
moments (flat), "average" for the averaged weights of a run with --average (flat, in the
weights' layout: charrnn/average.py), "state" for the carried hidden state; a weights-only
export has only the first. Metadata (JSON strings): format and version, model config, vocabulary, optimizer,
training progress, RNG state, metrics, and for an export its provenance.
Every field is validated on load; any problem is a CheckpointError with one sentence.
Files are written to a temporary name in the same directory, fsynced, then renamed.
"""
from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from charrnn.corpus import Vocab
from charrnn.model import ModelConfig, Params, param_shapes
from charrnn.progress import Progress
from charrnn.optim import DEFAULTS, STATE_NAMES
from charrnn.errors import CheckpointError, InputError

FORMAT = "charrnn"
VERSION = 1
MAX_HEADER = 16 << 20           # 16 MiB of JSON is far beyond any real header
DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "F64": np.dtype("<f8"), "I64": np.dtype("<i8"),
          "U8": np.dtype("u1")}
HALF_MAX = float(np.finfo(np.float16).max)
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


@dataclass
class Checkpoint:
    config: ModelConfig
    vocab: Vocab
    params: Params                                   # host float32
    optimizer: dict | None = None                    # Optimizer.to_meta()
    optim_state: dict[str, np.ndarray] = field(default_factory=dict)
    state: np.ndarray | None = None                  # carried hidden state (L, S, B, H)
    average: np.ndarray | None = None                # --average: the averaged weights, flat (average.py)
    progress: dict = field(default_factory=dict)     # progress.Progress.to_dict(): step, epoch, cursor, ...
    rng: dict | None = None                          # numpy bit_generator.state
    train_args: dict = field(default_factory=dict)   # the training flags, for the record and resume
    metrics: dict = field(default_factory=dict)      # last validation numbers
    provenance: dict = field(default_factory=dict)   # how an exported model was made (command, date, scores)


# ---------------------------------------------------------------- writing
def save(path: str | os.PathLike, ck: Checkpoint, half: bool = False) -> None:
    """Write atomically: a crash at any moment leaves the old file or the new one, never a mix.
    `half` stores the weights as float16 (half the bytes: for shipping a model to sample and
    evaluate; loading widens them to float32), only in a file without optimizer moments or state."""
    if not np.all(np.isfinite(ck.params.flat)):
        raise CheckpointError("refusing to write a checkpoint with non-finite weights")
    if half and (ck.optim_state or ck.state is not None or ck.average is not None):
        raise CheckpointError("float16 weights are for weights-only files: resuming needs the float32 ones")
    if half and np.abs(ck.params.flat).max(initial=0.0) > HALF_MAX:
        raise CheckpointError(f"a weight exceeds float16's range ({HALF_MAX:g}); keep this model in float32")
    tensors: dict[str, np.ndarray] = {}
    for name, _ in param_shapes(ck.config):
        tensors[f"param/{name}"] = np.ascontiguousarray(ck.params[name], dtype="<f2" if half else "<f4")
    for name, arr in ck.optim_state.items():
        tensors[f"optim/{name}"] = np.ascontiguousarray(arr, dtype="<f4")
    if ck.average is not None:
        if ck.average.shape != ck.params.flat.shape or not np.all(np.isfinite(ck.average)):
            raise CheckpointError("refusing to write a checkpoint with malformed averaged weights")
        tensors["average"] = np.ascontiguousarray(ck.average, dtype="<f4")
    if ck.state is not None:
        tensors["state"] = np.ascontiguousarray(ck.state, dtype="<f4")
    meta = {
        "format": FORMAT, "version": str(VERSION),
        "config": json.dumps(ck.config.to_dict()),
        "vocab": json.dumps(ck.vocab.to_meta()),
        "optimizer": json.dumps(ck.optimizer),
        "progress": json.dumps(ck.progress),
        "rng": json.dumps(ck.rng),
        "train_args": json.dumps(ck.train_args),
        "metrics": json.dumps(ck.metrics),
    }
    if ck.provenance:
        meta["provenance"] = json.dumps(ck.provenance)
    write_tensors(path, tensors, meta)


def write_tensors(path: str | os.PathLike, tensors: dict[str, np.ndarray], meta: dict[str, str]) -> None:
    """Write tensors and string metadata in the safetensors layout, atomically and durably: a
    crash at any moment leaves the old file or the new one. Checkpoints and the files kept
    beside them (charrnn/dynamic.py's gradient statistics) are written here."""
    header: dict = {"__metadata__": meta}
    off = 0
    for name, arr in tensors.items():
        header[name] = {"dtype": DTYPE_NAMES[arr.dtype], "shape": list(arr.shape),
                        "data_offsets": [off, off + arr.nbytes]}
        off += arr.nbytes
    hbytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hbytes += b" " * (-len(hbytes) % 8)               # align the data, as safetensors does
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(hbytes)))
            f.write(hbytes)
            for arr in tensors.values():
                f.write(arr.tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise
    try:                                             # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


# ---------------------------------------------------------------- reading
def _meta_json(meta: dict, key: str, kind):
    if key not in meta or not isinstance(meta[key], str):
        raise CheckpointError(f"metadata field {key!r} is missing")
    try:
        value = json.loads(meta[key])
    except (ValueError, RecursionError):
        raise CheckpointError(f"metadata field {key!r} is not valid JSON") from None
    if not isinstance(value, kind):
        raise CheckpointError(f"metadata field {key!r} has the wrong type")
    return value


def _read(path: str | os.PathLike, data: bool) -> tuple[bytes, bytes]:
    """The header's bytes and (if `data`) the data section's."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if p.is_dir():
            raise CheckpointError(f"{path} is a directory, not a checkpoint")
        with open(p, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path} is not a charrnn checkpoint (too short)")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER or n > size - 8 or n < 2:
                raise CheckpointError(f"{path} is not a charrnn checkpoint (header length {n} is impossible)")
            return f.read(n), f.read() if data else b""
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror or e}") from None


def _parse_header(path, hbytes: bytes) -> tuple[dict, dict]:
    """(metadata, tensor entries) from the header's bytes."""
    try:
        header = json.loads(hbytes.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise CheckpointError(f"{path} is not a charrnn checkpoint (header is not JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} is not a charrnn checkpoint (header is not an object)")
    meta = header.pop("__metadata__", None)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a charrnn checkpoint (no charrnn metadata)")
    if meta.get("version") != str(VERSION):
        raise CheckpointError(f"{path} has checkpoint format version {meta.get('version')!r}; "
                              f"this charrnn reads version {VERSION}")
    return meta, header


def read_metadata(path: str | os.PathLike) -> dict:
    """The metadata alone (JSON strings by key), reading only the header: a quick look at a run."""
    return _parse_header(path, _read(path, data=False)[0])[0]


def read_raw(path: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray]]:
    """Parse the container: metadata dict and tensors, with every structural check."""
    hbytes, data = _read(path, data=True)
    meta, header = _parse_header(path, hbytes)
    tensors: dict[str, np.ndarray] = {}
    spans = []
    for name, info in header.items():
        try:
            dt = DTYPES[info["dtype"]]
            shape = tuple(info["shape"])
            start, end = info["data_offsets"]
            if not all(isinstance(s, int) and 0 <= s < 1 << 40 for s in shape) \
                    or not isinstance(start, int) or not isinstance(end, int):
                raise TypeError
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: tensor {name!r} has a malformed entry") from None
        count = math.prod(shape)
        if not 0 <= start <= end <= len(data) or end - start != count * dt.itemsize:
            raise CheckpointError(f"{path}: tensor {name!r} lies outside the file or has the wrong size "
                                  f"(the file may be truncated)")
        spans.append((start, end))
        tensors[name] = np.frombuffer(data, dtype=dt, count=count, offset=start).reshape(shape)
    spans.sort()
    for (a0, a1), (b0, _) in zip(spans, spans[1:]):
        if b0 < a1:
            raise CheckpointError(f"{path}: tensors overlap")
    if spans and spans[-1][1] != len(data):
        raise CheckpointError(f"{path}: the data section has the wrong length (truncated or padded file)")
    return meta, tensors


def load(path: str | os.PathLike) -> Checkpoint:
    """Read and validate a checkpoint; raises CheckpointError with one sentence on any problem."""
    meta, tensors = read_raw(path)
    for k in tensors:
        if not (k.startswith(("param/", "optim/")) or k in ("state", "average")):
            raise CheckpointError(f"{path}: unexpected tensor {k!r}")
    try:
        config = ModelConfig.from_dict(_meta_json(meta, "config", dict))
        if config.vocab_size < 1:
            raise ValueError("vocab_size must be at least 1")
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: bad model config ({e})") from None
    try:
        vocab = Vocab.from_meta(_meta_json(meta, "vocab", dict))
    except ValueError as e:
        raise CheckpointError(f"{path}: bad vocabulary ({e})") from None
    if vocab.size != config.vocab_size:
        raise CheckpointError(f"{path}: vocabulary has {vocab.size} symbols but the model expects {config.vocab_size}")
    n_weights = sum(k.startswith("param/") for k in tensors)
    if config.layers * 3 > n_weights:          # before walking a sizes table a lying config could make huge
        raise CheckpointError(f"{path}: the config has {config.layers} layers but the file holds "
                              f"{n_weights} weights (wrong architecture?)")
    shapes = param_shapes(config)
    for name, shape in shapes:                 # every shape checked before anything is allocated
        arr = tensors.get(f"param/{name}")
        if arr is None:
            raise CheckpointError(f"{path}: weight {name} is missing (wrong architecture?)")
        if arr.dtype not in (DTYPES["F32"], DTYPES["F16"]):
            raise CheckpointError(f"{path}: weight {name} has dtype {arr.dtype}, expected float32 or float16")
        if arr.shape != shape:
            raise CheckpointError(f"{path}: weight {name} has shape {arr.shape}, the config says {shape}")
    known = {f"param/{name}" for name, _ in shapes}
    extra = [k for k in tensors if k.startswith("param/") and k not in known]
    if extra:
        raise CheckpointError(f"{path}: unexpected weight {extra[0][6:]} (wrong architecture?)")
    params = Params(config)
    for name, _ in shapes:
        params[name] = tensors[f"param/{name}"]
    if not np.all(np.isfinite(params.flat)):
        raise CheckpointError(f"{path}: weights contain NaN or Inf")
    optimizer = _meta_json(meta, "optimizer", (dict, type(None)))
    _check_optimizer(path, optimizer)
    half = any(tensors[f"param/{name}"].dtype == DTYPES["F16"] for name, _ in shapes)
    if half and (optimizer or any(k.startswith("optim/") for k in tensors) or "state" in tensors
                 or "average" in tensors):
        raise CheckpointError(f"{path}: float16 weights with optimizer state (only weights-only files are half)")
    optim_state = {}
    allowed = STATE_NAMES[optimizer["name"]] if optimizer else ()
    for k, arr in tensors.items():
        if k.startswith("optim/"):
            if k[6:] not in allowed or arr.dtype != DTYPES["F32"] or arr.shape != (params.flat.size,) \
                    or not np.all(np.isfinite(arr)):
                raise CheckpointError(f"{path}: optimizer state {k[6:]} is malformed")
            optim_state[k[6:]] = arr.copy()
    average = tensors.get("average")
    if average is not None:
        if average.dtype != DTYPES["F32"] or average.shape != (params.flat.size,) or not np.all(np.isfinite(average)):
            raise CheckpointError(f"{path}: the averaged weights are malformed")
        average = average.copy()
    state = tensors.get("state")
    if state is not None:
        want = (config.layers, config.n_states)
        if state.dtype != DTYPES["F32"] or state.ndim != 4 or state.shape[:2] != want or state.shape[2] < 1 \
                or state.shape[3] != config.hidden or not np.all(np.isfinite(state)):
            raise CheckpointError(f"{path}: carried state is malformed")
        state = state.copy()
    progress = _meta_json(meta, "progress", dict)
    _check_progress(path, progress)
    rng = _meta_json(meta, "rng", (dict, type(None)))
    if rng is not None:
        try:                                   # the generator itself is the judge of its state
            np.random.PCG64().state = rng
        except (ValueError, TypeError, KeyError, OverflowError):
            raise CheckpointError(f"{path}: the random generator state is malformed") from None
    train_args = _meta_json(meta, "train_args", dict)
    _check_train_args(path, train_args)
    return Checkpoint(config=config, vocab=vocab, params=params, optimizer=optimizer,
                      optim_state=optim_state, state=state, average=average, progress=progress, rng=rng,
                      train_args=train_args, metrics=_meta_json(meta, "metrics", dict),
                      provenance=_meta_json(meta, "provenance", dict) if "provenance" in meta else {})


def weights_only(ck: Checkpoint, provenance: dict | None = None) -> Checkpoint:
    """The checkpoint without what only resuming needs (optimizer moments, carried state, RNG,
    averaged weights):
    enough to sample, evaluate and fine-tune (--init-from), at a third of the size."""
    keep = ("step", "epoch", "chars_seen", "best_val", "elapsed", "n_codes")
    args = dict(ck.train_args)
    src = args.get("source") or {}
    if src.get("corpus"):       # a catalogue text: its name finds it on any machine, a path may not
        args["source"] = {k: v for k, v in src.items() if k != "path"}
    return Checkpoint(config=ck.config, vocab=ck.vocab, params=ck.params,
                      progress={k: ck.progress[k] for k in keep if k in ck.progress},
                      train_args=args, metrics=dict(ck.metrics),
                      provenance={**ck.provenance, **(provenance or {})})


def export(source: str | None, output: str | os.PathLike, *, only_weights: bool = False, half: bool = False,
           meta: dict | None = None) -> Checkpoint:
    """`charrnn export`: the checkpoint SOURCE names (a file or a run directory's best) copied to
    `output`, its provenance stamped with today's date (UTC) and `meta`; weights only (optionally
    float16) or whole. Returns what was written."""
    from datetime import datetime, timezone
    if half and not only_weights:
        raise InputError("--half needs --weights-only: resuming needs the float32 weights and moments")
    extra = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d")}
    if half:
        extra["weights"] = "float16"
    extra.update(meta or {})
    ck = load(resolve(source))
    out = weights_only(ck, extra) if only_weights else Checkpoint(**{**ck.__dict__,
                                                                     "provenance": {**ck.provenance, **extra}})
    save(output, out, half=half)
    return out


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _check_optimizer(path, opt: dict | None) -> None:
    if opt is None:
        return
    name = opt.get("name")
    hyper = opt.get("hyper", {})
    ok = isinstance(name, str) and name in DEFAULTS and isinstance(hyper, dict) and set(hyper) <= set(DEFAULTS[name]) \
        and all(_is_num(v) for v in hyper.values()) and _is_int(opt.get("t", 0)) and opt.get("t", 0) >= 0 \
        and all(_is_num(opt.get(k, 0.0)) and opt.get(k, 0.0) >= 0 for k in ("weight_decay", "l1"))
    if not ok:
        raise CheckpointError(f"{path}: the optimizer settings are malformed")


def _check_progress(path, pr: dict) -> None:
    try:
        Progress.from_dict(pr)
    except ValueError:
        raise CheckpointError(f"{path}: the training progress record is malformed") from None


def _check_train_args(path, args: dict) -> None:
    """What `eval` and `--resume` read without further checks; assemble.resume_options checks the rest."""
    src = args.get("source")
    ok = src is None or (isinstance(src, dict) and all(isinstance(v, str) for v in src.values()))
    ok = ok and all(k not in args or (_is_num(args[k]) and 0 <= args[k] < 1) for k in ("val_frac", "test_frac"))
    if ok and "documents" in args:
        from charrnn.documents import check_record
        ok = check_record(args["documents"])
    if not ok:
        raise CheckpointError(f"{path}: the recorded training options are malformed")


def find_latest(root: str | os.PathLike = "checkpoints", name: str = "best") -> Path | None:
    """The newest `<name>.safetensors` under root (by modification time), or None."""
    root = Path(root)
    if not root.is_dir():
        return None
    found = [p for p in root.rglob(f"{name}.safetensors") if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def resolve(path: str | None, root: str = "checkpoints") -> Path:
    """A checkpoint argument: a file, a run directory (its best), or None (the newest best)."""
    if path is None:
        found = find_latest(root)
        if found is None:
            raise CheckpointError(f"no checkpoint given and none found under ./{root}; "
                                  f"train one with `charrnn train FILE` or name one")
        return found
    p = Path(path)
    if p.is_dir():
        for name in ("best", "last"):
            if (p / f"{name}.safetensors").is_file():
                return p / f"{name}.safetensors"
        raise CheckpointError(f"{path} holds no best.safetensors or last.safetensors")
    if not p.exists():
        raise CheckpointError(f"no such checkpoint: {path}")
    return p
