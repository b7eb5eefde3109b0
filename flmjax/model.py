"""The model as pure functions: params in, arrays out, nothing else touched.

Each function applies the Linen modules of `flmjax.architecture` (`FLMAudio`, where the shapes and the param
tree are described): fresh and abstract params, the full causal `forward` and its parts (`embed`,
`hidden_states`, `text_logits`), the temporal pass against a KV cache (`forward_cached`), the depth transformer
over a prefix of codebooks (`depth_forward`) or one codebook at a time (`depth_step`), and the conversion
between the scanned and unrolled layer layouts (`unstack_layers`, `stack_layers`).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from flmjax.architecture import FLMAudio
from flmjax.config import ModelConfig

Params = Any
KVCache = dict[str, jax.Array]  # {"k", "v": [L, B, S, kv_heads, head_dim], "length": [B] int32}


# ---------------------------------------------------------------------- pure functions
def _dummy_inputs(config: ModelConfig, batch: int = 1, frames: int = 1):
    text = jnp.full((batch, frames), config.text_wait_id, jnp.int32)
    audio = jnp.full((batch, frames, config.aud_channel), config.aud_pad_id, jnp.int32)
    return text, audio, audio, jnp.zeros((batch, frames), jnp.int32)


def init_boxed_params(config: ModelConfig, rng: jax.Array) -> Params:
    """Params with their logical-axis boxes (`nn.Partitioned`), for deriving shardings."""
    return FLMAudio(config).init(rng, *_dummy_inputs(config), method=FLMAudio.initialize)["params"]


def init_params(config: ModelConfig, rng: jax.Array) -> Params:
    """Fresh params (plain arrays of `config.param_dtype`): normal(initializer_range) kernels, unit norms."""
    return nn.unbox(init_boxed_params(config, rng))


def abstract_params(config: ModelConfig, boxed: bool = False) -> Params:
    """The param tree as `jax.ShapeDtypeStruct`s (boxed: with logical-axis metadata), computing nothing."""
    init = init_boxed_params if boxed else init_params
    return jax.eval_shape(functools.partial(init, config), jax.random.key(0))


def _positions(batch: int, frames: int, start: jax.Array | int = 0) -> jax.Array:
    return (
        jnp.asarray(start, jnp.int32).reshape(-1, 1)
        + jnp.arange(frames, dtype=jnp.int32)[None, :]
        + jnp.zeros((batch, 1), jnp.int32)
    )


def forward(
    config: ModelConfig, params: Params, text_ids: jax.Array, speak_ids: jax.Array, listen_ids: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Full causal pass over whole sequences.

    text_ids [B,T], speak_ids [B,T,C], listen_ids [B,T,C] (model inputs, delays and shifts already applied)
    -> (text_logits [B,T,V] float32, hidden [B,T,H] final-normed, in the compute dtype).
    """
    batch, frames = text_ids.shape
    text_logits, hidden, _ = FLMAudio(config).apply(
        {"params": params}, text_ids, speak_ids, listen_ids, _positions(batch, frames)
    )
    return text_logits, hidden


def hidden_states(
    config: ModelConfig, params: Params, text_ids: jax.Array, speak_ids: jax.Array, listen_ids: jax.Array
) -> jax.Array:
    """`forward` without the text head: the final-normed temporal state [B,T,H] alone."""
    batch, frames = text_ids.shape
    return FLMAudio(config).apply(
        {"params": params}, text_ids, speak_ids, listen_ids, _positions(batch, frames), method=FLMAudio.hidden_states
    )


def text_logits(config: ModelConfig, params: Params, hidden: jax.Array) -> jax.Array:
    """The text head alone: final-normed hidden [B,T,H] -> float32 text logits [B,T,V]."""
    return FLMAudio(config).apply({"params": params}, hidden, method=FLMAudio.text_logits)


def embed(
    config: ModelConfig, params: Params, text_ids: jax.Array, speak_ids: jax.Array, listen_ids: jax.Array
) -> jax.Array:
    """The multimodal embedding alone: [B,T,H] (after muP's input_mult)."""
    return FLMAudio(config).apply({"params": params}, text_ids, speak_ids, listen_ids, method=FLMAudio.embed)


def init_cache(config: ModelConfig, batch_size: int, max_frames: int, dtype: Any = None) -> KVCache:
    """An empty KV cache for `max_frames` frames per session; `length` counts the frames already cached."""
    shape = (config.num_hidden_layers, batch_size, max_frames, config.num_key_value_heads, config.head_dim)
    dtype = config.jnp_dtype if dtype is None else dtype
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype), "length": jnp.zeros((batch_size,), jnp.int32)}


