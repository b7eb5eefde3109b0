"""The dialog dataset: a manifest built into ArrayRecord files by a TFDS builder, read back without TensorFlow.

    summary = build_dataset("data/manifest.jsonl", "/data/tfds", name="dialogs")   # -> BuildSummary
    source = DialogSource("/data/tfds", "dialogs", "train")                         # random access, picklable
    record = source[0]                                                              # -> DialogRecord

On disk (tfds's layout) `DATA_DIR/NAME/1.0.0/` holds `NAME-SPLIT.array_record-0000i-of-0000n` shards, tfds's
`dataset_info.json` and `features.json`, and our `build_summary.json` (the summary, the manifest's sha256 and
a fingerprint of the codes files it names). A build writes into a staging folder beside `DATA_DIR/NAME/1.0.0`
(`flmjax.files.staging_folder`), the summary inside it, and swaps it in when whole: a finished build is one
that holds the summary, and an existing dataset is replaced only by a finished one. The builder class is not
registered with tfds: `tfds.data_source(NAME, data_dir=DATA_DIR, split=SPLIT)` and `DialogSource` read a dataset
from its files alone.

One example per record, every feature a flat array (S segments, W words of a channel):

    id                                       Text
    num_frames                               int64 []
    {speak,listen}_codes                     int16 [T, 8]  ([0, 8] when absent)
    has_{speak,listen}_codes                 bool  []
    {speak,listen}_segment_{start,end}       int64 [S]     frames [start, end)
    {speak,listen}_segment_text              bytes [S]     UTF-8
    {speak,listen}_segment_has_words         bool  [S]     False: `words` is None; True: a tuple, maybe empty
    {speak,listen}_word_segment              int64 [W]     index of the word's segment; words in order
    {speak,listen}_word_{start,end}          int64 [W]
    {speak,listen}_word_text                 bytes [W]

Columns rather than tfds `Sequence` features: a Sequence nested in a Sequence (words in segments) is serialised
with TensorFlow, which this project does not install, and even a flat Sequence of dicts is encoded one element
at a time in Python (about 3x slower to build than these columns, which encode as whole arrays).

Building reads the manifest twice: a first pass parses each line (no codes) to find the splits, malformed
lines, duplicate ids and bad split names; the second loads, validates and writes each record. A record that
fails is rejected (counted, its message kept under a category), never fatal. tfds cannot write an empty
split: a split whose records all fail is left out, found when it is written, at the cost of one more attempt.
The manifest's hash covers its text; the codes fingerprint each `.npy` file's size and content (BLAKE2b), so a
file changed behind an unchanged manifest is a changed build. Run one build per dataset at a time.
"""

from __future__ import annotations

import array
import contextlib
import dataclasses
import functools
import hashlib
import json
import operator
import os
import re
import shutil
import sys
import tempfile
from typing import Any, Iterator, Mapping

import numpy as np
import tensorflow_datasets as tfds
import tqdm
from absl import logging
from tensorflow_datasets.core import utils as tfds_utils
from tensorflow_datasets.core.utils import tqdm_utils

from flmjax import files
from flmjax.data.manifest import ManifestEntry, parse_line
from flmjax.data.records import CHANNELS, FRAME_RATE, NUM_CODEBOOKS, DialogRecord, RecordError, Segment, Word
from flmjax.errors import UserError

VERSION = "1.0.0"
SUMMARY_FILE = "build_summary.json"
DATASET_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
SPLIT_NAME = re.compile(r"^[A-Za-z0-9_]+$")

# RecordError message -> category: the first pattern found in the message names it.
REJECTION_CATEGORIES = (
    ("malformed line", r"not valid JSON|expected a JSON object"),
    ("unreadable codes", r"_codes file .* cannot be read"),
    ("codes out of range", r"codes must be in"),
    ("wrong shape", r"has shape .* expected \[frames"),
    ("wrong dtype", r"has dtype .* expected integers"),
    ("frame count mismatch", r"frames but .*_codes has|but the codes have"),
    ("missing num_frames", r"num_frames is required"),
    ("no frames", r"num_frames is -?\d+; expected at least"),
    ("impossible duration", r"num_frames is \d+ .*is not a recording"),
    ("empty record", r"holds nothing to learn from"),
    ("start >= end", r"has start -?\d+ >= end"),
    ("segment outside record", r"lies outside the record"),
    ("overlapping segments", r"segments overlap"),
    ("empty text", r"has empty text"),
    ("bad word", r"\.words\[\d+\]"),
    ("malformed record", r"malformed|missing field"),
)


