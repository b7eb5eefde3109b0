"""The evaluators a stage config names, built for the training loop: `config.evals.<name>.type` -> a factory.

    config.evals.held_out = dict(type="held_out_loss", batches=4)      # flmjax.train.evaluators.HeldOutLoss
    config.evals.duplex = dict(type="duplex", dialogs=8, ...)           # DuplexEval below (dialogs=0: off)

`from_config(stage_config)` gives the factories `flmjax.train.loop.run_stage` takes (`launch.train` passes them):
the loop builds each from its running stage before the first step and runs it every `train.eval_every` steps.
This is the one place that maps a type name to an evaluation; the defaults of each live in the stage configs
(`configs/stages/common.py`).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from flmjax import sharding
from flmjax.data.dataset_source import DialogSource
from flmjax.errors import UserError
from flmjax.eval import dialogs, monologue_quality
from flmjax.train.evaluators import EvaluatorFactory, StageContext, held_out_loss


class EvaluatorConfigError(UserError, ValueError):
    """An `evals` entry of a stage config that names no known evaluator type."""


class DuplexEval:
    """The token-level duplex eval (`flmjax.eval.dialogs`) of `evals.<name> = {type: "duplex", dialogs, frames,
    batch, text_temperature, source, silence_codes}`: the streaming model on the first `dialogs` records of
    `source` ("DATASET/SPLIT" under `data.data_dir`; `silence_codes`: its codec's silence frame), each cut to
    `frames` frames (0: the stage's sequence length), `batch` at a time, greedy text at temperature 0, with the
    monologue quality of the stage's placement; metrics `duplex/...`. Every process gathers the params (a
    collective); the tiny models it is meant for fit on one host."""

    name = "duplex eval"
    SUMMARY = {
        "speaking/turn_over_rate": "TOR",
        "speaking/turn_latency_s": "latency s",
        "speaking/interruption_stop_rate": "stop rate",
        "speaking/stop_latency_s": "stop latency s",
        "speaking/barge_in_rate": "barge-in rate",
        "speaking/active_fraction": "speaking",
        "wer": "WER",
        "code_accuracy": "code acc",
    }

    def __init__(self, context: StageContext, spec: Any, flag: str):
        config = context.config
        self.model_config, self.seed = context.model_config, config.seed
        self.tokenizer, self.batch = context.tokenizer, spec.batch
        self.silence_codes = np.asarray(spec.silence_codes, np.int32)
        name, _, split = spec.source.partition("/")
        try:
            source = DialogSource(config.data.data_dir, name, split)
        except (ValueError, FileNotFoundError) as error:
            raise ValueError(
                f"duplex eval ({flag}.dialogs={spec.dialogs}): {error}; set --config.{flag}.dialogs=0 to turn it off"
            ) from None
        self.records = [source[i] for i in range(min(spec.dialogs, len(source)))]
        self.frames = spec.frames or config.data.sequence_length
        self.rule = monologue_quality.monologue_rule(config.data.sources.to_dict())
        self.sampling = dialogs.decoding(spec.text_temperature)
        temperature = spec.text_temperature
        context.say(
            f"duplex eval: {len(self.records)} dialogs of {name}/{split}, first {self.frames} frames, "
            f"{'greedy' if temperature <= 0 else f'text temperature {temperature}'}, monologue quality "
            f"{self.rule.placement if self.rule else 'off'}"
        )

    def run(self, state) -> dict[str, float]:
        params = state["params"]
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils  # only multi-host runs need it

            params = multihost_utils.process_allgather(params, tiled=True)
        device = jax.local_devices()[0]
        params = jax.device_put(jax.device_get(params), device)
        # One device of its own, not the training mesh (the loop runs under it).
        with sharding.activation_rules(sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, [device])):
            result = dialogs.evaluate_dialogs(
                self.model_config,
                params,
                self.records,
                self.tokenizer,
                max_frames=self.frames,
                batch_size=self.batch,
                quality_rule=self.rule,
                sampling=self.sampling,
                seed=self.seed,
                silence_codes=self.silence_codes,
            )
        return {f"duplex/{key}": value for key, value in result.metrics.items() if value is not None}

    def summary(self, metrics: dict[str, float]) -> str:
        return " ".join(
            f"{label} {metrics[f'duplex/{key}']:.3f}"
            for key, label in self.SUMMARY.items()
            if f"duplex/{key}" in metrics
        )


def duplex(spec, flag: str) -> EvaluatorFactory:
    """The factory of a `type: "duplex"` spec; off (None) when it streams no dialogs."""
    return lambda context: DuplexEval(context, spec, flag) if spec.dialogs else None


# Type name -> (spec, "evals.<name>") -> factory. Evaluators run in this order (held-out losses first).
TYPES = {"held_out_loss": lambda spec, flag: held_out_loss(spec), "duplex": duplex}


def from_config(config) -> list[EvaluatorFactory]:
    """The factories of the evaluators `config.evals` names (none when it has no `evals`)."""
    evals = config.get("evals") or {}
    unknown = sorted(f"evals.{name}.type={spec.type!r}" for name, spec in evals.items() if spec.type not in TYPES)
    if unknown:
        raise EvaluatorConfigError(f"unknown evaluator type: {', '.join(unknown)}; known: {sorted(TYPES)}")
    ordered = sorted(evals.items(), key=lambda item: (list(TYPES).index(item[1].type), item[0]))
    return [TYPES[spec.type](spec, f"evals.{name}") for name, spec in ordered]
