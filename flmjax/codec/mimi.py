"""Mimi: audio [batch, 1, samples] at 24 kHz <-> codes [batch, codebooks, frames] at 12.5 Hz, batch and streaming.

    encoder:  SEANet (960x down, 25 Hz) -> transformer -> conv downsample (2x, replicate-padded) -> latent
              -> split RVQ -> codes
    decoder:  codes -> split RVQ decode -> depthwise transposed-conv upsample (2x) -> transformer -> SEANet

`Mimi` is the Linen module; its param tree is {encoder, encoder_transformer, downsample, quantizer, upsample,
decoder_transformer, decoder} (see `seanet`, `transformer` and `quantizer` for each part), which
`checkpoint.load_mimi` reads from the released file.

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
from flax import linen as nn

from flmjax.codec.config import MimiConfig
from flmjax.codec.layers import CausalConv, ConvTranspose, Normal
from flmjax.codec.quantizer import SplitResidualVQ
from flmjax.codec.seanet import SEANetDecoder, SEANetEncoder
from flmjax.codec.transformer import Transformer

Params = dict[str, Any]
StreamState = dict[str, Any]
_jit = functools.partial(jax.jit, static_argnums=0)


def _transform(transformer, x: jax.Array, cache, streaming: bool):
    """Streaming: a step against the ring cache; batch: the windowed pass, the cache passed through."""
    return transformer.step(x, cache) if streaming else (transformer(x), cache)


class Mimi(nn.Module):
    """The codec, channels-last. `num_codebooks` sets the codebooks in use (8 in Moshi)."""

    config: MimiConfig
    num_codebooks: int = 8

    def setup(self):
        cfg = self.config
        stride = cfg.downsample_stride
        self.encoder = SEANetEncoder(cfg)
        self.encoder_transformer = Transformer(cfg)
        self.downsample = CausalConv(cfg.dimension, 2 * stride, stride=stride, use_bias=False, precision=cfg.precision)
        self.quantizer = SplitResidualVQ(cfg, self.num_codebooks)
        # Depthwise (groups = dimension): moshi's `upsample_channel_wise_bug=True`.
        self.upsample = ConvTranspose(
            cfg.dimension, 2 * stride, stride=stride, groups=cfg.dimension, use_bias=False, precision=cfg.precision
        )
        self.decoder_transformer = Transformer(cfg)
        self.decoder = SEANetDecoder(cfg)

    def init_state(self, batch_size: int) -> StreamState:
        """Fresh streaming state for `batch_size` sessions: {"encoder": ..., "decoder": ...}; needs no params."""
        cfg = self.config
        encoder = {
            "seanet": self.encoder.init_state(batch_size),
            "transformer": self.encoder_transformer.init_state(batch_size),
            # `first`: the next call starts the stream, so the downsample conv replicates its first frame.
            "downsample": {
                "previous": self.downsample.init_state(batch_size, cfg.dimension),
                "first": jnp.ones((batch_size,), bool),
            },
        }
        decoder = {
            "upsample": {"tail": self.upsample.init_state(batch_size)},
            "transformer": self.decoder_transformer.init_state(batch_size),
            "seanet": self.decoder.init_state(batch_size),
        }
        return {"encoder": encoder, "decoder": decoder}

    def encode(
        self, audio: jax.Array, state: StreamState | None = None, streaming: bool = False
    ) -> tuple[dict[str, jax.Array], StreamState]:
        """audio [batch, samples, 1], a multiple of the frame size, from the encoder `state` (None: fresh) ->
        (intermediates, channels-last; the new encoder state). Streaming uses the transformer's ring cache."""
        if state is None:
            state = self.init_state(audio.shape[0])["encoder"]
        out = {}
        x, seanet_state = self.encoder(audio, state["seanet"])
        out["encoder_seanet"] = x
        x, cache = _transform(self.encoder_transformer, x, state["transformer"], streaming)
        out["encoder_transformer"] = x
        down = state["downsample"]
        x, previous = self.downsample(x, down["previous"], replicate_first=down["first"])
        out["latent"] = x
        out["codes"], projected = self.quantizer.encode(x)
        out["quantizer_first_in"], out["quantizer_rest_in"] = projected["first_in"], projected["rest_in"]
        new_state = {
            "seanet": seanet_state,
            "transformer": cache,
            "downsample": {"previous": previous, "first": jnp.zeros_like(down["first"])},
        }
        return out, new_state

    def decode(
        self, codes: jax.Array, state: StreamState | None = None, streaming: bool = False
    ) -> tuple[dict[str, jax.Array], StreamState]:
        """codes [batch, codebooks, frames] from the decoder `state` (None: fresh) -> (intermediates,
        channels-last, `pcm` [batch, frames * frame_size, 1]; the new decoder state)."""
        if state is None:
            state = self.init_state(codes.shape[0])["decoder"]
        out = {}
        x = self.quantizer.decode(codes)
        out["quantized_latent"] = x
        x, tail = self.upsample(x, state["upsample"]["tail"])
        out["decoder_upsampled"] = x
        x, cache = _transform(self.decoder_transformer, x, state["transformer"], streaming)
        out["decoder_transformer"] = x
        x, seanet_state = self.decoder(x, state["seanet"])
        out["pcm"] = x
        return out, {"upsample": {"tail": tail}, "transformer": cache, "seanet": seanet_state}

    def decode_latent(self, codes: jax.Array) -> jax.Array:
        """codes [batch, codebooks, frames] -> quantized latent [batch, frames, dimension]."""
        return self.quantizer.decode(codes)

    def __call__(self, audio: jax.Array) -> jax.Array:
        """Batch encode then decode (declares every param): audio [batch, samples, 1] -> pcm, same shape."""
        codes = self.encode(audio)[0]["codes"]
        return self.decode(codes)[0]["pcm"]


