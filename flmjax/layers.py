"""Building blocks: norms, rotary embeddings, attention with an optional KV cache, feed-forward layers.

Kernels are declared with explicit multi-dimensional shapes (`q` kernel `[embed, heads, head_dim]`) and logical
axis names, and applied with `jnp.einsum`. Numerics follow REFERENCE.md: norms in float32 then cast back to the
input dtype before the weight, attention softmax in float32, everything else in the compute dtype.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax.ad_checkpoint import checkpoint_name

Axes = Sequence[str | None]
# Names of the attention's values that the "attention" remat policy keeps for the backward pass.
ATTENTION_NAMES = ("attention_q", "attention_k", "attention_v", "attention_out")

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "silu": nn.silu,
    "swish": nn.silu,
    "gelu": lambda x: nn.gelu(x, approximate=False),
    "gelu_new": lambda x: nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: nn.gelu(x, approximate=True),
    "relu": nn.relu,
}


def declare(
    module: nn.Module, name: str, shape: Sequence[int], axes: Axes, init: Callable = nn.initializers.zeros_init()
) -> jax.Array:
    """A parameter of `module.param_dtype` carrying logical axis names."""
    if len(axes) != len(shape):
        raise ValueError(f"{name}: {len(shape)} dims but {len(axes)} axis names")
    return module.param(name, nn.with_logical_partitioning(init, tuple(axes)), tuple(shape), module.param_dtype)


def normal_init(stddev: float) -> Callable:
    return nn.initializers.normal(stddev=stddev)


class RMSNorm(nn.Module):
    """`weight * cast(x * rsqrt(mean(x^2) + eps))`, the normalisation done in float32."""

    eps: float
    axis_name: str = "embed"
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = declare(self, "scale", (x.shape[-1],), (self.axis_name,), nn.initializers.ones_init())
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        return scale.astype(x.dtype) * normed.astype(x.dtype)


class LayerNorm(nn.Module):
    """Standard LayerNorm (biased variance) in float32, cast back, then the affine weight (and bias)."""

    eps: float = 1e-5
    use_bias: bool = True
    axis_name: str = "depth_embed"
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = x.shape[-1]
        scale = declare(self, "scale", (features,), (self.axis_name,), nn.initializers.ones_init())
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        out = ((x32 - mean) * jax.lax.rsqrt(var + self.eps)).astype(x.dtype) * scale.astype(x.dtype)
        if self.use_bias:
            out = out + declare(self, "bias", (features,), (self.axis_name,)).astype(x.dtype)
        return out


def apply_rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Half-split ("rotate_half") rotary embedding.

    x: [batch, length, heads, head_dim]; positions: [batch, length] absolute frame indices.
    """
    head_dim = x.shape[-1]
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [batch, length, head_dim / 2]
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(angles).astype(x.dtype), jnp.sin(angles).astype(x.dtype)
    first, second = jnp.split(x, 2, axis=-1)
    rotated = jnp.concatenate([-second, first], axis=-1)
    return x * cos + rotated * sin


