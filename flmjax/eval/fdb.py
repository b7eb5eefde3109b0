"""Full-Duplex-Bench (FDB) runner: stream each sample's `input.wav` (and v1.5's `clean_input.wav`) through the
model as live and make OUT an FDB results folder that FDB's own scripts score unchanged; `fdb_score` scores it
here with FDB's definitions.

    python -m launch.eval fdb --data DIR --checkpoint CKPT --mimi MIMI --out OUT [--batch 4] [--greedy]
                              [--seed 0] [--no_score] [--transcripts flmjax|keep] [--icc_gt PATH] ...

The benchmark: Lin et al., v1 arXiv 2503.04721, v1.5 arXiv 2507.23159; github DanielLin94144/Full-Duplex-Bench
(read at commit d7336bd), `v1_v1.5/`. Dataset layout (its `dataset/README.md`):

    v1.0/candor_pause_handling/{ID}/        input.wav, pause.json, transcription.json
    v1.0/candor_turn_taking/{ID}/           input.wav, turn_taking.json, transcription.json
    v1.0/icc_backchannel/{ID}/              input.wav, transcription.json            (no task file)
    v1.0/synthetic_pause_handling/{ID}/     input.wav, pause.json, transcription.json
    v1.0/synthetic_user_interruption/{ID}/  input.wav, context.wav, interrupt.wav, interrupt.json
    v1.5/{user_interruption,user_backchannel,talking_to_other,background_speech}/{ID}/
                                            input.wav, clean_input.wav, metadata.json

Task files (the keys FDB's scripts read):

- `turn_taking.json`: `[{"text": "[TURN-TAKING]", "timestamp": [turn_end_s, ...]}]`; the user's turn ends at
  `[0]["timestamp"][0]` (`eval_smooth_turn_taking.py`).
- `pause.json`: `[{"text": "[PAUSE]", "timestamp": [start_s, end_s]}, ...]`; `eval_pause_handling.py` does not
  read it (it scores the whole output); its times are kept in the record's `task_info`.
- `interrupt.json`: `[{"context", "interrupt", "timestamp": [start_s, end_s]}]` (`eval_user_interruption.py`
  reads `[0]["timestamp"][1]`, the interruption's end; `get_transcript/asr.py --task user_interruption` crops
  the output there before transcribing).
- `metadata.json` (v1.5): `{"context_text", "current_turn_text", "timestamps": [start_s, end_s]}`: the overlap
  event (`dataset/README.md`; `eval_general_before_after.py` `eval_general_split` reads `["timestamps"][1]`).
- ICC backchannel samples have no task file: a folder holding `input.wav` counts as one when a folder on its
  path names "backchannel" (`eval_backchannel.py` scores only digit-named folders).

The sample's family comes from its task file, for v1.5 from the category its folder names; `Sample.task` is its
task folder's name (the summary's key).

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
the streaming Mimi), `--batch` sessions at a time (sorted by length); the KV cache holds the longest session of the dataset (`--max_frames`), and each
session samples from its own key (from `--seed` and its path), so its result does not depend on its batch.

Bad samples are skipped, never fatal: a task file that does not parse, a folder with `input.wav` under a task
folder without its task file, an input (or clean_input) that is unreadable, cut short, not mono, under 16 kHz
(a backchannel's not exactly 16 kHz), holds NaN or Inf (`--allow_nonfinite`: heard as silence), is shorter than
two frames (0.16 s), or ends before a time its task file names; at scoring, an `output.json` that is malformed
or longer than its output.wav (another run's). Each is one line on stderr naming the sample, and listed with its
reason in `summary.md` / `summary.json` (`skipped_samples`). Exit status 0 when any sample finished, 2 (with
`error: ...`) when every sample was skipped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pathlib
import shutil
import sys
import time
import zlib
from typing import Callable, Sequence

import numpy as np

from flmjax import audio as audio_lib
from flmjax.errors import UserError, one_line, read_each
from flmjax.files import write_atomically
from flmjax.streams import FRAME_S

MODEL_RATE = 24_000
OUTPUT_WAV, FRAMES_NPZ, INPUT_WAV, OUTPUT_JSON = "output.wav", "frames.npz", "input.wav", "output.json"
CLEAN = "clean_"  # v1.5: clean_input.wav -> clean_output.wav, clean_output.json, clean_frames.npz
FDB_RATE = 16_000  # FDB's data and its VAD (eval_backchannel.py runs Silero on output.wav as 16 kHz)
# Task file -> metric family (v1.5's metadata.json: the family is its category, from the folder names).
TASK_FILES = {"turn_taking.json": "turn_taking", "pause.json": "pause_handling",
              "interrupt.json": "user_interruption", "metadata.json": None}
V15_CATEGORIES = ("user_interruption", "user_backchannel", "background_speech", "talking_to_other")
# The word a dataset folder of each family names itself with (candor_pause_handling, icc_backchannel, ...).
FAMILY_KEYWORDS = {"turn_taking": "turn_taking", "pause_handling": "pause", "user_interruption": "interrupt",
                   "backchannel": "backchannel", "user_backchannel": "user_backchannel",
                   "background_speech": "background_speech", "talking_to_other": "talking_to_other",
                   "overlap": "overlap"}
MIN_CLIP_S = 2 * FRAME_S  # the model's first frame comes back one step late: a shorter clip gets no answer
TIME_TOLERANCE_S = 0.01  # a task time this far past the clip's end is rounding, not a missing turn


class FdbError(UserError, ValueError):
    """A dataset, output folder or command line the runner cannot use; the message names the problem."""


@dataclasses.dataclass(frozen=True)
class Sample:
    """One FDB sample folder. `rel`: its path under `--data` ("." for `--data` itself); `out_rel`: its path under
    `--out` (`rel`, or `TASK/ID` when `--data` is the task folder or the sample itself: OUT's root never holds a
    sample); `task`: the name of its task folder in OUT (the folder FDB's scripts take as `--root_dir`; its path
    under OUT when two task folders share a name), the summary's key; `family`: which metrics score it; `info`:
    the task file's times; `clean_input`: v1.5's `clean_input.wav`, run as a second session."""

    folder: pathlib.Path
    rel: str
    task: str
    family: str
    task_file: pathlib.Path | None
    info: dict
    out_rel: str = ""
    clean_input: pathlib.Path | None = None

    def out_folder(self, out_dir) -> pathlib.Path:
        return pathlib.Path(out_dir) / (self.out_rel or self.rel)

    @property
    def task_dir(self) -> str:
        """The task folder's path under OUT (FDB's `--root_dir` is OUT/task_dir)."""
        return (self.out_rel or self.rel).rpartition("/")[0]

    @property
    def prefixes(self) -> tuple[str, ...]:
        """The sessions of this sample: "" (input.wav -> output.wav) and, for v1.5, "clean_" (clean_input.wav ->
        clean_output.wav)."""
        return ("", CLEAN) if self.clean_input is not None else ("",)


# --------------------------------------------------------------------------------------------- discovery
def _load_json(path: pathlib.Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise FdbError(f"{path}: not readable JSON ({error})") from None


def _interval(value, path: pathlib.Path, what: str) -> tuple[float, float]:
    try:
        start, end = float(value[0]), float(value[1])
    except (TypeError, ValueError, IndexError, KeyError):
        raise FdbError(f"{path}: {what} is {value!r}; expected [start_s, end_s]") from None
    return start, end


def parse_task_file(path: pathlib.Path, family: str) -> dict:
    """The times (seconds) and texts of a task file, by FDB's schema (module docstring)."""
    data = _load_json(path)
    if family == "turn_taking":
        try:
            return {"turn_end_s": float(data[0]["timestamp"][0])}
        except (TypeError, ValueError, IndexError, KeyError):
            raise FdbError(f"{path}: expected [{{\"timestamp\": [turn_end_s, ...]}}]") from None
    if family == "pause_handling":
        if not isinstance(data, list):
            raise FdbError(f"{path}: expected a list of {{\"timestamp\": [start_s, end_s]}}")
        return {"pauses_s": [_interval(entry.get("timestamp") if isinstance(entry, dict) else None, path,
                                       "a pause timestamp") for entry in data]}
    if family == "user_interruption" and path.name == "interrupt.json":
        entry = data[0] if isinstance(data, list) and data and isinstance(data[0], dict) else None
        if entry is None:
            raise FdbError(f"{path}: expected [{{\"context\", \"interrupt\", \"timestamp\": [start_s, end_s]}}]")
        start, end = _interval(entry.get("timestamp"), path, "timestamp")
        return {"event_start_s": start, "event_end_s": end, "context_text": entry.get("context", ""),
                "event_text": entry.get("interrupt", "")}
    if not isinstance(data, dict):  # v1.5 metadata.json
        raise FdbError(f"{path}: expected an object with \"timestamps\": [start_s, end_s]")
    start, end = _interval(data.get("timestamps"), path, "timestamps")
    text = next((data[k] for k in ("current_turn_text", "backchannel_text", "background_text") if data.get(k)), "")
    return {"event_start_s": start, "event_end_s": end, "context_text": data.get("context_text", ""),
            "event_text": text}


