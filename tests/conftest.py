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


_STOPS: list = []


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """A test marked `background(start, stop)` waits for a long subprocess that needs nothing
    from the rest of the suite (the CUDA simulator run, single-threaded): once the selection is
    known (after -m and -k, hence trylast), start it, and move the test to the end, so the
    subprocess runs on the second core beside everything else instead of after it."""
    later = [it for it in items if it.get_closest_marker("background")]
    for it in later:
        if config.option.collectonly or any(m.args and m.args[0] is True for m in it.iter_markers("skipif")):
            continue                                  # it will be skipped: start nothing
        start, stop = it.get_closest_marker("background").args
        start()
        _STOPS.append(stop)
    items[:] = [it for it in items if it not in later] + later


def pytest_sessionfinish(session):
    """An interrupted session (-x, Ctrl-C) leaves no background subprocess behind."""
    while _STOPS:
        _STOPS.pop()()
