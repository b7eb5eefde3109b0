"""Streaming convolutions of the codec: causal conv and transposed conv, each a pure function of its state.

Activations are channels-last, `[batch, time, channels]`. Batch mode is one streaming call from a fresh
state, as in moshi 0.2.13, so the two modes cannot drift apart:

- `causal_conv` pads on the left only, by `K_eff - stride` frames taken from its state (`previous`), and keeps
  the last `K_eff - stride` input frames as the next state. A fresh state is zeros; with `replicate` it is
  the first input frame repeated (the 25 -> 12.5 Hz downsample).
- `conv_transpose` computes the full transposed conv (`T*S + K - S` frames) by overlap-add, adds the carried
  `K - S` tail to its start, emits `T*S` frames and carries the rest (minus the bias) as the next tail.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

PRECISIONS = {"default": jax.lax.Precision.DEFAULT, "high": jax.lax.Precision.HIGH,
              "highest": jax.lax.Precision.HIGHEST}


def conv_state_length(kernel_size: int, stride: int, dilation: int = 1) -> int:
    """Input frames a causal conv carries between calls: `K_eff - stride`."""
    return (kernel_size - 1) * dilation + 1 - stride


def causal_conv(params: dict, x: jax.Array, previous: jax.Array, *, stride: int = 1, dilation: int = 1,
                groups: int = 1, replicate_first: jax.Array | None = None,
                precision: str = "highest") -> tuple[jax.Array, jax.Array]:
    """One causal Conv1d call.

    params: {"kernel": [K, in/groups, out], optional "bias": [out]}; x: [batch, time, in] with time a multiple
    of `stride`; previous: [batch, K_eff - stride, in], the input frames before `x`. `replicate_first [batch]`
    (bool) replaces `previous` by `x`'s first frame repeated, for the rows starting a stream with replicate
    padding. Returns (y [batch, time / stride, out], the new `previous`).
    """
    if replicate_first is not None and previous.shape[1]:
        first = jnp.broadcast_to(x[:, :1], previous.shape)
        previous = jnp.where(replicate_first[:, None, None], first, previous)
    padded = jnp.concatenate([previous, x], axis=1)
    y = jax.lax.conv_general_dilated(
        padded, params["kernel"], window_strides=(stride,), padding="VALID", rhs_dilation=(dilation,),
        dimension_numbers=("NWC", "WIO", "NWC"), feature_group_count=groups, precision=PRECISIONS[precision])
    if "bias" in params:
        y = y + params["bias"]
    return y, padded[:, padded.shape[1] - previous.shape[1]:]


def conv_transpose(params: dict, x: jax.Array, tail: jax.Array, *, stride: int, groups: int = 1,
                   precision: str = "highest") -> tuple[jax.Array, jax.Array]:
    """One causal ConvTranspose1d call, kernel size a multiple of `stride`.

    params: {"kernel": [in, K, out/groups], optional "bias": [out]}; x: [batch, time, in];
    tail: [batch, K - stride, out], the overlap carried from the previous call (without bias).
    Returns (y [batch, time * stride, out], the new tail).
    """
    batch, time, channels_in = x.shape
    kernel = params["kernel"]
    _, kernel_size, out_per_group = kernel.shape
    overlap = kernel_size // stride  # how many input frames write into each output block
    # Every input frame writes K outputs: [batch, time, K, out], the output channels grouped like torch's.
    # Plain matmul or elementwise product where possible: XLA:CPU runs the general grouped einsum ~10x slower.
    if groups == 1:
        frames = jnp.dot(x, kernel.reshape(channels_in, -1), precision=PRECISIONS[precision])
    elif groups == channels_in and out_per_group == 1:  # depthwise
        frames = x[:, :, None, :] * kernel[:, :, 0].T
    else:
        grouped_x = x.reshape(batch, time, groups, channels_in // groups)
        grouped_kernel = kernel.reshape(groups, channels_in // groups, kernel_size, out_per_group)
        frames = jnp.einsum("btgi,giko->btkgo", grouped_x, grouped_kernel, precision=PRECISIONS[precision])
    frames = frames.reshape(batch, time, overlap, stride, groups * out_per_group)
    # Overlap-add: input frame t's j-th block of `stride` outputs lands in output block t + j.
    blocks = sum(jnp.pad(frames[:, :, j], ((0, 0), (j, overlap - 1 - j), (0, 0), (0, 0))) for j in range(overlap))
    y = blocks.reshape(batch, (time + overlap - 1) * stride, -1)
    bias = params.get("bias")
    if bias is not None:
        y = y + bias
    carried = tail.shape[1]
    y = y.at[:, :carried].add(tail)
    new_tail = y[:, time * stride:]
    if bias is not None:
        new_tail = new_tail - bias
    return y[:, : time * stride], new_tail
