"""The training loop of one stage: data, state, the compiled step, checkpoints, eval, metrics.

`run_stage(config, workdir)` trains one stage config (configs/stages) in `workdir`: it resumes from the newest
complete checkpoint there, or starts from `config.init_from` (an earlier stage's workdir or a released PyTorch
checkpoint folder), or from scratch. A damaged newest checkpoint (truncated, corrupt) is moved aside to
WORKDIR/checkpoints_damaged with a warning and the newest one that reads is resumed. It saves every
`train.save_every` steps (async), at the end, and when the process gets SIGTERM (a TPU preemption) or Ctrl-C
(SIGINT), then stops; a second Ctrl-C stops at once without saving. Every `train.eval_every` steps it runs the
evaluators it is given (`flmjax.train.evaluators`: hooks built from the running stage; this module knows no
particular evaluation). Metrics go to WORKDIR/metrics.jsonl and TensorBoard.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
import time
from typing import Any, Callable, Sequence

import jax

from flmjax import checkpoints as checkpoint_lib
from flmjax import config as model_config_lib
from flmjax import model, presets, sharding
from flmjax.data import pipeline, text
from flmjax.data.examples import StreamIds
from flmjax.errors import UserError, one_line
from flmjax.train import evaluators as evaluators_lib
from flmjax.train import loss as loss_lib
from flmjax.train import metrics as metrics_lib
from flmjax.train import optimizer as optimizer_lib
from flmjax.train import step as step_lib


class StageError(UserError, ValueError):
    """A stage that cannot start as configured; the message names the problem. Nothing saved is touched."""


@dataclasses.dataclass
class StageResult:
    final_step: int
    stopped_early: bool  # by a signal, after saving
    last_metrics: dict[str, float]
    stopped_by: str = ""  # the signal that stopped it early ("SIGTERM", "SIGINT"), "" when it ran to the end


def stage_model_config(config) -> model_config_lib.ModelConfig:
    """The model of a stage: its preset, or that of the checkpoint it starts from (`init_from`: any path
    `flmjax.checkpoints.resolve` takes), with execution overrides."""
    overrides = dict(config.model_overrides)
    if config.init_from:
        return checkpoint_lib.resolve(config.init_from, what="init_from").model_config(**overrides)
    return presets.preset(config.model, **overrides)


@dataclasses.dataclass(frozen=True)
class StageStep:
    """Everything that decides a stage's compiled train step: the model, loss and optimizer, the mesh and
    the state's shardings, and the global batch it takes. `launch.aot` compiles exactly this for a TPU slice."""

    model_config: model_config_lib.ModelConfig
    loss_config: loss_lib.LossConfig
    tx: Any
    mesh: Any
    shardings: Any
    global_batch_size: int
    sequence_length: int
    accumulation_steps: int

    def lower(self, accumulation_unroll: int = 1, model_config: model_config_lib.ModelConfig | None = None):
        """The step lowered from abstract arrays (`.compile()` it); `model_config` may change execution settings
        only (the state's shapes must stay those of `self.shardings`)."""
        return step_lib.lower_train_step(
            model_config or self.model_config,
            self.loss_config,
            self.tx,
            self.shardings,
            self.mesh,
            self.global_batch_size,
            self.sequence_length,
            self.accumulation_steps,
            accumulation_unroll=accumulation_unroll,
        )

    def compile(self) -> step_lib.CompiledStep:
        return step_lib.compile_train_step(
            self.model_config,
            self.loss_config,
            self.tx,
            self.shardings,
            self.mesh,
            self.global_batch_size,
            self.sequence_length,
            self.accumulation_steps,
        )


