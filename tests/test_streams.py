"""Delays and the input/target layout of REFERENCE.md 1.1."""

import numpy as np

from flmjax import streams


def test_delay_then_undelay_is_the_identity():
    codes = np.random.default_rng(0).integers(0, 2048, (13, 8))
    delayed = streams.delay_codes(codes, pad_id=2048)
    assert delayed.shape == (14, 8)
    np.testing.assert_array_equal(streams.undelay_codes(delayed), codes)


def test_acoustic_codebooks_run_one_frame_behind_the_semantic_one():
    codes = np.arange(3 * 8).reshape(3, 8)
    delayed = streams.delay_codes(codes, pad_id=-1)
    np.testing.assert_array_equal(delayed[:, 0], [0, 8, 16, -1])
    np.testing.assert_array_equal(delayed[:, 3], [-1, 3, 11, 19])


def test_row_layout_has_seventeen_rows_with_the_released_delays():
    assert streams.NUM_ROWS == 17
    assert streams.ROW_DELAYS == (0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1)
    grid = streams.stack_rows(np.zeros(4, int), np.ones((4, 8), int), 2 * np.ones((4, 8), int))
    assert grid.shape == (4, 17)
    assert (grid[:, streams.SPEAK_ROWS] == 1).all() and (grid[:, streams.LISTEN_ROWS] == 2).all()


def test_inputs_shift_text_and_speak_but_not_listen():
    text = np.array([5, 6, 7])
    speak = np.arange(24).reshape(3, 8)
    listen = 100 + np.arange(24).reshape(3, 8)
    text_in, speak_in, listen_in = streams.model_inputs(text, speak, listen, wait_id=1, pad_id=9)
    np.testing.assert_array_equal(text_in, [1, 5, 6])
    np.testing.assert_array_equal(speak_in[0], [9] * 8)
    np.testing.assert_array_equal(speak_in[1:], speak[:-1])
    np.testing.assert_array_equal(listen_in, listen)
