"""Streaming convolutions of the codec: a causal conv and a transposed conv, Linen modules with explicit state.

Activations are channels-last, `[batch, time, channels]`. Each call takes the state left by the previous call
and returns the next one, so batch mode is one streaming call from a fresh state, as in moshi 0.2.13, and the
two modes cannot drift apart:

- `CausalConv` pads on the left only, by `K_eff - stride` frames taken from its state (`previous`), and keeps
  the last `K_eff - stride` input frames as the next state. A fresh state is zeros; with `replicate_first` it
  is the first input frame repeated (the 25 -> 12.5 Hz downsample).
- `ConvTranspose` computes the full transposed conv (`T*S + K - S` frames) by overlap-add, adds the carried
  `K - S` tail to its start, emits `T*S` frames and carries the rest (minus the bias) as the next tail.

Params are declared with `declare`, boxed with the distribution they are drawn from (`Normal`), so that
`init_params` can draw the same tree with numpy: kernels N(0, 1/fan_in) (activations keep roughly unit
scale), zero biases.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import struct

PRECISIONS = {
    "default": jax.lax.Precision.DEFAULT,
    "high": jax.lax.Precision.HIGH,
    "highest": jax.lax.Precision.HIGHEST,
}


class Normal(struct.PyTreeNode, nn.meta.AxisMetadata):
    """A param boxed (at init) with the N(mean, std^2) it is drawn from; a constant `mean` when std is 0."""

    value: Any
    mean: float = struct.field(pytree_node=False, default=0.0)
    std: float = struct.field(pytree_node=False, default=0.0)

    def unbox(self) -> Any:
        return self.value

    def replace_boxed(self, value: Any) -> "Normal":
        return self.replace(value=value)

    def add_axis(self, index: int, params: dict) -> "Normal":
        return self

    def remove_axis(self, index: int, params: dict) -> "Normal":
        return self


def declare(module: nn.Module, name: str, shape: tuple[int, ...], std: float = 0.0, mean: float = 0.0) -> jax.Array:
    """A float32 param of `module` drawn from N(mean, std^2)."""

    def init(key: jax.Array, shape: tuple[int, ...]) -> Normal:
        return Normal(mean + std * jax.random.normal(key, shape, jnp.float32), mean, std)

    return module.param(name, init, tuple(shape))


def conv_state_length(kernel_size: int, stride: int, dilation: int = 1) -> int:
    """Input frames a causal conv carries between calls: `K_eff - stride`."""
    return (kernel_size - 1) * dilation + 1 - stride


class CausalConv(nn.Module):
    """One causal Conv1d call. Params: kernel [K, in, features], bias [features] (with `use_bias`)."""

    features: int
    kernel_size: int
    stride: int = 1
    dilation: int = 1
    use_bias: bool = True
    precision: str = "highest"

    def init_state(self, batch_size: int, channels_in: int) -> jax.Array:
        """Fresh `previous`: zeros [batch, K_eff - stride, in]."""
        return jnp.zeros((batch_size, conv_state_length(self.kernel_size, self.stride, self.dilation), channels_in))

    @nn.compact
    def __call__(
        self, x: jax.Array, previous: jax.Array, replicate_first: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """x [batch, time, in] (time a multiple of `stride`); previous [batch, K_eff - stride, in], the input
        frames before x. `replicate_first [batch]` (bool) replaces `previous` by x's first frame repeated, for
        the rows starting a stream with replicate padding. Returns (y [batch, time / stride, features], the new
        `previous`)."""
        channels_in = x.shape[-1]
        kernel = declare(
            self, "kernel", (self.kernel_size, channels_in, self.features), std=(self.kernel_size * channels_in) ** -0.5
        )
        if replicate_first is not None and previous.shape[1]:
            first = jnp.broadcast_to(x[:, :1], previous.shape)
            previous = jnp.where(replicate_first[:, None, None], first, previous)
        padded = jnp.concatenate([previous, x], axis=1)
        y = jax.lax.conv_general_dilated(
            padded,
            kernel,
            window_strides=(self.stride,),
            padding="VALID",
            rhs_dilation=(self.dilation,),
            dimension_numbers=("NWC", "WIO", "NWC"),
            precision=PRECISIONS[self.precision],
        )
        if self.use_bias:
            y = y + declare(self, "bias", (self.features,))
        return y, padded[:, padded.shape[1] - previous.shape[1] :]


class ConvTranspose(nn.Module):
    """One causal ConvTranspose1d call, kernel size a multiple of `stride`.

    Params: kernel [in, K, features / groups], bias [features] (with `use_bias`).
    """

    features: int
    kernel_size: int
    stride: int
    groups: int = 1
    use_bias: bool = True
    precision: str = "highest"

    def init_state(self, batch_size: int) -> jax.Array:
        """Fresh `tail`: zeros [batch, K - stride, features]."""
        return jnp.zeros((batch_size, self.kernel_size - self.stride, self.features))

    @nn.compact
    def __call__(self, x: jax.Array, tail: jax.Array) -> tuple[jax.Array, jax.Array]:
        """x [batch, time, in]; tail [batch, K - stride, features], the overlap carried from the previous call
        (without bias). Returns (y [batch, time * stride, features], the new tail)."""
        batch, time, channels_in = x.shape
        groups, stride, kernel_size = self.groups, self.stride, self.kernel_size
        out_per_group = self.features // groups
        kernel = declare(
            self,
            "kernel",
            (channels_in, kernel_size, out_per_group),
            std=(channels_in // groups * kernel_size / stride) ** -0.5,
        )
        precision = PRECISIONS[self.precision]
        overlap = kernel_size // stride  # how many input frames write into each output block
        # Every input frame writes K outputs: [batch, time, K, out], the output channels grouped like torch's.
        # Plain matmul or elementwise product where possible: XLA:CPU runs the general grouped einsum ~10x slower.
        if groups == 1:
            frames = jnp.dot(x, kernel.reshape(channels_in, -1), precision=precision)
        elif groups == channels_in and out_per_group == 1:  # depthwise
            frames = x[:, :, None, :] * kernel[:, :, 0].T
        else:
            grouped_x = x.reshape(batch, time, groups, channels_in // groups)
            grouped_kernel = kernel.reshape(groups, channels_in // groups, kernel_size, out_per_group)
            frames = jnp.einsum("btgi,giko->btkgo", grouped_x, grouped_kernel, precision=precision)
        frames = frames.reshape(batch, time, overlap, stride, self.features)
        # Overlap-add: input frame t's j-th block of `stride` outputs lands in output block t + j.
        blocks = sum(jnp.pad(frames[:, :, j], ((0, 0), (j, overlap - 1 - j), (0, 0), (0, 0))) for j in range(overlap))
        y = blocks.reshape(batch, (time + overlap - 1) * stride, self.features)
        bias = declare(self, "bias", (self.features,)) if self.use_bias else None
        if bias is not None:
            y = y + bias
        y = y.at[:, : tail.shape[1]].add(tail)
        new_tail = y[:, time * stride :]
        if bias is not None:
            new_tail = new_tail - bias
        return y[:, : time * stride], new_tail
