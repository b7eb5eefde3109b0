"""Benchmarks: each prints an aligned table on stdout and writes JSON (a header plus one row per case).

    python -m launch.bench forward [--presets tiny,small] [--dtypes float32,bfloat16] [--batch 4]
                                   [--frames 256] [--repeats 5] [--out bench_results/forward.json]
    python -m launch.bench data [--stage stage4_duplex_leading] [--batch 8] [--frames 2048] [--workers 0,2]
                                [--repeats 20] [--records 300 | --data_dir DIR] [--out bench_results/data.json]
    python -m launch.bench train [--presets tiny,small] [--meshes 1,8] [--dtypes float32[,bfloat16]] [--batch 8]
                                 [--frames 256] [--repeats 5] [--out bench_results/train.json]

`forward` times the jitted full causal pass (`flmjax.model.forward`) for every preset x dtype: the AOT lower and
compile separately, then `--repeats` blocked calls after one warm-up (median and min). FLOPs come from XLA's cost
analysis; memory from the compiled executable's memory analysis.

`data` times a stage's Grain pipeline (dataset records -> monologue placement, delays, crop/pad -> batches)
over a synthetic corpus it builds (or `--data_dir`): the first batch (start-up) separately, then `--repeats`
batches, once per worker count.

`train` times the sharded, AOT-compiled train step (`flmjax.train.step.compile_train_step`: forward, backward and
the AdamW update, `OptimizerConfig(warmup_steps=0, total_steps=1000)`, `LossConfig()`) for every preset x mesh
size x dtype, on a `(data 1, fsdp n, tensor 1)` mesh of the first n devices; `bfloat16` computes in bf16 over
float32 params. It reports the compile time (lower + compile), the median and min of `--repeats` steps after
one warm-up (each blocked on its new state and metrics), frames/s (batch x frames / step) and tokens/s (17
tokens per frame: 1 text + 8 speak + 8 listen codes), memory (the compiled program's temp + argument + output
bytes, per device, and the process's peak RSS so far as a cross-check), and FLOPs: the model formula
(`model_flops_per_frame`, 3 x forward matmuls) per step, XLA's cost analysis of the same step compiled once
per preset x dtype with `scan_layers=False` on one device (XLA counts a scanned layer loop's body once), their
ratio, achieved FLOP/s and MFU = formula FLOPs / step time / (peak per device x devices). The formula leaves out
the optimizer update (about 20 FLOPs per param per step) and other elementwise work, so formula/XLA is near 1
only with enough frames per step to amortise them (see `model_flops_per_frame`). Should a loop survive in the
`scan_layers=False` step, XLA would count its body once: the row's `xla_unrolled_while_loops` and a note above
the table say so.

On a CPU-only machine `python -m launch.bench train` asks XLA for as many fake host devices as the largest mesh
(`--xla_force_host_platform_device_count`, in `main`, before jax starts a backend): they share the same cores and
host memory, so the CPU peak is the whole machine's measured matmul rate split over the mesh's devices, a bigger
mesh measures partitioning overhead, not parallel speed-up, and a case whose devices would not fit in the
available host memory is compiled but not run (its row says why).

A benchmark is a function `Settings -> list[row dict]` plus the table columns it shows; adding one is that
function and one line in `BENCHMARKS`. Progress goes to stderr. The CLI switches the persistent compilation
cache off, so compile times are real compiles.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import importlib.metadata
import json
import os
import pathlib
import re
import shlex
import statistics
import sys
import time
from typing import Any, Sequence

import jax
import numpy as np

from flmjax import compiled as compiled_lib
from flmjax import config as config_lib
from flmjax import model
from launch import cli
from launch.bench_codec import CODEC_COLUMNS, run_codec_bench
from launch.bench_stream import STREAM_COLUMNS, STREAM_DEFAULTS, run_stream_bench, stream_notes
from launch.bench_serve import SERVE_COLUMNS, SERVE_DEFAULTS, run_serve_bench, serve_notes
from launch.bench_common import (PARAM_DTYPE_FOR, Benchmark, Column, Settings, fixed, format_table,
                                  millions, progress, random_params, significant)

FLOPS_SOURCES = {
    "xla": "compiled cost_analysis() of the benchmarked program",
    "xla-unrolled": "cost_analysis() of the same forward lowered with scan_layers=False (XLA counts a scanned "
                    "layer loop's body once, so the compiled count of the scanned program is one layer's worth)",
    "analytic": "2 x matmul params x tokens + 4 x batch x frames^2 x heads x head_dim per layer",
}


# ---------------------------------------------------------------------- forward
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
        if str(getattr(path[-1], "key", "")).endswith("kernel"))
    attention = 4 * batch * frames * frames * config.num_attention_heads * config.head_dim
    return 2 * matmul_params * batch * frames + config.num_hidden_layers * attention


def _cost_flops(stage) -> float | None:
    """The `flops` of a lowered or compiled stage's `cost_analysis()`, or None where XLA gives none."""
    return compiled_lib.cost(stage)["flops"]


