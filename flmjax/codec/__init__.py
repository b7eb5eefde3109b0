"""The Mimi audio codec (Kyutai) in JAX: released-checkpoint loading, batch and streaming encode/decode."""

from flmjax.codec.checkpoint import MimiCheckpointError, codec_fingerprint, load_codec, load_mimi, name_map
from flmjax.codec.config import MimiConfig, MimiConfigError
from flmjax.codec.mimi import (
    decode,
    decode_intermediates,
    decode_latent,
    decode_step,
    encode,
    encode_intermediates,
    encode_step,
    encode_step_latent,
    encode_to_latent,
    init_codec_stream,
    init_params,
    reset_stream,
)
from flmjax.codec.windowed import DEFAULT_CHUNK_FRAMES, stream_encode

__all__ = [
    "DEFAULT_CHUNK_FRAMES",
    "MimiCheckpointError",
    "MimiConfig",
    "MimiConfigError",
    "codec_fingerprint",
    "decode",
    "decode_intermediates",
    "decode_latent",
    "decode_step",
    "encode",
    "encode_intermediates",
    "encode_step",
    "encode_step_latent",
    "encode_to_latent",
    "init_codec_stream",
    "init_params",
    "load_codec",
    "load_mimi",
    "name_map",
    "reset_stream",
    "stream_encode",
]
