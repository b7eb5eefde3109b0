"""Compile for a TPU slice you do not have: per-chip memory, XLA-estimated step time and MFU, collectives.

    python -m launch.aot train --topology v5p:4x4x4 --config configs/pods/v5p_64.py:stage4_duplex_leading \
        [--num_slices 2] [--config.x=y ...] [--out REPORT.json] [--sweep]
    python -m launch.aot stream --topology v5e:2x4 --model flm_audio_7b --batch 1,8,64 --max_frames 3750 \
        [--mesh data=1,tensor=8] [--out REPORT.json]

`train` compiles exactly the step `launch.train` runs for the config (`flmjax.train.loop.stage_step`: the same
model, loss, optimizer, state and batch shardings, donation and accumulation) for the devices of the topology
(`flmjax.hardware.topology_devices`), from abstract arrays only: no params are allocated, no data is read.
`stream` compiles the sharded streaming step (`flmjax.infer.stream`) the same way, per batch size.

What the report holds, per device unless it says otherwise:
- `memory` from the compiler's memory analysis of the real program; `fits` against the HBM the compiler
  itself allows one program (`hbm_bytes`, read from its own refusal of an oversized program). A program that
  does not fit gets a report too, with the compiler's required bytes, and the command exits 1.
- `collectives`: count and bytes per kind per step, from the optimised HLO (loop bodies times their trips).
- Estimates, never measurements: `estimated_step_s` is XLA's cost model (`cost_analysis()["optimal_seconds"]`).
  That model counts a `while` loop's body once whatever its trip count, and on TPU the SPMD partitioner turns
  sharded matmuls into loops too (windowed einsums), so the program's own figure is that of one layer, one
  micro-batch, and a fraction of some matmuls. The estimate therefore comes from probe compiles of the same
  step with windowed einsums off: P1 (loops as they are), Pd (the layer loop unrolled d-fold) and, with
  accumulation, Pa (the micro-batch loop unrolled a-fold), which give one layer's cost T = (Pd - P1) / (d - 1),
  one micro-batch's (m + T) = (Pa - P1) / (a - 1) and the rest O = P1 - (m + T), then
  step = O + A (m + T) + A (L - 1) T for A micro-batches of L layers. The same for XLA's FLOPs (`flops_xla`).
  `tests/test_aot.py` checks the method against a fully unrolled compile of a small model.
- `flops_formula` is `flmjax.train.step.model_flops_per_frame` x frames per step (whole slice);
  `estimated_mfu` = flops_formula / (estimated_step_s x devices x the device's peak bf16 FLOP/s from
  `flmjax.hardware.CHIPS`).
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # compile for the topology; claim no local accelerator

import json  # noqa: E402
import sys  # noqa: E402
from typing import Any  # noqa: E402

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from flmjax.errors import one_line  # noqa: E402
from launch.aot_compile import GIB, AotError, say  # noqa: E402
from launch.aot_stream import default_stream_mesh, parse_mesh, stream_model_config, stream_report  # noqa: E402
from launch.aot_sweep import SweepAxes, run_sweep  # noqa: E402
from launch.aot_tables import collectives_table, fmt, stream_table, train_table  # noqa: E402
from launch.aot_train import train_report  # noqa: E402

# This module is the command line (flags, devices, the report written and printed; absl's --help shows the
# docstring above); the work is in `launch.aot_compile` (one compile and what XLA says), `aot_train`, `aot_sweep`
# and `aot_stream` (one report kind each) and `aot_tables` (what is printed).
FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config",
    None,
    "train: a stage config, e.g. configs/pods/v5p_64.py:stage1_post_"
    "train_trailing or configs/stages/stage4_duplex_leading.py",
    lock_config=True,
)
flags.DEFINE_string("topology", None, "TPU topology to compile for, GENERATION:SHAPE (v5p:4x4x4, v5e:16x16, ...)")
flags.DEFINE_integer("num_slices", 1, "slices of that topology joined by the data-centre network (multi-slice)")
flags.DEFINE_string("out", None, "write the report (JSON) here")
flags.DEFINE_bool("sweep", False, "train: try mesh shapes x remat policies x micro-batch sizes, ranked by MFU")
flags.DEFINE_string("sweep_tensor", "1,2,4", "sweep: tensor-parallel sizes to try")
flags.DEFINE_string("sweep_remat", "full,attention,dots_no_batch", "sweep: remat policies to try")
flags.DEFINE_string("sweep_micro_batch", "1,2", "sweep: per-device micro-batch sizes (sequences) to try")
flags.DEFINE_bool("estimate", True, "train: also compile the probes behind the step-time estimate")
flags.DEFINE_string("model", "flm_audio_7b", "stream: a preset name or a released checkpoint folder")
flags.DEFINE_string("batch", "1,8,64", "stream: batch sizes (sessions) to compile")
flags.DEFINE_integer("max_frames", 3750, "stream: KV-cache frames per session (3750 = 5 minutes)")
flags.DEFINE_string(
    "mesh",
    None,
    "stream: mesh sizes, e.g. data=1,tensor=8 (default: tensor over every device "
    "the model's kv heads allow, data over the rest)",
)
flags.DEFINE_string("dtype", "bfloat16", "stream: compute, weight and cache dtype")


def _topology_devices():
    from flmjax import hardware

    if not FLAGS.topology and FLAGS.config is not None and FLAGS.config.get("topology"):
        FLAGS.topology = FLAGS.config.topology  # a pod config names its slice
    if not FLAGS.topology:
        raise AotError("--topology is required (e.g. --topology v5p:4x4x4)")
    return hardware.topology_devices(FLAGS.topology, FLAGS.num_slices)


def _write(report: Any) -> None:
    if FLAGS.out:
        from flmjax.files import write_atomically

        text = json.dumps(report, indent=2, sort_keys=True, default=str)

        def write(path):
            with open(path, "w") as f:
                f.write(text + "\n")

        write_atomically(FLAGS.out, write)
        say(f"wrote {FLAGS.out}")


def run_train() -> int:
    if FLAGS.config is None:
        raise AotError("train needs --config (a stage config, e.g. configs/pods/v5p_64.py:stage4_duplex_leading)")
    devices = _topology_devices()
    meta = {"topology": FLAGS.topology, "num_slices": FLAGS.num_slices}
    if FLAGS.sweep:
        try:
            axes = SweepAxes(
                tuple(int(x) for x in FLAGS.sweep_tensor.split(",")),
                tuple(FLAGS.sweep_remat.split(",")),
                tuple(int(x) for x in FLAGS.sweep_micro_batch.split(",")),
            )
        except ValueError:
            raise AotError("--sweep_tensor and --sweep_micro_batch take comma-separated integers") from None
        from flmjax.config import REMAT_POLICIES

        unknown = sorted(set(axes.remat) - set(REMAT_POLICIES))
        if unknown:
            raise AotError(f"--sweep_remat: unknown remat policies {unknown}; expected some of {REMAT_POLICIES}")
        reports = [{**meta, **r} for r in run_sweep(FLAGS.config, devices, axes)]
        print(train_table(reports))
        _write({"sweep": reports})
        return 0 if any(r["fits"] for r in reports) else 1
    report = {**meta, **train_report(FLAGS.config, devices, estimate=FLAGS.estimate)}
    print(train_table([report]))
    if report.get("collectives"):
        print(collectives_table(report))
    _write(report)
    if not report["fits"]:
        needed = report["memory"]["total"] if report["memory"]["total"] is not None else report["required_bytes"]
        over = "" if needed is None else f" by {(needed - report['hbm_bytes']) / GIB:.2f} GiB"
        print(
            f"does not fit: needs {fmt(needed, 1 / GIB)} GiB per device, the compiler allows "
            f"{fmt(report['hbm_bytes'], 1 / GIB)} GiB: over{over}",
            file=sys.stderr,
        )
        return 1
    return 0


def run_stream() -> int:
    devices = _topology_devices()
    config = stream_model_config(FLAGS.model, FLAGS.dtype)
    try:
        batches = [int(b) for b in FLAGS.batch.split(",")]
    except ValueError:
        raise AotError(f"--batch {FLAGS.batch!r}: expected comma-separated positive integers") from None
    if any(b < 1 for b in batches) or FLAGS.max_frames < 1:
        raise AotError(f"--batch ({FLAGS.batch}) and --max_frames ({FLAGS.max_frames}) must be positive")
    mesh_shape = parse_mesh(FLAGS.mesh) if FLAGS.mesh else default_stream_mesh(config, devices)
    from flmjax import sharding
    from flmjax.infer import stream_sharding

    mesh = sharding.make_mesh(mesh_shape, devices)  # a mesh that does not match the devices fails here
    stream_sharding.stream_param_shardings(config, mesh, batches[0])  # and a model that does not divide over it here
    reports = [
        {
            "topology": FLAGS.topology,
            "num_slices": FLAGS.num_slices,
            "model": FLAGS.model,
            **stream_report(config, devices, batch, FLAGS.max_frames, mesh_shape),
        }
        for batch in batches
    ]
    print(stream_table(reports))
    _write({"stream": reports})
    return 0 if all(r["fits"] for r in reports) else 1


def main(argv) -> None:
    if len(argv) != 2 or argv[1] not in ("train", "stream"):
        raise app.UsageError("usage: python -m launch.aot train|stream --topology NAME [...] (see --help)")
    if FLAGS.verbosity == 0:
        logging.set_verbosity(logging.WARNING)
    from flmjax import config as config_lib
    from flmjax import hardware, sharding
    from flmjax.train import loop

    known = (AotError, hardware.TopologyError, sharding.ShardingError, config_lib.ConfigError, loop.StageError)
    try:
        code = run_train() if argv[1] == "train" else run_stream()
    except (*known, ValueError) as error:  # ValueError: batch layout, loss and optimizer settings
        print(f"error: {one_line(error)}", file=sys.stderr)
        code = 2
    sys.exit(code)


if __name__ == "__main__":
    app.run(main)
