"""The `train` benchmark: the sharded, AOT-compiled train step for every preset x mesh size x dtype.

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
"""

from __future__ import annotations

import functools
import os
import re
import resource
import statistics
import sys
import time
from typing import Any

import jax
import numpy as np

from flmjax import config as config_lib
from flmjax import model, presets, sharding
from flmjax.train import loss as loss_lib
from flmjax.train import metrics
from flmjax.train import optimizer as optimizer_lib
from flmjax.train import step as step_lib
from launch.bench_common import Benchmark, Column, Settings, fixed, memory_bytes, progress, random_params, significant

# Compute dtype -> param dtype for training: params and optimizer state stay float32 (the master copy).
TRAIN_PARAM_DTYPE_FOR = {"float32": "float32", "bfloat16": "float32"}
TRAIN_DEFAULT_MESHES = (1, 8)
TRAIN_FLOPS_NOTE = (
    "flops_formula: model_flops_per_frame (3 x forward matmul FLOPs) x batch x frames; "
    "flops_xla_unrolled: compiled cost_analysis() of the same step with scan_layers=False on one "
    "device, compiled once per preset x dtype (XLA counts a scanned layer loop's body once, and a "
    "partitioned program's count is per device)"
)


def _tokens_per_frame(config: config_lib.ModelConfig) -> int:
    """Tokens one frame carries: its text token plus the speak and listen codebooks (1 + 2 x 8 = 17)."""
    return 1 + 2 * config.aud_channel


def _train_config(preset: str, dtype: str) -> config_lib.ModelConfig:
    return presets.preset(preset, dtype=dtype, param_dtype=TRAIN_PARAM_DTYPE_FOR[dtype])


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
    return sharding.make_mesh((1, devices, 1), devices=jax.devices()[:devices])


def _peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # bytes on macOS, KiB on Linux


@functools.lru_cache(maxsize=None)
def _device_peak() -> tuple[float, str]:
    """`metrics.peak_flops_per_device()` of the first device, measured (on CPU) once per process."""
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
    unrolled = config.replace(scan_layers=False)
    mesh = _train_mesh(1)
    compiled = step_lib.compile_train_step(
        unrolled, loss_config, tx, step_lib.state_shardings(unrolled, tx, mesh), mesh, settings.batch, settings.frames
    )
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
    return (
        f"skipped: {devices} device(s) x {per_device / 2**30:.2f} GiB (compiled temp + argument + output - "
        f"aliased) = {devices * per_device / 2**30:.1f} GiB of host memory; {available / 2**30:.1f} GiB "
        "available"
    )


def _bench_train_case(
    preset: str,
    dtype: str,
    devices: int,
    settings: Settings,
    tx,
    loss_config,
    xla_flops: float | None,
    xla_compile_s: float,
    xla_loops: int | None,
) -> dict[str, Any]:
    batch, frames = settings.batch, settings.frames
    config = _train_config(preset, dtype)
    mesh = _train_mesh(devices)
    shardings = step_lib.state_shardings(config, tx, mesh)
    compiled = step_lib.compile_train_step(config, loss_config, tx, shardings, mesh, batch, frames)
    memory = memory_bytes(compiled.memory)
    skipped = _host_memory_problem(memory, devices)
    progress(
        f"  compile (lower + compile) {compiled.compile_seconds:.2f} s; "
        + (skipped if skipped else f"timing 1 warm-up + {settings.repeats} steps")
    )
    times, loss = [], None
    if not skipped:
        # Params drawn on the host (init_params alone takes 10+ s to compile on a small CPU); timing does not
        # depend on their values.
        params = random_params(config, settings.seed)
        state = step_lib.init_state_sharded(config, tx, jax.random.key(settings.seed), shardings, params=params)
        del params
        batch_arrays = jax.device_put(
            _random_train_batch(config, batch, frames, settings.seed), step_lib.batch_shardings(mesh)
        )
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
        "benchmark": "train",
        "preset": preset,
        "dtype": dtype,
        "param_dtype": config.param_dtype,
        "devices": devices,
        "mesh_shape": dict(mesh.shape),
        "batch": batch,
        "frames": frames,
        "params_total": sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(model.abstract_params(config))),
        "skipped": skipped,
        "compile_s": compiled.compile_seconds,
        "repeats": settings.repeats,
        "times_s": times,
        "median_s": median_s,
        "min_s": min(times, default=None),
        "final_loss": loss,
        "frames_per_s": frames_per_s,
        "tokens_per_frame": _tokens_per_frame(config),
        "tokens_per_s": per_step(_tokens_per_frame(config) * batch * frames),
        **memory,
        "compiled_bytes": None if None in parts else sum(parts),
        "peak_rss_bytes": _peak_rss_bytes(),
        "flops_formula": flops_formula,
        "flops_xla_unrolled": xla_flops,
        "xla_unrolled_compile_s": xla_compile_s,
        "xla_unrolled_while_loops": xla_loops,
        "flops_formula_over_xla": None if not xla_flops else flops_formula / xla_flops,
        "flops_xla_scanned_per_device": compiled.flops,
        "achieved_flops_per_s": per_step(flops_formula),
        "peak_flops_per_device": peak,
        "peak_flops_source": peak_source,
        "mfu": None if median_s is None else flops_formula / median_s / (peak * devices),
    }