def _xla_flops(config, compiled, abstract_inputs) -> tuple[float | None, str]:
    """XLA's FLOP count for one forward call and where it came from (see `FLOPS_SOURCES`)."""
    if not (config.scan_layers and config.num_hidden_layers > 1):
        return _cost_flops(compiled), "xla"
    unrolled = config.replace(scan_layers=False)
    lowered = jax.jit(functools.partial(model.forward, unrolled)).lower(
        model.abstract_params(unrolled), *abstract_inputs)
    return _cost_flops(lowered), "xla-unrolled"


def _memory(memory: dict[str, int | None]) -> dict[str, int | None]:
    """`flmjax.compiled.memory` figures under this report's names (`temp_bytes`, ...)."""
    return {f"{key}_bytes": memory[key] for key in ("temp", "argument", "output", "alias")}


def _random_inputs(config: config_lib.ModelConfig, batch: int, frames: int, seed: int):
    """Valid model inputs: text ids below the text vocabulary, audio ids below the codec's 2048 codes."""
    rng = np.random.default_rng(seed)
    text_ids = rng.integers(0, config.vocab_size, (batch, frames), dtype=np.int32)
    speak_ids, listen_ids = (rng.integers(0, config_lib.NUM_CODES, (batch, frames, config.aud_channel),
                                          dtype=np.int32) for _ in range(2))
    return tuple(jax.device_put(x) for x in (text_ids, speak_ids, listen_ids))


def _forward_config(preset: str, dtype: str) -> config_lib.ModelConfig:
    return config_lib.preset(preset, dtype=dtype, param_dtype=PARAM_DTYPE_FOR[dtype])


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
        "benchmark": "forward", "preset": preset, "dtype": dtype, "param_dtype": config.param_dtype,
        "batch": batch, "frames": frames, **_param_counts(params),
        "lower_s": lower_s, "compile_s": compile_s, "repeats": settings.repeats, "times_s": times,
        "median_s": median_s, "min_s": min(times), "frames_per_s": batch * frames / median_s,
        "flops_per_call": flops, "flops_source": source, "gflops_per_s": flops / median_s / 1e9,
        "flops_analytic": _analytic_flops(config, params, batch, frames),
        "flops_xla_compiled": _cost_flops(compiled),
        **{key: value for key, value in _memory(compiled_lib.memory(compiled)).items() if key != "alias_bytes"},
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
        progress(f"[forward {i}/{len(cases)}] {preset} {dtype} (params {PARAM_DTYPE_FOR[dtype]}), "
                  f"batch {settings.batch} x {settings.frames} frames")
        rows.append(_bench_forward_case(preset, dtype, settings))
    return rows


