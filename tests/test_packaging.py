"""The wheel (pyproject.toml's package data): small, and carrying the shipped corpus and model.
.ci/run checks the same through tests/offline_check.py on every run; this is the pytest form."""
import importlib.util
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("offline_check", Path(__file__).with_name("offline_check.py"))
offline_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(offline_check)


@pytest.mark.slow
def test_wheel_is_small_and_carries_the_shipped_corpus_and_model(tmp_path):
    wheel = offline_check.build_wheel(tmp_path)
    offline_check.check_wheel(wheel)          # raises, naming the size or the missing file


def test_english_looking_tells_text_from_noise():
    english = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"
               "First Citizen:\nYou are all resolved rather to die than to famish?\n")
    assert offline_check.english_looking(english)
    assert not offline_check.english_looking("qx" * 100)                       # no spaces
    assert not offline_check.english_looking("?!;:" * 50)                      # no letters
    assert not offline_check.english_looking(" ".join("a" for _ in range(100)))  # one-letter "words"
