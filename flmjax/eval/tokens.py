"""Token-level duplex metrics: the model's streamed tokens on a dialog with known user speech, no audio.

Two views of "the model is active" at a frame (80 ms at 12.5 frames/s):
- `speaking`: its speak codes [8] are not a silence frame of the Mimi codec (what the user would hear);
- `thinking`: its monologue text token is not `<wait>` / pad (what it is saying in text).

Frame timelines become segments (`vad.segments_from_activity`, then FDB's merge gaps) and are scored with the
same functions as audio timelines (`duplex.py`), so both follow one definition.
"""

from __future__ import annotations

import math

import numpy as np

from flmjax.eval import duplex
from flmjax.eval.vad import MODEL_MERGE_GAP_S, USER_MERGE_GAP_S, merge_segments, segments_from_activity
from flmjax.streams import FRAME_S


def speaking_activity(speak_codes: np.ndarray, silence_codes: np.ndarray, audio_pad_ids=()) -> np.ndarray:
    """speak codes [T, C] (undelayed, frame-aligned) -> bool [T]: True where the frame is not one of the
    silence frames `silence_codes` ([C] or [K, C]) and has no audio pad id (`aud_pad`) in any codebook."""
    codes = np.asarray(speak_codes)
    silence = np.asarray(silence_codes).reshape(-1, codes.shape[1])
    is_silent = (codes[:, None, :] == silence[None, :, :]).all(-1).any(-1)
    has_pad = np.isin(codes, np.asarray(audio_pad_ids, dtype=codes.dtype)).any(-1)
    return ~is_silent & ~has_pad


def thinking_activity(text_ids: np.ndarray, text_wait_id: int, text_pad_ids=()) -> np.ndarray:
    """monologue text ids [T] -> bool [T]: True where the token is neither `<wait>` nor a pad id."""
    text = np.asarray(text_ids).reshape(-1)
    return ~np.isin(text, np.asarray([text_wait_id, *text_pad_ids], dtype=text.dtype))


def model_activity_from_tokens(
    text_ids: np.ndarray,
    speak_codes: np.ndarray,
    *,
    text_wait_id: int,
    text_pad_ids=(),
    silence_codes=None,
    audio_pad_ids=(),
    view: str | None = None,
) -> np.ndarray:
    """The model's per-frame activity bool [T] from its streamed tokens (text [T], speak codes [T, 8]).

    `view="speaking"` (the default when `silence_codes` is given): `speaking_activity`;
    `view="thinking"` (the default otherwise): `thinking_activity`."""
    view = view or ("speaking" if silence_codes is not None else "thinking")
    if view == "speaking":
        if silence_codes is None:
            raise ValueError("the speaking view needs silence_codes (the codec's silence frame)")
        return speaking_activity(speak_codes, silence_codes, audio_pad_ids)
    if view == "thinking":
        return thinking_activity(text_ids, text_wait_id, text_pad_ids)
    raise ValueError(f"unknown view {view!r} (speaking or thinking)")


def _mean(values) -> float | None:
    values = [float(v) for v in values if v is not None]
    return sum(values) / len(values) if values else None


def token_duplex_metrics(
    user_activity: np.ndarray,
    model_activity: np.ndarray,
    frame_s: float = FRAME_S,
    *,
    response_window_s: float = 2.0,
    user_merge_gap_s: float = USER_MERGE_GAP_S,
    model_merge_gap_s: float = MODEL_MERGE_GAP_S,
) -> dict:
    """Duplex behaviour from frame timelines user bool [T] and model bool [T].

    Segments: runs of active frames, merged across gaps up to FDB v1.5's 0.6 s (user) / 0.5 s (model).
    - turn-taking, at each user segment end `u1` (every merged user segment end is treated as a turn end):
      the model segments starting in [u1, min(u1 + response_window_s, next user start)) are scored with
      `duplex.smooth_turn_taking` -> turn-over rate and latency (next model start - u1; in frames too).
    - interruptions: each user segment that starts while a model segment runs is scored with
      `duplex.user_interruption` (model segments up to the same window) -> stop rate (model stopped before
      the user finished), stop latency (user start -> model stop), TOR and latency of the response.
    - barge-ins (`duplex.barge_ins`): model onsets inside user speech (including user pauses <= 0.6 s);
      barge-in rate = barge-ins / model onsets.
    Means are None when there is nothing to average."""
    user_activity, model_activity = np.asarray(user_activity, bool), np.asarray(model_activity, bool)
    if user_activity.shape != model_activity.shape:
        raise ValueError(f"user {user_activity.shape} and model {model_activity.shape} timelines differ")
    user = merge_segments(segments_from_activity(user_activity, frame_s), user_merge_gap_s)
    model = merge_segments(segments_from_activity(model_activity, frame_s), model_merge_gap_s)

    def frames(seconds):
        return [None if s is None else int(round(s / frame_s)) for s in seconds]

    turns, interruptions = [], []
    for k, (u0, u1) in enumerate(user):
        next_user = user[k + 1][0] if k + 1 < len(user) else math.inf
        window_end = min(u1 + response_window_s, next_user)
        responses = [m for m in model if u1 <= m[0] < window_end]
        turns.append(duplex.smooth_turn_taking(responses, u1))
        if any(m0 <= u0 < m1 for m0, m1 in model):
            in_scope = [m for m in model if m[0] < window_end]
            interruptions.append(duplex.user_interruption(in_scope, u0, u1))

    turn_latencies = [t.latency_s for t in turns if t.took_turn]
    stop_latencies = [i.stop_latency_s for i in interruptions]
    barge = duplex.barge_ins(user, model)
    return {
        "frame_s": frame_s,
        "n_frames": int(user_activity.size),
        "n_user_turns": len(user),
        "turn_over_rate": _mean(t.took_turn for t in turns),
        "turn_latencies_s": turn_latencies,
        "turn_latencies_frames": frames(turn_latencies),
        "turn_latency_s": _mean(turn_latencies),
        "n_interruptions": len(interruptions),
        "interruption_stop_rate": _mean(i.stopped for i in interruptions),
        "stop_latencies_s": stop_latencies,
        "stop_latencies_frames": frames(stop_latencies),
        "stop_latency_s": _mean(stop_latencies),
        "interruption_turn_over_rate": _mean(i.took_turn for i in interruptions),
        "interruption_response_latency_s": _mean(i.response_latency_s for i in interruptions),
        "n_model_onsets": len(model),
        "barge_ins_s": barge,
        "n_barge_ins": len(barge),
        "barge_in_rate": len(barge) / len(model) if model else None,
    }
