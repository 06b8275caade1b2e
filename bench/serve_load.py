"""Load on `charrnn serve`: C concurrent streaming clients, each asking 500 characters, for C in
1, 8, 32, 64 (bench/RESULTS.md, "charrnn serve under load").

Starts the server itself (the shipped model unless --model says otherwise) on a free 127.0.0.1
port; the clients are one asyncio process speaking HTTP on raw sockets, so they cost little
beside the server. Bounded: each client makes --rounds requests one after another (at least 16
requests a level, so one client's level is not over in a fraction of a second), each level
stops after --max-seconds, and the soak (--soak SECONDS, 64 clients requesting in a loop) after
its time. Reports per level: aggregate characters/s (all characters over the level's wall time),
per-request time to the first character (p50, p99), and inter-character time (p50, p99: a chunk
of k characters arriving t after the last gives each of its characters t/k), and the batch-size
histogram /metrics gained during the level, and the CPU time the server process used per 1000
characters (user + system, from /proc): on a shared machine the wall-clock rates move with the
other tenants' load, the CPU time a character costs much less; and the cores each server
thread kept busy, the load generator's own, and the engine's steps/s (where a step cycle goes).
The soak reports the server's RSS every 10 s. --chunk-interval passes the server's own (the
pacing bounds one client's rate: bench/RESULTS.md).

    python bench/serve_load.py                       # the four levels (~1-2 min on 2 cores)
    python bench/serve_load.py --soak 300            # and 5 minutes at 64 clients
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def stream_once(port: int, body: dict) -> dict:
    """One streamed completion: (time to first character, per-character gaps, characters)."""
    data = json.dumps({**body, "stream": True}).encode()
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Connection: close\r\nContent-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
    await writer.drain()
    status = await reader.readline()
    if b" 200 " not in status:
        rest = await reader.read()
        writer.close()
        raise RuntimeError(f"{status!r} {rest[-300:]!r}")
    while (await reader.readline()) not in (b"\r\n", b""):
        pass
    first, last, gaps, chars = None, None, [], 0
    while True:                               # chunked encoding: size line, data, CRLF
        size = int((await reader.readline()).strip() or b"0", 16)
        if size == 0:
            break
        payload = await reader.readexactly(size + 2)
        now = time.perf_counter()
        for line in payload.split(b"\n"):
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            k = len(json.loads(line[6:])["choices"][0]["text"])
            if not k:
                continue
            if first is None:
                first = now - t0
            elif last is not None:
                gaps.extend([(now - last) / k] * k)
            last = now
            chars += k
    writer.close()
    return {"ttfc": first, "gaps": gaps, "chars": chars}


def metrics(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
    return {k: float(v) for k, v in (line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))}


def stat_cpu_s(path: str) -> float:
    """User + system CPU seconds from a Linux /proc stat file (a process's or one thread's)."""
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds process `pid` has used (Linux /proc)."""
    return stat_cpu_s(f"/proc/{pid}/stat")


