"""Token-level duplex evaluation of the streaming model on dialog records whose turns are known, and the
monologue's text and speech quality. No audio: everything is read off token grids.

Duplex (`evaluate_dialogs`): each record's USER channel (listen codes) is fed frame by frame to the streaming
model (`flmjax.infer`, greedy by default), several records as parallel sessions of one batch (a slot whose
record ends starts the next one with `reset_slots`). `flmjax.eval.dialog_scoring` compares the user's activity
(the record's known turns) with the model's (its own output tokens: speaking and thinking) in each dialog and
pools the figures over dialogs, for the model and for the record's own model channel (the `reference`). The
monologue's quality (`flmjax.eval.monologue_quality`) is added when a placement and a tokenizer are given.

Records longer than `max_frames` are evaluated on their first `max_frames` frames (the model is trained on
crops of `data.sequence_length` frames; much longer streams test length generalisation, not turn-taking).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from flmjax.config import ModelConfig
from flmjax.data.examples import SourceRule
from flmjax.data.records import DialogRecord
from flmjax.eval.dialog_scoring import VIEWS, dialog_metrics, pool_metrics, reference_tokens, user_activity
from flmjax.eval.monologue_quality import monologue_quality
from flmjax.infer import sessions as sessions_lib


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
