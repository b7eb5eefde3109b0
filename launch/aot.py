"""Compile for a TPU slice you do not have: per-chip memory, XLA-estimated step time and MFU, collectives.

    python -m launch.aot train --topology v5p:4x4x4 --config configs/pods/v5p_64.py:stage4_duplex_leading \
        [--num_slices 2] [--config.x=y ...] [--out REPORT.json] [--sweep]
    python -m launch.aot stream --topology v5e:2x4 --model flm_audio_7b --batch 1,8,64 --max_frames 3750 \
        [--mesh data=1,tensor=8] [--out REPORT.json]

`train` compiles exactly the step `launch.train` runs for the config (`flmjax.train.loop.stage_step`: the same
model, loss, optimizer, state and batch shardings, donation and accumulation) for the devices of the topology
(`flmjax.hardware.topology_devices`), from abstract arrays only: no params are allocated, no data is read.
`stream` compiles the sharded streaming step (`flmjax.infer.stream`) the same way, per batch size.

What the report holds, per device unless it says otherwise:
- `memory` from the compiler's memory analysis of the real program; `fits` against the HBM the compiler
  itself allows one program (`hbm_bytes`, read from its own refusal of an oversized program). A program that
  does not fit gets a report too, with the compiler's required bytes, and the command exits 1.
- `collectives`: count and bytes per kind per step, from the optimised HLO (loop bodies times their trips).
- Estimates, never measurements: `estimated_step_s` is XLA's cost model (`cost_analysis()["optimal_seconds"]`).
  That model counts a `while` loop's body once whatever its trip count, and on TPU the SPMD partitioner turns
  sharded matmuls into loops too (windowed einsums), so the program's own figure is that of one layer, one
  micro-batch, and a fraction of some matmuls. The estimate therefore comes from probe compiles of the same
  step with windowed einsums off: P1 (loops as they are), Pd (the layer loop unrolled d-fold) and, with
  accumulation, Pa (the micro-batch loop unrolled a-fold), which give one layer's cost T = (Pd - P1) / (d - 1),
  one micro-batch's (m + T) = (Pa - P1) / (a - 1) and the rest O = P1 - (m + T), then
  step = O + A (m + T) + A (L - 1) T for A micro-batches of L layers. The same for XLA's FLOPs (`flops_xla`).
  `tests/test_aot.py` checks the method against a fully unrolled compile of a small model.
- `flops_formula` is `flmjax.train.step.model_flops_per_frame` x frames per step (whole slice);
  `estimated_mfu` = flops_formula / (estimated_step_s x devices x the device's peak bf16 FLOP/s from
  `flmjax.hardware.CHIPS`).
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # compile for the topology; claim no local accelerator

import dataclasses  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import Any, Callable, Sequence  # noqa: E402

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from flmjax.errors import one_line  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config",
    None,
    "train: a stage config, e.g. configs/pods/v5p_64.py:stage1_post_"
    "train_trailing or configs/stages/stage4_duplex_leading.py",
    lock_config=True,
)
flags.DEFINE_string("topology", None, "TPU topology to compile for, GENERATION:SHAPE (v5p:4x4x4, v5e:16x16, ...)")
flags.DEFINE_integer("num_slices", 1, "slices of that topology joined by the data-centre network (multi-slice)")
flags.DEFINE_string("out", None, "write the report (JSON) here")
flags.DEFINE_bool("sweep", False, "train: try mesh shapes x remat policies x micro-batch sizes, ranked by MFU")
flags.DEFINE_string("sweep_tensor", "1,2,4", "sweep: tensor-parallel sizes to try")
flags.DEFINE_string("sweep_remat", "full,attention,dots_no_batch", "sweep: remat policies to try")
flags.DEFINE_string("sweep_micro_batch", "1,2", "sweep: per-device micro-batch sizes (sequences) to try")
flags.DEFINE_bool("estimate", True, "train: also compile the probes behind the step-time estimate")
flags.DEFINE_string("model", "flm_audio_7b", "stream: a preset name or a released checkpoint folder")
flags.DEFINE_string("batch", "1,8,64", "stream: batch sizes (sessions) to compile")
flags.DEFINE_integer("max_frames", 3750, "stream: KV-cache frames per session (3750 = 5 minutes)")
flags.DEFINE_string(
    "mesh",
    None,
    "stream: mesh sizes, e.g. data=1,tensor=8 (default: tensor over every device "
    "the model's kv heads allow, data over the rest)",
)
flags.DEFINE_string("dtype", "bfloat16", "stream: compute, weight and cache dtype")

NO_WINDOWED_EINSUM = {
    "xla_tpu_enable_windowed_einsum_for_all_gather": False,
    "xla_tpu_enable_windowed_einsum_for_reduce_scatter": False,
}
GIB = 2**30


class AotError(ValueError):
    """A request that cannot be compiled as asked; the message names the value."""


# ---------------------------------------------------------------------- shared pieces
def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


@dataclasses.dataclass
class Compiled:
    """One compile: the program (None when the compiler refused it) and what XLA says about it."""

    compiled: Any
    seconds: float
    memory: dict[str, int | None]
    cost: dict[str, float | None]
    error: str | None = None
    required_bytes: int | None = None


def compile_lowered(lowered, compiler_options: dict | None = None) -> Compiled:
    """Compiles `lowered`; an out-of-memory refusal becomes a result with the compiler's required bytes."""
    from flmjax import compiled as compiled_lib
    from flmjax import hardware

    start = time.perf_counter()
    try:
        compiled = lowered.compile(compiler_options=compiler_options) if compiler_options else lowered.compile()
    except Exception as error:  # noqa: BLE001 - XLA raises JaxRuntimeError/XlaRuntimeError
        message = str(error)
        if "RESOURCE_EXHAUSTED" not in message:
            raise
        required, _ = hardware.out_of_memory_bytes(message)
        empty = {key: None for key in ("argument", "output", "temp", "alias", "code", "total")}
        return Compiled(
            None,
            time.perf_counter() - start,
            empty,
            {"flops": None, "optimal_seconds": None, "bytes_accessed": None},
            error=_first_line(error),
            required_bytes=required,
        )
    return Compiled(compiled, time.perf_counter() - start, compiled_lib.memory(compiled), compiled_lib.cost(compiled))


