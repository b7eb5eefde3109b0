"""Recorded conversations in moshi-finetune's layout, encoded with Mimi into a standard dialog manifest.

The input (moshi-finetune's data format):

    recordings.jsonl     {"path": "audio/0001.wav", "duration": 87.3}      one line per conversation
    audio/0001.wav       stereo WAV: left channel = the assistant (speak), right = the user (listen)
    audio/0001.json      {"alignments": [["Hello", [0.42, 0.71], "SPEAKER_MAIN"], ["there.", [0.71, 1.1], ...]]}

`path` is relative to the manifest's folder, or absolute; `duration` (seconds) only orders the encoding; an
optional `split` (default "train") names the split. The alignments' words, by speaker, become each channel's
sentence segments (`flmjax.data.word_alignments`: the speaker labels and the grouping rule).

Records: a stereo file is a dialog in split `SPLIT_dialog` (speak codes from the left channel, listen codes from
the right). A mono file is rejected ("mono audio") unless `mono_as="utterance"`: then it is one speaker's
utterances, a TTS-style record (speak channel only, split `SPLIT_tts`) when every word is `main_speaker`'s, an
ASR-style record (listen only, `SPLIT_asr`) when none is, rejected ("mixed speakers") otherwise. The split names
follow the synthetic corpus (`train_dialog`, `train_asr`, `train_tts`), so the stage configs read them alike.
Files with more than two channels, unreadable audio, or no or malformed alignments are rejected with a reason.

Encoding: both channels of `batch_files` files at a time, through the encoder `prepare_recordings` is given
(`flmjax.data.recording_encoder.make_encoder`: Mimi's windowed streaming encode over the local devices).

The work folder holds `codes/KEY.{speak,listen}.npy` ([frames, 8] int16) and `codes/KEY.json`, written last,
which records the audio file's size and mtime and the codec's identity: codes whose marker matches are reused,
so an interrupted run resumes where it stopped and a second run encodes nothing. `manifest.jsonl` there is a
standard `flmjax.data.manifest` manifest, built by `dataset.build_dataset` like any other.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from typing import Callable, Iterator, Sequence

import numpy as np

from flmjax.audio import AudioError, load_audio
from flmjax.data.recording_encoder import Encoder
from flmjax.data.records import CHANNELS
from flmjax.data.word_alignments import AlignedWord, GroupingRule, RecordingError, group_segments, read_alignments
from flmjax.files import write_atomically

MONO_AS = ("reject", "utterance")
DEFAULT_SPLIT = "train"
_DEFAULT_RULE = GroupingRule()  # frozen: one instance serves every call


# ---------------------------------------------------------------------------------------------------------------
# The audio manifest.


@dataclasses.dataclass(frozen=True)
class AudioEntry:
    line_number: int
    id: str  # the audio path relative to the manifest's folder, without its extension
    path: str  # absolute
    duration: float | None
    split: str

    @property
    def alignment_path(self) -> str:
        return os.path.splitext(self.path)[0] + ".json"

    @property
    def key(self) -> str:
        """A file name for this entry's codes: readable, and unique by a hash of the id."""
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", self.id)[-80:]
        return f"{safe}-{hashlib.sha1(self.id.encode()).hexdigest()[:10]}"


def read_audio_manifest(path: str | os.PathLike) -> tuple[list[AudioEntry], list[tuple[str, str]]]:
    """`(entries, rejections)`: the manifest's lines, and `(category, message)` for the lines that are not."""
    path = os.fspath(path)
    base_dir = os.path.dirname(os.path.abspath(path))
    entries, rejections, seen = [], [], set()
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path} line {number}"
            try:
                fields = json.loads(line)
            except ValueError as error:
                rejections.append(("malformed line", f"{where}: not valid JSON ({error})"))
                continue
            if not isinstance(fields, dict) or not isinstance(fields.get("path"), str) or not fields["path"]:
                rejections.append(("malformed line", f"{where}: expected an object with a 'path'"))
                continue
            audio = os.path.normpath(os.path.join(base_dir, fields["path"]))
            relative = os.path.relpath(audio, base_dir)
            id = os.path.splitext(audio if relative.startswith("..") else relative)[0]
            if id in seen:
                rejections.append(("duplicate id", f"{where}: {fields['path']!r} is already listed"))
                continue
            seen.add(id)
            duration = fields.get("duration")
            entries.append(
                AudioEntry(
                    number,
                    id,
                    audio,
                    float(duration) if isinstance(duration, (int, float)) else None,
                    str(fields.get("split", DEFAULT_SPLIT)),
                )
            )
    return entries, rejections


