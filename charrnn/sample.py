"""Drawing text from a trained model: priming, temperature, top-k, top-p (nucleus), argmax,
stop strings, many samples in one batch, and writing them as a byte stream or JSON lines.

`Decoding` (charrnn/decoding.py, re-exported here with the prime and stop helpers) holds how to
draw, passed whole to `stream()`, `generate()`, `write_samples()` and a backend's own sampling
loop. `stream()` runs the model: `batch` rows together, each row with its own generator seeded
`seed + row`, so `--seed S --num-samples 1` regenerates row i of a batch run with seed S - i.
The writers turn its steps into output: `PlainWriter` streams row 0 live and holds the
others until their turn; `JsonWriter` emits one JSON line per finished sample.
Log-probabilities are always under the model itself (temperature 1, no filtering).
"""
from __future__ import annotations

import base64
import json
import math
import time
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterator

import numpy as np

from charrnn.backends import DEFAULT_DEVICE
from charrnn.decoding import (DEFAULTS, Decoding, _as_units, distribution, draw, log_softmax_at,  # noqa: F401
                              prime_codes, stop_codes)
from charrnn.errors import SampleError  # noqa: F401  (re-exported)

PRIME_WINDOW = 128          # prime codes per forward call (a window, not one step at a time)


def prime_state(backend, codes: np.ndarray, batch: int, start=None):
    """Feed all but the last prime code through the model in windows, from the state `start`
    of one row (zeros when None); returns (state, last codes). Every row sees the same prime,
    so a NumPy state is computed once and repeated."""
    codes = np.asarray(codes, dtype=np.int64)
    rows = 1
    state = backend.zero_state(1) if start is None else start
    if not isinstance(state, np.ndarray):      # a device state: run the whole batch
        rows, state = batch, backend.zero_state(batch)
    head = codes[:-1]
    for start in range(0, len(head), PRIME_WINDOW):
        x = np.repeat(head[start:start + PRIME_WINDOW, None], rows, axis=1)
        _, state = backend.loss(x, x, state)
    if rows != batch:
        state = np.repeat(state, batch, axis=2)
    return state, np.full(batch, codes[-1], dtype=np.int64)


@dataclass
class Step:
    """One step of `stream()`: `rows` are the sample indices still running, `codes` and
    `logp` their new codes and log-probabilities, `done` which of them ended here."""
    rows: np.ndarray
    codes: np.ndarray
    logp: np.ndarray
    done: np.ndarray


def stream(backend, prime_codes: np.ndarray, dec: Decoding = Decoding()) -> Iterator[Step]:
    """Generate dec.batch samples together. A row ends after `length` codes (0: never) or right
    after its generated codes end with `stop` (kept). Rows that end leave the batch. The
    backend's own sampling loop (`generate`) runs when it can (Decoding.own_loop_ok), else
    `step_loop`; both draw the same samples."""
    if dec.own_loop_ok:
        return _backend_loop(backend, prime_codes, dec)
    return step_loop(backend, prime_codes, dec)


def step_loop(backend, prime_codes: np.ndarray, dec: Decoding) -> Iterator[Step]:
    """stream() one backend step at a time, drawing on the host: every setting, and only
    `step` and `loss` of the backend (the path its own loop must agree with)."""
    n, length, temp, top_k, top_p = dec.batch, dec.length, dec.temperature, dec.top_k, dec.top_p
    stop = np.asarray(dec.stop, dtype=np.int64) if dec.stop else None
    rngs = [np.random.default_rng(dec.seed + i) for i in range(n)]
    state, codes = prime_state(backend, prime_codes, n)
    rows = np.arange(n)
    tail = np.full((n, len(stop)), -1, dtype=np.int64) if stop is not None else None
    shrink = isinstance(state, np.ndarray)
    live = np.ones(n, dtype=bool)             # only used when the state cannot shrink
    count = 0
    while len(rows):
        logits, state = backend.step(codes, state)
        logits = np.asarray(logits)
        codes = draw(distribution(logits, temp, top_k, top_p), [rngs[r] for r in rows] if shrink else rngs)
        logp = log_softmax_at(logits, codes)
        count += 1
        done = codes == dec.end if dec.end >= 0 else np.zeros(len(codes), dtype=bool)
        if stop is not None:
            tail[:, :-1] = tail[:, 1:]
            tail[:, -1] = codes
            done |= (tail == stop).all(axis=1)
        if length and count >= length:
            done[:] = True
        if shrink:
            yield Step(rows, codes, logp, done)
            keep = ~done
            if not keep.all():
                rows, codes, state = rows[keep], codes[keep], state[:, :, keep]
                tail = tail[keep] if tail is not None else None
        else:                                  # keep stepping every row; report the live ones
            yield Step(rows[live], codes[live], logp[live], done[live])
            live &= ~done
            if not live.any():
                return


