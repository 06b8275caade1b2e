"""charrnn/corpus.py: reading text (BOM, line ends, encodings), the vocabulary and its codes, the
positional split, and the chunked encoding of large files."""
import numpy as np
import pytest

from charrnn.corpus import CorpusError, Vocab, load_corpus, read_input, split


def words(n: int, seed: int = 0) -> str:
    w = ["the ", "cat ", "sat ", "on ", "a ", "mat.\n", "dog ", "ran ", "far, ", "so "]
    r = np.random.default_rng(seed)
    return "".join(w[i] for i in r.integers(0, len(w), n))


def test_bom_is_stripped_and_crlf_kept(tmp_path):
    f = tmp_path / "t.txt"
    f.write_bytes("\ufeffab\r\ncd".encode("utf-8"))
    assert read_input(str(f)) == "ab\r\ncd"


def test_vocab_is_sorted_distinct_chars_and_codes_are_compact():
    v = Vocab.from_text("banana!")
    assert v.chars == "!abn"
    codes = v.encode("banana")
    assert codes.dtype == np.uint8 and v.decode(codes) == "banana"
    wide = Vocab.from_text("".join(chr(0x4E00 + i) for i in range(300)))
    assert wide.encode(wide.chars).dtype == np.uint16


def test_unknown_characters_are_named():
    with pytest.raises(CorpusError, match="'z'"):
        Vocab.from_text("abc").encode("abz")


def test_split_is_positional_90_5_5():
    tr, va, te = split(np.arange(1000), 0.05, 0.05)
    assert (len(tr), len(va), len(te)) == (900, 50, 50)
    assert tr[-1] + 1 == va[0] and va[-1] + 1 == te[0]


def test_chunked_encoding_matches_the_whole_text_and_leaves_no_file(tmp_path, monkeypatch):
    import charrnn.corpus as corpus
    text = "\ufeff" + "héllo wörld – ☃\r\n" * 500 + words(2000)
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    monkeypatch.setattr(corpus, "CHUNK", 97)                  # pieces split multi-byte characters
    c = load_corpus(str(tmp_path / "t.txt"), spill_dir=tmp_path, spill_over=100)
    whole = corpus.Vocab.from_text(text[1:])
    assert isinstance(c.codes, np.memmap) and c.vocab == whole
    assert np.array_equal(c.codes, whole.encode(text[1:])) and c.digest == corpus.codes_digest(c.codes)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["t.txt"]
    (tmp_path / "bad.txt").write_bytes(b"abc" * 100 + b"\xe9t\xe9")
    with pytest.raises(CorpusError, match=r"bad byte 0xe9 at offset 300; use --bytes .* --encoding"):
        load_corpus(str(tmp_path / "bad.txt"))


def test_the_end_of_document_symbol_is_the_last_code_round_trips_and_decodes_to_nothing():
    v = Vocab(chars="ab", eod=True)
    assert v.size == 3 and v.eod_code == 2
    assert Vocab.from_meta(v.to_meta()) == v
    assert "eod" not in Vocab(chars="ab").to_meta()          # a model of one text: metadata as before
    assert v.decode([0, 2, 1, 2]) == "ab"
    assert Vocab(byte_mode=True, eod=True).size == 257 and Vocab(byte_mode=True, eod=True).dtype == np.uint16
    with pytest.raises(ValueError):
        Vocab.from_meta({"chars": "ab", "byte_mode": False, "eod": "yes"})
