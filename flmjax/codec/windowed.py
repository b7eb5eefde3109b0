"""Long audio through Mimi's streaming encoder in jitted windows: one compiled window for any length, memory for
one window. Used by the data pipeline's recordings (`flmjax.data.recording_encoder`) and `launch.codec encode`."""

from __future__ import annotations

import functools
from typing import Callable

import jax
import numpy as np

from flmjax.codec.mimi import encode_step, init_codec_stream

DEFAULT_CHUNK_FRAMES = 50  # 4 s windows


@functools.partial(jax.jit, static_argnums=0)
def _encode_window(config, params, state, pcm):
    """pcm [B, 1, W * frame_size] -> (state, codes [B, 8, W]): W streaming steps of one frame, scanned."""
    frames = pcm.reshape(pcm.shape[0], 1, -1, config.frame_size).transpose(2, 0, 1, 3)  # [W, B, 1, F]
    state, codes = jax.lax.scan(lambda s, frame: encode_step(config, params, s, frame), state, frames)
    return state, codes[..., 0].transpose(1, 2, 0)  # [W, B, 8, 1] -> [B, 8, W]


def stream_encode(
    config,
    params,
    audio,
    chunk_frames: int = DEFAULT_CHUNK_FRAMES,
    on_window: Callable[[int], None] | None = None,
    sharding=None,
) -> np.ndarray:
    """Mono signals `audio [B, n]` -> int16 codes `[B, 8, ceil(n / 1920)]`, streaming in windows.

    The codec's streaming step, one frame at a time under `lax.scan`, over windows of `chunk_frames` frames
    with the stream state carried between them: one compiled window for any length, memory for one window.
    The audio is zero-padded to whole windows (Mimi is causal: padding changes no earlier code). The codes are
    moshi's streaming codes: equal to batch `encode` up to the transformers' 10 s context, and past it equal
    to what the released code computes when streaming (../shared/golden/mimi_small/README.md). `on_window(k)`
    is called after each window with its number of real frames; `sharding` places each window (rows sharded).
    """
    batch, n = audio.shape
    frames = -(-n // config.frame_size)
    window = chunk_frames * config.frame_size
    padded = np.zeros((batch, 1, -(-frames // chunk_frames) * window), np.float32)
    padded[:, 0, :n] = audio
    state = init_codec_stream(config, params, batch)
    out = []
    for start in range(0, padded.shape[-1], window):
        pcm = padded[..., start : start + window]
        state, codes = _encode_window(config, params, state, pcm if sharding is None else jax.device_put(pcm, sharding))
        out.append(np.asarray(codes))
        if on_window is not None:
            on_window(min(chunk_frames, frames - start // config.frame_size))
    return np.concatenate(out, axis=-1)[..., :frames].astype(np.int16)