FORWARD_COLUMNS = (
    Column("preset", "preset"), Column("compute", "dtype"), Column("params", "param_dtype"),
    Column("temporal", "params_temporal", millions), Column("total", "params_total", millions),
    Column("lower s", "lower_s", fixed(2)), Column("compile s", "compile_s", fixed(2)),
    Column("median ms", "median_s", fixed(1, 1e3)), Column("min ms", "min_s", fixed(1, 1e3)),
    Column("frames/s", "frames_per_s", fixed(0)), Column("GFLOP/call", "flops_per_call", significant(3, 1e-9)),
    Column("GFLOP/s", "gflops_per_s", fixed(1)), Column("flops from", "flops_source"),
    Column("temp MiB", "temp_bytes", fixed(1, 1 / 2**20)),
)


# ---------------------------------------------------------------------- data
def _bench_data_dir(settings: Settings, scratch: str) -> str:
    if settings.data_dir:
        return settings.data_dir
    from launch import prepare_data

    progress(f"[data] building {settings.records} synthetic records in {scratch}")
    import contextlib

    with contextlib.redirect_stdout(sys.stderr):  # its summary is progress here, not the benchmark's table
        status = cli.run(prepare_data.main, ["--synthetic", str(settings.records), "--seed", str(settings.seed),
                                             "--out", scratch, "--no_progress"])
    if status != 0:
        raise RuntimeError("building the synthetic corpus failed")
    return scratch


def run_data_bench(settings: Settings) -> list[dict[str, Any]]:
    """One row per worker count: batches/s and frames/s of a stage's Grain pipeline (records to batches)."""
    import importlib
    import tempfile

    from absl import flags

    from flmjax.data import pipeline, text
    from flmjax.data.examples import StreamIds

    flags.FLAGS.mark_as_parsed()  # grain worker processes read absl flags
    rows = []
    with tempfile.TemporaryDirectory(prefix="flmjax-bench-data-") as scratch:
        data_dir = _bench_data_dir(settings, scratch)
        config = importlib.import_module(f"configs.stages.{settings.stage}").get_config()
        config.data.data_dir, config.data.sequence_length = data_dir, settings.frames
        config.data.global_batch_size, config.seed = settings.batch, settings.seed
        tokenizer = text.SentencePieceTokenizer(os.path.join(data_dir, "tokenizer.model"))
        ids = StreamIds(tokenizer.wait_id, config_lib.preset(config.model).aud_pad_id)
        for workers in settings.workers:
            progress(f"[data] {settings.stage}: batch {settings.batch} x {settings.frames} frames, "
                      f"{workers} workers, {settings.repeats} timed batches")
            iterator = pipeline.batch_iterator(pipeline.stage_pipeline(config, tokenizer, ids), num_workers=workers)
            try:
                start = time.perf_counter()
                next(iterator)
                first_batch_s = time.perf_counter() - start
                start = time.perf_counter()
                for _ in range(settings.repeats):
                    next(iterator)
                elapsed = time.perf_counter() - start
            finally:
                if hasattr(iterator, "close"):
                    iterator.close()
            rows.append({"stage": settings.stage, "workers": workers, "batch": settings.batch,
                         "frames": settings.frames, "batches": settings.repeats, "first_batch_s": first_batch_s,
                         "elapsed_s": elapsed, "batches_per_s": settings.repeats / elapsed,
                         "frames_per_s": settings.repeats * settings.batch * settings.frames / elapsed})
    return rows


DATA_COLUMNS = (
    Column("stage", "stage"), Column("workers", "workers"), Column("batch", "batch"), Column("frames", "frames"),
    Column("first batch s", "first_batch_s", fixed(2)), Column("batches/s", "batches_per_s", fixed(2)),
    Column("frames/s", "frames_per_s", fixed(0)),
)

# ---------------------------------------------------------------------- train
# Compute dtype -> param dtype for training: params and optimizer state stay float32 (the master copy).
TRAIN_PARAM_DTYPE_FOR = {"float32": "float32", "bfloat16": "float32"}
TRAIN_DEFAULT_MESHES = (1, 8)
TRAIN_FLOPS_NOTE = ("flops_formula: model_flops_per_frame (3 x forward matmul FLOPs) x batch x frames; "
                    "flops_xla_unrolled: compiled cost_analysis() of the same step with scan_layers=False on one "
                    "device, compiled once per preset x dtype (XLA counts a scanned layer loop's body once, and a "
                    "partitioned program's count is per device)")


