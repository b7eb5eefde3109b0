"""Recorded conversations (moshi-finetune layout) to sentence segments, Mimi codes and a dialog dataset."""

import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from flmjax.audio import read_wav, write_wav
from flmjax.data import recordings, word_alignments
from flmjax.data.dataset_source import DialogSource, read_summary
from flmjax.data.records import Segment, Word
from flmjax.data.word_alignments import AlignedWord, RecordingError, group_segments, read_alignments
from launch import prepare_data
from tests.conftest import golden_path

RATE = 24000


def words(*items, speaker="SPEAKER_MAIN"):
    return [AlignedWord(text, start, end, speaker) for text, start, end in items]


# ---------------------------------------------------------------------------------------------- segments


def test_sentence_final_punctuation_ends_a_segment():
    segments = group_segments(
        words(
            ("Hello", 0.0, 0.4),
            ("there.", 0.4, 0.8),
            ("How", 0.9, 1.1),
            ("are", 1.1, 1.3),
            ("you?", 1.3, 1.6),
            ("Fine!", 1.7, 2.0),
        ),
        40,
    )
    assert [s.text for s in segments] == ["Hello there.", "How are you?", "Fine!"]


def test_a_closing_quote_after_the_punctuation_still_ends_the_sentence():
    segments = group_segments(
        words(('"Yes."', 0.0, 0.4), ("no", 0.5, 0.8), ("(really?)", 0.8, 1.0), ("ok", 1.0, 1.2)), 40
    )
    assert [s.text for s in segments] == ['"Yes."', "no (really?)", "ok"]


def test_a_silence_longer_than_the_gap_ends_a_segment():
    items = [("one", 0.0, 0.4), ("two", 1.2, 1.5), ("three", 2.4, 2.8)]  # gaps 0.8 (kept) and 0.9 (split)
    assert [s.text for s in group_segments(words(*items), 40)] == ["one two", "three"]
    assert [s.text for s in group_segments(words(*items), 40, gap_s=0.5)] == ["one", "two", "three"]
    assert [s.text for s in group_segments(words(*items), 40, gap_s=2.0)] == ["one two three"]


def test_sentence_end_is_configurable():
    items = words(("a;", 0.0, 0.4), ("b.", 0.4, 0.8), ("c", 0.8, 1.2))
    assert [s.text for s in group_segments(items, 40, sentence_end=";")] == ["a;", "b. c"]


def test_words_cover_their_frames_and_segments_never_overlap():
    # 0.3 s -> frame 3 (floor of 3.75); 0.81 s -> frame 11 (ceil of 10.125); "b" starts inside "a."'s last frame.
    segments = group_segments(words(("a.", 0.3, 0.81), ("b", 0.82, 1.2), ("c", 1.2, 1.6)), 40)
    assert segments == (
        Segment(3, 11, "a.", (Word(3, 11, "a."),)),
        Segment(11, 20, "b c", (Word(11, 15, "b"), Word(15, 20, "c"))),
    )


def test_exact_frame_times_stay_on_their_frame_and_a_point_word_gets_one_frame():
    segments = group_segments(words(("x", 1.2, 1.6), ("y", 2.0, 2.0)), 40)
    assert segments[0].words == (Word(15, 20, "x"), Word(25, 26, "y"))


def test_words_past_the_end_of_the_audio_are_dropped_and_ends_clipped():
    segments = group_segments(words(("in", 0.0, 0.4), ("across", 0.7, 1.2), ("out", 1.3, 1.5)), 12)
    assert segments == (Segment(0, 12, "in across", (Word(0, 5, "in"), Word(8, 12, "across"))),)


def test_words_are_sorted_by_start():
    segments = group_segments(words(("second", 0.5, 0.9), ("first", 0.0, 0.4)), 40)
    assert segments[0].text == "first second"


def test_the_main_speaker_is_the_assistant_and_anyone_else_the_user():
    rule = word_alignments.GroupingRule()
    assert rule.channel("SPEAKER_MAIN") == "speak"
    assert {rule.channel(s) for s in ("SPEAKER_OTHER", "SPEAKER_01", "user")} == {"listen"}
    assert word_alignments.GroupingRule(main_speaker="A").channel("A") == "speak"


# ---------------------------------------------------------------------------------------------- alignments


