"""`launch.aot stream`'s report: the sharded streaming step (`flmjax.infer.stream`) compiled for a topology per
batch size, with its memory and collectives, the XLA-estimated time per 80 ms frame from unrolled probe compiles,
and the device's memory-bandwidth bound; plus the model and mesh the command compiles for.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from launch.aot_compile import NO_WINDOWED_EINSUM, AotError, compile_lowered, device_facts, memory_line, say
from launch.aot_tables import fmt


def stream_model_config(model: str, dtype: str):
    """A preset name or a released checkpoint folder -> the model config, weights and cache in `dtype`."""
    from flmjax import config as config_lib
    from flmjax import presets

    if os.path.isdir(model):
        config = config_lib.ModelConfig.from_official(model)
    elif model in presets.PRESETS:
        config = presets.preset(model)
    else:
        raise AotError(
            f"--model {model!r} is neither a preset ({', '.join(sorted(presets.PRESETS))}) nor a "
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
    config, devices, batch: int, max_frames: int, mesh_shape: dict[str, int], progress: Callable[[str], None] = say
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
    progress(f"  compiled in {main.seconds:.0f} s: {memory_line(report)}")
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
                f"    {probe.seconds:.0f} s: {fmt(probe.cost['optimal_seconds'], 1e3)} ms per frame "
                f"(bound {fmt(bound, 1e3)} ms)"
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