def _smallest_divisor_above_one(n: int) -> int:
    return next(d for d in range(2, n + 1) if n % d == 0)


def loop_estimate(
    p1: float, pd: float, d: int, layers: int, accumulation: int = 1, pa: float | None = None, a: int = 2
) -> float:
    """A whole step's cost from probes in which XLA counted each loop body once (see the module docstring).

    p1: the program as it is; pd: its layer loop unrolled d-fold; pa: its micro-batch loop unrolled a-fold
    (only with accumulation > 1)."""
    layer = (pd - p1) / (d - 1)
    if accumulation == 1:
        return p1 + (layers - 1) * layer
    micro = (pa - p1) / (a - 1)  # one micro-batch with one layer
    outside = p1 - micro
    return outside + accumulation * micro + accumulation * (layers - 1) * layer


def device_facts(devices) -> dict[str, Any]:
    from flmjax import hardware

    chip = hardware.device_chip(devices[0])
    return {
        "device_kind": devices[0].device_kind,
        "devices": len(devices),
        "slices": hardware.slice_count(devices),
        "device": None if chip is None else dataclasses.asdict(chip),
        "hbm_bytes": hardware.compiler_hbm_bytes(devices[0]),
    }


def _memory_line(report: dict[str, Any]) -> str:
    memory, hbm = report["memory"], report["hbm_bytes"]
    if memory.get("total") is None:
        return f"needs {report['required_bytes'] / GIB:.2f} GiB of {hbm / GIB:.2f} GiB HBM"
    return f"{memory['total'] / GIB:.2f} GiB of {hbm / GIB:.2f} GiB HBM ({memory['total'] / hbm:.0%})"


