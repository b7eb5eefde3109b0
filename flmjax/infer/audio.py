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

import dataclasses
import time
from typing import Any, Callable, Sequence

import numpy as np

from flmjax import codec
from flmjax.config import ModelConfig
from flmjax.infer import stream as stream_lib
from flmjax.infer.sampling import SamplingConfig
from flmjax.infer.sessions import SessionsResult, run_sessions


@dataclasses.dataclass
class AudioSessionsResult:
    """Per session i: `model_audio[i]` [n_i] float32 at 24 kHz (same length as its input), `user_codes[i]`
    [T_i, 8] (what the encoder heard), and `sessions` (the model's frames and step times). `codec_s` [steps]:
    wall seconds of each step's encode + decode."""

    model_audio: list[np.ndarray]
    user_codes: list[np.ndarray]
    sessions: SessionsResult
    codec_s: np.ndarray


def voice_step(config: ModelConfig, mimi_config: codec.MimiConfig, mimi_params: Any, state: Any,
               speak: np.ndarray) -> tuple[Any, np.ndarray]:
    """One frame of the model's voice: speak codes [B, C] -> (codec state, pcm [B, 1920]); a frame holding a
    special id plays as silence (see the module docstring)."""
    size = stream_lib.codebook_size(config)
    silent = np.any(speak >= size, axis=1)
    state, pcm = codec.decode_step(mimi_config, mimi_params, state, np.minimum(speak, size - 1)[:, :, None])
    return state, np.where(silent[:, None], 0.0, np.asarray(pcm)[:, 0])


def decode_voice(config: ModelConfig, mimi_config: codec.MimiConfig, mimi_params: Any,
                 codes: np.ndarray) -> np.ndarray:
    """Codes [T, C] (the model's speak codes, or a user's) -> pcm [1920 T], frame by frame with `voice_step`."""
    state = codec.init_codec_stream(mimi_config, mimi_params, 1)
    pcm = np.zeros(len(codes) * mimi_config.frame_size, np.float32)
    for step, frame in enumerate(np.asarray(codes, np.int32)):
        state, chunk = voice_step(config, mimi_config, mimi_params, state, frame[None])
        pcm[step * mimi_config.frame_size:(step + 1) * mimi_config.frame_size] = chunk[0]
    return pcm


def run_audio_sessions(config: ModelConfig, params: Any, mimi_config: codec.MimiConfig, mimi_params: Any,
                       user_audio: Sequence[np.ndarray], *, sampling: SamplingConfig | None = None,
                       max_frames: int | None = None, sliding_window: bool = False, seed: int = 0,
                       session_seeds: Sequence[int] | None = None,
                       progress: Callable[[int, int], None] | None = None) -> AudioSessionsResult:
    """Streams every session of `user_audio` (each [n_i] float32 mono at 24 kHz) in one batch."""
    frame = mimi_config.frame_size
    lengths = [len(audio) for audio in user_audio]
    if min(lengths, default=0) < 1:
        raise ValueError(f"every session needs audio; lengths {lengths}")
    frames = [-(-n // frame) for n in lengths]
    steps = max(frames)
    user = np.zeros((len(user_audio), steps * frame), np.float32)
    for row, audio in enumerate(user_audio):
        user[row, :len(audio)] = audio
    state = codec.init_codec_stream(mimi_config, mimi_params, len(user_audio))
    heard = np.zeros((len(user_audio), steps, config.aud_channel), np.int32)
    spoken = np.zeros_like(user)
    codec_s = np.zeros(steps)

    def listen_hook(step: int, _: np.ndarray) -> np.ndarray:
        nonlocal state
        start = time.perf_counter()
        state, codes = codec.encode_step(mimi_config, mimi_params, state, user[:, None, step * frame:(step + 1) * frame])
        heard[:, step] = np.asarray(codes)[:, :, 0]
        codec_s[step] += time.perf_counter() - start
        return heard[:, step]

    def frame_hook(step: int, out_frame: np.ndarray, out_valid: np.ndarray) -> None:
        nonlocal state
        if not out_valid.any():  # a session's first step emits nothing; all sessions start together
            return
        start = time.perf_counter()
        state, spoken[:, step * frame:(step + 1) * frame] = voice_step(config, mimi_config, mimi_params, state,
                                                                       out_frame[:, 1:])
        codec_s[step] += time.perf_counter() - start

    placeholder = [np.zeros((count, config.aud_channel), np.int32) for count in frames]  # the hook hears
    sessions = run_sessions(config, params, placeholder, sampling=sampling, max_frames=max_frames,
                            sliding_window=sliding_window, seed=seed, session_seeds=session_seeds,
                            listen_hook=listen_hook,
                            frame_hook=frame_hook, progress=progress)
    return AudioSessionsResult(model_audio=[spoken[i, :n] for i, n in enumerate(lengths)],
                               user_codes=[heard[i, :count] for i, count in enumerate(frames)],
                               sessions=sessions, codec_s=codec_s)
