"""`charrnn serve` (charrnn/server.py, charrnn/engine.py) as a client sees it: the real server
started as a subprocess on a free 127.0.0.1 port with the shipped model, spoken to over HTTP with
the standard library (server-sent events parsed by hand). The page's test is in
test_serve_page.py.
"""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from serve_client import MODEL, Server, events  # noqa: E402

KEY = "s3cret-key"


def streamed(server: Server, **body) -> tuple[dict[int, str], dict[int, str], bool]:
    """(text per choice, finish_reason per choice, whether the stream ended with [DONE])."""
    c, r = server.open_stream(**body)
    texts: dict[int, str] = {}
    reasons: dict[int, str] = {}
    done = False
    for ev in events(r):
        if ev == "[DONE]":
            done = True
            continue
        assert not done, "data after [DONE]"
        (ch,) = ev["choices"]
        texts[ch["index"]] = texts.get(ch["index"], "") + ch["text"]
        if ch["finish_reason"]:
            reasons[ch["index"]] = ch["finish_reason"]
    c.close()
    return texts, reasons, done


@pytest.fixture(scope="module")
def server():
    s = Server("--max-streams", "64", "--grace", "1")
    yield s
    assert s.stop() == 0


def error_of(status_data: tuple[int, bytes]) -> tuple[int, str]:
    status, data = status_data
    body = json.loads(data)            # every error is a JSON body, never a traceback
    assert set(body["error"]) >= {"message", "type", "code"}
    return status, body["error"]["code"]


# ---------------------------------------------------------------- the endpoints
def test_health_models_and_the_page_answer(server):
    status, data = server.request("GET", "/health")
    assert status == 200 and json.loads(data) == {"status": "ok", "models": [MODEL]}
    status, data = server.request("GET", "/v1/models")
    (m,) = json.loads(data)["data"]
    assert status == 200 and m["id"] == MODEL and m["session_state_bytes"] == 2 * 2 * 256 * 4
    status, data = server.request("GET", "/")
    assert status == 200 and b"/v1/completions" in data and b"<textarea" in data


def test_a_completion_writes_what_charrnn_sample_writes_with_the_same_seed(server):
    res = server.complete(model=MODEL, prompt="ROMEO:", max_tokens=200, seed=11, temperature=0.9)
    (ch,) = res["choices"]
    assert ch["finish_reason"] == "length" and len(ch["text"]) == 200
    assert res["usage"] == {"prompt_tokens": 6, "completion_tokens": 200, "total_tokens": 206}
    cli = subprocess.run([sys.executable, "-m", "charrnn", "sample", MODEL, "--prime", "ROMEO:", "-n", "200",
                          "--seed", "11", "--temp", "0.9", "--no-echo"], capture_output=True, check=True)
    assert cli.stdout.decode().rstrip("\n") == ch["text"].rstrip("\n")


def test_streamed_text_is_the_plain_text_in_chunks_ending_with_done(server):
    plain = server.complete(prompt="To be", max_tokens=150, seed=3, top_p=0.9)["choices"][0]["text"]
    texts, reasons, done = streamed(server, prompt="To be", max_tokens=150, seed=3, top_p=0.9)
    assert texts == {0: plain} and reasons == {0: "length"} and done


def test_stop_ends_the_text_before_the_stop_string(server):
    full = server.complete(prompt="KING:", max_tokens=400, seed=5)["choices"][0]["text"]
    stop = "\n\n" if "\n\n" in full else "e"
    res = server.complete(prompt="KING:", max_tokens=400, seed=5, stop=[stop, "zzzz"])["choices"][0]
    assert res["finish_reason"] == "stop" and res["text"] == full[:full.index(stop)]
    texts, reasons, _ = streamed(server, prompt="KING:", max_tokens=400, seed=5, stop=[stop, "zzzz"])
    assert texts[0] == res["text"] and reasons[0] == "stop"


