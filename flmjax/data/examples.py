"""From a dialog record and a data source's rule to one training example of fixed length.

An example is a dict of numpy arrays, `L` frames long (the stage's sequence length):

    text_ids       int32 [L]      model input, text row (shifted right; `<wait>` first)
    speak_ids      int32 [L, 8]   model input, the model's own codes (delayed, shifted right; `aud_pad` first)
    listen_ids     int32 [L, 8]   model input, the user's codes (delayed, unshifted)
    text_targets   int32 [L]      text token to predict at each step
    audio_targets  int32 [L, 8]   speak codes to predict at each step (delayed)
    text_mask      bool  [L]      which text targets count in the loss
    audio_mask     bool  [L, 8]   which audio targets count in the loss
    dropped_tokens int32 []       monologue tokens that fell past the record's end (never silent)

Padding (records shorter than L) holds `<wait>`/`aud_pad` and is masked out; longer records are cropped at a
random offset drawn from the caller's generator.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol, Sequence

import numpy as np

from flmjax import streams
from flmjax.data.monologue import PLACEMENTS, place_monologue
from flmjax.data.records import DialogRecord, RecordError

TASKS = {"asr": "listen", "tts": "speak", "dialog": "speak"}  # task -> channel whose sentences form the text
REQUIRED_CHANNELS = {"asr": ("listen",), "tts": ("speak",), "dialog": ("speak", "listen")}
EXAMPLE_KEYS = (*streams.BATCH_KEYS, "dropped_tokens")


class TextEncoder(Protocol):
    def encode(self, text: str) -> list[int]: ...


@dataclasses.dataclass(frozen=True)
class SourceRule:
    """How one data source becomes examples: its task, where its monologue goes, and what is learned."""

    task: str = "dialog"  # asr: text from listen sentences; tts, dialog: text from speak sentences
    placement: str = "leading"  # leading | trailing | word_aligned
    lead_frames: int = 0
    trail_frames: int = 0
    text_loss: bool = True
    audio_loss: bool = True

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; expected one of {sorted(TASKS)}")
        if self.placement not in PLACEMENTS:
            raise ValueError(f"unknown placement {self.placement!r}; expected one of {PLACEMENTS}")


@dataclasses.dataclass(frozen=True)
class StreamIds:
    """The special ids of the model the examples are for (from its ModelConfig)."""

    wait_id: int
    aud_pad_id: int

    @classmethod
    def from_config(cls, config) -> StreamIds:
        return cls(config.text_wait_id, config.aud_pad_id)


def training_arrays(
    text_row: np.ndarray,
    speak_codes: np.ndarray | None,
    listen_codes: np.ndarray | None,
    ids: StreamIds,
    audio_loss: bool = True,
    text_loss: bool = True,
) -> dict[str, np.ndarray]:
    """A recorded conversation of T frames -> inputs, targets and masks over its `T + 1` delayed steps.

    text_row [T] (monologue placed), speak_codes/listen_codes [T, 8] or None (absent: `aud_pad` rows,
    no audio loss). REFERENCE.md 1.1: inputs are text and speak shifted right, listen unshifted.
    """
    frames = len(text_row)
    absent = np.full((frames, streams.NUM_CODEBOOKS), ids.aud_pad_id, np.int32)
    speak = absent if speak_codes is None else np.asarray(speak_codes, np.int32)
    listen = absent if listen_codes is None else np.asarray(listen_codes, np.int32)
    delayed_text = streams.delay_text(np.asarray(text_row, np.int32), ids.wait_id)
    delayed_speak = streams.delay_codes(speak, ids.aud_pad_id)
    delayed_listen = streams.delay_codes(listen, ids.aud_pad_id)
    text_in, speak_in, listen_in = streams.model_inputs(
        delayed_text, delayed_speak, delayed_listen, ids.wait_id, ids.aud_pad_id
    )
    steps = np.arange(frames + streams.MAX_DELAY)
    # A delayed target is real data iff it comes from a frame of the recording (not a delay fill).
    source_frame = steps[:, None] - np.asarray(streams.AUDIO_DELAYS)[None, :]
    audio_mask = (source_frame >= 0) & (source_frame < frames) & (speak_codes is not None) & audio_loss
    return {
        "text_ids": text_in,
        "speak_ids": speak_in,
        "listen_ids": listen_in,
        "text_targets": delayed_text,
        "audio_targets": delayed_speak,
        "text_mask": (steps < frames) & text_loss,
        "audio_mask": audio_mask,
    }


def text_row_for(
    record: DialogRecord, rule: SourceRule, tokenizer: TextEncoder, wait_id: int
) -> tuple[np.ndarray, int]:
    """The record's monologue under `rule`: (text_row int32 [T], tokens dropped past the end)."""
    channel = TASKS[rule.task]
    segments = record.segments(channel)
    if rule.placement == "word_aligned":
        if any(segment.words is None for segment in segments):
            raise RecordError(
                f"record {record.id!r}: {channel}_segments lack per-word times, which the word_aligned placement needs"
            )
        runs = [(w.start, w.end, tokenizer.encode(w.text)) for s in segments for w in s.words]
    else:
        runs = [(s.start, s.end, tokenizer.encode(s.text)) for s in segments]
    return place_monologue(runs, record.num_frames, rule.placement, wait_id, rule.lead_frames, rule.trail_frames)


