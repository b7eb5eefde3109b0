"""The codec's transformer (moshi `ProjectedTransformer` with identity projections), batch and streaming.

Each layer is pre-norm: `x += layer_scale_1 * attn(norm1(x))`, then `x += layer_scale_2 * mlp(norm2(x))`, no
biases in the linears, no final norm. Attention is causal within a window of `context` steps, with
interleaved-pair RoPE on absolute positions. Param tree, per layer `layers_{i}`:

    {norm1/{scale, bias} [d], attn/{qkv [d, 3, heads, head_dim], out [heads, head_dim, d]}, layer_scale_1 [d],
     norm2/{scale, bias}, mlp/{fc1 [d, ffn], fc2 [ffn, d]}, layer_scale_2 [d]}

Batch mode (`Transformer.__call__`) masks `0 <= q - k < context`. Streaming (`Transformer.step`) keeps, per
layer, a ring buffer of `context` keys and values that the new steps are written into *before* attending
(moshi's `RingKVCache`): with 2 steps per call the first query of a call no longer sees the key `context - 1`
steps back, which batch mode does. So the two modes agree only over the first `context` steps; each matches its
own moshi counterpart throughout.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import linen as nn

from flmjax.codec.config import MimiConfig
from flmjax.codec.layers import PRECISIONS, declare


def apply_rope(x: jax.Array, positions: jax.Array, max_period: float) -> jax.Array:
    """Rotates interleaved pairs (x[2i], x[2i+1]) by `t * max_period^(-2i/head_dim)`, as moshi does.

    x: [batch, time, heads, head_dim]; positions: [batch, time] absolute steps.
    """
    head_dim = x.shape[-1]
    # moshi's exact float32 formula (exp of a scaled arange, not a power), so angles match bit for bit.
    freqs = jnp.exp(jnp.arange(head_dim // 2, dtype=jnp.float32) * jnp.float32(-math.log(max_period) * 2 / head_dim))
    angles = positions.astype(jnp.float32)[:, :, None, None] * freqs  # [batch, time, 1, head_dim / 2]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    pairs = x.reshape(*x.shape[:-1], head_dim // 2, 2)
    real, imag = pairs[..., 0], pairs[..., 1]
    rotated = jnp.stack([real * cos - imag * sin, real * sin + imag * cos], axis=-1)
    return rotated.reshape(x.shape)


def _attend(query: jax.Array, key: jax.Array, value: jax.Array, mask: jax.Array, precision) -> jax.Array:
    """query [b, h, q, d], key/value [b, h, s, d], mask [b, q, s] -> [b, h, q, d].

    Heads-major layouts keep both products plain batched matmuls (3x faster on XLA:CPU than `bqhd`).
    """
    scores = jnp.einsum("bhqd,bhsd->bhqs", query, key, precision=precision) * (query.shape[-1] ** -0.5)
    scores = jnp.where(mask[:, None], scores, -jnp.inf)
    probs = jax.nn.softmax(scores, axis=-1)
    return jnp.einsum("bhqs,bhsd->bhqd", probs, value, precision=precision)


def _ring_positions(end: jax.Array, capacity: int) -> jax.Array:
    """Step held by each ring slot once `end [batch]` steps are written: [batch, capacity], -1 if none yet."""
    slots = jnp.arange(capacity)
    last = end[:, None] - 1
    positions = last - jnp.mod(last - slots[None, :], capacity)
    return jnp.where(positions >= 0, positions, -1)


def _write_ring(ring: jax.Array, update: jax.Array, offset: jax.Array) -> jax.Array:
    """ring [batch, heads, capacity, d] with update [batch, heads, time, d] written at slots
    (offset + i) % capacity."""
    slots = jnp.mod(offset[:, None] + jnp.arange(update.shape[2])[None, :], ring.shape[2])
    return jax.vmap(lambda r, s, u: r.at[:, s].set(u))(ring, slots, update)


class LayerNorm(nn.Module):
    """LayerNorm over the last axis (biased variance): params scale, bias [features]."""

    eps: float

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = declare(self, "scale", (x.shape[-1],), mean=1.0)
        bias = declare(self, "bias", (x.shape[-1],))
        mean = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
        return (x - mean) * jax.lax.rsqrt(var + self.eps) * scale + bias


class Attention(nn.Module):
    """Windowed causal self-attention with RoPE: params qkv [d, 3, heads, head_dim], out [heads, head_dim, d]."""

    config: MimiConfig

    @nn.compact
    def __call__(
        self, x: jax.Array, positions: jax.Array, cache: dict | None = None, offset: jax.Array | None = None
    ) -> tuple[jax.Array, dict | None]:
        """x [batch, time, d] at absolute steps positions [batch, time] -> (out [batch, time, d], new cache).

        Batch mode without `cache`; streaming with `cache` {"k", "v": [batch, heads, context, head_dim]}, the
        ring, and `offset [batch]`, the steps written to it so far.
        """
        cfg, precision = self.config, PRECISIONS[self.config.precision]
        batch, time, d = x.shape
        qkv_kernel = declare(self, "qkv", (d, 3, cfg.num_heads, cfg.head_dim), std=d**-0.5)
        out_kernel = declare(self, "out", (cfg.num_heads, cfg.head_dim, d), std=d**-0.5)
        # Flattened kernels: one plain matmul each (a 5-d einsum output layout is 3x slower on XLA:CPU).
        qkv = jnp.dot(x, qkv_kernel.reshape(d, -1), precision=precision)
        qkv = qkv.reshape(batch, time, 3, cfg.num_heads, cfg.head_dim)
        query = apply_rope(qkv[:, :, 0], positions, cfg.max_period).transpose(0, 2, 1, 3)  # [b, h, t, hd]
        key = apply_rope(qkv[:, :, 1], positions, cfg.max_period).transpose(0, 2, 1, 3)
        value = qkv[:, :, 2].transpose(0, 2, 1, 3)
        if cache is None:
            key_positions = positions
        else:
            cache = {"k": _write_ring(cache["k"], key, offset), "v": _write_ring(cache["v"], value, offset)}
            key, value = cache["k"], cache["v"]
            key_positions = _ring_positions(offset + time, cfg.context)
        delta = positions[:, :, None] - key_positions[:, None, :]
        mask = (key_positions[:, None, :] >= 0) & (delta >= 0) & (delta < cfg.context)
        attended = _attend(query, key, value, mask, precision).transpose(0, 2, 1, 3).reshape(batch, time, d)
        return jnp.dot(attended, out_kernel.reshape(d, d), precision=precision), cache


class MLP(nn.Module):
    """`fc2(gelu(fc1(x)))`, exact GELU, no biases: params fc1 [d, ffn], fc2 [ffn, d]."""

    config: MimiConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x [batch, time, d] -> [batch, time, d]."""
        cfg, precision = self.config, PRECISIONS[self.config.precision]
        d, ffn = x.shape[-1], cfg.dim_feedforward
        fc1 = declare(self, "fc1", (d, ffn), std=d**-0.5)
        fc2 = declare(self, "fc2", (ffn, d), std=ffn**-0.5)
        h = jax.nn.gelu(jnp.einsum("btd,df->btf", x, fc1, precision=precision), approximate=False)
        return jnp.einsum("btf,fd->btd", h, fc2, precision=precision)


