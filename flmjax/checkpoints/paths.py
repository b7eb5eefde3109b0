"""Which checkpoint is this path? One answer for every entry point.

A user names a checkpoint by a folder of one of four kinds:

    released folder      config.json + safetensors (the released PyTorch format, `flmjax.convert`)
    stage workdir        WORKDIR/checkpoints/<step>/...: its newest complete step, unless a step is asked for
    main job's workdir   one stage workdir per subfolder (runs/main/stage1_..., ...): the last one in name order
                         that holds a complete checkpoint (the main job names its stages in schedule order)
    step folder          WORKDIR/checkpoints/<step>: that step of that workdir

`resolve(path, step)` says which kind it is and where (a `CheckpointPath`); the path's methods read the model
config, the params (on the host, as `restore_params_on_host` reads a workdir's, or laid out on a mesh) and the
stage config it was trained with. A path that is none of the four is `NotACheckpointError`, one line naming the
path and the kinds; a workdir without the step asked for is `NoCheckpointError`, naming the steps there are.

    checkpoint = resolve("runs/main")                      # the main job's last stage, newest step
    config, params = checkpoint.model_config(), checkpoint.params()   # params on the host CPU
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax

from flmjax import model
from flmjax.checkpoints import checkpointer as checkpointer_lib
from flmjax.checkpoints import layout
from flmjax.checkpoints.errors import NoCheckpointError
from flmjax.checkpoints.layout import CHECKPOINT_DIR
from flmjax.config import ModelConfig
from flmjax.convert import official

KINDS = (
    "a released-format folder (config.json + safetensors), a training workdir (with checkpoints/), the main "
    "job's workdir (stage workdirs) or a step folder (WORKDIR/checkpoints/STEP)"
)


class NotACheckpointError(NoCheckpointError):
    """A path that is none of the kinds of checkpoint folder; the message names it and the kinds."""


def _not_a_checkpoint(path: str, why: str, what: str) -> NotACheckpointError:
    return NotACheckpointError(f"{what} {path}: {why}; expected {KINDS}")


def is_released_checkpoint(path: str | os.PathLike) -> bool:
    """A released-format folder (config.json + safetensors), not a training workdir."""
    return os.path.isfile(os.path.join(path, "config.json")) and not os.path.isdir(os.path.join(path, CHECKPOINT_DIR))


def is_training_workdir(path: str | os.PathLike) -> bool:
    """A folder with a checkpoints/ folder (complete steps or not)."""
    return os.path.isdir(layout.checkpoint_dir(path))


def stage_workdirs(path: str | os.PathLike) -> list[str]:
    """The subfolders of `path` that hold a complete training checkpoint, in name order."""
    path = os.fspath(path)
    return [
        os.path.join(path, name)
        for name in sorted(os.listdir(path))
        if os.path.isdir(os.path.join(path, name)) and layout.latest_complete_step(os.path.join(path, name)) is not None
    ]


def _step_folder(path: str) -> tuple[str, int] | None:
    """(workdir, step) when `path` is WORKDIR/checkpoints/<step>, else None."""
    parent, name = os.path.split(os.path.normpath(path))
    if name.isdigit() and os.path.basename(parent) == CHECKPOINT_DIR:
        return os.path.dirname(parent), int(name)
    return None


def _complete_step(workdir: str | os.PathLike, step: int | None) -> int:
    """`step` (the newest by default) if it is a complete checkpoint of `workdir`; NoCheckpointError otherwise."""
    steps = layout.complete_steps(workdir)
    if not steps:
        raise NoCheckpointError(f"no complete checkpoint under {layout.checkpoint_dir(workdir)}")
    if step is not None and step not in steps:
        raise NoCheckpointError(
            f"no complete checkpoint for step {step} under {layout.checkpoint_dir(workdir)}; complete steps: {steps}"
        )
    return steps[-1] if step is None else int(step)


def restore_params_on_host(workdir: str | os.PathLike, step: int | None = None) -> tuple[ModelConfig, Any, int]:
    """(model config, params, step) of checkpoint `step` (newest complete one by default) of `workdir`,
    restored onto one CPU device: no training mesh, no accelerator memory (for export and inference)."""
    step = _complete_step(workdir, step)
    cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    checkpointer = checkpointer_lib.Checkpointer(workdir, read_only=True)
    try:
        config, _, step = checkpointer.read_meta(step)
        abstract = jax.tree.map(
            lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=cpu), model.abstract_params(config)
        )
        return config, checkpointer.restore_params(step, abstract_params=abstract), step
    finally:
        checkpointer.close()


@dataclasses.dataclass(frozen=True)
class CheckpointPath:
    """A checkpoint a user named, resolved: a released folder, or one step of one training workdir.

    `given`: the path as given; `folder`: the released folder or the stage workdir; `step`: the training step
    (None for a released folder)."""

    given: str
    folder: str
    step: int | None

    @property
    def released(self) -> bool:
        return self.step is None

    def describe(self) -> str:
        """One line saying what was loaded (for logs and reports)."""
        if self.released:
            return f"released-format checkpoint {self.folder}"
        return f"training checkpoint {self.folder} step {self.step}"

    def model_config(self, **overrides) -> ModelConfig:
        """The checkpoint's model config, with `overrides` (execution settings, e.g. `dtype`) applied."""
        if self.released:
            return ModelConfig.from_official(self.folder, **overrides)
        with checkpointer_lib.Checkpointer(self.folder, read_only=True) as checkpointer:
            config = checkpointer.read_meta(self.step)[0]
        return config.replace(**overrides)

    def stage_config(self) -> dict | None:
        """The stage config the checkpoint was trained with (None for a released folder or an import)."""
        if self.released:
            return None
        with checkpointer_lib.Checkpointer(self.folder, read_only=True) as checkpointer:
            return checkpointer.read_meta(self.step)[1]

    def params(self, abstract_params: Any = None, **overrides) -> Any:
        """The params, laid out as `abstract_params` says (leaves `jax.ShapeDtypeStruct(shape, dtype,
        sharding=...)`, e.g. a training mesh's), or on the host CPU when it is None. `overrides` (e.g.
        `param_dtype`) apply to a released folder's, which is read whole on the host first."""
        if self.released:
            params = official.load_official(self.folder, **overrides)[1]
            if abstract_params is None:
                return params
            return jax.device_put(params, jax.tree.map(lambda leaf: leaf.sharding, abstract_params))
        if abstract_params is None:
            return restore_params_on_host(self.folder, self.step)[1]
        with checkpointer_lib.Checkpointer(self.folder, read_only=True) as checkpointer:
            return checkpointer.restore_params(self.step, abstract_params=abstract_params)


