"""FDB-style metrics on constructed segment timelines with known answers."""

import pytest

from flmjax.eval import duplex


def test_takes_turn_rule():
    assert not duplex.takes_turn([])
    assert duplex.takes_turn([(1.0, 2.0)])  # spans exactly 1 s
    assert not duplex.takes_turn([(1.0, 1.5)])  # short, no word count: not a turn
    assert duplex.takes_turn([(1.0, 1.5)], n_words=4)  # short but more than 3 words
    assert not duplex.takes_turn([(1.0, 1.5)], n_words=3)
    assert duplex.takes_turn([(1.0, 1.3), (1.8, 2.1)])  # span first start -> last end


def test_smooth_turn_taking_latency():
    result = duplex.smooth_turn_taking([(3.2, 5.0), (5.5, 6.0)], turn_end_s=2.8)
    assert result.took_turn and result.latency_s == pytest.approx(0.4)
    # already speaking at the turn end: latency clamped at 0 (FDB)
    assert duplex.smooth_turn_taking([(2.5, 4.0)], turn_end_s=2.8).latency_s == 0.0
    # a short "mm-hm" is not a turn: no latency
    assert duplex.smooth_turn_taking([(3.0, 3.4)], turn_end_s=2.8) == duplex.TurnTakingResult(False, None)


def test_pause_handling_barge_in_at_pause():
    pauses = [(1.0, 2.0)]
    assert duplex.pause_handling([(1.2, 2.6)], pauses).took_turn  # talks over the pause: TOR 1
    assert duplex.pause_handling([(1.2, 2.6)], pauses).first_onset_s == pytest.approx(1.2)
    assert not duplex.pause_handling([(1.2, 1.5)], pauses).took_turn  # a short backchannel: TOR 0
    assert not duplex.pause_handling([(3.0, 5.0)], pauses).took_turn  # speaks after the user finished
    assert duplex.pause_handling([(3.0, 5.0)]).took_turn  # FDB default: the whole output counts
    assert not duplex.pause_handling([]).took_turn


def test_user_interruption_stop_and_response():
    k = 4  # the model stops k frames after the interruption starts
    start, end = 3.0, 5.0
    model = [(0.0, start + k * 0.08), (5.5, 8.0)]
    result = duplex.user_interruption(model, start, end)
    assert result.was_speaking and result.stopped
    assert result.stop_latency_s == pytest.approx(k * 0.08)
    assert result.took_turn and result.response_latency_s == pytest.approx(0.5)


def test_user_interruption_talking_through():
    result = duplex.user_interruption([(0.0, 6.0)], 3.0, 5.0)
    assert result.was_speaking and not result.stopped
    assert result.stop_latency_s == pytest.approx(2.0)  # capped at the interruption end (v1.5 overlap)
    assert not result.took_turn and result.response_latency_s is None
    quiet = duplex.user_interruption([(5.2, 7.0)], 3.0, 5.0)  # not speaking when interrupted
    assert not quiet.was_speaking and quiet.stopped is None and quiet.stop_latency_s is None
    assert quiet.took_turn and quiet.response_latency_s == pytest.approx(0.2)


def test_v15_intervals():
    user = [(0.0, 2.0), (3.0, 5.0)]
    model = [(2.4, 3.5), (5.3, 7.0)]
    assert duplex.overlap_intervals(user, model) == [pytest.approx((3.0, 3.5))]
    gaps = duplex.response_gaps(user, model)
    assert [tuple(g) for g in gaps] == [pytest.approx((2.0, 2.4)), pytest.approx((5.0, 5.3))]
    assert duplex.barge_ins([(0.0, 3.0)], [(1.0, 1.5), (3.5, 4.0)]) == [1.0]


def test_backchannel_counted_with_time():
    result = duplex.backchannel([(2.0, 2.4), (6.0, 6.5)], duration_s=10.0, gt_onsets_s=[2.1, 6.3])
    assert not result.took_turn
    assert result.n_backchannels == 2 and result.onsets_s == (2.0, 6.0)
    assert result.frequency_per_s == pytest.approx(0.2) and result.frequency_per_min == pytest.approx(12.0)
    assert result.timing_offset_s == pytest.approx(0.2)
    assert result.jsd is None


def test_backchannel_turn_and_jsd():
    long_turn = duplex.backchannel([(1.0, 1.3), (2.0, 6.0), (7.0, 7.2)], duration_s=10.0)
    assert long_turn.took_turn and long_turn.n_backchannels == 1  # the scan stops at the > 3 s segment
    assert duplex.backchannel([(1.0, 1.5)], 10.0, words_per_segment=[3]).took_turn  # 3 words: a turn
    bcs = [(2.0, 2.4)]
    gt = duplex.backchannel_distribution(bcs, 10.0)
    assert duplex.backchannel(bcs, 10.0, gt_distribution=gt).jsd == pytest.approx(0.0, abs=1e-6)
    far = duplex.backchannel([(8.0, 8.4)], 10.0, gt_distribution=gt).jsd
    assert 0.5 < far <= 1.0
    assert duplex.backchannel([], 10.0, gt_distribution=gt).jsd == 1.0
