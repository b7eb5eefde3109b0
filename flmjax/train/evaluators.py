"""Evaluators as hooks of the training loop, and the one that belongs to training: the loss on held-out data.

The loop knows an evaluation only as an `Evaluator`: each is built once per stage, before the first step, by a
factory that takes the running stage's `StageContext` (its config, model, loss, shardings, tokenizer, process
layout), then run as `run(state) -> {metric: value}` every `train.eval_every` steps; the metrics of all of them
go to the metrics' eval split and each one's `summary` to the log. A stage config names its evaluators by type
under `evals` (`config.evals.<name>.type`, as big_vision does); the builder that maps types to factories lives
above training (`flmjax.eval.evaluators.from_config`), so `flmjax.train` imports no evaluation.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Protocol

import jax

from flmjax.config import ModelConfig
from flmjax.data import pipeline
from flmjax.data.examples import StreamIds
from flmjax.train import loss as loss_lib
from flmjax.train import step as step_lib

State = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class StageContext:
    """What a running stage offers its evaluators. `shardings`: the train state's; `batch_shardings`: a global
    batch's; `local_batch_size`: this process's rows of a global batch."""

    config: Any  # the stage config (ml_collections.ConfigDict)
    model_config: ModelConfig
    loss_config: loss_lib.LossConfig
    tokenizer: Any
    ids: StreamIds
    shardings: State
    batch_shardings: dict[str, Any]
    process_index: int
    process_count: int
    local_batch_size: int
    say: Callable[[str], None]  # prints on process 0 only


class Evaluator(Protocol):
    """An evaluation the loop runs every `train.eval_every` steps."""

    name: str  # the log line's label: "{name} at step N: {summary}"

    def run(self, state: State) -> dict[str, float]:
        """Metrics of the train state `{"step", "params", "opt_state"}` (every process calls it)."""

    def summary(self, metrics: dict[str, float]) -> str:
        """The log line's body for the metrics `run` returned."""


# A stage's evaluator from its context, or None when the config turns it off. Raises ValueError (the loop
# reports it as a `StageError`) when the stage cannot run it as configured.
EvaluatorFactory = Callable[[StageContext], "Evaluator | None"]


class HeldOutLoss:
    """The training loss and its per-stream figures, averaged over the first `batches` batches (one unshuffled
    pass) of the held-out splits of the stage's sources (each source's `eval_split`; a source without one is left
    out, with a note)."""

    name = "eval"
    LOGGED = ("loss", "text_loss", "audio_loss")

    def __init__(self, context: StageContext, batches: int):
        self.context, self.batches = context, batches
        config = context.config
        self.sources = []
        for source_name, source in sorted(config.data.sources.items()):
            try:
                self.sources.append(
                    pipeline.weighted_source(config.data.data_dir, source_name, source, source.eval_split)
                )
            except (ValueError, FileNotFoundError) as error:
                context.say(f"eval: source {source_name!r} left out: {error}")
        if not self.sources:
            raise ValueError(
                f"no source has its held-out split (eval is on: train.eval_every="
                f"{config.train.eval_every}); build one or set --config.train.eval_every=0"
            )
        self._loss = None  # compiled at the first run

    def _compiled_loss(self):
        context = self.context

        def metrics(params, batch):
            return loss_lib.loss_and_metrics_full(context.model_config, params, batch, context.loss_config)[1]

        return jax.jit(metrics, in_shardings=(context.shardings["params"], context.batch_shardings))

    def run(self, state: State) -> dict[str, float]:
        context, config = self.context, self.context.config
        self._loss = self._loss or self._compiled_loss()
        data = pipeline.stage_dataset(
            self.sources,
            context.tokenizer,
            context.ids,
            length=config.data.sequence_length,
            batch_size=context.local_batch_size,
            seed=config.seed,
            process_index=context.process_index,
            process_count=context.process_count,
            num_epochs=1,
            shuffle=False,
        )
        totals: dict[str, float] = {}
        count = 0
        for count, batch in enumerate(pipeline.batch_iterator(data), start=1):
            global_batch = step_lib.global_batch(batch, context.batch_shardings, context.process_count)
            for key, value in jax.device_get(self._loss(state["params"], global_batch)).items():
                totals[key] = totals.get(key, 0.0) + float(value)
            if count == self.batches:
                break
        return {key: value / max(count, 1) for key, value in totals.items()}

    def summary(self, metrics: dict[str, float]) -> str:
        return " ".join(f"{key} {value:.4f}" for key, value in sorted(metrics.items()) if key in self.LOGGED)


def held_out_loss(spec) -> EvaluatorFactory:
    """The factory of `evals.<name> = {type: "held_out_loss", batches: N}`."""
    return lambda context: HeldOutLoss(context, spec.batches)
