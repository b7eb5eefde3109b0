"""Summaries of per-sample results: a markdown table and a json-able dict, per task and overall."""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib

# TOR is "higher is better" for turn-taking and "lower is better" for pauses and backchannels: never pooled
# (`fdb_score`'s names included).
NOT_POOLED = frozenset(
    {
        "took_turn",
        "fdb_TOR",
        "flmjax_TOR_after_event",
        "flmjax_clean_TOR_after_event",
        "flmjax_vad_stopped",
        "flmjax_vad_was_speaking",
    }
)


def _as_dict(result) -> dict:
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        return dataclasses.asdict(result)
    return dict(result)


def _numbers(result) -> dict[str, float]:
    """The scalar numeric fields of one result (bools as 0/1); None, NaN, lists and strings are left out."""
    out = {}
    for name, value in _as_dict(result).items():
        if isinstance(value, (bool, int, float)) and not (isinstance(value, float) and math.isnan(value)):
            out[name] = float(value)
    return out


def _aggregate(results) -> dict[str, dict]:
    values: dict[str, list[float]] = {}
    for result in results:
        for name, value in _numbers(result).items():
            values.setdefault(name, []).append(value)
    return {name: {"mean": sum(v) / len(v), "n": len(v)} for name, v in values.items()}


def summary_table(per_sample_results) -> tuple[str, dict]:
    """{task: [result, ...]} (results: dataclasses such as `duplex.TurnTakingResult`, or dicts) ->
    (markdown, summary). For each task, the mean of every scalar numeric field over the samples where it is
    set (bools: the rate, e.g. `took_turn` -> TOR). "overall" pools all samples of all tasks, except
    `took_turn`, whose direction differs between tasks."""
    summary = {"tasks": {}, "overall": {}}
    for task, results in per_sample_results.items():
        results = list(results)
        summary["tasks"][task] = {"n_samples": len(results), "metrics": _aggregate(results)}
    pooled = [r for results in per_sample_results.values() for r in results]
    overall = {k: v for k, v in _aggregate(pooled).items() if k not in NOT_POOLED}
    summary["overall"] = {"n_samples": len(pooled), "metrics": overall}

    lines = ["| task | samples | metric | mean | n |", "| --- | ---: | --- | ---: | ---: |"]
    rows = [(task, entry) for task, entry in summary["tasks"].items()] + [("overall", summary["overall"])]
    for task, entry in rows:
        if not entry["metrics"]:
            lines.append(f"| {task} | {entry['n_samples']} | - | - | 0 |")
        for name, stat in sorted(entry["metrics"].items()):
            lines.append(f"| {task} | {entry['n_samples']} | {name} | {stat['mean']:.4f} | {stat['n']} |")
    return "\n".join(lines) + "\n", summary


def write_summary(
    out_dir, per_sample_results, title: str = "Full-duplex evaluation"
) -> tuple[pathlib.Path, pathlib.Path]:
    """Writes `summary.md` (title + table) and `summary.json` (the summary and every per-sample result) into
    `out_dir` (created); returns their paths."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    markdown, summary = summary_table(per_sample_results)
    summary["samples"] = {task: [_as_dict(r) for r in results] for task, results in per_sample_results.items()}
    md_path, json_path = out / "summary.md", out / "summary.json"
    md_path.write_text(f"# {title}\n\n{markdown}")
    json_path.write_text(json.dumps(summary, indent=2, default=float) + "\n")
    return md_path, json_path
