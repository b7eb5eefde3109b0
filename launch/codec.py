"""Audio to Mimi codes and back, with the JAX Mimi, in streaming windows (any length, bounded memory).

    python -m launch.codec encode IN.wav OUT.npy --mimi DIR [--chunk_frames 50] [--overwrite] [--allow_nonfinite]
    python -m launch.codec decode IN.npy OUT.wav --mimi DIR [--dtype int16|float32] [--chunk_frames 50] [--overwrite]

`--mimi DIR` is a folder with `model.safetensors` (the released Mimi's key names) and, optionally, the
`mimi_config.json` that moshi's `get_mimi` takes (without it, the released codec's sizes); a `.safetensors` file
also works (its folder's `mimi_config.json` is used if there is one).

encode: a WAV file (any rate: resampled to 24 kHz; 16/24/32-bit PCM or float) to `OUT.npy`, int16
`[channels, 8, T]`: each channel encoded on its own (stereo gives 2 rows: left, right; mono gives 1), T =
ceil(samples at 24 kHz / 1920), 12.5 frames per second, codes in 0..2047 (codebook 0 semantic, 1..7 acoustic).
A NaN or Inf sample is an error naming the file and its time (Mimi would give garbage codes from that frame on);
`--allow_nonfinite` encodes them as silence, with a warning giving their count and first time.
decode: `[channels, 8, T]` (or `[8, T]`, one channel) codes to a 24 kHz WAV of `[channels, 1920 * T]` samples,
16-bit PCM (saturating at full scale) unless `--dtype float32`.

Both run the codec's streaming step (`encode_step` / `decode_step`, one frame per step) under `lax.scan`, over
windows of `--chunk_frames` frames with the stream state carried between windows, so a file of any length
takes one compiled window and memory for one window. The audio is zero-padded to whole windows (Mimi is causal:
padding changes no earlier code or sample) and the output cut back. Streaming is what a live session computes;
it equals batch `encode` and `decode` within float error up to the transformers' 10 s context, past which
moshi's streaming cache sees one key fewer on every other step (see ../shared/golden/mimi_small/README.md), so
a code may differ there, as it does in the released PyTorch code.

A progress bar goes to stderr, a summary (duration, frames, seconds, real-time factor) to stdout. An existing
output is refused unless --overwrite; the output is written to a temporary file beside it and renamed. A bad
input, codec folder or setting is one line, `error: ...`, and exit status 2.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from typing import Sequence

import jax
import numpy as np

from flmjax import codec
from flmjax.audio import load_audio, write_wav
from flmjax.codec import DEFAULT_CHUNK_FRAMES, load_codec, stream_encode
from flmjax.errors import UserError
from flmjax.files import write_atomically
from launch import cli


class CodecCliError(UserError, ValueError):
    """An input or output `launch.codec` cannot use; the message names the file."""


# ---------------------------------------------------------------------------------------------------------------
# Streaming in windows.


@functools.partial(jax.jit, static_argnums=0)
def _decode_window(config, params, state, codes):
    """codes [B, 8, W] -> (state, pcm [B, 1, W * frame_size])."""
    steps = codes.transpose(2, 0, 1)[..., None]  # [W, B, 8, 1]
    state, pcm = jax.lax.scan(lambda s, step: codec.decode_step(config, params, s, step), state, steps)
    return state, pcm.transpose(1, 2, 0, 3).reshape(codes.shape[0], 1, -1)  # [W, B, 1, F] -> [B, 1, W * F]


def _bar(total: int, desc: str, enabled: bool):
    import tqdm

    return tqdm.tqdm(total=total, desc=desc, unit="frame", disable=not enabled, dynamic_ncols=True, file=sys.stderr)


def encode_audio(
    config, params, audio: np.ndarray, chunk_frames: int = DEFAULT_CHUNK_FRAMES, progress: bool = False
) -> np.ndarray:
    """Mono signals `[B, n]` at 24 kHz -> int16 codes `[B, 8, ceil(n / 1920)]` (`flmjax.codec.stream_encode`)."""
    with _bar(-(-audio.shape[1] // config.frame_size), "encoding", progress) as bar:
        return stream_encode(config, params, audio, chunk_frames, on_window=bar.update)


def decode_codes(
    config, params, codes: np.ndarray, chunk_frames: int = DEFAULT_CHUNK_FRAMES, progress: bool = False
) -> np.ndarray:
    """Codes `[B, 8, T]` -> float32 pcm `[B, 1920 * T]` at 24 kHz, streaming in windows."""
    batch, _, frames = codes.shape
    windows = -(-frames // chunk_frames)
    padded = np.zeros((batch, codes.shape[1], windows * chunk_frames), np.int32)
    padded[..., :frames] = codes
    state = codec.init_codec_stream(config, params, batch)
    out = []
    with _bar(frames, "decoding", progress) as bar:
        for w in range(windows):
            state, pcm = _decode_window(config, params, state, padded[..., w * chunk_frames : (w + 1) * chunk_frames])
            out.append(np.asarray(pcm[:, 0]))
            bar.update(min(chunk_frames, frames - w * chunk_frames))
    return np.concatenate(out, axis=-1)[:, : frames * config.frame_size]


# ---------------------------------------------------------------------------------------------------------------
# The command line.


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = cli.ArgumentParser(prog="python -m launch.codec", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, source, target in (("encode", "IN.wav", "OUT.npy"), ("decode", "IN.npy", "OUT.wav")):
        command = commands.add_parser(name, help=f"{source} -> {target}")
        command.add_argument("input", metavar=source)
        command.add_argument("output", metavar=target)
        command.add_argument("--mimi", required=True, help="folder with model.safetensors [+ mimi_config.json]")
        command.add_argument(
            "--chunk_frames",
            type=int,
            default=DEFAULT_CHUNK_FRAMES,
            help="frames per compiled streaming window (12.5 per second)",
        )
        command.add_argument("--overwrite", action="store_true", help="replace an existing output")
        command.add_argument("--no_progress", action="store_true", help="no progress bar")
        if name == "encode":
            command.add_argument(
                "--allow_nonfinite",
                action="store_true",
                help="encode NaN/Inf samples as silence (with a warning) instead of refusing",
            )
        if name == "decode":
            command.add_argument(
                "--dtype",
                choices=("int16", "float32"),
                default="int16",
                help="WAV sample format (int16 saturates at full scale)",
            )
    args = parser.parse_args(argv)
    if args.chunk_frames <= 0:
        parser.error("--chunk_frames must be positive")
    return args


def _read_codes(path: str) -> np.ndarray:
    try:
        codes = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise CodecCliError(f"{path}: not a readable .npy file ({error})") from None
    if codes.ndim == 2:
        codes = codes[None]
    if codes.ndim != 3 or codes.shape[1] != 8 or codes.shape[2] == 0 or not np.issubdtype(codes.dtype, np.integer):
        raise CodecCliError(
            f"{path}: codes of shape {codes.shape} and dtype {codes.dtype}; expected integers "
            "[channels, 8, T] or [8, T] with T > 0"
        )
    if codes.min() < 0 or codes.max() >= 2048:
        raise CodecCliError(f"{path}: codes must be in 0..2047, found {codes.min()}..{codes.max()}")
    return codes


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if os.path.exists(args.output) and not args.overwrite:
        raise CodecCliError(f"{args.output} exists; pass --overwrite to replace it")
    if args.command == "encode":
        config, params = load_codec(args.mimi)
        audio = load_audio(args.input, config.sample_rate, allow_nonfinite=args.allow_nonfinite)
    else:
        codes = _read_codes(args.input)
        config, params = load_codec(args.mimi)
    started = time.perf_counter()
    if args.command == "encode":
        codes = encode_audio(config, params, audio, args.chunk_frames, progress=not args.no_progress)
        write_atomically(args.output, lambda path: np.save(path, codes))
    else:
        pcm = decode_codes(config, params, codes, args.chunk_frames, progress=not args.no_progress)
        write_atomically(args.output, lambda path: write_wav(path, pcm, config.sample_rate, args.dtype))
    seconds = time.perf_counter() - started
    channels, _, frames = codes.shape
    duration = frames / config.frame_rate
    print(
        f"{args.command}d {args.input} -> {args.output}: {channels} channel(s), {frames} frames, "
        f"{duration:.2f} s of audio ({frames * config.frame_size} samples at {config.sample_rate} Hz) "
        f"in {seconds:.2f} s, real-time factor {seconds / duration:.3f} (compile included)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