def _v15_family(names: Sequence[str], metadata: pathlib.Path) -> str:
    """The v1.5 category of a metadata.json sample: the nearest folder naming one; else, by the keys of the fork
    abePclWaseda/Full-Duplex-Bench's generator (`backchannel_text`, `background_text`, not FDB's own schema),
    "overlap"."""
    for name in names:  # nearest folder first
        for category in V15_CATEGORIES:
            if category in name:
                return category
    data = _load_json(metadata)
    if isinstance(data, dict):
        if data.get("backchannel_text"):
            return "user_backchannel"
        if data.get("background_text"):
            return "background_speech"
    return "overlap"


def _expected_task_file(names: Sequence[str]) -> str | None:
    """The task file a folder under these folder names (nearest first) needs, by FDB's folder naming."""
    for name in names:
        if any(category in name for category in V15_CATEGORIES):
            return "metadata.json"
        for keyword, task_file in (("turn_taking", "turn_taking.json"), ("pause", "pause.json"),
                                   ("interrupt", "interrupt.json")):
            if keyword in name:
                return task_file
    return None


def _with_out_paths(samples: list[Sample], data: pathlib.Path) -> list[Sample]:
    """Each sample's `out_rel` (`rel` when it lies in a task folder under --data, else TASK/ID) and `task` (its
    task folder's name in OUT; the folder's path when two share a name)."""
    resolved = data.resolve()
    placed = []
    for sample in samples:
        parts = [] if sample.rel == "." else sample.rel.split("/")
        if len(parts) >= 2:
            out_rel = sample.rel
        elif len(parts) == 1:  # --data is the task folder
            out_rel = f"{resolved.name or sample.task}/{parts[0]}"
        else:  # --data is the sample folder
            out_rel = f"{resolved.parent.name or sample.task}/{resolved.name}"
        placed.append(dataclasses.replace(sample, out_rel=out_rel))
    dirs_by_name: dict[str, set[str]] = {}
    for sample in placed:
        dirs_by_name.setdefault(sample.task_dir.rpartition("/")[2], set()).add(sample.task_dir)
    return [dataclasses.replace(s, task=(name if len(dirs_by_name[name]) == 1 else s.task_dir))
            for s in placed for name in [s.task_dir.rpartition("/")[2]]]