# ---------------------------------------------------------------------------------------------------------------
# Encoding, with a cache of finished files.


@dataclasses.dataclass
class PreparedRecordings:
    """What `prepare_recordings` did: the manifest it wrote, its records, and what it rejected and why."""

    manifest: str
    records: int
    encoded: int  # files encoded by this run
    reused: int  # files whose codes were already in the work folder
    rejections: list[tuple[str, str]]  # (category, message)


def _source_stamp(path: str) -> dict:
    stat = os.stat(path)
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _write_json(path: str, value) -> None:
    with open(path, "w") as f:
        json.dump(value, f)


def _write_lines(path: str, lines: Sequence[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)


def _save_codes(work_dir: str, entry: AudioEntry, channel_codes: Sequence[np.ndarray], marker: dict) -> None:
    base = os.path.join(work_dir, "codes", entry.key)
    for channel, codes in zip(_channels_of(marker), channel_codes):
        write_atomically(
            f"{base}.{channel}.npy", lambda tmp, codes=codes: np.save(tmp, np.asarray(codes.T, np.int16))
        )  # [frames, 8]
    write_atomically(base + ".json", lambda tmp: _write_json(tmp, marker))


def _channels_of(marker: dict) -> tuple[str, ...]:
    return CHANNELS if marker["channels"] == 2 else (marker["channel"],)


def _cached(work_dir: str, entry: AudioEntry, codec_id: str) -> dict | None:
    base = os.path.join(work_dir, "codes", entry.key)
    try:
        with open(base + ".json") as f:
            marker = json.load(f)
    except (OSError, ValueError):
        return None
    if marker.get("codec") != codec_id or marker.get("source") != _source_stamp(entry.path):
        return None
    if not all(os.path.isfile(f"{base}.{channel}.npy") for channel in _channels_of(marker)):
        return None
    return marker


def _utterance_channel(words: Sequence[AlignedWord], rule: GroupingRule, entry: AudioEntry) -> str:
    channels = {rule.channel(word.speaker) for word in words}
    if len(channels) > 1:
        raise RecordingError(
            "mixed speakers",
            f"{entry.path}: a mono file with words of {rule.main_speaker} "
            "and of other speakers; a mono utterance has one speaker",
        )
    return channels.pop()


def _manifest_line(entry: AudioEntry, marker: dict, words: Sequence[AlignedWord], rule: GroupingRule) -> dict:
    frames = marker["frames"]
    line = {"id": entry.id, "num_frames": frames}
    present = _channels_of(marker)
    kind = "dialog" if len(present) == 2 else ("tts" if present == ("speak",) else "asr")
    line["split"] = f"{entry.split}_{kind}"
    for channel in CHANNELS:
        line[f"{channel}_codes"] = f"codes/{entry.key}.{channel}.npy" if channel in present else None
        segments = group_segments(
            [w for w in words if rule.channel(w.speaker) == channel], frames, rule.gap_s, rule.sentence_end
        )
        line[f"{channel}_segments"] = [segment.to_dict() for segment in segments]
    return line


def prepare_recordings(
    audio_manifest: str | os.PathLike,
    work_dir: str | os.PathLike,
    encoder: Callable[[], Encoder],
    codec_id: str,
    rule: GroupingRule = _DEFAULT_RULE,
    mono_as: str = "reject",
    batch_files: int = 4,
    sample_rate: int = 24000,
    frame_size: int = 1920,
    progress: bool = True,
) -> PreparedRecordings:
    """Encodes the manifest's recordings (those not already in `work_dir`) and writes WORK_DIR/manifest.jsonl.

    `encoder()` gives the function that encodes a list of mono signals; it is called only when some file needs
    encoding (so a finished folder does not load the codec). `codec_id` identifies the codec's weights: codes
    made with another are encoded again. `batch_files` files are read and encoded together, in order of their
    `duration`.
    """
    if mono_as not in MONO_AS:
        raise ValueError(f"mono_as {mono_as!r}: expected one of {MONO_AS}")
    work_dir = os.path.abspath(os.fspath(work_dir))
    os.makedirs(os.path.join(work_dir, "codes"), exist_ok=True)
    entries, rejections = read_audio_manifest(audio_manifest)
    words_of: dict[str, list[AlignedWord]] = {}
    markers: dict[str, dict] = {}
    pending: list[AudioEntry] = []
    for entry in entries:
        try:
            words_of[entry.id] = read_alignments(entry.alignment_path)
            if not os.path.isfile(entry.path):
                raise RecordingError("unreadable audio", f"{entry.path}: no such file")
            marker = _cached(work_dir, entry, codec_id)
            if marker is not None and marker["channels"] == 1:
                if mono_as == "reject":
                    raise RecordingError("mono audio", _mono_message(entry))
                if _utterance_channel(words_of[entry.id], rule, entry) != marker["channel"]:
                    marker = None  # the alignments changed speaker: its codes go to the other channel
            if marker is None:
                pending.append(entry)
            else:
                markers[entry.id] = marker
        except RecordingError as error:
            rejections.append((error.category, str(error)))
    reused = len(markers)

    bar = _progress_bar(len(entries), progress)
    bar.update(len(entries) - len(pending))
    encode = None
    pending.sort(key=lambda e: (e.duration is None, e.duration or 0.0))
    for batch in _batches(pending, batch_files):
        signals, owners = [], []
        for entry in batch:
            try:
                audio = _load(entry, sample_rate)
                channels = audio.shape[0]
                if channels > 2:
                    raise RecordingError(
                        "too many channels",
                        f"{entry.path}: {channels} channels; expected a stereo file (left = assistant, right = user)",
                    )
                marker = {
                    "source": _source_stamp(entry.path),
                    "codec": codec_id,
                    "channels": channels,
                    "frames": -(-audio.shape[1] // frame_size),
                }
                if channels == 1:
                    if mono_as == "reject":
                        raise RecordingError("mono audio", _mono_message(entry))
                    marker["channel"] = _utterance_channel(words_of[entry.id], rule, entry)
            except RecordingError as error:
                rejections.append((error.category, str(error)))
                bar.update(1)
                continue
            owners.append((entry, marker, len(signals), channels))
            signals.extend(audio)
        if owners:
            encode = encode or encoder()
            codes = encode(signals)
            for entry, marker, first, channels in owners:
                _save_codes(work_dir, entry, codes[first : first + channels], marker)
                markers[entry.id] = marker
                bar.update(1)
    bar.close()

    manifest = os.path.join(work_dir, "manifest.jsonl")
    lines = [
        _manifest_line(entry, markers[entry.id], words_of[entry.id], rule) for entry in entries if entry.id in markers
    ]
    write_atomically(manifest, lambda tmp: _write_lines(tmp, lines))
    return PreparedRecordings(manifest, len(lines), len(markers) - reused, reused, rejections)


def _mono_message(entry: AudioEntry) -> str:
    return (
        f"{entry.path}: a mono file; expected stereo (left = assistant, right = user), or pass "
        "--mono_as utterance to keep it as a single-speaker utterance"
    )


def _load(entry: AudioEntry, sample_rate: int) -> np.ndarray:
    try:
        return load_audio(entry.path, sample_rate)
    except AudioError as error:
        raise RecordingError("unreadable audio", str(error)) from None


def _batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), max(1, size)):
        yield items[start : start + size]


def _progress_bar(total: int, enabled: bool):
    import tqdm

    return tqdm.tqdm(total=total, desc="encoding", unit="file", disable=not enabled, dynamic_ncols=True)
