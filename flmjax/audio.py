"""WAV files and resampling: audio in, as float32 `[channels, samples]` at the rate the codec needs.

    samples, rate = read_wav("a.wav")              # float32 [channels, n] in [-1, 1], the file's rate
    write_wav("b.wav", samples, 24000)             # 16-bit PCM (or dtype="float32")
    audio = load_audio("a.wav", sample_rate=24000) # read + resample (+ mono=True: mean of the channels)
    samples, channels, rate = wav_info("a.wav")    # the header only

Reading (scipy.io.wavfile): PCM 8-bit (unsigned), 16-, 24- and 32-bit integer and 32/64-bit float, any number
of channels. Integers map to [-1, 1) by dividing by their full scale (2^15 for 16-bit; scipy returns 24-bit
left-justified in int32, so 24- and 32-bit both divide by 2^31); floats are kept as they are, unclipped.
A NaN or Inf sample (only a float file can hold one) is an `AudioError` naming the file, the count and the
first one's time: the codec would turn it into garbage codes from that frame on. `allow_nonfinite=True` reads
them as zeros instead, with a `NonFiniteAudioWarning` giving the same count and time. A file that is not a WAV
or is cut short (inside its header or data) is an `AudioError` naming it, never a bare reader error.

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
import struct
import warnings

import numpy as np
from scipy.io import wavfile
from scipy.signal import resample_poly

from flmjax.errors import UserError

WAV_DTYPES = ("int16", "float32")


class AudioError(UserError, ValueError):
    """An audio file that cannot be read or written; the message names the file."""


class NonFiniteAudioWarning(UserWarning):
    """NaN or Inf samples were read as zeros (`allow_nonfinite=True`); the message names the file, count, time."""


# What scipy's WAV reader raises on a file that is not a WAV or is cut short (struct.error: inside the header).
_READER_ERRORS = (ValueError, EOFError, OSError, MemoryError, struct.error)


def _read_wavfile(path: str, mmap: bool = False) -> tuple[int, np.ndarray]:
    """scipy's `(rate, data)`, with a missing, foreign or truncated file as an `AudioError` naming it."""
    if not os.path.isfile(path):
        raise AudioError(f"{path}: no such file")
    try:
        with warnings.catch_warnings():  # unknown chunks (LIST, cue ...) are skipped; nothing to warn about
            warnings.simplefilter("ignore", wavfile.WavFileWarning)
            return wavfile.read(path, mmap=mmap)
    except _READER_ERRORS as error:
        raise AudioError(f"{path}: not a readable WAV file ({type(error).__name__}: {error})") from None


def wav_info(path: str | os.PathLike) -> tuple[int, int, int]:
    """`(samples, channels, rate)` of a WAV file from its header (the data is mapped, not read)."""
    path = os.fspath(path)
    rate, data = _read_wavfile(path, mmap=True)
    return int(data.shape[0]), (1 if data.ndim == 1 else int(data.shape[1])), int(rate)


def _nonfinite_message(path: str, samples: np.ndarray, rate: int) -> str | None:
    """ "PATH: N non-finite samples ..., the first at T s" if `samples [channels, n]` hold NaN or Inf, else None."""
    bad = ~np.isfinite(samples)
    if not bad.any():
        return None
    first_s = int(np.argmax(bad.any(axis=0))) / rate
    return f"{path}: {int(bad.sum())} non-finite samples (NaN or Inf), the first at {first_s:.3f} s"


def _to_float(data: np.ndarray, path: str) -> np.ndarray:
    if data.dtype == np.uint8:
        return (data.astype(np.float32) - 128.0) / 128.0
    if data.dtype in (np.int16, np.int32, np.int64):
        return (data.astype(np.float64) / float(2 ** (8 * data.dtype.itemsize - 1))).astype(np.float32)
    if data.dtype in (np.float32, np.float64):
        return data.astype(np.float32)
    raise AudioError(f"{path}: unsupported sample type {data.dtype}")


def read_wav(path: str | os.PathLike, allow_nonfinite: bool = False) -> tuple[np.ndarray, int]:
    """`(samples float32 [channels, n], sample_rate)` of a WAV file; `AudioError` naming it if unreadable, empty
    or holding NaN/Inf samples (with `allow_nonfinite`: those read as zeros, with a `NonFiniteAudioWarning`)."""
    path = os.fspath(path)
    rate, data = _read_wavfile(path)
    samples = _to_float(np.asarray(data), path)
    samples = samples[None, :] if samples.ndim == 1 else samples.T
    if samples.shape[1] == 0:
        raise AudioError(f"{path}: holds no samples")
    if rate <= 0:
        raise AudioError(f"{path}: sample rate {rate}")
    problem = _nonfinite_message(path, samples, rate)
    if problem is not None:
        if not allow_nonfinite:
            raise AudioError(f"{problem}; repair the file, or pass --allow_nonfinite to read them as silence")
        warnings.warn(f"{problem}, read as zeros (--allow_nonfinite)", NonFiniteAudioWarning, stacklevel=2)
        samples = np.where(np.isfinite(samples), samples, np.float32(0))
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


def load_audio(
    path: str | os.PathLike, sample_rate: int = 24000, mono: bool = False, allow_nonfinite: bool = False
) -> np.ndarray:
    """A WAV file as float32 `[channels, n]` at `sample_rate` (`[1, n]`, the mean of its channels, if `mono`);
    NaN/Inf samples as `read_wav`."""
    samples, rate = read_wav(path, allow_nonfinite)
    if mono and samples.shape[0] > 1:
        samples = samples.mean(axis=0, keepdims=True)
    return resample(samples, rate, sample_rate)
