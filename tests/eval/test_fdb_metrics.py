"""FDB's metric definitions (`flmjax.eval.fdb_metrics`) on transcripts and segments whose FDB answers are worked
out by hand from FDB's scripts (`v1_v1.5/evaluation/*.py`, named in each test)."""

import math

import pytest

from flmjax.eval import fdb_metrics as fm


def words(*spans):
    """FDB output.json chunks: one per (start, end)."""
    return [{"text": f"w{k}", "timestamp": [s, e]} for k, (s, e) in enumerate(spans)]


def test_turn_taken_at_a_known_latency():
    # eval_smooth_turn_taking.py: first word at 3.4 s, last ends at 4.5 s (span 1.1 >= 1): TOR 1, 3.4 - 3.0
    tor, latency = fm.turn_latency(words((3.4, 3.7), (3.8, 4.1), (4.1, 4.3), (4.3, 4.5)), 3.0)
    assert tor == 1 and latency == pytest.approx(0.4)
    # a model already talking at the turn end: the negative latency counts as 0
    assert fm.turn_latency(words((2.5, 3.0), (3.0, 3.6)), 3.0) == (1, 0.0)


def test_silent_model_and_short_speech_take_no_turn():
    assert fm.turn_latency([], 3.0) == (0, None)
    # span 0.5 s with 3 words: under 1 s and not more than 3 words
    assert fm.turn_decision(words((3.2, 3.4), (3.4, 3.5), (3.5, 3.7))) == (0, None)
    # the same span with 4 words is a turn (eval_pause_handling.py: a pause "taken over")
    assert fm.turn_decision(words((3.2, 3.3), (3.3, 3.4), (3.4, 3.5), (3.5, 3.7))) == (1, 3.2)


def test_backchannels_below_and_above_the_thresholds():
    # eval_backchannel.py, a 10 s clip: (1.0, 1.5) one word -> backchannel, TOR 0; (2.0, 2.8) three words
    # (more than 2, under 1 s) -> TOR 1; (4.0, 5.5) one word but >= 1 s -> TOR 1; (6.0, 9.5) longer than 3 s
    # -> TOR 1 and the scan ends there, not recorded.
    segments = [(1.0, 1.5), (2.0, 2.8), (4.0, 5.5), (6.0, 9.5)]
    chunks = words((1.1, 1.4), (2.0, 2.2), (2.3, 2.5), (2.5, 2.8), (4.5, 4.9), (6.5, 7.0))
    result = fm.backchannel(segments, chunks, 10.0)
    assert result["TOR"] == 1 and result["n_backchannels"] == 3
    assert result["frequency_per_s"] == pytest.approx(0.3)
    assert result["backchannels_s"] == [(1.0, 1.5), (2.0, 2.8), (4.0, 5.5)]
    assert result["jsd"] is None  # no ground truth given
    # FDB overwrites TOR per segment: a 4-word segment followed by a one-word backchannel scores TOR 0
    late = fm.backchannel(
        [(1.0, 1.9), (3.0, 3.4)], words((1.0, 1.2), (1.2, 1.4), (1.4, 1.6), (1.6, 1.9), (3.1, 3.3)), 10.0
    )
    assert late["TOR"] == 0 and late["n_backchannels"] == 2
    # a word running over a segment's start or end counts for it; one wholly after it does not
    assert fm.words_in_segment(words((0.9, 1.1), (1.4, 1.6), (1.7, 1.8)), 1.0, 1.5) == ["w0", "w1"]


def test_backchannel_jsd():
    # no backchannel: JSD 1 (FDB's value); a 1.9 s clip has int(1.9 / 0.2) + 1 = 10 windows; a backchannel in
    # window 5 against a ground truth all in window 0: disjoint supports, the JS distance is sqrt(ln 2)
    assert fm.backchannel([], [], 5.0, [1.0])["jsd"] == 1.0
    gt = [1.0] + [0.0] * 9
    assert fm.backchannel([(1.0, 1.1)], [], 1.9, gt)["jsd"] == pytest.approx(math.sqrt(math.log(2)), abs=1e-4)
    same = [0.0] * 5 + [1.0] + [0.0] * 4
    assert fm.backchannel([(1.0, 1.1)], [], 1.9, same)["jsd"] == pytest.approx(0.0, abs=1e-4)


def test_v15_timing_overlap_and_clean_pairs():
    # get_timing.py: user (0, 2.0) and (2.5, 4.0) merge over the 0.5 s gap (<= 0.6) into (0, 4.0); the model
    # talks 3.0-4.5: it overlaps the user 3.0-4.0 (stop latency 1.0); no model start after 4.0: no response.
    overlap = fm.timing([(0.0, 2.0), (2.5, 4.0)], [(3.0, 4.5)])
    assert overlap["latency_stop_list"] == [[3.0, 4.0]] and overlap["latency_resp_list"] == []
    assert overlap["stop_latency_s"] == pytest.approx(1.0) and overlap["response_latency_s"] is None
    # the clean input: user (0, 1.5), the model answers at 1.8: response latency 0.3, no overlap
    clean = fm.timing([(0.0, 1.5)], [(1.8, 3.0)])
    assert clean["latency_resp_list"] == [[1.5, 1.8]] and clean["response_latency_s"] == pytest.approx(0.3)
    assert clean["latency_stop_list"] == [] and clean["stop_latency_s"] is None
    # FDB takes the next model start strictly after the user's end (`>`): a start exactly there is no response
    assert fm.timing([(0.0, 1.5)], [(1.5, 3.0)])["latency_resp_list"] == []
    # the model merges over 0.5 s: (1.8, 2.0) and (2.4, 3.0) are one segment; two user ends leading to the same
    # model start keep the later one (4.0 -> 5.0, not 1.0 -> 5.0 ... the user segments (0, 1) and (3, 4))
    assert fm.timing([(0.0, 1.0), (3.0, 4.0)], [(5.0, 6.0)])["latency_resp_list"] == [[4.0, 5.0]]
    assert fm.merge([(1.8, 2.0), (2.4, 3.0)], fm.MODEL_MERGE_GAP_S) == [(1.8, 3.0)]


def test_transcript_checks_name_the_problem():
    assert fm.check_transcript({"text": "", "chunks": []}, 5.0) == []
    with pytest.raises(ValueError, match="chunks"):
        fm.check_transcript([{"text": "a"}], 5.0)
    with pytest.raises(ValueError, match=r"chunk 1: timestamp \[1.0\]"):
        fm.check_transcript({"chunks": [{"text": "a", "timestamp": [0.1, 0.2]}, {"text": "b", "timestamp": [1.0]}]})
    with pytest.raises(ValueError, match="ends at 9.000 s, after the end of its audio at 5.000 s"):
        fm.check_transcript({"chunks": [{"text": "a", "timestamp": [8.5, 9.0]}]}, 5.0)