class DatasetError(UserError):
    """A build that cannot go on: every record rejected, a changed manifest, a folder that is not ours."""


def rejection_category(message: str) -> str:
    """The category of a rejection message ("codes out of range", "empty text", ...; "other" if unknown)."""
    for category, pattern in REJECTION_CATEGORIES:
        if re.search(pattern, message):
            return category
    return "other"


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


# ---------------------------------------------------------------------------------------------------------------
# Records <-> examples.

_INTS = tfds.features.Tensor(shape=(None,), dtype=np.int64)
_BOOLS = tfds.features.Tensor(shape=(None,), dtype=np.bool_)
_TEXTS = tfds.features.Tensor(shape=(None,), dtype=np.object_)  # str in, bytes out


def features() -> tfds.features.FeaturesDict:
    """The tfds features of one record (see the module docstring)."""
    spec: dict[str, Any] = {"id": tfds.features.Text(), "num_frames": np.int64}
    for channel in CHANNELS:
        spec.update({
            f"{channel}_codes": tfds.features.Tensor(shape=(None, NUM_CODEBOOKS), dtype=np.int16),
            f"has_{channel}_codes": np.bool_,
            f"{channel}_segment_start": _INTS, f"{channel}_segment_end": _INTS,
            f"{channel}_segment_text": _TEXTS, f"{channel}_segment_has_words": _BOOLS,
            f"{channel}_word_segment": _INTS, f"{channel}_word_start": _INTS, f"{channel}_word_end": _INTS,
            f"{channel}_word_text": _TEXTS})
    return tfds.features.FeaturesDict(spec)


def example_from_record(record: DialogRecord) -> dict[str, Any]:
    """The tfds example (before encoding) of a record."""
    example: dict[str, Any] = {"id": record.id, "num_frames": record.num_frames}
    for channel in CHANNELS:
        codes = record.codes(channel)
        segments = record.segments(channel)
        words = [(i, word) for i, segment in enumerate(segments) for word in segment.words or ()]
        example.update({
            f"has_{channel}_codes": codes is not None,
            f"{channel}_codes": np.zeros((0, NUM_CODEBOOKS), np.int16) if codes is None else codes,
            f"{channel}_segment_start": np.array([s.start for s in segments], np.int64),
            f"{channel}_segment_end": np.array([s.end for s in segments], np.int64),
            f"{channel}_segment_text": [s.text for s in segments],
            f"{channel}_segment_has_words": np.array([s.words is not None for s in segments], np.bool_),
            f"{channel}_word_segment": np.array([i for i, _ in words], np.int64),
            f"{channel}_word_start": np.array([w.start for _, w in words], np.int64),
            f"{channel}_word_end": np.array([w.end for _, w in words], np.int64),
            f"{channel}_word_text": [w.text for _, w in words]})
    return example


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _segments_from_example(example: Mapping[str, Any], channel: str) -> tuple[Segment, ...]:
    def column(key):
        return np.asarray(example[f"{channel}_{key}"]).tolist()

    words_of: dict[int, list[Word]] = {}
    for index, start, end, text in zip(column("word_segment"), column("word_start"), column("word_end"),
                                       column("word_text")):
        words_of.setdefault(index, []).append(Word(start, end, _text(text)))
    return tuple(Segment(start, end, _text(text), tuple(words_of.get(i, ())) if has_words else None)
                 for i, (start, end, text, has_words) in enumerate(zip(
                     column("segment_start"), column("segment_end"), column("segment_text"),
                     column("segment_has_words"))))


def record_from_example(example: Mapping[str, Any]) -> DialogRecord:
    """The record of a decoded example (a numpy dict from `tfds.data_source`); not validated again."""
    codes = {channel: np.asarray(example[f"{channel}_codes"], np.int16)
             if example[f"has_{channel}_codes"] else None for channel in CHANNELS}
    segments = {channel: _segments_from_example(example, channel) for channel in CHANNELS}
    return DialogRecord(id=_text(example["id"]), num_frames=int(example["num_frames"]),
                        speak_codes=codes["speak"], listen_codes=codes["listen"],
                        speak_segments=segments["speak"], listen_segments=segments["listen"])


