"""The monologue's quality on dialog records, by the monologue placement a stage trains with: the text it writes
(trailing) or the speech it says (leading), read off token grids like the rest of the token-level eval.

`monologue_quality`, by placement:

- `trailing` (text after its speech): the record's speak and listen codes are forced and the model writes
  its monologue freely (greedy, autoregressive, one KV-cached frame at a time); `wer` is the word error rate of
  that text (`<wait>` dropped) against the reference monologue in the window (the assistant's sentences, as
  the placement puts them: a sentence whose text would fall past the window counts only with the tokens inside).
- `leading` (text before its speech): one teacher-forced pass with the reference monologue as the text input
  and the reference audio as the audio input; `code_accuracy` is the argmax accuracy of the speak codes (depth
  model, teacher-forced codebook prefix) against the reference, on the frames where the assistant speaks (its
  speak segments), overall and per codebook.

Records longer than `max_frames` are evaluated on their first `max_frames` frames (the model is trained on
crops of `data.sequence_length` frames; much longer streams test length generalisation, not turn-taking).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from flmjax import model, streams
from flmjax.config import ModelConfig
from flmjax.data.examples import SourceRule, StreamIds, padded_batch, text_row_for, training_arrays
from flmjax.data.records import DialogRecord, Segment
from flmjax.eval import quality as quality_lib
from flmjax.eval.dialog_scoring import segment_activity


def crop_record(record: DialogRecord, num_frames: int) -> DialogRecord:
    """The record's first `num_frames` frames; a sentence crossing the end keeps its words inside (without
    word times, it is left out)."""
    if num_frames >= record.num_frames:
        return record

    def crop(segments):
        kept = []
        for segment in segments:
            if segment.end <= num_frames:
                kept.append(segment)
            elif segment.start < num_frames and segment.words:
                words = tuple(w for w in segment.words if w.end <= num_frames)
                if words:
                    kept.append(Segment(segment.start, words[-1].end, " ".join(w.text for w in words), words))
        return tuple(kept)

    return dataclasses.replace(
        record,
        num_frames=num_frames,
        speak_codes=None if record.speak_codes is None else record.speak_codes[:num_frames],
        listen_codes=None if record.listen_codes is None else record.listen_codes[:num_frames],
        speak_segments=crop(record.speak_segments),
        listen_segments=crop(record.listen_segments),
    )


@functools.partial(jax.jit, static_argnums=(0,))
def _free_text(config: ModelConfig, params, speak_ids: jax.Array, listen_ids: jax.Array) -> jax.Array:
    """Greedy monologue with the audio forced: speak_ids/listen_ids [B, L, C] model inputs -> text [B, L]."""
    batch, length = speak_ids.shape[:2]
    cache = model.init_cache(config, batch, length)

    def step(carry, inputs):
        cache, previous = carry
        speak, listen = inputs
        logits, _, cache = model.forward_cached(
            config, params, cache, previous[:, None], speak[:, None], listen[:, None]
        )
        token = jnp.argmax(logits[:, 0], axis=-1).astype(jnp.int32)
        return (cache, token), token

    start = jnp.full((batch,), config.text_wait_id, jnp.int32)
    _, text = jax.lax.scan(step, (cache, start), (jnp.moveaxis(speak_ids, 1, 0), jnp.moveaxis(listen_ids, 1, 0)))
    return jnp.moveaxis(text, 0, 1)


@functools.partial(jax.jit, static_argnums=(0,))
def _forced_codes(config: ModelConfig, params, text_ids, speak_ids, listen_ids, audio_targets) -> jax.Array:
    """Teacher-forced argmax speak codes [B, L, C] (delayed, as the targets)."""
    _, hidden = model.forward(config, params, text_ids, speak_ids, listen_ids)
    logits = model.depth_forward(config, params, hidden, audio_targets[..., : config.aud_channel - 1])
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def monologue_rule(sources: dict[str, dict] | None) -> SourceRule | None:
    """The monologue placement a stage trains its assistant text with, from its `data.sources` (name -> dict
    with task, placement, lead_frames, trail_frames): its dialog source, else its TTS source, else any source
    with a leading or trailing placement. None when there is none."""
    candidates = sorted(
        (sources or {}).items(), key=lambda item: ({"dialog": 0, "tts": 1}.get(item[1].get("task"), 2), item[0])
    )
    for _, source in candidates:
        if source.get("placement") in ("leading", "trailing"):
            return SourceRule(
                "dialog", source["placement"], int(source.get("lead_frames", 0)), int(source.get("trail_frames", 0))
            )
    return None


def monologue_quality(
    config: ModelConfig,
    params,
    records: Sequence[DialogRecord],
    tokenizer,
    rule: SourceRule,
    *,
    batch_size: int = 8,
    max_frames: int | None = None,
) -> tuple[dict, list[dict]]:
    """Text quality (trailing: `wer`) or speech quality (leading: `code_accuracy`, per codebook
    `code_accuracy_c{i}`) of the monologue on dialog records, as the module docstring says. `rule` gives the
    placement and its lead/trail frames (its task is taken as "dialog": the assistant's own sentences).
    Returns (metrics, per-record details)."""
    if rule.placement not in ("leading", "trailing"):
        raise ValueError(f"monologue quality is defined for leading or trailing placements, not {rule.placement!r}")
    rule = dataclasses.replace(rule, task="dialog")
    ids = StreamIds.from_config(config)
    cropped = [crop_record(r, max_frames) if max_frames else r for r in records]
    cropped = [r for r in cropped if r.speak_codes is not None and r.listen_codes is not None]
    details, refs, hyps, predicted_all, reference_all, valid_all = [], [], [], [], [], []
    for start in range(0, len(cropped), batch_size):
        chunk = cropped[start : start + batch_size]
        arrays = []
        for record in chunk:
            text_row, _ = text_row_for(record, rule, tokenizer, ids.wait_id)
            arrays.append(training_arrays(text_row, record.speak_codes, record.listen_codes, ids))
        batch = padded_batch(arrays, ids)
        if rule.placement == "trailing":
            text = np.asarray(
                _free_text(config, params, jnp.asarray(batch["speak_ids"]), jnp.asarray(batch["listen_ids"]))
            )
        else:
            codes = np.asarray(
                _forced_codes(
                    config,
                    params,
                    *(jnp.asarray(batch[k]) for k in ("text_ids", "speak_ids", "listen_ids", "audio_targets")),
                )
            )
        for row, record in enumerate(chunk):
            frames = record.num_frames
            reference_text = tokenizer.decode([int(t) for t in batch["text_targets"][row, :frames] if t != ids.wait_id])
            entry = {"id": record.id, "num_frames": frames, "reference_text": reference_text}
            if rule.placement == "trailing":
                generated = [int(t) for t in text[row, :frames] if t != ids.wait_id]
                entry["generated_text"] = tokenizer.decode([t for t in generated if t < tokenizer.vocab_size])
                entry["wer"] = quality_lib.word_error_rate(reference_text, entry["generated_text"])
                refs.append(reference_text)
                hyps.append(entry["generated_text"])
            else:
                steps = frames + streams.MAX_DELAY
                predicted = streams.undelay_codes(codes[row, :steps])
                reference = streams.undelay_codes(batch["audio_targets"][row, :steps])
                speaking = segment_activity(record.speak_segments, frames)
                accuracy = quality_lib.code_accuracy(predicted, reference, speaking)
                entry["code_accuracy"] = accuracy["overall"]
                entry["speak_frames"] = accuracy["n_frames"]
                predicted_all.append(predicted)
                reference_all.append(reference)
                valid_all.append(speaking)
            details.append(entry)
    if rule.placement == "trailing":
        metrics = {
            "wer": quality_lib.word_error_rate(refs, hyps) if refs else None,
            "quality_records": float(len(refs)),
        }
    else:
        metrics = {"quality_records": float(len(predicted_all))}
        if predicted_all:
            accuracy = quality_lib.code_accuracy(
                np.concatenate(predicted_all), np.concatenate(reference_all), np.concatenate(valid_all)
            )
            metrics["code_accuracy"] = accuracy["overall"]
            for c, value in enumerate(accuracy["per_codebook"]):
                metrics[f"code_accuracy_c{c}"] = value
            metrics["quality_frames"] = float(accuracy["n_frames"])
    return metrics, details