# ---------------------------------------------------------------------- train
def _stage_summary(config, spec) -> dict[str, Any]:
    data_parallel = spec.mesh.shape["data"] * spec.mesh.shape["fsdp"]
    micro = spec.global_batch_size // spec.accumulation_steps
    return {
        "stage": config.stage,
        "model": config.model,
        "mesh": dict(spec.mesh.shape),
        "global_batch_size": spec.global_batch_size,
        "sequence_length": spec.sequence_length,
        "accumulation_steps": spec.accumulation_steps,
        "micro_batch_per_data_shard": micro // data_parallel,
        "remat_policy": spec.model_config.remat_policy,
        "attention_chunk": spec.model_config.attention_chunk,
        "loss_chunk_frames": spec.loss_config.chunk_frames,
        "dtype": spec.model_config.dtype,
        "param_dtype": spec.model_config.param_dtype,
        "scan_layers": spec.model_config.scan_layers,
    }


def train_report(config, devices, estimate: bool = True, progress: Callable[[str], None] = _say) -> dict[str, Any]:
    """Compiles the stage step of `config` for `devices` (plus the estimate's probes) and reports on it."""
    from flmjax import compiled as compiled_lib
    from flmjax.train import loop
    from flmjax.train import step as step_lib

    spec = loop.stage_step(config, devices)
    facts = device_facts(devices)
    report = {"command": "train", **facts, **_stage_summary(config, spec)}
    progress(
        f"compiling {config.stage} ({config.model}, mesh {dict(spec.mesh.shape)}, batch "
        f"{spec.global_batch_size} x {spec.sequence_length}, accumulation {spec.accumulation_steps}, remat "
        f"{spec.model_config.remat_policy}) for {facts['devices']} x {facts['device_kind']}"
    )
    main = compile_lowered(spec.lower())
    report.update(compile_s=main.seconds, memory=main.memory, error=main.error, required_bytes=main.required_bytes)
    report["fits"] = (
        main.error is None and facts["hbm_bytes"] is not None and main.memory["total"] <= facts["hbm_bytes"]
    )
    if main.compiled is not None:
        summary = compiled_lib.hlo_summary(main.compiled.as_text())
        report.update(
            collectives=summary.collectives,
            loops=summary.loops,
            flops_xla_loops_once_per_device=main.cost["flops"],
            optimal_seconds_loops_once=main.cost["optimal_seconds"],
        )
        report["hbm_free_fraction"] = 1 - main.memory["total"] / facts["hbm_bytes"] if facts["hbm_bytes"] else None
    progress(f"  compiled in {main.seconds:.0f} s: {_memory_line(report)}")

    frames = spec.global_batch_size * spec.sequence_length
    formula = step_lib.model_flops_per_frame(spec.model_config, spec.sequence_length) * frames
    report.update(frames_per_step=frames, flops_formula=formula)
    if estimate and main.compiled is not None:
        report.update(_train_estimate(spec, facts, formula, frames, progress, main))
    return report


def _loop_trips(compiled) -> list:
    from flmjax import compiled as compiled_lib

    loops = compiled_lib.hlo_summary(compiled.as_text()).loops
    return sorted({loop["trip_count"] for loop in loops}, key=str)


