"""`python -m launch.bench stream`: the streaming step's per-frame latency against its memory-bandwidth bound.

For every preset x dtype x batch (concurrent sessions) it builds a stream with a `--frames` KV cache, times the
first step (compilation included; the CLI turns the persistent cache off) and then `--steps` steps, each
`stream.stream_step` plus the host read of its output frame, as the session scheduler (`Scheduler.step`) runs
it for a live session. Reported: p50 and p99 per-frame latency, the real-time factor (p50 / 80 ms: below 1 keeps
up), the KV-cache memory, and the bandwidth lower bound: the bytes a step must read at least (every weight once,
except the embedding tables of which it reads 17 rows per session, plus the KV cache up to the frames it holds
during the timed steps) over the machine's measured read bandwidth. `x bound` is measured p50 / bound: how far the
step is from the limit.

Notes above the table give the same bound for the `flm_audio_7b` preset on TPU v5e and H100 (bf16 weights and
cache, from the preset's sizes and `HBM_BANDWIDTH`), for a few batch sizes and context fills.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from flmjax import config as config_lib
from flmjax import hardware, model, presets
from flmjax.infer.sessions import Scheduler
from flmjax.streams import FRAME_S
from launch.bench_common import (
    PARAM_DTYPE_FOR,
    Benchmark,
    Column,
    Settings,
    fixed,
    progress,
    random_params,
    significant,
)

# Peak HBM bandwidth per chip, bytes/s (flmjax.hardware's table of vendor figures).
HBM_BANDWIDTH = {"TPU v5e": hardware.CHIPS["v5e"].hbm_bandwidth, "H100 SXM": hardware.CHIPS["h100"].hbm_bandwidth}
EMBEDDING_TABLES = (("embedder", "text"), ("embedder", "speak"), ("embedder", "listen"), ("depth", "token_embed"))
ANALYTIC_BATCHES = (1, 8, 32)
ANALYTIC_CONTEXTS = (750, 3750)  # 1 and 5 minutes of conversation, in frames


def _nbytes(tree) -> int:
    return sum(leaf.size * jnp.dtype(leaf.dtype).itemsize for leaf in jax.tree.leaves(tree))


def weight_bytes_per_frame(config: config_lib.ModelConfig, params, batch: int) -> int:
    """Bytes of weights a step must read at least: everything once, but of each embedding table only the rows
    of that step's ids (1 text + 16 audio ids per session into the temporal tables, 7 codes into the depth's)."""
    total = _nbytes(params)
    for group, name in EMBEDDING_TABLES:
        table = params[group][name]
        row_bytes = table.shape[-1] * jnp.dtype(table.dtype).itemsize
        rows = {
            "text": 1,
            "speak": config.aud_channel,
            "listen": config.aud_channel,
            "token_embed": config.aud_channel - 1,
        }[name] * batch
        total += (
            min(rows * row_bytes, table.size * jnp.dtype(table.dtype).itemsize)
            - table.size * jnp.dtype(table.dtype).itemsize
        )
    return total


def cache_bytes(config: config_lib.ModelConfig, batch: int, frames: int, dtype) -> int:
    """K and V of every temporal layer for `frames` frames of `batch` sessions."""
    return (
        2
        * config.num_hidden_layers
        * batch
        * frames
        * config.num_key_value_heads
        * config.head_dim
        * jnp.dtype(dtype).itemsize
    )


def measured_read_bandwidth(megabytes: int = 256, repeats: int = 5) -> float:
    """Bytes/s of a jitted sum over a large float32 array on the default device (a read-bound loop)."""
    data = jnp.ones((megabytes * 2**20 // 4,), jnp.float32)
    total = jax.jit(jnp.sum)
    total(data).block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        total(data).block_until_ready()
        times.append(time.perf_counter() - start)
    return data.nbytes / min(times)


def _bench_case(preset: str, dtype: str, batch: int, settings: Settings, bandwidth: float) -> dict[str, Any]:
    config = presets.preset(preset, dtype=dtype, param_dtype=PARAM_DTYPE_FOR[dtype])
    params = jax.block_until_ready(random_params(config, settings.seed))
    progress(f"stream {preset} {dtype} batch {batch}: cache {settings.frames} frames, 1 + {settings.steps} steps")
    scheduler = Scheduler(config, params, slots=batch, max_frames=settings.frames)
    for key in jax.random.split(jax.random.key(settings.seed), batch):
        scheduler.open(key)
    codes = np.random.default_rng(settings.seed).integers(0, 2048, (settings.steps + 1, batch, config.aud_channel))
    times = [scheduler.step(codes[step]).model_s for step in range(settings.steps + 1)]
    state = scheduler.state
    first_s, steady = times[0], times[1:]
    p50 = statistics.median(steady)
    mean_fill = (1 + settings.steps + 1) / 2  # frames in the cache, averaged over the timed steps
    weights = weight_bytes_per_frame(config, params, batch)
    needed = weights + cache_bytes(config, batch, int(np.ceil(mean_fill)), config.jnp_dtype)
    bound_s = needed / bandwidth
    return {
        "benchmark": "stream",
        "preset": preset,
        "dtype": dtype,
        "batch": batch,
        "max_frames": settings.frames,
        "steps": settings.steps,
        "first_step_s": first_s,
        "compile_s_estimate": first_s - p50,
        "times_s": steady,
        "p50_ms": p50 * 1e3,
        "p99_ms": float(np.percentile(steady, 99)) * 1e3,
        "real_time_factor": p50 / FRAME_S,
        "frames_per_s": batch / p50,
        "cache_mib": _nbytes({"k": state.cache["k"], "v": state.cache["v"]}) / 2**20,
        "weight_bytes_read": weights,
        "bytes_needed": needed,
        "read_bandwidth_gbs": bandwidth / 1e9,
        "bound_ms": bound_s * 1e3,
        "x_bound": p50 / bound_s,
    }


def analytic_7b_bounds() -> list[dict[str, Any]]:
    """Per-frame bandwidth bound of the released-size model (bf16 weights and cache) on TPU v5e and H100."""
    config = presets.preset("flm_audio_7b", dtype="bfloat16", param_dtype="bfloat16")
    params = model.abstract_params(config)
    rows = []
    for chip, bandwidth in HBM_BANDWIDTH.items():
        for batch in ANALYTIC_BATCHES:
            for context in ANALYTIC_CONTEXTS:
                needed = weight_bytes_per_frame(config, params, batch) + cache_bytes(
                    config, batch, context, jnp.bfloat16
                )
                rows.append(
                    {
                        "chip": chip,
                        "batch": batch,
                        "context_frames": context,
                        "bytes": needed,
                        "bound_ms": needed / bandwidth * 1e3,
                    }
                )
    return rows


def run_stream_bench(settings: Settings) -> list[dict[str, Any]]:
    """One row per preset x dtype x batch: per-frame latency of the jitted streaming step vs its bandwidth bound."""
    progress("measuring read bandwidth (jitted sum over 256 MiB)")
    bandwidth = measured_read_bandwidth()
    return [
        _bench_case(preset, dtype, batch, settings, bandwidth)
        for preset in settings.presets
        for dtype in settings.dtypes
        for batch in settings.batches
    ]


def stream_notes(settings: Settings, rows: list[dict[str, Any]]) -> dict[str, Any]:
    analytic = analytic_7b_bounds()
    lines = (
        [f"measured read bandwidth {rows[0]['read_bandwidth_gbs']:.1f} GB/s (jitted sum over 256 MiB)"] if rows else []
    )
    lines.append(
        "flm_audio_7b per-frame bandwidth bound (bf16 weights read once + KV cache; one chip's HBM; the "
        "weights do not fit one v5e's 16 GB, shard them over 2+ chips and divide):"
    )
    for row in analytic:
        lines.append(
            f"  {row['chip']:<9} batch {row['batch']:>2} context {row['context_frames']:>5} frames: "
            f"{row['bytes'] / 1e9:6.2f} GB -> {row['bound_ms']:7.2f} ms/frame "
            f"(real-time factor {row['bound_ms'] / 1e3 / FRAME_S:.3f})"
        )
    return {"notes": lines, "analytic_7b": analytic, "hbm_bandwidth": HBM_BANDWIDTH}


STREAM_COLUMNS = (
    Column("preset", "preset"),
    Column("dtype", "dtype"),
    Column("batch", "batch"),
    Column("cache MiB", "cache_mib", fixed(1)),
    Column("compile+step1 s", "first_step_s", fixed(2)),
    Column("p50 ms", "p50_ms", significant(3)),
    Column("p99 ms", "p99_ms", significant(3)),
    Column("RTF", "real_time_factor", fixed(3)),
    Column("frames/s", "frames_per_s", fixed(0)),
    Column("bytes/frame MiB", "bytes_needed", fixed(2, 2**-20)),
    Column("bound ms", "bound_ms", significant(3)),
    Column("x bound", "x_bound", fixed(1)),
)

STREAM_DEFAULTS = (("dtypes", ("float32",)), ("batches", (1, 8, 32)))


BENCHMARK = Benchmark(run_stream_bench, STREAM_COLUMNS, notes=stream_notes, defaults=STREAM_DEFAULTS)
