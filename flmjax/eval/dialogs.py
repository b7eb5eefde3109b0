"""Token-level duplex evaluation of the streaming model on dialog records whose turns are known, and the
monologue's text and speech quality. No audio: everything is read off token grids.

Duplex (`evaluate_dialogs`): each record's USER channel (listen codes) is fed frame by frame to the streaming
model (`flmjax.infer`, greedy by default), several records as parallel sessions of one batch (a slot whose
record ends starts the next one with `reset_slots`). The user's activity comes from the record's listen
segments (the known turns); the model's from its own output tokens, in two views (`flmjax.eval.tokens`):

- `speaking`: its speak codes are not the silence frame (`flmjax.data.synthetic.SILENCE_FRAME` for the
  synthetic corpus; pass the codec's silence frame(s) for real data);
- `thinking`: its monologue token is not `<wait>`.

`token_duplex_metrics` scores each dialog: responsiveness (turn-over rate and turn-taking latency at the
user's turn ends), duplexity (interruptions: the user starts while the model speaks -> stop rate, stop latency;
barge-ins: the model starts inside user speech). Dialog figures are pooled over all turns / interruptions /
onsets of all dialogs (not averaged per dialog). The same scoring applied to the record's own model channel
gives the `reference` figures: what the corpus itself scores, the target a trained model approaches. Note
that a user backchannel during the model's turn counts as an interruption (the model should not stop there),
so even the reference stop rate is below 1.

Quality (`monologue_quality`), by the monologue placement a stage trains with:

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
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from flmjax import model, streams
from flmjax.config import ModelConfig
from flmjax.data.examples import SourceRule, StreamIds, padded_batch, text_row_for, training_arrays
from flmjax.data.records import DialogRecord, Segment
from flmjax.eval import quality as quality_lib
from flmjax.eval import tokens as tokens_lib
from flmjax.infer import sessions as sessions_lib

VIEWS = ("speaking", "thinking")
# token_duplex_metrics keys pooled over dialogs, with the count each one is a rate or mean over.
_RATES = {
    "turn_over_rate": "n_user_turns",
    "interruption_stop_rate": "n_interruptions",
    "interruption_turn_over_rate": "n_interruptions",
}
_LATENCY_LISTS = {"turn_latency_s": "turn_latencies_s", "stop_latency_s": "stop_latencies_s"}
_COUNTS = ("n_user_turns", "n_interruptions", "n_model_onsets", "n_barge_ins")
SUMMARY_KEYS = (
    "turn_over_rate",
    "turn_latency_s",
    "interruption_stop_rate",
    "stop_latency_s",
    "interruption_turn_over_rate",
    "interruption_response_latency_s",
    "barge_in_rate",
    "active_fraction",
    *_COUNTS,
)


@dataclasses.dataclass
class DialogEvalResult:
    """`metrics`: flat `{view}/{name}` figures of the model (plus quality: `wer` or `code_accuracy...`);
    `reference`: the same duplex figures of the records' own model channel; `dialogs`: per-dialog details
    (id, frames, the generated text, each view's `token_duplex_metrics` and the reference's)."""

    metrics: dict[str, float | None]
    reference: dict[str, float | None]
    dialogs: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return {"metrics": self.metrics, "reference": self.reference, "dialogs": self.dialogs}


# ---------------------------------------------------------------------------------------------- activity
def segment_activity(segments: Sequence[Segment], num_frames: int) -> np.ndarray:
    """bool [num_frames]: True on the frames of `segments` (clipped to the window)."""
    active = np.zeros(num_frames, bool)
    for segment in segments:
        active[max(0, segment.start) : min(num_frames, segment.end)] = True
    return active


def user_activity(record: DialogRecord, num_frames: int | None = None) -> np.ndarray:
    """The user's speech [T] from the record's known turns (listen segments), over its first `num_frames`."""
    return segment_activity(record.listen_segments, record.num_frames if num_frames is None else num_frames)


def model_activity(
    text_ids: np.ndarray,
    speak_codes: np.ndarray,
    view: str,
    *,
    wait_id: int,
    silence_codes: np.ndarray,
    audio_pad_ids=(),
) -> np.ndarray:
    """The model's activity [T] in one view from its tokens (text [T], undelayed speak codes [T, 8])."""
    return tokens_lib.model_activity_from_tokens(
        text_ids, speak_codes, text_wait_id=wait_id, silence_codes=silence_codes, audio_pad_ids=audio_pad_ids, view=view
    )


