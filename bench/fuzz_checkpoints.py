"""The checkpoint fuzz tests with many more examples than CI runs (150 per test there).

    flock /tmp/charrnn-cpu.lock python bench/fuzz_checkpoints.py --examples 5000
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=5000, help="per property test (there are four)")
    a = ap.parse_args()
    env = {**os.environ, "CHARRNN_FUZZ_EXAMPLES": str(a.examples)}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(ROOT / "tests" / "test_checkpoint_fuzz.py")], env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
