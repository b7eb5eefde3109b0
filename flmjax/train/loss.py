"""The training loss: text cross-entropy plus per-codebook audio cross-entropy, exact under accumulation.

Per step the model predicts a text token (temporal transformer + text head) and the 8 speak codebooks (the
depth transformer, teacher-forced on the target codebooks). With `N_text = sum(w_t)` and `N_c = sum(m_c)`
taken over the WHOLE global batch (`loss_normalizers`):

    w_t  = text_mask * (wait_weight if text_target == <wait> else 1)
    m_c  = audio_mask[..., c] * (audio_target[..., c] != aud_emp if mask_aud_emp else 1)
    loss = text_weight  * sum(w_t * ce_t) / N_text
         + audio_weight * sum_c (cw_c / sum(cw)) * sum(m_c * ce_c) / N_c

(a normaliser of 0 gives its term 0). Because the normalisers come from outside, the loss of a micro-batch is
its exact share of the full batch's loss: the sum of the micro-batches' losses and gradients is the full
batch's loss and gradient. Metrics travel the same way, as additive sums (`loss_and_metric_sums`) that a train
step adds over micro-batches and turns into means once (`finalize_metrics`):

    normalizers = loss_normalizers(config, batch, loss_config)            # whole batch, no params
    grad_fn = jax.value_and_grad(loss_and_metric_sums, argnums=1, has_aux=True)
    loss, sums, grads = 0.0, None, None
    for micro in split(batch, k):
        (loss_i, sums_i), grads_i = grad_fn(config, params, micro, loss_config, normalizers)
        loss, sums, grads = add((loss, sums, grads), (loss_i, sums_i, grads_i))
    metrics = finalize_metrics(sums)                                      # metrics["loss"] == loss

Batches follow `flmjax.data.examples`: text_ids/text_targets [B,L] int32, speak_ids/listen_ids/audio_targets
[B,L,C] int32, text_mask [B,L] bool, audio_mask [B,L,C] bool. Everything here is pure and jit/grad-able;
sums over global arrays inside jit are correct whatever the batch sharding.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from flmjax import model
from flmjax.config import ModelConfig
from flmjax.errors import UserError
from flmjax.train.config_fields import dataclass_kwargs

Batch = Mapping[str, jax.Array]
Sums = dict[str, jax.Array]

# Keys of the additive metric sums (float32; `audio_*` ones are [C], the others scalars).
SUM_KEYS = (
    "loss_text_term",
    "text_ce",
    "text_weight",
    "text_correct",
    "text_count",
    "text_correct_non_wait",
    "text_count_non_wait",
    "loss_audio_term",
    "audio_weighted_ce",
    "audio_ce",
    "audio_correct",
    "audio_count",
)


class LossConfigError(UserError, ValueError):
    """A loss config that cannot be used; the message names every problem."""


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Weights of the loss terms and which targets count.

    Defaults: `<wait>` targets weigh 0.5 (Moshi down-weights text padding by 0.5); codebook weights
    `(1, 0.1 x 7)` and `aud_emp` targets masked (a same-lab recipe; Moshi's codebook weights are
    `(100, 1 x 7)`). Codebook weights are normalised by their sum, so only their ratios matter.
    """

    text_weight: float = 1.0
    audio_weight: float = 1.0
    wait_weight: float = 0.5
    codebook_weights: tuple[float, ...] = (1.0,) + (0.1,) * 7
    mask_aud_emp: bool = True
    # Frames per chunk in which the text and audio logits are computed, scored and rematerialised (0: the
    # whole sequence at once). Memory only: a [batch, frames, 151668] float32 text logit tensor never exists
    # whole. The numbers are the same up to float32 summation order.
    chunk_frames: int = 0

    def __post_init__(self):
        problems = []
        if isinstance(self.chunk_frames, bool) or not isinstance(self.chunk_frames, int) or self.chunk_frames < 0:
            problems.append(f"chunk_frames must be a non-negative integer (0: no chunks), got {self.chunk_frames!r}")
        for name in ("text_weight", "audio_weight", "wait_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                problems.append(f"{name} must be a finite non-negative number, got {value!r}")
            else:
                object.__setattr__(self, name, float(value))
        weights = self.codebook_weights
        try:
            weights = tuple(float(w) for w in weights)
        except (TypeError, ValueError):
            problems.append(f"codebook_weights must be a sequence of numbers, got {self.codebook_weights!r}")
        else:
            if any(not math.isfinite(w) or w < 0 for w in weights):
                problems.append(f"codebook_weights must be finite and non-negative, got {weights}")
            elif not any(w > 0 for w in weights):
                problems.append(
                    f"codebook_weights are all zero ({weights}): at least one codebook must count "
                    "(set audio_weight=0 to drop the audio loss)"
                )
            object.__setattr__(self, "codebook_weights", weights)
        if not isinstance(self.mask_aud_emp, bool):
            problems.append(f"mask_aud_emp must be a bool, got {self.mask_aud_emp!r}")
        if problems:
            raise LossConfigError("invalid LossConfig:\n  " + "\n  ".join(problems))

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | Any | None = None) -> LossConfig:
        """From a dict or an `ml_collections.ConfigDict` (missing keys keep their defaults; unknown keys fail)."""
        fields = dataclass_kwargs(cls, config, LossConfigError)
        return cls(**fields)

    def normalized_codebook_weights(self) -> tuple[float, ...]:
        total = sum(self.codebook_weights)
        return tuple(w / total for w in self.codebook_weights)

    def check(self, model_config: ModelConfig) -> None:
        """Raises `LossConfigError` unless there is one codebook weight per audio channel of the model."""
        if len(self.codebook_weights) != model_config.aud_channel:
            raise LossConfigError(
                f"codebook_weights has {len(self.codebook_weights)} entries "
                f"{self.codebook_weights}, but the model has aud_channel="
                f"{model_config.aud_channel} codebooks: give one weight per codebook"
            )


