"""FLM-Audio in Flax Linen, and the pure functions that run it.

Shapes: `B` batch, `T` frames, `C` codebooks (8), `H` hidden, `V` text vocabulary, `A` audio vocabulary,
`D` depth width, `L` temporal layers. Param tree (canonical, `scan_layers=True`):

    embedder/{text [V,H], speak [C,A,H], listen [C,A,H]}
    temporal/layers/{input_norm, attn, post_attn_norm, mlp}/...   leaves stacked [L, ...]
    temporal/final_norm/scale [H]
    text_head/kernel [H,V]
    depth/{linear_in [H,C,D], token_embed [C,A,D], pos_embed [C,D], blocks/... [depth_layers, ...],
           final_norm, heads [C,D,A]}

With `scan_layers=False` the temporal layers live under `temporal/layers_{i}` instead (`unstack_layers` and
`stack_layers` convert). The public functions are pure: params in, arrays out, nothing else touched.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from flmjax.config import ModelConfig
from flmjax.layers import (
    ATTENTION_NAMES,
    Attention,
    FeedForward,
    FusedAttention,
    LayerNorm,
    RMSNorm,
    declare,
    normal_init,
)

Params = Any
KVCache = dict[str, jax.Array]  # {"k", "v": [L, B, S, kv_heads, head_dim], "length": [B] int32}

_REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "attention": jax.checkpoint_policies.save_only_these_names(*ATTENTION_NAMES),
}


def _module_dtypes(config: ModelConfig) -> dict[str, Any]:
    return {"dtype": config.jnp_dtype, "param_dtype": config.jnp_param_dtype}


class ConfiguredModule(nn.Module):
    """A module whose own params take their dtype from the model config."""

    config: ModelConfig

    @property
    def param_dtype(self):
        return self.config.jnp_param_dtype


class Embedder(ConfiguredModule):
    """Sum of the text embedding and the 16 audio embeddings (8 speak, 8 listen) of one frame."""

    @nn.compact
    def __call__(self, text_ids: jax.Array, speak_ids: jax.Array, listen_ids: jax.Array) -> jax.Array:
        """text_ids [B,T], speak_ids/listen_ids [B,T,C] -> embeddings [B,T,H] (muP input_mult applied)."""
        cfg, dtype = self.config, self.config.jnp_dtype
        init = normal_init(cfg.initializer_range)
        text = declare(self, "text", (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), init)
        audio_shape = (cfg.aud_channel, cfg.aud_vocab_size, cfg.hidden_size)
        audio_axes = ("codebook", "audio_vocab", "embed")
        speak = declare(self, "speak", audio_shape, audio_axes, init)
        listen = declare(self, "listen", audio_shape, audio_axes, init)
        codebooks = jnp.arange(cfg.aud_channel)
        x = jnp.take(text, text_ids, axis=0).astype(dtype)
        x = x + jnp.sum(speak[codebooks, speak_ids].astype(dtype), axis=-2)
        x = x + jnp.sum(listen[codebooks, listen_ids].astype(dtype), axis=-2)
        if cfg.use_mup:
            x = x * jnp.asarray(cfg.embedding_scale, dtype)
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class DecoderLayer(nn.Module):
    """One pre-norm Qwen2 layer: attention then gated MLP, each with a residual."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array, cache: dict | None, positions: jax.Array):
        cfg, dtypes = self.config, _module_dtypes(self.config)
        pdtype = {"param_dtype": cfg.jnp_param_dtype}
        attn_out, cache = Attention(
            num_heads=cfg.num_attention_heads,
            num_kv_heads=cfg.num_key_value_heads,
            head_dim=cfg.head_dim,
            rope_theta=cfg.rope_theta,
            qkv_bias=cfg.attention_bias,
            out_bias=cfg.o_proj_bias,
            init_std=cfg.initializer_range,
            chunk=cfg.attention_chunk,
            name="attn",
            **dtypes,
        )(RMSNorm(cfg.rms_norm_eps, name="input_norm", **pdtype)(x), positions, cache)
        x = x + attn_out
        mlp = FeedForward(
            hidden_dim=cfg.intermediate_size,
            activation=cfg.hidden_act,
            gated=True,
            use_bias=cfg.mlp_bias,
            init_std=cfg.initializer_range,
            name="mlp",
            **dtypes,
        )
        x = x + mlp(RMSNorm(cfg.rms_norm_eps, name="post_attn_norm", **pdtype)(x))
        return nn.with_logical_constraint(x, ("batch", "length", "embed")), cache


