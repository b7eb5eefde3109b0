"""The dialog record: one conversation or one utterance, as stored and as validated.

A record holds the two audio channels as Mimi codes at 12.5 frames/s and the sentence-level transcripts of
each channel:

    id               str
    num_frames       int T
    speak_codes      int16 [T, 8] or None   the model's side (what it must say)
    listen_codes     int16 [T, 8] or None   the user's side (what it hears)
    speak_segments   tuple[Segment]         sentences on the speak channel, sorted by start, not overlapping
    listen_segments  tuple[Segment]         sentences on the listen channel, likewise

A `Segment` covers frames `[start, end)` and holds its `text`; `words` (optional) gives each word's frames,
used only by the word-aligned baseline placement.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from flmjax.errors import UserError

NUM_CODEBOOKS = 8
NUM_CODES = 2048
FRAME_RATE = 12.5  # Mimi frames per second
CHANNELS = ("speak", "listen")
MAX_HOURS = 24  # longer than any conversation or session; more is a typo or a unit mix-up (samples, ms)
MAX_FRAMES = int(MAX_HOURS * 3600 * FRAME_RATE)


class RecordError(UserError, ValueError):
    """A record that fails validation; the message names the record and the field."""


@dataclasses.dataclass(frozen=True)
class Word:
    start: int
    end: int
    text: str


@dataclasses.dataclass(frozen=True)
class Segment:
    start: int
    end: int
    text: str
    words: tuple[Word, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"start": self.start, "end": self.end, "text": self.text}
        if self.words is not None:
            out["words"] = [dataclasses.asdict(w) for w in self.words]
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Segment:
        words = d.get("words")
        return cls(
            int(d["start"]),
            int(d["end"]),
            str(d["text"]),
            None if words is None else tuple(Word(int(w["start"]), int(w["end"]), str(w["text"])) for w in words),
        )


@dataclasses.dataclass(frozen=True, eq=False)
class DialogRecord:
    id: str
    num_frames: int
    speak_codes: np.ndarray | None = None
    listen_codes: np.ndarray | None = None
    speak_segments: tuple[Segment, ...] = ()
    listen_segments: tuple[Segment, ...] = ()

    def codes(self, channel: str) -> np.ndarray | None:
        return getattr(self, f"{channel}_codes")

    def segments(self, channel: str) -> tuple[Segment, ...]:
        return getattr(self, f"{channel}_segments")

    @property
    def hours(self) -> float:
        return self.num_frames / FRAME_RATE / 3600

    def __eq__(self, other) -> bool:
        if not isinstance(other, DialogRecord):
            return NotImplemented
        same_codes = all(_same_codes(self.codes(c), other.codes(c)) for c in CHANNELS)
        return (self.id, self.num_frames, self.speak_segments, self.listen_segments) == (
            other.id,
            other.num_frames,
            other.speak_segments,
            other.listen_segments,
        ) and same_codes


def _same_codes(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and bool(np.array_equal(a, b))


def make_record(
    id: str,
    speak_codes=None,
    listen_codes=None,
    speak_segments: Sequence = (),
    listen_segments: Sequence = (),
    num_frames: int | None = None,
) -> DialogRecord:
    """Builds and validates a record; segments may be `Segment`s or dicts; codes any integer array."""
    codes = {}
    for channel, value in (("speak", speak_codes), ("listen", listen_codes)):
        if value is None:
            codes[channel] = None
            continue
        array = np.asarray(value)
        if array.ndim != 2 or array.shape[1] != NUM_CODEBOOKS:
            raise RecordError(
                f"record {id!r}: {channel}_codes has shape {array.shape}; expected [frames, {NUM_CODEBOOKS}]"
            )
        if not np.issubdtype(array.dtype, np.integer):
            raise RecordError(f"record {id!r}: {channel}_codes has dtype {array.dtype}; expected integers")
        if array.size and (array.min() < 0 or array.max() >= NUM_CODES):
            bad = np.argwhere((array < 0) | (array >= NUM_CODES))[0]
            raise RecordError(
                f"record {id!r}: {channel}_codes holds {int(array[tuple(bad)])} at frame {bad[0]}, "
                f"codebook {bad[1]}; codes must be in 0..{NUM_CODES - 1}"
            )
        codes[channel] = array.astype(np.int16)
    lengths = {len(c) for c in codes.values() if c is not None}
    if len(lengths) > 1:
        raise RecordError(
            f"record {id!r}: speak_codes has {len(codes['speak'])} frames but listen_codes has {len(codes['listen'])}"
        )
    if num_frames is None:
        if not lengths:
            raise RecordError(
                f"record {id!r}: num_frames is required when both speak_codes and listen_codes are absent"
            )
        num_frames = lengths.pop()
    elif lengths and lengths != {num_frames}:
        raise RecordError(f"record {id!r}: num_frames is {num_frames} but the codes have {lengths.pop()} frames")
    record = DialogRecord(
        id=str(id),
        num_frames=int(num_frames),
        speak_codes=codes["speak"],
        listen_codes=codes["listen"],
        speak_segments=tuple(s if isinstance(s, Segment) else Segment.from_dict(s) for s in speak_segments),
        listen_segments=tuple(s if isinstance(s, Segment) else Segment.from_dict(s) for s in listen_segments),
    )
    validate(record)
    return record


def validate(record: DialogRecord) -> None:
    """Raises `RecordError` naming the record and the field for the first problem found."""
    name = f"record {record.id!r}"
    if record.num_frames <= 0:
        raise RecordError(f"{name}: num_frames is {record.num_frames}; expected at least 1")
    if record.num_frames > MAX_FRAMES:
        raise RecordError(
            f"{name}: num_frames is {record.num_frames} ({record.hours:,.0f} hours); more than "
            f"{MAX_FRAMES} ({MAX_HOURS} hours) is not a recording"
        )
    if all(record.codes(c) is None and not record.segments(c) for c in CHANNELS):
        raise RecordError(f"{name}: holds nothing to learn from (no codes and no segments on either channel)")
    for channel in CHANNELS:
        previous_end = None
        for i, segment in enumerate(record.segments(channel)):
            field = f"{channel}_segments[{i}]"
            if segment.start >= segment.end:
                raise RecordError(f"{name}: {field} has start {segment.start} >= end {segment.end}")
            if segment.start < 0 or segment.end > record.num_frames:
                raise RecordError(
                    f"{name}: {field} [{segment.start}, {segment.end}) lies outside the record's "
                    f"{record.num_frames} frames"
                )
            if not segment.text.strip():
                raise RecordError(f"{name}: {field} has empty text")
            if previous_end is not None and segment.start < previous_end:
                raise RecordError(
                    f"{name}: {field} starts at {segment.start}, before the previous segment on "
                    f"the {channel} channel ends ({previous_end}): segments overlap or are unsorted"
                )
            previous_end = segment.end
            for j, word in enumerate(segment.words or ()):
                if not (segment.start <= word.start < word.end <= segment.end) or not word.text.strip():
                    raise RecordError(
                        f"{name}: {field}.words[{j}] ({word.text!r}, [{word.start}, {word.end})) "
                        f"is empty or outside its segment [{segment.start}, {segment.end})"
                    )
