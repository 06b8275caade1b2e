"""On PYTHONPATH in .ci/run and tests/offline_check.py: no connection outside the loopback address."""
import socket

_connect = socket.socket.connect


def _loopback_only(self, address):
    host = address[0] if isinstance(address, tuple) else address
    if self.family in (socket.AF_INET, socket.AF_INET6) and host not in ("127.0.0.1", "::1", "localhost"):
        raise OSError(101, "Network is unreachable (offline check)")
    return _connect(self, address)


socket.socket.connect = _loopback_only
