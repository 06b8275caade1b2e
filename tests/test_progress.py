"""progress.Progress: the training counters saved whole, read back typed, without training."""
import dataclasses
import json
import math

import pytest

from charrnn.progress import Progress

# the keys checkpoints have always carried: old runs must resume
SAVED_KEYS = {"step", "epoch", "cursor", "lr", "best_val", "sched_best", "bad_evals", "chars_seen", "elapsed",
              "ema", "nan_retries", "digest", "n_codes", "world_size"}


def _busy() -> Progress:
    return Progress(step=120, epoch=2, cursor=7, lr=1.5e-3, best_val=2.25, sched_best=2.5, bad_evals=1,
                    chars_seen=300000, elapsed=61.5, ema=2.31, nan_retries=1, digest="ab12", n_codes=9000,
                    world_size=2)


def test_the_saved_record_keeps_the_checkpoints_keys_and_round_trips_through_json():
    pr = _busy()
    d = json.loads(json.dumps(pr.to_dict()))
    assert set(d) == SAVED_KEYS
    assert Progress.from_dict(d) == pr


def test_no_validation_yet_is_saved_as_null_and_read_back_as_infinity():
    d = Progress().to_dict()
    assert d["best_val"] is None and d["sched_best"] is None
    back = Progress.from_dict(d)
    assert back.best_val == math.inf and back.sched_best == math.inf and back.lr is None


def test_an_older_record_takes_defaults_and_its_sched_best_follows_best_val():
    pr = Progress.from_dict({"step": 4, "best_val": 3.0, "lr": 2})
    assert (pr.step, pr.epoch, pr.sched_best, pr.world_size, pr.ema) == (4, 0, 3.0, 1, None)
    assert pr.lr == 2.0 and isinstance(pr.lr, float)


def test_keys_it_does_not_know_are_ignored():
    assert Progress.from_dict({"step": 1, "from_a_newer_writer": [1, 2]}) == Progress(step=1)


@pytest.mark.parametrize("key,value", [
    ("step", -1), ("step", 1.5), ("step", True), ("step", "3"), ("cursor", None), ("lr", 0), ("lr", -1e-3),
    ("lr", float("nan")), ("elapsed", -1.0), ("best_val", float("inf")), ("ema", "2.0"), ("digest", 5),
    ("world_size", 0), ("n_codes", [1]),
])
def test_an_ill_typed_or_out_of_range_value_is_refused(key, value):
    with pytest.raises(ValueError, match=key):
        Progress.from_dict({**_busy().to_dict(), key: value})


def test_a_snapshot_is_a_copy_the_run_does_not_move():
    pr = _busy()
    snap = dataclasses.replace(pr)
    pr.step += 1
    pr.ema = 0.0
    assert (snap.step, snap.ema) == (120, 2.31)