def _tokens_per_frame(config: config_lib.ModelConfig) -> int:
    """Tokens one frame carries: its text token plus the speak and listen codebooks (1 + 2 x 8 = 17)."""
    return 1 + 2 * config.aud_channel


def _train_config(preset: str, dtype: str) -> config_lib.ModelConfig:
    return config_lib.preset(preset, dtype=dtype, param_dtype=TRAIN_PARAM_DTYPE_FOR[dtype])


def _random_train_batch(config: config_lib.ModelConfig, batch: int, frames: int, seed: int) -> dict[str, np.ndarray]:
    """A valid training batch (see `flmjax.data.examples`), on the host."""
    rng = np.random.default_rng(seed)
    audio = (batch, frames, config.aud_channel)
    return {
        "text_ids": rng.integers(0, config.vocab_size, (batch, frames), dtype=np.int32),
        "speak_ids": rng.integers(0, config_lib.NUM_CODES, audio, dtype=np.int32),
        "listen_ids": rng.integers(0, config_lib.NUM_CODES, audio, dtype=np.int32),
        "text_targets": rng.integers(0, config.vocab_size, (batch, frames), dtype=np.int32),
        "audio_targets": rng.integers(0, config_lib.NUM_CODES, audio, dtype=np.int32),
        "text_mask": rng.random((batch, frames)) < 0.8,
        "audio_mask": rng.random(audio) < 0.7,
    }


def _train_mesh(devices: int):
    from flmjax import sharding

    return sharding.make_mesh((1, devices, 1), devices=jax.devices()[:devices])


def _peak_rss_bytes() -> int:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # bytes on macOS, KiB on Linux


@functools.lru_cache(maxsize=None)
def _device_peak() -> tuple[float, str]:
    """`metrics.peak_flops_per_device()` of the first device, measured (on CPU) once per process."""
    from flmjax.train import metrics

    return metrics.peak_flops_per_device(jax.devices()[0])


def _peak_for_mesh(devices: int) -> tuple[float, str]:
    """(peak FLOP/s of one of the mesh's `devices`, its source). On CPU the (fake) devices share the machine's
    cores, so the machine's measured rate is split over the mesh's devices, whatever the device count."""
    per_device, source = _device_peak()
    if jax.devices()[0].platform != "cpu":
        return per_device, source
    machine = per_device * jax.local_device_count()
    return machine / devices, f"{source}: this machine's {machine / 1e9:.1f} GFLOP/s split over the mesh's devices"


def _while_loops(compiled) -> int | None:
    """How many `while` ops a compiled program's HLO has (XLA's cost analysis counts each loop body once)."""
    try:
        return len(re.findall(r"\bwhile\(", compiled.as_text()))
    except Exception:  # noqa: BLE001 - not every backend gives the text
        return None


def _xla_unrolled_train_flops(config, settings: Settings, tx, loss_config) -> tuple[float | None, float, int | None]:
    """XLA's FLOPs for one whole step of `config` with `scan_layers=False`, compiled on one device; the compile
    seconds; the while loops left in it (the depth transformer's blocks are scanned whatever `scan_layers` says,
    so XLA counts one of them)."""
    from flmjax.train import step as step_lib

    unrolled = config.replace(scan_layers=False)
    mesh = _train_mesh(1)
    compiled = step_lib.compile_train_step(unrolled, loss_config, tx, step_lib.state_shardings(unrolled, tx, mesh),
                                           mesh, settings.batch, settings.frames)
    return compiled.flops, compiled.compile_seconds, _while_loops(compiled.run)


def _available_host_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def _host_memory_problem(memory: dict[str, int | None], devices: int) -> str | None:
    """On CPU every (fake) device's buffers live in host memory: why running this step would likely be
    OOM-killed (taking every finished row with it), or None."""
    if jax.devices()[0].platform != "cpu" or None in memory.values():
        return None
    per_device = memory["temp_bytes"] + memory["argument_bytes"] + memory["output_bytes"] - memory["alias_bytes"]
    available = _available_host_bytes()
    if available is None or devices * per_device <= 0.9 * available:
        return None
    return (f"skipped: {devices} device(s) x {per_device / 2**30:.2f} GiB (compiled temp + argument + output - "
            f"aliased) = {devices * per_device / 2**30:.1f} GiB of host memory; {available / 2**30:.1f} GiB "
            "available")


