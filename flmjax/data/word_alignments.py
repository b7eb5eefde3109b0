"""Word alignments of recorded conversations, read and grouped into sentence segments per speaker.

An alignment file sits beside each recording (`audio/0001.json` for `audio/0001.wav`, moshi-finetune's format):

    {"alignments": [["Hello", [0.42, 0.71], "SPEAKER_MAIN"], ["there.", [0.71, 1.1], ...]]}

A word belongs to the assistant when its speaker label is `main_speaker` ("SPEAKER_MAIN", the label
moshi-finetune's `annotate.py` gives the left channel and its interleaver keeps) and to the user whatever else it
says ("SPEAKER_OTHER", "SPEAKER_01", ...). `flmjax.data.recordings` turns the recordings into records with them.

Each channel's words become sentence segments (`group_segments`): words follow each other, sorted by start, and
a segment ends after a word whose text ends in one of `sentence_end` (".?!", closing quotes and brackets after
it allowed) or before a word that starts more than `gap_s` seconds after the previous words end. A word covers
frames `[floor(start * 12.5), ceil(end * 12.5))`, at least one frame, moved to start no earlier than the
previous segment's end; a segment spans its words, its text is their texts joined by spaces. Words that start
after the audio's end are dropped; ends are clipped to it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Iterable

from flmjax.data.records import FRAME_RATE, Segment, Word
from flmjax.errors import UserError

MAIN_SPEAKER = "SPEAKER_MAIN"
SENTENCE_END = ".?!"
GAP_S = 0.8
CLOSERS = "\"')]}»”’"
_EPSILON = 1e-6  # seconds * 12.5 that land a hair above a frame boundary stay on it


class RecordingError(UserError, ValueError):
    """A recording that cannot become a record; `category` names the reason (counted in the summary)."""

    def __init__(self, category: str, message: str):
        super().__init__(message)
        self.category = category


@dataclasses.dataclass(frozen=True)
class GroupingRule:
    """How words become sentence segments, and which speaker label is the assistant's."""

    gap_s: float = GAP_S
    sentence_end: str = SENTENCE_END
    main_speaker: str = MAIN_SPEAKER

    def channel(self, speaker: str) -> str:
        return "speak" if speaker == self.main_speaker else "listen"


@dataclasses.dataclass(frozen=True)
class AlignedWord:
    text: str
    start_s: float
    end_s: float
    speaker: str


def read_alignments(path: str | os.PathLike) -> list[AlignedWord]:
    """The words of an alignment file; `RecordingError` ("no alignments", "malformed alignments") naming it."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise RecordingError("no alignments", f"{path}: no alignment file")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as error:
        raise RecordingError("malformed alignments", f"{path}: not readable JSON ({error})") from None
    items = data.get("alignments") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise RecordingError("malformed alignments", f"{path}: expected an object with an 'alignments' list")
    words = []
    for i, item in enumerate(items):
        try:
            text, (start, end), speaker = item
            word = AlignedWord(str(text).strip(), float(start), float(end), str(speaker))
        except (TypeError, ValueError):
            raise RecordingError(
                "malformed alignments",
                f"{path}: alignments[{i}] is {item!r}; expected [word, [start_s, end_s], speaker]",
            ) from None
        if not (math.isfinite(word.start_s) and math.isfinite(word.end_s)) or not 0 <= word.start_s <= word.end_s:
            raise RecordingError(
                "malformed alignments",
                f"{path}: alignments[{i}] ({word.text!r}) has times "
                f"[{word.start_s}, {word.end_s}]; expected 0 <= start <= end",
            )
        if word.text:
            words.append(word)
    if not words:
        raise RecordingError("no alignments", f"{path}: holds no words")
    return words


def ends_sentence(text: str, sentence_end: str = SENTENCE_END) -> bool:
    stripped = text.rstrip(CLOSERS)
    return bool(stripped) and stripped[-1] in sentence_end


def group_segments(
    words: Iterable[AlignedWord], num_frames: int, gap_s: float = GAP_S, sentence_end: str = SENTENCE_END
) -> tuple[Segment, ...]:
    """Sentence segments (frames, with words) of one channel's words; see the module docstring for the rule."""
    groups: list[list[AlignedWord]] = []
    current: list[AlignedWord] = []
    current_end = 0.0
    for word in sorted(words, key=lambda w: (w.start_s, w.end_s)):
        if current and word.start_s - current_end > gap_s:
            groups.append(current)
            current = []
        current_end = max(current_end, word.end_s) if current else word.end_s
        current.append(word)
        if ends_sentence(word.text, sentence_end):
            groups.append(current)
            current = []
    if current:
        groups.append(current)

    segments = []
    previous_end = 0
    for group in groups:
        frame_words = []
        for word in group:
            start = max(math.floor(word.start_s * FRAME_RATE + _EPSILON), previous_end)
            end = min(max(math.ceil(word.end_s * FRAME_RATE - _EPSILON), start + 1), num_frames)
            if start < end:
                frame_words.append(Word(start, end, word.text))
        if frame_words:
            end = max(w.end for w in frame_words)
            segments.append(
                Segment(frame_words[0].start, end, " ".join(w.text for w in frame_words), tuple(frame_words))
            )
            previous_end = end
    return tuple(segments)