# ---------------------------------------------------------------------- targets and their weights
def _check_batch(model_config: ModelConfig, batch: Batch) -> None:
    text, audio = batch["text_targets"], batch["audio_targets"]
    channels = model_config.aud_channel
    if audio.ndim != 3 or audio.shape[-1] != channels or audio.shape[:2] != text.shape:
        raise ValueError(
            f"audio_targets {audio.shape} does not fit text_targets {text.shape} and "
            f"aud_channel={channels}: expected [B, L, {channels}] with [B, L] = text_targets.shape"
        )


def text_target_weights(model_config: ModelConfig, batch: Batch, loss_config: LossConfig) -> jax.Array:
    """float32 [B,L]: text_mask, times `wait_weight` where the target is `<wait>`."""
    is_wait = batch["text_targets"] == model_config.text_wait_id
    scale = jnp.where(is_wait, jnp.float32(loss_config.wait_weight), jnp.float32(1.0))
    return batch["text_mask"].astype(jnp.float32) * scale


def audio_target_mask(model_config: ModelConfig, batch: Batch, loss_config: LossConfig) -> jax.Array:
    """bool [B,L,C]: audio_mask, without `aud_emp` targets when `mask_aud_emp`."""
    mask = batch["audio_mask"].astype(bool)
    if loss_config.mask_aud_emp:
        mask = mask & (batch["audio_targets"] != model_config.aud_emp_id)
    return mask


def loss_normalizers(model_config: ModelConfig, batch: Batch, loss_config: LossConfig) -> dict[str, jax.Array]:
    """The loss denominators of a (whole) batch, from its targets and masks alone.

    -> {"text": sum of text target weights, "audio_c{c}": number of counted targets of codebook c}, float32
    scalars. Pass them to every micro-batch's `loss_and_metric_sums` so that micro-batch losses add up exactly.
    """
    loss_config.check(model_config)
    _check_batch(model_config, batch)
    counts = jnp.sum(audio_target_mask(model_config, batch, loss_config).astype(jnp.float32), axis=(0, 1))
    normalizers = {"text": jnp.sum(text_target_weights(model_config, batch, loss_config))}
    normalizers.update({f"audio_c{c}": counts[c] for c in range(model_config.aud_channel)})
    return normalizers


# ---------------------------------------------------------------------- cross-entropy
def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """logits [..., K] (any float dtype), targets [...] int -> float32 [...]: `logsumexp(l) - l[target]`.

    The target logit is picked with a one-hot contraction, which partitions cleanly over a sharded vocabulary.
    """
    logits = logits.astype(jnp.float32)
    one_hot = jax.nn.one_hot(targets, logits.shape[-1], dtype=jnp.float32)
    return jax.nn.logsumexp(logits, axis=-1) - jnp.sum(one_hot * logits, axis=-1)


