"""Model params for inference from any checkpoint a user has: a released-format folder, a stage's training
workdir, or the main job's workdir (one stage folder each; the last stage that has a checkpoint is used)."""

from __future__ import annotations

import os
from typing import Any

from flmjax.config import ModelConfig
from flmjax.convert import official
from flmjax.train import checkpoint as ckpt_lib


def _stage_workdirs(path: str) -> list[str]:
    """Subfolders holding a complete training checkpoint, in name order (the main job names them stage1_...)."""
    found = []
    for name in sorted(os.listdir(path)):
        candidate = os.path.join(path, name)
        if os.path.isdir(candidate) and ckpt_lib.latest_complete_step(candidate) is not None:
            found.append(candidate)
    return found


def load_model(path: str | os.PathLike, step: int | None = None) -> tuple[ModelConfig, Any, str]:
    """(config, params on the host, a line saying what was loaded) from `path`.

    `path`: a released-format folder (config.json + safetensors), a training workdir (checkpoints/, newest
    complete step unless `step`), or a folder of stage workdirs (the last one in name order).
    """
    config, params, description, _ = load_model_and_stage(path, step)
    return config, params, description


def load_model_and_stage(path: str | os.PathLike, step: int | None = None
                         ) -> tuple[ModelConfig, Any, str, dict | None]:
    """`load_model` plus the stage config the checkpoint was trained with (None for a released folder)."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise ckpt_lib.NoCheckpointError(f"checkpoint {path!r} is not a folder")
    if ckpt_lib.is_released_checkpoint(path):
        if step is not None:
            raise ckpt_lib.NoCheckpointError(f"{path} is a released-format checkpoint: it has no steps to choose")
        config, params = official.load_official(path)
        return config, params, f"released-format checkpoint {path}", None
    workdir = path
    if not os.path.isdir(os.path.join(path, ckpt_lib.CHECKPOINT_DIR)):
        stages = _stage_workdirs(path)
        if not stages:
            raise ckpt_lib.NoCheckpointError(
                f"{path} holds neither config.json (released format), nor {ckpt_lib.CHECKPOINT_DIR}/ (a training "
                "workdir), nor stage workdirs with checkpoints")
        workdir = stages[-1]
    config, params, step = ckpt_lib.restore_params_on_host(workdir, step)
    checkpointer = ckpt_lib.Checkpointer(workdir, read_only=True)
    try:
        _, stage_config, _ = checkpointer.read_meta(step)
    finally:
        checkpointer.close()
    return config, params, f"training checkpoint {workdir} step {step}", stage_config
