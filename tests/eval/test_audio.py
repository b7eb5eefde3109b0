"""VAD and offline ASR on real (espeak) speech placed into a longer low-noise signal."""

import numpy as np
import pytest

from flmjax.eval import asr, quality, vad
from tests.conftest import golden_path

RATE = 24_000
OFFSET_S = 2.5


@pytest.fixture(scope="module")
def speech():
    clip = np.load(golden_path("mimi_small", "golden.npz"))["speech/audio"].reshape(-1).astype(np.float32)
    active = np.flatnonzero(np.abs(clip) > 0.02)
    signal = np.random.default_rng(0).normal(0.0, 1e-3, 9 * RATE).astype(np.float32)
    start = int(OFFSET_S * RATE)
    signal[start : start + clip.size] += clip
    return signal, OFFSET_S + active[0] / RATE, OFFSET_S + active[-1] / RATE


def test_vad_finds_placed_speech(speech):
    signal, start_s, end_s = speech
    segments = vad.speech_segments(signal, RATE)
    assert len(segments) == 1
    assert segments[0][0] == pytest.approx(start_s, abs=0.2)
    assert segments[0][1] == pytest.approx(end_s, abs=0.2)


def test_vad_silence_is_empty():
    noise = np.random.default_rng(1).normal(0.0, 1e-3, 5 * RATE).astype(np.float32)
    assert vad.speech_segments(noise, RATE) == []
    assert vad.speech_segments(np.zeros(2 * RATE, np.float32), RATE) == []


def test_segments_from_activity_and_merge():
    active = np.array([0, 1, 1, 0, 0, 0, 0, 0, 1, 0, 1, 1], bool)
    segs = vad.segments_from_activity(active, frame_s=0.08)
    assert segs == [pytest.approx((0.08, 0.24)), pytest.approx((0.64, 0.72)), pytest.approx((0.80, 0.96))]
    assert vad.merge_segments(segs, 0.1) == [pytest.approx((0.08, 0.24)), pytest.approx((0.64, 0.96))]
    assert vad.merge_segments(segs, 0.5) == [pytest.approx((0.08, 0.96))]
    assert vad.segments_from_activity(np.zeros(5, bool)) == []


def test_asr_word_timings(speech):
    signal, start_s, end_s = speech
    words = asr.word_timings(signal, RATE)
    assert len(words) >= 4
    starts = [w[1] for w in words]
    assert starts == sorted(starts)
    assert all(start_s - 0.3 <= s < e <= end_s + 0.3 for _, s, e in words)
    # PocketSphinx on espeak: not the benchmark's recognizer, but it should get most of the sentence
    text = " ".join(w[0] for w in words)
    assert quality.word_error_rate("the quick brown fox jumps over the lazy dog", text) < 0.5
    assert asr.word_timings(np.zeros(2 * RATE, np.float32), RATE) == []
