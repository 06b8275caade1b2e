"""The options of a training run as plain data, with their defaults written once: the trainer
reads them, the checkpoint stores them (`train_args`), and the command line takes its defaults
from here. Imports nothing heavy, so `--help` can read it.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from charrnn.config import MODEL_DEFAULTS, ModelConfig, typed

# the usual defaults of each rule (Kingma & Ba; Loshchilov & Hutter; Tieleman & Hinton as in
# char-rnn; Duchi et al.; Zeiler; Polyak; Sutskever et al.)
OPTIMIZER_DEFAULTS = {
    "adam": {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8},
    "adamw": {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8},
    "rmsprop": {"alpha": 0.95, "eps": 1e-8},
    "adagrad": {"eps": 1e-10},
    "adadelta": {"rho": 0.9, "eps": 1e-6},
    "sgd": {"momentum": 0.0},
    "nesterov": {"momentum": 0.9},
}


# --norm of a new run: "auto" is a layer-normalised LSTM (config.py's "layer") and no
# normalisation for the GRU and the RNN, which have none, or on the GPU, whose kernels have none
# yet (assemble.settle_norm). The LSTM's default because it won on both seeds of the default
# ten-minute run (bench/RESULTS.md, "Layer normalisation").
NORMS = ("auto", "none", "layer")
NORM_DEFAULT = "auto"
# Adam's and AdamW's beta2 for a new layer-normalised LSTM given no --beta2
# (assemble.settle_ln_defaults): the second moments follow the gradients over ~100 steps instead of
# ~1000, and the model learns faster per pass (bench/RESULTS.md, "Recurrent dropout, a higher floor,
# weight decay, width and Adam's beta2"). Other models keep the rule's own 0.999.
LN_BETA2 = 0.99
# The window of a new layer-normalised LSTM given no --seq-len or --batch-size
# (assemble.settle_ln_defaults): the same 2,500 characters a step as 50 x 50, back-propagated twice
# as far, at 9% fewer characters a second. Over four ten-minute runs it was level on validation and
# 0.026 bits/char better on test (bench/RESULTS.md, "Longer windows"). Other models, and the GPU
# (whose recurrence costs per step, not per character), keep 50 x 50.
LN_WINDOW = {"seq_len": 100, "batch_size": 25}

# The rate of a new run given no --lr, by rule, and under Adam by cell: the best of short screenings
# (bench/RESULTS.md, "A learning rate per cell"). Adam's 1e-2 is the LSTM's sweep winner; under it
# a plain RNN diverges (11.3 bits/char after an epoch of tinyshakespeare) and a GRU may (3.6). The
# other rules' rates were screened on the LSTM only, and serve every cell.
CELL_LR = {"lstm": 1e-2, "gru": 5e-3, "rnn": 3e-3}
RULE_LR = {"rmsprop": 5e-3, "adagrad": 1e-2, "adadelta": 1.0, "sgd": 1.0, "nesterov": 0.3}


def default_rate(optimizer: str, cell: str) -> float:
    """The learning rate a new run of `cell` under `optimizer` takes when --lr is not given."""
    return CELL_LR[cell] if optimizer in ("adam", "adamw") else RULE_LR[optimizer]


@dataclass
class TrainOptions:
    """Everything `charrnn train` takes besides the text: the model, the data split, the optimizer
    and schedule, and the run's limits. Saved whole as a checkpoint's `train_args` (`to_dict`),
    read back by one typed `from_dict`."""
    model: ModelConfig = field(default_factory=ModelConfig)   # its vocab_size comes from the text
    # data
    seq_len: int = 50              # LN_WINDOW's for a new layer-normalised LSTM where not given
    batch_size: int = 50
    val_frac: float = 0.05
    test_frac: float = 0.05
    split_by: str = "auto"         # several documents: "document" (whole ones held out), "position", or
                                   # "auto": by document from documents.DOCUMENT_SPLIT_AT of them on
    # optimisation
    optimizer: str = "adam"
    lr: float = CELL_LR["lstm"]  # the sweep in bench/RESULTS.md (issue 19); lr-find suggests about 2e-2.
                                 # A new run given no --lr takes default_rate's for its rule and cell
    beta1: float | None = None
    beta2: float | None = None
    alpha: float | None = None
    momentum: float | None = None
    rho: float | None = None
    eps: float | None = None
    weight_decay: float = 0.0
    l1: float = 0.0
    clip: str = "norm:5"
    lr_schedule: str = "cosine"    # cosine: anneal to lr_floor * lr over the run (steps or --minutes); constant
    lr_floor: float = 0.01
    lr_decay: float = 1.0          # multiply the rate by this each epoch after lr_decay_after
    lr_decay_after: int = 10
    lr_plateau: float = 1.0        # multiply the rate by this when validation does not improve
    patience: int = 0              # stop after this many validations without improvement; 0 = never
    # run
    max_epochs: float | None = None   # None: DEFAULT_MAX_EPOCHS, or no cap when minutes is set (epoch_limit)
    minutes: float = 0.0           # wall-clock budget; 0 = none
    max_steps: int = 0             # 0 = no step limit (tests and benchmarks); a pause: the schedule ignores it
    max_nan_retries: int = 3       # rollbacks (each halving the rate) on a non-finite loss before giving up
    val_every: int = 0             # steps between validations; 0 = once per epoch
    diag: bool = True              # diagnostics (diagnostics.py) in metrics.jsonl at validations ...
    diag_every: int = 50           # ... and every this many steps (0: at validations only)
    report: bool = False           # keep report.html current in the run directory (live.py)
    val_streams: int = 1           # >1: validation scores the split as this many contiguous streams in
                                   # one batch (evaluate.py), a little higher than `charrnn eval`'s figure
    average: str = "ema"           # ema: keep an exponential moving average of the weights (average.py);
                                   # each validation scores both, `best` keeps the better. On since it won
                                   # on both seeds of the default ten-minute run (bench/RESULTS.md, "Layer
                                   # normalisation"); "off" for checkpoints whose options predate it
    average_decay: float = 0.998   # its forgetting factor per step: about 1 / (1 - 0.998) = 500 steps
    seed: int = 0
    device: str = "cpu"
    out: str = ""

    def epoch_limit(self) -> float:
        """Epochs after which the run ends: max_epochs when set; otherwise none (math.inf) under
        a time budget, so a budget is spent whole on any machine, else DEFAULT_MAX_EPOCHS."""
        if self.max_epochs is not None:
            return self.max_epochs
        return math.inf if self.minutes > 0 else DEFAULT_MAX_EPOCHS

    def model_config(self, vocab_size: int) -> ModelConfig:
        """The architecture these options ask for, for a fresh model on a vocabulary this size."""
        return dataclasses.replace(self.model, vocab_size=vocab_size)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainOptions":
        """Options by name, typed and range-checked: the model nested as {"model": {...}} (how
        `to_dict` saves it), or its fields at the top level (how the command line gives them and
        checkpoints before the nesting saved them); top-level model fields win over nested ones.
        Missing names take their defaults. Raises ValueError on an unknown name or a bad value."""
        if not isinstance(d.get("model", {}), dict):
            raise ValueError("training option model must be a mapping")
        model = dict(d.get("model", {}))
        kw = {}
        defaults = cls()
        for k, v in d.items():
            if k == "model":
                continue
            if k in MODEL_DEFAULTS:
                model[k] = v
            elif k in _FIELDS:
                kw[k] = typed("training option", k, v, getattr(defaults, k))
            else:
                raise ValueError(f"unknown training option {k!r}")
        if model.get("norm") == "auto":   # a new run's default (NORM_DEFAULT): layer norm for the LSTM only
            model["norm"] = "layer" if model.get("cell", MODEL_DEFAULTS["cell"]) == "lstm" else "none"
        for k, v in model.items():        # the model's numbers by their flags, before ModelConfig's own checks
            if k in RANGES and isinstance(v, (int, float)) and not isinstance(v, bool):
                check_number(k, v, RANGES[k])
        kw["model"] = ModelConfig.from_dict({"vocab_size": 0, **model})
        opts = cls(**kw)
        opts.check()
        return opts

    def check(self) -> None:
        """Every value finite and in its range (RANGES), every choice known; raises ValueError
        naming the flag ("--lr: ...")."""
        for name, bounds in RANGES.items():
            v = getattr(self.model if name in MODEL_DEFAULTS else self, name)
            if v is not None:
                check_number(name, v, bounds)
        for name, choices in (("optimizer", tuple(OPTIMIZER_DEFAULTS)), ("lr_schedule", LR_SCHEDULES),
                              ("split_by", SPLIT_BY), ("average", AVERAGES)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{flag(name)}: {getattr(self, name)!r} is not one of {', '.join(choices)}")
        from charrnn.optim import parse_clip     # NumPy comes with it: only when options are checked
        try:
            parse_clip(self.clip)
        except ValueError as e:
            msg = str(e)
            raise ValueError(f"--clip: {msg[5:] if msg.startswith('clip ') else msg}") from None


LR_SCHEDULES = ("cosine", "constant")
SPLIT_BY = ("auto", "document", "position")      # charrnn/documents.py reads them
AVERAGES = ("off", "ema")          # --average: none, or an exponential moving average (charrnn/average.py)
F32_MAX = 3.4028234663852886e38     # the kernels compute in float32: a larger number is inf there
INT_MAX = 2 ** 62                   # a count that NumPy's int64 holds with room to add to it
# (min, max, min excluded, max excluded) of every numeric option, the model's included: the command
# line's types (cli_train.py) and TrainOptions.check (options given, or read back from a
# checkpoint's train_args) both read this table; every value must also be finite
RANGES: dict[str, tuple[float, float, bool, bool]] = {
    "hidden": (1, INT_MAX, False, False),
    "layers": (1, 1000, False, False),      # each layer is a stage of Python-driven work: 1000 is far past useful
    "embed": (0, INT_MAX, False, False), "dropout": (0, 1, False, True),
    "recurrent_dropout": (0, 1, False, True), "zoneout_cell": (0, 1, False, True),
    "zoneout_hidden": (0, 1, False, True),
    "forget_bias": (-100, 100, False, False),      # sigmoid(100) is 1 in float32: beyond is the same
    "seq_len": (1, INT_MAX, False, False), "batch_size": (1, INT_MAX, False, False),
    "val_frac": (0, 1, False, True), "test_frac": (0, 1, False, True),
    "lr": (0, F32_MAX, True, False),
    "beta1": (0, 1, False, True), "beta2": (0, 1, False, True), "alpha": (0, 1, False, True),
    "momentum": (0, 1, False, True), "rho": (0, 1, False, True), "eps": (0, 1, True, False),
    "weight_decay": (0, F32_MAX, False, False), "l1": (0, F32_MAX, False, False),
    "lr_floor": (0, 1, False, False), "lr_decay": (0, 1, True, False), "lr_decay_after": (0, INT_MAX, False, False),
    "lr_plateau": (0, 1, True, False), "patience": (0, INT_MAX, False, False),
    "max_epochs": (0, 1e9, True, False), "minutes": (0, 1e9, False, False),     # 1e9 minutes: 1900 years
    "max_steps": (0, INT_MAX, False, False), "max_nan_retries": (0, INT_MAX, False, False),
    "val_every": (0, INT_MAX, False, False), "diag_every": (0, INT_MAX, False, False),
    "val_streams": (1, INT_MAX, False, False), "seed": (0, INT_MAX, False, False),
    "average_decay": (0, 1, True, True),
}


def flag(name: str) -> str:
    """The command-line flag of an option's field name: max_epochs -> --max-epochs."""
    return "--" + name.replace("_", "-")


