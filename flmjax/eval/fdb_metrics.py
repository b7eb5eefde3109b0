"""Full-Duplex-Bench's metric definitions, exactly as its scoring scripts compute them (pure functions).

Each function follows one script of github DanielLin94144/Full-Duplex-Bench (`v1_v1.5/`), read at commit d7336bd;
the docstrings name the file and function. Inputs are what those scripts read: an ASR transcript in FDB's
`output.json` schema (`{"text": str, "chunks": [{"text": word, "timestamp": [start_s, end_s]}, ...]}`, one chunk
per word, as `get_transcript/asr.py` writes it), the task file's times, and, for the two scripts that run
Silero VAD themselves (`eval_backchannel.py`, `get_timing.py`), the speech segments of `output.wav` and
`input.wav`. Nothing here reads files; `flmjax.eval.fdb_score` feeds these from an FDB results folder.

Not computed (they need services or models flmjax does not ship): v1 user interruption's GPT-4 relevance rating
(`eval_user_interruption.py`), v1.5 behaviour categories (`eval_behavior.py`, GPT-4o), v1.5 speech-feature
adaptation (`eval_general_before_after.py`: UTMOSv2, pitch and intensity) and its paired t-tests
(`significance_test.py`).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

Segment = tuple[float, float]

TURN_DURATION_THRESHOLD_S = 1  # eval_smooth_turn_taking.py / eval_pause_handling.py / eval_user_interruption.py
TURN_NUM_WORDS_THRESHOLD = 3  # (same three files) `turn_num_words_threshold`
BACKCHANNEL_TIME_THRESHOLD_S = 3  # eval_backchannel.py `time_threshold`
BACKCHANNEL_WINDOW_S = 0.2  # eval_backchannel.py `window_size`
BACKCHANNEL_EPSILON = 1e-10  # eval_backchannel.py `epsilon`
VAD_SECONDS_DECIMALS = 1  # eval_backchannel.py calls Silero's get_speech_timestamps(return_seconds=True):
#                           times rounded to 0.1 s (its `time_resolution=1`)
TIMING_DECIMALS = 3  # get_timing.py rounds every interval bound to 1 ms
USER_MERGE_GAP_S = 0.6  # get_timing.py USER_MERGE_GAP
MODEL_MERGE_GAP_S = 0.5  # get_timing.py MODEL_MERGE_GAP


def turn_decision(chunks: Sequence[dict]) -> tuple[int, float | None]:
    """(TOR, the first word's start when TOR is 1), the rule shared by `eval_smooth_turn_taking.py`
    (`eval_smooth_turn_taking`), `eval_user_interruption.py` (`eval_user_interruption`) and
    `eval_pause_handling.py` (`eval_pause_handling`): no words -> 0; the span from the first word's start to
    the last word's end under 1 s with at most 3 words -> 0; else 1. (`eval_pause_handling.py` alone falls
    back to the last word's start when its end is null.)"""
    if not chunks:
        return 0, None
    first, last = chunks[0]["timestamp"], chunks[-1]["timestamp"]
    end = last[-1] if last[-1] is not None else last[0]
    if end - first[0] < TURN_DURATION_THRESHOLD_S and len(chunks) <= TURN_NUM_WORDS_THRESHOLD:
        return 0, None
    return 1, first[0]


def turn_latency(chunks: Sequence[dict], reference_s: float) -> tuple[int, float | None]:
    """(TOR, latency): `turn_decision`, and when TOR is 1 the first word's start minus `reference_s`, a negative
    value counted as 0 (`eval_smooth_turn_taking.py`: `reference_s` = `turn_taking.json` `[0]["timestamp"][0]`;
    `eval_user_interruption.py`: `interrupt.json` `[0]["timestamp"][1]`, the interruption's end, on a
    transcript that `asr.py --task user_interruption` cropped there). FDB's "Average latency" is the mean over
    the samples with TOR 1."""
    tor, start = turn_decision(chunks)
    if not tor:
        return 0, None
    return 1, max(0.0, start - reference_s)


def seconds_like_silero(samples: int, sample_rate: int, decimals: int = VAD_SECONDS_DECIMALS) -> float:
    """A sample index in seconds as Silero's `get_speech_timestamps(return_seconds=True)` gives it."""
    return round(samples / sample_rate, decimals)


def words_in_segment(chunks: Sequence[dict], start: float, end: float) -> list[str]:
    """The words `eval_backchannel.py` (`eval_backchannel`) attributes to a VAD segment [start, end]: a word inside
    it, one running over its end, or one running over its start; a word without a start, or without an end
    starting before `end`, is left out; one without an end otherwise counts as ending at its start."""
    words = []
    for chunk in chunks:
        t_start, t_end = chunk["timestamp"][0], chunk["timestamp"][1]
        if t_start is None or (t_end is None and t_start < end):
            continue
        if t_end is None:
            t_end = t_start
        if (
            (t_start >= start and t_end <= end)
            or (t_start <= end and t_end > end)
            or (t_start <= start and t_end > start)
        ):
            words.append(chunk["text"])
    return words


def backchannel(
    segments: Sequence[Segment],
    chunks: Sequence[dict],
    duration_s: float,
    gt_distribution: Sequence[float] | None = None,
) -> dict:
    """`eval_backchannel.py` (`eval_backchannel`) for one sample. `segments`: Silero segments of `output.wav` in
    seconds rounded to 0.1 s, unmerged; `duration_s`: output.wav's length; `gt_distribution`: this sample's
    entry of `icc_gt_distribution.json` (None: no JSD).

    Segments are scanned in order: one longer than 3 s sets TOR 1 and ends the scan; every other one is recorded
    as a backchannel and sets TOR (overwriting the previous value): 1 with more than 3 words, else 1 when it lasts
    1 s or more, else 1 with more than 2 words, else 0; so the last scanned segment decides. Frequency = recorded
    backchannels / duration. JSD: none recorded -> 1; else a histogram over 0.2 s windows (int(duration / 0.2) + 1
    bins, each backchannel counting in every window from int(start / 0.2) to int(end / 0.2)), + 1e-10,
    normalised, against the ground truth linearly resampled to its length, by scipy's `jensenshannon` (natural
    log: the JS distance)."""
    tor, recorded = 0, []
    for start, end in segments:
        duration = end - start
        if duration > BACKCHANNEL_TIME_THRESHOLD_S:
            tor = 1
            break
        n_words = len(words_in_segment(chunks, start, end))
        if n_words > 3:
            tor = 1
        elif duration < 1:
            tor = 0 if n_words <= 2 else 1
        else:
            tor = 1
        recorded.append((start, end))
    result = {
        "TOR": tor,
        "frequency_per_s": len(recorded) / duration_s,
        "n_backchannels": len(recorded),
        "backchannels_s": recorded,
        "jsd": None,
    }
    if not recorded:
        result["jsd"] = 1.0
    elif gt_distribution is not None:
        result["jsd"] = backchannel_jsd(recorded, duration_s, gt_distribution)
    return result


def backchannel_jsd(recorded: Sequence[Segment], duration_s: float, gt_distribution: Sequence[float]) -> float:
    """The JSD part of `backchannel` (`eval_backchannel.py`)."""
    from scipy.spatial.distance import jensenshannon

    bins = np.zeros(int(duration_s / BACKCHANNEL_WINDOW_S) + 1)
    for start, end in recorded:
        first, last = int(start / BACKCHANNEL_WINDOW_S), int(end / BACKCHANNEL_WINDOW_S)
        bins[first : min(last + 1, bins.size)] += 1
    bins = bins + BACKCHANNEL_EPSILON
    bins = bins / bins.sum()
    gt = np.asarray(gt_distribution, float)
    resized = np.interp(np.linspace(0, 1, bins.size), np.linspace(0, 1, gt.size), gt)
    return float(jensenshannon(bins, resized))


def merge(segments: Sequence[Segment], gap_s: float) -> list[Segment]:
    """`get_timing.py` `_merge`: sorted, neighbours joined across gaps <= `gap_s`."""
    merged: list[Segment] = []
    for start, end in sorted(segments):
        if merged and start - merged[-1][1] <= gap_s:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def overlaps(user: Sequence[Segment], model: Sequence[Segment]) -> list[list[float]]:
    """`get_timing.py` `overlaps` (its `latency_stop_list`): the intersections of the sorted user and model
    segments found by a two-pointer sweep; of those ending at the same millisecond the shortest; bounds rounded
    to 1 ms; in order of their ends."""
    raw, i, j = [], 0, 0
    while i < len(user) and j < len(model):
        (u_s, u_e), (m_s, m_e) = user[i], model[j]
        s, e = max(u_s, m_s), min(u_e, m_e)
        if e > s:
            raw.append((s, e))
        if u_e < m_e:
            i += 1
        else:
            j += 1
    best: dict[int, Segment] = {}
    for s, e in raw:
        key = int(round(e * 1000))
        if key not in best or (e - s) < (best[key][1] - best[key][0]):
            best[key] = (s, e)
    return [
        [round(s, TIMING_DECIMALS), round(e, TIMING_DECIMALS)] for s, e in sorted(best.values(), key=lambda x: x[1])
    ]


def response_gaps(user: Sequence[Segment], model: Sequence[Segment]) -> list[list[float]]:
    """`get_timing.py` `response_gaps` (its `latency_resp_list`): for each user segment end, the first model
    segment start strictly after it (`>`); of the user ends leading to the same model start the latest; bounds
    rounded to 1 ms; in order of the model starts."""
    starts = [s for s, _ in model]
    best: dict[int, list[float]] = {}
    for _, u_e in user:
        nxt = next((s for s in starts if s > u_e), None)
        if nxt is None:
            continue
        key = int(round(nxt * 1000))
        candidate = [round(u_e, TIMING_DECIMALS), round(nxt, TIMING_DECIMALS)]
        if key not in best or candidate[0] > best[key][0]:
            best[key] = candidate
    return [gap for _, gap in sorted(best.items(), key=lambda kv: kv[1][1])]


def timing(user_segments: Sequence[Segment], model_segments: Sequence[Segment]) -> dict:
    """`get_timing.py` `process_folder` on unmerged Silero segments (seconds, 16 kHz sample precision) of
    `input.wav` and `output.wav`: user merged over 0.6 s, model over 0.5 s, then `latency_stop_list` and
    `latency_resp_list` (what it writes to `latency_intervals.json`). get_timing.py writes only these lists;
    `stop_latency_s` / `response_latency_s` (the mean interval length of the sample, None without one) are how
    flmjax reduces them to a figure per sample."""
    user, model = merge(user_segments, USER_MERGE_GAP_S), merge(model_segments, MODEL_MERGE_GAP_S)
    stops, gaps = overlaps(user, model), response_gaps(user, model)
    mean = lambda intervals: float(np.mean([e - s for s, e in intervals])) if intervals else None  # noqa: E731
    return {
        "latency_stop_list": stops,
        "latency_resp_list": gaps,
        "stop_latency_s": mean(stops),
        "response_latency_s": mean(gaps),
    }


def check_transcript(data, duration_s: float | None = None, tolerance_s: float = 0.05) -> list[dict]:
    """The chunks of an `output.json` after checking its schema (a ValueError names what is wrong): an object
    with a list "chunks" of {"text": str, "timestamp": [start_s, end_s]} with numbers, starts in order; with
    `duration_s`, no word may end after the audio (an output.json of another, longer run)."""
    if not isinstance(data, dict) or not isinstance(data.get("chunks"), list):
        raise ValueError('expected {"text": ..., "chunks": [{"text": ..., "timestamp": [start_s, end_s]}]}')
    previous = -math.inf
    for k, chunk in enumerate(data["chunks"]):
        stamp = chunk.get("timestamp") if isinstance(chunk, dict) else None
        if (
            not isinstance(stamp, (list, tuple))
            or len(stamp) != 2
            or not all(isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) for t in stamp)
        ):
            raise ValueError(f"chunk {k}: timestamp {stamp!r}, expected [start_s, end_s] (numbers)")
        if stamp[0] < previous:
            raise ValueError(f"chunk {k}: starts at {stamp[0]} s, before the word ahead of it ({previous} s)")
        previous = stamp[0]
        if duration_s is not None and stamp[1] > duration_s + tolerance_s:
            raise ValueError(
                f"chunk {k} ({chunk.get('text')!r}) ends at {stamp[1]:.3f} s, after the end of its "
                f"audio at {duration_s:.3f} s: a transcript of another run"
            )
    return data["chunks"]