def _backend_loop(backend, prime_codes: np.ndarray, dec: Decoding) -> Iterator[Step]:
    """stream() by the backend's own loop, which draws from the same generators (seed + row)
    without a host round trip per step. With no stop string every row runs to `length`."""
    n, length = dec.batch, dec.length
    state, _ = prime_state(backend, prime_codes, n)
    rows, count = np.arange(n), 0
    for codes, logp in backend.generate(prime_codes, dec, state=state):
        count += 1
        yield Step(rows, np.asarray(codes), np.asarray(logp), np.full(n, bool(length) and count >= length))


def generate(backend, prime_codes: np.ndarray, dec: Decoding = Decoding()) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (codes (batch,), log-probabilities of those codes under the model) for dec.length
    steps; length 0 means endless. The prime must hold at least one code."""
    for st in stream(backend, prime_codes, dec):
        yield st.codes, st.logp


def write_samples(backend, vocab, out: BinaryIO, codes: np.ndarray, dec: Decoding, echo: bytes = b"",
                  as_json: bool = False, separator: bytes = b"") -> None:
    """Generate and write dec.batch samples to the binary stream `out`, as plain bytes or JSON
    lines. A closed pipe or Ctrl-C propagates; Ctrl-C first ends the line being shown."""
    if as_json:
        writer = JsonWriter(out, vocab, dec, echo)
    else:
        writer = PlainWriter(out, vocab, dec.batch, echo, separator)
    try:
        for st in stream(backend, codes, dec):
            writer.step(st)
    except KeyboardInterrupt:
        writer.close()
        out.flush()
        raise
    out.flush()


# ---------------------------------------------------------------- output
def code_bytes(vocab) -> list[bytes]:
    """The bytes each code writes: one raw byte in byte mode, the UTF-8 of its character otherwise;
    the end-of-document symbol writes none."""
    if vocab.byte_mode:
        table = [bytes([i]) for i in range(256)]
    else:
        table = [c.encode("utf-8", "surrogatepass") for c in vocab.chars]
    return table + [b""] * (vocab.size - len(table))


class PlainWriter:
    """Samples as one byte stream: each is its echoed prime then its codes; text samples end
    with a newline; a separator line goes between samples. Row 0 streams as it is generated;
    later rows are held until every earlier one has ended, so output appears at once and the
    samples never interleave."""

    def __init__(self, out: BinaryIO, vocab, n: int, echo: bytes = b"", separator: bytes = b"",
                 flush_every: float = 0.1):
        self.out, self.n, self.echo = out, n, echo
        self.table = code_bytes(vocab)
        self.newline_end = not vocab.byte_mode
        self.sep = separator + b"\n"
        self.flush_every, self.last_flush = flush_every, time.monotonic()
        self.current = 0
        self.held: dict[int, bytearray] = {}
        self.finished: set[int] = set()
        self.last = echo[-1:]                  # last byte written for the current sample
        out.write(echo)

    def step(self, st: Step) -> None:
        table, cur, newline = self.table, self.current, False
        for r, c, d in zip(st.rows.tolist(), st.codes.tolist(), st.done.tolist()):
            b = table[c]
            if r == cur:
                self.out.write(b)
                self.last = b[-1:] or self.last
                newline = b"\n" in b
            else:
                self.held.setdefault(r, bytearray()).extend(b)
            if d:
                self.finished.add(r)
        self._advance()
        now = time.monotonic()
        if newline or now - self.last_flush > self.flush_every:   # lines promptly, no write per char
            self.out.flush()
            self.last_flush = now

    def _advance(self) -> None:
        while self.current in self.finished:
            self._end_sample()
            self.current += 1
            if self.current >= self.n:
                return
            self.out.write(self.sep)
            body = bytes(self.held.pop(self.current, b""))
            self.out.write(self.echo + body)
            self.last = (self.echo + body)[-1:]

    def _end_sample(self) -> None:
        if self.newline_end and self.last != b"\n":
            self.out.write(b"\n")
        self.out.flush()

    def close(self) -> None:
        """Called when generation stops early (endless output): end the line being shown."""
        if self.current < self.n:
            self._end_sample()


class JsonWriter:
    """One JSON object per line per sample, in sample order, written when the sample ends:
    index, seed, prime, text (the generated part), chars, logprob (natural log, summed under
    the model), bits_per_char, stopped. Byte models add `bytes_b64`, the exact bytes, because
    `text` must be valid Unicode (undecodable bytes become U+FFFD)."""

    def __init__(self, out: BinaryIO, vocab, dec: Decoding, prime: bytes):
        n = dec.batch
        self.out, self.n, self.seed, self.prime = out, n, dec.seed, prime
        self.table = code_bytes(vocab)
        self.byte_mode = vocab.byte_mode
        self.stop, self.end = list(dec.stop), dec.end
        self.codes: list[list[int]] = [[] for _ in range(n)]
        self.logp = np.zeros(n)
        self.finished: set[int] = set()
        self.current = 0

    def step(self, st: Step) -> None:
        for r, c in zip(st.rows.tolist(), st.codes.tolist()):
            self.codes[r].append(c)
        np.add.at(self.logp, st.rows, st.logp)
        self.finished.update(st.rows[st.done].tolist())
        while self.current in self.finished:
            self.out.write(self._line(self.current).encode("utf-8") + b"\n")
            self.out.flush()
            self.codes[self.current] = []
            self.current += 1

    def _line(self, i: int) -> str:
        codes = self.codes[i]
        raw = b"".join(self.table[c] for c in codes)
        n = len(codes)
        rec = {"index": i, "seed": self.seed + i, "prime": self.prime.decode("utf-8", "replace"),
               "text": raw.decode("utf-8", "replace"), "chars": n,
               "logprob": float(self.logp[i]),
               "bits_per_char": float(-self.logp[i] / math.log(2) / n) if n else None,
               "stopped": bool(self.stop and codes[-len(self.stop):] == self.stop)
               or bool(codes and codes[-1] == self.end)}
        if self.byte_mode:
            rec["bytes_b64"] = base64.b64encode(raw).decode("ascii")
        return json.dumps(rec, ensure_ascii=False)

    def close(self) -> None:
        pass


class Interrupted(Exception):
    """Ctrl-C while samples were being written (the line being shown was ended first)."""


def run(checkpoint: str | None, out: BinaryIO, *, prime: str | None = None, prime_file: str | None = None,
        unknown: str = "error", echo: bool = True, seed: int | None = None, device: str = DEFAULT_DEVICE,
        num_samples: int = DEFAULTS.batch, length: int = DEFAULTS.length, temp: float = DEFAULTS.temperature,
        top_k: int = DEFAULTS.top_k, top_p: float = DEFAULTS.top_p,
        stop: str | None = None, as_json: bool = False, separator: str = "", adapt: str | None = None,
        documents: int = 0, until_end: bool = False, weights: str = "f32",
        log: Callable[[str], None] = lambda m: None) -> None:
    """`charrnn sample` as one call: load CHECKPOINT (see zoo.load_checkpoint), read the prime
    (`prime`, or "-" / `prime_file` for a file or stdin), and write the samples to `out`. A
    random seed is drawn when none is given. Ctrl-C while writing raises Interrupted.

    `adapt` names a file the model first reads with dynamic evaluation (charrnn/dynamic.py): the
    samples come from the adapted weights, continuing the file (then the prime). `weights`: "f32",
    or "bf16"/"f16" for 16-bit copies (backends.make_backend; on the CPU: "auto" means cpu).

    A model trained on several documents begins each sample at the start of a document and ends
    it at the document's end symbol (never written), or after `length` codes. `documents` N
    writes N whole documents (N samples, no length limit unless `length` is given by the
    caller); `until_end` lets one sample run to its document's end."""
    import secrets

    from charrnn import zoo
    from charrnn.backends import compile_notices, cpu_only, make_backend, pick_device
    from charrnn.checkpoint import load
    from charrnn.corpus import MODEL_HINT, describe_chars, read_input

    ck_path, note = zoo.resolve(checkpoint)
    if note:
        log(note)
    ck = load(ck_path)
    vocab = ck.vocab
    if (documents or until_end) and not vocab.eod:
        raise SampleError(f"--{'documents' if documents else 'until-end'}: this model was trained on one text and "
                          f"knows no end of a document; train on several files (a folder) to sample whole documents")
    if documents:
        num_samples = documents
    text: str | bytes = prime or ""
    if prime == "-" or prime_file is not None:
        text = read_input(prime_file or "-", byte_mode=vocab.byte_mode, hint=MODEL_HINT)
    codes, echoed, skipped = prime_codes(vocab, text, unknown)
    stop_at = stop_codes(vocab, stop)
    if skipped:
        log(f"skipped prime characters outside the vocabulary: {describe_chars(skipped)}")
    from charrnn.memory import check_sampling
    check_sampling(ck.config, num_samples)
    device = pick_device("cpu" if cpu_only(ck.config, weights) and device == "auto" else device, log,
                         announce=False)
    adapted = None
    if adapt is not None:
        from charrnn.dynamic import adapt as read_and_adapt
        adapted = read_and_adapt(ck, ck_path, device, adapt, log=log)
    if adapted is None:
        be = make_backend(device, ck.config, ck.params, notify=compile_notices(log), weights=weights)
    else:                           # continue the file: its codes, then the prime's (if one was given)
        be, file_codes = adapted
        codes = np.concatenate([file_codes.astype(np.int64), codes if echoed else codes[:0]])
    try:
        dec = Decoding(length=length, temperature=temp, top_k=top_k, top_p=top_p, batch=num_samples, stop=stop_at,
                       seed=secrets.randbits(31) if seed is None else seed,
                       end=vocab.eod_code if vocab.eod else -1)
        write_samples(be, vocab, out, codes, dec, echoed if echo else b"", as_json=as_json,
                      separator=separator.encode("utf-8", "surrogateescape"))
    except KeyboardInterrupt:
        raise Interrupted() from None