def _module(config: MimiConfig, params: Params) -> Mimi:
    """`Mimi` for these params (their codebook count)."""
    return Mimi(config, 1 + sum(name.startswith("codebook_") for name in params["quantizer"]["rest"]))


def _boxed_init(config: MimiConfig, rng: jax.Array, num_codebooks: int) -> Params:
    audio = jnp.zeros((1, config.frame_size, 1))  # one frame of silence runs every layer
    return Mimi(config, num_codebooks).init(rng, audio)["params"]


def mimi_init(config: MimiConfig, rng: jax.Array, num_codebooks: int = 8) -> Params:
    """The Linen init of `Mimi`: the param tree `load_mimi` returns, drawn with jax.random."""
    return nn.meta.unbox(_boxed_init(config, rng, num_codebooks))


# ---------------------------------------------------------------------- random params
def init_params(config: MimiConfig, seed: int = 0, num_codebooks: int = 8) -> Params:
    """Random params in the layout `load_mimi` returns (for benchmarks and shape checks).

    The tree and each param's distribution are `Mimi`'s (`mimi_init`): convs and linears N(0, 1/fan_in), so
    activations keep roughly unit scale; layer scales 0.01 as in moshi; centroids N(0, 1/dim). Drawn on the
    host with numpy: jax's threefry (compiled for ~200 shapes) takes ~10 s for the released codec's 83M params
    on a small CPU.
    """
    rng = np.random.default_rng(seed)
    boxed = jax.eval_shape(functools.partial(_boxed_init, config, num_codebooks=num_codebooks), jax.random.key(0))

    def draw(box: Normal) -> jax.Array:
        value = np.full(box.value.shape, box.mean, np.float32)
        if box.std:
            value += rng.standard_normal(box.value.shape, np.float32) * np.float32(box.std)
        return jnp.asarray(value)

    return jax.tree.map(draw, boxed, is_leaf=lambda leaf: isinstance(leaf, Normal))


# ---------------------------------------------------------------------- shared by batch and streaming
def _channels_first(x: jax.Array) -> jax.Array:
    return jnp.swapaxes(x, 1, 2)


def _encode(
    config: MimiConfig, params: Params, audio: jax.Array, state: StreamState | None, streaming: bool
) -> tuple[dict[str, jax.Array], StreamState]:
    """audio [batch, 1, samples], a multiple of the frame size -> (intermediates, channels-last; new state)."""
    if audio.ndim != 3 or audio.shape[1] != 1 or audio.shape[2] % config.frame_size:
        raise ValueError(f"Mimi encodes audio [batch, 1, k * {config.frame_size}] (mono), got {audio.shape}")
    return _module(config, params).apply(
        {"params": params}, _channels_first(audio.astype(jnp.float32)), state, streaming, method=Mimi.encode
    )