def _train_estimate(spec, facts, formula: float, frames: int, progress, main: Compiled) -> dict[str, Any]:
    model_config = spec.model_config
    layers, accumulation = model_config.num_hidden_layers, spec.accumulation_steps
    scanned = model_config.scan_layers and layers > 1
    d = _smallest_divisor_above_one(layers) if scanned else 1
    a = _smallest_divisor_above_one(accumulation) if accumulation > 1 else 1
    expected = {layers if scanned else 1, accumulation} - {1}
    probes = {"P1": spec.lower()}
    if scanned:
        probes[f"P{d} (layer loop unrolled {d}x)"] = spec.lower(model_config=model_config.replace(scan_unroll=d))
    if accumulation > 1:
        probes[f"Pa (micro-batch loop unrolled {a}x)"] = spec.lower(accumulation_unroll=a)
    results = {}
    for name, lowered in probes.items():
        if name == "P1" and set(_loop_trips(main.compiled)) <= expected:
            # The program itself has no loops but ours (no windowed einsums): it is P1.
            results[name] = {
                "compile_s": 0.0,
                **main.cost,
                "loop_trip_counts": _loop_trips(main.compiled),
                "note": "the compiled step itself (it has no windowed-einsum loops)",
            }
            continue
        progress(f"  estimate probe {name} (windowed einsums off)")
        result = compile_lowered(lowered, NO_WINDOWED_EINSUM)
        if result.compiled is None:
            return {"estimate_error": f"probe {name} did not compile: {result.error}"}
        results[name] = {"compile_s": result.seconds, **result.cost, "loop_trip_counts": _loop_trips(result.compiled)}
        progress(f"    {result.seconds:.0f} s: optimal_seconds {result.cost['optimal_seconds']:.4g}")
    values = list(results.values())

    def extrapolate(key):
        p1 = values[0][key]
        if p1 is None:
            return None
        pd = values[1][key] if scanned else None
        pa = values[-1][key] if accumulation > 1 else None
        if not scanned:  # layers unrolled already: only the micro-batch loop to scale
            return p1 if accumulation == 1 else loop_estimate(p1, p1, 2, 1, accumulation, pa, a)
        return loop_estimate(p1, pd, d, layers, accumulation, pa, a)

    step_s = extrapolate("optimal_seconds")
    flops_per_device = extrapolate("flops")
    devices = facts["devices"]
    peak = facts["device"]["peak_bf16_flops"] if facts["device"] else None
    expected = {layers, layers // d, accumulation, accumulation // a} - {1}
    unexpected = sorted({t for v in values for t in v["loop_trip_counts"]} - expected - {1}, key=str)
    return {
        "estimated_step_s": step_s,
        "flops_xla_per_device": flops_per_device,
        "flops_xla": None if flops_per_device is None else flops_per_device * devices,
        "estimated_frames_per_s_per_chip": None if not step_s else frames / step_s / devices,
        "estimated_mfu": None if not (step_s and peak) else formula / (step_s * devices * peak),
        "estimate": {
            "method": "XLA cost model (optimal_seconds), loops scaled by their trips from probe compiles "
            "with windowed einsums off: step = O + A (m + T) + A (L - 1) T",
            "layers": layers,
            "accumulation_steps": accumulation,
            "layer_unroll": d,
            "accumulation_unroll": a,
            "probes": results,
            "unexpected_loop_trip_counts": unexpected,
        },
    }


# ---------------------------------------------------------------------- printing
def _fmt(value, scale=1.0, digits=2, suffix=""):
    return "-" if value is None else f"{value * scale:.{digits}f}{suffix}"


def train_table(reports: Sequence[dict[str, Any]]) -> str:
    header = (
        "stage",
        "mesh d/f/t",
        "batch x frames",
        "micro/shard",
        "accum",
        "remat",
        "GiB/chip",
        "HBM GiB",
        "fits",
        "step s (est.)",
        "frames/s/chip",
        "MFU (est.)",
        "compile s",
    )
    rows = []
    for r in reports:
        mesh = r["mesh"]
        total = r["memory"].get("total")
        rows.append(
            (
                r["stage"],
                f"{mesh['data']}/{mesh['fsdp']}/{mesh['tensor']}",
                f"{r['global_batch_size']} x {r['sequence_length']}",
                str(r["micro_batch_per_data_shard"]),
                str(r["accumulation_steps"]),
                r["remat_policy"],
                _fmt(total if total is not None else r.get("required_bytes"), 1 / GIB)
                + ("" if total is not None else " (needed)"),
                _fmt(r["hbm_bytes"], 1 / GIB),
                "yes" if r["fits"] else "NO",
                _fmt(r.get("estimated_step_s"), 1, 3),
                _fmt(r.get("estimated_frames_per_s_per_chip"), 1, 0),
                _fmt(r.get("estimated_mfu"), 100, 1, "%"),
                _fmt(r["compile_s"], 1, 0),
            )
        )
    return _table(header, rows)


def _table(header, rows) -> str:
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(line, widths)) for line in (header, *rows)]
    return "\n".join(lines)


