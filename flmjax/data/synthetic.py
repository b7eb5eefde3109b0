"""A synthetic corpus whose audio is a deterministic function of its text: the default, learnable dataset.

Text. Sentences are filled templates (greetings, questions, answers, statements, interruptions, backchannels)
over a fixed vocabulary (about 450 words with plurals), so transcripts read like short English turns.

Voice. A word (lower-cased, outer punctuation stripped) lasts `word_length(word)` frames: one per two letters,
2 to 5. Frame f of word w in speaker s's voice has semantic code (codebook 0) `sem = H(s, w, f)` and acoustic
codes (codebooks 1..7) `H(s, c, sem)`: the acoustic detail follows the semantic code alone, as in a real codec,
so with the acoustic delay of one frame it is a lookup. H is BLAKE2b (not Python's salted `hash`), so codes are
the same in every process. The words of a sentence follow each other without gaps; every non-speech frame of a
present channel is `SILENCE_FRAME`, whose semantic code no word uses. The model (speak channel) and the user
(listen channel) have different voices. A sentence therefore sounds as `utterance_codes(text, speaker)` wherever
it is said: text to codes (TTS) and codes to text (ASR) are both learnable lookups.

Records. `make_example(index, seed)` builds record `index` from its own random stream (random access; only
`random.Random.random`, whose sequence Python keeps stable across versions). Kinds (`KIND_WEIGHTS`):
- dialog 60%: both channels. The user (70%) or the model opens; turns alternate, 1-2 sentences for the user,
  1-3 for the model, 1-3 silent frames between a turn's sentences. After a turn the other side starts after a
  pause of 2-8 frames, or overlaps its last 1-3 frames (20%); 25% of model turns are interrupted: the user
  starts during a word of the model's last sentence, the model finishes that word and stops (its segment text
  and codes are the words it said), the user's turn opens with an interruption and the model's next turn with
  an acknowledgement (never itself cut off). 40% of other turns of 20+ frames carry a backchannel ("Mm-hmm.")
  from the other side, inside one of the turn's sentences. Length: up to a target drawn in
  [max_frames/3, max_frames] (default 750 frames = 60 s).
- asr 20%: 1-3 user sentences on listen only; tts 20%: 1-3 model sentences on speak only.
Segments are sentences spanning exactly their words' frames; `words` carries each word's frames, and a
segment's text is its words joined by spaces. Every 1/validation_fraction-th record is in "validation".
`generate_records` yields `(record, split)` for `write_manifest`; `generate_examples` adds each record's kind and
its `Event`s (interruptions with the planned sentence, overlaps, backchannels) for checks.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import random
import re
from typing import Iterator, Mapping, Sequence

import numpy as np

from flmjax.data.records import NUM_CODEBOOKS, NUM_CODES, DialogRecord, Segment, Word, make_record
from flmjax.data.synthetic_text import (
    ACKNOWLEDGEMENTS,
    ANSWERS,
    BACKCHANNELS,
    GREETINGS,
    INTERRUPTIONS,
    PLACEHOLDER,
    POOLS,
    QUESTIONS,
    STATEMENTS,
)

SPEAKERS = ("model", "user")
CHANNEL_SPEAKER = {"speak": "model", "listen": "user"}
KIND_WEIGHTS = {"dialog": 0.6, "asr": 0.2, "tts": 0.2}
DEFAULT_MAX_FRAMES = 750
MIN_MAX_FRAMES = 24
SILENCE_FRAME = np.array([1024, 33, 1999, 512, 87, 1500, 760, 1234], np.int16)
SILENCE_FRAME.flags.writeable = False

# Dialog dynamics (documented above).
USER_OPENS, P_OVERLAP, P_INTERRUPT, P_BACKCHANNEL, MIN_BACKCHANNEL_TURN = 0.7, 0.2, 0.25, 0.4, 20


# --------------------------------------------------------------------------------------------------- voice
def normalize_word(word: str) -> str:
    """The key a word is spoken by: lower case, outer punctuation stripped ("Mm-hmm." -> "mm-hmm")."""
    key = word.strip('.,!?;:"').lower()
    if not key:
        raise ValueError(f"{word!r} has no letters to speak")
    return key


def word_length(word: str) -> int:
    """Frames a word lasts: one per two letters of its key, at least 2, at most 5."""
    return min(5, max(2, math.ceil(len(normalize_word(word)) / 2)))


def _hash(*parts) -> int:
    return int.from_bytes(hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest(), "little")


def _check_speaker(speaker: str) -> None:
    if speaker not in SPEAKERS:
        raise ValueError(f"unknown speaker {speaker!r}; expected one of {SPEAKERS}")


@functools.lru_cache(maxsize=None)
def _acoustic_table(speaker: str) -> np.ndarray:
    """`[NUM_CODES, 7]`: codebooks 1..7 of a frame as a function of its semantic code, in `speaker`'s voice."""
    return np.array(
        [[_hash(speaker, c, sem) % NUM_CODES for c in range(1, NUM_CODEBOOKS)] for sem in range(NUM_CODES)], np.int16
    )


