"""Training examples: the released model's own stream reproduced as training inputs, masks, crop and pad."""

import numpy as np
import pytest

from flmjax import streams
from flmjax.config import ModelConfig
from flmjax.data.examples import (
    EXAMPLE_KEYS,
    SourceRule,
    StreamIds,
    crop_or_pad,
    make_example,
    record_arrays,
    training_arrays,
)
from flmjax.data.records import RecordError, make_record
from tests.conftest import GOLDEN_MODELS, golden_path

IDS = StreamIds(wait_id=3, aud_pad_id=2048)


class WordEncoder:
    """A fixed word -> id table (ids from 10), enough to see where each sentence's tokens land."""

    def __init__(self):
        self.table = {}

    def encode(self, text):
        return [self.table.setdefault(word, 10 + len(self.table)) for word in text.split()]


def golden_stream(name):
    stream = np.load(golden_path(name, "stream.npz"))
    config = ModelConfig.from_official(golden_path(name, "config.json"))
    return stream, StreamIds.from_config(config)


def recorded_conversation(stream, ids):
    """The greedy run as a recording: its text, its voice (undelayed from what each step returned), the user."""
    text = stream["greedy/text_tokens"]
    frames = len(text)
    out, valid = stream["greedy/out_tokens"], stream["greedy/out_valid"]
    assert not valid[0] and valid[1:].all()
    speak = np.full((frames, 8), ids.aud_pad_id)
    speak[: frames - 1] = out[1:, 1:]  # step s returns undelayed frame s - 1
    speak[frames - 1, 0] = stream["greedy/audio_tokens"][frames - 1, 0]  # its acoustics were never sampled
    np.testing.assert_array_equal(out[1:, 0], text[:-1])
    return text, speak, stream["listen"][0].T


@pytest.mark.parametrize("name", GOLDEN_MODELS)
def test_training_inputs_of_the_released_run_reproduce_its_model_inputs(name):
    stream, ids = golden_stream(name)
    expected = stream["greedy/model_inputs"]
    steps = len(expected)
    arrays = training_arrays(*recorded_conversation(stream, ids), ids)
    built = streams.stack_rows(arrays["text_ids"], arrays["speak_ids"], arrays["listen_ids"])[:steps]
    # The one place a recording cannot match: at step 1 the released generator feeds back the acoustic codes
    # it sampled at step 0, which it never emits; a recording holds the delay fill `aud_pad` there.
    acoustic_at_step_1 = (1, slice(2, 9))
    np.testing.assert_array_equal(expected[acoustic_at_step_1], stream["greedy/audio_tokens"][0, 1:])
    np.testing.assert_array_equal(built[acoustic_at_step_1], [ids.aud_pad_id] * 7)
    built[acoustic_at_step_1] = expected[acoustic_at_step_1]
    np.testing.assert_array_equal(built, expected)


@pytest.mark.parametrize("name", GOLDEN_MODELS)
def test_shifting_the_released_runs_delayed_tokens_gives_its_model_inputs_exactly(name):
    stream, ids = golden_stream(name)
    delayed_listen = streams.delay_codes(stream["listen"][0].T, ids.aud_pad_id)
    inputs = streams.model_inputs(
        stream["greedy/text_tokens"],
        stream["greedy/audio_tokens"],
        delayed_listen[: len(stream["greedy/text_tokens"])],
        ids.wait_id,
        ids.aud_pad_id,
    )
    np.testing.assert_array_equal(streams.stack_rows(*inputs), stream["greedy/model_inputs"])


@pytest.mark.parametrize("name", GOLDEN_MODELS)
def test_targets_are_what_the_released_run_produced_at_each_step(name):
    stream, ids = golden_stream(name)
    arrays = training_arrays(*recorded_conversation(stream, ids), ids)
    steps = len(stream["greedy/text_tokens"])
    np.testing.assert_array_equal(arrays["text_targets"][:steps], stream["greedy/text_tokens"])
    np.testing.assert_array_equal(arrays["audio_targets"][1:steps], stream["greedy/audio_tokens"][1:])
    assert arrays["audio_targets"][0, 0] == stream["greedy/audio_tokens"][0, 0]
    # Step 0's acoustic targets are delay fill, masked out of the loss.
    assert not arrays["audio_mask"][0, 1:].any() and arrays["audio_mask"][0, 0]


def test_inputs_at_step_s_are_the_targets_of_step_s_minus_one():
    rng = np.random.default_rng(0)
    arrays = training_arrays(rng.integers(0, 100, 9), rng.integers(0, 2048, (9, 8)), rng.integers(0, 2048, (9, 8)), IDS)
    np.testing.assert_array_equal(arrays["text_ids"][1:], arrays["text_targets"][:-1])
    np.testing.assert_array_equal(arrays["speak_ids"][1:], arrays["audio_targets"][:-1])
    assert arrays["text_ids"][0] == IDS.wait_id and (arrays["speak_ids"][0] == IDS.aud_pad_id).all()


def test_masks_cover_exactly_the_recorded_frames():
    arrays = training_arrays(np.full(5, 7), np.zeros((5, 8), int), np.zeros((5, 8), int), IDS)
    assert arrays["text_mask"].tolist() == [True] * 5 + [False]
    assert arrays["audio_mask"][:, 0].tolist() == [True] * 5 + [False]
    assert arrays["audio_mask"][:, 1].tolist() == [False] + [True] * 5


