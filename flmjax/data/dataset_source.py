"""Reading a built dialog dataset without TensorFlow, and what a build leaves beside it (its summary).

    source = DialogSource("/data/tfds", "dialogs", "train")   # random access, picklable
    record = source[0]                                         # -> DialogRecord

On disk (tfds's layout) `DATA_DIR/NAME/1.0.0/` holds `NAME-SPLIT.array_record-0000i-of-0000n` shards, tfds's
`dataset_info.json` and `features.json`, and the build's `build_summary.json` (`BuildSummary`: what was written,
the manifest's sha256 and a fingerprint of the codes files it names); a finished build is one that holds the
summary. `tfds.data_source(NAME, data_dir=DATA_DIR, split=SPLIT)` and `DialogSource` read a dataset from its files
alone (`flmjax.data.dataset` builds them; `dataset_features` converts examples to records).
"""

from __future__ import annotations

import dataclasses
import json
import operator
import os
from typing import Any

import tensorflow_datasets as tfds

from flmjax.data.dataset_features import record_from_example
from flmjax.data.records import FRAME_RATE, DialogRecord
from flmjax.errors import UserError

VERSION = "1.0.0"
SUMMARY_FILE = "build_summary.json"


class DatasetError(UserError):
    """A build that cannot go on: every record rejected, a changed manifest, a folder that is not ours."""


@dataclasses.dataclass
class BuildSummary:
    """What a build wrote: per split records, frames and words (whitespace-separated, over all segments)."""

    name: str
    manifest: str
    manifest_sha256: str
    records: dict[str, int]
    frames: dict[str, int]
    text_words: dict[str, int]
    rejections: dict[str, list[str]]  # category -> full messages
    left_out_splits: list[str] = dataclasses.field(default_factory=list)  # every record rejected
    codes_fingerprint: str = ""  # of the codes files the manifest names (older builds: none, so they differ)
    path: str = ""  # DATA_DIR/NAME/VERSION; set from where the summary was read, not stored
    already_built: bool = False  # not stored

    @property
    def hours(self) -> dict[str, float]:
        return {split: frames / FRAME_RATE / 3600 for split, frames in self.frames.items()}

    @property
    def rejected(self) -> int:
        return sum(len(messages) for messages in self.rejections.values())

    def to_json(self) -> str:
        fields = dataclasses.asdict(self)
        del fields["path"], fields["already_built"]
        return json.dumps({"version": VERSION, **fields}, indent=1, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str, path: str) -> BuildSummary:
        fields = json.loads(text)
        fields.pop("version", None)
        return cls(**fields, path=path)


def dataset_dir(data_dir: str | os.PathLike, name: str) -> str:
    """Where a dataset lives: DATA_DIR/NAME/VERSION."""
    return os.path.join(os.fspath(data_dir), name, VERSION)


def read_summary(data_dir: str | os.PathLike, name: str) -> BuildSummary | None:
    """The summary of a finished build, or None when there is none (never built, or unfinished)."""
    path = dataset_dir(data_dir, name)
    summary_path = os.path.join(path, SUMMARY_FILE)
    if not (os.path.isfile(summary_path) and os.path.isfile(os.path.join(path, "dataset_info.json"))):
        return None
    with open(summary_path, encoding="utf-8") as f:
        return BuildSummary.from_json(f.read(), path)


class DialogSource:
    """Random access to one split's records; picklable (the reader opens on first use, in each process).

    `len(source)` and `source[i] -> DialogRecord`: a grain `MapDataset.source`.
    """

    def __init__(self, data_dir: str | os.PathLike, name: str, split: str):
        self.data_dir, self.name, self.split = os.path.abspath(os.fspath(data_dir)), name, split
        self.path = dataset_dir(self.data_dir, name)
        summary = read_summary(self.data_dir, name)
        if summary is None:
            raise FileNotFoundError(
                f"no finished dataset at {self.path}; build it with `python -m launch.prepare_data`"
            )
        if split not in summary.records:
            raise ValueError(f"dataset {self.path} has no split {split!r}; it has {sorted(summary.records)}")
        self._length = summary.records[split]
        self._source = None

    def _reader(self):
        if self._source is None:
            # From the folder, not by name: a name that tfds also registers would bring that builder's features.
            self._source = tfds.builder_from_directory(self.path).as_data_source(self.split)
        return self._source

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> DialogRecord:
        index = operator.index(index)
        if not -self._length <= index < self._length:
            raise IndexError(f"record {index} of {self!r}")
        return record_from_example(self._reader()[index % self._length])

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_source": None}

    def __repr__(self) -> str:
        return f"DialogSource({self.data_dir!r}, {self.name!r}, {self.split!r}: {self._length} records)"
