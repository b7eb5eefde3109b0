"""Token-level duplex metrics from constructed token arrays."""

import numpy as np
import pytest

from flmjax.eval import tokens

WAIT, PAD = 3, 0
SILENCE = np.array([10, 11, 12, 13, 14, 15, 16, 17])


def _streams(model_frames, T, seed=0):
    """text ids [T] and speak codes [T, 8]: words/speech on `model_frames`, <wait>/silence elsewhere."""
    rng = np.random.default_rng(seed)
    text = np.full(T, WAIT)
    codes = np.tile(SILENCE, (T, 1))
    for f in model_frames:
        text[f] = 100 + f
        codes[f] = rng.integers(100, 2048, 8)
    return text, codes


def _activity(T, *ranges):
    active = np.zeros(T, bool)
    for a, b in ranges:
        active[a:b] = True
    return active


def test_views_from_tokens():
    T = 12
    text, codes = _streams([3, 4, 5], T)
    text[8] = PAD  # a pad token is not thinking
    codes[9] = codes[0] + 500  # speech without a text token (audio lags text)
    speaking = tokens.model_activity_from_tokens(
        text, codes, text_wait_id=WAIT, text_pad_ids=(PAD,), silence_codes=SILENCE
    )
    thinking = tokens.model_activity_from_tokens(text, codes, text_wait_id=WAIT, text_pad_ids=(PAD,))
    assert np.flatnonzero(speaking).tolist() == [3, 4, 5, 9]
    assert np.flatnonzero(thinking).tolist() == [3, 4, 5]
    with pytest.raises(ValueError):
        tokens.model_activity_from_tokens(text, codes, text_wait_id=WAIT, view="speaking")
    # several silence frames and audio pad ids
    codes[4] = 2048
    two = tokens.speaking_activity(codes, np.stack([SILENCE, codes[9]]), audio_pad_ids=(2048,))
    assert np.flatnonzero(two).tolist() == [3, 5]


def test_turn_taking_and_interruption_exact_frames():
    T = 100
    user = _activity(T, (0, 20), (40, 60))  # turn ends at frame 20; the user interrupts at frame 40
    k = 3  # the model stops k frames after the interruption starts
    text, codes = _streams([*range(25, 40 + k), *range(65, 80)], T)
    model = tokens.model_activity_from_tokens(text, codes, text_wait_id=WAIT, silence_codes=SILENCE)
    m = tokens.token_duplex_metrics(user, model)
    assert m["n_user_turns"] == 2 and m["turn_over_rate"] == 1.0
    assert m["turn_latencies_frames"] == [5, 5]  # model starts 5 frames after each user end
    assert m["turn_latencies_s"] == [pytest.approx(0.4), pytest.approx(0.4)]
    assert m["n_interruptions"] == 1 and m["interruption_stop_rate"] == 1.0
    assert m["stop_latencies_frames"] == [k] and m["stop_latency_s"] == pytest.approx(k * 0.08)
    assert m["interruption_turn_over_rate"] == 1.0
    assert m["interruption_response_latency_s"] == pytest.approx(0.4)
    assert m["n_barge_ins"] == 0 and m["barge_in_rate"] == 0.0


def test_no_response_and_barge_in_at_pause():
    T = 60
    user = _activity(T, (0, 10), (15, 30))  # a 0.4 s pause at frames 10..15 (merged: one user turn)
    model = _activity(T, (11, 35))  # barges in during the pause and talks over the user
    m = tokens.token_duplex_metrics(user, model)
    assert m["n_user_turns"] == 1
    assert m["n_barge_ins"] == 1 and m["barge_ins_s"] == [pytest.approx(11 * 0.08)]
    assert m["barge_in_rate"] == 1.0
    assert m["turn_over_rate"] == 0.0 and m["turn_latency_s"] is None  # still talking at the end: no new turn
    silent = tokens.token_duplex_metrics(user, np.zeros(T, bool))
    assert silent["turn_over_rate"] == 0.0 and silent["barge_in_rate"] is None
    assert silent["n_interruptions"] == 0 and silent["stop_latency_s"] is None


def test_response_outside_window_not_counted():
    T = 100
    user = _activity(T, (0, 20))
    model = _activity(T, (20 + 30, 80))  # 2.4 s after the turn end, beyond the 2 s window
    m = tokens.token_duplex_metrics(user, model)
    assert m["turn_over_rate"] == 0.0
    assert tokens.token_duplex_metrics(user, model, response_window_s=3.0)["turn_latencies_frames"] == [30]
