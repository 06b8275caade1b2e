"""A fresh machine without network (issue 15), run by .ci/run: build the wheel, check its size
and that the shipped corpus and model are inside, install it into a fresh virtual environment,
then in an empty directory, with $CHARRNN_CORPORA unset, $HOME and $CHARRNN_CACHE empty and no
connection possible outside 127.0.0.1, run what a new user types first:

    charrnn sample --length 200 --seed 1          # 200 characters of English-looking text, one note
    charrnn train shakespeare --max-steps 20 --out run
    charrnn eval run --split val --json

and README.md's main set-up command in a copy of the source tree, shortened only by its own
flags (`--max-steps`). The network is cut twice: a sitecustomize.py on PYTHONPATH makes every
socket connection outside the loopback fail, and where `unshare -n` works (root on Linux) the
commands run in a network namespace of their own.

    python tests/offline_check.py          # about two minutes on two cores, most of it compiling
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_WHEEL = 3_000_000
SHIPPED = ("charrnn/corpora/shakespeare.txt.gz", "charrnn/corpora/shakespeare.safetensors")

GUARD = Path(__file__).resolve().parent / "offline" / "sitecustomize.py"


def build_wheel(dest: Path) -> Path:
    """`pip wheel . --no-deps` into dest; the wheel's path."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(dest)],
                   check=True, stdout=subprocess.DEVNULL)
    (wheel,) = dest.glob("charrnn_numba-*.whl")
    return wheel


def check_wheel(wheel: Path) -> None:
    size = wheel.stat().st_size
    assert size <= MAX_WHEEL, f"the wheel is {size:,} bytes, over {MAX_WHEEL:,}"
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [n for n in SHIPPED if n not in names]
    assert not missing, f"the wheel lacks {missing}"
    print(f"wheel {wheel.name}: {size:,} bytes, holds {', '.join(SHIPPED)}", file=sys.stderr)


def english_looking(text: str) -> bool:
    """Mostly letters and spaces, word-sized runs of letters: what a char model of English writes,
    and what random bytes or a broken model do not."""
    letters = sum(c.isalpha() for c in text)
    spaces = text.count(" ") + text.count("\n")
    words = re.findall(r"[A-Za-z']+", text)
    mean = sum(map(len, words)) / max(len(words), 1)
    return letters >= 0.6 * len(text) and 0.08 <= spaces / len(text) <= 0.35 and 2 <= mean <= 8


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="charrnn-offline-"))
    try:
        run_checks(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("offline check passed", file=sys.stderr)


def run_checks(work: Path) -> None:
    wheel = build_wheel(work / "dist")
    check_wheel(wheel)
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([venv / "bin" / "python", "-m", "pip", "install", "-q", str(wheel)], check=True)

    guard = work / "guard"
    guard.mkdir()
    shutil.copy2(GUARD, guard / "sitecustomize.py")
    for d in ("home", "cache", "empty"):
        (work / d).mkdir()
    # The machine's own package sources (a local mirror here) stay: `pip install .` needs them
    # offline, and they hold nothing of charrnn's.
    for conf in (".config/pip/pip.conf", ".pip/pip.conf"):
        if (Path.home() / conf).is_file():
            (work / "home" / conf).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(Path.home() / conf, work / "home" / conf)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CHARRNN_", "PYTHON", "VIRTUAL_ENV", "NUMBA_CACHE"))}
    env.update(HOME=str(work / "home"), CHARRNN_CACHE=str(work / "cache"), PYTHONPATH=str(guard),
               PATH=f"{venv / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}", VIRTUAL_ENV=str(venv),
               PIP_RETRIES="0", PIP_TIMEOUT="2", no_proxy="*")
    netns = ["unshare", "-n"] if shutil.which("unshare") and subprocess.run(
        ["unshare", "-n", "true"], capture_output=True).returncode == 0 else []
    print(f"network cut by the socket guard{' and unshare -n' if netns else ''}", file=sys.stderr)

    def offline(cmd: str, cwd: Path) -> subprocess.CompletedProcess:
        print(f"$ {cmd}", file=sys.stderr, flush=True)
        return subprocess.run([*netns, "bash", "-c", cmd], cwd=cwd, env=env, capture_output=True, timeout=600)

    def ok(r: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
        assert r.returncode == 0, f"exit {r.returncode}: {r.stderr.decode(errors='replace')[-2000:]}"
        return r

    probe = offline("python -c \"import socket; socket.create_connection(('1.1.1.1', 80), 3)\"", work / "empty")
    assert probe.returncode != 0, "the network is reachable: the check would prove nothing"

    empty = work / "empty"
    r = ok(offline("charrnn sample --length 200 --seed 1", empty))
    text, notes = r.stdout.decode("utf-8"), r.stderr.decode("utf-8").splitlines()
    assert len(text.rstrip("\n")) == 200, f"{len(text)} characters: {text!r}"
    assert english_looking(text), f"not English-looking: {text!r}"
    # one note names the model; on this first run the Numba cache is cold, and the compile
    # notices (which must stay honest) come too; once it is warm, the note is all
    compiling = [n for n in notes if n.startswith(("compiling kernels", "kernels ready"))]
    assert len(notes) - len(compiling) == 1 and "shipped model" in notes[0], notes
    print(text, file=sys.stderr)
    again = ok(offline("charrnn sample --length 200 --seed 1", empty))
    assert again.stdout == r.stdout and len(again.stderr.decode().splitlines()) == 1, again.stderr

    ok(offline("charrnn train shakespeare --max-steps 20 --out run", empty))
    r = ok(offline("charrnn eval run --split val --json", empty))
    bpc = json.loads(r.stdout)["bits_per_char"]
    assert 0 < bpc < 6.1, bpc

    # README.md's main command, copied exactly, in a checkout: its own --max-steps shortens it
    src = work / "src"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for rel in filter(None, files.decode().split("\0")):
        if (ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    main_cmd = re.search(r"^    (pip install \. && charrnn train shakespeare .*)$", readme, re.M).group(1)
    short = main_cmd.replace("--minutes 10", "--minutes 10 --max-steps 20", 1)
    assert short != main_cmd, "README's main command changed: update this check"
    r = ok(offline(short, src))       # pip's report, then 500 characters from a 20-step model
    assert len(r.stdout.decode("utf-8").rstrip("\n")) >= 500


if __name__ == "__main__":
    main()
