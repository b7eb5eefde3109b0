"""The synthetic corpus: deterministic, valid, learnable (codes are a function of text), with dialog dynamics."""

import collections
import os
import subprocess
import sys

import numpy as np
import pytest

from flmjax.data import manifest, synthetic
from flmjax.data.records import CHANNELS, make_record
from flmjax.data.synthetic import CHANNEL_SPEAKER, SILENCE_FRAME, utterance_codes, word_frames

NUM_RECORDS = 600
SEED = 7


@pytest.fixture(scope="module")
def examples():
    return list(synthetic.generate_examples(NUM_RECORDS, SEED))


@pytest.fixture(scope="module")
def dialogs(examples):
    return [e for e in examples if e.kind == "dialog"]


def _segments(examples):
    for example in examples:
        for channel in CHANNELS:
            for segment in example.record.segments(channel):
                yield example.record, channel, segment


def _in_segment(record, channel):
    mask = np.zeros(record.num_frames, bool)
    for segment in record.segments(channel):
        mask[segment.start : segment.end] = True
    return mask


def test_generation_is_deterministic():
    first = list(synthetic.generate_records(50, SEED))
    second = list(synthetic.generate_records(50, SEED))
    assert [r.id for r, _ in first] == [r.id for r, _ in second]
    assert all(a == b and split_a == split_b for (a, split_a), (b, split_b) in zip(first, second))


def test_other_seed_gives_other_records():
    first = [r for r, _ in synthetic.generate_records(20, 1)]
    second = [r for r, _ in synthetic.generate_records(20, 2)]
    assert sum(a == b for a, b in zip(first, second)) == 0


def test_record_depends_only_on_its_index_and_seed(examples):
    assert synthetic.make_example(123, SEED).record == examples[123].record


CORPUS_DIGEST = """
import hashlib
from flmjax.data import synthetic
digest = hashlib.sha256()
for record, split in synthetic.generate_records(40, 3):
    digest.update(repr((record.id, split, record.num_frames, record.speak_segments, record.listen_segments)).encode())
    for codes in (record.speak_codes, record.listen_codes):
        digest.update(b"-" if codes is None else codes.tobytes())
print(digest.hexdigest())
"""


def test_the_corpus_is_the_same_in_every_process():
    """Python's hash() is salted per process; the corpus must not depend on it."""
    digests = {
        subprocess.run(
            [sys.executable, "-c", CORPUS_DIGEST],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
        ).stdout
        for hash_seed in ("1", "2")
    }
    assert len(digests) == 1 and len(digests.pop().strip()) == 64


def test_every_segment_sounds_as_its_text_in_its_channel_voice(examples):
    for record, channel, segment in _segments(examples):
        spoken = record.codes(channel)[segment.start : segment.end]
        np.testing.assert_array_equal(
            spoken,
            utterance_codes(segment.text, CHANNEL_SPEAKER[channel]),
            err_msg=f"{record.id} {channel}: {segment.text!r}",
        )


def test_same_sentence_in_two_records_has_identical_codes(examples):
    seen = collections.defaultdict(list)
    for record, channel, segment in _segments(examples):
        if len(segment.text.split()) >= 3:
            seen[channel, segment.text].append(record.codes(channel)[segment.start : segment.end])
    repeated = [codes for codes in seen.values() if len(codes) >= 2]
    assert len(repeated) >= 5
    for codes in repeated:
        for other in codes[1:]:
            np.testing.assert_array_equal(codes[0], other)


def test_different_words_have_different_codes(examples):
    vocabulary = {synthetic.normalize_word(w) for _, _, s in _segments(examples) for w in s.text.split()}
    assert len(vocabulary) >= 300
    for speaker in synthetic.SPEAKERS:
        spoken = {word_frames(w, speaker).tobytes() for w in vocabulary}
        assert len(spoken) == len(vocabulary)


def test_the_two_voices_differ():
    model, user = word_frames("coffee", "model"), word_frames("coffee", "user")
    assert model.shape == user.shape
    assert not np.any(np.all(model == user, axis=1))


def test_word_codes_ignore_case_and_outer_punctuation():
    np.testing.assert_array_equal(word_frames("Yeah.", "user"), word_frames("yeah", "user"))
    np.testing.assert_array_equal(word_frames("Mm-hmm,", "model"), word_frames("mm-hmm", "model"))


def test_word_length_grows_with_the_word_between_2_and_5_frames():
    assert [len(word_frames(w, "model")) for w in ("a", "the", "coffee", "beautiful", "understandingly")] == [
        2,
        2,
        3,
        5,
        5,
    ]


def test_acoustic_codebooks_are_a_function_of_the_semantic_code(examples):
    table = {}
    for record, channel, segment in _segments(examples):
        for frame in record.codes(channel)[segment.start : segment.end]:
            key = (channel, int(frame[0]))
            assert table.setdefault(key, frame[1:].tobytes()) == frame[1:].tobytes()


def test_records_pass_validation(examples):
    for example in examples:
        record = example.record
        rebuilt = make_record(
            record.id,
            record.speak_codes,
            record.listen_codes,
            record.speak_segments,
            record.listen_segments,
            record.num_frames,
        )
        assert rebuilt == record


def test_segments_cover_exactly_their_words(examples):
    for record, _channel, segment in _segments(examples):
        words = segment.words
        assert words, f"{record.id}: segment without words"
        assert (words[0].start, words[-1].end) == (segment.start, segment.end)
        assert all(a.end == b.start for a, b in zip(words, words[1:]))
        assert all(w.end - w.start == synthetic.word_length(w.text) for w in words)
        assert " ".join(w.text for w in words) == segment.text


