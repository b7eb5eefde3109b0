"""The tables `launch.aot` prints: one row per train or stream report, and a train report's collectives per
step; `fmt` writes a figure that may be missing as `-`.
"""

from __future__ import annotations

from typing import Any, Sequence

from launch.aot_compile import GIB


def fmt(value, scale=1.0, digits=2, suffix=""):
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
                fmt(total if total is not None else r.get("required_bytes"), 1 / GIB)
                + ("" if total is not None else " (needed)"),
                fmt(r["hbm_bytes"], 1 / GIB),
                "yes" if r["fits"] else "NO",
                fmt(r.get("estimated_step_s"), 1, 3),
                fmt(r.get("estimated_frames_per_s_per_chip"), 1, 0),
                fmt(r.get("estimated_mfu"), 100, 1, "%"),
                fmt(r["compile_s"], 1, 0),
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
                fmt(total if total is not None else r.get("required_bytes"), 1 / GIB),
                fmt(r["hbm_bytes"], 1 / GIB),
                "yes" if r["fits"] else "NO",
                fmt(r.get("estimated_frame_s"), 1e3),
                fmt(r.get("x_bound"), 1, 2),
                fmt(r.get("estimated_frame_s_compiler_layouts"), 1e3),
                fmt(r.get("x_bound_compiler_layouts"), 1, 2),
                fmt(r.get("bound_frame_s"), 1e3, 3),
                {True: "yes", False: "NO", None: "-"}[r.get("real_time")],
                fmt(r["compile_s"], 1, 0),
            )
        )
    return _table(header, rows)
