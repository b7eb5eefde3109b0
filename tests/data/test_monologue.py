"""place_monologue: leading, trailing and word-aligned runs, queueing on collisions, clamping, dropping."""

import numpy as np
import pytest

from flmjax.data.monologue import place_monologue

W = 0  # the wait id in these tests


def row(*pairs, frames=12):
    """Expected text row: <wait> everywhere but at the (frame, token) pairs given."""
    out = np.full(frames, W, np.int32)
    for frame, token in pairs:
        out[frame] = token
    return out


def test_leading_run_starts_lead_frames_before_the_audio():
    text_row, dropped = place_monologue([(5, 9, [11, 12, 13])], 12, "leading", W, lead_frames=2)
    np.testing.assert_array_equal(text_row, row((3, 11), (4, 12), (5, 13)))
    assert dropped == 0


def test_leading_with_no_lead_starts_with_the_audio():
    text_row, _ = place_monologue([(5, 9, [11, 12])], 12, "leading", W)
    np.testing.assert_array_equal(text_row, row((5, 11), (6, 12)))


def test_trailing_run_starts_trail_frames_after_the_audio_ends():
    text_row, dropped = place_monologue([(2, 5, [11, 12])], 12, "trailing", W, trail_frames=1)
    np.testing.assert_array_equal(text_row, row((6, 11), (7, 12)))
    assert dropped == 0


def test_trailing_with_no_trail_starts_at_the_end_frame():
    text_row, _ = place_monologue([(2, 5, [11])], 12, "trailing", W)
    np.testing.assert_array_equal(text_row, row((5, 11)))


def test_word_aligned_puts_each_word_at_its_own_frame():
    words = [(1, 3, [11, 12]), (4, 5, [13]), (8, 10, [14])]
    text_row, _ = place_monologue(words, 12, "word_aligned", W)
    np.testing.assert_array_equal(text_row, row((1, 11), (2, 12), (4, 13), (8, 14)))


def test_colliding_run_is_queued_right_after_the_previous_one():
    segments = [(2, 4, [11, 12, 13, 14]), (3, 6, [21, 22])]  # second anchor (3) is inside the first run (2..5)
    text_row, dropped = place_monologue(segments, 12, "leading", W)
    np.testing.assert_array_equal(text_row, row((2, 11), (3, 12), (4, 13), (5, 14), (6, 21), (7, 22)))
    assert dropped == 0


def test_queued_runs_keep_their_order_and_every_token():
    segments = [(0, 1, [1, 2, 3]), (1, 2, [4, 5]), (2, 3, [6])]
    text_row, dropped = place_monologue(segments, 8, "trailing", W)
    np.testing.assert_array_equal(text_row, np.array([W, 1, 2, 3, 4, 5, 6, W]))
    assert dropped == 0


def test_word_aligned_words_that_collide_are_queued():
    words = [(1, 2, [11, 12, 13]), (2, 3, [21])]
    text_row, _ = place_monologue(words, 8, "word_aligned", W)
    np.testing.assert_array_equal(text_row, row((1, 11), (2, 12), (3, 13), (4, 21), frames=8))


def test_anchor_before_the_first_frame_is_clamped_to_zero():
    text_row, dropped = place_monologue([(1, 4, [11, 12])], 12, "leading", W, lead_frames=5)
    np.testing.assert_array_equal(text_row, row((0, 11), (1, 12)))
    assert dropped == 0


def test_tokens_past_the_end_are_dropped_and_counted():
    text_row, dropped = place_monologue([(6, 9, [11, 12, 13, 14])], 12, "trailing", W, trail_frames=1)
    np.testing.assert_array_equal(text_row, row((10, 11), (11, 12)))
    assert dropped == 2


def test_a_run_queued_entirely_past_the_end_is_dropped_whole():
    segments = [(0, 1, [1, 2, 3, 4]), (2, 3, [5, 6])]
    text_row, dropped = place_monologue(segments, 4, "leading", W)
    np.testing.assert_array_equal(text_row, [1, 2, 3, 4])
    assert dropped == 2


def test_no_segments_gives_all_wait():
    text_row, dropped = place_monologue([], 5, "leading", 7)
    np.testing.assert_array_equal(text_row, [7] * 5)
    assert text_row.dtype == np.int32 and dropped == 0


def test_unsorted_segments_are_rejected():
    with pytest.raises(ValueError, match="sorted by start frame"):
        place_monologue([(5, 6, [1]), (2, 3, [2])], 10, "leading", W)


def test_unknown_placement_is_rejected():
    with pytest.raises(ValueError, match="unknown monologue placement 'centered'"):
        place_monologue([(1, 2, [1])], 10, "centered", W)


def test_negative_offsets_are_rejected():
    with pytest.raises(ValueError, match="lead_frames \\(-1\\)"):
        place_monologue([(1, 2, [1])], 10, "leading", W, lead_frames=-1)
