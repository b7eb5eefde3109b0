"""Train one stage, or the main job's whole dual-training schedule.

    python -m launch.train                                    # the main job (configs/main.py) in runs/main
    python -m launch.train --config configs/stages/stage1_post_train_trailing.py --workdir DIR \
        [--config.train.total_steps=1000 --config.data.global_batch_size=64 ...]
    python -m launch.train --config configs/stages/stage2_post_train_leading.py --workdir DIR2 \
        --config.init_from=DIR                                # start from stage 1's final checkpoint
    python -m launch.train ... --config.init_from=/path/to/released_checkpoint   # fine-tune the released model

A workdir that holds checkpoints is resumed from its newest complete one. Several processes (hosts) run with
`--num_processes N --process_id I --coordinator_address HOST:PORT`, or with no flags on a Cloud TPU VM pod,
where `jax.distributed.initialize()` finds the others by itself (see launch/tpu_pod.sh).
"""

from __future__ import annotations

import importlib
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/main.py", "a stage config (configs/stages/*.py) or a "
                                "schedule (configs/main.py)", lock_config=True)
flags.DEFINE_string("workdir", "runs/main", "where checkpoints and metrics go")
flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0, for multi-process runs")
flags.DEFINE_integer("num_processes", None, "number of processes (hosts) of a multi-process run")
flags.DEFINE_integer("process_id", None, "this process's index in a multi-process run")
flags.DEFINE_bool("tpu_pod", False, "initialise jax.distributed from the Cloud TPU environment")


def initialize_distributed() -> None:
    import jax

    if FLAGS.num_processes and FLAGS.num_processes > 1:
        jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                                   num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
    elif FLAGS.tpu_pod:
        jax.distributed.initialize()


def ensure_synthetic_data(data_dir: str, records: int, seed: int) -> None:
    """Builds the embedded synthetic corpus and its tokenizer in `data_dir` unless they are there."""
    from flmjax.data import dataset
    from launch import cli, prepare_data

    if dataset.read_summary(data_dir, "synthetic") and os.path.exists(os.path.join(data_dir, "tokenizer.model")):
        return
    print(f"building the synthetic corpus ({records} records) in {data_dir}", flush=True)
    if cli.run(prepare_data.main, ["--synthetic", str(records), "--seed", str(seed), "--out", data_dir]) != 0:
        raise SystemExit("building the synthetic corpus failed")


def stage_config(schedule, stage: str, previous_workdir: str):
    """A stage of the main job: the stage's own config with the schedule's shared settings."""
    config = importlib.import_module(f"configs.stages.{stage}").get_config(schedule.model)
    config.init_from = previous_workdir
    config.seed = schedule.seed
    config.data.data_dir = schedule.data_dir
    config.data.tokenizer = os.path.join(schedule.data_dir, "tokenizer.model")
    config.data.sequence_length = schedule.sequence_length
    config.data.global_batch_size = schedule.global_batch_size
    config.optimizer.learning_rate = schedule.learning_rate
    config.optimizer.warmup_steps = min(config.optimizer.warmup_steps, schedule.steps_per_stage // 5)
    config.train.total_steps = schedule.steps_per_stage
    config.train.log_every = schedule.log_every
    config.train.eval_every = schedule.eval_every
    config.train.duplex_eval_dialogs = schedule.get("duplex_eval_dialogs", 0)
    config.train.duplex_eval_text_temperature = schedule.get("duplex_eval_text_temperature", 0.0)
    config.train.save_every = schedule.steps_per_stage
    return config


def run_schedule(schedule, workdir: str) -> None:
    from flmjax.train import loop

    ensure_synthetic_data(schedule.data_dir, schedule.synthetic_records, schedule.seed)
    previous = ""
    for stage in schedule.schedule:
        stage_workdir = os.path.join(workdir, stage)
        print(f"=== {stage} -> {stage_workdir}", flush=True)
        result = loop.run_stage(stage_config(schedule, stage, previous), stage_workdir)
        if result.stopped_early:
            print(f"stopped early in {stage} at step {result.final_step}; run again to resume", flush=True)
            return
        previous = stage_workdir
    print(f"done: final model in {previous} (export: python -m launch.export --workdir {previous} --out OUT)")


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    if FLAGS.verbosity == 0:  # orbax and tfds log every file they touch at INFO
        logging.set_verbosity(logging.WARNING)
    initialize_distributed()
    import jax

    jax.config.update("jax_compilation_cache_dir", os.path.join(os.path.expanduser("~"), ".cache", "flmjax", "jax"))
    config = FLAGS.config
    if "schedule" in config:
        run_schedule(config, FLAGS.workdir)
        return
    from flmjax.train import loop

    try:
        loop.run_stage(config, FLAGS.workdir)
    except (loop.StageError, ValueError) as error:
        logging.error("%s", error)
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    app.run(main)
