"""Mimi: audio [batch, 1, samples] at 24 kHz <-> codes [batch, codebooks, frames] at 12.5 Hz, batch and streaming.

    encoder:  SEANet (960x down, 25 Hz) -> transformer -> conv downsample (2x, replicate-padded) -> latent
              -> split RVQ -> codes
    decoder:  codes -> split RVQ decode -> depthwise transposed-conv upsample (2x) -> transformer -> SEANet

Param tree: {encoder, encoder_transformer, downsample, quantizer, upsample, decoder_transformer, decoder};
see `seanet`, `transformer` and `quantizer` for each part. `checkpoint.load_mimi` reads the released file.

Public arrays keep moshi's layout (`[batch, channels, time]`); inside, activations are `[batch, time, channels]`.
Every public function is a pure function jitted with the config static (`jax.jit(static_argnums=0)`), so it
can be called as is or from inside another jit.

Streaming state (`init_codec_stream`) is `{"encoder": ..., "decoder": ...}`: `encode_step` only reads and
replaces the encoder part and `decode_step` only the decoder part, so one state serves a full-duplex session
(listen with `encode_step`, speak with `decode_step`) or either alone. Every leaf has the batch axis first, so
`reset_stream` can restart some rows (sessions) and leave the others running.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from flmjax.codec import quantizer, seanet, transformer
from flmjax.codec.config import MimiConfig
from flmjax.codec.layers import causal_conv, conv_state_length, conv_transpose

Params = dict[str, Any]
StreamState = dict[str, Any]
_jit = functools.partial(jax.jit, static_argnums=0)


# ---------------------------------------------------------------------- random params
def init_params(config: MimiConfig, seed: int = 0, num_codebooks: int = 8) -> Params:
    """Random params in the layout `load_mimi` returns (for benchmarks and shape checks).

    Convs and linears are N(0, 1/fan_in), so activations keep roughly unit scale; layer scales start at 0.01
    as in moshi; centroids are N(0, 1/dim). Drawn on the host with numpy: jax's threefry takes ~10 s for the
    released codec's 83M params on a small CPU.
    """
    rng = np.random.default_rng(seed)

    def normal(shape, fan_in):
        return jnp.asarray(rng.standard_normal(shape, np.float32) * np.float32(fan_in ** -0.5))

    def seanet_params(plan):
        tree: dict = {}
        for conv in seanet.convs(plan):
            if conv.transposed:
                kernel = normal((conv.channels_in, conv.kernel_size, conv.channels_out),
                                conv.channels_in * conv.kernel_size // conv.stride)
            else:
                kernel = normal((conv.kernel_size, conv.channels_in, conv.channels_out),
                                conv.channels_in * conv.kernel_size)
            seanet.set_path(tree, conv.path, {"kernel": kernel, "bias": jnp.zeros((conv.channels_out,))})
        return tree

    d, heads, head_dim, ffn = config.dimension, config.num_heads, config.head_dim, config.dim_feedforward

    def transformer_params():
        def norm():
            return {"scale": jnp.ones((d,)), "bias": jnp.zeros((d,))}
        return [{"norm1": norm(), "norm2": norm(),
                 "attn": {"qkv": normal((d, 3, heads, head_dim), d), "out": normal((heads, head_dim, d), d)},
                 "mlp": {"fc1": normal((d, ffn), d), "fc2": normal((ffn, d), ffn)},
                 "layer_scale_1": jnp.full((d,), 0.01), "layer_scale_2": jnp.full((d,), 0.01)}
                for _ in range(config.num_layers)]

    dim, stride = config.quantizer_dimension, config.downsample_stride

    def half(levels):
        return {"input_proj": normal((d, dim), d), "output_proj": normal((dim, d), dim),
                "codebooks": [normal((config.bins, dim), dim) for _ in range(levels)]}

    return {
        "encoder": seanet_params(seanet.encoder_plan(config)),
        "encoder_transformer": transformer_params(),
        "downsample": {"kernel": normal((2 * stride, d, d), 2 * stride * d)},
        "quantizer": {"first": half(1), "rest": half(num_codebooks - 1)},
        "upsample": {"kernel": normal((d, 2 * stride, 1), 2)},
        "decoder_transformer": transformer_params(),
        "decoder": seanet_params(seanet.decoder_plan(config)),
    }


# ---------------------------------------------------------------------- shared by batch and streaming
def _channels_first(x: jax.Array) -> jax.Array:
    return jnp.swapaxes(x, 1, 2)


def _encoder_fresh_state(config: MimiConfig, batch_size: int) -> StreamState:
    stride = config.downsample_stride
    return {
        "seanet": seanet.init_state(seanet.encoder_plan(config), batch_size),
        "transformer": transformer.init_cache(config, batch_size),
        # `first`: the next call starts the stream, so the downsample conv replicates its first frame.
        "downsample": {"previous": jnp.zeros((batch_size, conv_state_length(2 * stride, stride), config.dimension)),
                       "first": jnp.ones((batch_size,), bool)},
    }


def _decoder_fresh_state(config: MimiConfig, batch_size: int) -> StreamState:
    stride = config.downsample_stride
    return {
        "upsample": {"tail": jnp.zeros((batch_size, stride, config.dimension))},
        "transformer": transformer.init_cache(config, batch_size),
        "seanet": seanet.init_state(seanet.decoder_plan(config), batch_size),
    }


def _encode(config: MimiConfig, params: Params, audio: jax.Array, state: StreamState,
            streaming: bool) -> tuple[dict[str, jax.Array], StreamState]:
    """audio [batch, 1, samples], a multiple of the frame size -> (intermediates, channels-last; new state)."""
    if audio.ndim != 3 or audio.shape[1] != 1 or audio.shape[2] % config.frame_size:
        raise ValueError(f"Mimi encodes audio [batch, 1, k * {config.frame_size}] (mono), got {audio.shape}")
    precision = config.precision
    x = _channels_first(audio.astype(jnp.float32))  # [batch, samples, 1]
    out = {}
    x, seanet_state = seanet.run(seanet.encoder_plan(config), params["encoder"], x, state["seanet"], precision)
    out["encoder_seanet"] = x
    if streaming:
        x, cache = transformer.transform_step(config, params["encoder_transformer"], x, state["transformer"])
    else:
        x, cache = transformer.transform(config, params["encoder_transformer"], x), state["transformer"]
    out["encoder_transformer"] = x
    down = state["downsample"]
    x, previous = causal_conv(params["downsample"], x, down["previous"], stride=config.downsample_stride,
                              replicate_first=down["first"], precision=precision)
    out["latent"] = x
    out["codes"], projected = quantizer.encode(params["quantizer"], x, precision)
    out["quantizer_first_in"], out["quantizer_rest_in"] = projected["first_in"], projected["rest_in"]
    new_state = {"seanet": seanet_state, "transformer": cache,
                 "downsample": {"previous": previous, "first": jnp.zeros_like(down["first"])}}
    return out, new_state


def _decode(config: MimiConfig, params: Params, codes: jax.Array, state: StreamState,
            streaming: bool) -> tuple[dict[str, jax.Array], StreamState]:
    """codes [batch, codebooks, frames] -> (intermediates, channels-last; new state)."""
    if codes.ndim != 3:
        raise ValueError(f"Mimi decodes codes [batch, codebooks, frames], got {codes.shape}")
    precision = config.precision
    out = {}
    x = quantizer.decode(params["quantizer"], codes.astype(jnp.int32), precision)
    out["quantized_latent"] = x
    x, tail = conv_transpose(params["upsample"], x, state["upsample"]["tail"], stride=config.downsample_stride,
                             groups=config.dimension, precision=precision)
    out["decoder_upsampled"] = x
    if streaming:
        x, cache = transformer.transform_step(config, params["decoder_transformer"], x, state["transformer"])
    else:
        x, cache = transformer.transform(config, params["decoder_transformer"], x), state["transformer"]
    out["decoder_transformer"] = x
    x, seanet_state = seanet.run(seanet.decoder_plan(config), params["decoder"], x, state["seanet"], precision)
    out["pcm"] = x
    return out, {"upsample": {"tail": tail}, "transformer": cache, "seanet": seanet_state}


# ---------------------------------------------------------------------- batch
def pad_to_frames(config: MimiConfig, audio: jax.Array) -> jax.Array:
    """Zero-pads audio [batch, 1, samples] on the right to a whole number of frames (moshi 0.2.13 `encode`)."""
    extra = -audio.shape[-1] % config.frame_size
    return jnp.pad(audio, [(0, 0)] * (audio.ndim - 1) + [(0, extra)])


@_jit
def encode_intermediates(config: MimiConfig, params: Params, audio: jax.Array) -> dict[str, jax.Array]:
    """Batch encode of audio [batch, 1, samples], keeping every stage, in moshi's layout:

    encoder_seanet, encoder_transformer [batch, dimension, 2 * frames]; latent [batch, dimension, frames];
    quantizer_first_in, quantizer_rest_in [batch, quantizer_dimension, frames]; codes [batch, codebooks,
    frames] int32. `frames` is ceil(samples / frame_size): the audio is zero-padded on the right first.
    """
    audio = pad_to_frames(config, audio)
    out, _ = _encode(config, params, audio, _encoder_fresh_state(config, audio.shape[0]), streaming=False)
    return {name: value if name == "codes" else _channels_first(value) for name, value in out.items()}


@_jit
def decode_intermediates(config: MimiConfig, params: Params, codes: jax.Array) -> dict[str, jax.Array]:
    """Batch decode of codes [batch, codebooks, frames], keeping every stage, in moshi's layout:

    quantized_latent [batch, dimension, frames]; decoder_upsampled, decoder_transformer [batch, dimension,
    2 * frames]; pcm [batch, 1, frame_size * frames].
    """
    out, _ = _decode(config, params, codes, _decoder_fresh_state(config, codes.shape[0]), streaming=False)
    return {name: _channels_first(value) for name, value in out.items()}


@_jit
def encode(config: MimiConfig, params: Params, audio: jax.Array) -> jax.Array:
    """audio [batch, 1, samples] -> codes [batch, codebooks, ceil(samples / frame_size)] int32.

    The audio is zero-padded on the right to a whole number of frames first.
    """
    return encode_intermediates(config, params, audio)["codes"]


@_jit
def encode_to_latent(config: MimiConfig, params: Params, audio: jax.Array) -> jax.Array:
    """audio [batch, 1, samples] -> unquantized latent [batch, dimension, frames]."""
    return encode_intermediates(config, params, audio)["latent"]


@_jit
def decode(config: MimiConfig, params: Params, codes: jax.Array) -> jax.Array:
    """codes [batch, codebooks, frames] -> pcm [batch, 1, frame_size * frames] (never trimmed)."""
    return decode_intermediates(config, params, codes)["pcm"]


@_jit
def decode_latent(config: MimiConfig, params: Params, codes: jax.Array) -> jax.Array:
    """codes [batch, codebooks, frames] -> quantized latent [batch, dimension, frames]."""
    return _channels_first(quantizer.decode(params["quantizer"], codes.astype(jnp.int32), config.precision))


# ---------------------------------------------------------------------- streaming
@functools.partial(jax.jit, static_argnums=(0, 2))
def init_codec_stream(config: MimiConfig, params: Params | None, batch_size: int) -> StreamState:
    """Fresh streaming state for `batch_size` sessions: {"encoder": ..., "decoder": ...}.

    `params` is unused (the state only depends on the config); it is taken so call sites read uniformly.
    """
    del params
    return {"encoder": _encoder_fresh_state(config, batch_size),
            "decoder": _decoder_fresh_state(config, batch_size)}


@_jit
def encode_step(config: MimiConfig, params: Params, state: StreamState,
                pcm: jax.Array) -> tuple[StreamState, jax.Array]:
    """Streaming encode of the next pcm [batch, 1, k * frame_size] -> (state, codes [batch, codebooks, k]).

    Reads and replaces only `state["encoder"]`.
    """
    out, encoder_state = _encode(config, params, pcm, state["encoder"], streaming=True)
    return {**state, "encoder": encoder_state}, out["codes"]


@_jit
def encode_step_latent(config: MimiConfig, params: Params, state: StreamState,
                       pcm: jax.Array) -> tuple[StreamState, jax.Array, jax.Array]:
    """`encode_step` that also returns the unquantized latent [batch, dimension, k]."""
    out, encoder_state = _encode(config, params, pcm, state["encoder"], streaming=True)
    return {**state, "encoder": encoder_state}, out["codes"], _channels_first(out["latent"])


@_jit
def decode_step(config: MimiConfig, params: Params, state: StreamState,
                codes: jax.Array) -> tuple[StreamState, jax.Array]:
    """Streaming decode of the next codes [batch, codebooks, k] -> (state, pcm [batch, 1, k * frame_size]).

    Reads and replaces only `state["decoder"]`.
    """
    out, decoder_state = _decode(config, params, codes, state["decoder"], streaming=True)
    return {**state, "decoder": decoder_state}, _channels_first(out["pcm"])


@_jit
def reset_stream(config: MimiConfig, state: StreamState, mask: jax.Array) -> StreamState:
    """Restarts the sessions where mask [batch] (bool) is True; the other rows keep their state."""
    fresh = init_codec_stream(config, None, mask.shape[0])

    def pick(new, old):
        return jnp.where(mask.reshape((-1,) + (1,) * (old.ndim - 1)), new, old)

    return jax.tree.map(pick, fresh, state)
