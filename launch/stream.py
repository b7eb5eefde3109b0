"""Full-duplex streaming from the command line: the user's codes in, the model's frames (and monologue) out.

    python -m launch.stream --checkpoint DIR --listen CODES.npy --out OUT.npz [--greedy] [--tokenizer TOK]
                            [--max_frames N] [--sliding_window] [--seed 0] [--step N]
    python -m launch.stream --checkpoint DIR --batch_file LIST --out OUT_DIR [...]
    python -m launch.stream --checkpoint DIR --listen USER.wav --mimi MIMI --out OUT.npz [--out_wav OUT.wav]
                            [--stereo] [...]

DIR is a released-format folder (config.json + safetensors), a stage's training workdir, or the main job's
workdir (its last stage). CODES.npy holds the user's Mimi codes, [8, T] or [1, 8, T] (what `launch.codec
encode` writes for a mono file). LIST names one CODES.npy per line; those sessions run together as one batch
and OUT_DIR gets one `<name>.npz` each.

With `--mimi MIMI` (a Mimi folder: model.safetensors [+ mimi_config.json]) the inputs may be WAV files (any
rate, mixed to mono, resampled to 24 kHz) that are encoded frame by frame with the streaming encoder, as a live
microphone would be, and `--out_wav` writes the model's voice decoded frame by frame (in a batch, `--out_wav`
names a folder getting `<name>.wav` each). The WAV is time-synchronous with the user: step s plays the frame
it emitted, the model's frame s-1, in slot s. `--stereo` puts the user on the left and the model on the right.

Each step feeds one user frame (80 ms) and gets back the model's frame of the step before, so T user frames
give T - 1 model frames. OUT.npz holds `frames` [T-1, 9] (text id, speak codes 0..7), `text_ids` [T-1],
`speak_codes` [8, T-1] (ready for `launch.codec decode`), `listen_codes` [8, T] (what the model heard) and
`step_ms` [T]. With `--tokenizer` (a
tokenizer.model / tokenizer.json, or a folder holding one) the monologue is also written as `<name>.txt`, each
run of `<wait>` shown as a line break. Prints per-frame latency percentiles and the real-time factor (median
step time / 80 ms; below 1 keeps up with a live conversation). Decoding is the released generator's sampling
unless `--greedy` (argmax with its repetition penalties).

A WAV input with NaN or Inf samples is refused (the error names the file and the first one's time);
`--allow_nonfinite` hears them as silence, with a warning. `--max_frames` must be at least 1 (left out: the
longest input). `--out` is written exactly as named (no `.npz` added). In a batch, an input that cannot be read
(missing, damaged, wrong shape, codes outside the codebook, non-finite audio) is skipped with its reason and the
others run; the skipped are listed at the end and the exit status is 0 if any session ran, 2 if none could. Any
other bad input, checkpoint or setting is one line, `error: ...`, and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import zlib
from typing import Callable, Sequence

import numpy as np

from flmjax import audio as audio_lib
from flmjax import checkpoints, codec
from flmjax.data import text as text_lib
from flmjax.errors import UserError, read_each
from flmjax.infer import SamplingConfig, sessions
from flmjax.infer import audio as audio_sessions
from flmjax.infer.stream_state import codebook_size
from flmjax.streams import FRAME_S
from launch import cli


class CliError(UserError, RuntimeError):
    """A request the CLI cannot run; the message names the problem."""


def read_listen_codes(path: str, channels: int, codebook: int) -> np.ndarray:
    """CODES.npy ([C, T] or [1, C, T], codes in 0..codebook-1) -> [T, C] int32, with clear errors for anything
    else."""
    try:
        codes = np.load(path)
    except (OSError, ValueError) as error:
        raise CliError(f"cannot read listen codes {path}: {error}") from None
    if codes.ndim == 3 and codes.shape[0] == 1:
        codes = codes[0]
    if codes.ndim != 2 or codes.shape[0] != channels:
        raise CliError(
            f"listen codes {path} have shape {list(codes.shape)}; expected [{channels}, frames] or "
            f"[1, {channels}, frames]"
        )
    if not np.issubdtype(codes.dtype, np.integer):
        raise CliError(f"listen codes {path} are {codes.dtype}, not integers")
    if codes.shape[1] < 2:
        raise CliError(f"listen codes {path} hold {codes.shape[1]} frame(s); need at least 2 to get a frame back")
    if codes.min() < 0 or codes.max() >= codebook:
        raise CliError(f"listen codes {path} are outside 0..{codebook - 1}: {codes.min()}..{codes.max()}")
    return codes.T.astype(np.int32)


def read_sessions(
    paths: list[str], read: Callable[[str], np.ndarray], skip_bad: bool
) -> tuple[list[int], list[np.ndarray], list[tuple[str, str]]]:
    """`(indices read, their inputs, (path, reason) of those skipped)`; without `skip_bad` a bad input raises."""
    if not skip_bad:
        return list(range(len(paths))), [read(path) for path in paths], []
    kept, inputs, skipped = read_each(range(len(paths)), lambda index: read(paths[index]))
    skipped = [(paths[index], reason) for index, reason in skipped]
    if not kept:
        raise CliError(
            f"no session could be read ({len(skipped)} skipped): " + "; ".join(reason for _, reason in skipped)
        )
    return kept, inputs, skipped


def session_inputs(args: argparse.Namespace) -> list[str]:
    if args.batch_file:
        with open(args.batch_file) as lines:
            paths = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
        base = os.path.dirname(os.path.abspath(args.batch_file))
        paths = [path if os.path.isabs(path) else os.path.join(base, path) for path in paths]
        if not paths:
            raise CliError(f"batch file {args.batch_file} lists no sessions")
        return paths
    return [args.listen]


def output_paths(args: argparse.Namespace, inputs: list[str]) -> list[str]:
    if not args.batch_file:
        return [args.out]
    names = [os.path.splitext(os.path.basename(path))[0] for path in inputs]
    if len(set(names)) != len(names):
        raise CliError("sessions of a batch file need distinct file names (outputs are named after them)")
    return [os.path.join(args.out, f"{name}.npz") for name in names]


def write_session(
    path: str, frames: np.ndarray, step_s: np.ndarray, monologue: str | None, listen_codes: np.ndarray
) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as out:  # a file object: np.savez adds no ".npz" to a path named otherwise
        np.savez(
            out,
            frames=frames,
            text_ids=frames[:, 0],
            speak_codes=frames[:, 1:].T,
            listen_codes=listen_codes.T,
            step_ms=(step_s * 1e3).astype(np.float32),
        )
    if monologue is not None:
        with open(os.path.splitext(path)[0] + ".txt", "w") as out:
            out.write(monologue + "\n")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = cli.ArgumentParser(prog="python -m launch.stream", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="released-format folder or training workdir")
    parser.add_argument("--step", type=int, help="training checkpoint step (default: newest complete)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--listen", help="the user's codes, .npy [8, T], or (with --mimi) a WAV file")
    source.add_argument("--batch_file", "--batch-file", help="a file listing one codes .npy (or WAV) per line")
    parser.add_argument("--out", required=True, help="OUT.npz (one session) or a folder (--batch_file)")
    parser.add_argument("--greedy", action="store_true", help="argmax decoding (with the repetition penalties)")
    parser.add_argument("--tokenizer", help="write the monologue as text with this tokenizer")
    parser.add_argument("--max_frames", type=int, help="KV cache frames per session (default: the longest input)")
    parser.add_argument(
        "--sliding_window",
        action="store_true",
        help="past max_frames, attend to the last max_frames frames instead of stopping",
    )
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--mimi", help="Mimi folder, to read WAV inputs and write --out_wav")
    parser.add_argument("--out_wav", "--out-wav", help="the model's voice as WAV (a folder with --batch_file)")
    parser.add_argument("--stereo", action="store_true", help="--out_wav: user left, model right")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument(
        "--allow_nonfinite",
        action="store_true",
        help="hear NaN/Inf samples of a WAV input as silence (with a warning) instead of refusing",
    )
    args = parser.parse_args(argv)
    if args.max_frames is not None and args.max_frames < 1:
        parser.error(f"--max_frames {args.max_frames}: must be at least 1 (leave it out for the longest input)")
    return args


def is_wav(path: str) -> bool:
    return path.lower().endswith(".wav")


def wav_paths(args: argparse.Namespace, outputs: list[str]) -> list[str]:
    if not args.out_wav:
        return []
    if not args.batch_file:
        return [args.out_wav]
    return [os.path.join(args.out_wav, os.path.basename(os.path.splitext(path)[0]) + ".wav") for path in outputs]


def session_reader(args: argparse.Namespace, config, mimi_config=None) -> Callable[[str], np.ndarray]:
    """What reads one session's input: a WAV as mono 24 kHz audio [n] (given `mimi_config`), else codes [T, C]."""
    if mimi_config is not None:
        return lambda path: audio_lib.load_audio(
            path, mimi_config.sample_rate, mono=True, allow_nonfinite=args.allow_nonfinite
        )[0]
    return lambda path: read_listen_codes(path, config.aud_channel, codebook_size(config))