def dialog_metrics(
    user: np.ndarray,
    text_ids: np.ndarray,
    speak_codes: np.ndarray,
    *,
    wait_id: int,
    silence_codes: np.ndarray,
    audio_pad_ids=(),
    views: Sequence[str] = VIEWS,
    **metric_options,
) -> dict[str, dict]:
    """One dialog: view -> `token_duplex_metrics` (+ `active_fraction`) of the model tokens against the user's
    activity bool [T]."""
    out = {}
    for view in views:
        active = model_activity(
            text_ids, speak_codes, view, wait_id=wait_id, silence_codes=silence_codes, audio_pad_ids=audio_pad_ids
        )
        metrics = tokens_lib.token_duplex_metrics(user, active, **metric_options)
        metrics["active_fraction"] = float(active.mean()) if active.size else 0.0
        out[view] = metrics
    return out


def reference_tokens(
    record: DialogRecord, num_frames: int, wait_id: int, rule: SourceRule | None = None, tokenizer=None
) -> tuple[np.ndarray, np.ndarray]:
    """The record's own model channel as tokens: (text row [T] (all `<wait>` without a tokenizer), speak codes
    [T, 8]) over its first `num_frames` frames."""
    if tokenizer is not None:
        text = text_row_for(record, rule or SourceRule("dialog", "leading"), tokenizer, wait_id)[0][:num_frames]
    else:
        text = np.full(num_frames, wait_id, np.int32)
    return text, np.asarray(record.speak_codes[:num_frames], np.int32)


def pool_metrics(per_dialog: Sequence[dict[str, dict]], views: Sequence[str] = VIEWS) -> dict[str, float | None]:
    """Per-dialog `dialog_metrics` -> flat `{view}/{name}` figures pooled over every turn, interruption and
    onset of all dialogs (None where there is nothing to average)."""
    out: dict[str, float | None] = {}
    for view in views:
        rows = [d[view] for d in per_dialog]
        for name, count in _RATES.items():
            total = sum(r[count] for r in rows if r[name] is not None)
            out[f"{view}/{name}"] = (
                sum(r[name] * r[count] for r in rows if r[name] is not None) / total if total else None
            )
        for name, values in _LATENCY_LISTS.items():
            pooled = [v for r in rows for v in r[values]]
            out[f"{view}/{name}"] = float(np.mean(pooled)) if pooled else None
        # response latencies after interruptions: weighted by the interruptions that got a response
        weights = [
            (r["interruption_response_latency_s"], r["interruption_turn_over_rate"] * r["n_interruptions"])
            for r in rows
            if r["interruption_response_latency_s"] is not None
        ]
        total = sum(w for _, w in weights)
        out[f"{view}/interruption_response_latency_s"] = sum(v * w for v, w in weights) / total if total else None
        for name in _COUNTS:
            out[f"{view}/{name}"] = float(sum(r[name] for r in rows))
        onsets = out[f"{view}/n_model_onsets"]
        out[f"{view}/barge_in_rate"] = out[f"{view}/n_barge_ins"] / onsets if onsets else None
        frames = sum(r["n_frames"] for r in rows)
        out[f"{view}/active_fraction"] = (
            sum(r["active_fraction"] * r["n_frames"] for r in rows) / frames if frames else None
        )
    return out


# ---------------------------------------------------------------------------------------------- streaming
def decoding(text_temperature: float = 0.0):
    """The streaming decoding of the eval: greedy (argmax text and audio, the released penalties) with
    `text_temperature = 0`; else the monologue token is sampled from the model's distribution at that
    temperature (no top-p, no penalty) and the audio stays argmax. Greedy text waits whenever `<wait>` is the
    single most likely token, even when most of the mass is on starting to talk (spread over many first
    words): a model that is unsure when or how to start then never speaks."""
    from flmjax import infer
    from flmjax.infer.sampling import StreamSampling

    if text_temperature <= 0:
        return infer.SamplingConfig.greedy()
    return infer.SamplingConfig(
        text=StreamSampling(temperature=text_temperature, top_p=0.0),
        audio=StreamSampling(temperature=0.0),
        do_sample=True,
    )