def test_alignment_file_problems_are_rejections_by_reason(tmp_path):
    with pytest.raises(RecordingError, match="no alignment file") as error:
        read_alignments(tmp_path / "missing.json")
    assert error.value.category == "no alignments"
    cases = {
        "empty": ({"alignments": []}, "no alignments"),
        "bad": ({"alignments": [["word", 0.1, "SPEAKER_MAIN"]]}, "malformed alignments"),
        "backwards": ({"alignments": [["word", [0.5, 0.1], "SPEAKER_MAIN"]]}, "malformed alignments"),
        "other": ({"words": []}, "malformed alignments"),
    }
    for name, (content, category) in cases.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(content))
        with pytest.raises(RecordingError, match=f"{name}.json") as error:
            read_alignments(tmp_path / f"{name}.json")
        assert error.value.category == category


def test_alignments_read_word_times_and_speakers(tmp_path):
    (tmp_path / "a.json").write_text(
        json.dumps({"alignments": [[" Hi", [0.1, 0.3], "SPEAKER_MAIN"], ["yo", [0.2, 0.5], "SPEAKER_OTHER"]]})
    )
    assert read_alignments(tmp_path / "a.json") == [
        AlignedWord("Hi", 0.1, 0.3, "SPEAKER_MAIN"),
        AlignedWord("yo", 0.2, 0.5, "SPEAKER_OTHER"),
    ]


# ---------------------------------------------------------------------------------------------- preparing


def write_recording(directory, name, channels, alignments, rate=RATE):
    """channels: float arrays of one length; alignments: list or None (no .json)."""
    write_wav(directory / f"{name}.wav", np.stack(channels), rate, dtype="float32")
    if alignments is not None:
        (directory / f"{name}.json").write_text(json.dumps({"alignments": alignments}))
    return {"path": f"{name}.wav", "duration": len(channels[0]) / rate}


def tone(seconds, frequency, rate=RATE):
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


DIALOG_ALIGNMENTS = [
    ["Hello", [0.1, 0.5], "SPEAKER_MAIN"],
    ["there.", [0.5, 0.9], "SPEAKER_MAIN"],
    ["Hi!", [1.0, 1.3], "SPEAKER_OTHER"],
    ["How", [1.5, 1.7], "SPEAKER_MAIN"],
    ["are", [1.7, 1.9], "SPEAKER_MAIN"],
    ["you", [2.9, 3.2], "SPEAKER_MAIN"],
]


