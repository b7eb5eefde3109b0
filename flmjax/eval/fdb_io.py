"""Full-Duplex-Bench (FDB) samples and files: finding the sample folders of a dataset and reading their task files
and inputs (`discover_samples`, `sample_problem`, `read_input`), and the files of an FDB results folder
(`is_complete`, `place_inputs`, atomic writes). `fdb_run` streams the samples through the model, `fdb_score`
scores the results folder, `launch.eval fdb` is the command.

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

Bad samples are skipped, never fatal (the command lists them): a task file that does not parse, a folder with
`input.wav` under a task folder without its task file, an input (or clean_input) that is unreadable, cut short, not
mono, under 16 kHz (a backchannel's not exactly 16 kHz), holds NaN or Inf (`--allow_nonfinite`: heard as silence),
is shorter than two frames (0.16 s), or ends before a time its task file names.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
from typing import Sequence

import numpy as np

from flmjax import audio as audio_lib
from flmjax.errors import UserError, one_line
from flmjax.files import write_atomically
from flmjax.streams import FRAME_S

MODEL_RATE = 24_000
OUTPUT_WAV, FRAMES_NPZ, INPUT_WAV, OUTPUT_JSON = "output.wav", "frames.npz", "input.wav", "output.json"
CLEAN = "clean_"  # v1.5: clean_input.wav -> clean_output.wav, clean_output.json, clean_frames.npz
FDB_RATE = 16_000  # FDB's data and its VAD (eval_backchannel.py runs Silero on output.wav as 16 kHz)
# Task file -> metric family (v1.5's metadata.json: the family is its category, from the folder names).
TASK_FILES = {
    "turn_taking.json": "turn_taking",
    "pause.json": "pause_handling",
    "interrupt.json": "user_interruption",
    "metadata.json": None,
}
V15_CATEGORIES = ("user_interruption", "user_backchannel", "background_speech", "talking_to_other")
# The word a dataset folder of each family names itself with (candor_pause_handling, icc_backchannel, ...).
FAMILY_KEYWORDS = {
    "turn_taking": "turn_taking",
    "pause_handling": "pause",
    "user_interruption": "interrupt",
    "backchannel": "backchannel",
    "user_backchannel": "user_backchannel",
    "background_speech": "background_speech",
    "talking_to_other": "talking_to_other",
    "overlap": "overlap",
}
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
def load_json(path: pathlib.Path):
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
    data = load_json(path)
    if family == "turn_taking":
        try:
            return {"turn_end_s": float(data[0]["timestamp"][0])}
        except (TypeError, ValueError, IndexError, KeyError):
            raise FdbError(f'{path}: expected [{{"timestamp": [turn_end_s, ...]}}]') from None
    if family == "pause_handling":
        if not isinstance(data, list):
            raise FdbError(f'{path}: expected a list of {{"timestamp": [start_s, end_s]}}')
        return {
            "pauses_s": [
                _interval(entry.get("timestamp") if isinstance(entry, dict) else None, path, "a pause timestamp")
                for entry in data
            ]
        }
    if family == "user_interruption" and path.name == "interrupt.json":
        entry = data[0] if isinstance(data, list) and data and isinstance(data[0], dict) else None
        if entry is None:
            raise FdbError(f'{path}: expected [{{"context", "interrupt", "timestamp": [start_s, end_s]}}]')
        start, end = _interval(entry.get("timestamp"), path, "timestamp")
        return {
            "event_start_s": start,
            "event_end_s": end,
            "context_text": entry.get("context", ""),
            "event_text": entry.get("interrupt", ""),
        }
    if not isinstance(data, dict):  # v1.5 metadata.json
        raise FdbError(f'{path}: expected an object with "timestamps": [start_s, end_s]')
    start, end = _interval(data.get("timestamps"), path, "timestamps")
    text = next((data[k] for k in ("current_turn_text", "backchannel_text", "background_text") if data.get(k)), "")
    return {
        "event_start_s": start,
        "event_end_s": end,
        "context_text": data.get("context_text", ""),
        "event_text": text,
    }


def _v15_family(names: Sequence[str], metadata: pathlib.Path) -> str:
    """The v1.5 category of a metadata.json sample: the nearest folder naming one; else, by the keys of the fork
    abePclWaseda/Full-Duplex-Bench's generator (`backchannel_text`, `background_text`, not FDB's own schema),
    "overlap"."""
    for name in names:  # nearest folder first
        for category in V15_CATEGORIES:
            if category in name:
                return category
    data = load_json(metadata)
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
        for keyword, task_file in (
            ("turn_taking", "turn_taking.json"),
            ("pause", "pause.json"),
            ("interrupt", "interrupt.json"),
        ):
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
    return [
        dataclasses.replace(s, task=(name if len(dirs_by_name[name]) == 1 else s.task_dir))
        for s in placed
        for name in [s.task_dir.rpartition("/")[2]]
    ]


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
                skip(
                    rel,
                    FdbError(
                        f"{folder}: has {INPUT_WAV} but no {expected}, the task file of its task "
                        f"folder {ancestors[0]!r}"
                    ),
                )
            continue
        keyword = FAMILY_KEYWORDS[family]
        task = next((name for name in ancestors if keyword in name), family)
        clean = folder / f"{CLEAN}{INPUT_WAV}"
        samples.append(
            Sample(
                folder,
                rel,
                task,
                family,
                task_file,
                info,
                clean_input=clean
                if task_file is not None and task_file.name == "metadata.json" and clean.is_file()
                else None,
            )
        )
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
        return (
            f"{path}: {channels} channels; FDB's inputs are mono (get_timing.py reads one channel): mix it down first"
        )
    if rate < FDB_RATE or (sample.family == "backchannel" and rate != FDB_RATE):
        need = (
            "16 kHz (eval_backchannel.py runs Silero on output.wav as 16 kHz)"
            if sample.family == "backchannel"
            else "at least 16 kHz (FDB's VAD and recogniser work at 16 kHz)"
        )
        return f"{path}: {rate} Hz; FDB's inputs are {need}"
    duration = n / rate
    if duration < MIN_CLIP_S:
        return (
            f"{path}: {duration:.3f} s is too short: the model answers one {FRAME_S * 1e3:.0f} ms frame late, "
            f"so a clip needs at least {MIN_CLIP_S:.2f} s"
        )
    late = [(name, t) for name, t in _task_times(sample.info) if t > duration + TIME_TOLERANCE_S]
    if late and path.name == INPUT_WAV:
        name, t = late[0]
        return (
            f"not scoreable: {sample.task_file.name} puts the {name.removesuffix('_s')} at {t:g} s, after the end "
            f"of {path} at {duration:.3f} s (the clip is too short for its task)"
        )
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