def collectives_table(report: dict[str, Any]) -> str:
    rows = [
        (kind, f"{v['count']:.0f}", f"{v['bytes'] / GIB:.3f}", str(v["static"]))
        for kind, v in (report.get("collectives") or {}).items()
    ]
    return _table(("collective", "per step", "GiB per step", "in HLO"), rows)


# ---------------------------------------------------------------------- sweep
@dataclasses.dataclass(frozen=True)
class SweepAxes:
    tensor: tuple[int, ...] = (1, 2, 4)  # tensor-parallel sizes
    remat: tuple[str, ...] = ("full", "attention", "dots_no_batch")  # remat policies
    micro_batch: tuple[int, ...] = (1, 2)  # sequences per data-parallel device per micro-batch


def sweep_configs(config, devices, axes: SweepAxes, progress=_say) -> list[Any]:
    """Variants of `config`: tensor sizes x remat policies x per-device micro-batches, the global batch kept
    (accumulation makes up the difference); a variant whose numbers do not divide is left out, with a line."""
    from flmjax import hardware

    tensors, remats, micros = axes.tensor, axes.remat, axes.micro_batch
    slices = hardware.slice_count(devices)
    variants = []
    for tensor, remat, micro in itertools.product(tensors, remats, micros):
        data_parallel = len(devices) // tensor if len(devices) % tensor == 0 else 0
        if not data_parallel or config.data.global_batch_size % (micro * data_parallel):
            progress(
                f"  left out: tensor {tensor}, micro-batch {micro}: the global batch "
                f"{config.data.global_batch_size} does not split into micro-batches of {micro} sequences per "
                f"data-parallel device over {len(devices)} devices"
            )
            continue
        variant = config.copy_and_resolve_references()
        variant.unlock()
        variant.mesh.data, variant.mesh.fsdp, variant.mesh.tensor = slices, -1, tensor
        variant.model_overrides.remat_policy = remat
        variant.train.accumulation_steps = config.data.global_batch_size // (micro * data_parallel)
        variant.lock()
        variants.append(variant)
    return variants


def run_sweep(config, devices, axes: SweepAxes = SweepAxes(), progress=_say) -> list[dict[str, Any]]:
    """Every variant compiled (and, where it fits, estimated); those that fit first, by estimated MFU."""
    from flmjax import sharding

    reports = []
    for variant in sweep_configs(config, devices, axes, progress):
        try:
            reports.append(train_report(variant, devices, estimate=True, progress=progress))
        except (sharding.ShardingError, ValueError) as error:
            progress(f"  left out: tensor {variant.mesh.tensor}: {_first_line(error)}")
    reports.sort(key=lambda r: (not r["fits"], -(r.get("estimated_mfu") or 0)))
    return reports


# ---------------------------------------------------------------------- main
def _topology_devices():
    from flmjax import hardware

    if not FLAGS.topology and FLAGS.config is not None and FLAGS.config.get("topology"):
        FLAGS.topology = FLAGS.config.topology  # a pod config names its slice
    if not FLAGS.topology:
        raise AotError("--topology is required (e.g. --topology v5p:4x4x4)")
    return hardware.topology_devices(FLAGS.topology, FLAGS.num_slices)