class FakeEncoder:
    """Codes from the signal's frame energies; counts the signals it encodes."""

    def __init__(self):
        self.calls = 0
        self.signals = 0

    def __call__(self):
        self.calls += 1
        return self.encode

    def encode(self, signals):
        self.signals += len(signals)
        out = []
        for signal in signals:
            frames = -(-len(signal) // 1920)
            padded = np.zeros(frames * 1920, np.float32)
            padded[: len(signal)] = signal
            energy = np.abs(padded.reshape(frames, 1920)).mean(axis=1)
            out.append((np.floor(energy * 5000)[None, :].astype(np.int64) + np.arange(8)[:, None]) % 2048)
        return out


@pytest.fixture
def corpus(tmp_path):
    """A manifest with two stereo dialogs, a mono file and a stereo file without alignments."""
    source = tmp_path / "corpus"
    (source / "audio").mkdir(parents=True)
    lines = [
        write_recording(source, "audio/dialog1", [tone(3.5, 440), tone(3.5, 660)], DIALOG_ALIGNMENTS),
        write_recording(
            source, "audio/dialog2", [tone(1.0, 300), tone(1.0, 500)], [["Yes.", [0.1, 0.4], "SPEAKER_MAIN"]]
        ),
        write_recording(source, "audio/mono", [tone(1.0, 440)], [["Okay.", [0.1, 0.4], "SPEAKER_MAIN"]]),
        write_recording(source, "audio/silent", [tone(1.0, 200), tone(1.0, 250)], None),
    ]
    lines[1]["split"] = "validation"
    manifest = source / "recordings.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines) + "not json\n")
    return manifest


def test_prepare_writes_a_manifest_of_dialogs_and_rejects_by_reason(corpus, tmp_path):
    encoder = FakeEncoder()
    prepared = recordings.prepare_recordings(corpus, tmp_path / "work", encoder, "fake", progress=False)
    assert (prepared.records, prepared.encoded, prepared.reused) == (2, 2, 0)
    assert sorted(category for category, _ in prepared.rejections) == ["malformed line", "mono audio", "no alignments"]
    lines = [json.loads(line) for line in open(prepared.manifest)]
    assert [(line["id"], line["split"]) for line in lines] == [
        ("audio/dialog1", "train_dialog"),
        ("audio/dialog2", "validation_dialog"),
    ]
    dialog = lines[0]
    assert dialog["num_frames"] == 44  # ceil(3.5 * 12.5)
    assert [s["text"] for s in dialog["speak_segments"]] == ["Hello there.", "How are", "you"]
    assert [s["text"] for s in dialog["listen_segments"]] == ["Hi!"]
    left, _ = read_wav(corpus.parent / "audio/dialog1.wav")
    speak = np.load(tmp_path / "work" / dialog["speak_codes"])
    assert speak.dtype == np.int16
    np.testing.assert_array_equal(speak, encoder.encode([left[0]])[0].T)


def test_a_wav_cut_in_its_header_or_holding_nan_is_rejected_and_the_others_still_encode(corpus, tmp_path):
    source = corpus.parent
    cut = write_recording(source, "audio/cut", [tone(1.0, 300), tone(1.0, 500)], DIALOG_ALIGNMENTS)
    (source / "audio/cut.wav").write_bytes((source / "audio/cut.wav").read_bytes()[:30])  # inside the header
    poisoned = [tone(1.0, 300), tone(1.0, 500)]
    poisoned[1][12000] = np.nan  # 0.5 s
    nan = write_recording(source, "audio/nan", poisoned, DIALOG_ALIGNMENTS)
    with open(corpus, "a") as manifest:
        manifest.write(json.dumps(cut) + "\n" + json.dumps(nan) + "\n")
    prepared = recordings.prepare_recordings(corpus, tmp_path / "work", FakeEncoder(), "fake", progress=False)
    assert prepared.records == 2 and prepared.encoded == 2  # the good files of the same batch
    unreadable = [message for category, message in prepared.rejections if category == "unreadable audio"]
    assert len(unreadable) == 2
    assert any("cut.wav: not a readable WAV file" in message for message in unreadable)
    assert any("nan.wav: 1 non-finite samples" in message and "0.500 s" in message for message in unreadable)


def test_a_second_run_encodes_nothing_and_writes_the_same_manifest(corpus, tmp_path):
    first = recordings.prepare_recordings(corpus, tmp_path / "work", FakeEncoder(), "fake", progress=False)
    text = open(first.manifest).read()
    encoder = FakeEncoder()
    second = recordings.prepare_recordings(corpus, tmp_path / "work", encoder, "fake", progress=False)
    assert encoder.calls == 0 and (second.encoded, second.reused) == (0, 2)
    assert open(second.manifest).read() == text
    third = recordings.prepare_recordings(corpus, tmp_path / "work", encoder, "other codec", progress=False)
    assert encoder.calls == 1 and (third.encoded, third.reused) == (2, 0)


def test_a_changed_audio_file_is_encoded_again(corpus, tmp_path):
    recordings.prepare_recordings(corpus, tmp_path / "work", FakeEncoder(), "fake", progress=False)
    write_recording(
        corpus.parent, "audio/dialog2", [tone(1.2, 300), tone(1.2, 500)], [["Yes.", [0.1, 0.4], "SPEAKER_MAIN"]]
    )
    encoder = FakeEncoder()
    again = recordings.prepare_recordings(corpus, tmp_path / "work", encoder, "fake", progress=False)
    assert (again.encoded, again.reused, encoder.signals) == (1, 1, 2)


def test_mono_files_can_be_kept_as_utterances(corpus, tmp_path):
    extra = write_recording(corpus.parent, "audio/user", [tone(1.0, 330)], [["Hey", [0.1, 0.4], "user"]])
    mixed = write_recording(
        corpus.parent, "audio/mixed", [tone(1.0, 330)], [["a", [0.1, 0.4], "user"], ["b", [0.5, 0.7], "SPEAKER_MAIN"]]
    )
    with open(corpus, "a") as f:
        f.write(json.dumps(extra) + "\n" + json.dumps(mixed) + "\n")
    prepared = recordings.prepare_recordings(
        corpus, tmp_path / "work", FakeEncoder(), "fake", mono_as="utterance", progress=False
    )
    lines = {line["id"]: line for line in map(json.loads, open(prepared.manifest))}
    assert lines["audio/mono"]["split"] == "train_tts" and lines["audio/mono"]["listen_codes"] is None
    assert [s["text"] for s in lines["audio/mono"]["speak_segments"]] == ["Okay."]
    assert lines["audio/user"]["split"] == "train_asr" and lines["audio/user"]["speak_codes"] is None
    assert [s["text"] for s in lines["audio/user"]["listen_segments"]] == ["Hey"]
    assert "mixed speakers" in {category for category, _ in prepared.rejections}


# ---------------------------------------------------------------------------------------------- real audio, real Mimi


def golden_signals():
    golden = np.load(golden_path("mimi_small", "golden.npz"))
    return golden["long/audio"][0, 0], golden["speech/audio"][0, 0]


def test_prepare_data_encodes_real_speech_with_mimi_into_a_dataset(tmp_path, capsys):
    from flmjax import codec
    from flmjax.codec import load_codec

    mimi_dir = golden_path("mimi_small")
    long, speech = golden_signals()
    # A 4 s dialog: the assistant says the first 3 s of `long`, the user `speech`, 1 s later (they overlap).
    left = np.concatenate([long[:72000], np.zeros(24000, np.float32)])
    right = np.concatenate([np.zeros(24000, np.float32), speech])
    source = tmp_path / "source"
    source.mkdir()
    dialog = write_recording(
        source,
        "dialog",
        [left, right],
        [
            ["Good", [0.2, 0.5], "SPEAKER_MAIN"],
            ["morning.", [0.5, 1.0], "SPEAKER_MAIN"],
            ["The", [1.05, 1.2], "SPEAKER_OTHER"],
            ["quick", [1.2, 1.5], "SPEAKER_OTHER"],
            ["brown", [1.5, 1.8], "SPEAKER_OTHER"],
            ["fox,", [1.8, 2.2], "SPEAKER_OTHER"],
            ["How", [1.3, 1.5], "SPEAKER_MAIN"],
            ["are", [1.5, 1.7], "SPEAKER_MAIN"],
            ["you?", [1.7, 2.1], "SPEAKER_MAIN"],
            ["while", [3.2, 3.5], "SPEAKER_OTHER"],
            ["Mimi", [3.5, 3.9], "SPEAKER_OTHER"],
        ],
    )
    short = write_recording(
        source,
        "short",
        [speech[:30000], long[100000:130000]],  # a shorter clip, same batch
        [["Hi.", [0.1, 0.4], "SPEAKER_MAIN"]],
    )
    mono = write_recording(source, "mono", [speech[:24000]], [["Hi.", [0.1, 0.4], "SPEAKER_MAIN"]])
    bare = write_recording(source, "bare", [speech[:24000], speech[:24000]], None)
    manifest = source / "recordings.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in (dialog, short, mono, bare)))

    out = tmp_path / "data"
    argv = ["--audio-manifest", str(manifest), "--mimi", str(mimi_dir), "--out", str(out), "--no_progress"]
    assert prepare_data.main(argv) == 0
    printed = capsys.readouterr()
    assert "2 encoded now" in printed.err
    assert "mono audio: 1" in printed.out and "no alignments: 1" in printed.out and "rejected 2" in printed.out

    summary = read_summary(out, "recordings")
    assert summary.records == {"train_dialog": 2}
    source_records = DialogSource(out, "recordings", "train_dialog")
    record = {r.id: r for r in (source_records[0], source_records[1])}["dialog"]
    config, params = load_codec(mimi_dir)
    wav, _ = read_wav(source / "dialog.wav")
    expected = np.asarray(codec.encode(config, params, wav[:, None, :]))  # [2, 8, 50]
    assert record.num_frames == 50
    np.testing.assert_array_equal(record.speak_codes, expected[0].T)
    np.testing.assert_array_equal(record.listen_codes, expected[1].T)
    assert [s.text for s in record.speak_segments] == ["Good morning.", "How are you?"]
    assert [s.text for s in record.listen_segments] == ["The quick brown fox,", "while Mimi"]  # a 1 s gap
    assert record.speak_segments[1].words[0] == Word(16, 19, "How")

    short_record = {r.id: r for r in (source_records[0], source_records[1])}["short"]
    short_wav, _ = read_wav(source / "short.wav")
    np.testing.assert_array_equal(
        short_record.speak_codes, np.asarray(codec.encode(config, params, short_wav[:1, None]))[0].T
    )
    examples = tfds.data_source("recordings", data_dir=str(out), split="train_dialog")
    assert len(examples) == 2

    assert prepare_data.main(argv) == 0  # everything is there: no encoding, no build
    printed = capsys.readouterr()
    assert "0 encoded now, 2 already encoded" in printed.err and "already built" in printed.out
    assert "mono audio: 1" in printed.out
    assert not os.path.exists(out / "recordings_source" / "codes" / "tmp")
