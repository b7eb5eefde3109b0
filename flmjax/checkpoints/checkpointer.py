"""Training checkpoints of one workdir: the `Checkpointer`, an orbax `CheckpointManager` that saves and restores
params, optimizer state, step, config and data-iterator state, restorable onto any mesh.

Where the steps lie on disk and which count is `flmjax.checkpoints.layout`; what a failed save or restore raises
is `flmjax.checkpoints.errors`. No failed operation deletes or rewrites a saved step.

    ckpt = Checkpointer(workdir, max_to_keep=3)
    ckpt.save(step, state, model_config, data_iterator=it, stage_config=cfg)   # async; returns at once
    state = ckpt.restore(abstract_state=abstract, data_iterator=it)           # leaves: ShapeDtypeStruct(sharding=)
    ckpt.close()                                                              # waits for the last save
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import grain
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from flmjax.checkpoints.errors import (
    SHAPE_FIELDS,
    CheckpointCorruptError,
    CheckpointError,
    CheckpointExistsError,
    CheckpointMismatchError,
    NoCheckpointError,
    first_line,
    flat_shapes,
    quiet_abandoned_reads,
    shape_differences,
)
from flmjax.checkpoints.layout import (
    ARRAY_ITEMS,
    DAMAGED_DIR,
    DATA_ITER,
    FORMAT_VERSION,
    META,
    META_FILE,
    OPT_STATE,
    PARAMS,
    checkpoint_dir,
    is_complete,
)
from flmjax.config import ModelConfig

State = dict[str, Any]


def _as_abstract(leaf: Any) -> jax.ShapeDtypeStruct:
    sharding = getattr(leaf, "sharding", None)
    if sharding is None:
        raise ValueError(
            "every leaf to restore into needs a sharding (jax.ShapeDtypeStruct(shape, dtype, "
            "sharding=...) on the current mesh, or a jax.Array)"
        )
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)


def _stage_config_dict(stage_config: Any) -> dict | None:
    """A stage config (dict, JSON text, or ml_collections ConfigDict) as a JSON-safe dict."""
    if stage_config is None:
        return None
    if isinstance(stage_config, str):
        return json.loads(stage_config)
    if hasattr(stage_config, "to_json"):
        return json.loads(stage_config.to_json())
    return json.loads(json.dumps(dict(stage_config)))


def _unused_path(path: str) -> str:
    """`path`, or `path-2`, `path-3`, ... : the first that does not exist."""
    candidate, number = path, 1
    while os.path.exists(candidate):
        number += 1
        candidate = f"{path}-{number}"
    return candidate


# ---------------------------------------------------------------------- the checkpointer
class Checkpointer:
    """Saves and restores the training state of one workdir (WORKDIR/checkpoints/<step>).

    `max_to_keep` newest steps are kept (older ones are deleted once a newer save has finished);
    `save_interval_steps`: `save` without `force` only writes steps that are multiples of it (and newer than
    the latest); `async_save`: `save` returns once the arrays are copied to host and writes in the background;
    `read_only` (e.g. for export): nothing is created, written or deleted.
    """

    def __init__(
        self,
        workdir: str | os.PathLike,
        max_to_keep: int | None = 3,
        save_interval_steps: int = 1,
        async_save: bool = True,
        read_only: bool = False,
    ):
        self.workdir = os.fspath(workdir)
        self.directory = checkpoint_dir(self.workdir)
        self.read_only = read_only  # enforced by `save` (orbax's own read_only logs warnings on every use)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None if read_only else max_to_keep,
            save_interval_steps=save_interval_steps,
            enable_async_checkpointing=async_save,
            create=not read_only,
            cleanup_tmp_directories=False,
        )  # a tmp dir may be another job's save in flight: never touch it
        handlers = {
            PARAMS: ocp.StandardCheckpointHandler(),
            OPT_STATE: ocp.StandardCheckpointHandler(),
            META: ocp.JsonCheckpointHandler(),
            DATA_ITER: grain.checkpoint.CheckpointHandler(),
        }
        self._manager = ocp.CheckpointManager(os.path.abspath(self.directory), options=options, item_handlers=handlers)
        self._session_steps: set[int] = set()  # steps this object saved or restored: their state is known

    # ------------------------------------------------------------------ steps
    def all_steps(self) -> list[int]:
        """Every complete step, ascending (finalized by orbax and holding the meta item)."""
        self._manager.reload()
        return sorted(step for step in self._manager.all_steps() if is_complete(self._step_dir(step)))

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def _step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def set_aside(self, step: int) -> str:
        """Moves checkpoint `step` out of the checkpoints folder, to WORKDIR/checkpoints_damaged/<step> (or
        <step>-2, ... when that is taken), so that no resume or save sees it again; nothing is deleted. Returns
        where it went. Process 0 moves it; every process forgets it."""
        if self.read_only:
            raise CheckpointError(f"set_aside(step={step}): this Checkpointer of {self.directory} is read-only")
        destination = _unused_path(os.path.join(self.workdir, DAMAGED_DIR, str(step)))
        if jax.process_index() == 0:
            os.makedirs(os.path.dirname(destination), exist_ok=True)
            os.rename(self._step_dir(step), destination)
        self._session_steps.discard(step)
        self._manager.reload()
        return destination

    def _resolve_step(self, step: int | None) -> int:
        steps = self.all_steps()
        if step is None:
            if not steps:
                raise NoCheckpointError(f"no complete checkpoint under {self.directory}")
            return steps[-1]
        if step not in steps:
            raise NoCheckpointError(
                f"no complete checkpoint for step {step} under {self.directory}; complete steps: {steps or 'none'}"
            )
        return int(step)

    # ------------------------------------------------------------------ save
    def save(
        self,
        step: int,
        state: State,
        model_config: ModelConfig,
        data_iterator: Any = None,
        stage_config: Any = None,
        force: bool = False,
    ) -> bool:
        """Starts saving `state` (`{"step", "params", "opt_state"?}`) as checkpoint `step`; True if it does.

        Without `force`, a step that is not a multiple of `save_interval_steps`, or not newer than the latest
        checkpoint, is skipped (False). `force` saves regardless (e.g. on SIGTERM; follow with `wait()`).
        A step this object already saved or restored is skipped (False: the same state is on disk); any other
        existing step raises `CheckpointExistsError`, it is never overwritten. The data iterator's state is
        captured before this returns, so the caller may keep iterating.
        """
        if self.read_only:
            raise CheckpointError(f"save(step={step}): this Checkpointer of {self.directory} is read-only")
        step = int(step)
        state_step = int(jax.device_get(state["step"]))
        if state_step != step:
            raise ValueError(f"save(step={step}) of a state whose step is {state_step}")
        if step in self._session_steps:
            return False
        if step in self._manager.all_steps() or os.path.isdir(self._step_dir(step)):
            raise CheckpointExistsError(
                f"checkpoint step {step} already exists in {self.directory}; refusing to "
                "overwrite it (delete it yourself if it is really unwanted)"
            )
        meta = {
            "format": FORMAT_VERSION,
            "step": step,
            "model": {"official": model_config.to_official(), "execution": model_config.execution_settings()},
            "stage_config": _stage_config_dict(stage_config),
        }
        items = {PARAMS: ocp.args.StandardSave(state["params"]), META: ocp.args.JsonSave(meta)}
        if state.get("opt_state") is not None:
            items[OPT_STATE] = ocp.args.StandardSave(state["opt_state"])
        if data_iterator is not None:
            items[DATA_ITER] = grain.checkpoint.CheckpointSave(data_iterator)
        try:
            saved = self._manager.save(step, args=ocp.args.Composite(**items), force=force)
        except ocp.checkpoint_manager.StepAlreadyExistsError as error:
            raise CheckpointExistsError(f"checkpoint step {step} already exists in {self.directory}") from error
        if saved:
            self._session_steps.add(step)
        return bool(saved)

    def wait(self) -> None:
        """Blocks until every started save is on disk (raises what a background save raised)."""
        try:
            self._manager.wait_until_finished()
        except BaseException:
            self._session_steps = {step for step in self._session_steps if is_complete(self._step_dir(step))}
            raise

    def close(self) -> None:
        self.wait()
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ read
    def read_meta(self, step: int | None = None) -> tuple[ModelConfig, dict | None, int]:
        """(model config, stage config dict or None, step) of a checkpoint (the newest complete one by default)."""
        self.wait()
        step = self._resolve_step(step)
        meta = self._read_meta(step)
        return (
            ModelConfig.from_official(meta["model"]["official"], **meta["model"]["execution"]),
            meta.get("stage_config"),
            int(meta["step"]),
        )

    def _read_meta(self, step: int) -> dict:
        path = os.path.join(self._step_dir(step), META, META_FILE)
        try:
            with open(path) as f:
                meta = json.load(f)
            saved_step = int(meta["step"])
            missing = {"official", "execution"} - set(meta["model"])
            if missing:
                raise KeyError(f"model.{sorted(missing)[0]}")
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise CheckpointCorruptError(
                f"checkpoint step {step} ({self._step_dir(step)}): item '{META}' is unreadable ({first_line(error)})"
            ) from error
        if saved_step != step:
            raise CheckpointCorruptError(
                f"checkpoint step {step} ({self._step_dir(step)}): item '{META}' says step {saved_step}"
            )
        return meta

    def _items_on_disk(self, step: int) -> set[str]:
        step_dir = self._step_dir(step)
        return {name for name in os.listdir(step_dir) if os.path.isdir(os.path.join(step_dir, name))}

    def _saved_shapes(self, step: int, item: str) -> dict[str, tuple[int, ...]]:
        try:
            metadata = self._manager.item_metadata(step)[item]
            if metadata is None:
                raise ValueError("no metadata")
            return flat_shapes(metadata)
        except Exception as error:  # noqa: BLE001 (orbax/tensorstore raise many kinds)
            raise CheckpointCorruptError(
                f"checkpoint step {step} ({self._step_dir(step)}): the metadata of item "
                f"'{item}' is missing or unreadable ({first_line(error)})"
            ) from error

    def _check_fits(self, step: int, targets: Mapping[str, Any]) -> None:
        """Raises `CheckpointMismatchError` unless every array item's saved tree and shapes equal the targets'."""
        on_disk = self._items_on_disk(step)
        problems = []
        for item, target in targets.items():
            if item not in on_disk:
                hint = (
                    " (an imported or params-only checkpoint: start from it with restore_params)"
                    if item == OPT_STATE
                    else ""
                )
                problems.append(f"item '{item}' is not in the checkpoint{hint}")
                continue
            problems += shape_differences(self._saved_shapes(step, item), flat_shapes(target), f"{item}/")
        if problems:
            config = self.read_meta(step)[0]
            saved_with = ", ".join(f"{name}={getattr(config, name)}" for name in SHAPE_FIELDS)
            raise CheckpointMismatchError(
                f"checkpoint step {step} ({self._step_dir(step)}) does not fit the state it is restored into "
                f"({len(problems)} differences; the checkpoint's model has {saved_with}):\n  " + "\n  ".join(problems)
            )

    def _restore_item(self, step: int, item: str, args: Any) -> Any:
        """One item, with any failure to read it reported as `CheckpointCorruptError`."""
        quiet_abandoned_reads()
        try:
            return self._manager.restore(step, args=ocp.args.Composite(**{item: args}))[item]
        except Exception as error:  # noqa: BLE001 (tensorstore raises plain Exception)
            raise CheckpointCorruptError(
                f"checkpoint step {step} ({self._step_dir(step)}): item '{item}' could "
                f"not be read; it is truncated or corrupt ({first_line(error)})"
            ) from error

    def restore(self, step: int | None = None, *, abstract_state: State, data_iterator: Any = None) -> State:
        """The state of checkpoint `step` (newest complete by default), laid out as `abstract_state` says.

        `abstract_state`: `{"step", "params", "opt_state"?}` whose leaves are `jax.ShapeDtypeStruct(shape, dtype,
        sharding=...)` (or arrays) on the current mesh; any mesh works, whatever the checkpoint was saved on.
        Array dtypes follow `abstract_state` (cast on read). `data_iterator` (a grain DatasetIterator over the
        same pipeline) is set to the saved position. Raises `CheckpointMismatchError` (checked before reading
        any array) or `CheckpointCorruptError`.
        """
        self.wait()
        step = self._resolve_step(step)
        self._read_meta(step)
        targets = {
            item: jax.tree.map(_as_abstract, abstract_state[item])
            for item in ARRAY_ITEMS
            if abstract_state.get(item) is not None
        }
        if data_iterator is not None:
            self._check_data_iter(step)
        self._check_fits(step, targets)
        state = {
            item: self._restore_item(step, item, ocp.args.StandardRestore(target)) for item, target in targets.items()
        }
        step_leaf = abstract_state.get("step")
        step_array = jnp.asarray(step, getattr(step_leaf, "dtype", jnp.int32))
        if getattr(step_leaf, "sharding", None) is not None:
            step_array = jax.device_put(step_array, step_leaf.sharding)
        state["step"] = step_array
        if data_iterator is not None:
            self._restore_item(step, DATA_ITER, grain.checkpoint.CheckpointRestore(data_iterator))
        self._session_steps.add(step)
        return state

    def _check_data_iter(self, step: int) -> None:
        """Raises `CheckpointMismatchError` unless the checkpoint holds this process's data-iterator state."""
        item_dir = os.path.join(self._step_dir(step), DATA_ITER)
        if not os.path.isdir(item_dir):
            raise CheckpointMismatchError(
                f"checkpoint step {step} ({self._step_dir(step)}) holds no data iterator "
                "state; restore without data_iterator to start the data afresh"
            )
        process_index, process_count = jax.process_index(), jax.process_count()
        wanted = f"process_{process_index}-of-{process_count}.json"  # grain's per-process file name
        if not os.path.isfile(os.path.join(item_dir, wanted)):
            found = sorted(name for name in os.listdir(item_dir) if name.endswith(".json"))
            raise CheckpointMismatchError(
                f"checkpoint step {step}: item '{DATA_ITER}' has no state for process "
                f"{process_index} of {process_count} ({wanted}); it holds {found} (saved "
                "with another process count?)"
            )

    def restore_params(self, step: int | None = None, *, abstract_params: Any) -> Any:
        """Only the params of checkpoint `step` (e.g. to start a stage from the previous stage's output or an
        imported checkpoint), laid out as `abstract_params` says. Same checks as `restore`."""
        self.wait()
        step = self._resolve_step(step)
        self._read_meta(step)
        target = jax.tree.map(_as_abstract, abstract_params)
        self._check_fits(step, {PARAMS: target})
        return self._restore_item(step, PARAMS, ocp.args.StandardRestore(target))
