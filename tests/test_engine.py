"""The serving engine (charrnn/engine.py) without HTTP: sessions' caps, the stop-string hold-back,
and jobs joining a running batch. The server around it: test_serve.py."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from charrnn.backends.cpu import CpuBackend
from charrnn.corpus import Vocab
from charrnn.engine import Engine, Job, Metrics, Seq, Sessions, Settings
from tiny_models import random_case, tiny_config


def test_sessions_are_capped_least_recently_used_first_and_expire_when_idle():
    s = Sessions(cap=2, ttl=3600)
    rng = np.random.default_rng(0)
    for sid in ("a", "b"):
        assert s.take("m", sid) is None
        s.put("m", sid, np.zeros((1, 2, 1, 4), np.float32), 1, rng)
    assert s.take("m", "a") is not None                  # touch a: b is now the oldest
    s.release("m", "a")
    assert s.take("m", "c") is None
    s.put("m", "c", np.zeros((1, 2, 1, 4), np.float32), 1, rng)
    assert s.stats() == (2, 2 * 32)
    assert s.delete("m", "b") is False and s.delete("m", "a") is True
    s.ttl = 0.0
    time.sleep(0.01)
    assert s.take("m", "x") is None and s.stats()[0] == 1   # c expired, x is new (and busy)


def test_a_session_in_use_cannot_be_taken_twice_and_a_failed_new_one_leaves_nothing():
    s = Sessions()
    assert s.take("m", "a") is None
    with pytest.raises(KeyError):
        s.take("m", "a")
    s.release("m", "a")
    assert s.stats() == (0, 0)


@pytest.fixture(scope="module")
def engine():
    cfg = tiny_config(vocab_size=5, hidden=16, layers=2)
    p, _, _, _ = random_case(cfg, 1, 1, np.float32)
    e = Engine("t", CpuBackend(cfg, p.astype(np.float32)), Vocab("abcde"), Sessions(), Metrics())
    e.warm_up()
    e.start()
    yield e
    e.close()


def run_job(engine, seqs_settings, seed=0):
    got: list = []
    done = threading.Event()
    job = Job(lambda ev: (got.extend(ev), done.set() if sum(e[0] == "done" for e in got) == len(job.seqs) else None))
    for i, st in enumerate(seqs_settings):
        job.seqs.append(Seq(job, i, np.array([0], np.int64), st, np.random.default_rng(seed + i)))
    engine.submit(job)
    assert done.wait(30)
    texts = {i: "" for i in range(len(seqs_settings))}
    reasons = {}
    for ev in got:
        if ev[0] == "text":
            texts[ev[1]] += "".join(t for t, _ in ev[2])
        elif ev[0] == "done":
            reasons[ev[1]] = ev[2]
    return texts, reasons


def test_a_stop_string_is_cut_off_and_nothing_after_it_is_sent(engine):
    full = run_job(engine, [Settings(max_tokens=300)])[0][0]
    stop = next(full[i:i + 2] for i in range(10, 290) if full[i:i + 2] not in full[:i + 1])
    texts, reasons = run_job(engine, [Settings(max_tokens=300, stop=(stop, "eeeeeeeeee"))])
    assert texts[0] == full[:full.index(stop)] and reasons[0] == "stop"


def test_sequences_with_different_settings_in_one_batch_each_write_their_own_text(engine):
    settings = [Settings(max_tokens=50), Settings(max_tokens=80, temperature=0.5),
                Settings(max_tokens=30, top_p=0.8), Settings(max_tokens=60, top_k=2)]
    together, reasons = run_job(engine, settings, seed=5)
    for i, st in enumerate(settings):
        alone, _ = run_job(engine, [st], seed=5 + i)
        assert together[i] == alone[0] and len(alone[0]) == st.max_tokens and reasons[i] == "length"


def test_a_model_of_documents_ends_a_sequence_at_its_end_symbol_and_writes_nothing_for_it():
    cfg = tiny_config(vocab_size=4, hidden=8, layers=1)
    p, _, _, _ = random_case(cfg, 1, 1, np.float32)
    p["out.b"][...] = np.log([0.3, 0.3, 0.2, 0.2])       # the end symbol (code 3) one time in five
    p["out.W"][...] *= 0.1
    e = Engine("d", CpuBackend(cfg, p.astype(np.float32)), Vocab("abc", eod=True), Sessions(), Metrics())
    e.start()
    try:
        texts, reasons = run_job(e, [Settings(max_tokens=500)] * 4, seed=3)
    finally:
        e.close()
    assert all(r == "stop" for r in reasons.values()) and all(set(t) <= set("abc") for t in texts.values())


_ON_CUDA = """
import threading, numpy as np
from charrnn.backends.cuda import CudaBackend
from charrnn.corpus import Vocab
from charrnn.engine import Engine, Job, Metrics, Seq, Sessions, Settings
from tiny_models import random_case, tiny_config
cfg = tiny_config(vocab_size=5, hidden=4, layers=2)
p, _, _, _ = random_case(cfg, 1, 1, np.float32)
e = Engine("t", CudaBackend(cfg, p.astype(np.float32)), Vocab("abcde"), Sessions(), Metrics())
e.start()
got, done = [], threading.Event()
job = Job(lambda ev: (got.extend(ev), done.set() if sum(x[0] == "done" for x in got) == 2 else None))
job.seqs = [Seq(job, i, np.array([0, 1], np.int64), Settings(max_tokens=6 + 3 * i), np.random.default_rng(i))
            for i in range(2)]
e.submit(job)
assert done.wait(600)
e.close()
print(sorted((ev[1], len(''.join(t for t, _ in ev[2]))) for ev in got if ev[0] == "text"))
"""


@pytest.mark.slow          # ~25 s: the simulator runs each kernel thread in Python
def test_the_engine_runs_on_the_cuda_backend_under_the_simulator():
    import os
    import subprocess
    import sys
    from pathlib import Path
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONPATH=os.pathsep.join(
        [str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", _ON_CUDA], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    per_row: dict[int, int] = {}
    for row, n in eval(out.stdout):
        per_row[row] = per_row.get(row, 0) + n
    assert per_row == {0: 6, 1: 9}