def _write(report: Any) -> None:
    if FLAGS.out:
        from flmjax.files import write_atomically

        text = json.dumps(report, indent=2, sort_keys=True, default=str)

        def write(path):
            with open(path, "w") as f:
                f.write(text + "\n")

        write_atomically(FLAGS.out, write)
        _say(f"wrote {FLAGS.out}")


def run_train() -> int:
    if FLAGS.config is None:
        raise AotError("train needs --config (a stage config, e.g. configs/pods/v5p_64.py:stage4_duplex_leading)")
    devices = _topology_devices()
    meta = {"topology": FLAGS.topology, "num_slices": FLAGS.num_slices}
    if FLAGS.sweep:
        try:
            axes = SweepAxes(
                tuple(int(x) for x in FLAGS.sweep_tensor.split(",")),
                tuple(FLAGS.sweep_remat.split(",")),
                tuple(int(x) for x in FLAGS.sweep_micro_batch.split(",")),
            )
        except ValueError:
            raise AotError("--sweep_tensor and --sweep_micro_batch take comma-separated integers") from None
        from flmjax.config import REMAT_POLICIES

        unknown = sorted(set(axes.remat) - set(REMAT_POLICIES))
        if unknown:
            raise AotError(f"--sweep_remat: unknown remat policies {unknown}; expected some of {REMAT_POLICIES}")
        reports = [{**meta, **r} for r in run_sweep(FLAGS.config, devices, axes)]
        print(train_table(reports))
        _write({"sweep": reports})
        return 0 if any(r["fits"] for r in reports) else 1
    report = {**meta, **train_report(FLAGS.config, devices, estimate=FLAGS.estimate)}
    print(train_table([report]))
    if report.get("collectives"):
        print(collectives_table(report))
    _write(report)
    if not report["fits"]:
        needed = report["memory"]["total"] if report["memory"]["total"] is not None else report["required_bytes"]
        over = "" if needed is None else f" by {(needed - report['hbm_bytes']) / GIB:.2f} GiB"
        print(
            f"does not fit: needs {_fmt(needed, 1 / GIB)} GiB per device, the compiler allows "
            f"{_fmt(report['hbm_bytes'], 1 / GIB)} GiB: over{over}",
            file=sys.stderr,
        )
        return 1
    return 0


def main(argv) -> None:
    if len(argv) != 2 or argv[1] not in ("train", "stream"):
        raise app.UsageError("usage: python -m launch.aot train|stream --topology NAME [...] (see --help)")
    if FLAGS.verbosity == 0:
        logging.set_verbosity(logging.WARNING)
    from flmjax import config as config_lib
    from flmjax import hardware, sharding
    from flmjax.train import loop

    known = (AotError, hardware.TopologyError, sharding.ShardingError, config_lib.ConfigError, loop.StageError)
    try:
        code = run_train() if argv[1] == "train" else run_stream()
    except (*known, ValueError) as error:  # ValueError: batch layout, loss and optimizer settings
        print(f"error: {one_line(error)}", file=sys.stderr)
        code = 2
    sys.exit(code)


# ---------------------------------------------------------------------- stream
def stream_model_config(model: str, dtype: str):
    """A preset name or a released checkpoint folder -> the model config, weights and cache in `dtype`."""
    from flmjax import config as config_lib

    if os.path.isdir(model):
        config = config_lib.ModelConfig.from_official(model)
    elif model in config_lib.PRESETS:
        config = config_lib.preset(model)
    else:
        raise AotError(
            f"--model {model!r} is neither a preset ({', '.join(sorted(config_lib.PRESETS))}) nor a "
            "released checkpoint folder"
        )
    return config.replace(dtype=dtype, param_dtype=dtype)


def parse_mesh(text: str) -> dict[str, int]:
    from flmjax import sharding

    sizes = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        name = name.strip()
        if name not in sharding.MESH_AXES or not value.strip().lstrip("-").isdigit():
            raise AotError(
                f"--mesh {text!r}: expected AXIS=SIZE pairs with AXIS one of {sharding.MESH_AXES}, got {part!r}"
            )
        sizes[name] = int(value)
    return sizes


