"""Where a training run stands, as plain data: `Progress`, owned by the trainer, saved whole as
a checkpoint's `progress` record and read back by one typed `from_dict`, so a counter added here
is saved, restored, snapshotted and validated without another line elsewhere.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass


@dataclass
class Progress:
    step: int = 0                # optimizer steps taken
    epoch: int = 0               # whole passes over the training split
    cursor: int = 0              # the next window within the epoch
    lr: float | None = None      # the schedule's base rate (decays and halvings applied); None: --lr
    best_val: float = math.inf   # best validation ever seen: decides when `best` is written
    sched_best: float = math.inf # best at scheduled validations only: drives plateau and patience
    bad_evals: int = 0           # scheduled validations since the last improvement
    chars_seen: int = 0
    elapsed: float = 0.0         # seconds of training, across resumes
    ema: float | None = None     # smoothed training bits/char, for the bar and the log
    nan_retries: int = 0         # rollbacks so far
    digest: str | None = None    # the training text's codes (corpus.codes_digest): resume only on it
    n_codes: int = 0             # characters in the text
    world_size: int = 1          # processes of the data-parallel run that wrote it

    def to_dict(self) -> dict:
        """The checkpoint's record: JSON has no infinity, so 'none yet' is null."""
        d = dataclasses.asdict(self)
        for k in ("best_val", "sched_best"):
            if not math.isfinite(d[k]):
                d[k] = None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Progress":
        """The record read back: missing keys take their defaults (an older or exported
        checkpoint; sched_best then follows best_val), keys it does not know are ignored.
        Raises ValueError on a value of the wrong type or range."""
        kw = {}
        for f in dataclasses.fields(cls):
            if f.name not in d:
                continue
            v, kinds = d[f.name], f.type.split(" | ")
            if v is None and ("None" in kinds or f.name in ("best_val", "sched_best")):
                kw[f.name] = math.inf if f.name in ("best_val", "sched_best") else None
            elif "int" in kinds and _is_int(v) and v >= (1 if f.name == "world_size" else 0):
                kw[f.name] = v
            elif "float" in kinds and _is_num(v) and (f.name != "elapsed" or v >= 0) and (f.name != "lr" or v > 0):
                kw[f.name] = float(v)
            elif "str" in kinds and isinstance(v, str):
                kw[f.name] = v
            else:
                raise ValueError(f"progress {f.name} is malformed")
        if "sched_best" not in d and "best_val" in kw:
            kw["sched_best"] = kw["best_val"]
        return cls(**kw)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)