class TransformerLayer(nn.Module):
    """One pre-norm layer with layer scales (init 0.01, as moshi): x [batch, time, d] -> [batch, time, d]."""

    config: MimiConfig

    @nn.compact
    def __call__(
        self, x: jax.Array, positions: jax.Array, cache: dict | None = None, offset: jax.Array | None = None
    ) -> tuple[jax.Array, dict | None]:
        """See `Attention` for positions, cache and offset; returns (output, new cache)."""
        cfg, d = self.config, x.shape[-1]
        attended, cache = Attention(cfg, name="attn")(
            LayerNorm(cfg.layer_norm_eps, name="norm1")(x), positions, cache, offset
        )
        x = x + declare(self, "layer_scale_1", (d,), mean=0.01) * attended
        h = MLP(cfg, name="mlp")(LayerNorm(cfg.layer_norm_eps, name="norm2")(x))
        return x + declare(self, "layer_scale_2", (d,), mean=0.01) * h, cache


class Transformer(nn.Module):
    """`num_layers` layers `layers_{i}` over x [batch, time, dimension], in batch or streaming mode."""

    config: MimiConfig

    def setup(self):
        self.layers = [TransformerLayer(self.config) for _ in range(self.config.num_layers)]

    def init_state(self, batch_size: int) -> dict:
        """Fresh streaming state: per-layer rings {"k", "v": [batch, heads, context, head_dim]}, and `offset
        [batch]`, the steps seen so far (slot `p % context` holds step `p`)."""
        cfg = self.config
        shape = (batch_size, cfg.num_heads, cfg.context, cfg.head_dim)
        layers = [{"k": jnp.zeros(shape), "v": jnp.zeros(shape)} for _ in range(cfg.num_layers)]
        return {"layers": layers, "offset": jnp.zeros((batch_size,), jnp.int32)}

    def __call__(self, x: jax.Array) -> jax.Array:
        """Batch mode: x [batch, time, d] from step 0 -> [batch, time, d]."""
        positions = jnp.broadcast_to(jnp.arange(x.shape[1], dtype=jnp.int32), x.shape[:2])
        for layer in self.layers:
            x, _ = layer(x, positions)
        return x

    def step(self, x: jax.Array, cache: dict) -> tuple[jax.Array, dict]:
        """Streaming: the next steps x [batch, time, d] (time <= context) -> (output, new cache)."""
        offset = cache["offset"]
        positions = offset[:, None] + jnp.arange(x.shape[1], dtype=jnp.int32)[None, :]
        layers = []
        for layer, layer_cache in zip(self.layers, cache["layers"]):
            x, layer_cache = layer(x, positions, layer_cache, offset)
            layers.append(layer_cache)
        return x, {"layers": layers, "offset": offset + x.shape[1]}
