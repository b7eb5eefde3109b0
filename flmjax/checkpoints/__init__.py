"""Checkpoints: orbax training checkpoints of a workdir (`checkpointer`) and the one answer to "which checkpoint
is this path?" (`paths`) that every entry point uses."""

from flmjax.checkpoints.checkpointer import (
    CHECKPOINT_DIR,
    CheckpointCorruptError,
    Checkpointer,
    CheckpointError,
    CheckpointExistsError,
    CheckpointMismatchError,
    NoCheckpointError,
    checkpoint_dir,
    complete_steps,
    latest_complete_step,
    restore_params_on_host,
)
from flmjax.checkpoints.paths import CheckpointPath, NotACheckpointError, is_released_checkpoint, load_model, resolve

__all__ = [
    "CHECKPOINT_DIR",
    "CheckpointCorruptError",
    "CheckpointError",
    "CheckpointExistsError",
    "CheckpointMismatchError",
    "CheckpointPath",
    "Checkpointer",
    "NoCheckpointError",
    "NotACheckpointError",
    "checkpoint_dir",
    "complete_steps",
    "is_released_checkpoint",
    "latest_complete_step",
    "load_model",
    "resolve",
    "restore_params_on_host",
]
