"""FLM-Audio's architecture as Flax Linen modules: the multimodal embedder, the temporal transformer, the text
head and the depth transformer (DepthGPT), composed in `FLMAudio`.

Shapes: `B` batch, `T` frames, `C` codebooks (8), `H` hidden, `V` text vocabulary, `A` audio vocabulary,
`D` depth width, `L` temporal layers. Param tree (canonical, `scan_layers=True`):

    embedder/{text [V,H], speak [C,A,H], listen [C,A,H]}
    temporal/layers/{input_norm, attn, post_attn_norm, mlp}/...   leaves stacked [L, ...]
    temporal/final_norm/scale [H]
    text_head/kernel [H,V]
    depth/{linear_in [H,C,D], token_embed [C,A,D], pos_embed [C,D], blocks/... [depth_layers, ...],
           final_norm, heads [C,D,A]}

With `scan_layers=False` the temporal layers live under `temporal/layers_{i}` instead (`flmjax.model`'s
`unstack_layers` and `stack_layers` convert). The modules are run through the pure functions of `flmjax.model`
(params in, arrays out).
"""

from __future__ import annotations

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
        """Teacher-forced: hidden [N,H], tokens [N,n] (`aud_emp` then codebooks 0..n-2) -> (float32 logits [N,n,A],
        None).

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
        return logits, cache


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
        return self.depth(hidden, tokens)[0]

    def depth_step(self, hidden, token, position, cache):
        return self.depth(hidden, token[:, None], position, cache)

    def initialize(self, text_ids, speak_ids, listen_ids, positions):
        """Touches every submodule once, so that `init` creates every parameter."""
        text_logits, hidden, _ = self(text_ids, speak_ids, listen_ids, positions)
        tokens = jnp.full(hidden.shape[:1] + (self.config.aud_channel,), self.config.aud_emp_id, jnp.int32)
        return text_logits, self.depth(hidden[:, 0], tokens)[0]