def forward_cached(
    config: ModelConfig,
    params: Params,
    cache: KVCache,
    text_ids: jax.Array,
    speak_ids: jax.Array,
    listen_ids: jax.Array,
) -> tuple[jax.Array, jax.Array, KVCache]:
    """Extends each session by T frames against its KV cache (a prefill when T > 1, a step when T == 1).

    The frames take positions `cache["length"] .. + T - 1` of each row. The caller keeps
    `length + T <= max_frames` (past it the write would be clamped: the streaming layer checks).
    Returns (text_logits [B,T,V], hidden [B,T,H], updated cache); the numbers equal `forward` on the whole
    sequence.
    """
    batch, frames = text_ids.shape
    positions = _positions(batch, frames, cache["length"])
    layers = {"k": cache["k"], "v": cache["v"]}
    text_logits, hidden, layers = FLMAudio(config).apply(
        {"params": params}, text_ids, speak_ids, listen_ids, positions, layers
    )
    return text_logits, hidden, {**layers, "length": cache["length"] + frames}


def depth_forward(config: ModelConfig, params: Params, hidden: jax.Array, audio_prefix: jax.Array) -> jax.Array:
    """Depth transformer over a prefix of k known codebooks (0 <= k <= C - 1).

    hidden [..., H] (final-normed temporal state), audio_prefix [..., k] (codebooks 0..k-1)
    -> float32 logits [..., k+1, A]; position j predicts codebook j. With k = C - 1 and the target codes as
    the prefix, this is the teacher-forced training pass.
    """
    prefix_len = audio_prefix.shape[-1]
    if not 0 <= prefix_len < config.aud_channel:
        raise ValueError(f"audio_prefix holds {prefix_len} codebooks; expected 0..{config.aud_channel - 1}")
    if audio_prefix.shape[:-1] != hidden.shape[:-1]:
        raise ValueError(f"hidden {hidden.shape} and audio_prefix {audio_prefix.shape} disagree on leading dims")
    lead = hidden.shape[:-1]
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])
    start = jnp.full((flat_hidden.shape[0], 1), config.aud_emp_id, jnp.int32)
    tokens = jnp.concatenate([start, audio_prefix.reshape(flat_hidden.shape[0], prefix_len).astype(jnp.int32)], axis=-1)
    logits = FLMAudio(config).apply({"params": params}, flat_hidden, tokens, method=FLMAudio.depth_logits)
    return logits.reshape(*lead, prefix_len + 1, -1)


def init_depth_cache(config: ModelConfig, batch_size: int, dtype: Any = None) -> KVCache:
    """An empty depth-transformer KV cache for one frame's codebooks: {"k","v": [depth_layers, N, C, heads, hd]}."""
    shape = (
        config.depth_layers,
        batch_size,
        config.aud_channel,
        config.depth_heads,
        config.depth_dim // config.depth_heads,
    )
    dtype = config.jnp_dtype if dtype is None else dtype
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


def depth_step(
    config: ModelConfig, params: Params, hidden: jax.Array, token: jax.Array, position: jax.Array, cache: KVCache
) -> tuple[jax.Array, KVCache]:
    """One position of the depth transformer against its KV cache (sequential codebook decoding).

    hidden [N,H] (final-normed temporal state), token [N] (`aud_emp` at position 0, else codebook position-1),
    position: a scalar 0..C-1 (may be traced) -> (float32 logits [N,A] of codebook `position`, updated cache).
    Equals position `position` of `depth_forward` with the same prefix.
    """
    logits, cache = FLMAudio(config).apply(
        {"params": params},
        hidden,
        token.astype(jnp.int32),
        jnp.asarray(position, jnp.int32),
        cache,
        method=FLMAudio.depth_step,
    )
    return logits[:, 0], cache


# ---------------------------------------------------------------------- layer layouts
def unstack_layers(params: Params, num_layers: int) -> Params:
    """Scanned layout (`temporal/layers`, leaves [L, ...]) -> unrolled layout (`temporal/layers_{i}`)."""
    temporal = dict(params["temporal"])
    stacked = temporal.pop("layers")
    for i in range(num_layers):
        temporal[f"layers_{i}"] = jax.tree.map(lambda leaf, i=i: leaf[i], stacked)
    return {**params, "temporal": temporal}


def stack_layers(params: Params) -> Params:
    """Unrolled layout (`temporal/layers_{i}`) -> scanned layout (`temporal/layers`, leaves [L, ...])."""
    temporal = dict(params["temporal"])
    names = sorted((k for k in temporal if k.startswith("layers_")), key=lambda k: int(k.split("_")[1]))
    layers = [temporal.pop(name) for name in names]
    temporal["layers"] = jax.tree.map(lambda *leaves: jnp.stack(leaves), *layers)
    return {**params, "temporal": temporal}
