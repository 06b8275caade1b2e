"""How characters are drawn from a model's logits, and the prime and stop strings as codes: the
sampling layer that `charrnn sample` (charrnn/sample.py), the backends' own sampling loops and
`charrnn serve` share.

`Decoding` holds the settings with their defaults, written here once (`sample.run` and the CLI
read them from `DEFAULTS`). `distribution` and `draw` turn rows of logits into codes, and
`log_softmax_at` scores them under the model. `prime_codes` and `stop_codes` map text to codes
under a vocabulary's rules.

A leaf: it imports nothing of charrnn at load but the errors, so the backends can import it
without a circle through sample.py, and NumPy only inside the functions that compute, so the CLI
can read the defaults without loading it (`--help` stays light).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from charrnn.errors import SampleError

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class Decoding:
    """How samples are drawn (the sampling flags of `charrnn sample`)."""
    length: int = 2000          # codes per sample; 0: endless
    temperature: float = 1.0    # 0: argmax
    top_k: int = 0              # keep the k most likely codes; 0: all
    top_p: float = 1.0          # keep the smallest set holding this much probability; 1: all
    seed: int = 0               # row i draws from PCG64 seeded seed + i
    batch: int = 1              # samples drawn together
    stop: tuple[int, ...] = ()  # codes: a row ends right after its generated codes end with them
    end: int = -1               # a code that ends a row when drawn (the end-of-document symbol); -1: none

    def __post_init__(self) -> None:
        object.__setattr__(self, "stop", tuple(int(c) for c in self.stop))

    @property
    def own_loop_ok(self) -> bool:
        """Whether a backend's own sampling loop (temperature and top-k, every row to `length`)
        draws these samples: no top-p, no stop string, no end symbol."""
        return self.top_p >= 1.0 and not self.stop and self.end < 0


DEFAULTS = Decoding()


def distribution(logits: np.ndarray, temp: float, top_k: int = 0, top_p: float = 1.0) -> np.ndarray:
    """Rows of probabilities from rows of logits after temperature, top-k and top-p filtering.
    temp 0 puts all mass on the argmax."""
    import numpy as np
    logits = np.asarray(logits, dtype=np.float64)
    if temp == 0:
        probs = np.zeros_like(logits)
        probs[np.arange(len(logits)), logits.argmax(axis=1)] = 1.0
        return probs
    z = logits / temp
    if top_k and top_k < z.shape[1]:
        kth = np.partition(z, -top_k, axis=1)[:, -top_k][:, None]
        z = np.where(z >= kth, z, -np.inf)
    z = z - z.max(axis=1, keepdims=True)
    probs = np.exp(z)
    probs /= probs.sum(axis=1, keepdims=True)
    if top_p < 1.0:
        order = np.argsort(-probs, axis=1, kind="stable")
        sorted_p = np.take_along_axis(probs, order, axis=1)
        keep_sorted = np.cumsum(sorted_p, axis=1) - sorted_p < top_p   # smallest set reaching top_p
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, axis=1)
        probs = np.where(keep, probs, 0.0)
        probs /= probs.sum(axis=1, keepdims=True)
    return probs


def log_softmax_at(logits: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """log p(codes[i]) under row i of the logits, in float64."""
    import numpy as np
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z[np.arange(len(z)), codes] - np.log(np.exp(z).sum(axis=1))


def draw(probs: np.ndarray, rng: np.random.Generator | Sequence[np.random.Generator]) -> np.ndarray:
    """One code per row by inverse-CDF sampling; `rng` is one generator, or one per row."""
    import numpy as np
    if isinstance(rng, np.random.Generator):
        u = rng.random(len(probs))
    else:
        u = np.array([r.random() for r in rng])
    return pick(probs, u)


def pick(probs: np.ndarray, u: np.ndarray) -> np.ndarray:
    """draw() with the uniforms given: row i takes the code whose CDF interval holds u[i]."""
    import numpy as np
    cdf = np.cumsum(probs, axis=1)
    codes = (cdf < u[:, None] * cdf[:, -1:]).sum(axis=1)
    return np.minimum(codes, probs.shape[1] - 1)


def _describe(chars: list[str], limit: int = 20) -> str:
    from charrnn.corpus import describe_chars     # the corpus's wording; loaded only to report
    return describe_chars(chars, limit)


def _as_units(vocab, text: str | bytes) -> str | bytes:
    """Text in the model's units: bytes for a byte model (arguments keep their raw bytes)."""
    if vocab.byte_mode and isinstance(text, str):
        return text.encode("utf-8", "surrogateescape")
    if not vocab.byte_mode and isinstance(text, bytes):
        return text.decode("utf-8", "surrogateescape")
    return text


def prime_codes(vocab, prime: str | bytes, unknown: str = "error") -> tuple[np.ndarray, bytes, list[str]]:
    """(codes to feed, bytes to echo, characters skipped). `unknown` is "error" or "skip" for
    prime characters outside the vocabulary. With no prime the model starts from a newline
    (or its first symbol), which is not echoed. A model of documents (`vocab.eod`) starts a
    document: its end symbol comes first, then the prime."""
    import numpy as np
    codes, echo, missing = _prime_codes(vocab, prime, unknown)
    if getattr(vocab, "eod", False):
        start = np.array([vocab.eod_code], np.int64)
        codes = start if not echo else np.concatenate([start, codes])
    return codes, echo, missing


def _prime_codes(vocab, prime: str | bytes, unknown: str) -> tuple[np.ndarray, bytes, list[str]]:
    import numpy as np
    prime = _as_units(vocab, prime)
    missing = vocab.unknown(prime)
    if missing and unknown == "error":
        raise SampleError(f"the prime has {len(missing)} characters outside the model's vocabulary: "
                          f"{_describe(missing)} (--unknown skip drops them)")
    if missing:
        prime = "".join(c for c in prime if c not in set(missing))
    if not prime:
        start = b"\n" if vocab.byte_mode else ("\n" if "\n" in vocab.chars else vocab.chars[0])
        return vocab.encode(start).astype(np.int64), b"", missing
    echo = prime if isinstance(prime, bytes) else prime.encode("utf-8", "surrogatepass")
    return vocab.encode(prime).astype(np.int64), echo, missing


def stop_codes(vocab, stop: str | bytes | None) -> tuple[int, ...]:
    """The stop string as codes; one the model cannot write is an error, not a silent never."""
    if not stop:
        return ()
    stop = _as_units(vocab, stop)
    missing = vocab.unknown(stop)
    if missing:
        raise SampleError(f"--stop has characters outside the model's vocabulary, so it could never appear: "
                          f"{_describe(missing)}")
    return tuple(vocab.encode(stop).tolist())
