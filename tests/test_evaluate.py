"""charrnn/evaluate.py: the one-stream score, and validation as several contiguous streams in
one batch, each piece scored as a one-stream run of its own would score it."""
import numpy as np
import pytest

from charrnn.backends.cpu import CpuBackend
from charrnn.evaluate import evaluate, summary
from charrnn.model import init_params
from charrnn.train import Trainer, TrainOptions
from tiny_models import tiny_config


def _backend(cell="lstm"):
    cfg = tiny_config(vocab_size=7, hidden=5, layers=2, cell=cell)
    p = init_params(cfg, np.random.default_rng(1), dtype=np.float64)
    p.flat[:] = np.random.default_rng(2).normal(0, 0.4, p.flat.size)
    return CpuBackend(cfg, p)


CODES = np.random.default_rng(3).integers(0, 7, 203)     # 202 predictions


def _one_stream_from(be, codes, state, seq_len):
    """The plain loop: windows of one stream from `state`; (summed loss, final state)."""
    total = 0.0
    for a in range(0, len(codes) - 1, seq_len):
        b = min(len(codes) - 1, a + seq_len)
        loss, state = be.loss(codes[a:b].reshape(-1, 1), codes[a + 1:b + 1].reshape(-1, 1), state)
        total += loss
    return total, state


def test_one_stream_is_the_plain_loop_over_the_whole_text():
    be = _backend()
    got, n = evaluate(be, CODES, seq_len=16)
    want, _ = _one_stream_from(be, CODES, be.zero_state(1), 16)
    assert n == 202 and got == want


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("streams,seq_len", [(2, 16), (5, 7), (4, 300), (7, 5)])
def test_streams_score_each_contiguous_piece_from_a_fresh_state_and_the_rest_after_the_last(cell, streams, seq_len):
    be = _backend(cell)
    got, n = evaluate(be, CODES, seq_len=seq_len, streams=streams)
    m = 202 // streams
    want, state = 0.0, None
    for s in range(streams):
        loss, state = _one_stream_from(be, CODES[s * m:(s + 1) * m + 1], be.zero_state(1), seq_len)
        want += loss
    if streams * m < 202:                      # 202 % 5 and 202 % 4: the remainder continues the last piece
        want += _one_stream_from(be, CODES[streams * m:], state, seq_len)[0]
    assert n == 202 and got == pytest.approx(want, rel=1e-12)


def test_more_streams_than_predictions_and_progress_counts_every_prediction():
    be = _backend()
    seen = []
    got, n = evaluate(be, CODES[:4], streams=16, progress=seen.append)
    assert n == 3 and sum(seen) == 3
    assert got == pytest.approx(sum(_one_stream_from(be, CODES[i:i + 2], be.zero_state(1), 1)[0] for i in range(3)))
    seen.clear()
    evaluate(be, CODES, seq_len=16, streams=5, progress=seen.append)
    assert sum(seen) == 202


def test_training_validates_with_its_streams_option(tmp_path):
    text = "the cat sat on the mat. " * 40
    opts = TrainOptions.from_dict(dict(hidden=4, layers=1, device="cpu", val_frac=0.2, val_streams=3))
    t = Trainer(opts, text, tmp_path, show_progress=False)
    assert t.validate() == summary(*evaluate(t.be, t.val_codes, streams=3))["bits_per_char"]
    t.o.val_streams = 1
    assert t.validate() == summary(*evaluate(t.be, t.val_codes))["bits_per_char"]


def test_the_perplexity_of_a_wild_model_is_infinite_not_an_overflow():
    assert summary(1e6, 10)["perplexity"] == float("inf")
    assert summary(10.0, 10)["perplexity"] == pytest.approx(np.e)


def test_evaluate_checkpoint_with_16_bit_weights_scores_within_a_hair_of_float32(tmp_path):
    """--weights bf16 / f16 (cpu_batch1.py): the same text scored with the weights rounded to
    16 bits, within 0.002 bits/char of float32 (issue 33's bound) on a small trained-like model."""
    from charrnn import checkpoint as ckpt
    from charrnn.corpus import Vocab
    from charrnn.evaluate import evaluate_checkpoint
    cfg = tiny_config(vocab_size=4, hidden=32, layers=2)
    ckpt.save(tmp_path / "m.safetensors", ckpt.Checkpoint(config=cfg, vocab=Vocab("\nabc"),
                                                          params=init_params(cfg, np.random.default_rng(0))))
    (tmp_path / "t.txt").write_text("abcab\ncba\n" * 30)
    got = {w: evaluate_checkpoint([str(tmp_path / "m.safetensors"), str(tmp_path / "t.txt")], weights=w)
           for w in ("f32", "bf16")}
    assert got["f32"]["chars"] == got["bf16"]["chars"] == 299
    assert 0 < abs(got["bf16"]["bits_per_char"] - got["f32"]["bits_per_char"]) < 0.002