def discover_samples(data_dir, skipped: dict[str, str] | None = None) -> list[Sample]:
    """Every sample folder under `data_dir` (itself included): `input.wav` plus a task file, or `input.wav` alone
    on a path naming "backchannel" (ICC). Sorted by relative path. A task file that does not parse, or a folder
    with `input.wav` under a task folder (turn_taking, pause, interrupt, a v1.5 category) without its task file,
    is an `FdbError`, or, given `skipped`, leaves its sample out with the reason in `skipped[rel]`."""
    data = pathlib.Path(data_dir)
    if not data.is_dir():
        raise FdbError(f"--data {data} is not a folder")
    root_name = data.resolve().name
    samples = []

    def skip(rel: str, error: FdbError) -> None:
        if skipped is None:
            raise error
        skipped[rel] = one_line(error)

    for current, dirs, files in os.walk(data):
        dirs.sort()
        if INPUT_WAV not in files:
            continue
        folder = pathlib.Path(current)
        rel = folder.relative_to(data).as_posix() if folder != data else "."
        parts = [] if rel == "." else rel.split("/")
        ancestors = list(reversed(parts[:-1])) + [root_name]  # the parent first, up to --data
        task_file = next((folder / name for name in TASK_FILES if (folder / name).is_file()), None)
        if task_file is not None:
            try:
                family = TASK_FILES[task_file.name] or _v15_family(ancestors, task_file)
                info = parse_task_file(task_file, family)
            except FdbError as error:
                skip(rel, error)
                continue
        elif any("backchannel" in name for name in parts[:-1] + [root_name]):
            family, info = "backchannel", {}
        else:
            expected = _expected_task_file(ancestors)
            if expected is not None:
                skip(rel, FdbError(f"{folder}: has {INPUT_WAV} but no {expected}, the task file of its task "
                                   f"folder {ancestors[0]!r}"))
            continue
        keyword = FAMILY_KEYWORDS[family]
        task = next((name for name in ancestors if keyword in name), family)
        clean = folder / f"{CLEAN}{INPUT_WAV}"
        samples.append(Sample(folder, rel, task, family, task_file, info,
                              clean_input=clean if task_file is not None and task_file.name == "metadata.json"
                              and clean.is_file() else None))
    return _with_out_paths(sorted(samples, key=lambda s: s.rel), data)