def tts_record(frames=20):
    rng = np.random.default_rng(1)
    return make_record(
        "tts-1",
        speak_codes=rng.integers(0, 2048, (frames, 8)),
        speak_segments=[{"start": 4, "end": 9, "text": "hello there"}, {"start": 12, "end": 18, "text": "how are you"}],
    )


def asr_record(frames=20):
    rng = np.random.default_rng(2)
    return make_record(
        "asr-1",
        listen_codes=rng.integers(0, 2048, (frames, 8)),
        listen_segments=[{"start": 2, "end": 8, "text": "good morning"}],
    )


def test_tts_record_places_the_speak_sentences_leading():
    encoder = WordEncoder()
    arrays = record_arrays(tts_record(), SourceRule("tts", "leading", lead_frames=2), encoder, IDS)
    targets = arrays["text_targets"]
    assert targets[2:4].tolist() == encoder.encode("hello there")
    assert targets[10:13].tolist() == encoder.encode("how are you")
    assert (arrays["listen_ids"] == IDS.aud_pad_id).all()
    assert arrays["audio_mask"].sum() == 20 * 8


def test_asr_record_places_the_listen_sentences_trailing_and_learns_no_audio():
    encoder = WordEncoder()
    arrays = record_arrays(asr_record(), SourceRule("asr", "trailing", trail_frames=1), encoder, IDS)
    assert arrays["text_targets"][9:11].tolist() == encoder.encode("good morning")
    assert (arrays["speak_ids"] == IDS.aud_pad_id).all() and not arrays["audio_mask"].any()


def test_dropped_monologue_tokens_are_counted():
    record = make_record(
        "late", speak_codes=np.zeros((6, 8), int), speak_segments=[{"start": 2, "end": 6, "text": "one two three four"}]
    )
    arrays = record_arrays(record, SourceRule("tts", "trailing"), WordEncoder(), IDS)
    assert int(arrays["dropped_tokens"]) == 4


def test_a_task_whose_channel_is_missing_is_an_error_naming_the_record():
    with pytest.raises(RecordError, match="record 'asr-1': task 'dialog' needs speak_codes"):
        record_arrays(asr_record(), SourceRule("dialog"), WordEncoder(), IDS)


def test_word_aligned_placement_needs_word_times():
    with pytest.raises(RecordError, match="lack per-word times"):
        record_arrays(tts_record(), SourceRule("tts", "word_aligned"), WordEncoder(), IDS)


def test_word_aligned_placement_uses_word_frames():
    record = make_record(
        "w",
        speak_codes=np.zeros((10, 8), int),
        speak_segments=[
            {
                "start": 1,
                "end": 7,
                "text": "a b",
                "words": [{"start": 1, "end": 3, "text": "a"}, {"start": 5, "end": 7, "text": "b"}],
            }
        ],
    )
    encoder = WordEncoder()
    arrays = record_arrays(record, SourceRule("tts", "word_aligned"), encoder, IDS)
    assert arrays["text_targets"][1] == encoder.encode("a")[0] and arrays["text_targets"][5] == encoder.encode("b")[0]


def test_short_records_are_padded_and_the_padding_is_masked():
    example = make_example(
        asr_record(frames=10), SourceRule("asr", "trailing"), WordEncoder(), IDS, 16, np.random.default_rng(0)
    )
    assert set(example) == set(EXAMPLE_KEYS)
    assert example["text_ids"].shape == (16,) and example["audio_targets"].shape == (16, 8)
    assert not example["text_mask"][11:].any() and example["text_mask"][:10].all()
    assert (example["listen_ids"][11:] == IDS.aud_pad_id).all() and (example["text_targets"][11:] == IDS.wait_id).all()


def window_start(arrays, window):
    """Where a cropped window begins in the full arrays (its speak targets are random codes, so unique)."""
    matches = np.flatnonzero(np.all(arrays["audio_targets"] == window["audio_targets"][0], axis=1))
    assert len(matches) == 1
    return int(matches[0])


def test_long_records_are_cropped_to_a_contiguous_window():
    arrays = record_arrays(tts_record(frames=40), SourceRule("tts"), WordEncoder(), IDS)
    window = crop_or_pad(arrays, 8, IDS, np.random.default_rng(5))
    start = window_start(arrays, window)
    for key in ("text_ids", "speak_ids", "listen_ids", "text_targets", "audio_targets", "text_mask", "audio_mask"):
        np.testing.assert_array_equal(window[key], arrays[key][start : start + 8], err_msg=key)


def test_crop_offset_is_seeded_and_varies_with_the_seed():
    arrays = record_arrays(tts_record(frames=40), SourceRule("tts"), WordEncoder(), IDS)
    starts = [window_start(arrays, crop_or_pad(arrays, 8, IDS, np.random.default_rng(seed))) for seed in range(12)]
    again = [window_start(arrays, crop_or_pad(arrays, 8, IDS, np.random.default_rng(seed))) for seed in range(12)]
    assert starts == again and len(set(starts)) > 3
