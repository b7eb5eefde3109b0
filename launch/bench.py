"""Benchmarks: each prints an aligned table on stdout and writes JSON (a header plus one row per case).

    python -m launch.bench forward [--presets tiny,small] [--dtypes float32,bfloat16] [--batch 4]
                                   [--frames 256] [--repeats 5] [--out bench_results/forward.json]
    python -m launch.bench data [--stage stage4_duplex_leading] [--batch 8] [--frames 2048] [--workers 0,2]
                                [--repeats 20] [--records 300 | --data_dir DIR] [--out bench_results/data.json]

`forward` times the jitted full causal pass (`flmjax.model.forward`) for every preset x dtype: the AOT lower and
compile separately, then `--repeats` blocked calls after one warm-up (median and min). FLOPs come from XLA's cost
analysis; memory from the compiled executable's memory analysis.

`data` times a stage's Grain pipeline (dataset records -> monologue placement, delays, crop/pad -> batches)
over a synthetic corpus it builds (or `--data_dir`): the first batch (start-up) separately, then `--repeats`
batches, once per worker count.

A benchmark is a function `Settings -> list[row dict]` plus the table columns it shows; adding one is that
function and one line in `BENCHMARKS`. Progress goes to stderr. The CLI switches the persistent compilation
cache off, so compile times are real compiles.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import importlib.metadata
import json
import os
import pathlib
import shlex
import statistics
import sys
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np

from flmjax import config as config_lib
from flmjax import model

# Compute dtype -> param dtype: bf16 compute runs on bf16 params (no f32 master copy); f32 is f32 throughout.
PARAM_DTYPE_FOR = {"float32": "float32", "bfloat16": "bfloat16"}
FLOPS_SOURCES = {
    "xla": "compiled cost_analysis() of the benchmarked program",
    "xla-unrolled": "cost_analysis() of the same forward lowered with scan_layers=False (XLA counts a scanned "
                    "layer loop's body once, so the compiled count of the scanned program is one layer's worth)",
    "analytic": "2 x matmul params x tokens + 4 x batch x frames^2 x heads x head_dim per layer",
}


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

    def __post_init__(self):
        problems = [f"unknown preset {p!r}; expected one of {sorted(config_lib.PRESETS)}"
                    for p in self.presets if p not in config_lib.PRESETS]
        problems += [f"unknown dtype {d!r}; expected one of {sorted(PARAM_DTYPE_FOR)}"
                     for d in self.dtypes if d not in PARAM_DTYPE_FOR]
        problems += [f"{name} must be a positive integer, got {getattr(self, name)}"
                     for name in ("batch", "frames", "repeats", "records") if getattr(self, name) < 1]
        problems += [f"workers must be >= 0, got {w}" for w in self.workers if w < 0]
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

    def default_settings(self) -> Settings:
        return dataclasses.replace(Settings(), **dict(self.defaults))


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f}M"


def _fixed(digits: int, scale: float = 1.0) -> Callable[[Any], str]:
    return lambda value: "-" if value is None else f"{value * scale:,.{digits}f}"


def _significant(digits: int, scale: float = 1.0) -> Callable[[Any], str]:
    """`digits` significant figures (trailing zeros kept), never in exponent notation."""
    def fmt(value):
        if value is None:
            return "-"
        value *= scale
        magnitude = int(np.floor(np.log10(abs(value)))) if value else 0
        return f"{value:,.{max(0, digits - 1 - magnitude)}f}"
    return fmt


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------- forward
def _param_counts(params: model.Params) -> dict[str, int]:
    """Total params, the depth transformer's, and the temporal part (everything `forward` reads: the rest)."""
    def count(tree):
        return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))
    total, depth = count(params), count(params["depth"])
    return {"params_temporal": total - depth, "params_depth": depth, "params_total": total}


def _analytic_flops(config: config_lib.ModelConfig, params: model.Params, batch: int, frames: int) -> int:
    """2 x (temporal + text-head matmul weights) x tokens, plus QK^T and AV over the full (masked) T x T."""
    matmul_params = sum(
        int(np.prod(leaf.shape))
        for path, leaf in jax.tree_util.tree_leaves_with_path({k: params[k] for k in ("temporal", "text_head")})
        if str(getattr(path[-1], "key", "")).endswith("kernel"))
    attention = 4 * batch * frames * frames * config.num_attention_heads * config.head_dim
    return 2 * matmul_params * batch * frames + config.num_hidden_layers * attention