def _rematted(config: ModelConfig, layer: type[nn.Module], scanned: bool) -> type[nn.Module]:
    """`layer` under the config's remat policy (`none`: as it is)."""
    if config.remat_policy == "none":
        return layer
    return nn.remat(layer, policy=_REMAT_POLICIES[config.remat_policy], prevent_cse=not scanned)


class TemporalTransformer(nn.Module):
    """The decoder stack and its final RMSNorm; layers scanned (stacked params) or unrolled."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array, positions: jax.Array, cache: dict | None = None):
        """x [B,T,H], positions [B,T], cache {"k","v": [L,B,S,kv,hd]} or None -> (final-normed [B,T,H], cache)."""
        cfg = self.config
        layer = _rematted(cfg, DecoderLayer, cfg.scan_layers)
        if cfg.scan_layers:
            stack = nn.scan(
                layer,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                in_axes=(0, nn.broadcast),
                length=cfg.num_hidden_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
                unroll=cfg.scan_unroll,
            )
            x, cache = stack(cfg, name="layers")(x, cache, positions)
        else:
            new_layers = []
            for i in range(cfg.num_hidden_layers):
                layer_cache = None if cache is None else jax.tree.map(lambda c, i=i: c[i], cache)
                x, layer_cache = layer(cfg, name=f"layers_{i}")(x, layer_cache, positions)
                new_layers.append(layer_cache)
            cache = None if cache is None else jax.tree.map(lambda *cs: jnp.stack(cs), *new_layers)
        x = RMSNorm(cfg.rms_norm_eps, name="final_norm", param_dtype=cfg.jnp_param_dtype)(x)
        # Pinned, so that in the backward pass the gradient arriving from the depth model (split over every
        # device) is brought back to the batch layout here, not propagated into the layers' backward loop.
        return nn.with_logical_constraint(x, ("batch", "length", "embed")), cache


class TextHead(ConfiguredModule):
    """`lm_head`: final-normed hidden [B,T,H] -> float32 text logits [B,T,V] (muP output scale applied)."""

    @nn.compact
    def __call__(self, hidden: jax.Array) -> jax.Array:
        cfg = self.config
        kernel = declare(
            self, "kernel", (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"), normal_init(cfg.initializer_range)
        )
        logits = jnp.einsum("bth,hv->btv", hidden, kernel.astype(hidden.dtype)).astype(jnp.float32)
        if cfg.use_mup:
            logits = logits * cfg.text_logit_scale
        return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))


def depth_norm(config: ModelConfig, name: str) -> nn.Module:
    """The depth model's norm: RMSNorm (eps 1e-6) or LayerNorm (eps 1e-5, bias iff `bias`)."""
    if config.depth_rmsnorm:
        return RMSNorm(1e-6, axis_name="depth_embed", name=name, param_dtype=config.jnp_param_dtype)
    return LayerNorm(1e-5, use_bias=config.depth_bias, name=name, param_dtype=config.jnp_param_dtype)


class DepthBlock(nn.Module):
    """One DepthGPT block: `x += attn(ln_1(x))`, `x += mlp_j(ln_2(x))`."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array, cache: dict | None, position: jax.Array | None):
        """x [N, positions, D] (all positions), or the one at `position` [N, 1, D] with this layer's `cache`."""
        cfg, dtypes = self.config, _module_dtypes(self.config)
        attention = FusedAttention(cfg.depth_heads, cfg.depth_bias, cfg.initializer_range, name="attn", **dtypes)
        normed = depth_norm(cfg, "attn_norm")(x)
        if cache is None:
            attended = attention(normed)
        else:
            attended, cache = attention(normed, position, cache)
        x = x + attended
        mlp = FeedForward(
            hidden_dim=cfg.depth_mlp_dim,
            activation="silu" if cfg.depth_swiglu else "gelu",
            gated=cfg.depth_swiglu,
            use_bias=cfg.depth_bias,
            init_std=cfg.initializer_range,
            num_positions=cfg.aud_channel if cfg.depth_per_position_mlp else None,
            embed_axis="depth_embed",
            mlp_axis="depth_mlp",
            name="mlp",
            **dtypes,
        )
        x = x + mlp(depth_norm(cfg, "mlp_norm")(x), position)
        return nn.with_logical_constraint(x, ("depth_batch", None, None)), cache