def run_train_bench(settings: Settings) -> list[dict[str, Any]]:
    """One row per preset x mesh size x dtype: compile and step times, throughput, memory, FLOPs and MFU of
    the sharded train step."""
    problems = [
        f"a {n}-device mesh needs {n} devices; there are {jax.device_count()} (on CPU, run through "
        f"`python -m launch.bench train`, or set XLA_FLAGS=--xla_force_host_platform_device_count={n})"
        for n in settings.meshes
        if n > jax.device_count()
    ]
    problems += [
        f"batch {settings.batch} does not divide over a {n}-device mesh" for n in settings.meshes if settings.batch % n
    ]
    problems += [
        f"{settings.frames} frames exceed {p}'s max_position_embeddings "
        f"{_train_config(p, 'float32').max_position_embeddings}"
        for p in settings.presets
        if settings.frames > _train_config(p, "float32").max_position_embeddings
    ]
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
                progress(
                    f"[train {len(rows) + 1}/{cases}] {preset} {dtype} (params "
                    f"{TRAIN_PARAM_DTYPE_FOR[dtype]}), mesh of {devices} device(s), batch {settings.batch} x "
                    f"{settings.frames} frames"
                )
                rows.append(_bench_train_case(preset, dtype, devices, settings, tx, loss_config, *xla))
    return rows


def train_notes(settings: Settings, rows: list[dict[str, Any]]) -> dict[str, Any]:
    device = jax.devices()[0]
    fake = device.platform == "cpu" and jax.device_count() > 1
    devices = (
        f"{jax.device_count()} fake CPU devices (--xla_force_host_platform_device_count) sharing the same "
        f"{os.cpu_count()} cores: a bigger mesh shows partitioning overhead, not parallel speed-up"
        if fake
        else f"{jax.device_count()} x {device.device_kind}"
    )
    sources = sorted({row["peak_flops_source"] for row in rows})
    notes = [
        f"devices: {devices}",
        "tokens/s = frames/s x 17 (per frame: 1 text token + 8 speak + 8 listen audio codes)",
        "compiled MiB: temp + argument + output bytes of the compiled step, per device (the donated state "
        "counts in both argument and output); peak RSS: the whole process's so far",
        "formula GFLOP: model_flops_per_frame x batch x frames; XLA GFLOP: the same step with "
        "scan_layers=False, compiled on one device; MFU = formula FLOPs / median / (peak per device x "
        "devices)",
        *(f"peak: {source}" for source in sources),
        *(
            f"{preset}: XLA GFLOP counts each of the {loops} while loops left in the scan_layers=False step "
            "once: it is too low"
            for preset, loops in sorted({(row["preset"], row["xla_unrolled_while_loops"]) for row in rows})
            if loops
        ),
        *(
            f"{row['preset']} {row['dtype']} on {row['devices']} device(s) {row['skipped']}"
            for row in rows
            if row["skipped"]
        ),
    ]
    return {
        "notes": notes,
        "fake_cpu_devices": fake,
        "param_dtype_for": TRAIN_PARAM_DTYPE_FOR,
        "tokens_per_frame": 17,
        "flops_note": TRAIN_FLOPS_NOTE,
    }


TRAIN_COLUMNS = (
    Column("preset", "preset"),
    Column("compute", "dtype"),
    Column("devices", "devices"),
    Column("compile s", "compile_s", fixed(2)),
    Column("median s", "median_s", fixed(3)),
    Column("min s", "min_s", fixed(3)),
    Column("frames/s", "frames_per_s", fixed(1)),
    Column("tokens/s", "tokens_per_s", fixed(0)),
    Column("compiled MiB", "compiled_bytes", fixed(1, 1 / 2**20)),
    Column("peak RSS MiB", "peak_rss_bytes", fixed(0, 1 / 2**20)),
    Column("formula GFLOP", "flops_formula", significant(4, 1e-9)),
    Column("XLA GFLOP", "flops_xla_unrolled", significant(4, 1e-9)),
    Column("formula/XLA", "flops_formula_over_xla", fixed(3)),
    Column("GFLOP/s", "achieved_flops_per_s", fixed(1, 1e-9)),
    Column("peak GFLOP/s/dev", "peak_flops_per_device", fixed(1, 1e-9)),
    Column("MFU %", "mfu", fixed(1, 100)),
)

BENCHMARK = Benchmark(
    run_train_bench,
    TRAIN_COLUMNS,
    notes=train_notes,
    defaults=(("dtypes", ("float32",)), ("batch", 8), ("meshes", TRAIN_DEFAULT_MESHES)),
)