def _bench_train_case(preset: str, dtype: str, devices: int, settings: Settings, tx, loss_config,
                      xla_flops: float | None, xla_compile_s: float, xla_loops: int | None) -> dict[str, Any]:
    from flmjax import sharding
    from flmjax.train import step as step_lib

    batch, frames = settings.batch, settings.frames
    config = _train_config(preset, dtype)
    mesh = _train_mesh(devices)
    shardings = step_lib.state_shardings(config, tx, mesh)
    compiled = step_lib.compile_train_step(config, loss_config, tx, shardings, mesh, batch, frames)
    memory = _memory(compiled.memory)
    skipped = _host_memory_problem(memory, devices)
    progress(f"  compile (lower + compile) {compiled.compile_seconds:.2f} s; "
              + (skipped if skipped else f"timing 1 warm-up + {settings.repeats} steps"))
    times, loss = [], None
    if not skipped:
        # Params drawn on the host (init_params alone takes 10+ s to compile on a small CPU); timing does not
        # depend on their values.
        params = random_params(config, settings.seed)
        state = step_lib.init_state_sharded(config, tx, jax.random.key(settings.seed), shardings, params=params)
        del params
        batch_arrays = jax.device_put(_random_train_batch(config, batch, frames, settings.seed),
                                      step_lib.batch_shardings(mesh))
        with sharding.activation_rules(mesh):
            state, step_metrics = jax.block_until_ready(compiled.run(state, batch_arrays))  # warm-up
            for _ in range(settings.repeats):
                start = time.perf_counter()
                state, step_metrics = jax.block_until_ready(compiled.run(state, batch_arrays))
                times.append(time.perf_counter() - start)
        loss = float(step_metrics["loss"])
        del state, batch_arrays, step_metrics
    median_s = statistics.median(times) if times else None

    def per_step(value):
        return None if median_s is None else value / median_s

    frames_per_s = per_step(batch * frames)
    flops_formula = step_lib.model_flops_per_frame(config, frames) * batch * frames
    peak, peak_source = _peak_for_mesh(devices)
    parts = [memory[key] for key in ("temp_bytes", "argument_bytes", "output_bytes")]
    return {
        "benchmark": "train", "preset": preset, "dtype": dtype, "param_dtype": config.param_dtype,
        "devices": devices, "mesh_shape": dict(mesh.shape), "batch": batch, "frames": frames,
        "params_total": sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(model.abstract_params(config))),
        "skipped": skipped, "compile_s": compiled.compile_seconds, "repeats": settings.repeats, "times_s": times,
        "median_s": median_s, "min_s": min(times, default=None), "final_loss": loss,
        "frames_per_s": frames_per_s, "tokens_per_frame": _tokens_per_frame(config),
        "tokens_per_s": per_step(_tokens_per_frame(config) * batch * frames),
        **memory, "compiled_bytes": None if None in parts else sum(parts), "peak_rss_bytes": _peak_rss_bytes(),
        "flops_formula": flops_formula, "flops_xla_unrolled": xla_flops, "xla_unrolled_compile_s": xla_compile_s,
        "xla_unrolled_while_loops": xla_loops,
        "flops_formula_over_xla": None if not xla_flops else flops_formula / xla_flops,
        "flops_xla_scanned_per_device": compiled.flops,
        "achieved_flops_per_s": per_step(flops_formula),
        "peak_flops_per_device": peak, "peak_flops_source": peak_source,
        "mfu": None if median_s is None else flops_formula / median_s / (peak * devices),
    }