def stream_sessions(
    config: ModelConfig,
    params,
    listen_codes: Sequence[np.ndarray],
    *,
    batch_size: int = 8,
    sampling=None,
    seed: int = 0,
    idle_codes: np.ndarray | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The model's frames 0..T_i-1 on each user channel listen_codes[i] [T_i, 8]: per session (text ids [T_i],
    undelayed speak codes [T_i, 8]). Each session runs `batch_size` at a time through the session scheduler
    (`flmjax.infer.sessions.run_sessions`), fed one more frame, `idle_codes` [8] (default the first frame of
    the first session), so that it emits its frame T_i-1. Session i's keys depend only on (seed, i, step), so
    sampled runs do not depend on the batching."""
    from flmjax import infer

    if not listen_codes:
        return []
    idle = np.asarray(listen_codes[0][0] if idle_codes is None else idle_codes, np.int32).reshape(1, -1)
    fed = [np.concatenate([np.asarray(codes, np.int32), idle]) for codes in listen_codes]
    result = sessions_lib.run_sessions(
        config,
        params,
        fed,
        slots=batch_size,
        sampling=infer.SamplingConfig.greedy() if sampling is None else sampling,
        seed=seed,
        session_seeds=range(len(fed)),
    )
    return [(frames[:, 0], frames[:, 1:]) for frames in result.frames]


# ---------------------------------------------------------------------------------------------- quality
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


# ---------------------------------------------------------------------------------------------- the whole eval
def evaluate_dialogs(
    config: ModelConfig,
    params,
    records: Sequence[DialogRecord],
    tokenizer=None,
    *,
    batch_size: int = 8,
    max_frames: int | None = None,
    sampling=None,
    seed: int = 0,
    silence_codes: np.ndarray,
    quality_rule: SourceRule | None = None,
    views: Sequence[str] = VIEWS,
    **metric_options,
) -> DialogEvalResult:
    """The duplex metrics of the streaming model on dialog `records` (both channels present), and the
    monologue quality when `quality_rule` (placement) and a `tokenizer` are given; see the module docstring.

    `max_frames`: evaluate each record's first `max_frames` frames (None: whole records). `silence_codes`:
    the silence frame(s) of the records' codec (the dataset's: `flmjax.data.synthetic.SILENCE_FRAME` for the
    synthetic corpus; the caller or its eval config gives it), heard as idle input and not counted as speech.
    `sampling`: a
    `flmjax.infer.SamplingConfig` (default greedy). `metric_options` go to `token_duplex_metrics`."""
    silence = np.asarray(silence_codes)
    records = [r for r in records if r.speak_codes is not None and r.listen_codes is not None]
    if not records:
        raise ValueError("no dialog records (with both speak and listen codes) to evaluate")
    frames = [min(r.num_frames, max_frames) if max_frames else r.num_frames for r in records]
    listen = [np.asarray(r.listen_codes[:n], np.int32) for r, n in zip(records, frames)]
    generated = stream_sessions(
        config,
        params,
        listen,
        batch_size=batch_size,
        sampling=sampling,
        seed=seed,
        idle_codes=silence.reshape(-1, config.aud_channel)[0],
    )
    scoring = dict(
        wait_id=config.text_wait_id,
        silence_codes=silence,
        audio_pad_ids=(config.aud_pad_id,),
        views=views,
        **metric_options,
    )
    per_dialog, per_reference, dialogs = [], [], []
    for record, n, (text, speak) in zip(records, frames, generated):
        user = user_activity(record, n)
        scores = dialog_metrics(user, text, speak, **scoring)
        ref_text, ref_speak = reference_tokens(record, n, config.text_wait_id, quality_rule, tokenizer)
        ref_scores = dialog_metrics(user, ref_text, ref_speak, **scoring)
        per_dialog.append(scores)
        per_reference.append(ref_scores)
        entry = {
            "id": record.id,
            "num_frames": n,
            "user_segments": len(record.listen_segments),
            "model": scores,
            "reference": ref_scores,
        }
        if tokenizer is not None:
            entry["streamed_text"] = tokenizer.decode(
                [int(t) for t in text if t != config.text_wait_id and t < tokenizer.vocab_size]
            )
        dialogs.append(entry)
    metrics = pool_metrics(per_dialog, views)
    metrics["dialogs"] = float(len(records))
    metrics["frames"] = float(sum(frames))
    if quality_rule is not None and tokenizer is not None:
        quality, details = monologue_quality(
            config, params, records, tokenizer, quality_rule, batch_size=batch_size, max_frames=max_frames
        )
        metrics.update(quality)
        by_id = {d["id"]: d for d in details}
        for entry in dialogs:
            entry["quality"] = by_id.get(entry["id"])
    return DialogEvalResult(metrics, pool_metrics(per_reference, views), dialogs)