def stage_step(config, devices=None) -> StageStep:
    """The train step of a stage config on `devices` (default: all attached devices; any sequence of devices,
    e.g. a TPU slice's from `flmjax.hardware.topology_devices`). Checks that the batch divides over the mesh
    and the model over its axes (`ShardingError`, `ValueError`) before anything is compiled or allocated."""
    train = config.train
    model_config = stage_model_config(config)
    mesh = sharding.make_mesh(dict(config.mesh), devices)
    step_lib.check_batch_layout(mesh, config.data.global_batch_size, train.accumulation_steps)
    loss_config = loss_lib.LossConfig.from_config(config.loss)
    optimizer_config = optimizer_lib.OptimizerConfig.from_config(
        {**config.optimizer.to_dict(), "total_steps": train.total_steps}
    )
    tx = optimizer_lib.make_optimizer(optimizer_config)
    shardings = step_lib.state_shardings(model_config, tx, mesh)
    return StageStep(
        model_config,
        loss_config,
        tx,
        mesh,
        shardings,
        config.data.global_batch_size,
        config.data.sequence_length,
        train.accumulation_steps,
    )


class _Preemption:
    """Remembers a SIGTERM (a TPU preemption) or a Ctrl-C (SIGINT) so the loop can save and stop at the next step
    boundary; a Ctrl-C after that raises KeyboardInterrupt at once, for a user who will not wait for the save.

    Python swallows an exception that a handler raises while it runs a gc callback (it only reports it as
    "Exception ignored"), so the loop also checks `aborted` at each step boundary and raises it there."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signal_name = ""  # of the first stop request
        self.aborted = False  # by a Ctrl-C after the first stop request
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return bool(self.signal_name)

    def __enter__(self):
        for signum in self.SIGNALS:
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: no handler (tests driving the loop from a thread)
                pass
        return self

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            self.aborted = True
            _drop_swallowed_interrupt_reports()
            raise KeyboardInterrupt
        if not self.requested:
            self.signal_name = signal.Signals(signum).name
            # os.write, not print: a handler that interrupts a print must not print (reentrant buffered I/O).
            os.write(
                2,
                f"\n{self.signal_name}: saving at the end of this step, then stopping (a Ctrl-C "
                "now stops at once, without saving)\n".encode(),
            )

    def __exit__(self, *exc):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)


def _drop_swallowed_interrupt_reports() -> None:
    """Drops the "Exception ignored ... KeyboardInterrupt" report of an abort that Python swallowed (see
    `_Preemption`): the loop raises it again at the step boundary, so the report is no news."""
    report = sys.unraisablehook

    def unraisable(unraisable_report):
        if not isinstance(unraisable_report.exc_value, KeyboardInterrupt):
            report(unraisable_report)

    sys.unraisablehook = unraisable


def _check_workdir(workdir: str) -> None:
    """Raises `StageError` unless `workdir` is, or can be made, a writable folder: checked before anything is
    built, and without creating anything."""
    existing = os.path.abspath(workdir)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise StageError(f"workdir {workdir}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise StageError(f"workdir {workdir}: {existing} is not writable (permissions or a read-only file system)")


@contextlib.contextmanager
def _stage_input(what: str):
    """The data and tokenizer readers report a bad input as `ValueError`: here that is a `StageError` naming
    `what`; a `ValueError` from anywhere else in the loop stays a bug with its traceback."""
    try:
        yield
    except StageError:
        raise
    except ValueError as error:
        raise StageError(f"{what}: {one_line(error)}") from error


def _resume(checkpointer, abstract_state, data_iterator, say) -> tuple[Any, list[int]]:
    """(state or None, steps set aside): the state of the newest checkpoint that reads (None when the workdir
    holds none). Newer damaged ones (`CheckpointCorruptError`) are moved to WORKDIR/checkpoints_damaged, one
    warning each; when none reads, the newest one's error is raised and nothing is moved."""
    damaged: list[tuple[int, checkpoint_lib.CheckpointCorruptError]] = []
    for step in reversed(checkpointer.all_steps()):
        try:
            state = checkpointer.restore(step, abstract_state=abstract_state, data_iterator=data_iterator)
        except checkpoint_lib.CheckpointCorruptError as error:
            damaged.append((step, error))
            continue
        for bad_step, error in damaged:
            moved_to = checkpointer.set_aside(bad_step)
            say(
                f"warning: checkpoint step {bad_step} is damaged, moved to {moved_to}; resuming from step {step} "
                f"({one_line(error)})"
            )
        say(f"resumed from {checkpointer.workdir} step {step}")
        return state, [bad_step for bad_step, _ in damaged]
    if damaged:
        raise checkpoint_lib.CheckpointCorruptError(
            f"{one_line(damaged[0][1])}; no older checkpoint in {checkpointer.directory} reads: move the "
            "damaged ones elsewhere to start this stage afresh"
        )
    return None, []


