"""Metrics out of the training loop: JSON lines, TensorBoard events, and model FLOPs utilisation.

Only process 0 writes. `metrics.jsonl` holds one object per logged step (`{"step": ..., "split": "train",
...}`); after a resume the steps past the restored checkpoint are logged again, and readers keep the last
record of each (step, split) (`read_metrics` does).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Mapping

import jax
import numpy as np

from flmjax import hardware

METRICS_FILE = "metrics.jsonl"


def measured_cpu_flops(size: int = 512, repeats: int = 5) -> float:
    """FLOP/s of a jitted float32 `size x size` matmul on this CPU: the peak MFU is measured against here."""
    x = jax.numpy.ones((size, size), jax.numpy.float32)
    matmul = jax.jit(lambda a: a @ a)
    matmul(x).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(x).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def peak_flops_per_device(device: jax.Device | None = None) -> tuple[float, str]:
    """(peak FLOP/s of one device, where the figure comes from)."""
    device = device or jax.devices()[0]
    chip = hardware.device_chip(device)
    if chip is not None:
        return chip.peak_bf16_flops, f"table: {chip.name}"
    if device.platform == "cpu":
        # Fake CPU devices share the real cores: the whole machine's measured rate stands for all of them.
        return measured_cpu_flops() / max(1, jax.local_device_count()), "measured float32 matmul (cpu)"
    return float("nan"), f"unknown device kind {getattr(device, 'device_kind', '')!r}"


class MetricsWriter:
    """Appends metrics to WORKDIR/metrics.jsonl and TensorBoard events (process 0 only)."""

    def __init__(self, workdir: str, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self._tb = None
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        self._file = open(os.path.join(workdir, METRICS_FILE), "a")
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, metrics: Mapping[str, Any], split: str = "train") -> None:
        if not self.enabled:
            return
        values = {key: float(np.asarray(value)) for key, value in metrics.items()}
        self._file.write(json.dumps({"step": int(step), "split": split, **values}) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in values.items():
                self._tb.add_scalar(f"{split}/{key}", value, int(step))

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(workdir: str, split: str = "train") -> dict[int, dict[str, float]]:
    """step -> metrics of `split`, the last record of each step winning (a resumed run re-logs steps)."""
    out: dict[int, dict[str, float]] = {}
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.exists(path):
        return out
    with open(path) as f:
        for line in f:
            record = json.loads(line)
            if record.pop("split") == split:
                out[record.pop("step")] = record
    return dict(sorted(out.items()))
