"""Import a released-format checkpoint (config.json + safetensors) as step 0 of a training workdir.

    python -m launch.import_official SRC --workdir DIR [--param_dtype float32]

Writes DIR/checkpoints/0 with the params and the meta item (model config), no optimizer or data-iterator
state: a stage starts from it with `Checkpointer.restore_params`. Refuses (exit 2, one `error:` line, nothing
touched) when DIR already holds checkpoints, when SRC and DIR overlap, or when SRC is not a valid released
checkpoint (a damaged config.json or safetensors file included).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

import jax
import jax.numpy as jnp

from flmjax import checkpoints as ckpt_lib
from flmjax import files
from flmjax.config import DTYPES
from flmjax.convert import load_official
from flmjax.errors import UserError
from launch import cli

IMPORT_STEP = 0


class ImportRefusedError(UserError, RuntimeError):
    """An import that cannot run as asked; the message names the problem."""


def import_official(src: str | os.PathLike, workdir: str | os.PathLike, param_dtype: str = "float32") -> int:
    """Loads the released checkpoint `src` and saves it as checkpoint step 0 of `workdir`; returns the step."""
    directory = ckpt_lib.checkpoint_dir(workdir)
    files.check_apart(directory, [src], what="the checkpoint folder")
    if os.path.isdir(directory) and os.listdir(directory):
        raise ImportRefusedError(
            f"{directory} already holds checkpoints ({sorted(os.listdir(directory))[:5]}); import into a fresh workdir"
        )
    config, params = load_official(src, param_dtype=param_dtype)
    cpu = jax.devices("cpu")[0]
    state = {"step": jnp.asarray(IMPORT_STEP, jnp.int32), "params": jax.device_put(params, cpu)}
    checkpointer = ckpt_lib.Checkpointer(workdir, max_to_keep=None, async_save=False)
    try:
        checkpointer.save(IMPORT_STEP, state, config, force=True)
    finally:
        checkpointer.close()
    return IMPORT_STEP


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = cli.ArgumentParser(prog="python -m launch.import_official", description=__doc__.split("\n")[0])
    parser.add_argument("src", help="released-format folder (config.json + model.safetensors or shards + index)")
    parser.add_argument("--workdir", required=True, help="training workdir to create checkpoint 0 in")
    parser.add_argument("--param_dtype", default="float32", choices=DTYPES, help="dtype of the stored params")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    step = import_official(args.src, args.workdir, args.param_dtype)
    print(f"imported {args.src} as step {step} of {ckpt_lib.checkpoint_dir(args.workdir)}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
