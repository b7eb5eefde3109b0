"""Accelerator facts, and TPU slices as devices to compile for without owning one.

`CHIPS` is the one table of chip figures in the project (peak bf16 FLOP/s, HBM size and bandwidth, ICI
bandwidth), each with its public source. `topology_devices("v5p:4x4x4")` returns the devices of a TPU slice
from libtpu's topology description, which `jax.jit(...).lower(...).compile()` accepts as if they were
attached: the real XLA TPU compiler runs on this machine and nothing executes (MaxText's `train_compile.py`
does the same). `compiler_hbm_bytes(device)` asks that compiler how much HBM a program may use on one device.

A JAX device is one chip on v5e, v5p and v6e; on v4, libtpu's topology gives one device per TensorCore (two
per chip), so per-device figures are the chip's halved (`Chip.per_device`).
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import math
import os
import re
from typing import Sequence

import jax

from flmjax.errors import UserError


class TopologyError(UserError, ValueError):
    """A TPU topology that cannot be used: unknown name, no libtpu, or a device count that does not fit."""


@dataclasses.dataclass(frozen=True)
class Chip:
    """Public figures of one accelerator chip (bytes, FLOP/s, bytes/s)."""

    name: str
    peak_bf16_flops: float
    hbm_bytes: int
    hbm_bandwidth: float  # bytes/s
    ici_bandwidth: float | None  # bytes/s, one direction, all links of one chip; None: not an ICI chip
    devices_per_chip: int = 1  # JAX devices per chip in libtpu's topology description

    def per_device(self) -> Chip:
        """The figures of one JAX device (a TensorCore where a chip holds two devices)."""
        n = self.devices_per_chip
        return dataclasses.replace(
            self,
            peak_bf16_flops=self.peak_bf16_flops / n,
            hbm_bytes=self.hbm_bytes // n,
            hbm_bandwidth=self.hbm_bandwidth / n,
            ici_bandwidth=None if self.ici_bandwidth is None else self.ici_bandwidth / n,
            devices_per_chip=1,
        )


GIB = 2**30

# Keyed by generation, as topology names spell it. Sources (Cloud TPU system architecture pages):
CHIPS: dict[str, Chip] = {
    # cloud.google.com/tpu/docs/v4: 275 TFLOPs (bf16), HBM2 32 GiB at 1200 GBps. ICI: 6 links of 400 Gbps each
    # way (the TPU v4 paper, ISCA 2023, as summarised at glennklockwood.com/garden/processors/TPUv4).
    "v4": Chip("TPU v4", 275e12, 32 * GIB, 1200e9, 6 * 50e9, devices_per_chip=2),
    # cloud.google.com/tpu/docs/v5e: 197 TFLOPs (bf16), HBM2 16 GB at 819 GBps, ICI 1600 Gbps.
    "v5e": Chip("TPU v5e", 197e12, 16 * GIB, 819e9, 1600e9 / 8),
    # cloud.google.com/tpu/docs/v5p: 459 TFLOPs (bf16), HBM2e 95 GiB at 2765 GBps, ICI 4800 Gbps.
    "v5p": Chip("TPU v5p", 459e12, 95 * GIB, 2765e9, 4800e9 / 8),
    # cloud.google.com/tpu/docs/v6e: 918 TFLOPs (bf16), HBM 32 GB at 1638 GBps, ICI 800 GBps bidirectional.
    "v6e": Chip("TPU v6e", 918e12, 32 * GIB, 1638e9, 800e9 / 2),
    # nvidia.com H100 / H200 / A100 datasheets (SXM, dense bf16).
    "h100": Chip("NVIDIA H100", 989e12, 80 * 10**9, 3.35e12, None),
    "h200": Chip("NVIDIA H200", 989e12, 141 * 10**9, 4.8e12, None),
    "a100": Chip("NVIDIA A100", 312e12, 80 * 10**9, 2.04e12, None),
}

# `device_kind` prefixes (as JAX reports them) -> CHIPS keys; the longest matching prefix wins.
_DEVICE_KINDS = {
    "TPU v4": "v4",
    "TPU v5 lite": "v5e",
    "TPU v5e": "v5e",
    "TPU v5p": "v5p",
    "TPU v5": "v5p",
    "TPU v6 lite": "v6e",
    "TPU v6e": "v6e",
    "NVIDIA H100": "h100",
    "NVIDIA H200": "h200",
    "NVIDIA A100": "a100",
}
TPU_GENERATIONS = ("v4", "v5e", "v5p", "v6e")
LIBTPU_INSTALL = "pip install -e '.[tpu]' (libtpu==0.0.42.*, the version jax 0.10.2 pins)"


def chip_for_kind(device_kind: str) -> Chip | None:
    """The chip of a JAX `device_kind` ("TPU v5 lite", "NVIDIA H100 80GB HBM3", ...), or None."""
    for prefix in sorted(_DEVICE_KINDS, key=len, reverse=True):
        if device_kind.startswith(prefix):
            return CHIPS[_DEVICE_KINDS[prefix]]
    return None


def device_chip(device: jax.Device) -> Chip | None:
    """The per-device figures of `device` (see `Chip.per_device`), or None for an unknown kind."""
    chip = chip_for_kind(getattr(device, "device_kind", ""))
    if chip is None:
        return None
    if chip.devices_per_chip > 1 and getattr(device, "num_cores", 1) >= chip.devices_per_chip:
        return dataclasses.replace(chip, devices_per_chip=1)  # a megacore device is the whole chip
    return chip.per_device()


# ---------------------------------------------------------------------- topologies
_TOPOLOGY = re.compile(r"^(v4|v5e|v5p|v6e):(\d+(?:x\d+){1,2})$")


def parse_topology(name: str) -> tuple[str, tuple[int, ...]]:
    """ "v5p:4x4x4" -> ("v5p", (4, 4, 4)); a clear error for anything else."""
    match = _TOPOLOGY.match(name.strip()) if isinstance(name, str) else None
    if not match:
        raise TopologyError(
            f"unknown TPU topology {name!r}: expected GENERATION:SHAPE with GENERATION one of "
            f"{', '.join(TPU_GENERATIONS)} and SHAPE like 2x2 or 4x4x4 (e.g. v5e:16x16, "
            "v5p:4x4x4, v6e:8x8)"
        )
    return match.group(1), tuple(int(x) for x in match.group(2).split("x"))


def topology_chip(name: str) -> Chip:
    return CHIPS[parse_topology(name)[0]]


# libtpu, installed with the `test` and `tpu` extras, loads whenever jax looks for backends. On a machine without
# TPU chips it then writes /tmp/tpu_logs and prints warnings about metadata and hosts it cannot find; these
# defaults stop that. It asks for an accelerator type too: compiles for a topology read only the topology (checked:
# the same memory and cost for every generation's name), so one name serves.
_QUIET_LIBTPU = (
    ("TPU_LOG_DIR", "disabled"),
    ("TPU_SKIP_MDS_QUERY", "1"),
    ("TPU_WORKER_HOSTNAMES", "localhost"),
    ("TPU_ACCELERATOR_TYPE", "v5litepod-4"),
)


def has_tpu_chips() -> bool:
    """Whether this machine has TPU chips attached (v4/v5p show as /dev/accel*, v5e/v6e as /dev/vfio/N)."""
    return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def quiet_libtpu() -> None:
    """Sets the libtpu settings above as defaults (a user's own settings win), unless this process will run on
    TPU chips, whose runtime needs the real ones: called on importing flmjax, and before compiling for a
    topology."""
    if has_tpu_chips() and "tpu" in (jax.config.jax_platforms or "tpu"):
        return
    for key, value in _QUIET_LIBTPU:
        os.environ.setdefault(key, value)


def _libtpu_available() -> bool:
    try:
        import libtpu  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def topology_devices(name: str, num_slices: int = 1) -> tuple[jax.Device, ...]:
    """The devices of `num_slices` TPU slices of topology `name` (e.g. "v5p:4x4x4"), to compile for.

    Needs libtpu (the compiler); nothing runs on these devices. Raises TopologyError naming the problem.
    """
    generation, shape = parse_topology(name)
    if not isinstance(num_slices, int) or num_slices < 1:
        raise TopologyError(f"num_slices must be a positive integer, got {num_slices!r}")
    if not _libtpu_available():
        raise TopologyError(
            f"compiling for {name} needs libtpu (the TPU compiler), which is not installed: {LIBTPU_INSTALL}"
        )
    from jax.experimental import topologies

    quiet_libtpu()
    try:
        description = topologies.get_topology_desc(platform="tpu", topology_name=name, num_slices=num_slices)
    except Exception as error:  # noqa: BLE001 - libtpu raises runtime errors of several types
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if "lockfile" in first_line:
            raise TopologyError(
                "another process holds libtpu (its lockfile /tmp/libtpu_lockfile): wait for it, or "
                "set ALLOW_MULTIPLE_LIBTPU_LOAD=1 to let both load it"
            ) from None
        raise TopologyError(
            f"libtpu does not know the topology {name!r} (x{num_slices} slices): {first_line}"
        ) from None
    devices = tuple(description.devices)
    chips = math.prod(shape) * num_slices
    if len(devices) not in (chips, chips * CHIPS[generation].devices_per_chip):
        raise TopologyError(f"topology {name} x{num_slices} gave {len(devices)} devices for {chips} chips")
    return devices


def slice_count(devices: Sequence[jax.Device]) -> int:
    """How many slices (ICI domains) the devices span (1 for non-TPU devices)."""
    return len({getattr(d, "slice_index", 0) or 0 for d in devices})


_AVAILABLE_HBM = re.compile(r"exceeds available HBM \(([\d.]+)([KMGT])\)")
_REQUIRED_HBM = re.compile(r"memory required for [\w ]+ \(([\d.]+)([KMGT])\)")
_UNITS = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def out_of_memory_bytes(message: str) -> tuple[int | None, int | None]:
    """(required, available) bytes from the TPU compiler's RESOURCE_EXHAUSTED message, None where absent.

    The compiler prints binary units ("... required for HLO temporaries (531.70G) exceeds available HBM
    (95.74G)"), rounded to 0.01 of the unit.
    """

    def parse(pattern):
        match = pattern.search(message)
        return None if match is None else int(float(match.group(1)) * _UNITS[match.group(2)])

    return parse(_REQUIRED_HBM), parse(_AVAILABLE_HBM)


@functools.cache
def compiler_hbm_bytes(device: jax.Device) -> int | None:
    """The HBM one program may use on `device`, as the TPU compiler itself counts it (None off TPU).

    Found by compiling a program that needs far more (an outer product sorted row by row, 512 GiB of
    temporaries) and reading the limit from the compiler's refusal; it takes well under a second.
    """
    if getattr(device, "platform", "") != "tpu":
        return None
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.asarray([device]), ("one",))
    replicated = NamedSharding(mesh, PartitionSpec())
    too_big = jax.jit(
        lambda x: jnp.sort(jnp.outer(x, x), axis=1)[:, :1], in_shardings=replicated, out_shardings=replicated
    )
    try:
        too_big.lower(jax.ShapeDtypeStruct((1 << 18,), jnp.float32)).compile()
    except Exception as error:  # noqa: BLE001 - the expected refusal
        return out_of_memory_bytes(str(error))[1]
    return None
