"""`launch.aot train`'s report: the stage step `launch.train` runs, compiled for a topology from abstract arrays,
with its memory, collectives and loops, and the step-time and MFU estimate from probe compiles whose loops are
unrolled (the algebra is in `launch/aot.py`'s docstring; `loop_estimate` is it).
"""

from __future__ import annotations

from typing import Any, Callable

from launch.aot_compile import NO_WINDOWED_EINSUM, Compiled, compile_lowered, device_facts, memory_line, say


def _smallest_divisor_above_one(n: int) -> int:
    return next(d for d in range(2, n + 1) if n % d == 0)


def loop_estimate(
    p1: float, pd: float, d: int, layers: int, accumulation: int = 1, pa: float | None = None, a: int = 2
) -> float:
    """A whole step's cost from probes in which XLA counted each loop body once (see `launch/aot.py`'s docstring).

    p1: the program as it is; pd: its layer loop unrolled d-fold; pa: its micro-batch loop unrolled a-fold
    (only with accumulation > 1)."""
    layer = (pd - p1) / (d - 1)
    if accumulation == 1:
        return p1 + (layers - 1) * layer
    micro = (pa - p1) / (a - 1)  # one micro-batch with one layer
    outside = p1 - micro
    return outside + accumulation * micro + accumulation * (layers - 1) * layer


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


def train_report(config, devices, estimate: bool = True, progress: Callable[[str], None] = say) -> dict[str, Any]:
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
    progress(f"  compiled in {main.seconds:.0f} s: {memory_line(report)}")

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
