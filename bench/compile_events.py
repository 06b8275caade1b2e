"""What a charrnn command compiles, from Numba's compile events (issue 28).

    python bench/compile_events.py sample --length 200          # a fresh cache unless NUMBA_CACHE_DIR is set
    NUMBA_CACHE_DIR=/tmp/c python bench/compile_events.py train shakespeare --max-steps 1 --out /tmp/r

Runs the CLI in this process and prints, on stderr, the wall and CPU seconds of the whole
command and the 25 largest compiles: CPU seconds exclusive of the compiles nested in each, then
inclusive, then the function. The LSTM cell's and the draw's C functions are not dispatcher
compiles and do not show; on a cold cache they compile in a second process
(cpu_kernels.compile_cells_aside), with, for training, the LSTM backward, and that process's
CPU is not counted here (what it put in the cache in time is loaded here and does not show).
"""
import os
import sys
import tempfile
import time

os.environ.setdefault("NUMBA_CACHE_DIR", tempfile.mkdtemp(prefix="charrnn-compile-"))

from numba.core import event  # noqa: E402

records: list[tuple[float, float, str]] = []


class _Timer(event.Listener):
    def __init__(self):
        self.stack: list[list] = []

    def on_start(self, ev):
        self.stack.append([ev.data.get("dispatcher"), time.process_time(), 0.0])

    def on_end(self, ev):
        disp, t0, nested = self.stack.pop()
        total = time.process_time() - t0
        if self.stack:
            self.stack[-1][2] += total
        fn = getattr(disp, "py_func", disp)
        name = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', '?')}"
        records.append((total - nested, total, name))


def main() -> None:
    event.register("numba:compile", _Timer())
    t0, c0 = time.time(), time.process_time()
    sys.argv = ["charrnn", *sys.argv[1:]]
    from charrnn.cli import main as cli
    try:
        cli()
    except SystemExit:
        pass
    print(f"wall {time.time() - t0:.2f} s, CPU {time.process_time() - c0:.2f} s", file=sys.stderr)
    for excl, incl, name in sorted(records, reverse=True)[:25]:
        print(f"{excl:6.2f} {incl:6.2f}  {name}", file=sys.stderr)
    print(f"{sum(r[0] for r in records):.2f} s in {len(records)} compiles", file=sys.stderr)


if __name__ == "__main__":
    main()