@functools.lru_cache(maxsize=None)
def _frames(key: str, speaker: str) -> np.ndarray:
    semantic = [_hash(speaker, key, f) % (NUM_CODES - 1) for f in range(word_length(key))]
    semantic = np.array([s + (s >= SILENCE_FRAME[0]) for s in semantic], np.int16)  # never the silence code
    frames = np.concatenate([semantic[:, None], _acoustic_table(speaker)[semantic]], axis=1)
    frames.flags.writeable = False
    return frames


def word_frames(word: str, speaker: str) -> np.ndarray:
    """The codes `[word_length(word), 8]` of one word in `speaker`'s voice ("model" or "user"); read-only."""
    _check_speaker(speaker)
    return _frames(normalize_word(word), speaker)


def utterance_codes(text: str, speaker: str) -> np.ndarray:
    """The codes `[frames, 8]` of a sentence: its words' frames back to back."""
    words = text.split()
    if not words:
        return np.zeros((0, NUM_CODEBOOKS), np.int16)
    return np.concatenate([word_frames(w, speaker) for w in words])


# ------------------------------------------------------------------------------------------------ sentences
class _Rng:
    """Draws only through `random.Random.random`, whose sequence Python promises to keep across versions."""

    def __init__(self, *key):
        self._random = random.Random("flmjax-synthetic:" + ":".join(map(str, key))).random

    def uniform(self) -> float:
        return self._random()

    def randint(self, low: int, high: int) -> int:
        return low + int(self._random() * (high - low + 1))

    def choice(self, options: Sequence):
        return options[int(self._random() * len(options))]


def _sentence(rng: _Rng, templates: Sequence[str]) -> list[str]:
    """A filled template as words (punctuation attached); numbered placeholders of a pool draw distinct words."""
    chosen: dict[tuple[str, str], str] = {}

    def fill(match: re.Match) -> str:
        pool, taken = POOLS[match.group(1)], [v for k, v in chosen.items() if k[0] == match.group(1)]
        value = rng.choice(pool)
        for _ in range(3):
            if value not in taken:
                break
            value = rng.choice(pool)
        chosen[(match.group(1), match.group(2))] = value
        return value

    words = PLACEHOLDER.sub(fill, rng.choice(templates)).split()
    for i, word in enumerate(words[:-1]):
        if word.lower() == "a" and words[i + 1][0].lower() in "aeiou":
            words[i] = word + "n"
    words[0] = words[0][0].upper() + words[0][1:]
    return words


def _length(words: Sequence[str]) -> int:
    return sum(word_length(w) for w in words)


# -------------------------------------------------------------------------------------------------- records
@dataclasses.dataclass(frozen=True)
class Event:
    """Something notable about one segment: `kind` is "interruption" (the segment was cut short: the speaker
    meant `planned_text`), "overlap" (it starts while the other side is still talking) or "backchannel"."""

    kind: str
    channel: str
    segment: int
    planned_text: str = ""


@dataclasses.dataclass(frozen=True)
class SyntheticExample:
    """A record with its split, its kind ("dialog", "asr" or "tts") and its notable events."""

    record: DialogRecord
    split: str
    kind: str
    events: tuple[Event, ...]