def describe_range(bounds: tuple[float, float, bool, bool]) -> str:
    lo, hi, lo_open, hi_open = bounds
    return f"{'>' if lo_open else '>='} {lo:g} and {'<' if hi_open else '<='} {hi if isinstance(hi, int) else f'{hi:g}'}"


def check_number(name: str, v, bounds: tuple[float, float, bool, bool]) -> None:
    """Raise ValueError naming the flag unless v is a finite number within bounds."""
    lo, hi, lo_open, hi_open = bounds
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"{flag(name)}: {v!r} is not a number")
    if not math.isfinite(v):
        raise ValueError(f"{flag(name)}: {v} is not a finite number")
    if v < lo or v > hi or (lo_open and v == lo) or (hi_open and v == hi):
        raise ValueError(f"{flag(name)}: {v:g} is out of range: it must be {describe_range(bounds)}")


_FIELDS = {f.name for f in dataclasses.fields(TrainOptions)} - {"model"}
# every name from_dict takes besides "model": the options' own and the model's, flat
TRAIN_OPTION_NAMES = frozenset(_FIELDS | set(MODEL_DEFAULTS))
DEFAULT_MAX_EPOCHS = 50.0

# charrnn lr-find's ramp (lrfind.lr_find; the command line's defaults): its steps, and the rates
# it starts and ends at. Its first LR_FIND_SKIP points are not read (the moving average of the
# loss is still mostly one batch), and three more are the fewest a slope is read from.
LR_FIND_STEPS, LR_FIND_START, LR_FIND_END = 300, 1e-6, 1.0
LR_FIND_SKIP = 10
LR_FIND_MIN_STEPS = LR_FIND_SKIP + 3


