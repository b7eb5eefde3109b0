"""Full-duplex behaviour metrics on speech-segment timelines (pure functions; times in seconds).

Definitions follow Full-Duplex-Bench (FDB): v1 (Lin et al., arXiv 2503.04721)
and v1.5 (arXiv 2507.23159), as implemented in github DanielLin94144/Full-Duplex-Bench `v1_v1.5/evaluation/`.
FDB decides "did the model take the turn" from word timestamps of an ASR run on the model channel
(`output.json` chunks). Here the model's speech is given as segments (from a VAD, from token activity, or from
word timings as one segment per word) with an optional word count; see `takes_turn` for how that maps.

Inputs are lists of `(start_s, end_s)`; task metadata is passed as numbers, as in FDB's json files:
`turn_taking.json` -> `turn_end_s`, `interrupt.json` `timestamp` -> `interrupt_start_s, interrupt_end_s`,
pause windows -> `pauses_s`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

Segment = tuple[float, float]

TURN_MIN_S = 1.0  # FDB `turn_duration_threshold`
TURN_MAX_SHORT_WORDS = 3  # FDB `turn_num_words_threshold`
BACKCHANNEL_MAX_S = 3.0  # FDB eval_backchannel.py `time_threshold`
BACKCHANNEL_SHORT_S = 1.0  # eval_backchannel.py: a segment under 1 s ...
BACKCHANNEL_MAX_WORDS = 2  # ... with at most 2 words is a backchannel
JSD_BIN_S = 0.2  # eval_backchannel.py `window_size`
JSD_EPS = 1e-10  # eval_backchannel.py `epsilon`


def takes_turn(model_segments, n_words: int | None = None) -> bool:
    """FDB v1's turn-over decision (eval_smooth_turn_taking.py, eval_pause_handling.py,
    eval_user_interruption.py): no speech -> no turn; speech spanning >= 1 s (first start to last end) -> turn;
    shorter speech is a turn only with more than 3 words.

    Assumption: without a word count (VAD or token activity only), speech shorter than 1 s is not a turn."""
    segments = sorted(model_segments)
    if not segments:
        return False
    if segments[-1][1] - segments[0][0] >= TURN_MIN_S:
        return True
    return n_words is not None and n_words > TURN_MAX_SHORT_WORDS


# ---------------------------------------------------------------- smooth turn-taking


@dataclasses.dataclass(frozen=True)
class TurnTakingResult:
    took_turn: bool  # TOR sample value (higher is better)
    latency_s: float | None  # first model speech after the turn end; None when no turn was taken


def smooth_turn_taking(model_segments, turn_end_s: float, n_words: int | None = None) -> TurnTakingResult:
    """FDB v1 smooth turn-taking (v1 paper, task "Smooth Turn-Taking"; eval_smooth_turn_taking.py):
    TOR = `takes_turn` on the model's output; latency = first model speech start - the user's turn end
    (`turn_taking.json` timestamp), clamped at 0 (a model already speaking at the turn end has latency 0),
    only when the turn was taken. Pass the model segments of the response window (FDB: the whole output of
    the clip)."""
    segments = sorted(model_segments)
    if not takes_turn(segments, n_words):
        return TurnTakingResult(False, None)
    return TurnTakingResult(True, max(0.0, segments[0][0] - turn_end_s))


# ---------------------------------------------------------------- pause handling


@dataclasses.dataclass(frozen=True)
class PauseHandlingResult:
    took_turn: bool  # TOR at pauses (lower is better)
    first_onset_s: float | None  # start of the first model speech counted


def pause_handling(model_segments, pauses_s=None, n_words: int | None = None) -> PauseHandlingResult:
    """FDB v1 pause handling (v1 paper, task "Pause Handling"; eval_pause_handling.py): TOR = `takes_turn` on
    the whole model output of a clip in which the user pauses but keeps the turn. With `pauses_s=[(start_s, end_s)]`,
    only model speech that starts inside a pause counts (with its full extent): an extension of FDB for long
    dialogs whose other gaps are real turn ends."""
    segments = sorted(model_segments)
    if pauses_s is not None:
        segments = [seg for seg in segments if any(p0 <= seg[0] < p1 for p0, p1 in pauses_s)]
    took = takes_turn(segments, n_words)
    return PauseHandlingResult(took, segments[0][0] if segments else None)


# ---------------------------------------------------------------- v1.5 timing: stop and response latency


def overlap_intervals(user_segments, model_segments) -> list[Segment]:
    """FDB v1.5 stop-latency intervals (get_timing.py `overlaps`): every non-empty intersection of a user and a
    model segment; for intersections ending at the same time (ms) the shortest is kept. Its duration is the
    stop latency: how long the model keeps talking over the user."""
    best: dict[int, Segment] = {}
    for u0, u1 in user_segments:
        for m0, m1 in model_segments:
            start, end = max(u0, m0), min(u1, m1)
            if end <= start:
                continue
            key = round(end * 1000)
            if key not in best or end - start < best[key][1] - best[key][0]:
                best[key] = (start, end)
    return [best[k] for k in sorted(best)]


def response_gaps(user_segments, model_segments) -> list[Segment]:
    """FDB v1.5 response-latency intervals (get_timing.py `response_gaps`): for each user segment end, the next
    model segment start -> (user_end_s, model_start_s); when several user ends lead to the same model start,
    the latest user end (shortest gap) is kept. Deviation: a model start equal to the user end counts
    (FDB: strictly after), so that frame timelines can give a latency of 0."""
    starts = sorted(m0 for m0, _ in model_segments)
    best: dict[int, Segment] = {}
    for _, u1 in user_segments:
        nxt = next((s for s in starts if s >= u1), None)
        if nxt is None:
            continue
        key = round(nxt * 1000)
        if key not in best or u1 > best[key][0]:
            best[key] = (u1, nxt)
    return sorted(best.values(), key=lambda gap: gap[1])


def barge_ins(user_segments, model_segments) -> list[float]:
    """Model speech onsets that fall inside user speech (start strictly after the user segment's start and
    before its end): the model starts talking while the user is talking. Not an FDB metric; it is the
    timeline counterpart of a pause-handling failure when the user's pauses are merged into their turn
    (v1.5 merges user gaps up to 0.6 s)."""
    return [m0 for m0, _ in sorted(model_segments) if any(u0 < m0 < u1 for u0, u1 in user_segments)]


# ---------------------------------------------------------------- user interruption


@dataclasses.dataclass(frozen=True)
class InterruptionResult:
    took_turn: bool  # TOR after the interruption (higher is better)
    response_latency_s: float | None  # new model speech start - interruption end, clamped at 0
    was_speaking: bool  # the model was speaking when the interruption started
    stopped: bool | None  # it stopped no later than the interruption's end (None if it was not speaking)
    stop_latency_s: float | None  # interruption start -> model stops (overlap duration, capped at its end)


def user_interruption(
    model_segments, interrupt_start_s: float, interrupt_end_s: float, n_words: int | None = None
) -> InterruptionResult:
    """User interruption: FDB v1 (v1 paper, task "User Interruption"; eval_user_interruption.py) and v1.5
    (get_timing.py).

    - TOR and response latency (v1): `takes_turn` on the model speech that starts after the interruption
      begins (assumption: FDB scores the output after the interruption; speech already under way at the
      interruption is the turn being interrupted, not a response); latency = its first start - the
      interruption end (`interrupt.json` timestamp[1]), clamped at 0 as in FDB.
    - Stop latency (v1.5): the overlap of the interrupting user segment with the model segment running at its
      start (`overlap_intervals`), i.e. interruption start -> model stops, capped at the interruption end when
      the model talks through it (then `stopped` is False). `n_words` counts the words of the response."""
    segments = sorted(model_segments)
    running = [seg for seg in segments if seg[0] <= interrupt_start_s < seg[1]]
    stopped = stop_latency_s = None
    if running:
        overlap = overlap_intervals([(interrupt_start_s, interrupt_end_s)], running[:1])
        stop_latency_s = overlap[0][1] - overlap[0][0] if overlap else 0.0
        stopped = running[0][1] <= interrupt_end_s
    response = [seg for seg in segments if seg[0] > interrupt_start_s]
    took = takes_turn(response, n_words)
    latency = max(0.0, response[0][0] - interrupt_end_s) if took else None
    return InterruptionResult(took, latency, bool(running), stopped, stop_latency_s)


# ---------------------------------------------------------------- backchannel


@dataclasses.dataclass(frozen=True)
class BackchannelResult:
    took_turn: bool  # TOR (lower is better: the model should not take the turn)
    n_backchannels: int
    frequency_per_s: float  # FDB's "Freq": backchannels / clip duration
    frequency_per_min: float
    onsets_s: tuple[float, ...]
    jsd: float | None  # vs the ground-truth distribution; None when none is given
    timing_offset_s: float | None  # mean |onset - nearest ground-truth onset|; None when none are given


def backchannel_distribution(backchannels, duration_s: float, bin_s: float = JSD_BIN_S) -> np.ndarray:
    """eval_backchannel.py: a histogram over `bin_s` bins of the clip (int(duration / bin) + 1 bins) counting
    every bin each backchannel touches, + 1e-10, normalised."""
    counts = np.zeros(int(duration_s / bin_s) + 1)
    for start, end in backchannels:
        counts[int(start / bin_s) : int(end / bin_s) + 1] += 1
    counts += JSD_EPS
    return counts / counts.sum()


def jensen_shannon(predicted: np.ndarray, reference: np.ndarray) -> float:
    """FDB's "JSD": scipy `jensenshannon` (natural log; the JS *distance*, the square root of the divergence)
    after linearly resampling `reference` to the length of `predicted` (eval_backchannel.py)."""
    from scipy.spatial.distance import jensenshannon

    predicted, reference = np.asarray(predicted, float), np.asarray(reference, float)
    resized = np.interp(np.linspace(0, 1, predicted.size), np.linspace(0, 1, reference.size), reference)
    return float(jensenshannon(predicted, resized))


def backchannel(
    model_segments, duration_s: float, words_per_segment=None, gt_distribution=None, gt_onsets_s=None
) -> BackchannelResult:
    """FDB v1 backchannel (v1 paper, task "Backchanneling"; eval_backchannel.py), on Silero segments of the
    model channel (FDB does not merge them here):

    - segments are scanned in order; one longer than 3 s is a turn and ends the scan;
    - every shorter segment before it is recorded as a backchannel (as FDB does);
    - a short segment is a turn when it has more than 3 words, or >= 1 s, or more than 2 words
      (without `words_per_segment`, duration alone decides). Deviation: TOR is 1 if any segment is a turn
      (FDB overwrites TOR per segment, so its last short segment decides).
    - frequency = backchannels / clip duration (FDB reports per second; per minute is also given);
    - JSD against the ground-truth per-clip distribution (FDB's `icc_gt_distribution.json`, which we do not
      have: pass it as `gt_distribution`); without backchannels JSD = 1 as in FDB;
    - timing offset (our addition, usable without the ICC distribution): mean distance from each backchannel
      onset to the nearest ground-truth onset `gt_onsets_s`."""
    segments = sorted(model_segments)
    words = list(words_per_segment) if words_per_segment is not None else [None] * len(segments)
    recorded, took = [], False
    for (start, end), n_words in zip(segments, words):
        duration = end - start
        if duration > BACKCHANNEL_MAX_S:
            took = True
            break
        short_and_few = duration < BACKCHANNEL_SHORT_S and (n_words is None or n_words <= BACKCHANNEL_MAX_WORDS)
        took = took or not short_and_few
        recorded.append((start, end))
    onsets = tuple(start for start, _ in recorded)
    jsd = None
    if gt_distribution is not None:
        jsd = jensen_shannon(backchannel_distribution(recorded, duration_s), gt_distribution) if recorded else 1.0
    offset = None
    if gt_onsets_s is not None and len(gt_onsets_s) and onsets:
        gt = np.asarray(gt_onsets_s, float)
        offset = float(np.mean([np.min(np.abs(gt - t)) for t in onsets]))
    per_s = len(recorded) / duration_s if duration_s > 0 else 0.0
    return BackchannelResult(took, len(recorded), per_s, 60.0 * per_s, onsets, jsd, offset)