def default_stream_mesh(config, devices) -> dict[str, int]:
    """The widest tensor-parallel size the model divides into (fewer weights per chip), data over the rest."""
    from flmjax import sharding
    from flmjax.infer import stream_sharding

    count = len(devices)
    for tensor in sorted((t for t in range(1, count + 1) if count % t == 0), reverse=True):
        mesh = sharding.make_mesh({"data": count // tensor, "tensor": tensor}, devices)
        try:
            stream_sharding.stream_param_shardings(config, mesh, count // tensor)
        except sharding.ShardingError:
            continue
        return {"data": count // tensor, "tensor": tensor}
    return {"data": count}


def stream_bound_s(config, chip, batch: int, max_frames: int, mesh_shape: dict[str, int]) -> float | None:
    """The per-frame memory-bandwidth bound of one device: its share of the weights (read once per step) and of
    a full KV cache, over its HBM bandwidth (`launch.bench_stream`'s accounting)."""
    import jax.numpy as jnp

    from flmjax import model
    from launch.bench_stream import cache_bytes, weight_bytes_per_frame

    if chip is None:
        return None
    tensor, data = mesh_shape.get("tensor", 1), mesh_shape.get("data", 1) * mesh_shape.get("fsdp", 1)
    weights = weight_bytes_per_frame(config, model.abstract_params(config), batch) / tensor
    slots_per_device = batch / data if batch % data == 0 else batch
    cache = (
        cache_bytes(config, 1, max_frames, jnp.dtype(config.dtype))
        * slots_per_device
        / (tensor if config.num_key_value_heads % tensor == 0 else 1)
    )
    return (weights + cache) / chip["hbm_bandwidth"]


def stream_report(
    config, devices, batch: int, max_frames: int, mesh_shape: dict[str, int], progress: Callable[[str], None] = _say
) -> dict[str, Any]:
    from flmjax import compiled as compiled_lib
    from flmjax import sharding
    from flmjax.infer import SamplingConfig, stream

    mesh = sharding.make_mesh(mesh_shape, devices)
    facts = device_facts(devices)
    report = {
        "command": "stream",
        **facts,
        "model_layers": config.num_hidden_layers,
        "dtype": config.dtype,
        "batch": batch,
        "max_frames": max_frames,
        "mesh": dict(mesh.shape),
        "slots_split_over_data": batch % (mesh.shape["data"] * mesh.shape["fsdp"]) == 0,
    }
    progress(f"compiling the streaming step, batch {batch}, {max_frames}-frame cache, mesh {dict(mesh.shape)}")
    main = compile_lowered(stream.lower_stream_step(config, mesh, batch, max_frames, SamplingConfig()))
    report.update(compile_s=main.seconds, memory=main.memory, error=main.error, required_bytes=main.required_bytes)
    report["fits"] = (
        main.error is None and facts["hbm_bytes"] is not None and main.memory["total"] <= facts["hbm_bytes"]
    )
    progress(f"  compiled in {main.seconds:.0f} s: {_memory_line(report)}")
    if main.compiled is not None:
        report["collectives"] = compiled_lib.hlo_summary(main.compiled.as_text()).collectives
        bound = stream_bound_s(config, facts["device"], batch, max_frames, dict(mesh.shape))
        probes = {}
        for name, auto in (("default layouts", False), ("compiler layouts", True)):
            progress(f"  estimate probe: every loop unrolled, windowed einsums off, params in {name}")
            probe = compile_lowered(
                stream.lower_stream_step(
                    config, mesh, batch, max_frames, SamplingConfig(), unrolled=True, auto_layouts=auto
                ),
                NO_WINDOWED_EINSUM,
            )
            loops = compiled_lib.hlo_summary(probe.compiled.as_text()).loops if probe.compiled is not None else None
            probes[name] = {
                "compile_s": probe.seconds,
                **probe.cost,
                "loops_left": None if loops is None else len(loops),
                "error": probe.error,
            }
            progress(
                f"    {probe.seconds:.0f} s: {_fmt(probe.cost['optimal_seconds'], 1e3)} ms per frame "
                f"(bound {_fmt(bound, 1e3)} ms)"
            )
        frame_s = probes["default layouts"]["optimal_seconds"]
        auto_s = probes["compiler layouts"]["optimal_seconds"]
        report.update(
            estimated_frame_s=frame_s,
            estimated_frame_s_compiler_layouts=auto_s,
            bound_frame_s=bound,
            x_bound=None if not (frame_s and bound) else frame_s / bound,
            x_bound_compiler_layouts=None if not (auto_s and bound) else auto_s / bound,
            real_time=None if frame_s is None else frame_s < FRAME_S,
            estimate={
                "method": "XLA cost model (optimal_seconds) of the step with its layer, codebook "
                "and top-p loops unrolled, windowed einsums off; with the params in "
                "row-major layouts (what stream_step places) and in the layouts the "
                "compiler chooses (a server that places them so once)",
                "probes": probes,
            },
        )
    return report


FRAME_S = 0.08


def stream_table(reports: Sequence[dict[str, Any]]) -> str:
    header = (
        "batch",
        "cache frames",
        "mesh d/t",
        "GiB/chip",
        "HBM GiB",
        "fits",
        "ms/frame (est.)",
        "x bound",
        "ms (compiler layouts)",
        "x bound",
        "bound ms",
        "< 80 ms",
        "compile s",
    )
    rows = []
    for r in reports:
        total = r["memory"].get("total")
        rows.append(
            (
                str(r["batch"]),
                str(r["max_frames"]),
                f"{r['mesh']['data']}/{r['mesh']['tensor']}",
                _fmt(total if total is not None else r.get("required_bytes"), 1 / GIB),
                _fmt(r["hbm_bytes"], 1 / GIB),
                "yes" if r["fits"] else "NO",
                _fmt(r.get("estimated_frame_s"), 1e3),
                _fmt(r.get("x_bound"), 1, 2),
                _fmt(r.get("estimated_frame_s_compiler_layouts"), 1e3),
                _fmt(r.get("x_bound_compiler_layouts"), 1, 2),
                _fmt(r.get("bound_frame_s"), 1e3, 3),
                {True: "yes", False: "NO", None: "-"}[r.get("real_time")],
                _fmt(r["compile_s"], 1, 0),
            )
        )
    return _table(header, rows)


def run_stream() -> int:
    devices = _topology_devices()
    config = stream_model_config(FLAGS.model, FLAGS.dtype)
    try:
        batches = [int(b) for b in FLAGS.batch.split(",")]
    except ValueError:
        raise AotError(f"--batch {FLAGS.batch!r}: expected comma-separated positive integers") from None
    if any(b < 1 for b in batches) or FLAGS.max_frames < 1:
        raise AotError(f"--batch ({FLAGS.batch}) and --max_frames ({FLAGS.max_frames}) must be positive")
    mesh_shape = parse_mesh(FLAGS.mesh) if FLAGS.mesh else default_stream_mesh(config, devices)
    from flmjax import sharding
    from flmjax.infer import stream_sharding

    mesh = sharding.make_mesh(mesh_shape, devices)  # a mesh that does not match the devices fails here
    stream_sharding.stream_param_shardings(config, mesh, batches[0])  # and a model that does not divide over it here
    reports = [
        {
            "topology": FLAGS.topology,
            "num_slices": FLAGS.num_slices,
            "model": FLAGS.model,
            **stream_report(config, devices, batch, FLAGS.max_frames, mesh_shape),
        }
        for batch in batches
    ]
    print(stream_table(reports))
    _write({"stream": reports})
    return 0 if all(r["fits"] for r in reports) else 1


if __name__ == "__main__":
    app.run(main)
