"""Checkpoints: orbax training checkpoints of a workdir (`checkpointer`), where they lie and which steps are
complete (`layout`), what a failed save or restore raises (`errors`), and the one answer to "which checkpoint is
this path?" (`paths`) that every entry point uses."""

from flmjax.checkpoints.checkpointer import Checkpointer
from flmjax.checkpoints.errors import (
    CheckpointCorruptError,
    CheckpointError,
    CheckpointExistsError,
    CheckpointMismatchError,
    NoCheckpointError,
)
from flmjax.checkpoints.layout import CHECKPOINT_DIR, checkpoint_dir, complete_steps, latest_complete_step
from flmjax.checkpoints.paths import (
    CheckpointPath,
    NotACheckpointError,
    is_released_checkpoint,
    load_model,
    resolve,
    restore_params_on_host,
)

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
