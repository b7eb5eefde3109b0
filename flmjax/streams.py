"""The 17-row stream layout, codebook delays, and the model's inputs and targets (REFERENCE.md 1.1).

Rows: 0 text; 1..8 speak (the model's voice, codebooks 0..7); 9..16 listen (the user's voice). Acoustic
codebooks (1..7) run one frame behind the semantic one in both directions.

For a recording of T frames, the delayed grids have `T + MAX_DELAY` frames (so that delaying loses nothing):
`delayed[s, c] = codes[s - delay_c, c]`, with `aud_pad` where that index is before the start or past the end.
At step `s` the model reads `(text[s-1], D_speak[s-1], D_listen[s])` (step 0 reads `<wait>` and `aud_pad`)
and predicts `(text[s], D_speak[s])`.
"""

from __future__ import annotations

import numpy as np

FRAME_S = 0.08  # one frame: 1920 samples of Mimi at 24 kHz, 12.5 frames/s
NUM_CODEBOOKS = 8
NUM_ROWS = 1 + 2 * NUM_CODEBOOKS
TEXT_ROW = 0
SPEAK_ROWS = slice(1, 1 + NUM_CODEBOOKS)
LISTEN_ROWS = slice(1 + NUM_CODEBOOKS, NUM_ROWS)
AUDIO_DELAYS = (0, 1, 1, 1, 1, 1, 1, 1)
ROW_DELAYS = (0, *AUDIO_DELAYS, *AUDIO_DELAYS)
MAX_DELAY = max(AUDIO_DELAYS)
# The arrays of a training batch (`flmjax.data.examples.training_arrays`, read by `flmjax.train.step`), and those
# of them with a codebook axis ([batch, steps, 8]; the others are [batch, steps]).
BATCH_KEYS = ("text_ids", "speak_ids", "listen_ids", "text_targets", "audio_targets", "text_mask", "audio_mask")
AUDIO_BATCH_KEYS = ("speak_ids", "listen_ids", "audio_targets", "audio_mask")


def delay_codes(codes: np.ndarray, pad_id: int, delays: tuple[int, ...] = AUDIO_DELAYS) -> np.ndarray:
    """codes [T, C] -> delayed [T + max(delays), C]: codebook c shifted later by delays[c], gaps `pad_id`."""
    frames, channels = codes.shape
    if len(delays) != channels:
        raise ValueError(f"{len(delays)} delays for {channels} codebooks")
    delayed = np.full((frames + max(delays), channels), pad_id, dtype=codes.dtype)
    for c, delay in enumerate(delays):
        delayed[delay : delay + frames, c] = codes[:, c]
    return delayed


def undelay_codes(delayed: np.ndarray, delays: tuple[int, ...] = AUDIO_DELAYS) -> np.ndarray:
    """delayed [T + max(delays), C] -> codes [T, C]; the inverse of `delay_codes`."""
    frames = delayed.shape[0] - max(delays)
    return np.stack([delayed[delay : delay + frames, c] for c, delay in enumerate(delays)], axis=1)


def delay_text(text_row: np.ndarray, wait_id: int) -> np.ndarray:
    """text [T] -> [T + MAX_DELAY]: the text row has no delay; it is padded with `<wait>` to the grid length."""
    return np.concatenate([text_row, np.full(MAX_DELAY, wait_id, text_row.dtype)])


def shift_right(row: np.ndarray, fill: int) -> np.ndarray:
    """[N, ...] -> [N, ...]: row[s-1] at s, `fill` at 0 (what the model read at step s of its own output)."""
    return np.concatenate([np.full((1,) + row.shape[1:], fill, row.dtype), row[:-1]], axis=0)


def model_inputs(
    delayed_text: np.ndarray, delayed_speak: np.ndarray, delayed_listen: np.ndarray, wait_id: int, pad_id: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Delayed grids -> the model's inputs: text and speak shifted right by one (`<wait>`/`aud_pad` first),
    listen unshifted. Shapes [N], [N, C], [N, C]."""
    return shift_right(delayed_text, wait_id), shift_right(delayed_speak, pad_id), delayed_listen


def stack_rows(text: np.ndarray, speak: np.ndarray, listen: np.ndarray) -> np.ndarray:
    """[N], [N, C], [N, C] -> [N, 17] in the released row order (text, speak 0..7, listen 0..7)."""
    return np.concatenate([text[:, None], speak, listen], axis=1)
