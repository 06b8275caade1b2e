"""Several inputs as documents (charrnn/documents.py): finding files in folders, skipping what
is no text, joining with the end-of-document symbol, the split by document and its stability,
and a folder of 30 small files trained, recorded and evaluated again through the CLI."""
from __future__ import annotations

import hashlib
import json
import string

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import example, given, settings, strategies as st

from charrnn import checkpoint as ckpt
from charrnn import documents as docs
from charrnn.cli import cli
from charrnn.corpus import CorpusError, load_corpus
from charrnn.evaluate import own_codes, split_of

TINY = ["--hidden", "8", "--layers", "1", "--seq-len", "16", "--batch-size", "4", "--max-steps", "4",
        "--val-every", "4", "--dropout", "0", "--device", "cpu", "--no-diag"]


def write_folder(root, n: int = 30, seed: int = 0):
    """n small text files (some in a subfolder), each a few lines of its own letters."""
    r = np.random.default_rng(seed)
    for i in range(n):
        d = root / ("sub" if i % 3 == 0 else "")
        d.mkdir(parents=True, exist_ok=True)
        words = ["".join(r.choice(list("abcdefg"), r.integers(2, 6))) for _ in range(r.integers(8, 20))]
        (d / f"doc{i:02d}.txt").write_text(" ".join(words) + "\n", encoding="utf-8")
    return root


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


# ---------------------------------------------------------------- finding
def test_a_folder_is_read_recursively_in_sorted_order_without_hidden_names(tmp_path):
    root = tmp_path / "notes"
    for rel in ("b.txt", "a/z.txt", "a/c.md", ".hidden.txt", ".git/x.txt", "c.txt"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x")
    names = [s.name for s in docs.find([str(root)])]
    assert names == ["notes/a/c.md", "notes/a/z.txt", "notes/b.txt", "notes/c.txt"]


def test_glob_and_exclude_choose_among_a_folders_files_but_never_drop_a_named_file(tmp_path):
    root = tmp_path / "src"
    for rel in ("a.py", "b.md", "build/c.py", "pkg/d.py", "pkg/e.min.py"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x")
    got = [s.name for s in docs.find([str(root)], glob=["*.py"], exclude=["build", "*.min.py"])]
    assert got == ["src/a.py", "src/pkg/d.py"]
    named = [s.name for s in docs.find([str(root / "b.md"), str(root)], glob=["*.py"], exclude=["build"])]
    assert named[0].endswith("src/b.md") and "src/a.py" in named


def test_arguments_keep_their_order_and_a_file_met_twice_is_read_once(tmp_path):
    root = write_folder(tmp_path / "f", 3)
    one = root / "doc01.txt"
    got = docs.find([str(one), str(root)])
    assert len(got) == 3 and got[0].path == str(one.resolve())


def test_missing_paths_empty_folders_and_stdin_twice_are_one_line_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="no such file or folder"):
        docs.find([str(tmp_path / "nope")])
    with pytest.raises(CorpusError, match="holds no files"):
        docs.find([str(tmp_path / "empty")])
    with pytest.raises(CorpusError, match="only once"):
        docs.find(["-", "-"])


SEGMENT = st.text(alphabet=string.ascii_lowercase[:4], min_size=1, max_size=3)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.lists(SEGMENT, min_size=1, max_size=3), min_size=1, max_size=8, unique_by=tuple))
def test_find_returns_every_file_once_sorted_by_its_path_inside_the_folder(tmp_path_factory, trees):
    root = tmp_path_factory.mktemp("tree") / "t"
    made = set()
    for parts in trees:
        rel = "/".join(parts) + ".txt"
        if any(m.startswith(rel[:-4] + "/") or rel.startswith(m[:-4] + "/") for m in made):
            continue             # a name cannot be a folder and a file at once
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x")
        made.add(rel)
    names = [s.name for s in docs.find([str(root)])]
    assert names == sorted(f"t/{m}" for m in made)