# ---------------------------------------------------------------------------------------------------------------
# The first pass over the manifest.

@dataclasses.dataclass
class _Lines:
    """Manifest lines of one split: line numbers (for messages) and byte offsets (to read them again)."""

    numbers: array.array = dataclasses.field(default_factory=lambda: array.array("q"))
    offsets: array.array = dataclasses.field(default_factory=lambda: array.array("q"))


@dataclasses.dataclass
class _Plan:
    manifest: str
    sha256: str
    lines: dict[str, _Lines]  # split -> lines to load and write
    rejections: list[tuple[str, str]]  # (category, message) found before loading, or in splits left out
    left_out_splits: list[str] = dataclasses.field(default_factory=list)
    codes_files: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (as written, full path)

    @functools.cached_property
    def codes_fingerprint(self) -> str:
        return _codes_fingerprint(self.codes_files)

    @property
    def num_lines(self) -> int:
        return sum(len(lines.numbers) for lines in self.lines.values())


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _file_digest(path: str) -> str:
    """Size and BLAKE2b of a file (faster than sha256 over many codes files); "missing" if it cannot be read."""
    try:
        with open(path, "rb") as f:
            return f"{os.fstat(f.fileno()).st_size}:{hashlib.file_digest(f, 'blake2b').hexdigest()}"
    except OSError:
        return "missing"


def _codes_fingerprint(codes_files: list[tuple[str, str]]) -> str:
    """One digest over the codes files by the names the manifest gives them (so a copy of the manifest's folder
    fingerprints the same) and their contents."""
    digest = hashlib.sha256()
    for written, full in codes_files:
        digest.update(f"{written}\0{_file_digest(full)}\n".encode())
    return digest.hexdigest()


def _codes_files(entry: ManifestEntry, base_dir: str) -> list[tuple[str, str]]:
    paths = [entry.fields.get(f"{channel}_codes") for channel in CHANNELS]
    return [(path, os.path.join(base_dir, path)) for path in paths if isinstance(path, str)]


def _plan(manifest: str, sha256: str) -> _Plan:
    plan = _Plan(manifest, sha256, {}, [])
    seen_ids: set[str] = set()
    offset = 0
    with open(manifest, "rb") as f:
        for number, line in enumerate(f, start=1):
            start, offset = offset, offset + len(line)
            if not line.strip():
                continue
            try:
                entry = ManifestEntry(number, parse_line(line, number), "")
            except RecordError as error:
                plan.rejections.append(("malformed line", str(error)))
                continue
            plan.codes_files.extend(_codes_files(entry, os.path.dirname(manifest)))
            if entry.id in seen_ids:
                plan.rejections.append(("duplicate id", f"line {number}: record {entry.id!r}: id already used "
                                                        "by an earlier line"))
            elif not SPLIT_NAME.match(entry.split) or entry.split.lower() == "all":
                plan.rejections.append(("bad split name", f"line {number}: record {entry.id!r}: split "
                                                          f"{entry.split!r} is not a name of letters, digits "
                                                          "and _ (nor 'all')"))
            else:
                seen_ids.add(entry.id)
                lines = plan.lines.setdefault(entry.split, _Lines())
                lines.numbers.append(number)
                lines.offsets.append(start)
    return plan


# ---------------------------------------------------------------------------------------------------------------
# The builder.

class EmptySplitError(DatasetError):
    """Raised (and caught by `build_dataset`) when every record of a split failed: tfds cannot write it."""

    def __init__(self, split: str):
        super().__init__(f"every record of split {split!r} was rejected")
        self.split = split
        self.rejections: list[tuple[str, str]] = []  # (category, message) of the split's records