def _cost_flops(stage) -> float | None:
    """The `flops` of a lowered or compiled stage's `cost_analysis()`, or None where XLA gives none."""
    try:
        analysed = stage.cost_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return None
    if isinstance(analysed, (list, tuple)):  # one dict per device program in older jax
        analysed = analysed[0] if analysed else None
    flops = (analysed or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


def _xla_flops(config, compiled, abstract_inputs) -> tuple[float | None, str]:
    """XLA's FLOP count for one forward call and where it came from (see `FLOPS_SOURCES`)."""
    if not (config.scan_layers and config.num_hidden_layers > 1):
        return _cost_flops(compiled), "xla"
    unrolled = config.replace(scan_layers=False)
    lowered = jax.jit(functools.partial(model.forward, unrolled)).lower(
        model.abstract_params(unrolled), *abstract_inputs)
    return _cost_flops(lowered), "xla-unrolled"


def _memory(compiled) -> dict[str, int | None]:
    try:
        stats = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        stats = None
    fields = {"temp_bytes": "temp_size_in_bytes", "argument_bytes": "argument_size_in_bytes",
              "output_bytes": "output_size_in_bytes"}
    return {ours: None if stats is None else int(getattr(stats, theirs)) for ours, theirs in fields.items()}


def _random_params(config: config_lib.ModelConfig, seed: int) -> model.Params:
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


def _random_inputs(config: config_lib.ModelConfig, batch: int, frames: int, seed: int):
    """Valid model inputs: text ids below the text vocabulary, audio ids below the codec's 2048 codes."""
    rng = np.random.default_rng(seed)
    text_ids = rng.integers(0, config.vocab_size, (batch, frames), dtype=np.int32)
    speak_ids, listen_ids = (rng.integers(0, config_lib.NUM_CODES, (batch, frames, config.aud_channel),
                                          dtype=np.int32) for _ in range(2))
    return tuple(jax.device_put(x) for x in (text_ids, speak_ids, listen_ids))


def _forward_config(preset: str, dtype: str) -> config_lib.ModelConfig:
    return config_lib.preset(preset, dtype=dtype, param_dtype=PARAM_DTYPE_FOR[dtype])


def _bench_forward_case(preset: str, dtype: str, settings: Settings) -> dict[str, Any]:
    batch, frames = settings.batch, settings.frames
    config = _forward_config(preset, dtype)
    params = jax.block_until_ready(_random_params(config, settings.seed))
    inputs = jax.block_until_ready(_random_inputs(config, batch, frames, settings.seed))

    jitted = jax.jit(functools.partial(model.forward, config))
    start = time.perf_counter()
    lowered = jitted.lower(params, *inputs)
    lower_s = time.perf_counter() - start
    start = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    _progress(f"  lower {lower_s:.2f} s, compile {compile_s:.2f} s; timing 1 warm-up + {settings.repeats} runs")

    jax.block_until_ready(compiled(params, *inputs))
    times = []
    for _ in range(settings.repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(params, *inputs))
        times.append(time.perf_counter() - start)
    median_s = statistics.median(times)

    abstract_inputs = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in inputs]
    flops, source = _xla_flops(config, compiled, abstract_inputs)
    if flops is None:
        flops, source = float(_analytic_flops(config, params, batch, frames)), "analytic"
    return {
        "benchmark": "forward", "preset": preset, "dtype": dtype, "param_dtype": config.param_dtype,
        "batch": batch, "frames": frames, **_param_counts(params),
        "lower_s": lower_s, "compile_s": compile_s, "repeats": settings.repeats, "times_s": times,
        "median_s": median_s, "min_s": min(times), "frames_per_s": batch * frames / median_s,
        "flops_per_call": flops, "flops_source": source, "gflops_per_s": flops / median_s / 1e9,
        "flops_analytic": _analytic_flops(config, params, batch, frames),
        "flops_xla_compiled": _cost_flops(compiled),
        **_memory(compiled),
    }


def run_forward_bench(settings: Settings) -> list[dict[str, Any]]:
    """One row per preset x dtype: compile and steady-state times of the jitted `forward`."""
    cases = [(p, d) for p in settings.presets for d in settings.dtypes]
    for preset in settings.presets:  # fail before the first case, not after an hour of them
        limit = _forward_config(preset, "float32").max_position_embeddings
        if settings.frames > limit:
            raise ValueError(f"{settings.frames} frames exceed {preset}'s max_position_embeddings {limit}")
    rows = []
    for i, (preset, dtype) in enumerate(cases, 1):
        _progress(f"[forward {i}/{len(cases)}] {preset} {dtype} (params {PARAM_DTYPE_FOR[dtype]}), "
                  f"batch {settings.batch} x {settings.frames} frames")
        rows.append(_bench_forward_case(preset, dtype, settings))
    return rows


