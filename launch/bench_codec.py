"""The `codec` benchmark: the Mimi codec (`flmjax.codec`) at the released sizes, random weights, float32.

For each batch size in `settings.batches` (concurrent streams), on `settings.seconds` of noise per stream:

- batch `encode` and `decode`: the AOT compile time, then the median of `settings.repeats` blocked calls
  after one warm-up, as a real-time factor `batch x seconds / wall seconds` (all streams' audio per second);
- streaming: the compile times of `encode_step` and `decode_step`, then the latency of one 80 ms frame
  (encode_step of 1920 samples, then decode_step of the codes it gave, blocked) over `12.5 x seconds` frames
  after 2 warm-up frames: p50 and p99 in ms. A frame fits the real-time budget below 80 ms.

Weights come from `flmjax.codec.init_params` (N(0, 1/fan_in), layer scales 0.01), so activations stay near unit
scale: nothing overflows and no denormals slow the CPU down.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import jax
import numpy as np

from flmjax import codec
from launch.bench_common import Benchmark, Column, Settings, fixed, progress, significant

CODEC_COLUMNS = (
    Column("batch", "batch"),
    Column("audio s", "seconds", fixed(1)),
    Column("enc compile s", "encode_compile_s", fixed(2)),
    Column("enc xRT", "encode_realtime", significant(3)),
    Column("dec compile s", "decode_compile_s", fixed(2)),
    Column("dec xRT", "decode_realtime", significant(3)),
    Column("step compile s", "step_compile_s", fixed(2)),
    Column("frame p50 ms", "frame_p50_ms", fixed(2)),
    Column("frame p99 ms", "frame_p99_ms", fixed(2)),
)


def _compile(jitted, *args) -> tuple[Any, float]:
    start = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    return compiled, time.perf_counter() - start


def _median_time(fn, repeats: int) -> tuple[float, list[float]]:
    jax.block_until_ready(fn())  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def _bench_batch_size(config: codec.MimiConfig, params, batch: int, settings: Settings) -> dict[str, Any]:
    frames = max(1, round(settings.seconds * config.frame_rate))
    seconds = frames * config.frame_size / config.sample_rate
    rng = np.random.default_rng(settings.seed)
    audio = jax.device_put((0.1 * rng.standard_normal((batch, 1, frames * config.frame_size))).astype(np.float32))

    encode, encode_compile_s = _compile(codec.encode, config, params, audio)
    codes = jax.block_until_ready(encode(params, audio))
    decode, decode_compile_s = _compile(codec.decode, config, params, codes)
    progress(
        f"  batch {batch}: compile encode {encode_compile_s:.2f} s, decode {decode_compile_s:.2f} s; "
        f"timing 1 warm-up + {settings.repeats} runs each"
    )
    encode_s, encode_times = _median_time(lambda: encode(params, audio), settings.repeats)
    decode_s, decode_times = _median_time(lambda: decode(params, codes), settings.repeats)
    pcm = decode(params, codes)
    if not bool(np.isfinite(np.asarray(pcm)).all()):
        raise FloatingPointError("codec bench: decoded pcm is not finite; rescale the random weights")

    state = codec.init_codec_stream(config, params, batch)
    chunk = audio[..., : config.frame_size]
    encode_step, encode_step_compile_s = _compile(codec.encode_step, config, params, state, chunk)
    decode_step, decode_step_compile_s = _compile(codec.decode_step, config, params, state, codes[..., :1])
    progress(
        f"  batch {batch}: compile encode_step {encode_step_compile_s:.2f} s, decode_step "
        f"{decode_step_compile_s:.2f} s; timing 2 warm-up + {frames} frames"
    )
    chunks = [audio[..., s * config.frame_size : (s + 1) * config.frame_size] for s in range(frames)]
    latencies = []
    for step in range(frames + 2):
        start = time.perf_counter()
        state, step_codes = encode_step(params, state, chunks[step % frames])
        state, step_pcm = decode_step(params, state, step_codes)
        jax.block_until_ready(step_pcm)
        if step >= 2:
            latencies.append(time.perf_counter() - start)
    latencies_ms = np.asarray(latencies) * 1e3
    return {
        "benchmark": "codec",
        "batch": batch,
        "seconds": seconds,
        "frames": frames,
        "repeats": settings.repeats,
        "encode_compile_s": encode_compile_s,
        "encode_median_s": encode_s,
        "encode_times_s": encode_times,
        "encode_realtime": batch * seconds / encode_s,
        "decode_compile_s": decode_compile_s,
        "decode_median_s": decode_s,
        "decode_times_s": decode_times,
        "decode_realtime": batch * seconds / decode_s,
        "encode_step_compile_s": encode_step_compile_s,
        "decode_step_compile_s": decode_step_compile_s,
        "step_compile_s": encode_step_compile_s + decode_step_compile_s,
        "frame_p50_ms": float(np.percentile(latencies_ms, 50)),
        "frame_p99_ms": float(np.percentile(latencies_ms, 99)),
        "frame_budget_ms": 1e3 / config.frame_rate,
    }


def run_codec_bench(settings: Settings) -> list[dict[str, Any]]:
    """One row per batch size: batch encode/decode real-time factors, streaming frame latency, compile times."""
    config = codec.MimiConfig.released()
    params = jax.block_until_ready(codec.init_params(config, settings.seed, num_codebooks=8))
    rows = []
    for batch in settings.batches:
        progress(f"codec: released Mimi, batch {batch}, {settings.seconds:g} s of audio per stream")
        rows.append(_bench_batch_size(config, params, batch, settings))
    return rows


BENCHMARK = Benchmark(run_codec_bench, CODEC_COLUMNS, defaults=(("batches", (1, 8)),))
