"""A folder of documents against the same text concatenated (issue 30): the default model trained
for a fixed number of steps on the Python corpus's files as separate documents (end-of-document
symbols, whole documents held out) and on the same training documents joined into one file, then
both scored on the same held-out documents.

The folder: the files the `python` corpus is built from (charrnn/catalog.py: the standard
library's *.py, no tests, in sorted path order), the first of them up to --mb megabytes, copied
into WORK/stdlib. Run A trains on that folder (split by document, as the default is from 20
documents on). Run B trains on WORK/train.txt, A's training documents joined in the same order,
with nothing held out (--val-frac 0 --test-frac 0), the same seed and steps. Scores:

- A on its validation split (the held-out documents, each followed by the end symbol);
- A and B on WORK/val.txt, those documents joined plainly: the same characters for both.

A and B start from different weights even with one seed (A's vocabulary has one more symbol, so
the draws fall differently). With --control, run C separates that from the symbols' own effect:
A's training documents with the end symbols taken out, in A's vocabulary (so A's initial
weights), trained in this process by the library with B's settings, and scored on val.txt.

    nice -n 19 python bench/folder_vs_concat.py --steps 300 --work /tmp/fvc
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path


def charrnn(*args: str) -> str:
    """Run the CLI; stdout, and stderr's last line on failure."""
    r = subprocess.run([sys.executable, "-m", "charrnn", *map(str, args)], capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"charrnn {' '.join(map(str, args))} failed:\n{r.stderr[-2000:]}")
    return r.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--mb", type=float, default=3.0, help="megabytes of the python corpus's files to take")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--flags", default="", help="more `charrnn train` flags for both runs, e.g. '--hidden 64'")
    ap.add_argument("--control", action="store_true", help="also run C (see above); default model flags only")
    a = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from charrnn import catalog

    root = Path(sysconfig.get_paths()["stdlib"])
    work = a.work
    shutil.rmtree(work, ignore_errors=True)
    folder = work / "stdlib"
    total = 0
    for rel in catalog._stdlib_sources(root):
        data = (root / rel).read_bytes()
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        if total + len(data) > a.mb * 1e6:
            break
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
        total += len(data)
    common = ["--max-steps", a.steps, "--seed", a.seed, "--no-diag", "--device", "cpu", *a.flags.split()]
    t0 = time.perf_counter()
    charrnn("train", folder, "--split-by", "document", "--val-every", a.steps, "--out", work / "folder", *common)
    t_a = time.perf_counter() - t0
    from charrnn import checkpoint
    ck = checkpoint.load(work / "folder" / "last.safetensors")
    docs = ck.train_args["documents"]

    def joined(which: str) -> Path:
        path = work / f"{which}.txt"
        texts = (Path(r["path"]).read_text(encoding="utf-8").removeprefix("\ufeff") for r in docs
                 if r["split"] == which)             # as charrnn reads each document: one BOM dropped
        path.write_text("".join(texts), encoding="utf-8")
        return path

    train_txt, val_txt = joined("train"), joined("val")
    t0 = time.perf_counter()
    charrnn("train", train_txt, "--val-frac", 0, "--test-frac", 0, "--out", work / "concat", *common)
    t_b = time.perf_counter() - t0

    def score(*args) -> dict:
        return json.loads(charrnn("eval", *args, "--json", "--device", "cpu"))

    a_own = score(work / "folder" / "last.safetensors", "--split", "val")
    a_plain = score(work / "folder" / "last.safetensors", val_txt)
    b_plain = score(work / "concat" / "last.safetensors", val_txt)
    c_plain = control(work, ck, a.steps, a.seed, val_txt, score) if a.control else None
    n = {k: sum(r["split"] == k for r in docs) for k in ("train", "val", "test")}
    print(f"documents: {len(docs)} ({total / 1e6:.2f} MB): {n['train']} train, {n['val']} validation, "
          f"{n['test']} test; {a.steps} steps each, seed {a.seed}; run A {t_a:.0f} s, run B {t_b:.0f} s")
    print("| model | scored on | characters | bits/char |")
    print("|---|---|---|---|")
    print(f"| A, folder of documents | its validation split (documents + end symbols) | {a_own['chars']:,} | "
          f"{a_own['bits_per_char']:.4f} |")
    print(f"| A, folder of documents | val.txt (the same documents joined plainly) | {a_plain['chars']:,} | "
          f"{a_plain['bits_per_char']:.4f} |")
    print(f"| B, concatenated training documents | val.txt | {b_plain['chars']:,} | {b_plain['bits_per_char']:.4f} "
          f"({b_plain['skipped_chars']} characters outside its vocabulary skipped) |")
    if c_plain:
        print(f"| C, A's documents without end symbols, A's initial weights | val.txt | {c_plain['chars']:,} | "
              f"{c_plain['bits_per_char']:.4f} |")


def control(work: Path, ck, steps: int, seed: int, val_txt: Path, score) -> dict:
    """Run C: A's training codes less the end symbols, in A's vocabulary, trained as B is."""
    from charrnn import documents
    from charrnn.corpus import Corpus, codes_digest
    from charrnn.options import TrainOptions
    from charrnn.train import Trainer
    docs = ck.train_args["documents"]
    train = documents.parts(documents.reread(docs, ck.vocab), docs)["train"]
    train = train[train != ck.vocab.eod_code]
    opts = TrainOptions(seed=seed, max_steps=steps, val_frac=0.0, test_frac=0.0, split_by="position", diag=False,
                        device="cpu", out=str(work / "control"))
    (work / "control").mkdir(parents=True, exist_ok=True)
    Trainer(opts, Corpus(ck.vocab, train, codes_digest(train)), work / "control", show_progress=False).run()
    return score(work / "control" / "last.safetensors", val_txt)


if __name__ == "__main__":
    main()