FORWARD_COLUMNS = (
    Column("preset", "preset"), Column("compute", "dtype"), Column("params", "param_dtype"),
    Column("temporal", "params_temporal", _millions), Column("total", "params_total", _millions),
    Column("lower s", "lower_s", _fixed(2)), Column("compile s", "compile_s", _fixed(2)),
    Column("median ms", "median_s", _fixed(1, 1e3)), Column("min ms", "min_s", _fixed(1, 1e3)),
    Column("frames/s", "frames_per_s", _fixed(0)), Column("GFLOP/call", "flops_per_call", _significant(3, 1e-9)),
    Column("GFLOP/s", "gflops_per_s", _fixed(1)), Column("flops from", "flops_source"),
    Column("temp MiB", "temp_bytes", _fixed(1, 1 / 2**20)),
)


# ---------------------------------------------------------------------- data
def _bench_data_dir(settings: Settings, scratch: str) -> str:
    if settings.data_dir:
        return settings.data_dir
    from launch import prepare_data

    _progress(f"[data] building {settings.records} synthetic records in {scratch}")
    import contextlib

    with contextlib.redirect_stdout(sys.stderr):  # its summary is progress here, not the benchmark's table
        status = prepare_data.main(["--synthetic", str(settings.records), "--seed", str(settings.seed), "--out",
                                    scratch, "--no_progress"])
    if status != 0:
        raise RuntimeError("building the synthetic corpus failed")
    return scratch


def run_data_bench(settings: Settings) -> list[dict[str, Any]]:
    """One row per worker count: batches/s and frames/s of a stage's Grain pipeline (records to batches)."""
    import importlib
    import tempfile

    from absl import flags

    from flmjax.data import pipeline, text
    from flmjax.data.examples import StreamIds

    flags.FLAGS.mark_as_parsed()  # grain worker processes read absl flags
    rows = []
    with tempfile.TemporaryDirectory(prefix="flmjax-bench-data-") as scratch:
        data_dir = _bench_data_dir(settings, scratch)
        config = importlib.import_module(f"configs.stages.{settings.stage}").get_config()
        config.data.data_dir, config.data.sequence_length = data_dir, settings.frames
        config.data.global_batch_size, config.seed = settings.batch, settings.seed
        tokenizer = text.SentencePieceTokenizer(os.path.join(data_dir, "tokenizer.model"))
        ids = StreamIds(tokenizer.wait_id, config_lib.preset(config.model).aud_pad_id)
        for workers in settings.workers:
            _progress(f"[data] {settings.stage}: batch {settings.batch} x {settings.frames} frames, "
                      f"{workers} workers, {settings.repeats} timed batches")
            iterator = pipeline.batch_iterator(pipeline.stage_pipeline(config, tokenizer, ids), num_workers=workers)
            try:
                start = time.perf_counter()
                next(iterator)
                first_batch_s = time.perf_counter() - start
                start = time.perf_counter()
                for _ in range(settings.repeats):
                    next(iterator)
                elapsed = time.perf_counter() - start
            finally:
                if hasattr(iterator, "close"):
                    iterator.close()
            rows.append({"stage": settings.stage, "workers": workers, "batch": settings.batch,
                         "frames": settings.frames, "batches": settings.repeats, "first_batch_s": first_batch_s,
                         "elapsed_s": elapsed, "batches_per_s": settings.repeats / elapsed,
                         "frames_per_s": settings.repeats * settings.batch * settings.frames / elapsed})
    return rows


DATA_COLUMNS = (
    Column("stage", "stage"), Column("workers", "workers"), Column("batch", "batch"), Column("frames", "frames"),
    Column("first batch s", "first_batch_s", _fixed(2)), Column("batches/s", "batches_per_s", _fixed(2)),
    Column("frames/s", "frames_per_s", _fixed(0)),
)

BENCHMARKS: dict[str, Benchmark] = {
    "forward": Benchmark(run_forward_bench, FORWARD_COLUMNS),
    "data": Benchmark(run_data_bench, DATA_COLUMNS, defaults=(("batch", 8), ("frames", 2048), ("repeats", 20))),
}