def run(args: argparse.Namespace) -> int:
    inputs = session_inputs(args)
    outputs = output_paths(args, inputs)
    wavs = wav_paths(args, outputs)
    audio_in = [is_wav(path) for path in inputs]
    if any(audio_in) and not all(audio_in):
        raise CliError("a batch mixes WAV and codes inputs; use one kind")
    audio_in = all(audio_in)
    if (audio_in or wavs) and not args.mimi:
        raise CliError("reading WAV input or writing --out_wav needs --mimi (a Mimi folder)")
    if args.stereo and not wavs:
        raise CliError("--stereo goes with --out_wav")
    existing = [path for path in outputs + wavs if os.path.exists(path)]
    if existing and not args.overwrite:
        raise CliError(f"output exists: {existing[0]} (use --overwrite to replace)")
    config, params, loaded = checkpoints.load_model(args.checkpoint, args.step)
    print(f"model: {loaded}", file=sys.stderr)
    tokenizer = None
    if args.tokenizer:
        tokenizer = text_lib.load_tokenizer(args.tokenizer, config.text_wait_id)
        text_lib.check_compatible(tokenizer, config)
    mimi_config = mimi_params = None
    if args.mimi:
        mimi_config, mimi_params = codec.load_codec(args.mimi)

    def progress(done: int, total: int) -> None:
        if done == total or done % 50 == 0:
            print(f"\rstep {done}/{total}", end="\n" if done == total else "", file=sys.stderr, flush=True)

    read = session_reader(args, config, mimi_config if audio_in else None)
    kept, session_input, skipped = read_sessions(inputs, read, skip_bad=bool(args.batch_file))
    for path, reason in skipped:
        print(f"warning: skipping {path}: {reason}", file=sys.stderr, flush=True)
    inputs, outputs = [inputs[i] for i in kept], [outputs[i] for i in kept]
    wavs = [wavs[i] for i in kept] if wavs else wavs

    # Each session samples from its own key (from --seed and its file name): the same tokens alone or in a batch.
    options = dict(
        sampling=SamplingConfig.greedy() if args.greedy else SamplingConfig(),
        max_frames=args.max_frames,
        sliding_window=args.sliding_window,
        seed=args.seed,
        session_seeds=[zlib.crc32(os.path.basename(path).encode()) for path in inputs],
        progress=progress,
    )
    if audio_in:
        result = sessions.run_sessions(
            config,
            params,
            session_input,
            **options,
            codec=audio_sessions.streaming_codec(config, mimi_config, mimi_params),
        )
        user_audio, model_audio, listen = session_input, result.voice, result.heard
    else:
        listen = session_input
        result = sessions.run_sessions(config, params, listen, **options)
        if wavs:  # the frames, decoded as they came: frame s-1 in slot s, like the audio path
            user_audio = [audio_sessions.decode_voice(config, mimi_config, mimi_params, codes) for codes in listen]
            model_audio = [
                np.concatenate(
                    [
                        np.zeros(mimi_config.frame_size, np.float32),
                        audio_sessions.decode_voice(config, mimi_config, mimi_params, frames[:, 1:]),
                    ]
                )
                for frames in result.frames
            ]
    for i, (path, frames) in enumerate(zip(outputs, result.frames)):
        monologue = None if tokenizer is None else sessions.monologue_text(frames[:, 0], tokenizer, config.text_wait_id)
        write_session(path, frames, result.step_s, monologue, listen[i])
        print(f"wrote {path} ({len(frames)} frames)" + ("" if monologue is None else " and its monologue"))
        if wavs:
            voice = model_audio[i]
            samples = np.stack([user_audio[i][: len(voice)], voice]) if args.stereo else voice[None]
            os.makedirs(os.path.dirname(os.path.abspath(wavs[i])), exist_ok=True)
            audio_lib.write_wav(wavs[i], samples, mimi_config.sample_rate)
            print(
                f"wrote {wavs[i]} ({samples.shape[1] / mimi_config.sample_rate:.2f} s, "
                f"{'stereo: user left, model right' if args.stereo else 'mono'})"
            )
    summary = result.latency_summary()
    print(
        f"{len(listen)} session(s), {len(result.step_s)} steps; per-frame latency p50 {summary['p50_ms']:.2f} ms, "
        f"p90 {summary['p90_ms']:.2f} ms, p99 {summary['p99_ms']:.2f} ms, max {summary['max_ms']:.2f} ms "
        f"(first step, with compilation: {summary['first_step_ms']:.0f} ms); real-time factor "
        f"{summary['real_time_factor']:.3f}"
    )
    if audio_in and len(result.codec_s) > 1:
        both = result.step_s[1:] + result.codec_s[1:]
        print(
            f"with the streaming codec (encode + decode each frame): p50 {np.median(both) * 1e3:.2f} ms, "
            f"real-time factor {np.median(both) / FRAME_S:.3f}"
        )
    if skipped:
        print(f"skipped {len(skipped)} of {len(skipped) + len(inputs)} session(s), no output written for them:")
        for path, reason in skipped:
            print(f"  {path}: {reason}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; a bad input or setting raises (`cli.run` prints it as one line, exit status 2)."""
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(cli.run(main))
