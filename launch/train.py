"""Train one stage, or the main job's whole dual-training schedule.

    python -m launch.train                                    # the main job (configs/main.py) in runs/main
    python -m launch.train --config configs/stages/stage1_post_train_trailing.py --workdir DIR \
        [--config.train.total_steps=1000 --config.data.global_batch_size=64 ...]
    python -m launch.train --config configs/stages/stage2_post_train_leading.py --workdir DIR2 \
        --config.init_from=DIR                                # start from stage 1's final checkpoint
    python -m launch.train ... --config.init_from=/path/to/released_checkpoint   # fine-tune the released model

A workdir that holds checkpoints is resumed from its newest complete one (a damaged newer one is moved to
WORKDIR/checkpoints_damaged, with a warning). SIGTERM (preemption) or Ctrl-C saves at the next step and stops
(exit status 0, or 130 after Ctrl-C); a second Ctrl-C stops at once. A bad flag, config key, workdir, input or
checkpoint is one `error: ...` line (exit status 2). Several processes (hosts) run with
`--num_processes N --process_id I --coordinator_address HOST:PORT`, or with no flags on a Cloud TPU VM pod,
where `jax.distributed.initialize()` finds the others by itself (see launch/tpu_pod.sh).
"""

from __future__ import annotations

import functools
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from flmjax.errors import UserError, one_line
from launch import cli

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config",
    "configs/main.py",
    "a stage config (configs/stages/*.py) or a schedule (configs/main.py)",
    lock_config=True,
)
flags.DEFINE_string("workdir", "runs/main", "where checkpoints and metrics go")
flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0, for multi-process runs")
flags.DEFINE_integer("num_processes", None, "number of processes (hosts) of a multi-process run")
flags.DEFINE_integer("process_id", None, "this process's index in a multi-process run")
flags.DEFINE_bool("tpu_pod", False, "initialise jax.distributed from the Cloud TPU environment")


def initialize_distributed() -> None:
    import jax

    if FLAGS.num_processes and FLAGS.num_processes > 1:
        jax.distributed.initialize(
            coordinator_address=FLAGS.coordinator_address,
            num_processes=FLAGS.num_processes,
            process_id=FLAGS.process_id,
        )
    elif FLAGS.tpu_pod:
        jax.distributed.initialize()


def ensure_synthetic_data(data_dir: str, records: int, seed: int) -> None:
    """Builds the embedded synthetic corpus and its tokenizer in `data_dir` unless they are there."""
    from flmjax.data import dataset_source
    from launch import prepare_data

    if dataset_source.read_summary(data_dir, "synthetic") and os.path.exists(os.path.join(data_dir, "tokenizer.model")):
        return
    print(f"building the synthetic corpus ({records} records) in {data_dir}", flush=True)
    if cli.run(prepare_data.main, ["--synthetic", str(records), "--seed", str(seed), "--out", data_dir]) != 0:
        raise UserError(f"building the synthetic corpus in {data_dir} failed")


def stage_config(schedule, stage: str, previous_workdir: str):
    """A stage of the main job (`configs.stages.common.schedule_stage`), starting from the previous stage's
    workdir."""
    from configs.stages.common import schedule_stage

    config = schedule_stage(schedule, stage)
    config.init_from = previous_workdir
    return config


def exit_status(result) -> int | None:
    """A run stopped by Ctrl-C exits with 130 (so `train && export` stops there); SIGTERM or the end with 0."""
    return cli.INTERRUPTED if result.stopped_by == "SIGINT" else None


def run_schedule(schedule, workdir: str) -> int | None:
    from flmjax.eval import evaluators
    from flmjax.train import loop

    ensure_synthetic_data(schedule.data_dir, schedule.synthetic_records, schedule.seed)
    previous = ""
    for stage in schedule.schedule:
        stage_workdir = os.path.join(workdir, stage)
        print(f"=== {stage} -> {stage_workdir}", flush=True)
        config = stage_config(schedule, stage, previous)
        result = loop.run_stage(config, stage_workdir, evaluators=evaluators.from_config(config))
        if result.stopped_early:
            print(f"stopped early in {stage} at step {result.final_step}; run again to resume", flush=True)
            return exit_status(result)
        previous = stage_workdir
    print(f"done: final model in {previous} (export: python -m launch.export --workdir {previous} --out OUT)")


def unknown_config_key(error: KeyError | AttributeError, argv) -> str | None:
    """The problem, when `error` is ml_collections refusing a `--config.KEY` override that names no field of the
    config; None when no override names the missing field (then it is not the user's)."""
    missing = str(error).strip("\"'")
    overrides = [arg.split("=")[0].lstrip("-") for arg in argv if arg.startswith("--config.")]
    named = [override for override in overrides if missing in override.split(".")[1:]]
    if not named:
        return None
    return f"--{named[0]}: the config has no field {missing!r} (see the config file for the fields it has)"


def parse_flags(argv) -> list[str]:
    """absl's flag parsing, with a bad flag, config file or `--config.KEY` as one `error:` line and exit status 2
    (absl says "FATAL Flags parsing error" with status 1; ml_collections raises a bare KeyError or
    AttributeError)."""
    try:
        return FLAGS(argv)
    except flags.Error as error:
        problem = one_line(error)
    except OSError as error:  # a --config file that is not there; its cause says which and why
        problem = one_line(error.__cause__ or error)
    except (KeyError, AttributeError) as error:
        problem = unknown_config_key(error, argv)
        if problem is None:
            raise
    print(f"error: {problem}", file=sys.stderr, flush=True)
    sys.exit(cli.USAGE_ERROR)


def main(argv) -> int | None:
    if len(argv) > 1:
        raise UserError(f"unexpected arguments {argv[1:]}")
    if FLAGS.verbosity == 0:  # orbax and tfds log every file they touch at INFO
        logging.set_verbosity(logging.WARNING)
    initialize_distributed()
    import jax

    jax.config.update("jax_compilation_cache_dir", os.path.join(os.path.expanduser("~"), ".cache", "flmjax", "jax"))
    config = FLAGS.config
    if "schedule" in config:
        return run_schedule(config, FLAGS.workdir)
    from flmjax.eval import evaluators
    from flmjax.train import loop

    return exit_status(loop.run_stage(config, FLAGS.workdir, evaluators=evaluators.from_config(config)))


def main_or_abort(argv) -> int | None:
    """`main`, except that a Ctrl-C that reaches here (the second one in the training loop, or one before it)
    ends the process at once: exiting normally would wait for a background save's threads, which is not "at
    once", and they print tracebacks when they meet the shutdown. An unfinished save stays a tmp folder that no
    resume counts."""
    try:
        return main(argv)
    except KeyboardInterrupt:
        sys.stdout.flush()
        print("interrupted", file=sys.stderr, flush=True)
        os._exit(cli.INTERRUPTED)


if __name__ == "__main__":
    app.run(functools.partial(cli.run, main_or_abort), flags_parser=parse_flags)
