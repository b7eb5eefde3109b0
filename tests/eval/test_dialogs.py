"""Token-level duplex evaluation of dialogs: activity and metric plumbing on constructed tokens, pooling,
the batched streaming driver against a plain stream, and `evaluate_dialogs` end to end on synthetic dialogs."""

import functools

import jax
import numpy as np
import pytest

from flmjax import infer, model, presets
from flmjax.data import sentencepiece_tokenizer, synthetic
from flmjax.data.examples import SourceRule
from flmjax.data.records import make_record
from flmjax.eval import dialog_scoring, dialogs, monologue_quality, quality

SILENCE = synthetic.SILENCE_FRAME
WAIT = 3
FRAME_S = 0.08


def _codes(T, speech_frames, speaker="model"):
    """[T, 8] codes: silence, with a word's frames on `speech_frames`."""
    codes = np.tile(SILENCE, (T, 1)).astype(np.int32)
    word = synthetic.word_frames("hello", speaker)
    for i, f in enumerate(speech_frames):
        codes[f] = word[i % len(word)]
    return codes


def _merged_turns(segments, num_frames, max_gap_frames=7):
    """Independent count of the user's turns: segments clipped to the window, joined over gaps <= 0.6 s."""
    spans = [(s.start, min(s.end, num_frames)) for s in segments if s.start < num_frames]
    count, end = 0, None
    for start, stop in spans:
        if end is None or start - end > max_gap_frames:
            count += 1
        end = stop
    return count


def test_dialog_metrics_on_constructed_tokens():
    T = 100
    # User: a turn [5, 20), then an interruption [40, 60). Model: answers 5 frames after the turn end and
    # stops 3 frames into the interruption; then answers again [65, 80).
    record = make_record(
        "constructed",
        speak_codes=_codes(T, [*range(25, 43), *range(65, 80)]),
        listen_codes=_codes(T, [*range(5, 20), *range(40, 60)], "user"),
        listen_segments=[dict(start=5, end=20, text="a b c"), dict(start=40, end=60, text="d e")],
    )
    user = dialog_scoring.user_activity(record)
    assert np.flatnonzero(user).tolist() == [*range(5, 20), *range(40, 60)]
    text_ids = np.full(T, WAIT)
    text_ids[23:27] = [10, 11, 12, 13]  # the monologue leads the speech by 2 frames
    scores = dialog_scoring.dialog_metrics(user, text_ids, record.speak_codes, wait_id=WAIT, silence_codes=SILENCE)
    speaking, thinking = scores["speaking"], scores["thinking"]
    assert speaking["n_user_turns"] == 2 and speaking["turn_over_rate"] == 1.0
    assert speaking["turn_latencies_frames"] == [5, 5]
    assert speaking["n_interruptions"] == 1 and speaking["interruption_stop_rate"] == 1.0
    assert speaking["stop_latencies_frames"] == [3]
    assert speaking["active_fraction"] == pytest.approx(33 / T)
    assert thinking["active_fraction"] == pytest.approx(4 / T) and thinking["n_model_onsets"] == 1
    # the reference tokens of the record are its own speak codes: the same figures
    _, ref_codes = dialog_scoring.reference_tokens(record, T, WAIT)
    ref = dialog_scoring.dialog_metrics(user, text_ids, ref_codes, wait_id=WAIT, silence_codes=SILENCE)
    assert ref["speaking"]["turn_latencies_frames"] == [5, 5]
    # a model that never stops: no stop, latency capped at the interruption's end
    always = dialog_scoring.dialog_metrics(user, text_ids, _codes(T, range(25, T)), wait_id=WAIT, silence_codes=SILENCE)
    assert always["speaking"]["interruption_stop_rate"] == 0.0
    assert always["speaking"]["stop_latencies_frames"] == [20]