def dot_product_attention(query: jax.Array, key: jax.Array, value: jax.Array, mask: jax.Array) -> jax.Array:
    """Grouped-query attention with a float32 softmax.

    query: [batch, q_len, heads, head_dim]; key, value: [batch, kv_len, kv_heads, head_dim];
    mask: [batch, q_len, kv_len] (True = may attend). Query head `j * g + i` uses kv head `j`.
    Returns [batch, q_len, heads, head_dim].
    """
    batch, q_len, heads, head_dim = query.shape
    kv_heads = key.shape[2]
    grouped = query.reshape(batch, q_len, kv_heads, heads // kv_heads, head_dim)
    scores = jnp.einsum("bqkgd,bskd->bkgqs", grouped, key, preferred_element_type=jnp.float32)
    scores = scores.astype(jnp.float32) * (head_dim**-0.5)
    scores = jnp.where(mask[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(value.dtype)
    out = jnp.einsum("bkgqs,bskd->bqkgd", probs, value)
    return out.reshape(batch, q_len, heads, head_dim)


def chunked_causal_attention(
    query: jax.Array, key: jax.Array, value: jax.Array, positions: jax.Array, chunk: int
) -> jax.Array:
    """`dot_product_attention` with the causal mask of `positions`, one block of `chunk` queries at a time.

    Block i attends only to the keys up to its own last position (positions must not decrease along the
    sequence, as in a training pass or a prefill), so the masked upper triangle is never computed, and each
    block is rematerialised: the backward pass recomputes its scores instead of keeping [q_len, kv_len]
    scores per layer. Shapes as `dot_product_attention`; positions [batch, length].
    """
    length = query.shape[1]
    attend = jax.checkpoint(dot_product_attention)
    blocks = []
    for start in range(0, length, chunk):  # a Python loop: each block has its own key length
        end = min(start + chunk, length)
        mask = positions[:, None, :end] <= positions[:, start:end, None]
        blocks.append(attend(query[:, start:end], key[:, :end], value[:, :end], mask))
    return jnp.concatenate(blocks, axis=1)


def few_position_attention(query: jax.Array, key: jax.Array, value: jax.Array, mask: jax.Array) -> jax.Array:
    """`dot_product_attention` (same numbers, one kv head per query head) for a handful of positions.

    The depth transformer attends over 8 positions: as matmuls, every (row, head) pair is an 8 x 64 by 64 x 8
    product that a TPU pads to its 128 x 128 matrix unit, which costs more than the rest of the depth model.
    Written as broadcast products summed in float32 (what the matrix unit accumulates in), it stays on the
    vector units. query [batch, q_len, heads, head_dim]; key, value [batch, kv_len, heads, head_dim];
    mask [batch, q_len, kv_len] -> [batch, q_len, heads, head_dim].
    """
    f32 = jnp.float32
    head_dim = query.shape[-1]
    scores = jnp.sum(query.astype(f32)[:, :, None] * key.astype(f32)[:, None], axis=-1)  # [b, q, s, heads]
    scores = jnp.where(mask[..., None], scores * (head_dim**-0.5), jnp.finfo(f32).min)
    probs = jax.nn.softmax(scores, axis=2).astype(value.dtype)
    out = jnp.sum(probs.astype(f32)[..., None] * value.astype(f32)[:, None], axis=2)  # [b, q, heads, head_dim]
    return out.astype(value.dtype)


def write_to_cache(cache: jax.Array, update: jax.Array, start: jax.Array) -> jax.Array:
    """Writes `update [batch, length, ...]` into `cache [batch, capacity, ...]` at per-row `start [batch]`."""

    def write_row(row, new, index):
        return jax.lax.dynamic_update_slice_in_dim(row, new.astype(row.dtype), index, axis=0)

    return jax.vmap(write_row)(cache, update, start)


class Attention(nn.Module):
    """Causal grouped-query self-attention of the temporal transformer, with RoPE and an optional KV cache."""

    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float
    qkv_bias: bool
    out_bias: bool
    init_std: float
    chunk: int = 0  # queries per block of a cache-less pass (0: one block); see `chunked_causal_attention`
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, positions: jax.Array, cache: dict | None = None):
        """x: [batch, length, embed]; positions: [batch, length].

        `cache` (optional): {"k", "v": [batch, capacity, kv_heads, head_dim]}, slot `s` holding frame position
        `s` (or, once a one-frame-at-a-time stream passes the capacity, the latest position `= s mod capacity`);
        the new keys and values are written at `positions[:, 0] % capacity`, and each query attends to every
        slot at or before its own position (all of them, past the capacity). Returns (output [batch, length, embed],
        updated cache or None).
        """
        embed = x.shape[-1]
        init = normal_init(self.init_std)

        def project(name, heads, axis):
            kernel = declare(self, f"{name}_kernel", (embed, heads, self.head_dim), ("embed", axis, "head_dim"), init)
            y = jnp.einsum("ble,ehd->blhd", x, kernel.astype(self.dtype))
            if self.qkv_bias:
                y = y + declare(self, f"{name}_bias", (heads, self.head_dim), (axis, "head_dim")).astype(self.dtype)
            return y

        query = checkpoint_name(
            apply_rope(project("q", self.num_heads, "heads"), positions, self.rope_theta), "attention_q"
        )
        key = checkpoint_name(
            apply_rope(project("k", self.num_kv_heads, "kv_heads"), positions, self.rope_theta), "attention_k"
        )
        value = checkpoint_name(project("v", self.num_kv_heads, "kv_heads"), "attention_v")

        if cache is None and 0 < self.chunk < x.shape[1]:
            attended = chunked_causal_attention(query, key, value, positions, self.chunk)
            new_cache = None
        elif cache is None:
            mask = positions[:, None, :] <= positions[:, :, None]
            attended = dot_product_attention(query, key, value, mask)
            new_cache = None
        else:
            # Modulo capacity: past the end a streaming cache is a ring (sliding window); below it this is
            # `positions[:, 0]`. Keys are rotated before caching, so a ring's order does not matter.
            start = positions[:, 0] % cache["k"].shape[1]
            new_cache = {"k": write_to_cache(cache["k"], key, start), "v": write_to_cache(cache["v"], value, start)}
            key, value = new_cache["k"].astype(self.dtype), new_cache["v"].astype(self.dtype)
            slots = jnp.arange(key.shape[1])
            mask = slots[None, None, :] <= positions[:, :, None]
            attended = dot_product_attention(query, key, value, mask)

        attended = checkpoint_name(attended, "attention_out")
        out_kernel = declare(
            self, "o_kernel", (self.num_heads, self.head_dim, embed), ("heads", "head_dim", "embed"), init
        )
        out = jnp.einsum("blhd,hde->ble", attended, out_kernel.astype(self.dtype))
        if self.out_bias:
            out = out + declare(self, "o_bias", (embed,), ("embed",)).astype(self.dtype)
        return out, new_cache


class FeedForward(nn.Module):
    """A gated (`down(act(gate(x)) * up(x))`) or plain (`c_proj(act(c_fc(x)))`) MLP.

    With `num_positions`, each of the positions along the input's second-to-last axis has its own weights
    (stacked on a leading `codebook` axis); an input with fewer positions uses the first ones.
    """

    hidden_dim: int
    activation: str
    gated: bool
    use_bias: bool
    init_std: float
    num_positions: int | None = None
    embed_axis: str = "embed"
    mlp_axis: str = "mlp"
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def _linear(
        self,
        name: str,
        x: jax.Array,
        features_in: int,
        features_out: int,
        axes_in_out: Axes,
        position: jax.Array | None,
    ):
        lead = () if self.num_positions is None else (self.num_positions,)
        lead_axes = () if self.num_positions is None else ("codebook",)

        def positions_used(weights):  # the first x.shape[-2] positions, or the one at `position`
            if position is None:
                return weights[: x.shape[-2]]
            return jax.lax.dynamic_slice_in_dim(weights, position, 1, axis=0)

        kernel = declare(
            self,
            f"{name}_kernel",
            (*lead, features_in, features_out),
            (*lead_axes, *axes_in_out),
            normal_init(self.init_std),
        ).astype(self.dtype)
        if self.num_positions is None:
            y = jnp.einsum("...i,io->...o", x, kernel)
        else:
            y = jnp.einsum("...pi,pio->...po", x, positions_used(kernel))
        if self.use_bias:
            bias = declare(self, f"{name}_bias", (*lead, features_out), (*lead_axes, axes_in_out[1]))
            bias = bias.astype(self.dtype)
            y = y + (bias if self.num_positions is None else positions_used(bias))
        return y

    @nn.compact
    def __call__(self, x: jax.Array, position: jax.Array | None = None) -> jax.Array:
        """x [..., positions, embed]; with per-position weights and `position` (a scalar, traced or not), x holds
        that one position ([..., 1, embed]) and uses its weights."""
        embed, act = x.shape[-1], ACTIVATIONS[self.activation]
        inner_axes, outer_axes = (self.embed_axis, self.mlp_axis), (self.mlp_axis, self.embed_axis)
        if self.gated:
            hidden = act(self._linear("gate", x, embed, self.hidden_dim, inner_axes, position))
            hidden = hidden * self._linear("up", x, embed, self.hidden_dim, inner_axes, position)
        else:
            hidden = act(self._linear("fc", x, embed, self.hidden_dim, inner_axes, position))
        return self._linear("down", hidden, self.hidden_dim, embed, outer_axes, position)


class FusedAttention(nn.Module):
    """GPT-style causal self-attention (one fused `qkv` projection, no RoPE) of the depth transformer.

    x: [batch, positions, depth_embed] -> ([batch, positions, depth_embed], cache or None), as `Attention`.
    """

    num_heads: int
    use_bias: bool
    init_std: float
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, position: jax.Array | None = None, cache: dict | None = None):
        """Without a cache: causal attention over x's positions; returns (output, None).

        With `cache` {"k","v": [batch, positions, heads, head_dim]} and `position` (a scalar): x is the one new
        position [batch, 1, depth_embed]; its key and value are written at `position` and it attends to the
        cached positions up to it. Returns (output, updated cache).
        """
        width = x.shape[-1]
        head_dim = width // self.num_heads
        init = normal_init(self.init_std)
        qkv_kernel = declare(
            self,
            "qkv_kernel",
            (width, 3, self.num_heads, head_dim),
            ("depth_embed", None, "depth_heads", "head_dim"),
            init,
        )
        qkv = jnp.einsum("bpe,ethd->bpthd", x, qkv_kernel.astype(self.dtype))
        if self.use_bias:
            qkv = qkv + declare(
                self, "qkv_bias", (3, self.num_heads, head_dim), (None, "depth_heads", "head_dim")
            ).astype(self.dtype)
        query, key, value = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        if cache is None:
            length = x.shape[1]
            mask = jnp.broadcast_to(jnp.tril(jnp.ones((length, length), dtype=bool)), (x.shape[0], length, length))
        else:
            cache = {
                "k": jax.lax.dynamic_update_slice_in_dim(cache["k"], key.astype(cache["k"].dtype), position, 1),
                "v": jax.lax.dynamic_update_slice_in_dim(cache["v"], value.astype(cache["v"].dtype), position, 1),
            }
            key, value = cache["k"].astype(self.dtype), cache["v"].astype(self.dtype)
            mask = jnp.broadcast_to(jnp.arange(key.shape[1]) <= position, (x.shape[0], 1, key.shape[1]))
        attended = few_position_attention(query, key, value, mask)
        out_kernel = declare(
            self, "out_kernel", (self.num_heads, head_dim, width), ("depth_heads", "head_dim", "depth_embed"), init
        )
        out = jnp.einsum("bphd,hde->bpe", attended, out_kernel.astype(self.dtype))
        if self.use_bias:
            out = out + declare(self, "out_bias", (width,), ("depth_embed",)).astype(self.dtype)
        return out, cache