class DepthTransformer(ConfiguredModule):
    """DepthGPT: predicts a frame's codebooks one after another from the temporal hidden state."""

    @nn.compact
    def __call__(
        self, hidden: jax.Array, tokens: jax.Array, position: jax.Array | None = None, cache: dict | None = None
    ):
        """Teacher-forced: hidden [N,H], tokens [N,n] (`aud_emp` then codebooks 0..n-2) -> float32 logits [N,n,A].

        One step (`position` j, a scalar, and `cache` {"k","v": [depth_layers, N, C, heads, head_dim]}):
        tokens [N,1] (the token at position j) -> (float32 logits [N,1,A] of codebook j, updated cache). The same
        numbers as position j of the teacher-forced pass, reading only position j's per-position weights.
        """
        cfg, dtype = self.config, self.config.jnp_dtype
        init = normal_init(cfg.initializer_range)
        channels, width, positions = cfg.aud_channel, cfg.depth_dim, tokens.shape[-1]
        linear_in = declare(
            self, "linear_in", (cfg.hidden_size, channels, width), ("embed", "codebook", "depth_embed"), init
        )
        token_embed = declare(
            self, "token_embed", (channels, cfg.aud_vocab_size, width), ("codebook", "audio_vocab", "depth_embed"), init
        )
        pos_embed = declare(self, "pos_embed", (channels, width), ("codebook", "depth_embed"), init)
        heads = declare(
            self, "heads", (channels, width, cfg.aud_vocab_size), ("codebook", "depth_embed", "audio_vocab"), init
        )
        if position is None:
            used = jnp.arange(positions)

            def at_positions(weights, axis=0):
                return jax.lax.slice_in_dim(weights, 0, positions, axis=axis)
        else:
            used = jnp.reshape(position, (1,))

            def at_positions(weights, axis=0):
                return jax.lax.dynamic_slice_in_dim(weights, position, 1, axis=axis)

        x = jnp.einsum("nh,hcd->ncd", hidden.astype(dtype), at_positions(linear_in, axis=1).astype(dtype))
        x = x + token_embed[used, tokens].astype(dtype) + at_positions(pos_embed).astype(dtype)
        # N is the flattened [batch, frames] (or the stream's slots). Split it over every device that shares
        # the batch (`depth_batch`), or the partitioner replicates the depth activations of the global batch
        # on each chip, or recomputes them on every tensor-parallel chip.
        x = nn.with_logical_constraint(x, ("depth_batch", None, None))
        # Stacked params, but the loop fully unrolled: its few small blocks compile quickly, and XLA's cost
        # analysis, which counts a loop body once, then sees every block.
        blocks = nn.scan(
            _rematted(cfg, DepthBlock, scanned=True),
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=(0, nn.broadcast),
            length=cfg.depth_layers,
            metadata_params={nn.PARTITION_NAME: "layers"},
            unroll=cfg.depth_layers,
        )
        x, cache = blocks(cfg, name="blocks")(x, cache, position)
        x = depth_norm(cfg, "final_norm")(x)
        logits = jnp.einsum("npd,pda->npa", x, at_positions(heads).astype(dtype)).astype(jnp.float32)
        logits = nn.with_logical_constraint(logits, ("depth_batch", None, None))
        return logits if position is None else (logits, cache)


class FLMAudio(nn.Module):
    """The whole model: embedding, temporal transformer, text head and depth transformer."""

    config: ModelConfig

    def setup(self):
        self.embedder = Embedder(self.config)
        self.temporal = TemporalTransformer(self.config)
        self.text_head = TextHead(self.config)
        self.depth = DepthTransformer(self.config)

    def __call__(self, text_ids, speak_ids, listen_ids, positions, cache=None):
        hidden, cache = self.temporal(self.embedder(text_ids, speak_ids, listen_ids), positions, cache)
        return self.text_head(hidden), hidden, cache

    def embed(self, text_ids, speak_ids, listen_ids):
        return self.embedder(text_ids, speak_ids, listen_ids)

    def hidden_states(self, text_ids, speak_ids, listen_ids, positions):
        return self.temporal(self.embedder(text_ids, speak_ids, listen_ids), positions)[0]

    def text_logits(self, hidden):
        return self.text_head(hidden)

    def depth_logits(self, hidden, tokens):
        return self.depth(hidden, tokens)

    def depth_step(self, hidden, token, position, cache):
        return self.depth(hidden, token[:, None], position, cache)

    def initialize(self, text_ids, speak_ids, listen_ids, positions):
        """Touches every submodule once, so that `init` creates every parameter."""
        text_logits, hidden, _ = self(text_ids, speak_ids, listen_ids, positions)
        tokens = jnp.full(hidden.shape[:1] + (self.config.aud_channel,), self.config.aud_emp_id, jnp.int32)
        return text_logits, self.depth(hidden[:, 0], tokens)


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