def run_train_bench(settings: Settings) -> list[dict[str, Any]]:
    """One row per preset x mesh size x dtype: compile and step times, throughput, memory, FLOPs and MFU of
    the sharded train step."""
    from flmjax.train import loss as loss_lib
    from flmjax.train import optimizer as optimizer_lib

    problems = [f"a {n}-device mesh needs {n} devices; there are {jax.device_count()} (on CPU, run through "
                f"`python -m launch.bench train`, or set XLA_FLAGS=--xla_force_host_platform_device_count={n})"
                for n in settings.meshes if n > jax.device_count()]
    problems += [f"batch {settings.batch} does not divide over a {n}-device mesh"
                 for n in settings.meshes if settings.batch % n]
    problems += [f"{settings.frames} frames exceed {p}'s max_position_embeddings "
                 f"{_train_config(p, 'float32').max_position_embeddings}" for p in settings.presets
                 if settings.frames > _train_config(p, "float32").max_position_embeddings]
    if problems:  # fail before the first case, not after an hour of them
        raise ValueError("invalid train bench settings:\n  " + "\n  ".join(problems))
    tx = optimizer_lib.make_optimizer(optimizer_lib.OptimizerConfig(warmup_steps=0, total_steps=1000))
    loss_config = loss_lib.LossConfig()
    cases = len(settings.presets) * len(settings.dtypes) * len(settings.meshes)
    rows = []
    for preset in settings.presets:
        for dtype in settings.dtypes:
            progress(f"[train] {preset} {dtype}: compiling the unrolled step once for XLA's FLOP count")
            xla = _xla_unrolled_train_flops(_train_config(preset, dtype), settings, tx, loss_config)
            progress(f"  compile {xla[1]:.2f} s, {xla[0] or 0:.4g} FLOPs per step, {xla[2]} while loops left")
            for devices in settings.meshes:
                progress(f"[train {len(rows) + 1}/{cases}] {preset} {dtype} (params "
                          f"{TRAIN_PARAM_DTYPE_FOR[dtype]}), mesh of {devices} device(s), batch {settings.batch} x "
                          f"{settings.frames} frames")
                rows.append(_bench_train_case(preset, dtype, devices, settings, tx, loss_config, *xla))
    return rows


def _train_notes(settings: Settings, rows: list[dict[str, Any]]) -> dict[str, Any]:
    device = jax.devices()[0]
    fake = device.platform == "cpu" and jax.device_count() > 1
    devices = (f"{jax.device_count()} fake CPU devices (--xla_force_host_platform_device_count) sharing the same "
               f"{os.cpu_count()} cores: a bigger mesh shows partitioning overhead, not parallel speed-up"
               if fake else f"{jax.device_count()} x {device.device_kind}")
    sources = sorted({row["peak_flops_source"] for row in rows})
    notes = [f"devices: {devices}",
             "tokens/s = frames/s x 17 (per frame: 1 text token + 8 speak + 8 listen audio codes)",
             "compiled MiB: temp + argument + output bytes of the compiled step, per device (the donated state "
             "counts in both argument and output); peak RSS: the whole process's so far",
             "formula GFLOP: model_flops_per_frame x batch x frames; XLA GFLOP: the same step with "
             "scan_layers=False, compiled on one device; MFU = formula FLOPs / median / (peak per device x "
             "devices)",
             *(f"peak: {source}" for source in sources),
             *(f"{preset}: XLA GFLOP counts each of the {loops} while loops left in the scan_layers=False step "
               "once: it is too low"
               for preset, loops in sorted({(row["preset"], row["xla_unrolled_while_loops"]) for row in rows})
               if loops),
             *(f"{row['preset']} {row['dtype']} on {row['devices']} device(s) {row['skipped']}"
               for row in rows if row["skipped"])]
    return {"notes": notes, "fake_cpu_devices": fake, "param_dtype_for": TRAIN_PARAM_DTYPE_FOR,
            "tokens_per_frame": 17, "flops_note": TRAIN_FLOPS_NOTE}


