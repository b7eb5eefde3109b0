"""Full-Duplex-Bench (FDB) running: stream each sample's `input.wav` (and v1.5's `clean_input.wav`) through the
model as live and make OUT an FDB results folder that FDB's own scripts score unchanged (`fdb_io` finds the
samples, `fdb_score` scores the folder here with FDB's definitions).

OUT, per sample at `OUT/<task folder>/<ID>` (its path under --data; `TASK/ID` when --data is a task folder):
`output.wav` (the model's voice resampled to the input's rate and cut or padded to its length: mono, 16-bit),
`frames.npz` (the model's frames: text id + 8 speak codes `[T-1, 9]`, what it heard, its `<wait>` id), copies of
`input.wav` and the dataset folder's `.json` files (task file, transcription.json), and, when scored,
`output.json` (`fdb_score`); v1.5 adds `clean_output.wav`, `clean_frames.npz` and `clean_output.json` from
`clean_input.wav`, run as a session of its own in the same batches. OUT's root holds `summary.md`,
`summary.json` and `timeline.png`, never a task folder's contents: FDB's scripts take every entry of a task
folder for a sample folder. Files are written to a temporary name and renamed, output.wav last, so its presence
(with the input's length and rate) marks a finished session; a rerun skips it, and rerunning a session removes
its old transcript. Samples stream through the session scheduler (`flmjax.infer.sessions.run_sessions`, with
the streaming Mimi), `--batch` sessions at a time (sorted by length); the KV cache holds the longest session of
the dataset (`--max_frames`), and each session samples from its own key (from `--seed` and its path), so its
result does not depend on its batch. A sample whose input cannot be read is skipped and logged.
"""

from __future__ import annotations

import dataclasses
import math
import time
import zlib
from typing import Callable, Sequence

import numpy as np

from flmjax import audio as audio_lib
from flmjax.errors import read_each
from flmjax.eval.fdb_io import (
    FRAMES_NPZ,
    INPUT_WAV,
    MODEL_RATE,
    OUTPUT_JSON,
    OUTPUT_WAV,
    Sample,
    is_complete,
    read_input,
    to_input_timeline,
    write_npz_atomic,
    write_wav_atomic,
)
from flmjax.infer import audio as audio_sessions
from flmjax.infer import sessions
from flmjax.streams import FRAME_S


@dataclasses.dataclass
class RunStats:
    samples: int = 0
    audio_s: float = 0.0
    wall_s: float = 0.0
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)  # rel -> why its input could not be read

    @property
    def real_time_factor(self) -> float:
        """Wall seconds per second of audio (all batches, compilation included): below 1 is faster than live."""
        return self.wall_s / self.audio_s if self.audio_s else math.nan


