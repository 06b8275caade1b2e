"""The serving engine: one thread per model steps every active sequence together (continuous
batching) for `charrnn serve` (charrnn/server.py), and the sessions that keep a conversation's
state between requests.

A `Job` is one request: one `Seq` per choice, each with its own decoding settings and its own
generator. `Engine.submit` hands a job over from any thread; the engine's thread primes it
(sample.prime_state, in windows), lets it join the batch between two steps, and drops it when it
ends or its client goes away (`Job.cancel`). Each step runs the backend's `step_rows` where it
has one (CpuBackend: a row's arithmetic does not depend on the batch, so a seeded request writes
the same text alone or beside 63 others) and draws every row with the sampler's own rules:
cpu_kernels.draw_rows for temperature and top-k, as `charrnn sample`'s compiled loop does, and
decoding.distribution for top-p, as its host loop does. So a request writes what
`charrnn sample` writes with the same seed and settings. What a step produced goes back to the
job's `emit` callable in one call per job per step (the server passes one that wakes its event
loop); the event loop never runs a kernel.

Stop strings are matched on the text: the characters that could begin a stop string are held
back until they cannot, and the stop string itself is not returned (the OpenAI convention;
`charrnn sample --stop` keeps it).
"""
from __future__ import annotations

import codecs
import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from charrnn.decoding import distribution, pick
from charrnn.sample import prime_state

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


@dataclass(frozen=True)
class Settings:
    """How one sequence is drawn and when it ends."""
    max_tokens: int = 16
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    logprobs: int | None = None      # None: none; k: the chosen character's and the k likeliest


@dataclass
class Saved:
    """A session between requests: the state before its last code, that code, its generator."""
    state: np.ndarray                # (L, S, 1, H)
    code: int
    rng: np.random.Generator
    used: float = 0.0
    busy: bool = False


class Sessions:
    """Session states by id, at most `cap` of them, each dropped after `ttl` seconds unused
    (least recently used first). Thread-safe: the event loop takes, the engine puts back."""

    def __init__(self, cap: int = 1000, ttl: float = 3600.0):
        self.cap, self.ttl = cap, ttl
        self._d: OrderedDict[tuple[str, str], Saved] = OrderedDict()
        self._lock = threading.Lock()

    def _expire(self, now: float) -> None:
        for key in [k for k, s in self._d.items() if not s.busy and now - s.used > self.ttl]:
            del self._d[key]
        while len(self._d) > self.cap:
            key = next((k for k, s in self._d.items() if not s.busy), None)
            if key is None:
                return
            del self._d[key]

    def take(self, model: str, sid: str) -> Saved | None:
        """The session to continue (marked busy until put back or released), None when new.
        Raises KeyError when a request on it is still running."""
        with self._lock:
            self._expire(time.monotonic())
            s = self._d.get((model, sid))
            if s is None:
                self._d[(model, sid)] = s = Saved(np.empty(0), -1, np.random.default_rng(0), time.monotonic(), True)
                return None
            if s.busy:
                raise KeyError(sid)
            s.busy = True
            self._d.move_to_end((model, sid))
            return s

    def put(self, model: str, sid: str, state: np.ndarray, code: int, rng: np.random.Generator) -> None:
        with self._lock:
            self._d[(model, sid)] = Saved(state, code, rng, time.monotonic())
            self._d.move_to_end((model, sid))
            self._expire(time.monotonic())

    def release(self, model: str, sid: str) -> None:
        """A request on the session ended without a new state: keep the old one (or none)."""
        with self._lock:
            s = self._d.get((model, sid))
            if s is not None:
                if s.code < 0:
                    del self._d[(model, sid)]
                else:
                    s.busy = False

    def delete(self, model: str | None, sid: str) -> bool:
        with self._lock:
            keys = [k for k in self._d if k[1] == sid and (model is None or k[0] == model) and not self._d[k].busy]
            for k in keys:
                del self._d[k]
            return bool(keys)

    def stats(self) -> tuple[int, int]:
        """(sessions held, bytes of their states)."""
        with self._lock:
            return len(self._d), sum(s.state.nbytes for s in self._d.values())


class Job:
    """One request: its sequences, and where their output goes. `emit(events)` is called from
    the engine's thread with a list of ("text", index, text, logprob entries) and
    ("done", index, finish_reason) tuples."""

    def __init__(self, emit: Callable[[list[tuple]], None]):
        self.emit = emit
        self.cancelled = False
        self.seqs: list[Seq] = []

    def cancel(self) -> None:
        """The client went away: the engine drops the job's sequences before its next step."""
        self.cancelled = True


