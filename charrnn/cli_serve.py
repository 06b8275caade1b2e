"""``charrnn serve``: parsed here, done by charrnn.server.serve. Registered in the main CLI.
Starlette and uvicorn (the `serve` extra) load only when the command runs, not for --help.
"""
from __future__ import annotations

import click

from charrnn.cli_base import CONTEXT, device_option, say


@click.command(context_settings=CONTEXT)
@click.argument("checkpoints", nargs=-1, metavar="[CHECKPOINT|ZOO-NAME ...]")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; the default answers this machine only.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--api-key", envvar="CHARRNN_API_KEY", default=None, metavar="KEY",
              help="Require 'Authorization: Bearer KEY' (also from CHARRNN_API_KEY).")
@device_option
@click.option("--max-streams", type=click.IntRange(1, 1024), default=64, show_default=True,
              help="Sequences generated at once, all requests together; more get 429.")
@click.option("--max-tokens", type=click.IntRange(1, 1_000_000), default=4096, show_default=True,
              help="Most characters one choice may ask for.")
@click.option("--max-sessions", type=click.IntRange(0), default=1000, show_default=True,
              help="Sessions kept; the least recently used go first.")
@click.option("--session-ttl", type=click.FloatRange(1), default=3600.0, show_default=True,
              help="Seconds a session is kept unused.")
@click.option("--timeout", type=click.FloatRange(0.1), default=30.0, show_default=True,
              help="Seconds a client may take to send its request or to take one chunk of a stream.")
@click.option("--chunk-interval", type=click.FloatRange(0, 10), default=0.02, show_default=True,
              help="Seconds between two chunks of a stream at least; characters made meanwhile go "
                   "together (the last chunk goes as soon as the completion ends).")
@click.option("--grace", type=click.FloatRange(0), default=5.0, show_default=True,
              help="On SIGTERM, seconds running streams may take to finish.")
def serve(checkpoints: tuple[str, ...], host: str, port: int, api_key: str | None, device: str, max_streams: int,
          max_tokens: int, max_sessions: int, session_ttl: float, timeout: float, chunk_interval: float,
          grace: float) -> None:
    """Serve models over HTTP: OpenAI-style completions (streamed with server-sent events),
    sessions that keep the network's state, /health, /v1/models, /metrics and a page at /.

    With no CHECKPOINT: the newest best under ./checkpoints, else the shipped model, as
    `charrnn sample` chooses. Several: each served under its run or shipped name. Needs the
    `serve` extra (pip install 'charrnn-numba[serve]').

    \b
    Example:
      charrnn serve shakespeare --port 8000
      curl -N localhost:8000/v1/completions -H 'Content-Type: application/json' \\
           -d '{"prompt": "ROMEO:", "max_tokens": 300, "stream": true}'
    """
    from charrnn.server import Limits, serve as run

    run(checkpoints, host=host, port=port, api_key=api_key or None, device=device, grace=grace, log=say,
        limits=Limits(max_streams=max_streams, max_tokens=max_tokens, sessions=max_sessions,
                      session_ttl=session_ttl, io_timeout=timeout, max_n=min(16, max_streams),
                      chunk_interval=chunk_interval))