TRAIN_COLUMNS = (
    Column("preset", "preset"), Column("compute", "dtype"), Column("devices", "devices"),
    Column("compile s", "compile_s", fixed(2)), Column("median s", "median_s", fixed(3)),
    Column("min s", "min_s", fixed(3)), Column("frames/s", "frames_per_s", fixed(1)),
    Column("tokens/s", "tokens_per_s", fixed(0)), Column("compiled MiB", "compiled_bytes", fixed(1, 1 / 2**20)),
    Column("peak RSS MiB", "peak_rss_bytes", fixed(0, 1 / 2**20)),
    Column("formula GFLOP", "flops_formula", significant(4, 1e-9)),
    Column("XLA GFLOP", "flops_xla_unrolled", significant(4, 1e-9)),
    Column("formula/XLA", "flops_formula_over_xla", fixed(3)),
    Column("GFLOP/s", "achieved_flops_per_s", fixed(1, 1e-9)),
    Column("peak GFLOP/s/dev", "peak_flops_per_device", fixed(1, 1e-9)), Column("MFU %", "mfu", fixed(1, 100)),
)

BENCHMARKS: dict[str, Benchmark] = {
    "forward": Benchmark(run_forward_bench, FORWARD_COLUMNS),
    "data": Benchmark(run_data_bench, DATA_COLUMNS, defaults=(("batch", 8), ("frames", 2048), ("repeats", 20))),
    "train": Benchmark(run_train_bench, TRAIN_COLUMNS, notes=_train_notes,
                       defaults=(("dtypes", ("float32",)), ("batch", 8), ("meshes", TRAIN_DEFAULT_MESHES))),
    "stream": Benchmark(run_stream_bench, STREAM_COLUMNS, notes=stream_notes, defaults=STREAM_DEFAULTS),
    "codec": Benchmark(run_codec_bench, CODEC_COLUMNS, defaults=(("batches", (1, 8)),)),
    "serve": Benchmark(run_serve_bench, SERVE_COLUMNS, notes=serve_notes, defaults=SERVE_DEFAULTS),
}


def _persistent_cache() -> str | None:
    """The persistent compilation cache directory in force, or None when compiles are not cached to disk."""
    enabled = jax.config.jax_enable_compilation_cache
    return jax.config.jax_compilation_cache_dir if enabled else None


def environment_header(name: str, settings: Settings, command: str) -> dict[str, Any]:
    device = jax.devices()[0]
    return {
        "benchmark": name, "command": command,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "jax_version": jax.__version__, "jaxlib_version": importlib.metadata.version("jaxlib"),
        "backend": jax.default_backend(), "device_kind": device.device_kind, "device_count": jax.device_count(),
        "cpu_count": os.cpu_count(), "persistent_compilation_cache": _persistent_cache(),
        "settings": dataclasses.asdict(settings), "param_dtype_for": PARAM_DTYPE_FOR,
        "flops_sources": FLOPS_SOURCES,
    }


def run_benchmark(name: str, settings: Settings, out: str | os.PathLike, command: str | None = None) -> dict:
    """Runs benchmark `name`, prints its table on stdout, writes {"header", "rows"} JSON to `out`, returns it."""
    benchmark = BENCHMARKS[name]
    command = shlex.join(sys.argv) if command is None else command
    if _persistent_cache():
        progress(f"warning: persistent compilation cache {_persistent_cache()} is on; compile times may be "
                  "cache loads")
    start = time.perf_counter()
    rows = benchmark.run(settings)
    header = {**environment_header(name, settings, command), "elapsed_s": time.perf_counter() - start}
    if benchmark.notes is not None:
        header.update(benchmark.notes(settings, rows))
        print("\n".join(f"# {note}" for note in header.get("notes", ())), flush=True)
    report = {"header": header, "rows": rows}
    print(format_table(rows, benchmark.columns), flush=True)
    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    progress(f"wrote {out} ({len(rows)} rows, {header['elapsed_s']:.1f} s)")
    return report


