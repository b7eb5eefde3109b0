"""`launch.aot train --sweep`: variants of a stage config over tensor-parallel sizes, remat policies and
per-device micro-batch sizes (the global batch kept), each compiled and estimated as `aot_train` does, ranked:
those that fit first, by estimated MFU.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

from launch.aot_compile import first_line, say
from launch.aot_train import train_report


@dataclasses.dataclass(frozen=True)
class SweepAxes:
    tensor: tuple[int, ...] = (1, 2, 4)  # tensor-parallel sizes
    remat: tuple[str, ...] = ("full", "attention", "dots_no_batch")  # remat policies
    micro_batch: tuple[int, ...] = (1, 2)  # sequences per data-parallel device per micro-batch


def sweep_configs(config, devices, axes: SweepAxes, progress=say) -> list[Any]:
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


def run_sweep(config, devices, axes: SweepAxes = SweepAxes(), progress=say) -> list[dict[str, Any]]:
    """Every variant compiled (and, where it fits, estimated); those that fit first, by estimated MFU."""
    from flmjax import sharding

    reports = []
    for variant in sweep_configs(config, devices, axes, progress):
        try:
            reports.append(train_report(variant, devices, estimate=True, progress=progress))
        except (sharding.ShardingError, ValueError) as error:
            progress(f"  left out: tensor {variant.mesh.tensor}: {first_line(error)}")
    reports.sort(key=lambda r: (not r["fits"], -(r.get("estimated_mfu") or 0)))
    return reports
