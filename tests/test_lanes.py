"""The lanes scheduler (charrnn/backends/lanes.py): every task once, never before its inputs,
errors reach the caller, and the pool stays usable after one."""
import threading
import time

import numpy as np
import pytest

from charrnn.backends.lanes import lanes, run_graph


def _random_graph(rng, n):
    return [sorted(set(rng.choice(i, size=min(i, rng.integers(0, 4)), replace=False).tolist())) for i in range(n)]


@pytest.mark.parametrize("n_lanes", [2, 3])
def test_every_task_runs_once_and_only_after_its_dependencies(n_lanes):
    rng = np.random.default_rng(n_lanes)
    deps = _random_graph(rng, 60)
    started, finished, seen = {}, {}, []
    lock = threading.Lock()

    def task(i):
        with lock:
            started[i] = time.perf_counter()
            seen.append((i, threading.get_ident()))
        time.sleep(rng.uniform(0, 0.002))
        with lock:
            finished[i] = time.perf_counter()

    tasks = [(lambda i=i: task(i), d, (int(rng.integers(0, 3)), i)) for i, d in enumerate(deps)]
    run_graph(lanes(n_lanes), tasks)
    assert sorted(i for i, _ in seen) == list(range(60))
    for i, d in enumerate(deps):
        for j in d:
            assert finished[j] <= started[i], (j, i)
    assert len({t for _, t in seen}) > 1          # the work was shared, not run on one thread


def test_tasks_run_side_by_side():
    """Two tasks that each wait for the other at a barrier both finish: the lanes are real threads."""
    pool = lanes(2)
    barrier = threading.Barrier(2, timeout=5)
    met = []

    def meet():     # run one after the other, the first wait would time out and break the barrier
        met.append((barrier.wait(), threading.get_ident()))
    run_graph(pool, [(meet, [], (0,)), (meet, [], (0,))])
    assert sorted(i for i, _ in met) == [0, 1] and not barrier.broken     # both were at the barrier at once
    assert len({t for _, t in met}) == 2                                   # on two threads


def test_an_error_in_a_task_reaches_the_caller_and_the_rest_stop():
    pool = lanes(2)
    ran = []

    def boom():
        raise ValueError("bad chunk")

    tasks = [(lambda: ran.append(0), [], (0,)), (boom, [0], (0,))] + \
            [(lambda k=k: ran.append(k), [1], (0,)) for k in range(2, 6)]
    with pytest.raises(ValueError, match="bad chunk"):
        run_graph(pool, tasks)
    assert ran == [0]                               # nothing that needed the failed task ran
    out = []
    run_graph(pool, [(lambda: out.append(1), [], (0,))])     # the pool still works
    assert out == [1]
