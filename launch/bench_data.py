"""The `data` benchmark: a stage's Grain pipeline (dataset records -> monologue placement, delays, crop/pad ->
batches) over a synthetic corpus it builds (or `--data_dir`): the first batch (start-up) separately, then
`--repeats` batches, once per worker count.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import tempfile
import time
from typing import Any

from absl import flags

from flmjax import presets
from flmjax.data import pipeline, sentencepiece_tokenizer
from flmjax.data.examples import StreamIds
from launch import cli, prepare_data
from launch.bench_common import Benchmark, Column, Settings, fixed, progress


def _bench_data_dir(settings: Settings, scratch: str) -> str:
    if settings.data_dir:
        return settings.data_dir
    progress(f"[data] building {settings.records} synthetic records in {scratch}")
    with contextlib.redirect_stdout(sys.stderr):  # its summary is progress here, not the benchmark's table
        status = cli.run(
            prepare_data.main,
            ["--synthetic", str(settings.records), "--seed", str(settings.seed), "--out", scratch, "--no_progress"],
        )
    if status != 0:
        raise RuntimeError("building the synthetic corpus failed")
    return scratch


def run_data_bench(settings: Settings) -> list[dict[str, Any]]:
    """One row per worker count: batches/s and frames/s of a stage's Grain pipeline (records to batches)."""
    flags.FLAGS.mark_as_parsed()  # grain worker processes read absl flags
    rows = []
    with tempfile.TemporaryDirectory(prefix="flmjax-bench-data-") as scratch:
        data_dir = _bench_data_dir(settings, scratch)
        config = importlib.import_module(f"configs.stages.{settings.stage}").get_config()
        config.data.data_dir, config.data.sequence_length = data_dir, settings.frames
        config.data.global_batch_size, config.seed = settings.batch, settings.seed
        tokenizer = sentencepiece_tokenizer.SentencePieceTokenizer(os.path.join(data_dir, "tokenizer.model"))
        ids = StreamIds(tokenizer.wait_id, presets.preset(config.model).aud_pad_id)
        for workers in settings.workers:
            progress(
                f"[data] {settings.stage}: batch {settings.batch} x {settings.frames} frames, "
                f"{workers} workers, {settings.repeats} timed batches"
            )
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
            rows.append(
                {
                    "stage": settings.stage,
                    "workers": workers,
                    "batch": settings.batch,
                    "frames": settings.frames,
                    "batches": settings.repeats,
                    "first_batch_s": first_batch_s,
                    "elapsed_s": elapsed,
                    "batches_per_s": settings.repeats / elapsed,
                    "frames_per_s": settings.repeats * settings.batch * settings.frames / elapsed,
                }
            )
    return rows


DATA_COLUMNS = (
    Column("stage", "stage"),
    Column("workers", "workers"),
    Column("batch", "batch"),
    Column("frames", "frames"),
    Column("first batch s", "first_batch_s", fixed(2)),
    Column("batches/s", "batches_per_s", fixed(2)),
    Column("frames/s", "frames_per_s", fixed(0)),
)

BENCHMARK = Benchmark(run_data_bench, DATA_COLUMNS, defaults=(("batch", 8), ("frames", 2048), ("repeats", 20)))