class DialogDataset(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Builds a manifest into ArrayRecord files, one split per manifest `split`.

    `DialogDataset(data_dir=..., manifest_path=...)` writes ArrayRecord files of a dataset named "dialogs";
    `dialog_builder` gives other names (a subclass per name, not registered with tfds). `build_dataset` adds
    what a plain `download_and_prepare` lacks: reuse of a finished build, a build beside the old one swapped in
    when whole, a check that the inputs did not change, and splits that are all rejected.
    """

    name = "dialogs"
    VERSION = tfds.core.Version(VERSION)
    RELEASE_NOTES = {str(VERSION): "Codes, sentence segments and per-segment words of both channels."}

    def __init__(self, *, manifest_path: str | os.PathLike | None = None, progress: bool = False,
                 plan: _Plan | None = None, **kwargs):
        self._manifest_path = None if manifest_path is None else os.path.abspath(os.fspath(manifest_path))
        self._progress = progress
        self._given_plan = plan
        self._stats: dict[str, list[int]] = {}  # split -> [records, frames, words]
        self._rejections: dict[str, list[tuple[str, str]]] = {}  # split -> (category, message)
        self._bar = None
        self.summary: BuildSummary | None = None
        super().__init__(**{"file_format": "array_record", **kwargs})

    @functools.cached_property
    def plan(self) -> _Plan:
        if self._given_plan is not None:
            return self._given_plan
        if self._manifest_path is None:
            raise ValueError(f"{type(self).__name__} builds from a manifest: pass manifest_path")
        return _plan(self._manifest_path, _sha256(self._manifest_path))

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(builder=self, features=features(), description=(
            "Dialog records (Mimi codes of both channels, sentence segments, optional word times); see "
            "flmjax.data.dataset."))

    def _split_generators(self, dl_manager):
        del dl_manager
        return {split: self._generate_examples(split, lines) for split, lines in self.plan.lines.items()}

    def _generate_examples(self, split: str, lines: _Lines) -> Iterator[tuple[str, dict[str, Any]]]:
        stats = self._stats.setdefault(split, [0, 0, 0])
        rejections = self._rejections.setdefault(split, [])
        base_dir = os.path.dirname(self.plan.manifest)
        with open(self.plan.manifest, "rb") as f:
            for number, offset in zip(lines.numbers, lines.offsets):
                f.seek(offset)
                entry = ManifestEntry(number, json.loads(f.readline()), base_dir)
                record = None
                try:
                    record = entry.load()
                except RecordError as error:
                    rejections.append((rejection_category(str(error)), f"line {number}: {error}"))
                except (KeyError, TypeError, ValueError, AttributeError) as error:
                    rejections.append(("malformed record", f"line {number}: record {entry.id!r}: {error!r}"))
                self._bar.update()
                if record is None:
                    rejected = len(self.plan.rejections) + sum(map(len, self._rejections.values()))
                    self._bar.set_postfix(rejected=rejected, refresh=False)
                    continue
                stats[0] += 1
                stats[1] += record.num_frames
                stats[2] += sum(len(s.text.split()) for c in CHANNELS for s in record.segments(c))
                yield record.id, example_from_record(record)
        if not stats[0]:
            raise EmptySplitError(split)

    def _download_and_prepare(self, dl_manager, download_config):
        desc = f"building {self.name}"
        if self.plan.left_out_splits:
            desc += f" again without {', '.join(self.plan.left_out_splits)}"
        with tqdm.tqdm(total=self.plan.num_lines, desc=desc, unit=" records",
                       file=sys.stderr, disable=not self._progress, dynamic_ncols=True) as self._bar:
            super()._download_and_prepare(dl_manager, download_config)
        rejections: dict[str, list[str]] = {}
        for category, message in self.plan.rejections + [r for rs in self._rejections.values() for r in rs]:
            rejections.setdefault(category, []).append(message)
        splits = sorted(self._stats)
        self.summary = BuildSummary(
            name=self.name, manifest=self.plan.manifest, manifest_sha256=self.plan.sha256,
            records={s: self._stats[s][0] for s in splits}, frames={s: self._stats[s][1] for s in splits},
            text_words={s: self._stats[s][2] for s in splits}, rejections=rejections,
            left_out_splits=sorted(self.plan.left_out_splits), codes_fingerprint=self.plan.codes_fingerprint)
        # self.data_dir is tfds's temporary folder here: the summary lands with the data in one rename.
        with open(os.path.join(self.data_dir, SUMMARY_FILE), "w", encoding="utf-8") as f:
            f.write(self.summary.to_json())

    # tfds 4.9.10 computes this for a builder defined in a package by testing `isinstance(path,
    # importlib_resources.abc.Traversable)`, and `importlib_resources` is only installed before Python 3.9.
    # It locates a checksums file and package metadata, neither of which this builder has.
    @tfds_utils.classproperty
    @classmethod
    def code_path(cls) -> None:
        return None

    # tfds prints these two lines on stdout; a build reports through its summary instead.
    def _log_download_bytes(self) -> None:
        logging.info("Building dataset %s into %s", self.name, self.data_dir)

    def _log_download_done(self) -> None:
        logging.info("Dataset %s built in %s", self.name, self.data_dir)


@functools.cache
def _builder_class(name: str) -> type[DialogDataset]:
    if name == DialogDataset.name:
        return DialogDataset
    # __module__ given: `type` would take it from the caller's frame (abc's, under ABCMeta), and tfds records it
    return type(f"DialogDataset_{name}", (DialogDataset,), {"name": name, "__module__": __name__},
                skip_registration=True)


def dialog_builder(data_dir: str | os.PathLike, name: str = "dialogs", **kwargs) -> DialogDataset:
    """A `DialogDataset` writing to DATA_DIR/NAME; kwargs go to its constructor (manifest_path, progress)."""
    if not DATASET_NAME.match(name):
        raise ValueError(f"dataset name {name!r}: expected lower-case letters, digits and _, starting with a letter")
    return _builder_class(name)(data_dir=os.fspath(data_dir), **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# Building with reuse, clean-up and checks.

@contextlib.contextmanager
def _tfds_progress_bars_off():
    was_active = getattr(tqdm_utils, "_active", True)  # tfds has a setter and no getter
    tfds.display_progress_bar(False)
    try:
        yield
    finally:
        tfds.display_progress_bar(was_active)


def _check_replaceable(path: str) -> None:
    """Refuses to replace DATA_DIR/NAME/VERSION unless it is ours: a finished build (it holds our summary), an
    unfinished one an older version left (tfds's files naming this module), or an empty folder."""
    if not os.path.isdir(path) or not os.listdir(path) or os.path.isfile(os.path.join(path, SUMMARY_FILE)):
        return
    info_path = os.path.join(path, "dataset_info.json")
    module = None
    if os.path.isfile(info_path):
        with open(info_path, encoding="utf-8") as f:
            module = json.load(f).get("moduleName")
    if module != __name__:
        raise DatasetError(f"{path} holds files not written by {__name__} ({sorted(os.listdir(path))[:5]}); "
                           "refusing to replace it: choose another --name or --out")


def _remove_leftovers(data_dir: str, name: str) -> None:
    """Removes what a killed build left beside DATA_DIR/NAME/VERSION: staging folders, and tfds's temporary
    folders from builds of older versions."""
    path = dataset_dir(data_dir, name)
    files.remove_leftovers(path)
    parent = os.path.dirname(path)
    for entry in os.listdir(parent) if os.path.isdir(parent) else ():
        if entry.startswith("incomplete.") and entry.endswith(f"_{VERSION}"):
            shutil.rmtree(os.path.join(parent, entry))


def _all_rejected_error(plan: _Plan) -> DatasetError:
    by_category: dict[str, list[str]] = {}
    for category, message in plan.rejections:
        by_category.setdefault(category, []).append(message)
    if not by_category:
        return DatasetError(f"manifest {plan.manifest} holds no records")
    reasons = "; ".join(f"{category}: {len(messages)} (first: {messages[0]})"
                        for category, messages in sorted(by_category.items()))
    return DatasetError(f"every record in {plan.manifest} was rejected ({len(plan.rejections)}): {reasons}")


def _planned(manifest_path: str | os.PathLike) -> _Plan:
    manifest = os.path.abspath(os.fspath(manifest_path))
    if not os.path.isfile(manifest):
        raise FileNotFoundError(f"manifest {manifest} does not exist")
    return _plan(manifest, _sha256(manifest))


def _existing_build(plan: _Plan, data_dir: str, name: str, overwrite: bool) -> BuildSummary | None:
    """The finished build of the same manifest and codes (`already_built=True`), or None when one must be built.

    Raises, before anything is written, `DatasetError` for a build of different inputs without `overwrite` or a
    folder that is not ours, `files.OverlapError` for a dataset folder that holds the manifest or its codes."""
    target = dataset_dir(data_dir, name)
    files.check_apart(target, [plan.manifest] + [full for _, full in plan.codes_files], what="the dataset")
    existing = read_summary(data_dir, name)
    if existing is not None and not overwrite:
        if (existing.manifest_sha256, existing.codes_fingerprint) == (plan.sha256, plan.codes_fingerprint):
            return dataclasses.replace(existing, already_built=True)
        if existing.manifest_sha256 != plan.sha256:
            changed = (f"a different manifest ({existing.manifest}, sha256 {existing.manifest_sha256[:12]}...; "
                       f"{plan.manifest} now has {plan.sha256[:12]}...)")
        elif not existing.codes_fingerprint:
            changed = "codes files an older flmjax did not fingerprint (it cannot tell whether they changed)"
        else:
            changed = f"different codes files (some of the {len(plan.codes_files)} that {plan.manifest} names changed)"
        raise DatasetError(f"{existing.path} was built from {changed}: pass overwrite=True (--overwrite) to "
                           "rebuild it, or choose another --name")
    _check_replaceable(target)
    return None


def existing_build(manifest_path: str | os.PathLike, data_dir: str | os.PathLike, name: str = "dialogs",
                   overwrite: bool = False) -> BuildSummary | None:
    """What `build_dataset` would do first, without writing anything: the finished build of these inputs
    (`already_built=True`), None when it would build, or the `DatasetError` it would refuse with."""
    return _existing_build(_planned(manifest_path), os.path.abspath(os.fspath(data_dir)), name, overwrite)


def _build_once(plan: _Plan, data_dir: str, name: str, progress: bool) -> BuildSummary:
    """Builds the plan into a staging folder and swaps it in as DATA_DIR/NAME/VERSION; raises `EmptySplitError`
    (nothing swapped) when every record of a split was rejected."""
    target = dataset_dir(data_dir, name)
    with files.staging_folder(target) as staging:  # a data dir of its own: tfds writes staging/NAME/VERSION
        builder = dialog_builder(staging, name, manifest_path=plan.manifest, progress=progress, plan=plan)
        try:
            with _tfds_progress_bars_off(), tempfile.TemporaryDirectory() as download_dir:
                builder.download_and_prepare(download_dir=download_dir)  # tfds makes one; nothing is downloaded
        except EmptySplitError as empty:
            empty.rejections = builder._rejections[empty.split]  # pylint: disable=protected-access
            raise
        files.swap_in(dataset_dir(staging, name), target)
    return dataclasses.replace(builder.summary, path=target)


def build_dataset(manifest_path: str | os.PathLike, data_dir: str | os.PathLike, name: str = "dialogs",
                  progress: bool = True, overwrite: bool = False) -> BuildSummary:
    """Builds the manifest into DATA_DIR/NAME/VERSION and returns what was written.

    A finished build of the same manifest (same sha256) and codes files (same fingerprint) is kept and its
    stored summary returned with `already_built=True`; one of different inputs is a `DatasetError` unless
    `overwrite`, which rebuilds. The new dataset is built beside the old one and replaces it only when whole:
    a manifest whose records all fail is a `DatasetError` naming the reasons and leaves the old dataset as it
    was. A missing manifest is a `FileNotFoundError`. `progress` shows one progress bar on stderr.
    """
    plan = _planned(manifest_path)
    data_dir = os.path.abspath(os.fspath(data_dir))
    existing = _existing_build(plan, data_dir, name, overwrite)
    if existing is not None:
        return existing
    _remove_leftovers(data_dir, name)
    while True:
        if not plan.lines:
            raise _all_rejected_error(plan)
        try:
            return _build_once(plan, data_dir, name, progress)
        except EmptySplitError as empty:
            plan.rejections.extend(empty.rejections)
            del plan.lines[empty.split]
            plan.left_out_splits.append(empty.split)


# ---------------------------------------------------------------------------------------------------------------
# Reading.

class DialogSource:
    """Random access to one split's records; picklable (the reader opens on first use, in each process).

    `len(source)` and `source[i] -> DialogRecord`: a grain `MapDataset.source`.
    """

    def __init__(self, data_dir: str | os.PathLike, name: str, split: str):
        self.data_dir, self.name, self.split = os.path.abspath(os.fspath(data_dir)), name, split
        self.path = dataset_dir(self.data_dir, name)
        summary = read_summary(self.data_dir, name)
        if summary is None:
            raise FileNotFoundError(f"no finished dataset at {self.path}; build it with "
                                    "`python -m launch.prepare_data`")
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