# ---------------------------------------------------------------------- report
def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[Column]) -> str:
    """Aligned text table: the first column left-aligned, the rest right-aligned."""
    cells = [[c.heading for c in columns]] + [[c.fmt(row.get(c.key)) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]

    def line(values):
        return "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths)))

    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths)] + [line(v) for v in cells[1:]])


def _persistent_cache() -> str | None:
    """The persistent compilation cache directory in force, or None when compiles are not cached to disk."""
    enabled = jax.config.jax_enable_compilation_cache
    return jax.config.jax_compilation_cache_dir if enabled else None


def environment_header(name: str, settings: Settings, command: str) -> dict[str, Any]:
    device = jax.devices()[0]
    return {
        "benchmark": name, "command": command,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "jax_version": jax.__version__, "jaxlib_version": importlib.metadata.version("jaxlib"),
        "backend": jax.default_backend(), "device_kind": device.device_kind, "device_count": jax.device_count(),
        "cpu_count": os.cpu_count(), "persistent_compilation_cache": _persistent_cache(),
        "settings": dataclasses.asdict(settings), "param_dtype_for": PARAM_DTYPE_FOR,
        "flops_sources": FLOPS_SOURCES,
    }


def run_benchmark(name: str, settings: Settings, out: str | os.PathLike, command: str | None = None) -> dict:
    """Runs benchmark `name`, prints its table on stdout, writes {"header", "rows"} JSON to `out`, returns it."""
    benchmark = BENCHMARKS[name]
    command = shlex.join(sys.argv) if command is None else command
    if _persistent_cache():
        _progress(f"warning: persistent compilation cache {_persistent_cache()} is on; compile times may be "
                  "cache loads")
    start = time.perf_counter()
    rows = benchmark.run(settings)
    header = {**environment_header(name, settings, command), "elapsed_s": time.perf_counter() - start}
    report = {"header": header, "rows": rows}
    print(format_table(rows, benchmark.columns), flush=True)
    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    _progress(f"wrote {out} ({len(rows)} rows, {header['elapsed_s']:.1f} s)")
    return report


# ---------------------------------------------------------------------- CLI
def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _counts(text: str) -> tuple[int, ...]:
    return tuple(int(name) for name in _names(text))


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m launch.bench", description=__doc__.split("\n")[0])
    subparsers = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for name, benchmark in BENCHMARKS.items():
        sub = subparsers.add_parser(name, help=(benchmark.run.__doc__ or "").split("\n")[0])
        defaults = benchmark.default_settings()
        sub.add_argument("--presets", type=_names, default=defaults.presets,
                         help=f"comma-separated model presets, of {sorted(config_lib.PRESETS)}")
        sub.add_argument("--dtypes", type=_names, default=defaults.dtypes,
                         help=f"comma-separated compute dtypes, of {sorted(PARAM_DTYPE_FOR)}")
        sub.add_argument("--batch", type=int, default=defaults.batch)
        sub.add_argument("--frames", type=int, default=defaults.frames)
        sub.add_argument("--repeats", type=int, default=defaults.repeats, help="timed runs after one warm-up")
        sub.add_argument("--seed", type=int, default=defaults.seed)
        sub.add_argument("--workers", type=_counts, default=defaults.workers,
                         help="data: comma-separated grain worker counts")
        sub.add_argument("--records", type=int, default=defaults.records,
                         help="data: synthetic records to build when --data_dir is not given")
        sub.add_argument("--stage", default=defaults.stage, help="data: stage config under configs/stages")
        sub.add_argument("--data_dir", default=defaults.data_dir, help="data: a built data dir to read instead")
        sub.add_argument("--out", default=f"bench_results/{name}.json", help="JSON report path")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    # Compile times must be real compiles: never read or write a persistent cache (before any compile, since
    # jax decides once per process whether the cache is used).
    jax.config.update("jax_enable_compilation_cache", False)
    try:
        settings = Settings(presets=args.presets, dtypes=args.dtypes, batch=args.batch, frames=args.frames,
                            repeats=args.repeats, seed=args.seed, workers=args.workers, records=args.records,
                            stage=args.stage, data_dir=args.data_dir)
    except ValueError as error:
        sys.exit(f"error: {error}")
    run_benchmark(args.benchmark, settings, args.out, command=shlex.join(["python", "-m", "launch.bench", *argv]))


if __name__ == "__main__":
    main()
