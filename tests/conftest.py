import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def small_text(tmp_path):
    """A small, structured text: a few thousand characters with a 20-character vocabulary."""
    words = ["the ", "cat ", "sat ", "on ", "a ", "mat.\n", "dog ", "ran ", "far, ", "so "]
    r = np.random.default_rng(0)
    text = "".join(words[i] for i in r.integers(0, len(words), 1500))
    path = tmp_path / "small.txt"
    path.write_text(text, encoding="utf-8")
    return path


def pytest_terminal_summary(terminalreporter):
    """Say which comparison the training-fixture tests ran (tests/test_train.py): bit-exact against
    this machine's own fixture, or within tolerance of the nearest."""
    said = [v for reps in terminalreporter.stats.values() for rep in reps
            for k, v in getattr(rep, "user_properties", ()) if k == "fixture_comparison"]
    for line in dict.fromkeys(said):
        terminalreporter.write_line(f"training fixture: {line}")
