"""charrnn/errors.py: one family of user errors, importable from the modules that raise them."""
import pytest
from click.testing import CliRunner

from charrnn import errors


def test_every_user_error_keeps_its_old_home_and_exits_with_2():
    from charrnn.backends import DeviceError
    from charrnn.checkpoint import CheckpointError
    from charrnn.corpus import CorpusError
    from charrnn.report import ReportError
    from charrnn.sample import SampleError
    from charrnn.viz import VizError
    homes = [DeviceError, CheckpointError, CorpusError, ReportError, SampleError, VizError]
    assert homes == [errors.DeviceError, errors.CheckpointError, errors.CorpusError, errors.ReportError,
                     errors.SampleError, errors.VizError]
    assert all(issubclass(e, errors.UserError) and e.exit_code == 2 for e in homes)
    assert issubclass(errors.SampleError, ValueError)     # callers that catch ValueError still do


@pytest.mark.parametrize("args", [["report", "no/such/run"], ["corpus", "path", "no-such-corpus"]])
def test_a_user_error_from_any_command_is_one_line_and_exit_2(args, tmp_path, monkeypatch):
    from charrnn.cli import cli
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 2, r.output
    assert r.output.startswith("charrnn: error: ") and r.output.count("\n") == 1, r.output