def _decode(
    config: MimiConfig, params: Params, codes: jax.Array, state: StreamState | None, streaming: bool
) -> tuple[dict[str, jax.Array], StreamState]:
    """codes [batch, codebooks, frames] -> (intermediates, channels-last; new state)."""
    if codes.ndim != 3:
        raise ValueError(f"Mimi decodes codes [batch, codebooks, frames], got {codes.shape}")
    return _module(config, params).apply(
        {"params": params}, codes.astype(jnp.int32), state, streaming, method=Mimi.decode
    )


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
    out, _ = _encode(config, params, audio, None, streaming=False)
    return {name: value if name == "codes" else _channels_first(value) for name, value in out.items()}


@_jit
def decode_intermediates(config: MimiConfig, params: Params, codes: jax.Array) -> dict[str, jax.Array]:
    """Batch decode of codes [batch, codebooks, frames], keeping every stage, in moshi's layout:

    quantized_latent [batch, dimension, frames]; decoder_upsampled, decoder_transformer [batch, dimension,
    2 * frames]; pcm [batch, 1, frame_size * frames].
    """
    out, _ = _decode(config, params, codes, None, streaming=False)
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
    latent = _module(config, params).apply({"params": params}, codes.astype(jnp.int32), method=Mimi.decode_latent)
    return _channels_first(latent)


# ---------------------------------------------------------------------- streaming
@functools.partial(jax.jit, static_argnums=(0, 2))
def init_codec_stream(config: MimiConfig, params: Params | None, batch_size: int) -> StreamState:
    """Fresh streaming state for `batch_size` sessions: {"encoder": ..., "decoder": ...}.

    `params` is unused (the state only depends on the config); it is taken so call sites read uniformly.
    """
    del params
    return Mimi(config).apply({}, batch_size, method=Mimi.init_state)


# The streaming steps donate the state they are given (its buffers are reused for the new state: the
# transformers' KV caches are most of a frame's memory traffic otherwise); use the state they return.
_jit_stepping = functools.partial(jax.jit, static_argnums=0, donate_argnums=2)


@_jit_stepping
def encode_step(
    config: MimiConfig, params: Params, state: StreamState, pcm: jax.Array
) -> tuple[StreamState, jax.Array]:
    """Streaming encode of the next pcm [batch, 1, k * frame_size] -> (state, codes [batch, codebooks, k]).

    Reads and replaces only `state["encoder"]`; `state` is donated (use the one returned).
    """
    out, encoder_state = _encode(config, params, pcm, state["encoder"], streaming=True)
    return {**state, "encoder": encoder_state}, out["codes"]


@_jit
def encode_step_latent(
    config: MimiConfig, params: Params, state: StreamState, pcm: jax.Array
) -> tuple[StreamState, jax.Array, jax.Array]:
    """`encode_step` that also returns the unquantized latent [batch, dimension, k]."""
    out, encoder_state = _encode(config, params, pcm, state["encoder"], streaming=True)
    return {**state, "encoder": encoder_state}, out["codes"], _channels_first(out["latent"])


@_jit_stepping
def decode_step(
    config: MimiConfig, params: Params, state: StreamState, codes: jax.Array
) -> tuple[StreamState, jax.Array]:
    """Streaming decode of the next codes [batch, codebooks, k] -> (state, pcm [batch, 1, k * frame_size]).

    Reads and replaces only `state["decoder"]`; `state` is donated (use the one returned).
    """
    out, decoder_state = _decode(config, params, codes, state["decoder"], streaming=True)
    return {**state, "decoder": decoder_state}, _channels_first(out["pcm"])


@functools.partial(jax.jit, static_argnums=(0, 3))
def reset_stream(
    config: MimiConfig, state: StreamState, mask: jax.Array, parts: tuple[str, ...] = ("encoder", "decoder")
) -> StreamState:
    """Restarts the sessions where mask [batch] (bool) is True, in the given `parts` of the state (both by
    default; a live server restarts a new session's decoder one frame after its encoder); the other rows keep
    their state."""
    fresh = init_codec_stream(config, None, mask.shape[0])

    def pick(new, old):
        return jnp.where(mask.reshape((-1,) + (1,) * (old.ndim - 1)), new, old)

    return {**state, **{part: jax.tree.map(pick, fresh[part], state[part]) for part in parts}}
