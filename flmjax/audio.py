"""WAV files and resampling: audio in, as float32 `[channels, samples]` at the rate the codec needs.

    samples, rate = read_wav("a.wav")              # float32 [channels, n] in [-1, 1], the file's rate
    write_wav("b.wav", samples, 24000)             # 16-bit PCM (or dtype="float32")
    audio = load_audio("a.wav", sample_rate=24000) # read + resample (+ mono=True: mean of the channels)

Reading (scipy.io.wavfile): PCM 8-bit (unsigned), 16-, 24- and 32-bit integer and 32/64-bit float, any number
of channels. Integers map to [-1, 1) by dividing by their full scale (2^15 for 16-bit; scipy returns 24-bit
left-justified in int32, so 24- and 32-bit both divide by 2^31); floats are kept as they are, unclipped.

Writing: `dtype="int16"` (the default) scales by 2^15, rounds to the nearest integer and saturates at
[-32768, 32767], so a sample outside [-1, 1) is clipped to full scale, silently and on purpose (no warning:
decoded audio may overshoot a little, and saturating is the only sensible result); `dtype="float32"` writes the
samples unchanged, unclipped.

Resampling is polyphase (`scipy.signal.resample_poly`, a Kaiser-windowed FIR low-pass) by the exact rational
ratio `to/from` reduced by their gcd; n samples give `round(n * to / from)`.
"""

from __future__ import annotations

import math
import os
import warnings

import numpy as np
from scipy.io import wavfile
from scipy.signal import resample_poly

from flmjax.errors import UserError

WAV_DTYPES = ("int16", "float32")


class AudioError(UserError, ValueError):
    """An audio file that cannot be read or written; the message names the file."""


def _to_float(data: np.ndarray, path: str) -> np.ndarray:
    if data.dtype == np.uint8:
        return (data.astype(np.float32) - 128.0) / 128.0
    if data.dtype in (np.int16, np.int32, np.int64):
        return (data.astype(np.float64) / float(2 ** (8 * data.dtype.itemsize - 1))).astype(np.float32)
    if data.dtype in (np.float32, np.float64):
        return data.astype(np.float32)
    raise AudioError(f"{path}: unsupported sample type {data.dtype}")


def read_wav(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """`(samples float32 [channels, n], sample_rate)` of a WAV file; `AudioError` naming it if unreadable or empty."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise AudioError(f"{path}: no such file")
    try:
        with warnings.catch_warnings():  # unknown chunks (LIST, cue ...) are skipped; nothing to warn about
            warnings.simplefilter("ignore", wavfile.WavFileWarning)
            rate, data = wavfile.read(path)
    except (ValueError, EOFError, OSError, MemoryError) as error:
        raise AudioError(f"{path}: not a readable WAV file ({error})") from None
    samples = _to_float(np.asarray(data), path)
    samples = samples[None, :] if samples.ndim == 1 else samples.T
    if samples.shape[1] == 0:
        raise AudioError(f"{path}: holds no samples")
    if rate <= 0:
        raise AudioError(f"{path}: sample rate {rate}")
    return np.ascontiguousarray(samples), int(rate)


def write_wav(path: str | os.PathLike, samples, sample_rate: int, dtype: str = "int16") -> None:
    """Writes `samples [channels, n]` (or `[n]`) as a WAV file: 16-bit PCM, saturating, or float32 as is."""
    path = os.fspath(path)
    samples = np.asarray(samples, np.float32)
    if samples.ndim == 1:
        samples = samples[None, :]
    if samples.ndim != 2 or samples.shape[1] == 0:
        raise AudioError(f"{path}: expected samples [channels, n] with n > 0, got shape {samples.shape}")
    if dtype == "int16":
        data = np.clip(np.rint(samples.astype(np.float64) * 32768.0), -32768, 32767).astype(np.int16)
    elif dtype == "float32":
        data = samples
    else:
        raise ValueError(f"dtype {dtype!r}: expected one of {WAV_DTYPES}")
    wavfile.write(path, int(sample_rate), np.ascontiguousarray(data.T))


def resample(samples, from_rate: int, to_rate: int) -> np.ndarray:
    """Polyphase resampling along the last axis; n samples give `round(n * to_rate / from_rate)`, float32."""
    samples = np.asarray(samples, np.float32)
    if from_rate <= 0 or to_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {from_rate} -> {to_rate}")
    if from_rate == to_rate:
        return samples
    divisor = math.gcd(int(from_rate), int(to_rate))
    up, down = int(to_rate) // divisor, int(from_rate) // divisor
    length = round(samples.shape[-1] * up / down)
    out = resample_poly(samples, up, down, axis=-1)  # ceil(n * up / down) samples
    return np.ascontiguousarray(out[..., :length], np.float32)


def load_audio(path: str | os.PathLike, sample_rate: int = 24000, mono: bool = False) -> np.ndarray:
    """A WAV file as float32 `[channels, n]` at `sample_rate` (`[1, n]`, the mean of its channels, if `mono`)."""
    samples, rate = read_wav(path)
    if mono and samples.shape[0] > 1:
        samples = samples.mean(axis=0, keepdims=True)
    return resample(samples, rate, sample_rate)
