"""Compiling one lowered program for a TPU topology, and what XLA says about it: the per-device memory, the cost
model's figures, and an out-of-memory refusal read as the bytes the compiler wanted. The pieces every
`launch.aot` report shares (`aot_train`, `aot_sweep`, `aot_stream`): the compiler options of the estimate's
probes, the facts of the devices compiled for, the memory line of the progress log, and the error of a request
that cannot be compiled as asked.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Any

NO_WINDOWED_EINSUM = {
    "xla_tpu_enable_windowed_einsum_for_all_gather": False,
    "xla_tpu_enable_windowed_einsum_for_reduce_scatter": False,
}
GIB = 2**30


class AotError(ValueError):
    """A request that cannot be compiled as asked; the message names the value."""


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def first_line(error: BaseException) -> str:
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
            error=first_line(error),
            required_bytes=required,
        )
    return Compiled(compiled, time.perf_counter() - start, compiled_lib.memory(compiled), compiled_lib.cost(compiled))


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


def memory_line(report: dict[str, Any]) -> str:
    memory, hbm = report["memory"], report["hbm_bytes"]
    if memory.get("total") is None:
        return f"needs {report['required_bytes'] / GIB:.2f} GiB of {hbm / GIB:.2f} GiB HBM"
    return f"{memory['total'] / GIB:.2f} GiB of {hbm / GIB:.2f} GiB HBM ({memory['total'] / hbm:.0%})"
