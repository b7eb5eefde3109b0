"""`python -m launch.bench serve`: live conversations over loopback against `launch.serve`, per slot count.

For each `--slots N` it starts `python -m launch.serve` (a random model of the first `--presets` preset, the
released-size Mimi with random weights, N slots) as its own process, then N clients (`launch.client.converse`)
each stream `--seconds` of speech-like audio at the pace of a live microphone, all at once. Reported from the
server's `/api/health` and the kernel's accounting of its process: tick latency p50/p99 (one tick = the batched
Mimi encode, model step and Mimi decode of every slot, plus the Opus work of the event loop), late ticks (over
80 ms), underruns (a frame of a client's audio that had not arrived at its tick), and the server's CPU seconds
per second of conversation served. A slot count holds in real time when its tick p99 is under 80 ms.

The released server (`flmaudio/server.py`) serves one conversation per process behind an `asyncio.Lock`:
N conversations need N processes, each with its own copy of the model and codec, each running batch-1 steps.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any

import jax
import numpy as np

from flmjax import model, presets
from flmjax.convert import save_official
from flmjax.streams import FRAME_S
from launch.bench_common import Benchmark, Column, Settings, fixed, progress

SERVE_DEFAULTS = (("presets", ("tiny",)), ("dtypes", ("float32",)), ("seconds", 10.0))
STARTUP_S = 900  # compiling the released-size Mimi for a large batch takes minutes on a small CPU


def speech_like(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(seconds * 24000)
    envelope = (np.sin(np.arange(n) / 24000 * 2 * np.pi * rng.uniform(0.3, 0.8)) > 0).astype(np.float32)
    return (0.1 * rng.standard_normal(n) * envelope).astype(np.float32)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _health(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=10) as response:
        return json.loads(response.read())


def _start_server(checkpoint: str, slots: int, port: int, seconds: float, log_path: str) -> subprocess.Popen:
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "launch.serve",
                "--checkpoint",
                checkpoint,
                "--mimi",
                "random",
                "--slots",
                str(slots),
                "--port",
                str(port),
                "--max_minutes",
                str(max(1.0, 2 * seconds / 60)),
                "--idle_timeout_s",
                "600",
                "--stall_s",
                "60",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + STARTUP_S
    while "serving" not in open(log_path).read():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"launch.serve did not start ({slots} slots):\n{open(log_path).read()[-2000:]}")
        time.sleep(0.5)
    return process


def _serve_case(checkpoint: str, slots: int, settings: Settings, scratch: str) -> dict[str, Any]:
    from launch import client as client_lib

    port = _free_port()
    log_path = os.path.join(scratch, f"serve_{slots}.log")
    progress(f"serve: starting launch.serve with {slots} slots (compiles before it listens)")
    start = time.perf_counter()
    process = _start_server(checkpoint, slots, port, settings.seconds, log_path)
    startup_s = time.perf_counter() - start
    try:
        progress(f"serve: {slots} clients x {settings.seconds:.0f} s at the pace of a live microphone")
        cpu_before, wall_before = _cpu_seconds(process.pid), time.perf_counter()
        url = f"ws://127.0.0.1:{port}/api/chat"

        async def clients():
            return await asyncio.gather(
                *[
                    client_lib.converse(
                        f"{url}?seed={i}",
                        speech_like(settings.seconds, settings.seed + i),
                        realtime=True,
                        timeout_s=settings.seconds * 4 + 60,
                    )
                    for i in range(slots)
                ]
            )

        results = asyncio.run(clients())
        cpu_s, wall_s = _cpu_seconds(process.pid) - cpu_before, time.perf_counter() - wall_before
        health = _health(port)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
    served_s = health["frames_served"] * FRAME_S
    voice_s = sum(r.received_samples for r in results) / 24000
    return {
        "benchmark": "serve",
        "preset": settings.presets[0],
        "slots": slots,
        "clients": slots,
        "seconds_per_client": settings.seconds,
        "startup_s": startup_s,
        "wall_s": wall_s,
        "ticks": health["ticks"],
        "tick_p50_ms": health["tick_ms_p50"],
        "tick_p99_ms": health["tick_ms_p99"],
        "late_ticks": health["late_ticks"],
        "underruns": health["underruns"],
        "served_s": served_s,
        "voice_received_s": voice_s,
        "server_cpu_s": cpu_s,
        "cpu_s_per_served_s": cpu_s / served_s if served_s else None,
        "real_time": health["tick_ms_p99"] is not None and health["tick_ms_p99"] < FRAME_S * 1e3,
    }


def run_serve_bench(settings: Settings) -> list[dict[str, Any]]:
    """Live conversations over loopback: tick p50/p99, late ticks, underruns, server CPU per served second."""
    config = presets.preset(settings.presets[0])
    with tempfile.TemporaryDirectory(prefix="flmjax_bench_serve_") as scratch:
        checkpoint = os.path.join(scratch, "model")
        save_official(checkpoint, config, model.init_params(config, jax.random.key(settings.seed)), dtype="float32")
        return [_serve_case(checkpoint, slots, settings, scratch) for slots in settings.slots]


def serve_notes(settings: Settings, rows: list[dict[str, Any]]) -> dict[str, Any]:
    held = [row["slots"] for row in rows if row["real_time"]]
    notes = [
        f"most slots held in real time on this machine (tick p99 < 80 ms): {max(held) if held else 0} "
        f"(of {', '.join(str(row['slots']) for row in rows)} tried)",
        "released server: one conversation per process (asyncio.Lock), so N conversations are N processes, "
        "each with its own model and codec copy and batch-1 steps",
    ]
    return {"notes": notes, "most_real_time_slots": max(held) if held else 0}


SERVE_COLUMNS = (
    Column("slots", "slots"),
    Column("tick p50 ms", "tick_p50_ms", fixed(1)),
    Column("tick p99 ms", "tick_p99_ms", fixed(1)),
    Column("ticks", "ticks"),
    Column("late", "late_ticks"),
    Column("underruns", "underruns"),
    Column("served s", "served_s", fixed(1)),
    Column("CPU s / served s", "cpu_s_per_served_s", fixed(3)),
    Column("real time", "real_time"),
    Column("startup s", "startup_s", fixed(0)),
)

BENCHMARK = Benchmark(run_serve_bench, SERVE_COLUMNS, notes=serve_notes, defaults=SERVE_DEFAULTS)