def _initial_params(config, model_config, shardings):
    """Params an un-started stage begins from: None (fresh), or those of `init_from` (an earlier stage's
    checkpoint, the main job's last, or a released checkpoint), laid out in the state's shardings."""
    if not config.init_from:
        return None
    abstract = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
        model.abstract_params(model_config),
        shardings["params"],
    )
    checkpoint = checkpoint_lib.resolve(config.init_from, what="init_from")
    return checkpoint.params(abstract, **dict(config.model_overrides))


def _wait_for_all_processes(name: str, timeout_s: int = 1800) -> None:
    """A coordination-service barrier: hosts that compiled at different speeds start the step loop together,
    so the first collective of the step (whose communicator setup waits only 30 s) finds every host there."""
    from jax._src import distributed  # the public API has no barrier that avoids a collective

    if jax.process_count() > 1 and distributed.global_state.client is not None:
        distributed.global_state.client.wait_at_barrier(f"flmjax:{name}", timeout_in_ms=timeout_s * 1000)


def run_stage(
    config, workdir: str, log: Callable[[str], None] = print, evaluators: Sequence[evaluators_lib.EvaluatorFactory] = ()
) -> StageResult:
    """Trains one stage in `workdir` (see the module docstring). `evaluators` run every `train.eval_every` steps
    (`flmjax.eval.evaluators.from_config(config)` builds those the config names; none by default)."""
    process_index, process_count = jax.process_index(), jax.process_count()
    is_main = process_index == 0
    say = log if is_main else (lambda message: None)
    train = config.train
    _check_workdir(workdir)
    spec = stage_step(config)
    model_config, loss_config, tx, mesh, shardings = (
        spec.model_config,
        spec.loss_config,
        spec.tx,
        spec.mesh,
        spec.shardings,
    )
    with _stage_input(f"tokenizer {config.data.tokenizer}"):
        tokenizer = text.load_tokenizer(config.data.tokenizer)
        text.check_compatible(tokenizer, model_config)
    ids = StreamIds.from_config(model_config)
    local_batch = pipeline.per_process_batch_size(config.data.global_batch_size, process_count)
    batch_shardings = step_lib.batch_shardings(mesh)
    context = evaluators_lib.StageContext(
        config,
        model_config,
        loss_config,
        tokenizer,
        ids,
        shardings,
        batch_shardings,
        process_index,
        process_count,
        local_batch,
        say,
    )
    with _stage_input("eval"):
        hooks = [hook for factory in (evaluators if train.eval_every else ()) if (hook := factory(context)) is not None]

    with _stage_input(f"data in {config.data.data_dir}"):
        data = pipeline.stage_dataset(
            pipeline.stage_sources(config.data),
            tokenizer,
            ids,
            length=config.data.sequence_length,
            batch_size=local_batch,
            seed=config.seed,
            process_index=process_index,
            process_count=process_count,
        )
    iterator = pipeline.batch_iterator(data, num_workers=config.data.num_workers)
    abstract = step_lib.abstract_state(model_config, tx, shardings)
    # Created only now: a stage that cannot start (bad tokenizer, data, config) leaves no trace in the workdir.
    checkpointer = checkpoint_lib.Checkpointer(
        workdir, max_to_keep=train.max_to_keep, async_save=train.async_checkpoints
    )
    state, set_aside = _resume(checkpointer, abstract, iterator, say)
    if state is None:
        state = step_lib.init_state_sharded(
            model_config, tx, jax.random.key(config.seed), shardings, _initial_params(config, model_config, shardings)
        )
        say(f"started {config.stage} from {config.init_from or 'scratch'}")
    compiled = spec.compile()

    frames_per_step = config.data.global_batch_size * config.data.sequence_length
    formula_flops = step_lib.model_flops_per_frame(model_config, config.data.sequence_length) * frames_per_step
    peak, peak_source = metrics_lib.peak_flops_per_device()
    peak_total = peak * jax.device_count()
    say(
        f"{config.stage}: {_model_summary(model_config)}; mesh {dict(mesh.shape)}; "
        f"step compiled in {compiled.compile_seconds:.1f}s; memory {compiled.memory}; "
        f"FLOPs/step formula {formula_flops:.3g} (XLA {compiled.flops or float('nan'):.3g}, scanned layers "
        f"counted once); peak {peak_total:.3g} FLOP/s ({peak_source})"
    )

    writer = metrics_lib.MetricsWriter(workdir, enabled=is_main)
    _wait_for_all_processes(f"{workdir}:start")
    if set_aside:
        checkpointer.all_steps()  # reread the folder: process 0 moved the damaged steps before the barrier
    step = int(jax.device_get(state["step"]))
    start_step, start_time = step, time.perf_counter()
    last_metrics: dict[str, float] = {}
    stopped_by = ""
    with _Preemption() as preemption, sharding.activation_rules(mesh):
        while step < train.total_steps:
            batch = step_lib.global_batch(next(iterator), batch_shardings, process_count)
            state, metrics = compiled.run(state, batch)
            step += 1
            if preemption.aborted:
                raise KeyboardInterrupt
            if step % train.log_every == 0 or step == train.total_steps:
                last_metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                elapsed = time.perf_counter() - start_time
                frames_per_s = (step - start_step) * frames_per_step / elapsed
                mfu = formula_flops / frames_per_step * frames_per_s / peak_total
                eta = (train.total_steps - step) * elapsed / (step - start_step)
                writer.write(step, {**last_metrics, "frames_per_s": frames_per_s, "mfu": mfu})
                say(
                    f"step {step}/{train.total_steps} loss {last_metrics['loss']:.4f} "
                    f"text {last_metrics['text_loss']:.4f} audio {last_metrics['audio_loss']:.4f} "
                    f"audio acc c0 {last_metrics.get('audio_accuracy_c0', float('nan')):.3f} "
                    f"| {frames_per_s:,.0f} frames/s MFU {mfu:.2%} ETA {eta:,.0f}s"
                )
            if hooks and step % train.eval_every == 0:
                eval_metrics = {}
                for hook in hooks:
                    hook_metrics = hook.run(state)
                    say(f"{hook.name} at step {step}: {hook.summary(hook_metrics)}")
                    eval_metrics.update(hook_metrics)
                writer.write(step, eval_metrics, split="eval")
            if step % train.save_every == 0 or step == train.total_steps or preemption.requested:
                checkpointer.save(
                    step, state, model_config, data_iterator=iterator, stage_config=config.to_dict(), force=True
                )
            if preemption.requested:
                say(f"{preemption.signal_name}: saved step {step}, stopping")
                stopped_by = preemption.signal_name
                break
    checkpointer.wait()
    checkpointer.close()
    writer.close()
    if hasattr(iterator, "close"):
        iterator.close()
    return StageResult(step, bool(stopped_by), last_metrics, stopped_by)


def _model_summary(config: model_config_lib.ModelConfig) -> str:
    return (
        f"hidden {config.hidden_size} x {config.num_hidden_layers} layers, depth {config.depth_dim} x "
        f"{config.depth_layers}, compute {config.dtype}, params {config.param_dtype}"
    )