# ---------------------------------------------------------------------------------------------- files
def is_complete(sample: Sample, out_dir, prefix: str | None = None) -> bool:
    """Every session of the sample (or the one of `prefix`) has its output.wav (written last) and frames.npz, and
    output.wav has its input's length and rate."""
    if prefix is None:
        return all(is_complete(sample, out_dir, p) for p in sample.prefixes)
    folder = sample.out_folder(out_dir)
    output = folder / f"{prefix}{OUTPUT_WAV}"
    if not output.is_file() or not (folder / f"{prefix}{FRAMES_NPZ}").is_file():
        return False
    try:
        n_out, _, rate_out = audio_lib.wav_info(output)
    except audio_lib.AudioError:
        return False
    n_in, _, rate_in = audio_lib.wav_info(sample.folder / f"{prefix}{INPUT_WAV}")
    return (n_out, rate_out) == (n_in, rate_in)


def place_inputs(sample: Sample, out_dir) -> None:
    """Copies into the sample's OUT folder what FDB's scripts read beside output.wav: input.wav, clean_input.wav
    and every .json of the dataset folder (the task file, transcription.json, ...); a copy already there with the
    same size is kept."""
    folder = sample.out_folder(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    ours = {f"{p}{OUTPUT_JSON}" for p in ("", CLEAN)}
    for source in sorted(sample.folder.iterdir()):
        if not source.is_file() or source.name in ours:
            continue
        if source.name in (INPUT_WAV, f"{CLEAN}{INPUT_WAV}") or source.suffix == ".json":
            target = folder / source.name
            if not target.is_file() or target.stat().st_size != source.stat().st_size:
                write_atomically(target, lambda tmp, source=source: shutil.copyfile(source, tmp))


def write_npz_atomic(path: pathlib.Path, **arrays) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as out:  # a file object: np.savez adds no ".npz" suffix
            np.savez(out, **arrays)

    write_atomically(path, write)


def write_wav_atomic(path: pathlib.Path, samples: np.ndarray, rate: int) -> None:
    write_atomically(path, lambda tmp: audio_lib.write_wav(tmp, samples, rate))


def read_input(path, allow_nonfinite: bool = False) -> tuple[np.ndarray, int, int]:
    """(mono float32 [n] at 24 kHz for the model, the file's samples n, its rate); NaN/Inf as `audio.read_wav`."""
    samples, rate = audio_lib.read_wav(path, allow_nonfinite)
    mono = samples.mean(axis=0)
    return audio_lib.resample(mono, rate, MODEL_RATE), samples.shape[1], rate


def to_input_timeline(voice_24k: np.ndarray, n_samples: int, rate: int) -> np.ndarray:
    """The model's 24 kHz voice at the input's rate, cut or zero-padded to exactly `n_samples`."""
    voice = audio_lib.resample(np.asarray(voice_24k, np.float32), MODEL_RATE, rate)[:n_samples]
    return np.pad(voice, (0, n_samples - voice.size))


def _task_times(info: dict) -> list[tuple[str, float]]:
    """(name, seconds) of every time a task file gave (turn end, event start and end, pause bounds)."""
    times = [(name, info[name]) for name in ("turn_end_s", "event_start_s", "event_end_s") if name in info]
    return times + [("pause", bound) for pause in info.get("pauses_s", ()) for bound in pause]


def _input_problem(sample: Sample, path: pathlib.Path) -> str | None:
    try:
        n, channels, rate = audio_lib.wav_info(path)
    except audio_lib.AudioError as error:
        return one_line(error)
    if channels != 1:
        return (f"{path}: {channels} channels; FDB's inputs are mono (get_timing.py reads one channel): "
                "mix it down first")
    if rate < FDB_RATE or (sample.family == "backchannel" and rate != FDB_RATE):
        need = "16 kHz (eval_backchannel.py runs Silero on output.wav as 16 kHz)" if sample.family == "backchannel" \
            else "at least 16 kHz (FDB's VAD and recogniser work at 16 kHz)"
        return f"{path}: {rate} Hz; FDB's inputs are {need}"
    duration = n / rate
    if duration < MIN_CLIP_S:
        return (f"{path}: {duration:.3f} s is too short: the model answers one {FRAME_S * 1e3:.0f} ms frame late, "
                f"so a clip needs at least {MIN_CLIP_S:.2f} s")
    late = [(name, t) for name, t in _task_times(sample.info) if t > duration + TIME_TOLERANCE_S]
    if late and path.name == INPUT_WAV:
        name, t = late[0]
        return (f"not scoreable: {sample.task_file.name} puts the {name.removesuffix('_s')} at {t:g} s, after the end "
                f"of {path} at {duration:.3f} s (the clip is too short for its task)")
    return None


def sample_problem(sample: Sample) -> str | None:
    """Why a sample cannot be run and scored, from its inputs' headers (input.wav, and clean_input.wav for v1.5:
    readable, mono, 16 kHz or more (exactly 16 kHz for backchannels), two frames long) and its task file's times;
    None if it can."""
    for prefix in sample.prefixes:
        problem = _input_problem(sample, sample.folder / f"{prefix}{INPUT_WAV}")
        if problem is not None:
            return problem
    return None


# ---------------------------------------------------------------------------------------------- running
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


def _read_group(group: Sequence[Session], allow_nonfinite: bool, skipped: dict[str, str],
                log: Callable[[str], None]) -> tuple[list[Session], list[tuple[np.ndarray, int, int]]]:
    """The sessions of `group` whose input reads, and their `read_input`s; the others' samples go to `skipped`."""
    kept, inputs, bad = read_each(group, lambda job: read_input(job[0].folder / f"{job[1]}{INPUT_WAV}",
                                                                allow_nonfinite))
    for (sample, _), reason in bad:
        skipped[sample.rel] = reason
        log(f"fdb: warning: skipping {sample.rel}: {reason}")
    return kept, inputs


def run_samples(samples: Sequence[Sample], out_dir, config, params, mimi_config, mimi_params, *,
                batch: int = 4, sampling=None, seed: int = 0, max_frames: int | None = None,
                sliding_window: bool = False, log: Callable[[str], None] | None = None,
                done_before: int = 0, total: int | None = None, allow_nonfinite: bool = False) -> RunStats:
    """Streams the unfinished sessions of `samples` (input.wav, and v1.5's clean_input.wav as a session of its
    own) through the model, `batch` at a time as parallel sessions, and writes each one's frames.npz and
    output.wav (clean_frames.npz, clean_output.wav) atomically under `out_dir`, removing the transcript of an
    earlier output there. `max_frames`: the KV cache (default the longest session). A sample whose input cannot
    be read (damaged, NaN/Inf unless `allow_nonfinite`) is skipped and logged. Returns what ran, what was skipped
    and why, and how long it took."""
    from flmjax.infer import audio as audio_sessions
    from flmjax.infer import sessions

    log = log or (lambda line: None)
    total = total if total is not None else len(samples)
    jobs = [(s, p) for s in samples for p in s.prefixes if not is_complete(s, out_dir, p)]
    lengths = {(s.rel, p): session_frames(s, p) for s, p in jobs}
    order = sorted(jobs, key=lambda job: (-lengths[job[0].rel, job[1]], job[0].rel, job[1]))
    groups = [order[i:i + batch] for i in range(0, len(order), batch)]
    max_frames = max(lengths.values(), default=1) if max_frames is None else max_frames
    stats, start, finished = RunStats(), time.perf_counter(), set()
    for index, group in enumerate(groups):
        group, inputs = _read_group(group, allow_nonfinite, stats.skipped, log)
        if not group:
            continue
        seconds = sum(n / rate for _, n, rate in inputs)

        def progress(step: int, steps: int, index=index) -> None:
            if step == steps or step % 25 == 0:
                log(f"  batch {index + 1}/{len(groups)} ({len(group)} sessions): step {step}/{steps}")

        result = sessions.run_sessions(config, params, [audio for audio, _, _ in inputs], sampling=sampling,
                                       max_frames=max_frames, sliding_window=sliding_window, seed=seed,
                                       session_seeds=[sample_seed(s, p) for s, p in group], progress=progress,
                                       codec=audio_sessions.streaming_codec(config, mimi_config, mimi_params))
        for i, (sample, prefix) in enumerate(group):
            _, n_samples, rate = inputs[i]
            folder = sample.out_folder(out_dir)
            frames = np.asarray(result.frames[i], np.int32)
            voice = np.asarray(result.voice[i], np.float32)
            bad = ~np.isfinite(voice)
            if bad.any():  # e.g. a speak code outside the codebook (the audio pad id) decodes to NaN
                outside = np.argwhere(frames[:, 1:] >= mimi_config.bins)
                where = (f"; first speak code outside the codec's {mimi_config.bins} at model frame "
                         f"{outside[0][0]}, codebook {outside[0][1]}: {frames[outside[0][0], 1 + outside[0][1]]}"
                         if outside.size else "")
                log(f"fdb: warning: {sample.rel}: {int(bad.sum())} non-finite samples in the model's voice from "
                    f"{np.argmax(bad) / MODEL_RATE:.2f} s, written as silence{where}")
                voice = np.where(bad, np.float32(0), voice)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{prefix}{OUTPUT_JSON}").unlink(missing_ok=True)  # the transcript of an earlier output
            write_npz_atomic(folder / f"{prefix}{FRAMES_NPZ}", frames=frames, text_ids=frames[:, 0],
                             speak_codes=frames[:, 1:].T, listen_codes=np.asarray(result.heard[i]).T,
                             text_wait_id=np.int32(config.text_wait_id), frame_s=np.float32(FRAME_S),
                             nonfinite_audio_s=np.float32(bad.sum() / MODEL_RATE))
            write_wav_atomic(folder / f"{prefix}{OUTPUT_WAV}", to_input_timeline(voice, n_samples, rate), rate)
            if is_complete(sample, out_dir):
                finished.add(sample.rel)
        stats.samples = len(finished)
        stats.audio_s += seconds
        stats.wall_s = time.perf_counter() - start
        log(f"fdb: {done_before + stats.samples}/{total} samples done (batch {index + 1}/{len(groups)}: "
            f"{len(group)} sessions, {seconds:.1f} s of audio; {stats.wall_s:.1f} s so far)")
    return stats


# ---------------------------------------------------------------------------------------------- command line
def add_fdb_arguments(parser: argparse.ArgumentParser) -> None:
    """The `fdb` command's flags."""
    parser.add_argument("--data", required=True, help="FDB dataset folder (searched for sample folders)")
    parser.add_argument("--out", required=True, help="output root: OUT/<sample path>/output.wav, summary.md/json")
    parser.add_argument("--checkpoint", help="released-format folder or training workdir (needed to run samples)")
    parser.add_argument("--step", type=int, help="training checkpoint step (default: newest complete)")
    parser.add_argument("--mimi", help="Mimi folder (model.safetensors [+ mimi_config.json]); needed to run samples")
    parser.add_argument("--batch", type=int, default=4, help="samples streamed together as one batch")
    parser.add_argument("--greedy", action="store_true", help="argmax decoding (with the repetition penalties)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--max_frames", type=int,
                        help="KV cache frames per session (default: the longest sample of the dataset)")
    parser.add_argument("--sliding_window", action="store_true",
                        help="past max_frames, attend to the last max_frames frames instead of stopping")
    parser.add_argument("--limit", type=int, help="only the first N samples (in path order)")
    parser.add_argument("--no_score", action="store_true", help="run the model only; no summary")
    parser.add_argument("--transcripts", choices=("flmjax", "keep"), default="flmjax",
                        help="flmjax: write every output.json with flmjax's recogniser (PocketSphinx); keep: score "
                        "an output.json already there (e.g. from FDB's get_transcript/asr.py), write only missing ones")
    parser.add_argument("--icc_gt", help="FDB's icc_gt_distribution.json (in its repository, v1_v1.5/evaluation/; "
                        "non-commercial licence) for the backchannel JSD")
    parser.add_argument("--tokenizer", help="show the monologue in timeline.png as text with this tokenizer")
    parser.add_argument("--timeline", help="the sample (path under --data) drawn in timeline.png")
    parser.add_argument("--allow_nonfinite", action="store_true",
                        help="hear NaN/Inf samples of an input.wav as silence (with a warning) instead of skipping it")


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _reasons(skipped: dict[str, str]) -> str:
    return "; ".join(f"{rel}: {reason}" for rel, reason in sorted(skipped.items()))


def run_fdb_command(args: argparse.Namespace) -> int:
    """Runs the `fdb` command (flags of `add_fdb_arguments`): 0 when any sample finished (those skipped are
    listed); a bad dataset, checkpoint, codec or command line, or every sample skipped, raises a `UserError`."""
    if args.batch < 1:
        raise FdbError(f"--batch {args.batch}: must be at least 1")
    if args.max_frames is not None and args.max_frames < 1:
        raise FdbError(f"--max_frames {args.max_frames}: must be at least 1 (leave it out for the longest sample)")
    data, out = pathlib.Path(args.data), pathlib.Path(args.out)
    skipped: dict[str, str] = {}  # rel -> why it is neither run nor scored
    found = discover_samples(data, skipped)
    if args.limit is not None:
        found = found[:max(0, args.limit)]
    if not found and not skipped:
        raise FdbError(f"no FDB samples under {data} (folders with input.wav and turn_taking.json, pause.json, "
                       "interrupt.json or metadata.json, or input.wav under a *backchannel* folder)")
    skipped.update({s.rel: problem for s in found if (problem := sample_problem(s)) is not None})
    for rel, reason in sorted(skipped.items()):
        _stderr(f"fdb: warning: skipping {rel}: {reason}")
    samples = [s for s in found if s.rel not in skipped]
    if not samples:
        raise FdbError(f"every sample under {data} was skipped: {_reasons(skipped)}")
    tasks = sorted({s.task for s in samples})
    pending = [s for s in samples if not is_complete(s, out)]
    _stderr(f"fdb: {len(samples)} samples in {len(tasks)} tasks ({', '.join(tasks)}); "
            f"{len(samples) - len(pending)} already done, {len(pending)} to run" +
            (f"; {len(skipped)} skipped" if skipped else ""))
    if not pending:
        _stderr(f"fdb: nothing new to do: every sample has its {OUTPUT_WAV} in {out}")
    else:
        if not args.checkpoint or not args.mimi:
            raise FdbError(f"{len(pending)} samples need running: give --checkpoint and --mimi")
        from flmjax import codec
        from flmjax.checkpoints import load_model
        from flmjax.infer import SamplingConfig

        config, params, loaded = load_model(args.checkpoint, args.step)
        _stderr(f"model: {loaded}")
        mimi_config, mimi_params = codec.load_codec(args.mimi)
        max_frames = args.max_frames or max(session_frames(s, p) for s in samples for p in s.prefixes)  # all samples: resume-stable
        stats = run_samples(pending, out, config, params, mimi_config, mimi_params, batch=args.batch,
                            sampling=SamplingConfig.greedy() if args.greedy else SamplingConfig(), seed=args.seed,
                            max_frames=max_frames, sliding_window=args.sliding_window, log=_stderr,
                            done_before=len(samples) - len(pending), total=len(samples),
                            allow_nonfinite=args.allow_nonfinite)
        skipped.update(stats.skipped)
        _stderr(f"fdb: ran {stats.samples} samples, {stats.audio_s:.1f} s of audio in {stats.wall_s:.1f} s wall "
                f"(real-time factor {stats.real_time_factor:.2f}, compilation included)")
    finished = [s for s in samples if s.rel not in skipped and is_complete(s, out)]
    if not finished:
        raise FdbError(f"no sample finished: {len(skipped)} skipped ({_reasons(skipped)})")
    if args.no_score:
        _print_skipped(skipped, len(found))
        return 0
    tokenizer = None
    if args.tokenizer:
        from flmjax.data import text as text_lib

        try:
            tokenizer = text_lib.load_tokenizer(args.tokenizer)
        except ValueError as error:
            raise FdbError(f"--tokenizer {args.tokenizer}: {error}") from None
    from flmjax.eval import fdb_score

    icc_gt = fdb_score.load_icc_gt(args.icc_gt) if args.icc_gt else None
    md_path, json_path, timeline_path = fdb_score.score_samples(
        samples, out, transcripts=args.transcripts, icc_gt=icc_gt, tokenizer=tokenizer,
        timeline_sample=args.timeline, skipped=skipped, allow_nonfinite=args.allow_nonfinite, log=_stderr)
    print(md_path.read_text())
    print(f"wrote {md_path}, {json_path}" + (f", {timeline_path}" if timeline_path else ""))
    return 0


def _print_skipped(skipped: dict[str, str], total: int) -> None:
    if skipped:
        print(f"skipped {len(skipped)} of {total} samples:")
        for rel, reason in sorted(skipped.items()):
            print(f"  {rel}: {reason}")
