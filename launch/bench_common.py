"""What every benchmark shares: the settings it runs over, its table columns, and number formatting.

A benchmark is a function `Settings -> list[row dict]` plus the columns its table shows (`Benchmark`); the
registry and the CLI are in `launch.bench`.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, Callable, Sequence

import jax
import numpy as np

from flmjax import config as config_lib
from flmjax import model
from flmjax import presets as presets_lib

# Compute dtype -> param dtype: bf16 compute runs on bf16 params (no f32 master copy); f32 is f32 throughout.
PARAM_DTYPE_FOR = {"float32": "float32", "bfloat16": "bfloat16"}


@dataclasses.dataclass(frozen=True)
class Settings:
    """What every benchmark is run over (a benchmark may ignore what does not apply to it)."""

    presets: tuple[str, ...] = ("tiny", "small")
    dtypes: tuple[str, ...] = ("float32", "bfloat16")
    batch: int = 4
    frames: int = 256
    repeats: int = 5
    seed: int = 0
    workers: tuple[int, ...] = (0, 2)  # data: grain worker processes, one row each
    records: int = 300  # data: synthetic records to build when no data_dir is given
    stage: str = "stage4_duplex_leading"  # data: the stage config whose pipeline is timed
    data_dir: str = ""  # data: a built data dir (with tokenizer.model); empty = build a synthetic one
    meshes: tuple[int, ...] = (1,)  # train: mesh sizes (devices on the fsdp axis), one row each
    batches: tuple[int, ...] = (1, 8, 32)  # stream, codec: batch sizes (concurrent sessions), one row each
    seconds: float = 10.0  # codec: audio length per call
    steps: int = 32  # stream: timed frames per case after the warm-up
    slots: tuple[int, ...] = (1, 4, 8, 16)  # serve: server slot counts (and concurrent clients), one row each

    def __post_init__(self):
        problems = [
            f"unknown preset {p!r}; expected one of {sorted(presets_lib.PRESETS)}"
            for p in self.presets
            if p not in presets_lib.PRESETS
        ]
        problems += [
            f"unknown dtype {d!r}; expected one of {sorted(PARAM_DTYPE_FOR)}"
            for d in self.dtypes
            if d not in PARAM_DTYPE_FOR
        ]
        problems += [
            f"{name} must be a positive integer, got {getattr(self, name)}"
            for name in ("batch", "frames", "repeats", "records")
            if getattr(self, name) < 1
        ]
        problems += [f"workers must be >= 0, got {w}" for w in self.workers if w < 0]
        problems += [f"mesh sizes must be positive, got {n}" for n in self.meshes if n < 1]
        problems += [f"batch sizes must be positive, got {n}" for n in self.batches if n < 1]
        problems += [f"slot counts must be positive, got {n}" for n in self.slots if n < 1]
        if self.seconds <= 0 or self.steps < 1:
            problems.append(f"seconds and steps must be positive, got {self.seconds} and {self.steps}")
        if not self.presets or not self.dtypes:
            problems.append("need at least one preset and one dtype")
        if problems:
            raise ValueError("invalid bench settings:\n  " + "\n  ".join(problems))


@dataclasses.dataclass(frozen=True)
class Column:
    """One table column: its heading, the row key it shows, and how a value is written."""

    heading: str
    key: str
    fmt: Callable[[Any], str] = str


@dataclasses.dataclass(frozen=True)
class Benchmark:
    run: Callable[[Settings], list[dict[str, Any]]]
    columns: tuple[Column, ...]
    defaults: tuple[tuple[str, Any], ...] = ()  # Settings fields this benchmark defaults differently
    # (settings, rows) -> extra header fields; their "notes" (lines) are also printed above the table
    notes: Callable[[Settings, list[dict[str, Any]]], dict[str, Any]] | None = None

    def default_settings(self) -> Settings:
        return dataclasses.replace(Settings(), **dict(self.defaults))


def memory_bytes(memory: dict[str, int | None]) -> dict[str, int | None]:
    """`flmjax.compiled.memory` figures under the reports' names (`temp_bytes`, `argument_bytes`, ...)."""
    return {f"{key}_bytes": memory[key] for key in ("temp", "argument", "output", "alias")}


def millions(n: int) -> str:
    return f"{n / 1e6:.2f}M"


def fixed(digits: int, scale: float = 1.0) -> Callable[[Any], str]:
    return lambda value: "-" if value is None else f"{value * scale:,.{digits}f}"


def significant(digits: int, scale: float = 1.0) -> Callable[[Any], str]:
    """`digits` significant figures (trailing zeros kept), never in exponent notation."""

    def fmt(value):
        if value is None:
            return "-"
        value *= scale
        magnitude = int(np.floor(np.log10(abs(value)))) if value else 0
        return f"{value:,.{max(0, digits - 1 - magnitude)}f}"

    return fmt


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[Column]) -> str:
    """Aligned text table: the first column left-aligned, the rest right-aligned."""
    cells = [[c.heading for c in columns]] + [[c.fmt(row.get(c.key)) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]

    def line(values):
        return "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths)))

    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths)] + [line(v) for v in cells[1:]])


def random_params(config: config_lib.ModelConfig, seed: int) -> Any:
    """Params of the right tree, shapes and dtype, drawn on the host: norm scales 1, the rest
    normal(initializer_range). Timing does not depend on the values, and `init_params` alone takes 10+ s to
    compile on a small CPU."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        if str(getattr(path[-1], "key", "")) == "scale":
            values = np.ones(leaf.shape, np.float32)
        else:
            values = rng.standard_normal(leaf.shape, np.float32) * np.float32(config.initializer_range)
        return jax.device_put(values.astype(leaf.dtype))

    return jax.tree_util.tree_map_with_path(draw, model.abstract_params(config))
