"""Full-duplex sessions on audio: the user's voice in, the model's voice out, frame by frame as live.

Each 80 ms step: the streaming Mimi encoder turns the user's new 1920 samples into 8 codes, the model takes one
step, and the streaming Mimi decoder turns the frame the model emitted into 1920 samples. Step s emits the
model's frame s-1 (REFERENCE.md 1.1), which is played in step s's slot: the output is time-synchronous with the
input, as a live system would play it (nothing in slot 0), and exactly as long as the input.

A frame whose speak codes hold one of the model's special ids (aud_pad, aud_emp: a sampled model may emit
them) has no sound: it plays as silence, and the decoder is fed the codes clipped into range so that its
streaming state stays finite and in step.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from flmjax import codec
from flmjax.config import ModelConfig
from flmjax.infer.stream_state import codebook_size


def voice_step(
    config: ModelConfig, mimi_config: codec.MimiConfig, mimi_params: Any, state: Any, speak: np.ndarray
) -> tuple[Any, np.ndarray]:
    """One frame of the model's voice: speak codes [B, C] -> (codec state, pcm [B, 1920]); a frame holding a
    special id plays as silence (see the module docstring)."""
    size = codebook_size(config)
    silent = np.any(speak >= size, axis=1)
    state, pcm = codec.decode_step(mimi_config, mimi_params, state, np.minimum(speak, size - 1)[:, :, None])
    return state, np.where(silent[:, None], 0.0, np.asarray(pcm)[:, 0])


def decode_voice(config: ModelConfig, mimi_config: codec.MimiConfig, mimi_params: Any, codes: np.ndarray) -> np.ndarray:
    """Codes [T, C] (the model's speak codes, or a user's) -> pcm [1920 T], frame by frame with `voice_step`."""
    state = codec.init_codec_stream(mimi_config, mimi_params, 1)
    pcm = np.zeros(len(codes) * mimi_config.frame_size, np.float32)
    for step, frame in enumerate(np.asarray(codes, np.int32)):
        state, chunk = voice_step(config, mimi_config, mimi_params, state, frame[None])
        pcm[step * mimi_config.frame_size : (step + 1) * mimi_config.frame_size] = chunk[0]
    return pcm


class StreamingCodec:
    """The streaming Mimi on a scheduler's slots (`flmjax.infer.sessions.Scheduler`): each step encodes every
    slot's 1920 new samples of the user's voice and decodes every slot's emitted frame (`voice_step`)."""

    def __init__(self, config: ModelConfig, mimi_config: codec.MimiConfig, mimi_params: Any, slots: int):
        self.config, self.mimi_config, self.mimi_params = config, mimi_config, mimi_params
        self.frame_size = mimi_config.frame_size
        self.state = codec.init_codec_stream(mimi_config, mimi_params, slots)

    def _restart(self, mask: np.ndarray, part: str) -> None:
        if mask.any():
            self.state = codec.reset_stream(self.mimi_config, self.state, mask, (part,))

    def encode(self, pcm: np.ndarray, restart: np.ndarray) -> np.ndarray:
        """pcm [B, 1920] -> codes [B, C]; the encoder of each slot in `restart` [B] starts afresh first."""
        self._restart(restart, "encoder")
        self.state, codes = codec.encode_step(
            self.mimi_config, self.mimi_params, self.state, np.asarray(pcm, np.float32)[:, None, :]
        )
        return np.asarray(codes)[:, :, 0]

    def decode(self, speak: np.ndarray, restart: np.ndarray) -> np.ndarray:
        """speak codes [B, C] -> pcm [B, 1920]; the decoder of each slot in `restart` [B] starts afresh first."""
        self._restart(restart, "decoder")
        self.state, pcm = voice_step(self.config, self.mimi_config, self.mimi_params, self.state, speak)
        return np.array(pcm, np.float32)


def streaming_codec(config: ModelConfig, mimi_config: codec.MimiConfig, mimi_params: Any):
    """The `codec` argument of `run_sessions`: slots -> a `StreamingCodec` for them."""
    return lambda slots: StreamingCodec(config, mimi_config, mimi_params, slots)
