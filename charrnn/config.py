"""The model's architecture as plain data: `ModelConfig`, whose defaults are the product's
(`charrnn train` and `TrainOptions` read them from here), and the names of the choices it
takes. Imports nothing heavy, so `--help` can read it; `charrnn.model` builds on it.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

CELLS = ("lstm", "gru", "rnn")
ACTIVATIONS = ("tanh", "softsign")
INITS = ("uniform", "xavier")
NORMS = ("none", "layer")
GATES = {"lstm": 4, "gru": 3, "rnn": 1}
STATES = {"lstm": 2, "gru": 1, "rnn": 1}  # h (and c for the LSTM)


@dataclass(frozen=True)
class ModelConfig:
    """Defaults: the best we found for ~10 minutes on 2 cores (docs/train.md, "The defaults")."""
    vocab_size: int = 0      # 65 for tinyshakespeare, 256 in byte mode; 0 until a text is read
    hidden: int = 256        # H, units per layer
    layers: int = 2          # L, stacked cells
    cell: str = "lstm"       # lstm | gru | rnn
    embed: int = 0           # D of a learned embedding; 0 = one-hot input
    dropout: float = 0.2     # inverted dropout between layers and before the output layer
    activation: str = "tanh" # squashing nonlinearity of the cell (gates stay sigmoid)
    forget_bias: float = 1.0 # LSTM forget-gate bias at init
    init: str = "xavier"     # xavier: Glorot uniform, on tinyshakespeare it learns markedly faster
                             # than uniform: U(-0.08, 0.08) as char-rnn
    norm: str = "none"       # layer: layer-normalised LSTM (Ba et al. 2016), each gate block's
                             # pre-activation and the cell before its squashing; "none" here so a
                             # checkpoint written before the field existed reads as what it is
    recurrent_dropout: float = 0.0  # inverted dropout on the LSTM's candidate g inside the cell,
                             # fresh masks every step (Semeniuta et al. 2016): c = f*c + i*drop(g);
                             # training only, so sampling and scoring are unchanged
    zoneout_cell: float = 0.0    # zoneout (Krueger et al. 2016) on the layer-normalised LSTM's c and h:
    zoneout_hidden: float = 0.0  # in training each unit keeps its previous value with this probability,
                             # fresh masks every step; sampling and scoring take the expectation,
                             # c = z*c_prev + (1-z)*c_new, so unlike dropout it changes the model

    def __post_init__(self) -> None:
        if self.cell not in CELLS:
            raise ValueError(f"unknown cell {self.cell!r} (choose from {', '.join(CELLS)})")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}")
        if self.init not in INITS:
            raise ValueError(f"unknown init {self.init!r}")
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r} (choose from {', '.join(NORMS)})")
        if self.norm != "none" and self.cell != "lstm":
            raise ValueError(f"layer normalisation is implemented for the LSTM cell only, not the {self.cell.upper()}")
        for name in ("hidden", "layers"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.vocab_size < 0:
            raise ValueError("vocab_size must be at least 1, or 0 before a text is read")
        if self.embed < 0:
            raise ValueError("embed must be 0 (one-hot) or positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("dropout must be in [0, 1)")
        if not 0.0 <= self.recurrent_dropout < 1.0:
            raise ValueError("recurrent_dropout must be in [0, 1)")
        if self.recurrent_dropout > 0 and self.norm != "layer":
            raise ValueError("recurrent dropout is implemented for the layer-normalised LSTM only (--norm layer)")
        for name in ("zoneout_cell", "zoneout_hidden"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1)")
        if self.zoned and self.norm != "layer":
            raise ValueError("zoneout is implemented for the layer-normalised LSTM only (--norm layer)")
        if not math.isfinite(self.forget_bias):
            raise ValueError("forget_bias must be a finite number")

    def scoring(self) -> "ModelConfig":
        """The model as sampling and scoring run it: no dropout of either kind (zoneout keeps its
        rates, whose expectation is part of the model)."""
        return dataclasses.replace(self, dropout=0.0, recurrent_dropout=0.0)

    @property
    def zoned(self) -> bool:
        """Whether the cell zones out (either rate above zero)."""
        return self.zoneout_cell > 0 or self.zoneout_hidden > 0

    @property
    def draws_masks(self) -> bool:
        """Whether a training step draws random masks (dropout of either kind, zoneout), and so
        takes a seed."""
        return self.dropout > 0 or self.recurrent_dropout > 0 or self.zoned

    @property
    def gates(self) -> int:
        return GATES[self.cell]

    @property
    def n_states(self) -> int:
        return STATES[self.cell]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        unknown = set(d) - set(defaults)
        if unknown:
            raise ValueError(f"unknown model config keys: {', '.join(sorted(unknown))}")
        return cls(**{k: typed("model config", k, v, defaults[k]) for k, v in d.items()})


def typed(what: str, name: str, v, default):
    """v read back for the field `name` whose default is `default`: of the default's type (an
    int where a float is due is widened; a bool is no number), or, where the default is None,
    None or a number. Raises ValueError naming `what` and the field otherwise."""
    if isinstance(default, float) and isinstance(v, int) and not isinstance(v, bool):
        v = float(v)
    if v is None and default is None or type(v) is type(default) \
            or default is None and isinstance(v, (int, float)) and not isinstance(v, bool):
        return v
    raise ValueError(f"{what} {name} must be {type(default).__name__}, got {type(v).__name__}")


# the architecture's defaults by field name (vocab_size aside: it comes from the text)
MODEL_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ModelConfig) if f.name != "vocab_size"}