def session_frames(sample: Sample, prefix: str = "") -> int:
    """Model steps of a session: its input's 24 kHz samples in 1920-sample frames."""
    n, _, rate = audio_lib.wav_info(sample.folder / f"{prefix}{INPUT_WAV}")
    return -(-round(n * MODEL_RATE / rate) // 1920)


def sample_seed(sample, prefix: str = "") -> int:
    """A session's own sampling seed, from its path (and "clean_" for v1.5's clean session): a sample samples
    the same tokens in any batch or slot."""
    return zlib.crc32((sample.rel + ("" if not prefix else f"/{prefix}")).encode())


Session = tuple[Sample, str]  # a sample and its prefix: "" (input.wav) or "clean_" (clean_input.wav)


def _read_group(
    group: Sequence[Session], allow_nonfinite: bool, skipped: dict[str, str], log: Callable[[str], None]
) -> tuple[list[Session], list[tuple[np.ndarray, int, int]]]:
    """The sessions of `group` whose input reads, and their `read_input`s; the others' samples go to `skipped`."""
    kept, inputs, bad = read_each(
        group, lambda job: read_input(job[0].folder / f"{job[1]}{INPUT_WAV}", allow_nonfinite)
    )
    for (sample, _), reason in bad:
        skipped[sample.rel] = reason
        log(f"fdb: warning: skipping {sample.rel}: {reason}")
    return kept, inputs


def run_samples(
    samples: Sequence[Sample],
    out_dir,
    config,
    params,
    mimi_config,
    mimi_params,
    *,
    batch: int = 4,
    sampling=None,
    seed: int = 0,
    max_frames: int | None = None,
    sliding_window: bool = False,
    log: Callable[[str], None] | None = None,
    done_before: int = 0,
    total: int | None = None,
    allow_nonfinite: bool = False,
) -> RunStats:
    """Streams the unfinished sessions of `samples` (input.wav, and v1.5's clean_input.wav as a session of its
    own) through the model, `batch` at a time as parallel sessions, and writes each one's frames.npz and
    output.wav (clean_frames.npz, clean_output.wav) atomically under `out_dir`, removing the transcript of an
    earlier output there. `max_frames`: the KV cache (default the longest session). A sample whose input cannot
    be read (damaged, NaN/Inf unless `allow_nonfinite`) is skipped and logged. Returns what ran, what was skipped
    and why, and how long it took."""
    log = log or (lambda line: None)
    total = total if total is not None else len(samples)
    jobs = [(s, p) for s in samples for p in s.prefixes if not is_complete(s, out_dir, p)]
    lengths = {(s.rel, p): session_frames(s, p) for s, p in jobs}
    order = sorted(jobs, key=lambda job: (-lengths[job[0].rel, job[1]], job[0].rel, job[1]))
    groups = [order[i : i + batch] for i in range(0, len(order), batch)]
    max_frames = max(lengths.values(), default=1) if max_frames is None else max_frames
    stats, start, finished = RunStats(), time.perf_counter(), set()
    for index, group in enumerate(groups):
        group, inputs = _read_group(group, allow_nonfinite, stats.skipped, log)
        if not group:
            continue
        seconds = sum(n / rate for _, n, rate in inputs)

        batch_label = f"batch {index + 1}/{len(groups)} ({len(group)} sessions)"

        def progress(step: int, steps: int, batch_label=batch_label) -> None:
            if step == steps or step % 25 == 0:
                log(f"  {batch_label}: step {step}/{steps}")

        result = sessions.run_sessions(
            config,
            params,
            [audio for audio, _, _ in inputs],
            sampling=sampling,
            max_frames=max_frames,
            sliding_window=sliding_window,
            seed=seed,
            session_seeds=[sample_seed(s, p) for s, p in group],
            progress=progress,
            codec=audio_sessions.streaming_codec(config, mimi_config, mimi_params),
        )
        for i, (sample, prefix) in enumerate(group):
            _, n_samples, rate = inputs[i]
            folder = sample.out_folder(out_dir)
            frames = np.asarray(result.frames[i], np.int32)
            voice = np.asarray(result.voice[i], np.float32)
            bad = ~np.isfinite(voice)
            if bad.any():  # e.g. a speak code outside the codebook (the audio pad id) decodes to NaN
                outside = np.argwhere(frames[:, 1:] >= mimi_config.bins)
                where = (
                    f"; first speak code outside the codec's {mimi_config.bins} at model frame "
                    f"{outside[0][0]}, codebook {outside[0][1]}: {frames[outside[0][0], 1 + outside[0][1]]}"
                    if outside.size
                    else ""
                )
                log(
                    f"fdb: warning: {sample.rel}: {int(bad.sum())} non-finite samples in the model's voice from "
                    f"{np.argmax(bad) / MODEL_RATE:.2f} s, written as silence{where}"
                )
                voice = np.where(bad, np.float32(0), voice)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{prefix}{OUTPUT_JSON}").unlink(missing_ok=True)  # the transcript of an earlier output
            write_npz_atomic(
                folder / f"{prefix}{FRAMES_NPZ}",
                frames=frames,
                text_ids=frames[:, 0],
                speak_codes=frames[:, 1:].T,
                listen_codes=np.asarray(result.heard[i]).T,
                text_wait_id=np.int32(config.text_wait_id),
                frame_s=np.float32(FRAME_S),
                nonfinite_audio_s=np.float32(bad.sum() / MODEL_RATE),
            )
            write_wav_atomic(folder / f"{prefix}{OUTPUT_WAV}", to_input_timeline(voice, n_samples, rate), rate)
            if is_complete(sample, out_dir):
                finished.add(sample.rel)
        stats.samples = len(finished)
        stats.audio_s += seconds
        stats.wall_s = time.perf_counter() - start
        log(
            f"fdb: {done_before + stats.samples}/{total} samples done (batch {index + 1}/{len(groups)}: "
            f"{len(group)} sessions, {seconds:.1f} s of audio; {stats.wall_s:.1f} s so far)"
        )
    return stats