def thread_cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds by thread of process `pid`: where the server's CPU goes. The main thread
    (the event loop) is "main", the others "t" and their thread id (Python does not give the
    kernel its thread names; the engine and the step's second lane are the busy ones)."""
    out: dict[str, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            used = stat_cpu_s(f"/proc/{pid}/task/{tid}/stat")
        except OSError:                # the thread ended
            continue
        name = "main" if int(tid) == pid else f"t{tid}"
        out[name] = out.get(name, 0.0) + used
    return out


async def level(port: int, pid: int, clients: int, rounds: int, chars: int, max_seconds: float) -> dict:
    deadline = time.perf_counter() + max_seconds
    results: list[dict] = []

    async def client(i: int) -> None:
        for r in range(rounds):
            if time.perf_counter() > deadline:
                return
            results.append(await stream_once(port, {"prompt": "\n", "max_tokens": chars, "seed": 1000 * i + r,
                                                    "temperature": 0.8}))

    before = metrics(port)
    t0, cpu0, threads0, own0 = time.perf_counter(), cpu_s(pid), thread_cpu_s(pid), time.process_time()
    await asyncio.gather(*(client(i) for i in range(clients)))
    wall, cpu = time.perf_counter() - t0, cpu_s(pid) - cpu0
    own = time.process_time() - own0
    threads = {k: v - threads0.get(k, 0.0) for k, v in thread_cpu_s(pid).items()}
    after = metrics(port)
    ttfc = np.array([r["ttfc"] for r in results])
    gaps = np.concatenate([r["gaps"] for r in results])
    hist = {k.split('le="')[1].rstrip('"}'): after[k] - before.get(k, 0)
            for k in after if k.startswith("charrnn_batch_size_bucket")}
    return {"clients": clients, "requests": len(results), "chars": int(sum(r["chars"] for r in results)),
            "wall_s": wall, "chars_per_s": sum(r["chars"] for r in results) / wall,
            "server_cpu_ms_per_1000_chars": 1e6 * cpu / max(1, sum(r["chars"] for r in results)),
            "ttfc_p50_ms": 1e3 * float(np.percentile(ttfc, 50)), "ttfc_p99_ms": 1e3 * float(np.percentile(ttfc, 99)),
            "gap_p50_ms": 1e3 * float(np.percentile(gaps, 50)), "gap_p99_ms": 1e3 * float(np.percentile(gaps, 99)),
            "batch_size_histogram": hist, "steps": after.get("charrnn_engine_steps_total", 0)
            - before.get("charrnn_engine_steps_total", 0),
            "server_cores": cpu / wall, "client_cores": own / wall,
            "server_thread_cores": {k: round(v / wall, 3) for k, v in threads.items() if v > 0}}


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def soak(port: int, pid: int, seconds: float, chars: int) -> list[tuple[float, float]]:
    end = time.perf_counter() + seconds
    samples: list[tuple[float, float]] = []

    async def client(i: int) -> None:
        r = 0
        while time.perf_counter() < end:
            await stream_once(port, {"prompt": "\n", "max_tokens": chars, "seed": 1000 * i + r})
            r += 1

    async def watch() -> None:
        t0 = time.perf_counter()
        while time.perf_counter() < end:
            samples.append((time.perf_counter() - t0, rss_mib(pid)))
            await asyncio.sleep(10)
        samples.append((time.perf_counter() - t0, rss_mib(pid)))

    await asyncio.gather(watch(), *(client(i) for i in range(64)))
    return samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="shakespeare")
    ap.add_argument("--levels", default="1,8,32,64")
    ap.add_argument("--chars", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=2, help="requests per client per level")
    ap.add_argument("--max-seconds", type=float, default=120.0)
    ap.add_argument("--soak", type=float, default=0.0, help="seconds at 64 clients, watching RSS (0: none)")
    ap.add_argument("--chunk-interval", type=float, default=0.02, help="the server's --chunk-interval")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "charrnn", "serve", args.model, "--port", str(port),
                               "--max-streams", "64", "--chunk-interval", str(args.chunk_interval)],
                              stdout=subprocess.DEVNULL)
    try:
        for _ in range(600):
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        out = {"levels": [], "load_before": os.getloadavg()}
        for c in map(int, args.levels.split(",")):
            res = asyncio.run(level(port, server.pid, c, max(args.rounds, -(-16 // c)), args.chars, args.max_seconds))
            out["levels"].append(res)
            print(f"{c:3d} clients: {res['chars_per_s']:8.0f} chars/s  first char p50 {res['ttfc_p50_ms']:7.1f} "
                  f"p99 {res['ttfc_p99_ms']:7.1f} ms  between chars p50 {res['gap_p50_ms']:6.2f} "
                  f"p99 {res['gap_p99_ms']:6.2f} ms  server CPU {res['server_cpu_ms_per_1000_chars']:5.0f} ms "
                  f"per 1000 chars  ({res['requests']} requests, {res['wall_s']:.1f} s)\n"
                  f"             cores busy: server {res['server_cores']:.2f} "
                  f"({', '.join(f'{k} {v:.2f}' for k, v in sorted(res['server_thread_cores'].items(), key=lambda kv: -kv[1]))}), "
                  f"load generator {res['client_cores']:.2f}; {res['steps'] / res['wall_s']:.0f} steps/s",
                  file=sys.stderr)
        if args.soak:
            out["soak_rss_mib"] = asyncio.run(soak(port, server.pid, args.soak, args.chars))
        out["load_after"] = os.getloadavg()
        print(json.dumps(out, indent=1))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(out, f, indent=1)
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
