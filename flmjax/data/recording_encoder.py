"""The encoder of recorded conversations: Mimi's windowed streaming encode over the local devices.

`prepare_recordings` (`flmjax.data.recordings`) hands the encoder both channels of `batch_files` files at a
time; `make_encoder`'s function zero-pads them to the longest, shards the rows over the local devices and runs
them through Mimi's streaming step in jitted windows (`flmjax.codec.stream_encode`): memory stays bounded for
recordings of any length (batch `encode` attends over the whole file), and the codes are those a live session
computes, equal to batch `encode`'s for the first 10 s.
"""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np

from flmjax import codec
from flmjax.data.records import NUM_CODEBOOKS

Encoder = Callable[[list[np.ndarray]], list[np.ndarray]]  # mono signals [n] at 24 kHz -> codes [8, frames]


def make_encoder(config, params, batch_size: int = 8, chunk_frames: int = codec.DEFAULT_CHUNK_FRAMES) -> Encoder:
    """Encodes mono 24 kHz signals with `stream_encode`, `batch_size` at a time.

    Each batch is zero-padded to its longest signal and to `batch_size` rows, rounded up to a multiple of the
    local devices, over which the rows are sharded (data parallel; params replicated). The codes are cut back
    to each signal's frames, `ceil(n / 1920)`.
    """
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    devices = jax.local_devices()
    rows = -(-batch_size // len(devices)) * len(devices)
    mesh = Mesh(np.array(devices), ("data",))
    batch_sharding = NamedSharding(mesh, PartitionSpec("data"))
    params = jax.device_put(params, NamedSharding(mesh, PartitionSpec()))

    def encode_signals(signals: list[np.ndarray]) -> list[np.ndarray]:
        out = []
        for start in range(0, len(signals), rows):
            chunk = signals[start : start + rows]
            audio = np.zeros((rows, max(len(signal) for signal in chunk)), np.float32)
            for row, signal in enumerate(chunk):
                audio[row, : len(signal)] = signal
            codes = codec.stream_encode(config, params, audio, chunk_frames, sharding=batch_sharding)
            out.extend(
                codes[row, :NUM_CODEBOOKS, : -(-len(signal) // config.frame_size)] for row, signal in enumerate(chunk)
            )
        return out

    return encode_signals