def test_pooling_weights_by_turns_not_dialogs():
    def scores(tor, turns, latencies, stops, onsets, barge):
        stop_rate = None if not stops else sum(s for s, _ in stops) / len(stops)
        return {
            "speaking": {
                "turn_over_rate": tor,
                "n_user_turns": turns,
                "turn_latencies_s": latencies,
                "interruption_stop_rate": stop_rate,
                "n_interruptions": len(stops),
                "stop_latencies_s": [lat for _, lat in stops],
                "interruption_turn_over_rate": 1.0 if stops else None,
                "interruption_response_latency_s": 0.2 if stops else None,
                "n_model_onsets": onsets,
                "n_barge_ins": barge,
                "n_frames": 100,
                "active_fraction": 0.5,
            }
        }

    pooled = dialog_scoring.pool_metrics(
        [scores(1.0, 1, [0.4], [(True, 0.1)], 2, 1), scores(0.0, 2, [], [(False, 0.5), (True, 0.3)], 2, 0)],
        views=("speaking",),
    )
    assert pooled["speaking/turn_over_rate"] == pytest.approx(1 / 3)  # per-dialog mean would be 0.5
    assert pooled["speaking/turn_latency_s"] == pytest.approx(0.4)
    assert pooled["speaking/interruption_stop_rate"] == pytest.approx(2 / 3)
    assert pooled["speaking/stop_latency_s"] == pytest.approx(0.3)
    assert pooled["speaking/barge_in_rate"] == pytest.approx(1 / 4)
    assert pooled["speaking/n_user_turns"] == 3 and pooled["speaking/n_interruptions"] == 3


def test_monologue_rule_follows_the_stage():
    assert monologue_quality.monologue_rule(
        {
            "asr": {"task": "asr", "placement": "trailing", "trail_frames": 1},
            "tts": {"task": "tts", "placement": "leading", "lead_frames": 2},
        }
    ) == SourceRule("dialog", "leading", 2, 0)
    assert (
        monologue_quality.monologue_rule(
            {
                "dialog": {"task": "dialog", "placement": "trailing", "trail_frames": 1},
                "tts": {"task": "tts", "placement": "leading"},
            }
        ).placement
        == "trailing"
    )
    assert monologue_quality.monologue_rule({}) is None


def test_crop_record_keeps_whole_words():
    example = synthetic.make_example(3, seed=1, max_frames=120, kind_weights={"dialog": 1.0})
    record = example.record
    cropped = monologue_quality.crop_record(record, 50)
    assert cropped.num_frames == 50 and cropped.listen_codes.shape == (50, 8)
    for segment in cropped.speak_segments + cropped.listen_segments:
        assert segment.end <= 50 and len(segment.text.split()) == len(segment.words)
    assert monologue_quality.crop_record(record, 10_000) is record


@functools.lru_cache(maxsize=1)
def _tiny():
    config = presets.tiny()
    return config, model.init_params(config, jax.random.key(0))


def test_batched_sessions_match_a_plain_stream():
    """3 sessions of different lengths through 2 slots (the third starts in a reset slot) give the frames each
    session gives alone through `stream_step`."""
    config, params = _tiny()
    rng = np.random.default_rng(0)
    listens = [rng.integers(0, 2048, (n, 8)).astype(np.int32) for n in (9, 5, 7)]
    got = dialogs.stream_sessions(config, params, listens, batch_size=2, idle_codes=SILENCE)
    for listen, (text_ids, speak) in zip(listens, got):
        state = infer.init_stream(config, params, 1, 10, infer.SamplingConfig.greedy())
        frames = []
        for step in range(len(listen) + 1):
            codes = listen[step] if step < len(listen) else SILENCE
            state, out, valid = infer.stream_step(params, state, codes[None], jax.random.key(0))
            if bool(valid[0]):
                frames.append(np.asarray(out[0]))
        frames = np.stack(frames)
        assert text_ids.shape == (len(listen),) and speak.shape == (len(listen), 8)
        np.testing.assert_array_equal(text_ids, frames[:, 0])
        np.testing.assert_array_equal(speak, frames[:, 1:])


def test_sampled_sessions_do_not_depend_on_their_neighbours():
    """Each session's keys come from (seed, session, step): the longest session samples the same tokens whether
    its neighbour slot later runs another session or not; and the text is sampled, not argmax."""
    config, params = _tiny()
    rng = np.random.default_rng(1)
    listens = [rng.integers(0, 2048, (n, 8)).astype(np.int32) for n in (9, 5, 7)]
    sampling = dialogs.decoding(text_temperature=1.0)
    three = dialogs.stream_sessions(
        config, params, listens, batch_size=2, sampling=sampling, seed=5, idle_codes=SILENCE
    )
    two = dialogs.stream_sessions(
        config, params, listens[:2], batch_size=2, sampling=sampling, seed=5, idle_codes=SILENCE
    )
    for (text_a, speak_a), (text_b, speak_b) in zip(three[:2], two):
        np.testing.assert_array_equal(text_a, text_b)
        np.testing.assert_array_equal(speak_a, speak_b)
    greedy = dialogs.stream_sessions(config, params, listens, batch_size=2, idle_codes=SILENCE)
    assert any((s[0] != g[0]).any() for s, g in zip(three, greedy))


