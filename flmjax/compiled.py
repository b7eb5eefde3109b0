"""What XLA says about a compiled program: memory, cost, loops and collectives.

`memory(compiled)` and `cost(compiled)` read `memory_analysis()` and `cost_analysis()` (per device, as XLA
reports them). `hlo_summary(compiled.as_text())` reads the optimised HLO: every `while` loop with its trip
count (parsed from the loop's condition), and the collectives (all-gather, reduce-scatter, all-reduce,
all-to-all, collective-permute) by kind, counted per executed step: an instruction inside a loop body counts
once per trip.

XLA's cost analysis counts a `while` body once, whatever its trip count (a 10-step scan of matmuls is
reported as about one matmul), so its FLOPs and its time estimate (`optimal_seconds`) of a program with loops
are those of one trip of each loop: see `launch/aot.py` for how the estimates are made to count every trip.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re
from typing import Any

COLLECTIVE_KINDS = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")

_DTYPE_BYTES = {
    "pred": 1,
    "s4": 0.5,
    "u4": 0.5,
    "s8": 1,
    "u8": 1,
    "f8e4m3fn": 1,
    "f8e5m2": 1,
    "s16": 2,
    "u16": 2,
    "f16": 2,
    "bf16": 2,
    "s32": 4,
    "u32": 4,
    "f32": 4,
    "s64": 8,
    "u64": 8,
    "f64": 8,
    "c64": 8,
    "c128": 16,
}


def memory(compiled) -> dict[str, int | None]:
    """Per-device bytes: `argument`, `output`, `temp`, `alias`, `code` and `total` (what the program holds at
    its peak: arguments + outputs - the outputs that alias donated arguments + temporaries + code), or None
    where the backend reports nothing."""
    try:
        stats = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        stats = None
    fields = {
        "argument": "argument_size_in_bytes",
        "output": "output_size_in_bytes",
        "temp": "temp_size_in_bytes",
        "alias": "alias_size_in_bytes",
        "code": "generated_code_size_in_bytes",
    }
    out = {ours: None if stats is None else int(getattr(stats, theirs, 0) or 0) for ours, theirs in fields.items()}
    out["total"] = (
        None if stats is None else (out["argument"] + out["output"] - out["alias"] + out["temp"] + out["code"])
    )
    return out


# Custom calls the TPU cost model has no figure for: each adds -1 s to `optimal_seconds` (and -1 to its bytes).
# `ConcatBitcast` joins the slices of a table prefetched into on-chip memory, which small models' programs do.
UNCOSTED_CUSTOM_CALLS = ("ConcatBitcast",)


def uncosted_ops(hlo_text: str) -> int:
    """How many instructions of an optimised HLO module the TPU cost model counts as -1 (`UNCOSTED_CUSTOM_CALLS`)."""
    return sum(hlo_text.count(f'custom_call_target="{target}"') for target in UNCOSTED_CUSTOM_CALLS)


def cost(stage) -> dict[str, float | None]:
    """`flops`, `optimal_seconds` (XLA's own time estimate) and `bytes_accessed` of a lowered or compiled
    program, per device; None where XLA gives none. The -1 s that each uncosted custom call adds to the time
    estimate is taken back out (`uncosted_ops`)."""
    try:
        analysed = stage.cost_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        analysed = None
    if isinstance(analysed, (list, tuple)):  # one dict per device program in older jax
        analysed = analysed[0] if analysed else None
    analysed = analysed or {}
    try:
        uncosted = uncosted_ops(stage.as_text())
    except Exception:  # noqa: BLE001 - a lowered stage's text is pre-optimisation; nothing to correct
        uncosted = 0

    def positive(key, correction=0.0):
        value = analysed.get(key)
        return float(value) + correction if value is not None and value + correction > 0 else None

    return {
        "flops": positive("flops"),
        "optimal_seconds": positive("optimal_seconds", uncosted),
        "bytes_accessed": positive("bytes accessed", uncosted),
        "uncosted_ops": uncosted,
    }


# ---------------------------------------------------------------------- optimised HLO text
_COMPUTATION = re.compile(r"^(?:ENTRY )?%([\w.\-]+) .*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (\(.*?\)|\S+) ([\w\-]+)\((.*)$")
_ARRAY = re.compile(r"\b([a-z]+[0-9]*[a-z0-9]*)\[([0-9,]*)\]")
_CALLED = re.compile(
    r"\b(?:calls|to_apply|body|condition|branch_computations|async_computation)="
    r"(\{[^}]*\}|%[\w.\-]+)"
)


def _array_bytes(shape_text: str) -> list[float]:
    sizes = []
    for dtype, dims in _ARRAY.findall(shape_text):
        if dtype in _DTYPE_BYTES:
            sizes.append(_DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d))
    return sizes


@dataclasses.dataclass
class _Instruction:
    name: str
    shape: str
    opcode: str
    rest: str


def _parse(hlo_text: str) -> tuple[dict[str, list[_Instruction]], str | None]:
    computations: dict[str, list[_Instruction]] = {}
    entry, current = None, None
    for line in hlo_text.splitlines():
        header = _COMPUTATION.match(line)
        if header and not line.startswith(" "):
            current = header.group(1)
            computations[current] = []
            if line.startswith("ENTRY"):
                entry = current
            continue
        instruction = _INSTRUCTION.match(line)
        if instruction and current is not None:
            computations[current].append(_Instruction(*instruction.groups()))
    return computations, entry


def _trip_count(condition: list[_Instruction]) -> int | None:
    """The N of a loop whose condition is `counter < N` (a counter from 0, as XLA's loops are); else None."""
    constants = {i.name: i.rest for i in condition if i.opcode == "constant"}
    for instruction in condition:
        if instruction.opcode == "compare" and "direction=LT" in instruction.rest:
            for operand in re.findall(r"%([\w.\-]+)", instruction.rest.split(")")[0]):
                if operand in constants:
                    match = re.match(r"\s*(-?\d+)\)", constants[operand])
                    if match:
                        return int(match.group(1))
    return None


def _collective_kind(instruction: _Instruction) -> str | None:
    opcode = instruction.opcode
    for kind in COLLECTIVE_KINDS:
        if opcode in (kind, f"{kind}-start"):
            return kind
    if opcode == "fusion":  # TPU wraps some collectives in fusions named after them
        called = re.search(r"calls=%([\w\-]+)", instruction.rest)
        if called:
            name = called.group(1)
            if name.startswith("all-reduce-scatter") or name.startswith("reduce-scatter"):
                return "reduce-scatter"
            for kind in COLLECTIVE_KINDS:
                if name.startswith(kind):
                    return kind
    return None


def _collective_bytes(instruction: _Instruction) -> float:
    """Bytes a collective produces: its output (of an async start, the output half of (operand, output, ...))."""
    sizes = _array_bytes(instruction.shape)
    if instruction.opcode in ("all-gather-start", "collective-permute-start") and len(sizes) >= 2:
        return sizes[1]
    return sum(sizes)


@dataclasses.dataclass
class HloSummary:
    loops: list[dict[str, Any]]  # {"body": name, "trip_count": int | None, "executions": times the loop runs}
    collectives: dict[str, dict[str, float]]  # kind -> {"count": per step, "bytes": per step, "static": in HLO}
    # The collectives moving the most bytes per step: {"kind", "bytes", "executions", "shape", "op_name"}
    largest_collectives: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def hlo_summary(hlo_text: str, largest: int = 12) -> HloSummary:
    """Loops (with trip counts) and per-step collectives of an optimised HLO module's text.

    A loop whose trip count cannot be read from its condition counts as one trip (and is listed with
    `trip_count: None`).
    """
    computations, entry = _parse(hlo_text)
    loops = []
    executions: dict[str, float] = collections.defaultdict(float)

    def visit(name: str, times: float, depth: int = 0) -> None:
        if name not in computations or depth > 64:
            return
        executions[name] += times
        for instruction in computations[name]:
            if instruction.opcode == "fusion" and _collective_kind(instruction):
                continue  # the collective inside is counted as the fusion
            for match in _CALLED.finditer(instruction.rest):
                key = match.group(0).split("=", 1)[0]
                targets = re.findall(r"%?([\w.\-]+)", match.group(1).strip("{}"))
                for target in targets:
                    if instruction.opcode == "while" and key == "body":
                        condition = re.search(r"condition=%([\w.\-]+)", instruction.rest)
                        trips = _trip_count(computations.get(condition.group(1), [])) if condition else None
                        loops.append({"body": target, "trip_count": trips, "executions": times})
                        visit(target, times * (trips or 1), depth + 1)
                    elif key in ("calls", "body", "branch_computations", "async_computation"):
                        visit(target, times, depth + 1)
                    # to_apply (reducers) and conditions hold no collectives worth counting

    if entry is not None:
        visit(entry, 1.0)
    collectives = {kind: {"count": 0.0, "bytes": 0.0, "static": 0} for kind in COLLECTIVE_KINDS}
    each = []
    for name, instructions in computations.items():
        times = executions.get(name, 0.0)
        if not times:
            continue  # not executed as such (e.g. the body of a collective fusion, counted as the fusion)
        for instruction in instructions:
            kind = _collective_kind(instruction)
            if kind is None:
                continue
            collectives[kind]["static"] += 1
            collectives[kind]["count"] += times
            collectives[kind]["bytes"] += times * _collective_bytes(instruction)
            op_name = re.search(r'op_name="([^"]*)"', instruction.rest)
            each.append(
                {
                    "kind": kind,
                    "bytes": times * _collective_bytes(instruction),
                    "executions": times,
                    "shape": re.sub(r"\{[^}]*\}", "", instruction.shape)[:120],
                    "op_name": op_name.group(1) if op_name else "",
                }
            )
    each.sort(key=lambda c: -c["bytes"])
    return HloSummary(loops, collectives, each[:largest])
