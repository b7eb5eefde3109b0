"""The streaming state and what a step returns: `StreamState` (every slot's KV cache, last tokens, penalty
histories and sampling rows), `StepOutputs`, the errors a stream raises, and a fresh state.

`StreamState` is a pytree whose static part (model config, sampling, the context mode, the mesh) is hashed by
`jit`, so each batch size compiles once. `flmjax.infer.stream_slots` makes a stream and starts sessions in its
slots, `flmjax.infer.stream_sharding` lays it out over a mesh, and `flmjax.infer.stream` steps it.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from flmjax import model
from flmjax.config import ModelConfig
from flmjax.errors import UserError
from flmjax.infer import sampling as sampling_lib
from flmjax.infer.sampling import SamplingConfig

Params = Any


class StreamError(UserError, ValueError):
    """A streaming step was given something it cannot run on."""


class ContextLimitError(StreamError):
    """A session reached the end of its KV cache."""


@struct.dataclass
class StreamState:
    """Per-slot streaming state. B = batch slots, C = codebooks, P = penalised audio codebooks."""

    cache: model.KVCache  # {"k","v": [L,B,max_frames,kv,hd], "length": [B]}
    text: jax.Array  # [B] the text token sampled at the previous step (<wait> before the first)
    speak: jax.Array  # [B,C] the speak codes sampled at the previous step, delayed (aud_pad before the first)
    listen: jax.Array  # [B,C] the previous frame's user codes (aud_pad before the first)
    text_history: jax.Array  # [B,window] sampled text ids, a ring (EMPTY = unused)
    audio_history: jax.Array  # [B,window,P] sampled codes of codebooks 0..P-1, a ring
    steps: jax.Array  # [B] steps taken since the slot's session began
    # Each slot's sampling (temperatures, top-p/k, penalties and their windows), set by `reset_slots`; the
    # static `sampling` gives the defaults, whether anything is sampled at all, and the history rings' sizes.
    slot_sampling: sampling_lib.SlotSampling
    config: ModelConfig = struct.field(pytree_node=False)
    sampling: SamplingConfig = struct.field(pytree_node=False)
    sliding_window: bool = struct.field(pytree_node=False, default=False)
    mesh: Any = struct.field(pytree_node=False, default=None)  # a jax Mesh (sharded stream) or None
    # Every loop of the step as straight-line code (same numbers): only for XLA's cost analysis, which counts
    # a loop's body once (`lower_stream_step(..., unrolled=True)`).
    unrolled: bool = struct.field(pytree_node=False, default=False)

    @property
    def batch_size(self) -> int:
        return self.steps.shape[0]

    @property
    def max_frames(self) -> int:
        return self.cache["k"].shape[2]


@struct.dataclass
class StepOutputs:
    """Everything one step computed, per slot (`stream_step` returns the last two)."""

    model_inputs: jax.Array  # [B,17] ids fed to the model: text, speak 0..7, listen 0..7
    text_token: jax.Array  # [B] sampled text id
    audio_tokens: jax.Array  # [B,C] sampled speak codes (delayed, as sampled)
    text_logits: jax.Array  # [B,V] raw text logits (before penalties)
    hidden: jax.Array  # [B,H] final-normed temporal state
    depth_logits: jax.Array  # [B,C,A] raw depth logits of each codebook step
    out_frame: jax.Array  # [B,1+C] the undelayed frame of the step before: text, speak 0..7
    out_valid: jax.Array  # [B] False on a session's first step (nothing to emit yet)


def codebook_size(config: ModelConfig) -> int:
    """Real audio codes are 0 .. codebook_size - 1; the two ids above them are aud_pad and aud_emp."""
    return config.aud_vocab_size - 2


def fresh_state(
    config: ModelConfig, sampling: SamplingConfig, batch_size: int, max_frames: int, sliding_window: bool
) -> StreamState:
    """A state of `batch_size` slots with no session begun: an empty cache, <wait> and aud_pad as the previous
    tokens, empty penalty histories and the `sampling` defaults in every row."""
    channels, penalised = config.aud_channel, sampling.audio_penalty_codebooks
    return StreamState(
        cache=model.init_cache(config, batch_size, max_frames),
        text=jnp.full((batch_size,), config.text_wait_id, jnp.int32),
        speak=jnp.full((batch_size, channels), config.aud_pad_id, jnp.int32),
        listen=jnp.full((batch_size, channels), config.aud_pad_id, jnp.int32),
        text_history=jnp.full((batch_size, sampling.text.window), sampling_lib.EMPTY, jnp.int32),
        audio_history=jnp.full((batch_size, sampling.audio.window, penalised), sampling_lib.EMPTY, jnp.int32),
        steps=jnp.zeros((batch_size,), jnp.int32),
        slot_sampling=sampling_lib.SlotSampling.of(sampling, batch_size),
        config=config,
        sampling=sampling,
        sliding_window=sliding_window,
    )