@functools.lru_cache(maxsize=1)
def _synthetic_dialogs():
    examples = [e for e in synthetic.generate_examples(40, seed=3, max_frames=90, kind_weights={"dialog": 1.0})]
    sentences = [s.text for e in examples for c in ("speak", "listen") for s in e.record.segments(c)]
    tokenizer = sentencepiece_tokenizer.SentencePieceTokenizer(
        sentencepiece_tokenizer.train_sentencepiece(sentences, 400, hard_vocab_limit=False)
    )
    return [e.record for e in examples[:3]], tokenizer


@pytest.mark.parametrize("placement", ["leading", "trailing"])
def test_evaluate_dialogs_end_to_end(placement):
    config, params = _tiny()
    records, tokenizer = _synthetic_dialogs()
    max_frames = 64
    rule = SourceRule("dialog", placement, lead_frames=2, trail_frames=1)
    result = dialogs.evaluate_dialogs(
        config,
        params,
        records,
        tokenizer,
        batch_size=2,
        max_frames=max_frames,
        quality_rule=rule,
        silence_codes=SILENCE,
    )
    metrics, reference = result.metrics, result.reference
    frames = [min(r.num_frames, max_frames) for r in records]
    assert metrics["dialogs"] == 3 and metrics["frames"] == sum(frames)
    expected_turns = [_merged_turns(r.listen_segments, n) for r, n in zip(records, frames)]
    assert [d["model"]["speaking"]["n_user_turns"] for d in result.dialogs] == expected_turns
    assert [d["num_frames"] for d in result.dialogs] == frames
    for figures in (metrics, reference):
        for view in dialog_scoring.VIEWS:
            assert figures[f"{view}/n_user_turns"] == sum(expected_turns)
            for key in (
                "turn_over_rate",
                "interruption_stop_rate",
                "interruption_turn_over_rate",
                "barge_in_rate",
                "active_fraction",
            ):
                value = figures[f"{view}/{key}"]
                assert value is None or 0.0 <= value <= 1.0, (view, key, value)
            for key in ("turn_latency_s", "stop_latency_s", "interruption_response_latency_s"):
                value = figures[f"{view}/{key}"]
                assert value is None or 0.0 <= value <= 2.0, (view, key, value)
            assert set(f"{view}/{k}" for k in dialog_scoring.SUMMARY_KEYS) <= set(figures)
    # The corpus itself takes turns: its model channel speaks in every dialog and answers some turns.
    assert reference["speaking/turn_over_rate"] > 0 and 0 < reference["speaking/active_fraction"] < 1
    assert reference["speaking/turn_latency_s"] is not None
    # The model's speaking view is read off its own streamed codes, per dialog.
    for entry in result.dialogs:
        assert 0.0 <= entry["model"]["speaking"]["active_fraction"] <= 1.0
        assert isinstance(entry["streamed_text"], str)
    if placement == "trailing":
        assert 0.0 <= metrics["wer"] and metrics["quality_records"] == 3
        for entry in result.dialogs:
            q = entry["quality"]
            assert q["wer"] == quality.word_error_rate(q["reference_text"], q["generated_text"])
            assert q["reference_text"]  # the assistant's sentences that fit the window
        assert "code_accuracy" not in metrics
    else:
        assert 0.0 <= metrics["code_accuracy"] <= 1.0 and "wer" not in metrics
        speak_frames = sum(
            int(dialog_scoring.segment_activity(r.speak_segments, n).sum()) for r, n in zip(records, frames)
        )
        assert metrics["quality_frames"] == speak_frames > 0


def test_reference_text_is_the_assistants_sentences():
    """With the whole record in the window and trailing text that fits, the quality reference is exactly the
    record's speak sentences (so WER measures the monologue against the assistant's transcript)."""
    config, params = _tiny()
    records, tokenizer = _synthetic_dialogs()
    record = records[0]
    _, details = monologue_quality.monologue_quality(
        config, params, [record], tokenizer, SourceRule("dialog", "leading", lead_frames=2)
    )
    transcript = " ".join(s.text for s in record.speak_segments)
    assert quality.word_error_rate(transcript, details[0]["reference_text"]) == 0.0