def _safe_divide(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
    """numerator / denominator, and 0 where the denominator is 0 (nothing counted)."""
    return numerator / jnp.where(denominator > 0, denominator, 1.0)


def model_logits(model_config: ModelConfig, params, batch: Batch) -> tuple[jax.Array, jax.Array]:
    """The training pass: (text_logits [B,L,V], audio_logits [B,L,C,A]), both float32.

    The depth transformer is teacher-forced: its prefix is the target codebooks 0..C-2 of each step.
    """
    text_logits, hidden = model.forward(
        model_config, params, batch["text_ids"], batch["speak_ids"], batch["listen_ids"]
    )
    audio_logits = model.depth_forward(
        model_config, params, hidden, batch["audio_targets"][..., : model_config.aud_channel - 1]
    )
    return text_logits, audio_logits


def metric_sums_from_logits(
    model_config: ModelConfig, text_logits: jax.Array, audio_logits: jax.Array, batch: Batch, loss_config: LossConfig
) -> Sums:
    """The additive per-batch sums (float32; see `SUM_KEYS`) behind the loss and every metric.

    text_logits [B,L,V], audio_logits [B,L,C,A]. `audio_*` entries are [C], the others scalars; the
    `loss_*_term` entries are numerators already scaled by the config's weights, so that `finalize_metrics`
    needs no config.
    """
    loss_config.check(model_config)
    _check_batch(model_config, batch)
    f32 = jnp.float32
    text_targets, audio_targets = batch["text_targets"], batch["audio_targets"]
    text_w = text_target_weights(model_config, batch, loss_config)
    text_mask = batch["text_mask"].astype(f32)
    non_wait = text_mask * (text_targets != model_config.text_wait_id).astype(f32)
    text_ce = cross_entropy(text_logits, text_targets)
    text_hit = (jnp.argmax(text_logits, axis=-1) == text_targets).astype(f32)

    audio_m = audio_target_mask(model_config, batch, loss_config).astype(f32)
    audio_ce = jnp.sum(audio_m * cross_entropy(audio_logits, audio_targets), axis=(0, 1))
    audio_hit = (jnp.argmax(audio_logits, axis=-1) == audio_targets).astype(f32)
    codebook_w = jnp.asarray(loss_config.normalized_codebook_weights(), f32)
    text_ce_sum = jnp.sum(text_w * text_ce)
    return {
        "loss_text_term": loss_config.text_weight * text_ce_sum,
        "text_ce": text_ce_sum,
        "text_weight": jnp.sum(text_w),
        "text_correct": jnp.sum(text_mask * text_hit),
        "text_count": jnp.sum(text_mask),
        "text_correct_non_wait": jnp.sum(non_wait * text_hit),
        "text_count_non_wait": jnp.sum(non_wait),
        "loss_audio_term": loss_config.audio_weight * codebook_w * audio_ce,
        "audio_weighted_ce": codebook_w * audio_ce,
        "audio_ce": audio_ce,
        "audio_correct": jnp.sum(audio_m * audio_hit, axis=(0, 1)),
        "audio_count": jnp.sum(audio_m, axis=(0, 1)),
    }


def loss_from_sums(sums: Sums, normalizers: Mapping[str, jax.Array]) -> jax.Array:
    """The (share of the) loss: the weighted numerators of `sums` over the given normalizers. float32 []."""
    audio_counts = jnp.stack([normalizers[f"audio_c{c}"] for c in range(sums["audio_ce"].shape[0])])
    return (
        _safe_divide(sums["loss_text_term"], normalizers["text"])
        + jnp.sum(_safe_divide(sums["loss_audio_term"], audio_counts))
    ).astype(jnp.float32)


# ---------------------------------------------------------------------- public loss functions
def _chunked_metric_sums(model_config: ModelConfig, params, batch: Batch, loss_config: LossConfig) -> Sums:
    """`metric_sums_from_logits(model_logits(...))`, the logits made and scored `chunk_frames` frames at a time,
    each chunk rematerialised in the backward pass."""
    hidden = model.hidden_states(model_config, params, batch["text_ids"], batch["speak_ids"], batch["listen_ids"])

    @jax.checkpoint
    def chunk_sums(params, hidden, batch):
        text_logits = model.text_logits(model_config, params, hidden)
        audio_logits = model.depth_forward(
            model_config, params, hidden, batch["audio_targets"][..., : model_config.aud_channel - 1]
        )
        return metric_sums_from_logits(model_config, text_logits, audio_logits, batch, loss_config)

    frames, chunk = hidden.shape[1], loss_config.chunk_frames
    sums = None
    for start in range(0, frames, chunk):  # a Python loop: XLA's cost analysis sees every chunk
        part = {key: value[:, start : start + chunk] for key, value in batch.items() if value.ndim >= 2}
        chunk_total = chunk_sums(params, hidden[:, start : start + chunk], part)
        sums = chunk_total if sums is None else jax.tree.map(jnp.add, sums, chunk_total)
    return sums


def loss_and_metric_sums(
    model_config: ModelConfig, params, batch: Batch, loss_config: LossConfig, normalizers: Mapping[str, jax.Array]
) -> tuple[jax.Array, Sums]:
    """(loss float32 [], additive metric sums) of a (micro-)batch, normalised by `normalizers`.

    With the whole batch's normalizers, the loss is this micro-batch's exact share of the whole batch's loss.
    Use as `jax.value_and_grad(..., argnums=1, has_aux=True)`; add the sums over micro-batches, then
    `finalize_metrics`.
    """
    if 0 < loss_config.chunk_frames < batch["text_ids"].shape[1]:
        sums = _chunked_metric_sums(model_config, params, batch, loss_config)
    else:
        text_logits, audio_logits = model_logits(model_config, params, batch)
        sums = metric_sums_from_logits(model_config, text_logits, audio_logits, batch, loss_config)
    return loss_from_sums(sums, normalizers), sums


def finalize_metrics(sums: Sums) -> dict[str, jax.Array]:
    """Additive sums (of one batch, or added over micro-batches) -> float32 scalar metrics.

    loss, text_loss (wait-weighted mean CE), text_accuracy (over counted text targets, unweighted),
    text_accuracy_non_wait (over counted targets that are not `<wait>`: the monologue's words), audio_loss
    (codebook-weighted mean of the per-codebook losses), audio_loss_c{c}, audio_accuracy_c{c}, text_tokens,
    text_tokens_non_wait, audio_tokens. A quantity with nothing counted is 0.
    """
    audio_count = sums["audio_count"]
    metrics = {
        "loss": _safe_divide(sums["loss_text_term"], sums["text_weight"])
        + jnp.sum(_safe_divide(sums["loss_audio_term"], audio_count)),
        "text_loss": _safe_divide(sums["text_ce"], sums["text_weight"]),
        "text_accuracy": _safe_divide(sums["text_correct"], sums["text_count"]),
        "text_accuracy_non_wait": _safe_divide(sums["text_correct_non_wait"], sums["text_count_non_wait"]),
        "audio_loss": jnp.sum(_safe_divide(sums["audio_weighted_ce"], audio_count)),
        "text_tokens": sums["text_count"],
        "text_tokens_non_wait": sums["text_count_non_wait"],
        "audio_tokens": jnp.sum(audio_count),
    }
    per_codebook_loss = _safe_divide(sums["audio_ce"], audio_count)
    per_codebook_accuracy = _safe_divide(sums["audio_correct"], audio_count)
    for c in range(audio_count.shape[0]):
        metrics[f"audio_loss_c{c}"] = per_codebook_loss[c]
        metrics[f"audio_accuracy_c{c}"] = per_codebook_accuracy[c]
    return {name: jnp.asarray(value, jnp.float32) for name, value in metrics.items()}


def loss_and_metrics(
    model_config: ModelConfig, params, batch: Batch, loss_config: LossConfig, normalizers: Mapping[str, jax.Array]
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(loss float32 [] normalised by `normalizers`, metrics of this batch by itself: `finalize_metrics`).

    The returned loss is this batch's share under `normalizers`; `metrics["loss"]` is the batch's own loss.
    They agree when `normalizers` are the batch's own (`loss_and_metrics_full`).
    """
    loss, sums = loss_and_metric_sums(model_config, params, batch, loss_config, normalizers)
    return loss, finalize_metrics(sums)


def loss_and_metrics_full(
    model_config: ModelConfig, params, batch: Batch, loss_config: LossConfig
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """`loss_and_metrics` of a batch with its own normalizers (no accumulation)."""
    normalizers = loss_normalizers(model_config, batch, loss_config)
    return loss_and_metrics(model_config, params, batch, loss_config, normalizers)