# ---------------------------------------------------------------- dynamic evaluation (charrnn/dynamic.py)
DYNAMIC_RULES = ("rms", "sgd")
DYNAMIC_LR = {"rms": 1e-4, "sgd": 0.3}     # the default step of each rule (bench/RESULTS.md, "Dynamic evaluation")


@dataclass(frozen=True)
class Dynamic:
    """How dynamic evaluation adapts (the --dynamic-* flags of `charrnn eval`)."""
    rule: str = "rms"         # "rms" (Krause et al.'s RMS-normalised step with decay) or "sgd"
    lr: float = DYNAMIC_LR["rms"]   # step size (DYNAMIC_LR has each rule's default)
    decay: float = 0.0        # rms only: pull toward the trained weights per step, scaled by ms / mean(ms)
    seq_len: int = 50         # characters per segment: score, then one step
    eps: float = 0.01         # rms only: floor of the denominator, as a fraction of mean(ms)

    def __post_init__(self) -> None:
        if self.rule not in DYNAMIC_RULES:
            raise ValueError(f"--dynamic-rule must be one of {', '.join(DYNAMIC_RULES)}, not {self.rule!r}")
        for name, lo in (("lr", 0.0), ("decay", 0.0), ("eps", 0.0)):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= lo):
                raise ValueError(f"--dynamic-{name} must be a finite number >= {lo:g}, not {v!r}")
        if not (isinstance(self.seq_len, int) and 1 <= self.seq_len <= 100_000):
            raise ValueError(f"--dynamic-seq-len must be an integer from 1 to 100000, not {self.seq_len!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