# ---------------------------------------------------------------------- CLI
def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _counts(text: str) -> tuple[int, ...]:
    return tuple(int(name) for name in _names(text))


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = cli.ArgumentParser(prog="python -m launch.bench", description=__doc__.split("\n")[0])
    subparsers = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for name, benchmark in BENCHMARKS.items():
        sub = subparsers.add_parser(name, help=(benchmark.run.__doc__ or "").split("\n")[0])
        defaults = benchmark.default_settings()
        sub.add_argument("--presets", type=_names, default=defaults.presets,
                         help=f"comma-separated model presets, of {sorted(config_lib.PRESETS)}")
        sub.add_argument("--dtypes", type=_names, default=defaults.dtypes,
                         help=f"comma-separated compute dtypes, of {sorted(PARAM_DTYPE_FOR)}")
        sub.add_argument("--batch", type=int, default=defaults.batch)
        sub.add_argument("--frames", type=int, default=defaults.frames)
        sub.add_argument("--repeats", type=int, default=defaults.repeats, help="timed runs after one warm-up")
        sub.add_argument("--seed", type=int, default=defaults.seed)
        sub.add_argument("--workers", type=_counts, default=defaults.workers,
                         help="data: comma-separated grain worker counts")
        sub.add_argument("--records", type=int, default=defaults.records,
                         help="data: synthetic records to build when --data_dir is not given")
        sub.add_argument("--stage", default=defaults.stage, help="data: stage config under configs/stages")
        sub.add_argument("--data_dir", default=defaults.data_dir, help="data: a built data dir to read instead")
        sub.add_argument("--meshes", type=_counts, default=defaults.meshes,
                         help="train: comma-separated mesh sizes (devices on the fsdp axis)")
        sub.add_argument("--batches", type=_counts, default=defaults.batches,
                         help="stream, codec: comma-separated batch sizes (concurrent sessions)")
        sub.add_argument("--seconds", type=float, default=defaults.seconds, help="codec: seconds of audio per call")
        sub.add_argument("--steps", type=int, default=defaults.steps, help="stream: timed frames per case")
        sub.add_argument("--slots", type=_counts, default=defaults.slots,
                         help="serve: comma-separated server slot counts (as many clients each)")
        sub.add_argument("--out", default=f"bench_results/{name}.json", help="JSON report path")
    return parser.parse_args(argv)


def _request_host_devices(count: int) -> None:
    """Asks XLA for `count` host (CPU) devices unless XLA_FLAGS already sets a count. XLA reads the flag when
    jax first starts a backend (the first `jax.devices()` or computation, not `import jax`), so this must run
    before anything touches a device; on a GPU or TPU machine it only adds fake CPU devices nobody uses."""
    flags = os.environ.get("XLA_FLAGS", "")
    if count <= 1 or "xla_force_host_platform_device_count" in flags:
        return
    try:
        from jax._src import xla_bridge  # private, but the only way to ask whether it is too late

        started = xla_bridge.backends_are_initialized()
    except (ImportError, AttributeError):
        started = False
    if started:
        progress(f"warning: jax has already started its backends; cannot add {count} fake CPU devices")
        return
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()
    progress(f"XLA_FLAGS={os.environ['XLA_FLAGS']} ({count} fake CPU devices sharing this machine's cores)")


def main(argv: Sequence[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.benchmark == "train":  # before anything starts a jax backend
        _request_host_devices(max(args.meshes, default=1))
    # Compile times must be real compiles: never read or write a persistent cache (before any compile, since
    # jax decides once per process whether the cache is used).
    jax.config.update("jax_enable_compilation_cache", False)
    try:
        settings = Settings(presets=args.presets, dtypes=args.dtypes, batch=args.batch, frames=args.frames,
                            repeats=args.repeats, seed=args.seed, workers=args.workers, records=args.records,
                            stage=args.stage, data_dir=args.data_dir, meshes=args.meshes,
                            batches=args.batches, seconds=args.seconds, steps=args.steps, slots=args.slots)
    except ValueError as error:
        sys.exit(f"error: {error}")
    run_benchmark(args.benchmark, settings, args.out, command=shlex.join(["python", "-m", "launch.bench", *argv]))


if __name__ == "__main__":
    main()