def test_frames_outside_segments_hold_silence_and_speech_never_does(examples):
    for example in examples:
        for channel in CHANNELS:
            codes = example.record.codes(channel)
            if codes is None:
                continue
            speech = _in_segment(example.record, channel)
            assert np.all(codes[~speech] == SILENCE_FRAME)
            assert not np.any(codes[speech, 0] == SILENCE_FRAME[0])


def test_kinds_follow_the_stated_proportions(examples):
    counts = collections.Counter(e.kind for e in examples)
    assert set(counts) == set(synthetic.KIND_WEIGHTS)
    for kind, weight in synthetic.KIND_WEIGHTS.items():
        assert abs(counts[kind] / NUM_RECORDS - weight) < 0.07, counts


def test_kind_weights_can_be_changed():
    kinds = {e.kind for e in synthetic.generate_examples(30, SEED, kind_weights={"asr": 1.0})}
    assert kinds == {"asr"}


def test_asr_records_have_only_the_listen_channel(examples):
    asr = [e.record for e in examples if e.kind == "asr"]
    assert asr and all(r.speak_codes is None and not r.speak_segments for r in asr)
    assert all(r.listen_codes is not None and 1 <= len(r.listen_segments) <= 3 for r in asr)


def test_tts_records_have_only_the_speak_channel(examples):
    tts = [e.record for e in examples if e.kind == "tts"]
    assert tts and all(r.listen_codes is None and not r.listen_segments for r in tts)
    assert all(r.speak_codes is not None and 1 <= len(r.speak_segments) <= 3 for r in tts)


def test_interrupted_model_stops_mid_sentence(dialogs):
    interruptions = [(e.record, v) for e in dialogs for v in e.events if v.kind == "interruption"]
    assert len(interruptions) >= 50
    for record, event in interruptions:
        assert event.channel == "speak"
        segment = record.speak_segments[event.segment]
        said, planned = segment.text.split(), event.planned_text.split()
        assert 1 <= len(said) < len(planned)
        assert event.planned_text.startswith(segment.text)
        # The user started during the model's last word; the model's voice stops where its segment ends.
        user = [s for s in record.listen_segments if segment.words[-1].start <= s.start < segment.end]
        assert len(user) == 1, record.id
        following = [s.start for s in record.speak_segments[event.segment + 1 :]] + [record.num_frames]
        assert np.all(record.speak_codes[segment.end : following[0]] == SILENCE_FRAME)


def test_the_model_acknowledges_after_being_interrupted(dialogs):
    openings = tuple(template.split("{")[0] for template in synthetic.ACKNOWLEDGEMENTS)
    replies = [
        e.record.speak_segments[v.segment + 1].text
        for e in dialogs
        for v in e.events
        if v.kind == "interruption" and v.segment + 1 < len(e.record.speak_segments)
    ]
    assert replies and all(reply.startswith(openings) for reply in replies)


def test_overlaps_exist(dialogs):
    overlapping = [e for e in dialogs if np.any(_in_segment(e.record, "speak") & _in_segment(e.record, "listen"))]
    assert len(overlapping) >= len(dialogs) // 2
    turn_overlaps = [v for e in dialogs for v in e.events if v.kind == "overlap"]
    assert len(turn_overlaps) >= len(dialogs) // 2


def test_backchannels_sit_inside_the_other_speakers_sentence(dialogs):
    backchannels = [(e.record, v) for e in dialogs for v in e.events if v.kind == "backchannel"]
    assert len(backchannels) >= len(dialogs) // 2
    for record, event in backchannels:
        segment = record.segments(event.channel)[event.segment]
        assert segment.text in synthetic.BACKCHANNELS
        other = "listen" if event.channel == "speak" else "speak"
        assert any(s.start < segment.start and segment.end < s.end for s in record.segments(other)), record.id


def test_validation_split_is_nonempty_and_disjoint_from_train(examples):
    splits = collections.defaultdict(set)
    for example in examples:
        splits[example.split].add(example.record.id)
    assert set(splits) == {"train", "validation"}
    assert len(splits["validation"]) == NUM_RECORDS // 20
    assert not splits["train"] & splits["validation"]
    assert len(splits["train"]) + len(splits["validation"]) == NUM_RECORDS


def test_dialog_lengths_follow_max_frames(dialogs):
    lengths = np.array([e.record.num_frames for e in dialogs])
    assert lengths.max() <= synthetic.DEFAULT_MAX_FRAMES
    assert 250 <= np.median(lengths) <= 600
    short = [r for r, _ in synthetic.generate_records(40, SEED, max_frames=100)]
    assert all(r.num_frames <= 100 and (r.speak_segments or r.listen_segments) for r in short)


def test_too_small_max_frames_is_an_error():
    with pytest.raises(ValueError, match="max_frames"):
        synthetic.make_example(0, SEED, max_frames=5)


def test_ids_name_the_index_and_the_kind(examples):
    assert examples[42].record.id == f"synthetic-000042-{examples[42].kind}"
    assert all(e.record.id.endswith(f"-{e.kind}") for e in examples)


def test_records_survive_a_manifest_round_trip(tmp_path):
    pairs = list(synthetic.generate_records(25, SEED))
    path = manifest.write_manifest(pairs, tmp_path)
    loaded = [(entry.load(), entry.split) for entry in manifest.read_manifest(path)]
    assert loaded == pairs
