"""The `forward` benchmark: the jitted full causal pass (`flmjax.model.forward`) for every preset x dtype.

`forward` times the jitted full causal pass (`flmjax.model.forward`) for every preset x dtype: the AOT lower and
compile separately, then `--repeats` blocked calls after one warm-up (median and min). FLOPs come from XLA's cost
analysis (`flmjax.compiled.cost`, see `FLOPS_SOURCES`); memory from the compiled executable's memory analysis
(`flmjax.compiled.memory`).
"""

from __future__ import annotations

import functools
import statistics
import time
from typing import Any

import jax
import numpy as np

from flmjax import compiled as compiled_lib
from flmjax import config as config_lib
from flmjax import model, presets
from launch.bench_common import (
    PARAM_DTYPE_FOR,
    Benchmark,
    Column,
    Settings,
    fixed,
    memory_bytes,
    millions,
    progress,
    random_params,
    significant,
)

FLOPS_SOURCES = {
    "xla": "compiled cost_analysis() of the benchmarked program",
    "xla-unrolled": "cost_analysis() of the same forward lowered with scan_layers=False (XLA counts a scanned "
    "layer loop's body once, so the compiled count of the scanned program is one layer's worth)",
    "analytic": "2 x matmul params x tokens + 4 x batch x frames^2 x heads x head_dim per layer",
}


def _param_counts(params: model.Params) -> dict[str, int]:
    """Total params, the depth transformer's, and the temporal part (everything `forward` reads: the rest)."""

    def count(tree):
        return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))

    total, depth = count(params), count(params["depth"])
    return {"params_temporal": total - depth, "params_depth": depth, "params_total": total}


def _analytic_flops(config: config_lib.ModelConfig, params: model.Params, batch: int, frames: int) -> int:
    """2 x (temporal + text-head matmul weights) x tokens, plus QK^T and AV over the full (masked) T x T."""
    matmul_params = sum(
        int(np.prod(leaf.shape))
        for path, leaf in jax.tree_util.tree_leaves_with_path({k: params[k] for k in ("temporal", "text_head")})
        if str(getattr(path[-1], "key", "")).endswith("kernel")
    )
    attention = 4 * batch * frames * frames * config.num_attention_heads * config.head_dim
    return 2 * matmul_params * batch * frames + config.num_hidden_layers * attention


def _xla_flops(config, compiled, abstract_inputs) -> tuple[float | None, str]:
    """XLA's FLOP count for one forward call and where it came from (see `FLOPS_SOURCES`)."""
    if not (config.scan_layers and config.num_hidden_layers > 1):
        return compiled_lib.cost(compiled)["flops"], "xla"
    unrolled = config.replace(scan_layers=False)
    lowered = jax.jit(functools.partial(model.forward, unrolled)).lower(
        model.abstract_params(unrolled), *abstract_inputs
    )
    return compiled_lib.cost(lowered)["flops"], "xla-unrolled"


def _random_inputs(config: config_lib.ModelConfig, batch: int, frames: int, seed: int):
    """Valid model inputs: text ids below the text vocabulary, audio ids below the codec's 2048 codes."""
    rng = np.random.default_rng(seed)
    text_ids = rng.integers(0, config.vocab_size, (batch, frames), dtype=np.int32)
    speak_ids, listen_ids = (
        rng.integers(0, config_lib.NUM_CODES, (batch, frames, config.aud_channel), dtype=np.int32) for _ in range(2)
    )
    return tuple(jax.device_put(x) for x in (text_ids, speak_ids, listen_ids))


def _forward_config(preset: str, dtype: str) -> config_lib.ModelConfig:
    return presets.preset(preset, dtype=dtype, param_dtype=PARAM_DTYPE_FOR[dtype])


def _bench_forward_case(preset: str, dtype: str, settings: Settings) -> dict[str, Any]:
    batch, frames = settings.batch, settings.frames
    config = _forward_config(preset, dtype)
    params = jax.block_until_ready(random_params(config, settings.seed))
    inputs = jax.block_until_ready(_random_inputs(config, batch, frames, settings.seed))

    jitted = jax.jit(functools.partial(model.forward, config))
    start = time.perf_counter()
    lowered = jitted.lower(params, *inputs)
    lower_s = time.perf_counter() - start
    start = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    progress(f"  lower {lower_s:.2f} s, compile {compile_s:.2f} s; timing 1 warm-up + {settings.repeats} runs")

    jax.block_until_ready(compiled(params, *inputs))
    times = []
    for _ in range(settings.repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(params, *inputs))
        times.append(time.perf_counter() - start)
    median_s = statistics.median(times)

    abstract_inputs = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in inputs]
    flops, source = _xla_flops(config, compiled, abstract_inputs)
    if flops is None:
        flops, source = float(_analytic_flops(config, params, batch, frames)), "analytic"
    return {
        "benchmark": "forward",
        "preset": preset,
        "dtype": dtype,
        "param_dtype": config.param_dtype,
        "batch": batch,
        "frames": frames,
        **_param_counts(params),
        "lower_s": lower_s,
        "compile_s": compile_s,
        "repeats": settings.repeats,
        "times_s": times,
        "median_s": median_s,
        "min_s": min(times),
        "frames_per_s": batch * frames / median_s,
        "flops_per_call": flops,
        "flops_source": source,
        "gflops_per_s": flops / median_s / 1e9,
        "flops_analytic": _analytic_flops(config, params, batch, frames),
        "flops_xla_compiled": compiled_lib.cost(compiled)["flops"],
        **{key: value for key, value in memory_bytes(compiled_lib.memory(compiled)).items() if key != "alias_bytes"},
    }


def run_forward_bench(settings: Settings) -> list[dict[str, Any]]:
    """One row per preset x dtype: compile and steady-state times of the jitted `forward`."""
    cases = [(p, d) for p in settings.presets for d in settings.dtypes]
    for preset in settings.presets:  # fail before the first case, not after an hour of them
        limit = _forward_config(preset, "float32").max_position_embeddings
        if settings.frames > limit:
            raise ValueError(f"{settings.frames} frames exceed {preset}'s max_position_embeddings {limit}")
    rows = []
    for i, (preset, dtype) in enumerate(cases, 1):
        progress(
            f"[forward {i}/{len(cases)}] {preset} {dtype} (params {PARAM_DTYPE_FOR[dtype]}), "
            f"batch {settings.batch} x {settings.frames} frames"
        )
        rows.append(_bench_forward_case(preset, dtype, settings))
    return rows


FORWARD_COLUMNS = (
    Column("preset", "preset"),
    Column("compute", "dtype"),
    Column("params", "param_dtype"),
    Column("temporal", "params_temporal", millions),
    Column("total", "params_total", millions),
    Column("lower s", "lower_s", fixed(2)),
    Column("compile s", "compile_s", fixed(2)),
    Column("median ms", "median_s", fixed(1, 1e3)),
    Column("min ms", "min_s", fixed(1, 1e3)),
    Column("frames/s", "frames_per_s", fixed(0)),
    Column("GFLOP/call", "flops_per_call", significant(3, 1e-9)),
    Column("GFLOP/s", "gflops_per_s", fixed(1)),
    Column("flops from", "flops_source"),
    Column("temp MiB", "temp_bytes", fixed(1, 1 / 2**20)),
)

BENCHMARK = Benchmark(run_forward_bench, FORWARD_COLUMNS)