# ---------------------------------------------------------------- reading and joining
def test_binary_undecodable_and_empty_files_are_skipped_with_one_line_or_refused_when_strict(tmp_path):
    root = write_folder(tmp_path / "d", 3)
    (root / "img.png").write_bytes(b"\x89PNG\0\0")
    (root / "latin.txt").write_bytes("café".encode("latin-1"))
    (root / "empty.txt").write_bytes(b"")
    heard = []
    corpus = docs.load(docs.find([str(root)]), log=heard.append)
    assert len(corpus.documents) == 3
    assert len(heard) == 1 and heard[0].startswith("skipped 3 file(s): ")
    assert "1 binary" in heard[0] and "1 not valid utf-8" in heard[0] and "1 empty" in heard[0]
    with pytest.raises(CorpusError, match="--strict refuses it"):
        docs.load(docs.find([str(root)]), strict=True)


def test_documents_are_each_followed_by_the_end_symbol_and_the_record_holds_size_and_sha256(tmp_path):
    root = write_folder(tmp_path / "d", 4)
    corpus = docs.load(docs.find([str(root)]))
    v = corpus.vocab
    assert v.eod and v.eod_code == len(v.chars) == v.size - 1
    ends = np.flatnonzero(corpus.codes == v.eod_code)
    assert len(ends) == 4 and ends[-1] == len(corpus.codes) - 1
    pieces = np.split(corpus.codes, ends[:-1] + 1)
    for rec, piece in zip(corpus.documents, pieces):
        raw = open(rec["path"], "rb").read()
        assert rec["bytes"] == len(raw) and rec["sha256"] == hashlib.sha256(raw).hexdigest()
        assert v.decode(piece) == raw.decode("utf-8") and rec["chars"] == len(piece) - 1


def test_a_folder_of_one_file_is_encoded_exactly_as_that_file(tmp_path, small_text):
    root = tmp_path / "one"
    root.mkdir()
    (root / "small.txt").write_bytes(small_text.read_bytes())
    got, want = docs.load(docs.find([str(root)])), load_corpus(str(small_text))
    assert got.vocab == want.vocab and not got.vocab.eod
    assert np.array_equal(got.codes, want.codes) and got.codes.dtype == want.codes.dtype
    assert got.digest == want.digest


# ---------------------------------------------------------------- splitting
NAMES = st.lists(st.text(alphabet=string.ascii_letters + "/._-", min_size=1, max_size=12), min_size=3,
                 max_size=60, unique=True)


@settings(max_examples=60, deadline=None)
@given(NAMES, st.text(alphabet=string.ascii_letters, min_size=1, max_size=12), st.integers(0, 2 ** 31))
def test_adding_a_document_moves_no_other_document(names, new, seed):
    def by_score(ns):
        return ["val" if s < 0.1 else "test" if s < 0.2 else "train" for s in (docs.score(n, seed) for n in ns)]
    if new in names:
        return
    before, after = docs.assign(names, 0.1, 0.1, seed), docs.assign(names + [new], 0.1, 0.1, seed)
    if before != by_score(names) or after != by_score(names + [new]):
        return                        # the gap-filling rule ran (an empty split took a document)
    assert after[:len(names)] == before


@settings(max_examples=60, deadline=None)
@given(NAMES, st.integers(0, 2 ** 31))
@example(["A", "J", "AAAAAAAAAAA"], 1285)    # once scored train, test, test: no validation
def test_every_split_gets_a_document_and_one_stays_for_training(names, seed):
    got = docs.assign(names, 0.05, 0.05, seed)
    assert "train" in got and "val" in got
    assert "test" in got or len(names) == 3 and got.count("val") == 2


def test_the_split_is_by_document_from_twenty_documents_on():
    assert docs.choose_split("auto", 19) == "position" and docs.choose_split("auto", 20) == "document"
    assert docs.choose_split("position", 50) == "position"
    with pytest.raises(CorpusError, match="at least 3 documents"):
        docs.choose_split("document", 2)


# ---------------------------------------------------------------- a folder through the CLI
@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("folder")
    root = write_folder(tmp / "letters", 30)
    (root / "photo.jpg").write_bytes(b"\xff\xd8\xff\0\0")
    import os
    old = os.getcwd()
    os.chdir(tmp)
    try:
        res = run("train", "letters", *TINY)
    finally:
        os.chdir(old)
    assert res.exit_code == 0, res.output
    return tmp, root, res


