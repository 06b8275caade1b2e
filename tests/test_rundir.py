"""The run directory belongs to one run (charrnn/rundir.py): a second run never replaces the first,
a default name moves on to a fresh one, --overwrite moves the old run aside, a live run's lock
refuses a second one at once and a dead one's is taken over, and --name/--out are checked."""
import errno
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from charrnn import rundir
from charrnn.errors import CorpusError
from tiny_models import run_main

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "NUMBA_NUM_THREADS": "2"}
TINY = ["--hidden", "8", "--layers", "1", "--seq-len", "8", "--batch-size", "4", "--dropout", "0",
        "--max-steps", "3", "--device", "cpu", "--no-diag"]
# a process that claims a directory and holds it until its stdin closes (or it is killed)
HOLD = ("import sys; from charrnn import rundir; c = rundir.claim(sys.argv[1]); "
        "print('locked', flush=True); sys.stdin.read(); c.release()")


def one_line_error(code: int, err: str) -> None:
    assert code == 2, err
    assert err.startswith("charrnn: error: ") and err.strip().count("\n") == 0, err


@pytest.fixture
def notes(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    words = ["the ", "cat ", "sat ", "on ", "a ", "mat.\n", "dog ", "ran "]
    (tmp_path / "notes.txt").write_text("".join(words[(i * 7) % 8] for i in range(400)))
    return tmp_path


def tree(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def hold(path: Path) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         env=ENV)
    assert p.stdout.readline() == b"locked\n"
    return p


# ---------------------------------------------------------------- a second run keeps the first
def test_the_main_command_run_twice_keeps_both_runs_best_byte_for_byte(notes, monkeypatch, capsys):
    code, _, err = run_main(["train", "notes.txt", *TINY], monkeypatch, capsys)
    assert code == 0, err
    first = tree(notes / "checkpoints" / "notes")
    code, _, err = run_main(["train", "notes.txt", *TINY, "--hidden", "6"], monkeypatch, capsys)
    assert code == 0, err
    assert "checkpoints/notes holds a run (best " in err and "this run goes to checkpoints/notes-2/" in err
    assert tree(notes / "checkpoints" / "notes") == first          # every file of the first run, untouched
    second = notes / "checkpoints" / "notes-2"
    assert (second / "best.safetensors").read_bytes() != first["best.safetensors"]
    assert sum('"stop"' in line for line in (second / "metrics.jsonl").read_text().splitlines()) == 1
    assert not (second / rundir.LOCK_NAME).exists() and not (notes / "checkpoints/notes" / rundir.LOCK_NAME).exists()
    code, _, err = run_main(["train", "notes.txt", *TINY], monkeypatch, capsys)
    assert code == 0 and "goes to checkpoints/notes-3/" in err


def test_a_named_directory_holding_a_run_is_refused_with_what_it_holds(notes, monkeypatch, capsys):
    assert run_main(["train", "notes.txt", *TINY, "--out", "runs/keep"], monkeypatch, capsys)[0] == 0
    before = tree(notes / "runs")
    best = json.loads(__import__("charrnn.checkpoint", fromlist=["x"]).read_metadata(
        notes / "runs/keep/best.safetensors")["metrics"])["val_bpc"]
    for extra in (["--out", "runs/keep"], ["--out", "runs/keep/"], ["--hidden", "6", "--out", "runs/keep"]):
        code, out, err = run_main(["train", "notes.txt", *TINY, *extra], monkeypatch, capsys)
        one_line_error(code, err)
        assert f"runs/keep holds a run (best {best:.2f} bits/char, step 3); --resume it, pick --out/--name, " \
               f"or --overwrite" in err
    assert run_main(["train", "notes.txt", *TINY, "--name", "n"], monkeypatch, capsys)[0] == 0
    code, _, err = run_main(["train", "notes.txt", *TINY, "--name", "n"], monkeypatch, capsys)
    one_line_error(code, err)
    assert tree(notes / "runs") == before


def test_overwrite_moves_the_old_run_aside_and_never_deletes_it(notes, monkeypatch, capsys):
    assert run_main(["train", "notes.txt", *TINY, "--out", "r"], monkeypatch, capsys)[0] == 0
    old = tree(notes / "r")
    code, _, err = run_main(["train", "notes.txt", *TINY, "--out", "r", "--overwrite", "--seed", "9"],
                            monkeypatch, capsys)
    assert code == 0, err
    assert "moved the run in r" in err and "aside to r.old-1" in err
    assert tree(notes / "r.old-1") == old                          # the old run whole, byte for byte
    assert (notes / "r" / "best.safetensors").read_bytes() != old["best.safetensors"]
    assert run_main(["train", "notes.txt", *TINY, "--out", "r", "--overwrite"], monkeypatch, capsys)[0] == 0
    assert tree(notes / "r.old-1") == old and (notes / "r.old-2" / "best.safetensors").is_file()


def test_a_resumed_run_continues_in_its_own_directory_but_not_in_another_runs(notes, monkeypatch, capsys):
    for out in ("a", "b"):
        assert run_main(["train", "notes.txt", *TINY, "--out", out], monkeypatch, capsys)[0] == 0
    code, _, err = run_main(["train", "notes.txt", "--resume", "a", "--max-steps", "5"], monkeypatch, capsys)
    assert code == 0, err
    b = tree(notes / "b")
    code, _, err = run_main(["train", "notes.txt", "--resume", "a", "--max-steps", "7", "--out", "b"],
                            monkeypatch, capsys)
    one_line_error(code, err)
    assert "b holds a run" in err and tree(notes / "b") == b
    code, _, err = run_main(["train", "notes.txt", "--resume", "a", "--overwrite"], monkeypatch, capsys)
    one_line_error(code, err)
    assert "--overwrite" in err and "--resume" in err


# ---------------------------------------------------------------- the lock
def test_a_second_run_on_a_live_runs_directory_is_refused_at_once(notes, monkeypatch, capsys):
    (notes / "run").mkdir()
    p = hold(notes / "run")
    try:
        code, out, err = run_main(["train", "notes.txt", *TINY, "--out", "run"], monkeypatch, capsys)
        one_line_error(code, err)
        assert f"run is in use by a live run (pid {p.pid} on {socket.gethostname()}, since " in err
        assert p.poll() is None and os.listdir(notes / "run") == [rundir.LOCK_NAME]
        # a default name passes over the live run's directory too
        (notes / "checkpoints").mkdir()
        q = hold(notes / "checkpoints" / "notes")
        code, _, err = run_main(["train", "notes.txt", *TINY], monkeypatch, capsys)
        assert code == 0 and "checkpoints/notes is in use by a live run" in err and "notes-2/" in err
        q.stdin.close()
        q.wait(timeout=60)
    finally:
        p.stdin.close()
        p.wait(timeout=60)
    assert not (notes / "run" / rundir.LOCK_NAME).exists()       # released on a clean end


def test_the_lock_of_a_killed_run_is_taken_over(notes, monkeypatch, capsys):
    (notes / "run").mkdir()
    p = hold(notes / "run")
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=60)
    assert (notes / "run" / rundir.LOCK_NAME).exists()
    code, _, err = run_main(["train", "notes.txt", *TINY, "--out", "run"], monkeypatch, capsys)
    assert code == 0, err
    assert f"took over the lock of run from a run that is gone (pid {p.pid} on" in err
    assert (notes / "run" / "best.safetensors").is_file() and not (notes / "run" / rundir.LOCK_NAME).exists()