def test_n_and_a_list_of_prompts_give_one_choice_each_seeded_seed_plus_index(server):
    res = server.complete(prompt=["A", "B"], n=2, max_tokens=40, seed=100)
    choices = res["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2, 3]
    for i, prompt in enumerate(["A", "A", "B", "B"]):
        alone = server.complete(prompt=prompt, max_tokens=40, seed=100 + i)["choices"][0]["text"]
        assert choices[i]["text"] == alone


def test_logprobs_give_the_chosen_characters_score_and_the_likeliest_in_order(server):
    (ch,) = server.complete(prompt="the ", max_tokens=30, seed=2, logprobs=3)["choices"]
    lp = ch["logprobs"]
    assert "".join(lp["tokens"]) == ch["text"] and len(lp["token_logprobs"]) == 30
    assert lp["text_offset"] == list(range(30))
    for tok, score, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"]):
        values = list(top.values())
        assert len(top) == 3 and values == sorted(values, reverse=True) and score <= 0
        assert sum(2.718281828459045 ** v for v in values) <= 1 + 1e-9
        if tok in top:
            assert abs(top[tok] - score) < 1e-9
        else:
            assert score <= values[-1] + 1e-9


def test_echo_puts_the_prompt_before_the_text(server):
    a = server.complete(prompt="HAMLET:", max_tokens=20, seed=9)["choices"][0]["text"]
    b = server.complete(prompt="HAMLET:", max_tokens=20, seed=9, echo=True)["choices"][0]["text"]
    assert b == "HAMLET:" + a
    texts, _, _ = streamed(server, prompt="HAMLET:", max_tokens=20, seed=9, echo=True)
    assert texts[0] == b


def test_a_session_continued_in_two_requests_writes_what_one_request_writes(server):
    whole = server.complete(prompt="ROMEO:", max_tokens=250, seed=21)["choices"][0]["text"]
    first = server.complete(prompt="ROMEO:", max_tokens=100, seed=21, session="s1")["choices"][0]["text"]
    texts, _, _ = streamed(server, max_tokens=150, session="s1")
    assert first + texts[0] == whole
    status, data = server.request("DELETE", "/v1/sessions/s1")
    assert status == 200 and json.loads(data)["deleted"] is True
    assert error_of(server.request("DELETE", "/v1/sessions/s1")) == (404, "session_not_found")
    again = server.complete(prompt="ROMEO:", max_tokens=100, seed=21, session="s1")["choices"][0]["text"]
    assert again == first                       # deleted: the id starts afresh
    server.request("DELETE", "/v1/sessions/s1")


def test_a_session_takes_a_new_prompt_after_its_text(server):
    server.complete(prompt="ROMEO:", max_tokens=50, seed=4, session="s2")
    res = server.complete(prompt="\nJULIET:", max_tokens=50, seed=4, session="s2")["choices"][0]
    assert res["finish_reason"] == "length" and len(res["text"]) == 50
    assert server.metric("charrnn_sessions") >= 1 and server.metric("charrnn_session_state_bytes") >= 4096
    server.request("DELETE", "/v1/sessions/s2")


# ---------------------------------------------------------------- bad requests and caps
@pytest.mark.parametrize("body,status,code", [
    ({"max_tokens": 10 ** 9}, 400, "invalid_request"),
    ({"max_tokens": 0}, 400, "invalid_request"),
    ({"n": 17}, 400, "invalid_request"),
    ({"prompt": ["a"] * 5, "n": 4}, 400, "invalid_request"),
    ({"prompt": "x" * 9000}, 400, "invalid_request"),
    ({"temperature": -1}, 400, "invalid_request"),
    ({"top_p": 0}, 400, "invalid_request"),
    ({"max_tokens": "10"}, 400, "invalid_request"),
    ({"stream": "yes"}, 400, "invalid_request"),
    ({"stop": "\u00e9\u00e9"}, 400, "invalid_request"),
    ({"prompt": "caf\u00e9"}, 400, "invalid_request"),
    ({"session": "../etc/passwd"}, 400, "invalid_request"),
    ({"session": "x", "n": 2}, 400, "invalid_request"),
    ({"model": "/etc/passwd"}, 404, "model_not_found"),
    ({"model": "../corpora/shakespeare.safetensors"}, 404, "model_not_found"),
])
def test_bad_fields_get_a_4xx_with_a_json_error(server, body, status, code):
    assert error_of(server.request("POST", "/v1/completions", {"prompt": "a", **body})) == (status, code)


def test_non_finite_numbers_and_bodies_that_are_not_json_objects_are_400(server):
    for raw in (b'{"temperature": NaN}', b'{"max_tokens": Infinity}', b"[1, 2]", b"{", b"\xff\xfe"):
        assert error_of(server.request("POST", "/v1/completions", raw))[0] == 400


def test_an_oversized_body_is_413(server):
    big = json.dumps({"prompt": "a" * (1 << 20)}).encode()
    assert error_of(server.request("POST", "/v1/completions", big)) == (413, "body_too_large")


def test_unknown_prompt_characters_can_be_skipped(server):
    res = server.complete(prompt="caf\u00e9", max_tokens=5, seed=1, unknown="skip", echo=True)
    assert res["choices"][0]["text"].startswith("caf")


def test_too_many_streams_is_429_and_clients_that_go_away_free_their_slots_at_once(server):
    opened = [server.open_stream(prompt="a", n=16, max_tokens=4000, seed=i) for i in range(4)]
    for c, r in opened:
        next(events(r, 1))                      # each is generating
    assert server.metric("charrnn_active_streams") == 4
    assert error_of(server.request("POST", "/v1/completions", {"prompt": "b", "max_tokens": 5})) == \
        (429, "too_many_streams")
    for c, r in opened:                         # the clients disconnect mid-stream
        r.close()
        c.close()
    deadline = time.monotonic() + 10
    while server.metric("charrnn_active_streams") or server.metric("charrnn_active_sequences"):
        assert time.monotonic() < deadline, "the slots were not freed"
        time.sleep(0.05)
    assert server.complete(prompt="b", max_tokens=5)["choices"][0]["finish_reason"] == "length"


def test_a_seeded_request_writes_the_same_text_alone_or_beside_63_others(server):
    body = dict(prompt="First Citizen:", max_tokens=400, seed=777, temperature=1.0)
    alone = server.complete(**body)["choices"][0]["text"]
    results: dict[str, str] = {}

    def crowd(i: int) -> None:
        res = server.complete(prompt=["MENENIUS:", "", "O"][i % 3], n=16 - (i == 3), max_tokens=300 + 40 * i,
                              seed=10 * i, temperature=[1.0, 0.7, 1.3, 1.0][i], top_p=[1.0, 0.95, 1.0, 0.8][i],
                              top_k=[0, 0, 20, 0][i])
        results[f"crowd{i}"] = res["choices"][0]["text"]

    threads = [threading.Thread(target=crowd, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.3)                                # joins a running batch, which changes as others end
    results["again"] = server.complete(**body)["choices"][0]["text"]
    for t in threads:
        t.join()
    assert len(results) == 5
    assert results["again"] == alone
    status, data = server.request("GET", "/metrics")
    big = [line for line in data.decode().splitlines() if line.startswith('charrnn_batch_size_bucket{le="32"}')]
    assert float(big[0].split()[1]) < server.metric("charrnn_engine_steps_total")   # batches above 32 ran


def test_metrics_are_prometheus_text(server):
    status, data = server.request("GET", "/metrics")
    text = data.decode()
    for name, kind in (("requests_total", "counter"), ("characters_generated_total", "counter"),
                       ("active_streams", "gauge"), ("batch_size", "histogram"),
                       ("request_duration_seconds", "histogram")):
        assert f"# TYPE charrnn_{name} {kind}" in text
    assert server.metric("charrnn_characters_generated_total") > 0
    assert 'charrnn_batch_size_bucket{le="+Inf"}' in text


# ---------------------------------------------------------------- several models; the command line
def test_several_checkpoints_are_served_each_under_its_run_or_shipped_name(tmp_path):
    from charrnn import zoo
    run = tmp_path / "myrun"
    run.mkdir()
    (run / "best.safetensors").write_bytes(zoo.path_of(MODEL).read_bytes())
    s = Server(models=(MODEL, str(run / "best.safetensors")))
    try:
        status, data = s.request("GET", "/v1/models")
        assert sorted(m["id"] for m in json.loads(data)["data"]) == ["myrun", MODEL]
        a = s.complete(model="myrun", prompt="Hi", max_tokens=30, seed=3)
        b = s.complete(model=MODEL, prompt="Hi", max_tokens=30, seed=3)
        assert a["model"] == "myrun" and a["choices"][0]["text"] == b["choices"][0]["text"]   # the same weights
    finally:
        assert s.stop() == 0


def test_bad_checkpoints_and_a_missing_extra_are_one_line_errors(monkeypatch):
    from click.testing import CliRunner

    from charrnn.cli import cli
    r = CliRunner().invoke(cli, ["serve", "no-such-model"])
    assert r.exit_code == 2 and r.output.startswith("charrnn: error: no such checkpoint")
    r = CliRunner().invoke(cli, ["serve", MODEL, MODEL])
    assert r.exit_code == 2 and "both be served as 'shakespeare'" in r.output
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        r = CliRunner().invoke(cli, ["serve", MODEL, "--port", str(taken.getsockname()[1])])
    assert r.exit_code == 2 and r.output.startswith("charrnn: error: cannot listen on 127.0.0.1:")
    monkeypatch.setitem(sys.modules, "uvicorn", None)        # as without the serve extra
    r = CliRunner().invoke(cli, ["serve"])
    assert r.exit_code == 2 and "pip install 'charrnn-numba[serve]'" in r.output


# ---------------------------------------------------------------- key, slow clients, SIGTERM
@pytest.fixture
def keyed():
    s = Server("--api-key", KEY, "--timeout", "1", "--grace", "8", key=KEY)
    yield s
    s.stop()


def test_the_api_key_is_required_and_checked(keyed):
    assert keyed.complete(prompt="a", max_tokens=3)["choices"]
    for auth in ({"Authorization": ""}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        assert error_of(keyed.request("POST", "/v1/completions", {"prompt": "a"}, auth)) == (401, "invalid_api_key")
        assert keyed.request("GET", "/v1/models", None, auth)[0] == 401
    assert keyed.request("GET", "/health", None, {"Authorization": ""})[0] == 200


def test_a_client_that_never_sends_its_body_times_out(keyed):
    with socket.create_connection(("127.0.0.1", keyed.port), timeout=20) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Authorization: Bearer " + KEY.encode() + b"\r\nContent-Length: 100\r\n\r\n{")
        t0 = time.monotonic()
        reply = s.recv(4096)
    assert reply.startswith(b"HTTP/1.1 408") and time.monotonic() - t0 < 15


def test_sigterm_lets_a_running_stream_finish_then_exits_0(keyed):
    c, r = keyed.open_stream(prompt="ROMEO:", max_tokens=600, seed=1)
    it = events(r)
    first = next(it)
    keyed.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    with pytest.raises(OSError):                 # no longer taking connections
        socket.create_connection(("127.0.0.1", keyed.port), timeout=2).close()
    rest = list(it)
    text = first["choices"][0]["text"] + "".join(e["choices"][0]["text"] for e in rest if e != "[DONE]")
    assert rest[-1] == "[DONE]" and len(text) == 600
    assert keyed.proc.wait(30) == 0


def test_the_chunk_pacing_coalesces_a_stream_but_never_holds_back_its_end():
    """Chunks of a stream go out at most every --chunk-interval, yet the last one leaves as soon
    as the completion ends: with 10 s pacing a 300-character completion takes two text chunks,
    not 10 s."""
    s = Server("--chunk-interval", "10")
    try:
        t0 = time.monotonic()
        c, r = s.open_stream(prompt="ROMEO:", max_tokens=300, seed=3)
        evs = list(events(r))
        c.close()
        took = time.monotonic() - t0
    finally:
        assert s.stop() == 0
    texts = [e["choices"][0]["text"] for e in evs if e != "[DONE]" and e["choices"][0]["text"]]
    assert evs[-1] == "[DONE]" and evs[-2]["choices"][0]["finish_reason"] == "length"
    assert len("".join(texts)) == 300 and len(texts) <= 2 and took < 8


def test_health_is_503_until_the_kernels_are_ready_and_completions_wait_for_it():
    """In process, over ASGI (the window before readiness is too short to catch over HTTP)."""
    import asyncio

    from charrnn.engine import Metrics, Sessions
    from charrnn.server import Hub, Limits, build_app

    hub = Hub({}, Limits(), Sessions(), Metrics())
    app = build_app(hub)

    async def call(method: str, path: str, body: bytes = b"") -> tuple[int, dict]:
        sent, got = [], []

        async def receive():
            if not sent:
                sent.append(True)
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.sleep(3600)

        async def send(msg):
            got.append(msg)
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
                 "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
                 "root_path": "", "headers": [(b"content-type", b"application/json")],
                 "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2)}
        await app(scope, receive, send)
        return got[0]["status"], json.loads(b"".join(m.get("body", b"") for m in got[1:]))

    assert asyncio.run(call("GET", "/health")) == (503, {"status": "loading"})
    status, body = asyncio.run(call("POST", "/v1/completions", b'{"prompt": "a"}'))
    assert status == 503 and body["error"]["code"] == "not_ready"
    hub.ready.set()
    assert asyncio.run(call("GET", "/health")) == (200, {"status": "ok", "models": []})


def test_the_mailbox_delivers_each_queue_its_events_in_order_waking_the_loop_rarely():
    """An engine posting every step must not write to the loop's wake-up socket every time (one
    write per stream per step cost the engine's thread a fifth of its time at 32 streams)."""
    import asyncio

    from charrnn.server import Mailbox

    async def main() -> tuple[list[list[int]], int]:
        loop = asyncio.get_running_loop()
        wakes = []

        class Counting:                          # the loop, counting the engine thread's wake-ups
            def call_soon_threadsafe(self, f):
                wakes.append(1)
                loop.call_soon_threadsafe(f)

            def call_later(self, t, f):
                return loop.call_later(t, f)

        box = Mailbox(Counting(), tick=0.005)
        queues = [asyncio.Queue() for _ in range(3)]
        engine = threading.Thread(target=lambda: [box.post(queues[i % 3], [i]) for i in range(600)])
        engine.start()
        got: list[list[int]] = [[] for _ in queues]
        while sum(map(len, got)) < 600:
            for q, g in zip(queues, got):
                while not q.empty():
                    g.extend(q.get_nowait())
            await asyncio.sleep(0.001)
        engine.join()
        return got, len(wakes)

    got, wakes = asyncio.run(main())
    assert got == [list(range(j, 600, 3)) for j in range(3)]
    assert 1 <= wakes < 50


def test_a_stream_whose_client_stops_reading_ends_after_the_write_timeout():
    """A write that does not complete within the timeout (the client stopped reading) ends the
    stream and frees its slot; writes that complete are not cut short however long the stream."""
    import asyncio

    from charrnn.server import EventStream

    async def main(stall_after: int) -> tuple[int, bool, float]:
        closed = []
        sent = []

        async def chunks():
            for i in range(10):
                await asyncio.sleep(0.03)          # 0.3 s in all: longer than the timeout
                yield b"data: %d\n\n" % i

        async def receive():
            await asyncio.sleep(3600)

        async def send(msg):
            sent.append(msg)
            if len(sent) > stall_after:
                await asyncio.sleep(3600)          # a client that stopped reading

        t0 = time.perf_counter()
        await EventStream(chunks(), lambda: closed.append(True), timeout=0.1)(None, receive, send)
        return len(sent), bool(closed), time.perf_counter() - t0

    n, closed, took = asyncio.run(main(stall_after=3))
    assert n == 4 and closed and took < 2.0
    n, closed, took = asyncio.run(main(stall_after=100))
    assert n == 12 and closed                     # start, ten chunks, the end
