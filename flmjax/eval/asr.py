"""Offline word timings with PocketSphinx (its en-us model ships in the `pocketsphinx` wheel; no download).

FDB aligns words with a neural ASR (CrisperWhisper in v1, nvidia/parakeet-tdt-0.6b-v2 since 2025/6,
`get_transcript/asr.py`), which cannot run here. PocketSphinx is far less accurate, so word counts and
transcripts from it are NOT comparable to the benchmark's numbers; use them for relative checks only.
"""

from __future__ import annotations

import functools
import re

import numpy as np

from flmjax.audio import resample
from flmjax.eval.vad import VAD_SAMPLE_RATE, speech_segments

Word = tuple[str, float, float]

_FILLER = re.compile(r"^(<s>|</s>|<sil>|\[.*\]|\+\+.*\+\+|\+.*\+)$", re.IGNORECASE)
_SEGMENT_PAD_S = 0.1


@functools.lru_cache(maxsize=1)
def _decoder():
    from pocketsphinx import Decoder

    return Decoder(samprate=VAD_SAMPLE_RATE, loglevel="FATAL")


def _decode(samples_16k: np.ndarray, offset_s: float) -> list[Word]:
    decoder = _decoder()
    pcm = (np.clip(samples_16k, -1.0, 1.0) * 32767).astype(np.int16).tobytes()
    decoder.start_utt()
    decoder.process_raw(pcm, full_utt=True)
    decoder.end_utt()
    frame_rate = float(decoder.config["frate"])
    words = []
    for seg in decoder.seg():
        if _FILLER.match(seg.word):
            continue
        word = re.sub(r"\(\d+\)$", "", seg.word)  # alternate pronunciations: "the(2)"
        words.append((word, offset_s + seg.start_frame / frame_rate, offset_s + (seg.end_frame + 1) / frame_rate))
    return words


def word_timings(samples: np.ndarray, sample_rate: int) -> list[Word]:
    """Mono float audio [n] -> [(word, start_s, end_s)] in time order.

    Only the Silero speech segments (`vad.speech_segments`, padded by 0.1 s) are decoded, so silence gives
    no words (PocketSphinx alone hallucinates words on silence)."""
    samples_16k = resample(np.asarray(samples, np.float32).reshape(-1), sample_rate, VAD_SAMPLE_RATE)
    words: list[Word] = []
    for start_s, end_s in speech_segments(samples_16k, VAD_SAMPLE_RATE):
        lo = max(0, int((start_s - _SEGMENT_PAD_S) * VAD_SAMPLE_RATE))
        hi = min(samples_16k.size, int((end_s + _SEGMENT_PAD_S) * VAD_SAMPLE_RATE))
        words.extend(_decode(samples_16k[lo:hi], lo / VAD_SAMPLE_RATE))
    return words
