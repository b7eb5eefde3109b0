"""The scores of the token-level duplex eval (`flmjax.eval.dialogs`): the user's activity from a record's known
turns, the model's from its tokens, each dialog's duplex metrics, and the figures pooled over dialogs.

The user's activity comes from the record's listen segments (the known turns); the model's from its own output
tokens, in two views (`flmjax.eval.tokens`):

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
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from flmjax.data.examples import SourceRule, text_row_for
from flmjax.data.records import DialogRecord, Segment
from flmjax.eval import tokens as tokens_lib

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
