"""Benchmarks: each prints an aligned table on stdout and writes JSON (a header plus one row per case).

    python -m launch.bench forward [--presets tiny,small] [--dtypes float32,bfloat16] [--batch 4]
                                   [--frames 256] [--repeats 5] [--out bench_results/forward.json]
    python -m launch.bench data [--stage stage4_duplex_leading] [--batch 8] [--frames 2048] [--workers 0,2]
                                [--repeats 20] [--records 300 | --data_dir DIR] [--out bench_results/data.json]
    python -m launch.bench train [--presets tiny,small] [--meshes 1,8] [--dtypes float32[,bfloat16]] [--batch 8]
                                 [--frames 256] [--repeats 5] [--out bench_results/train.json]

One module per benchmark, each documenting what it times and reports: `forward` (`launch.bench_forward`: the
jitted full causal pass per preset x dtype), `data` (`launch.bench_data`: a stage's Grain pipeline per worker
count), `train` (`launch.bench_train`: the sharded AOT-compiled train step per preset x mesh size x dtype, with
FLOPs and MFU), `stream` (`launch.bench_stream`) and `codec` (`launch.bench_codec`).

On a CPU-only machine `python -m launch.bench train` asks XLA for as many fake host devices as the largest mesh
(`--xla_force_host_platform_device_count`, in `main`, before jax starts a backend): they share the same cores and
host memory (see `launch.bench_train`).

A benchmark is a module `launch/bench_NAME.py` holding a function `Settings -> list[row dict]` and the table
columns it shows, as one `Benchmark` (`BENCHMARK`); adding one is that module and one line in `BENCHMARKS`.
Progress goes to stderr. The CLI switches the persistent compilation cache off, so compile times are real
compiles.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import json
import os
import pathlib
import shlex
import sys
import time
from typing import Any, Sequence

import jax

from flmjax import presets
from launch import bench_codec, bench_data, bench_forward, bench_serve, bench_stream, bench_train, cli
from launch.bench_common import PARAM_DTYPE_FOR, Benchmark, Settings, format_table, progress

# The benchmarks by name: one line each.
BENCHMARKS: dict[str, Benchmark] = {
    "forward": bench_forward.BENCHMARK,
    "data": bench_data.BENCHMARK,
    "train": bench_train.BENCHMARK,
    "stream": bench_stream.BENCHMARK,
    "codec": bench_codec.BENCHMARK,
    "serve": bench_serve.BENCHMARK,
}


def _persistent_cache() -> str | None:
    """The persistent compilation cache directory in force, or None when compiles are not cached to disk."""
    enabled = jax.config.jax_enable_compilation_cache
    return jax.config.jax_compilation_cache_dir if enabled else None


def environment_header(name: str, settings: Settings, command: str) -> dict[str, Any]:
    device = jax.devices()[0]
    return {
        "benchmark": name,
        "command": command,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "jax_version": jax.__version__,
        "jaxlib_version": importlib.metadata.version("jaxlib"),
        "backend": jax.default_backend(),
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "cpu_count": os.cpu_count(),
        "persistent_compilation_cache": _persistent_cache(),
        "settings": dataclasses.asdict(settings),
        "param_dtype_for": PARAM_DTYPE_FOR,
        "flops_sources": bench_forward.FLOPS_SOURCES,
    }


def run_benchmark(name: str, settings: Settings, out: str | os.PathLike, command: str | None = None) -> dict:
    """Runs benchmark `name`, prints its table on stdout, writes {"header", "rows"} JSON to `out`, returns it."""
    benchmark = BENCHMARKS[name]
    command = shlex.join(sys.argv) if command is None else command
    if _persistent_cache():
        progress(f"warning: persistent compilation cache {_persistent_cache()} is on; compile times may be cache loads")
    start = time.perf_counter()
    rows = benchmark.run(settings)
    header = {**environment_header(name, settings, command), "elapsed_s": time.perf_counter() - start}
    if benchmark.notes is not None:
        header.update(benchmark.notes(settings, rows))
        print("\n".join(f"# {note}" for note in header.get("notes", ())), flush=True)
    report = {"header": header, "rows": rows}
    print(format_table(rows, benchmark.columns), flush=True)
    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    progress(f"wrote {out} ({len(rows)} rows, {header['elapsed_s']:.1f} s)")
    return report


# ---------------------------------------------------------------------- CLI
def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _counts(text: str) -> tuple[int, ...]:
    return tuple(int(name) for name in _names(text))


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = cli.ArgumentParser(prog="python -m launch.bench", description=__doc__.split("\n")[0])
    subparsers = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for name, benchmark in BENCHMARKS.items():
        sub = subparsers.add_parser(name, help=(benchmark.run.__doc__ or "").split("\n")[0])
        defaults = benchmark.default_settings()
        sub.add_argument(
            "--presets",
            type=_names,
            default=defaults.presets,
            help=f"comma-separated model presets, of {sorted(presets.PRESETS)}",
        )
        sub.add_argument(
            "--dtypes",
            type=_names,
            default=defaults.dtypes,
            help=f"comma-separated compute dtypes, of {sorted(PARAM_DTYPE_FOR)}",
        )
        sub.add_argument("--batch", type=int, default=defaults.batch)
        sub.add_argument("--frames", type=int, default=defaults.frames)
        sub.add_argument("--repeats", type=int, default=defaults.repeats, help="timed runs after one warm-up")
        sub.add_argument("--seed", type=int, default=defaults.seed)
        sub.add_argument(
            "--workers", type=_counts, default=defaults.workers, help="data: comma-separated grain worker counts"
        )
        sub.add_argument(
            "--records",
            type=int,
            default=defaults.records,
            help="data: synthetic records to build when --data_dir is not given",
        )
        sub.add_argument("--stage", default=defaults.stage, help="data: stage config under configs/stages")
        sub.add_argument("--data_dir", default=defaults.data_dir, help="data: a built data dir to read instead")
        sub.add_argument(
            "--meshes",
            type=_counts,
            default=defaults.meshes,
            help="train: comma-separated mesh sizes (devices on the fsdp axis)",
        )
        sub.add_argument(
            "--batches",
            type=_counts,
            default=defaults.batches,
            help="stream, codec: comma-separated batch sizes (concurrent sessions)",
        )
        sub.add_argument("--seconds", type=float, default=defaults.seconds, help="codec: seconds of audio per call")
        sub.add_argument("--steps", type=int, default=defaults.steps, help="stream: timed frames per case")
        sub.add_argument(
            "--slots",
            type=_counts,
            default=defaults.slots,
            help="serve: comma-separated server slot counts (as many clients each)",
        )
        sub.add_argument("--out", default=f"bench_results/{name}.json", help="JSON report path")
    return parser.parse_args(argv)


def _request_host_devices(count: int) -> None:
    """Asks XLA for `count` host (CPU) devices unless XLA_FLAGS already sets a count. XLA reads the flag when
    jax first starts a backend (the first `jax.devices()` or computation, not `import jax`), so this must run
    before anything touches a device; on a GPU or TPU machine it only adds fake CPU devices nobody uses."""
    flags = os.environ.get("XLA_FLAGS", "")
    if count <= 1 or "xla_force_host_platform_device_count" in flags:
        return
    try:
        from jax._src import xla_bridge  # private, but the only way to ask whether it is too late

        started = xla_bridge.backends_are_initialized()
    except (ImportError, AttributeError):
        started = False
    if started:
        progress(f"warning: jax has already started its backends; cannot add {count} fake CPU devices")
        return
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()
    progress(f"XLA_FLAGS={os.environ['XLA_FLAGS']} ({count} fake CPU devices sharing this machine's cores)")


def main(argv: Sequence[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.benchmark == "train":  # before anything starts a jax backend
        _request_host_devices(max(args.meshes, default=1))
    # Compile times must be real compiles: never read or write a persistent cache (before any compile, since
    # jax decides once per process whether the cache is used).
    jax.config.update("jax_enable_compilation_cache", False)
    try:
        settings = Settings(
            presets=args.presets,
            dtypes=args.dtypes,
            batch=args.batch,
            frames=args.frames,
            repeats=args.repeats,
            seed=args.seed,
            workers=args.workers,
            records=args.records,
            stage=args.stage,
            data_dir=args.data_dir,
            meshes=args.meshes,
            batches=args.batches,
            seconds=args.seconds,
            steps=args.steps,
            slots=args.slots,
        )
    except ValueError as error:
        sys.exit(f"error: {error}")
    run_benchmark(args.benchmark, settings, args.out, command=shlex.join(["python", "-m", "launch.bench", *argv]))


if __name__ == "__main__":
    main()