def record_arrays(
    record: DialogRecord, rule: SourceRule, tokenizer: TextEncoder, ids: StreamIds
) -> dict[str, np.ndarray]:
    """A whole record -> training arrays over its `T + 1` steps (see `training_arrays`)."""
    missing = [c for c in REQUIRED_CHANNELS[rule.task] if record.codes(c) is None]
    if missing:
        raise RecordError(
            f"record {record.id!r}: task {rule.task!r} needs {' and '.join(missing)}_codes, which the record lacks"
        )
    text_row, dropped = text_row_for(record, rule, tokenizer, ids.wait_id)
    arrays = training_arrays(text_row, record.speak_codes, record.listen_codes, ids, rule.audio_loss, rule.text_loss)
    arrays["dropped_tokens"] = np.int32(dropped)
    return arrays


def crop_or_pad(
    arrays: dict[str, np.ndarray], length: int, ids: StreamIds, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Cuts a random `length`-step window from longer arrays; pads shorter ones (padding masked out)."""
    steps = len(arrays["text_ids"])
    if steps > length:
        offset = int(rng.integers(0, steps - length + 1))
        return {k: v[offset : offset + length] if np.ndim(v) else v for k, v in arrays.items()}
    return pad_steps(arrays, length, ids)


def pad_steps(arrays: dict[str, np.ndarray], length: int, ids: StreamIds) -> dict[str, np.ndarray]:
    """Training arrays padded to `length` steps: `<wait>` text, `aud_pad` codes, masks off; scalars as they are."""
    fill = {
        "text_ids": ids.wait_id,
        "text_targets": ids.wait_id,
        "speak_ids": ids.aud_pad_id,
        "listen_ids": ids.aud_pad_id,
        "audio_targets": ids.aud_pad_id,
        "text_mask": False,
        "audio_mask": False,
    }
    out = {}
    for key, value in arrays.items():
        if not np.ndim(value):
            out[key] = value
            continue
        pad = np.full((length - len(value),) + value.shape[1:], fill[key], value.dtype)
        out[key] = np.concatenate([value, pad], axis=0)
    return out


def padded_batch(arrays: Sequence[dict[str, np.ndarray]], ids: StreamIds) -> dict[str, np.ndarray]:
    """Training arrays of several records stacked into one batch, each padded to the longest (`pad_steps`)."""
    length = max(len(a["text_ids"]) for a in arrays)
    padded = [pad_steps(a, length, ids) for a in arrays]
    return {key: np.stack([a[key] for a in padded]) for key in padded[0]}


def make_example(
    record: DialogRecord,
    rule: SourceRule,
    tokenizer: TextEncoder,
    ids: StreamIds,
    length: int,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """One training example of `length` steps from a record (see the module docstring for its fields)."""
    return crop_or_pad(record_arrays(record, rule, tokenizer, ids), length, ids, rng)


def stack_examples(examples: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {key: np.stack([e[key] for e in examples]) for key in EXAMPLE_KEYS}