def test_a_folder_of_30_files_trains_into_a_run_named_after_it_split_by_document(folder_run):
    tmp, root, res = folder_run
    assert "skipped 1 file(s): 1 binary" in res.output
    assert "30 documents, split by document" in res.output
    ck = ckpt.load(tmp / "checkpoints" / "letters" / "best.safetensors")
    recs = ck.train_args["documents"]
    assert ck.train_args["split_by"] == "document" and ck.vocab.eod
    assert [r["name"] for r in recs] == sorted(r["name"] for r in recs) and len(recs) == 30
    assert {r["split"] for r in recs} == {"train", "val", "test"}
    for r in recs:
        assert r["sha256"] == hashlib.sha256(open(r["path"], "rb").read()).hexdigest()


def test_eval_split_test_scores_exactly_the_documents_training_held_out(folder_run):
    tmp, root, _ = folder_run
    ck = ckpt.load(tmp / "checkpoints" / "letters" / "best.safetensors")
    codes = own_codes(ck)[0]
    test = split_of(codes, ck.train_args, "test")
    held = [r for r in ck.train_args["documents"] if r["split"] == "test"]
    want = "".join(open(r["path"], encoding="utf-8").read() for r in held)
    assert ck.vocab.decode(test) == want and len(test) == sum(r["chars"] + 1 for r in held)
    res = run("eval", tmp / "checkpoints" / "letters", "--split", "test", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["chars"] == len(test) - 1


def test_the_split_stays_when_a_file_is_added(folder_run, tmp_path):
    tmp, root, _ = folder_run
    ck = ckpt.load(tmp / "checkpoints" / "letters" / "best.safetensors")
    before = {r["name"]: r["split"] for r in ck.train_args["documents"]}
    names = list(before) + ["letters/zz-new.txt"]
    after = dict(zip(names, docs.assign(names, ck.train_args["val_frac"], ck.train_args["test_frac"],
                                        ck.train_args["seed"])))
    assert all(after[n] == s for n, s in before.items())


def test_a_document_changed_after_training_is_refused_by_eval(folder_run, tmp_path):
    tmp, root, _ = folder_run
    ck = ckpt.load(tmp / "checkpoints" / "letters" / "best.safetensors")
    rec = dict(ck.train_args["documents"][0], sha256="0" * 64)
    ck.train_args["documents"] = [rec] + ck.train_args["documents"][1:]
    with pytest.raises(CorpusError, match="changed since training"):
        own_codes(ck)


def test_split_by_document_on_one_file_and_strict_on_a_binary_file_are_usage_errors(tmp_path, small_text):
    res = run("train", small_text, "--split-by", "document", "--out", tmp_path / "r1", *TINY)
    assert res.exit_code == 2 and "--split-by document needs several documents" in res.output
    root = write_folder(tmp_path / "d", 3)
    (root / "x.bin").write_bytes(b"\0\1")
    res = run("train", root, "--strict", "--out", tmp_path / "r2", *TINY)
    assert res.exit_code == 2 and "d/x.bin is binary" in res.output
    assert "Traceback" not in res.output


def test_a_run_of_documents_resumed_halfway_ends_with_the_same_weights(tmp_path):
    root = write_folder(tmp_path / "d", 24)
    flags = [*TINY[:TINY.index("--max-steps")], "--val-every", "3", "--dropout", "0", "--device", "cpu", "--no-diag"]
    assert run("train", root, *flags, "--max-steps", "6", "--out", tmp_path / "whole").exit_code == 0
    assert run("train", root, *flags, "--max-steps", "3", "--out", tmp_path / "half").exit_code == 0
    res = run("train", root, *flags, "--max-steps", "6", "--resume", tmp_path / "half" / "last.safetensors")
    assert res.exit_code == 0, res.output
    a, b = (ckpt.load(tmp_path / d / "last.safetensors") for d in ("whole", "half"))
    assert b.progress["step"] == 6 and np.array_equal(a.params.flat, b.params.flat)