def resolve(path: str | os.PathLike, step: int | None = None, what: str = "checkpoint") -> CheckpointPath:
    """The checkpoint `path` names (see the module docstring), at `step` for a training one (its newest complete
    step by default). `what` names the path in errors (e.g. "--workdir", "init_from").

    Raises `NotACheckpointError` for a path that is none of the kinds, `NoCheckpointError` for a workdir without
    a complete checkpoint (or without `step`) and for a step asked of a released folder."""
    given = os.fspath(path)
    if not os.path.isdir(given):
        raise _not_a_checkpoint(given, "no such folder" if not os.path.exists(given) else "not a folder", what)
    if is_released_checkpoint(given):
        if step is not None:
            raise NoCheckpointError(f"{what} {given} is a released-format checkpoint: it has no steps to choose")
        return CheckpointPath(given, given, None)
    workdir = given
    in_path = _step_folder(given)
    if in_path is not None:
        workdir, path_step = in_path
        if step is not None and step != path_step:
            raise NoCheckpointError(f"{what} {given} is step {path_step}'s folder, but step {step} was asked for")
        step = path_step
    elif not is_training_workdir(given):
        stages = stage_workdirs(given)
        if not stages:
            raise _not_a_checkpoint(
                given, f"it holds neither config.json, nor {CHECKPOINT_DIR}/, nor stage workdirs with checkpoints", what
            )
        workdir = stages[-1]
    return CheckpointPath(given, workdir, _complete_step(workdir, step))


def load_model(path: str | os.PathLike, step: int | None = None) -> tuple[ModelConfig, Any, str]:
    """(config, params on the host, a line saying what was loaded) of the checkpoint `path` names."""
    checkpoint = resolve(path, step)
    return checkpoint.model_config(), checkpoint.params(), checkpoint.describe()
