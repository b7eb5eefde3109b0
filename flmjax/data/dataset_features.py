"""The dialog dataset's tfds features and the conversion between a `DialogRecord` and its example.

One example per record, every feature a flat array (S segments, W words of a channel):

    id                                       Text
    num_frames                               int64 []
    {speak,listen}_codes                     int16 [T, 8]  ([0, 8] when absent)
    has_{speak,listen}_codes                 bool  []
    {speak,listen}_segment_{start,end}       int64 [S]     frames [start, end)
    {speak,listen}_segment_text              bytes [S]     UTF-8
    {speak,listen}_segment_has_words         bool  [S]     False: `words` is None; True: a tuple, maybe empty
    {speak,listen}_word_segment              int64 [W]     index of the word's segment; words in order
    {speak,listen}_word_{start,end}          int64 [W]
    {speak,listen}_word_text                 bytes [W]

Columns rather than tfds `Sequence` features: a Sequence nested in a Sequence (words in segments) is serialised
with TensorFlow, which this project does not install, and even a flat Sequence of dicts is encoded one element
at a time in Python (about 3x slower to build than these columns, which encode as whole arrays).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import tensorflow_datasets as tfds

from flmjax.data.records import CHANNELS, NUM_CODEBOOKS, DialogRecord, Segment, Word

_INTS = tfds.features.Tensor(shape=(None,), dtype=np.int64)
_BOOLS = tfds.features.Tensor(shape=(None,), dtype=np.bool_)
_TEXTS = tfds.features.Tensor(shape=(None,), dtype=np.object_)  # str in, bytes out


def features() -> tfds.features.FeaturesDict:
    """The tfds features of one record (see the module docstring)."""
    spec: dict[str, Any] = {"id": tfds.features.Text(), "num_frames": np.int64}
    for channel in CHANNELS:
        spec.update(
            {
                f"{channel}_codes": tfds.features.Tensor(shape=(None, NUM_CODEBOOKS), dtype=np.int16),
                f"has_{channel}_codes": np.bool_,
                f"{channel}_segment_start": _INTS,
                f"{channel}_segment_end": _INTS,
                f"{channel}_segment_text": _TEXTS,
                f"{channel}_segment_has_words": _BOOLS,
                f"{channel}_word_segment": _INTS,
                f"{channel}_word_start": _INTS,
                f"{channel}_word_end": _INTS,
                f"{channel}_word_text": _TEXTS,
            }
        )
    return tfds.features.FeaturesDict(spec)


def example_from_record(record: DialogRecord) -> dict[str, Any]:
    """The tfds example (before encoding) of a record."""
    example: dict[str, Any] = {"id": record.id, "num_frames": record.num_frames}
    for channel in CHANNELS:
        codes = record.codes(channel)
        segments = record.segments(channel)
        words = [(i, word) for i, segment in enumerate(segments) for word in segment.words or ()]
        example.update(
            {
                f"has_{channel}_codes": codes is not None,
                f"{channel}_codes": np.zeros((0, NUM_CODEBOOKS), np.int16) if codes is None else codes,
                f"{channel}_segment_start": np.array([s.start for s in segments], np.int64),
                f"{channel}_segment_end": np.array([s.end for s in segments], np.int64),
                f"{channel}_segment_text": [s.text for s in segments],
                f"{channel}_segment_has_words": np.array([s.words is not None for s in segments], np.bool_),
                f"{channel}_word_segment": np.array([i for i, _ in words], np.int64),
                f"{channel}_word_start": np.array([w.start for _, w in words], np.int64),
                f"{channel}_word_end": np.array([w.end for _, w in words], np.int64),
                f"{channel}_word_text": [w.text for _, w in words],
            }
        )
    return example


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _segments_from_example(example: Mapping[str, Any], channel: str) -> tuple[Segment, ...]:
    def column(key):
        return np.asarray(example[f"{channel}_{key}"]).tolist()

    words_of: dict[int, list[Word]] = {}
    for index, start, end, text in zip(
        column("word_segment"), column("word_start"), column("word_end"), column("word_text")
    ):
        words_of.setdefault(index, []).append(Word(start, end, _text(text)))
    return tuple(
        Segment(start, end, _text(text), tuple(words_of.get(i, ())) if has_words else None)
        for i, (start, end, text, has_words) in enumerate(
            zip(column("segment_start"), column("segment_end"), column("segment_text"), column("segment_has_words"))
        )
    )


def record_from_example(example: Mapping[str, Any]) -> DialogRecord:
    """The record of a decoded example (a numpy dict from `tfds.data_source`); not validated again."""
    codes = {
        channel: np.asarray(example[f"{channel}_codes"], np.int16) if example[f"has_{channel}_codes"] else None
        for channel in CHANNELS
    }
    segments = {channel: _segments_from_example(example, channel) for channel in CHANNELS}
    return DialogRecord(
        id=_text(example["id"]),
        num_frames=int(example["num_frames"]),
        speak_codes=codes["speak"],
        listen_codes=codes["listen"],
        speak_segments=segments["speak"],
        listen_segments=segments["listen"],
    )
