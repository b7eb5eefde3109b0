"""The plotting functions draw what their arrays hold: axes, labels, image data, lines."""

import numpy as np
import pytest

from flmjax import viz
from flmjax.data import examples, synthetic
from flmjax.data.records import Segment, make_record

pytest.importorskip("matplotlib")

WAIT = 3


class WordTokenizer:
    """One token per word (ids from 10 up); pieces are the words."""

    def __init__(self):
        self.pieces = {}

    def encode(self, text):
        return [self.pieces.setdefault(word, 10 + len(self.pieces)) for word in text.split()]

    def id_to_piece(self, token):
        return {v: k for k, v in self.pieces.items()}.get(token, "<wait>" if token == WAIT else "?")


def dialog_arrays(placement, **frames):
    speak = np.tile(np.arange(8, dtype=np.int16) * 100, (20, 1)) + np.arange(20, dtype=np.int16)[:, None]
    listen = speak[::-1] + 1
    record = make_record("r", speak, listen, [Segment(4, 9, "hi there friend")], [Segment(12, 16, "ok")], 20)
    tokenizer = WordTokenizer()
    arrays = examples.record_arrays(
        record,
        examples.SourceRule("dialog", placement, **frames),
        tokenizer,
        examples.StreamIds(wait_id=WAIT, aud_pad_id=2048),
    )
    return record, arrays, tokenizer


def test_stream_grid_draws_the_words_codes_and_masks_of_the_record():
    record, arrays, tokenizer = dialog_arrays("leading", lead_frames=2)
    fig = viz.plot_stream_grid(
        arrays,
        WAIT,
        token_text=tokenizer.id_to_piece,
        title="leading",
        speak_segments=[(4, 9)],
        listen_segments=[(12, 16)],
    )
    text_ax, speak_ax, listen_ax, mask_ax = fig.axes
    assert len(fig.axes) == len(viz.GRID_AXES) == 4
    # The monologue's words, at the steps the placement put them (2 frames before the audio at 4).
    assert [(t.get_text(), t.get_position()[0]) for t in text_ax.texts] == [("hi", 2), ("there", 3), ("friend", 4)]
    assert text_ax.get_title() == "leading"
    # Heatmaps hold the delayed codes, codebooks as rows; fills outside the code range are masked.
    speak_image = speak_ax.images[0].get_array()
    np.testing.assert_array_equal(
        speak_image.filled(-1), np.where(arrays["audio_targets"].T < 2048, arrays["audio_targets"].T, -1)
    )
    assert speak_image.mask[1:, 0].all() and not speak_image.mask[0, 0]  # acoustic delay fill at step 0
    np.testing.assert_array_equal(listen_ax.images[0].get_array().filled(-1)[:, 1:-1], arrays["listen_ids"].T[:, 1:-1])
    mask = mask_ax.images[0].get_array()
    np.testing.assert_array_equal(mask, np.concatenate([arrays["text_mask"][None], arrays["audio_mask"].T]))
    # Segment edges: speak on the text and speak rows, listen on the text and listen rows.
    assert sorted(line.get_xdata()[0] for line in speak_ax.lines) == [3.5, 8.5]
    assert sorted(line.get_xdata()[0] for line in listen_ax.lines) == [11.5, 15.5]
    assert len(text_ax.lines) == 4


def test_stream_grids_side_by_side_show_where_each_placement_puts_the_text():
    _, leading, tokenizer = dialog_arrays("leading", lead_frames=2)
    _, trailing, _ = dialog_arrays("trailing", trail_frames=1)
    fig = viz.plot_stream_grids(
        [{"arrays": leading, "title": "leading"}, {"arrays": trailing, "title": "trailing"}], WAIT
    )
    assert len(fig.axes) == 8
    lead_text, trail_text = fig.axes[0], fig.axes[4]
    assert [t.get_position()[0] for t in lead_text.texts] == [2, 3, 4]
    assert [t.get_position()[0] for t in trail_text.texts] == [10, 11, 12]  # audio ends at 9, +1 frame
    assert [t.get_text() for t in trail_text.texts] == [str(i) for i in trailing["text_targets"][10:13]]
    assert (lead_text.get_title(), trail_text.get_title()) == ("leading", "trailing")


def test_stream_grid_of_a_synthetic_dialog_marks_every_wait_step():
    record = synthetic.make_example(0, seed=0, max_frames=60).record
    arrays = examples.record_arrays(
        record,
        examples.SourceRule("dialog", "leading"),
        WordTokenizer(),
        examples.StreamIds(wait_id=WAIT, aud_pad_id=2048),
    )
    text_ax = viz.plot_stream_grid(arrays, WAIT).axes[0]
    waits = text_ax.collections[0].get_offsets()[:, 0]
    np.testing.assert_array_equal(waits, np.nonzero(arrays["text_targets"] == WAIT)[0])
    assert len(text_ax.texts) == int((arrays["text_targets"] != WAIT).sum())


def test_plot_losses_draws_one_labelled_curve_per_metric():
    history = {"text_loss": [3.0, 2.0, 1.5], "audio_loss_c0": [7.0, 6.0, 5.5]}
    fig = viz.plot_losses(history, steps=[10, 20, 30], title="stage")
    (ax,) = fig.axes
    assert [line.get_label() for line in ax.lines] == ["text_loss", "audio_loss_c0"]
    np.testing.assert_array_equal(ax.lines[1].get_xydata(), [[10, 7.0], [20, 6.0], [30, 5.5]])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["text_loss", "audio_loss_c0"]
    assert ax.get_yscale() == "log" and ax.get_title() == "stage"


def test_plot_timeline_draws_both_lanes_and_the_shown_monologue(tmp_path):
    fig = viz.plot_timeline([(0.0, 1.0)], [(1.2, 2.0), (2.5, 3.0)], [(1.0, "Hi"), (1.1, "<wait>")], title="t")
    (ax,) = fig.axes
    assert [len(c.get_paths()) for c in ax.collections] == [1, 2]
    assert [t.get_text() for t in ax.texts] == ["Hi"]
    path = viz.save_png(fig, tmp_path / "a" / "t.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_frame_times_are_80_ms_apart():
    np.testing.assert_allclose(viz.frame_times([0, 1, 25]), [0.0, 0.08, 2.0])