@dataclass(eq=False)
class Seq:
    """One choice of a job. `codes`: what to feed before drawing (a prime, or a session's last
    code and the new prompt); `start`: the state to feed them from (None: zeros)."""
    job: Job
    index: int
    codes: np.ndarray
    settings: Settings
    rng: np.random.Generator
    start: np.ndarray | None = None
    session: tuple[str, str] | None = None      # (model, id) to save the state to at the end
    code: int = 0
    made: int = 0
    held: list = field(default_factory=list)    # [(text, logprob entry)] that may begin a stop string
    decoder: Any = None


class Metrics:
    """What the engine counts, read by the server's /metrics (plain ints; the GIL keeps them whole)."""

    def __init__(self):
        self.chars = 0
        self.steps = 0
        self.batch_counts = [0] * (len(BATCH_BUCKETS) + 1)
        self.batch_sum = 0

    def observe_batch(self, b: int) -> None:
        self.steps += 1
        self.batch_sum += b
        for i, edge in enumerate(BATCH_BUCKETS):
            if b <= edge:
                self.batch_counts[i] += 1
                return
        self.batch_counts[-1] += 1


class Engine:
    """Steps one model's active sequences together on its own thread (see the module docstring)."""

    def __init__(self, name: str, backend, vocab, sessions: Sessions, metrics: Metrics | None = None):
        self.name, self.backend, self.vocab, self.sessions = name, backend, vocab, sessions
        self.metrics = metrics or Metrics()
        self._step = getattr(backend, "step_rows", backend.step)
        self._units = None if vocab.byte_mode else list(vocab.chars) + [""] * vocab.eod   # the end symbol: no text
        self._end = vocab.eod_code if vocab.eod else -1     # a model of documents: a sequence ends with one
        self._cv = threading.Condition()
        self._incoming: list[Seq] = []
        self._active: list[Seq] = []
        self._state = None
        self._stop = False
        self._thread = threading.Thread(target=self._run, name=f"charrnn-engine-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join(5)

    def submit(self, job: Job) -> None:
        with self._cv:
            self._incoming.extend(job.seqs)
            self._cv.notify()

    def warm_up(self) -> None:
        """Compile (or load) the kernels a request takes, before the first one comes."""
        from charrnn.backends.cpu_kernels import draw_rows
        prime_state(self.backend, np.zeros(3, np.int64), 1)
        lg, _ = self._step(np.zeros(2, np.int64), self.backend.zero_state(2))
        draw_rows(np.asarray(lg, dtype=np.float32), np.zeros(2), 1.0, 0, np.empty(2, np.int64), np.empty(2))

    # -- the thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cv:
                while not (self._incoming or self._active or self._stop):
                    self._cv.wait()
                if self._stop:
                    return
                new, self._incoming = self._incoming, []
            try:
                self._admit(new)
                self._drop([s for s in self._active if s.job.cancelled])
                if self._active:
                    self._one_step()
            except Exception as e:          # never leave a client waiting on a dead thread
                jobs = {id(s.job): s.job for s in self._active + new}
                self._drop(list(self._active))
                for job in jobs.values():
                    job.emit([("error", repr(e))])

    def _admit(self, new: list[Seq]) -> None:
        states = []
        for s in new:
            if s.job.cancelled:
                self._release(s)
                continue
            st, last = prime_state(self.backend, s.codes, 1, s.start)
            s.code = int(last[0])
            if self.vocab.byte_mode:
                s.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            states.append(np.asarray(st))
            self._active.append(s)
        if states:
            parts = ([] if self._state is None else [self._state]) + states
            self._state = np.concatenate(parts, axis=2)

    def _release(self, s: Seq) -> None:
        if s.session is not None:
            self.sessions.release(*s.session)

    def _drop(self, gone: list[Seq]) -> None:
        if not gone:
            return
        for s in gone:
            self._release(s)
        gone_ids = {id(s) for s in gone}
        keep = np.array([id(s) not in gone_ids for s in self._active])
        self._active = [s for s, k in zip(self._active, keep) if k]
        self._state = self._state[:, :, keep] if self._active else None

    def _one_step(self) -> None:
        from charrnn.backends.cpu_kernels import draw_rows
        act = self._active
        B = len(act)
        self.metrics.observe_batch(B)
        logits, new_state = self._step(np.array([s.code for s in act], np.int64), self._state)
        logits = np.asarray(logits)
        u = np.array([s.rng.random() for s in act])
        codes, logp = np.empty(B, np.int64), np.empty(B)
        groups: dict[tuple, list[int]] = {}
        for i, s in enumerate(act):
            st = s.settings
            groups.setdefault((st.temperature, st.top_k, st.top_p), []).append(i)
        for (temp, top_k, top_p), rows in groups.items():
            if top_p >= 1.0:       # the compiled draw, row by row in a fixed order: as `charrnn sample`
                if len(rows) == B:     # every row alike (the usual batch): no gather
                    draw_rows(np.ascontiguousarray(logits), u, temp, top_k, codes, logp)
                    continue
                idx = np.array(rows)
                c, lp = np.empty(len(rows), np.int64), np.empty(len(rows))
                draw_rows(np.ascontiguousarray(logits[idx]), u[idx], temp, top_k, c, lp)
                codes[idx], logp[idx] = c, lp
            else:                  # the host loop's rules, one row at a time (row-independent)
                for i in rows:
                    c = pick(distribution(logits[i:i + 1], temp, top_k, top_p), u[i:i + 1])
                    codes[i] = c[0]
                    z = logits[i].astype(np.float64)
                    m = z.max()
                    logp[i] = z[c[0]] - m - math.log(np.exp(z - m).sum())
        self._state = np.asarray(new_state)    # a device state (CUDA) comes home: rows join and leave here
        events: dict[int, tuple[Job, list]] = {}
        ended = []
        for i, (s, code, lp) in enumerate(zip(act, codes.tolist(), logp.tolist())):
            s.code = code
            s.made += 1
            ev = events.setdefault(id(s.job), (s.job, []))[1]
            done = self._emit_char(s, code, lp, logits, i, ev)
            if done:
                ended.append(s)
                if s.session is not None:
                    self.sessions.put(*s.session, np.array(self._state[:, :, i:i + 1]), s.code, s.rng)
                    s.session = None
        self.metrics.chars += B
        for job, ev in events.values():
            job.emit(ev)
        self._drop(ended)

    def _emit_char(self, s: Seq, code: int, lp: float, logits: np.ndarray, row: int, ev: list) -> bool:
        """Add one drawn code (of logits[row]) to the sequence's output; append its events; True
        when it ends."""
        st = s.settings
        text = self._units[code] if self._units is not None else \
            s.decoder.decode(bytes([code]) if code < 256 else b"")      # 256: a byte model's end symbol
        entry = None
        if st.logprobs is not None:
            z = logits[row].astype(np.float64)
            z = z - z.max()
            z = z - math.log(np.exp(z).sum())
            top = np.argsort(-z, kind="stable")[:st.logprobs]
            entry = (lp, {self._unit(int(k)): float(z[k]) for k in top})
        s.held.append((text, entry))
        reason = None
        if st.stop:
            joined = "".join(t for t, _ in s.held)
            hits = [joined.index(x) for x in st.stop if x in joined]
            if hits:
                cut, n, out = min(hits), 0, []
                for t, e in s.held:            # the characters before the stop string
                    if n + len(t) > cut:
                        break
                    out.append((t, e))
                    n += len(t)
                s.held = out
                reason = "stop"
            else:
                keep = max((k for x in st.stop for k in range(1, min(len(x), len(joined) + 1))
                            if joined.endswith(x[:k])), default=0)
                # hold back the last characters whose text could begin a stop string
                n, cut = 0, len(s.held)
                while cut > 0 and n < keep:
                    cut -= 1
                    n += len(s.held[cut][0])
                out, s.held = s.held[:cut], s.held[cut:]
                if out:
                    ev.append(("text", s.index, out))
        if reason is None and code == self._end:
            reason = "stop"
        if reason is None and s.made >= st.max_tokens:
            reason = "length"
        if reason is None and not st.stop:
            ev.append(("text", s.index, s.held))
            s.held = []
        if reason is not None:
            if s.held:
                ev.append(("text", s.index, s.held))
            s.held = []
            ev.append(("done", s.index, reason))
            return True
        return False

    def _unit(self, code: int) -> str:
        if self._units is not None:
            return self._units[code]
        return bytes([code] if code < 256 else []).decode("utf-8", "backslashreplace")