def test_two_real_runs_on_one_directory_the_second_exits_2_and_the_first_finishes_untouched(notes):
    flags = [*TINY[:-5], "--device", "cpu", "--minutes", "0.1", "--max-steps", "1000000", "--val-every", "20"]
    first = subprocess.Popen([sys.executable, "-m", "charrnn", "train", "notes.txt", *flags, "--out", "run"],
                             cwd=notes, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lock = notes / "run" / rundir.LOCK_NAME
    while first.poll() is None and not (lock.exists() and f'"pid": {first.pid}' in lock.read_text()):
        pass
    second = subprocess.run([sys.executable, "-m", "charrnn", "train", "notes.txt", *flags, "--out", "run"],
                            cwd=notes, env=ENV, capture_output=True, timeout=120)
    assert first.poll() is None                     # the second did not wait for the first to end
    one_line_error(second.returncode, second.stderr.decode())
    assert f"pid {first.pid}" in second.stderr.decode()
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err.decode()
    lines = [json.loads(line) for line in (notes / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("event") for r in lines].count("stop") == 1 and lines[-1]["reason"].startswith("time budget")
    from charrnn import checkpoint as ckpt
    assert ckpt.load(notes / "run" / "best.safetensors").progress["step"] > 0
    assert not lock.exists()


def test_without_flock_the_pid_in_the_lock_file_decides(tmp_path, monkeypatch):
    import fcntl

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "no locks available")
    monkeypatch.setattr(fcntl, "flock", no_flock)
    lock = rundir.acquire(tmp_path)
    with pytest.raises(rundir.RunDirError, match=f"in use by a live run \\(pid {os.getpid()} "):
        rundir.acquire(tmp_path)
    lock.release()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / rundir.LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    lock = rundir.acquire(tmp_path)
    assert lock.previous.startswith(f"pid {dead.pid} on ")
    lock.release()
    (tmp_path / rundir.LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": "another-host"}))
    with pytest.raises(rundir.RunDirError, match="another-host"):      # cannot tell: refused
        rundir.acquire(tmp_path)


# ---------------------------------------------------------------- names
@pytest.mark.parametrize("args,why", [
    (["--name", "../../somewhere"], "would leave ./checkpoints"), (["--name", "/tmp/x"], "would leave ./checkpoints"),
    (["--name", "a/../../b"], "would leave ./checkpoints"), (["--name", "."], "would leave ./checkpoints"),
    (["--name", ""], "--name: an empty name"), (["--name", "  "], "--name: an empty name"),
    (["--out", ""], "--out: an empty name"), (["--name", "a\0b"], "NUL"),
    (["--name", "a", "--out", "b"], "give --out DIR or --name NAME, not both"),
])
def test_bad_names_are_one_line_and_write_nothing(notes, monkeypatch, capsys, args, why):
    before = set(os.listdir(notes)), set(os.listdir(notes.parent))
    code, out, err = run_main(["train", "notes.txt", *TINY, *args], monkeypatch, capsys)
    one_line_error(code, err)
    assert why in err
    assert (set(os.listdir(notes)), set(os.listdir(notes.parent))) == before


def test_a_plain_nested_name_stays_under_checkpoints():
    assert rundir.name_dir("exp/a") == str(Path("checkpoints", "exp", "a"))
    assert rundir.choose("notes.txt", out=None, name=None, resume_dir=None) == ("checkpoints/notes", True)
    assert rundir.choose("x.txt", out="o", name=None, resume_dir=Path("r")) == ("o", False)
    assert rundir.choose("x.txt", out=None, name=None, resume_dir=Path("r")) == ("r", False)


def test_what_a_directory_holds_is_summed_up_from_its_files(tmp_path):
    assert rundir.run_summary(tmp_path) is None
    (tmp_path / "metrics.jsonl").write_text('{"step": 4}\n{"step": 7, "event": "stop"}\nnot json\n')
    assert rundir.run_summary(tmp_path) == "step 7, no checkpoint"
    (tmp_path / "last.safetensors").write_bytes(b"garbage")          # unreadable: still a run, never replaced
    assert rundir.run_summary(tmp_path) == "step 7"


# ---------------------------------------------------------------- hygiene (from tests/test_reliability.py)
def test_stale_temp_files_of_killed_runs_are_swept_but_live_ones_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    pid = int(dead.stdout)
    for name in (f".last.safetensors.tmp-{pid}", f".write-probe-{pid}", f".codes-{pid}.bin",
                 f".best.safetensors.tmp-{os.getpid()}"):
        (tmp_path / name).write_bytes(b"x")
    rundir.prepare_out_dir(tmp_path)
    assert sorted(f.name for f in tmp_path.iterdir()) == [f".best.safetensors.tmp-{os.getpid()}"]


def test_an_unwritable_run_directory_fails_at_start_up(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(CorpusError, match="cannot write checkpoints"):
        rundir.prepare_out_dir(tmp_path / "file" / "run")
    with pytest.raises(CorpusError, match="cannot write checkpoints"):
        rundir.prepare_out_dir("/proc/charrnn-run")