class _Timeline:
    """Segments placed on the two channels, in time order per channel."""

    def __init__(self):
        self.segments: dict[str, list[Segment]] = {"speak": [], "listen": []}
        self.events: list[Event] = []

    def end(self, channel: str) -> int:
        return self.segments[channel][-1].end if self.segments[channel] else 0

    def place(self, channel: str, start: int, words: Sequence[str], event: str | None = None) -> Segment:
        assert start >= self.end(channel), (channel, start, self.end(channel))
        spans, t = [], start
        for word in words:
            spans.append(Word(t, t + word_length(word), word))
            t = spans[-1].end
        segment = Segment(start, t, " ".join(words), tuple(spans))
        if event:
            self.events.append(Event(event, channel, len(self.segments[channel])))
        self.segments[channel].append(segment)
        return segment

    def truncate_last(self, channel: str, num_words: int, planned_text: str) -> Segment:
        """Keeps the last segment's first `num_words` words (the speaker stopped there)."""
        segment = self.segments[channel].pop()
        words = [w.text for w in segment.words[:num_words]]
        words[-1] = words[-1].rstrip(",;:")
        kept = self.place(channel, segment.start, words)
        self.events.append(Event("interruption", channel, len(self.segments[channel]) - 1, planned_text))
        return kept

    def codes(self, channel: str, num_frames: int) -> np.ndarray:
        codes = np.tile(SILENCE_FRAME, (num_frames, 1))
        for segment in self.segments[channel]:
            codes[segment.start : segment.end] = utterance_codes(segment.text, CHANNEL_SPEAKER[channel])
        return codes


def _other(channel: str) -> str:
    return "listen" if channel == "speak" else "speak"


def _turn_sentences(rng: _Rng, channel: str, opening: bool, acknowledging: bool) -> list[list[str]]:
    """A turn's sentences; `acknowledging`: the model was just cut off and yields to the user first."""
    if channel == "listen":
        first = GREETINGS["user"] if opening else QUESTIONS if rng.uniform() < 0.6 else STATEMENTS
        return [_sentence(rng, first)] + [_sentence(rng, QUESTIONS) for _ in range(rng.uniform() < 0.3)]
    first = GREETINGS["model"] if opening else ACKNOWLEDGEMENTS if acknowledging else ANSWERS
    return [_sentence(rng, first)] + [_sentence(rng, ANSWERS + STATEMENTS) for _ in range(rng.randint(0, 2))]


def _backchannel(rng: _Rng, timeline: _Timeline, channel: str, turn: Sequence[Segment]) -> None:
    """Maybe puts a backchannel on the other channel inside one of the turn's sentences."""
    words = _sentence(rng, BACKCHANNELS)
    length, other = _length(words), _other(channel)
    hosts = [s for s in turn if s.end - s.start >= length + 4 and s.end - length - 2 >= timeline.end(other)]
    if hosts and turn[-1].end - turn[0].start >= MIN_BACKCHANNEL_TURN and rng.uniform() < P_BACKCHANNEL:
        host = rng.choice(hosts)
        start = rng.randint(max(host.start + 2, timeline.end(other)), host.end - length - 2)
        timeline.place(other, start, words, "backchannel")


