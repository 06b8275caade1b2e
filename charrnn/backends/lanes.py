"""Lanes: the calling thread plus helper threads that run nogil Numba kernels side by side.

A stacked model's window is a graph of tasks (cpu_window.py): layer l's time loop over
chunk k of the steps needs layer l over chunk k-1, whose state it carries on, and the input
projection of chunk k, which needs layer l-1 over chunk k. Everything else may run at
once, so with two lanes layer l+1 works on chunk k while layer l works on chunk k+1: a
wavefront, with the products that nothing waits on (weight gradients) filling the gaps.
Each lane calls single-threaded BLAS, and the lanes, not BLAS, own the cores.
"""
from __future__ import annotations

import heapq
import os
import queue
import threading
from typing import Callable


class Lanes:
    """n lanes: lane 0 is the caller's thread, lanes 1..n-1 are daemon threads kept for reuse."""

    def __init__(self, n: int):
        self.n = n
        self._todo = [queue.SimpleQueue() for _ in range(n - 1)]
        self._done: queue.SimpleQueue = queue.SimpleQueue()
        self._busy = threading.Lock()
        for i in range(1, n):
            threading.Thread(target=self._serve, args=(i,), daemon=True, name=f"charrnn-lane-{i}").start()

    def _serve(self, lane: int) -> None:
        while True:
            fn = self._todo[lane - 1].get()
            try:
                fn(lane)
                self._done.put(None)
            except BaseException as e:     # handed to the caller, which re-raises it
                self._done.put(e)

    def run(self, fn: Callable[[int], None]) -> None:
        """fn(lane) on every lane at once; returns when all have returned, raising the first
        error. One run at a time per pool (callers on other threads wait their turn)."""
        with self._busy:
            for q in self._todo:
                q.put(fn)
            first = None
            try:
                fn(0)
            except BaseException as e:
                first = e
            for _ in range(self.n - 1):
                e = self._done.get()
                first = first or e
            if first is not None:
                raise first


_pools: dict[int, Lanes] = {}
if hasattr(os, "register_at_fork"):        # a forked child has none of the parent's threads
    os.register_at_fork(after_in_child=_pools.clear)


def lanes(n: int) -> Lanes:
    """The process's pool of n lanes, started on first use."""
    if n not in _pools:
        _pools[n] = Lanes(n)
    return _pools[n]


def run_graph(pool: Lanes, tasks: list[tuple[Callable[[], None], list[int], tuple]]) -> None:
    """Run every task (fn, deps, priority) once on all lanes, each after the tasks its deps
    index (earlier in the list). A free lane takes the ready task with the lowest priority
    tuple. On an error the lanes stop taking tasks and the first error is raised."""
    n = len(tasks)
    waiting = [len(deps) for _, deps, _ in tasks]
    after: list[list[int]] = [[] for _ in range(n)]
    for i, (_, deps, _) in enumerate(tasks):
        for d in deps:
            after[d].append(i)
    ready = [(prio, i) for i, (_, deps, prio) in enumerate(tasks) if not deps]
    heapq.heapify(ready)
    cond = threading.Condition()
    left = [n]
    failed = [False]

    def work(lane: int) -> None:
        try:
            with cond:
                take(cond)
        except BaseException:              # a task's error, or Ctrl-C while waiting: stop every lane
            with cond:
                failed[0] = True
                cond.notify_all()
            raise

    def take(cond: threading.Condition) -> None:
        while True:
            while not ready and left[0] and not failed[0]:
                cond.wait()
            if failed[0] or not ready:
                return
            i = heapq.heappop(ready)[1]
            cond.release()
            try:
                tasks[i][0]()
            finally:
                cond.acquire()
            left[0] -= 1
            woke = 0
            for j in after[i]:
                waiting[j] -= 1
                if waiting[j] == 0:
                    heapq.heappush(ready, (tasks[j][2], j))
                    woke += 1
            if left[0] == 0:
                cond.notify_all()
            elif woke > 1:
                cond.notify(woke - 1)    # this lane takes one itself

    pool.run(work)
