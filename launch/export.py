"""Export a training checkpoint to the released PyTorch format (config.json + safetensors), on the host CPU.

    python -m launch.export --workdir DIR [--step N] --out OUT [--dtype bfloat16|float32]
                            [--max_shard_bytes BYTES] [--overwrite]

DIR is any checkpoint path `flmjax.checkpoints.resolve` takes: a stage's training workdir, the main job's workdir
(its last stage), a step folder (WORKDIR/checkpoints/STEP) or a released-format folder (re-exported, e.g. in
another dtype). Reads the model config from the checkpoint's meta item, restores only the params onto one CPU device
(no training mesh, no accelerator memory) and writes them with `flmjax.convert.save_official`. Prints the files written.
Exits 2 with a one-line `error:` and nothing written when there is no checkpoint, the step is missing, OUT is not
empty (without --overwrite), OUT holds anything but a previous export (--overwrite replaces only an export), or OUT
is, contains or sits inside WORKDIR. A new export is written beside OUT and swapped in when whole.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from flmjax import checkpoints, files
from flmjax.convert import official
from flmjax.errors import UserError
from launch import cli

EXPORT_DTYPES = ("bfloat16", "float16", "float32")  # what save_official writes


class ExportError(UserError, RuntimeError):
    """An export that cannot run as asked; the message names the problem."""


def export(
    workdir: str | os.PathLike,
    out: str | os.PathLike,
    step: int | None = None,
    dtype: str = "bfloat16",
    max_shard_bytes: int = official.DEFAULT_MAX_SHARD_BYTES,
    overwrite: bool = False,
) -> list[str]:
    """Writes checkpoint `step` (newest complete one by default) of `workdir` (any path `flmjax.checkpoints.resolve`
    takes) to `out`; returns the files written."""
    out = os.fspath(out)
    files.check_apart(out, [workdir], what="--out")
    try:  # before reading the checkpoint: refuse what save_official would refuse
        official.check_export_target(out, dtype, overwrite)
    except (ValueError, FileExistsError) as error:
        raise ExportError(str(error).replace("overwrite=True", "--overwrite")) from None
    checkpoint = checkpoints.resolve(workdir, step, what="--workdir")
    config, params = checkpoint.model_config(), checkpoint.params()
    return official.save_official(
        out, config, params, dtype=dtype, max_shard_bytes=max_shard_bytes, overwrite=overwrite
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = cli.ArgumentParser(prog="python -m launch.export", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--workdir",
        required=True,
        help="a training workdir, the main job's workdir, a step folder or a released folder",
    )
    parser.add_argument("--step", type=int, help="checkpoint step (default: the newest complete one)")
    parser.add_argument("--out", required=True, help="folder to write config.json and safetensors into")
    parser.add_argument(
        "--dtype", default="bfloat16", choices=EXPORT_DTYPES, help="tensor dtype of the export (default bfloat16)"
    )
    parser.add_argument(
        "--max_shard_bytes",
        type=int,
        default=official.DEFAULT_MAX_SHARD_BYTES,
        help="split the safetensors into shards of at most this size, with an index",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    written = export(args.workdir, args.out, args.step, args.dtype, args.max_shard_bytes, args.overwrite)
    for path in written:
        print(f"wrote {path} ({os.path.getsize(path):,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
