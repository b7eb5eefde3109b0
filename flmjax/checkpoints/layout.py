"""Where a workdir's training checkpoints lie on disk, and which of its steps are complete.

Layout (`WORKDIR/checkpoints/<step>/`, one orbax composite checkpoint per step; `Checkpointer.set_aside` moves a
damaged one to `WORKDIR/checkpoints_damaged/<step>`):

    _CHECKPOINT_METADATA          orbax: item handlers, commit time
    params/                       StandardSave (OCDBT + zarr) of the param tree
    opt_state/                    StandardSave of the optax state (absent in an imported checkpoint)
    meta/metadata                 JSON: {"format", "step", "model": {"official", "execution"}, "stage_config"}
    data_iter/process_I-of-N.json grain iterator state, one file per process (optional)

orbax writes a step into `<step>.orbax-checkpoint-tmp` and renames it when every item is written, so an
interrupted (async) save never shows up as a step; a step also counts only when its `meta` item is there.
"""

from __future__ import annotations

import os

import orbax.checkpoint as ocp

CHECKPOINT_DIR = "checkpoints"
DAMAGED_DIR = "checkpoints_damaged"  # where `set_aside` keeps damaged steps: out of orbax's sight, not deleted
FORMAT_VERSION = 1
PARAMS, OPT_STATE, META, DATA_ITER = "params", "opt_state", "meta", "data_iter"
ARRAY_ITEMS = (PARAMS, OPT_STATE)
META_FILE = "metadata"  # what orbax's JsonSave names its file inside the item folder


def checkpoint_dir(workdir: str | os.PathLike) -> str:
    return os.path.join(os.fspath(workdir), CHECKPOINT_DIR)


def is_complete(step_dir: str) -> bool:
    return os.path.isfile(os.path.join(step_dir, META, META_FILE))


def complete_steps(workdir: str | os.PathLike) -> list[int]:
    """The steps under WORKDIR/checkpoints that orbax finalized and that hold their meta item, ascending."""
    directory = checkpoint_dir(workdir)
    if not os.path.isdir(directory):
        return []
    return sorted(
        step for step in ocp.path.step.checkpoint_steps(directory) if is_complete(os.path.join(directory, str(step)))
    )


def latest_complete_step(workdir: str | os.PathLike) -> int | None:
    """The newest complete step of a workdir, or None; unfinished (tmp) saves are never counted."""
    steps = complete_steps(workdir)
    return steps[-1] if steps else None
