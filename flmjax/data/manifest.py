"""Manifests: JSON lines, one dialog record each, with codes stored as `.npy` files.

    {"id": "conv-0001", "split": "train",
     "speak_codes": "codes/conv-0001.speak.npy", "listen_codes": "codes/conv-0001.listen.npy",
     "speak_segments": [{"start": 3, "end": 40, "text": "Hello there."}], "listen_segments": [...]}

`speak_codes`/`listen_codes` are paths relative to the manifest's folder (or absolute), holding integer arrays
`[frames, 8]`; either may be null or absent. `num_frames` is required only when both are. `split` defaults to
"train". Each segment may carry `words`: `[{"start", "end", "text"}]`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Iterable, Iterator

import numpy as np

from flmjax.data.records import CHANNELS, DialogRecord, RecordError, make_record

DEFAULT_SPLIT = "train"


@dataclasses.dataclass(frozen=True)
class ManifestEntry:
    """One manifest line, read but not yet turned into a record (codes not loaded)."""

    line_number: int
    fields: dict
    base_dir: str

    @property
    def id(self) -> str:
        return str(self.fields.get("id", f"<line {self.line_number}>"))

    @property
    def split(self) -> str:
        return str(self.fields.get("split", DEFAULT_SPLIT))

    def load(self) -> DialogRecord:
        """Loads the codes and validates; raises `RecordError` naming the record and the field."""
        if "id" not in self.fields:
            raise RecordError(f"manifest line {self.line_number}: missing field 'id'")
        codes = {}
        for channel in CHANNELS:
            path = self.fields.get(f"{channel}_codes")
            if path is None:
                codes[channel] = None
                continue
            full = path if os.path.isabs(path) else os.path.join(self.base_dir, path)
            try:
                codes[channel] = np.load(full, allow_pickle=False)
            except (OSError, ValueError) as error:
                raise RecordError(
                    f"record {self.id!r}: {channel}_codes file {path!r} cannot be read: {error}"
                ) from None
        try:
            return make_record(
                self.id,
                codes["speak"],
                codes["listen"],
                self.fields.get("speak_segments", ()),
                self.fields.get("listen_segments", ()),
                self.fields.get("num_frames"),
            )
        except (KeyError, TypeError) as error:
            raise RecordError(f"record {self.id!r}: malformed segment field: {error!r}") from None


def parse_line(line: str | bytes, line_number: int) -> dict:
    """One manifest line's fields; a line that is not a JSON object is a `RecordError` naming its number."""
    try:
        fields = json.loads(line)
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
        raise RecordError(f"line {line_number}: not valid JSON ({error})") from None
    if not isinstance(fields, dict):
        raise RecordError(f"line {line_number}: expected a JSON object, got {type(fields).__name__}")
    return fields


def read_manifest(path: str | os.PathLike) -> Iterator[ManifestEntry]:
    """The entries of a manifest, in order; a malformed line stops it with a `RecordError` naming it."""
    path = os.fspath(path)
    base_dir = os.path.dirname(os.path.abspath(path))
    with open(path) as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield ManifestEntry(line_number, parse_line(line, line_number), base_dir)
            except RecordError as error:
                raise RecordError(f"{path} {error}") from None


def write_manifest(
    records: Iterable[tuple[DialogRecord, str]], directory: str | os.PathLike, name: str = "manifest.jsonl"
) -> str:
    """Writes `(record, split)` pairs as `directory/name` plus `directory/codes/*.npy`; returns the path."""
    directory = os.fspath(directory)
    os.makedirs(os.path.join(directory, "codes"), exist_ok=True)
    path = os.path.join(directory, name)
    with open(path + ".tmp", "w") as f:
        for index, (record, split) in enumerate(records):
            line = {"id": record.id, "split": split, "num_frames": record.num_frames}
            for channel in CHANNELS:
                codes = record.codes(channel)
                if codes is not None:
                    safe_id = re.sub(r"[^A-Za-z0-9._-]", "_", record.id)
                    relative = os.path.join("codes", f"{index:08d}-{safe_id}.{channel}.npy")
                    np.save(os.path.join(directory, relative), codes)
                    line[f"{channel}_codes"] = relative
                line[f"{channel}_segments"] = [s.to_dict() for s in record.segments(channel)]
            f.write(json.dumps(line) + "\n")
    os.replace(path + ".tmp", path)
    return path