def _dialog(rng: _Rng, max_frames: int) -> _Timeline:
    timeline = _Timeline()
    target = rng.randint(max_frames // 3, max_frames) - 2
    channel = "listen" if rng.uniform() < USER_OPENS else "speak"
    start, opening = rng.randint(2, 8), True
    interruption = None  # the user's interrupting sentence, due at `start`
    acknowledge = False  # the model was cut off: its next turn opens with an acknowledgement
    while True:
        sentences = _turn_sentences(rng, channel, opening, acknowledge and channel == "speak")
        if interruption is not None:
            sentences[0] = interruption
        turn, t = [], start
        for words in sentences:
            t = max(t, timeline.end(channel))
            if t + _length(words) > target:
                break
            overlaps = t < timeline.end(_other(channel))
            turn.append(timeline.place(channel, t, words, "overlap" if overlaps else None))
            t = turn[-1].end + rng.randint(1, 3)
        if not turn:
            break
        other, last, opening = _other(channel), turn[-1], False
        interrupting, interruption = interruption is not None, None
        if channel == "speak":
            acknowledging, acknowledge = acknowledge, False
            cuttable = len(last.words) >= 4 and not (acknowledging and len(turn) == 1)
            if cuttable and rng.uniform() < P_INTERRUPT:
                said = rng.randint(max(1, len(last.words) // 3), len(last.words) - 1)
                stop_word = last.words[said - 1]  # the user starts during it; the model finishes it and stops
                start = rng.randint(stop_word.start, stop_word.end - 1)
                words = _sentence(rng, INTERRUPTIONS)
                if start >= timeline.end(other) and start + _length(words) <= target:
                    timeline.truncate_last(channel, said, last.text)
                    interruption, acknowledge = words, True
        if interruption is None:
            if not interrupting:
                _backchannel(rng, timeline, channel, turn)
            if rng.uniform() < P_OVERLAP and last.end - last.start > 3:
                start = last.end - rng.randint(1, 3)
            else:
                start = last.end + rng.randint(2, 8)
            start = max(start, timeline.end(other))
        channel = other
    if not any(timeline.segments.values()):  # a very short max_frames: say something short
        timeline.place(channel, 2, _sentence(rng, BACKCHANNELS))
    return timeline


def _monologue(rng: _Rng, channel: str, max_frames: int) -> _Timeline:
    timeline = _Timeline()
    templates = QUESTIONS + STATEMENTS if channel == "listen" else ANSWERS + STATEMENTS
    t = rng.randint(1, 6)
    for _ in range(rng.randint(1, 3)):
        words = _sentence(rng, templates)
        if t + _length(words) > max_frames - 1:
            break
        t = timeline.place(channel, t, words).end + rng.randint(1, 4)
    if not timeline.segments[channel]:
        timeline.place(channel, 1, _sentence(rng, BACKCHANNELS))
    return timeline


def _split(index: int, validation_fraction: float) -> str:
    held_out = math.floor((index + 1) * validation_fraction) > math.floor(index * validation_fraction)
    return "validation" if held_out else "train"


def make_example(
    index: int,
    seed: int,
    validation_fraction: float = 0.05,
    max_frames: int = DEFAULT_MAX_FRAMES,
    kind_weights: Mapping[str, float] | None = None,
) -> SyntheticExample:
    """Record `index` of the corpus `seed`, independent of every other record; validated by `make_record`."""
    if max_frames < MIN_MAX_FRAMES:
        raise ValueError(f"max_frames is {max_frames}; synthetic records need at least {MIN_MAX_FRAMES}")
    if not 0 <= validation_fraction <= 1:
        raise ValueError(f"validation_fraction is {validation_fraction}; expected a fraction in [0, 1]")
    weights = dict(KIND_WEIGHTS if kind_weights is None else kind_weights)
    if set(weights) - set(KIND_WEIGHTS) or sum(weights.values()) <= 0 or min(weights.values()) < 0:
        raise ValueError(f"kind_weights {weights} must weigh kinds among {tuple(KIND_WEIGHTS)}, not all zero")
    rng = _Rng(seed, index)
    draw, kind = rng.uniform() * sum(weights.values()), list(weights)[-1]  # the last kind if rounding runs past
    for candidate, weight in weights.items():
        if draw < weight:
            kind = candidate
            break
        draw -= weight
    if kind == "dialog":
        timeline, channels = _dialog(rng, max_frames), ("speak", "listen")
    else:
        channel = "listen" if kind == "asr" else "speak"
        timeline, channels = _monologue(rng, channel, max_frames), (channel,)
    num_frames = min(max_frames, max(timeline.end(c) for c in channels) + rng.randint(1, 6))
    codes = {c: timeline.codes(c, num_frames) if c in channels else None for c in ("speak", "listen")}
    record = make_record(
        f"synthetic-{index:06d}-{kind}",
        codes["speak"],
        codes["listen"],
        timeline.segments["speak"],
        timeline.segments["listen"],
        num_frames,
    )
    return SyntheticExample(record, _split(index, validation_fraction), kind, tuple(timeline.events))


def generate_examples(
    num_records: int,
    seed: int,
    validation_fraction: float = 0.05,
    max_frames: int = DEFAULT_MAX_FRAMES,
    kind_weights: Mapping[str, float] | None = None,
) -> Iterator[SyntheticExample]:
    """Records 0..num_records-1 with their split, kind and notable events."""
    for index in range(num_records):
        yield make_example(index, seed, validation_fraction, max_frames, kind_weights)


def generate_records(
    num_records: int,
    seed: int,
    validation_fraction: float = 0.05,
    max_frames: int = DEFAULT_MAX_FRAMES,
    kind_weights: Mapping[str, float] | None = None,
) -> Iterator[tuple[DialogRecord, str]]:
    """`(record, split)` pairs, ready for `write_manifest`; the same in every run and process."""
    for example in generate_examples(num_records, seed, validation_fraction, max_frames, kind_weights):
        yield example.record, example.split
