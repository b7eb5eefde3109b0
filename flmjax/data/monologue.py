"""Placing the text monologue on the frame grid: natural (leading or trailing) or word-aligned.

A natural monologue writes a whole sentence's tokens as one contiguous run, anchored to the sentence's audio:
`leading` starts the run `lead_frames` before the audio starts (text first, as in TTS and in the final
conversational model), `trailing` starts it `trail_frames` after the audio ends (text after, as in ASR).
`word_aligned` is Moshi's baseline: each word's tokens start at that word's frame (pass the words as the
segments). Every other frame holds `<wait>`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

PLACEMENTS = ("leading", "trailing", "word_aligned")


def place_monologue(
    segments: Sequence[tuple[int, int, Sequence[int]]],
    num_frames: int,
    placement: str,
    wait_id: int,
    lead_frames: int = 0,
    trail_frames: int = 0,
) -> tuple[np.ndarray, int]:
    """Lays token runs on a text row of `num_frames` frames.

    segments: `(start_frame, end_frame, token_ids)` sorted by start (for `word_aligned`, one per word).
    A run that would start before the previous run has ended starts right after it (queued: never
    overlapped, reordered or dropped for a collision); anchors before frame 0 are clamped to 0; tokens that
    fall past the last frame are dropped and counted.
    Returns (text_row int32 [num_frames], number of tokens dropped).
    """
    if placement not in PLACEMENTS:
        raise ValueError(f"unknown monologue placement {placement!r}; expected one of {PLACEMENTS}")
    if lead_frames < 0 or trail_frames < 0:
        raise ValueError(f"lead_frames ({lead_frames}) and trail_frames ({trail_frames}) must be >= 0")
    starts = [start for start, _, _ in segments]
    if starts != sorted(starts):
        raise ValueError(f"segments must be sorted by start frame, got starts {starts}")
    text_row = np.full(num_frames, wait_id, np.int32)
    next_free, dropped = 0, 0
    for start, end, tokens in segments:
        anchor = end + trail_frames if placement == "trailing" else start - lead_frames
        position = max(anchor, 0, next_free)
        kept = max(0, min(len(tokens), num_frames - position))
        text_row[position : position + kept] = np.asarray(tokens[:kept], np.int32)
        dropped += len(tokens) - kept
        next_free = position + len(tokens)
    return text_row, dropped
