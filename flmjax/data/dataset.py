"""Building the dialog dataset: a manifest built into ArrayRecord files by a TFDS builder (read back without
TensorFlow by `flmjax.data.dataset_source.DialogSource`).

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

A record is stored as one tfds example of flat columns (`flmjax.data.dataset_features`); `DialogSource`
(`flmjax.data.dataset_source`) reads it back. The builder stays in this module: tfds records its module name in
every dataset's `dataset_info.json`, and a rebuild replaces only folders naming it.

Building reads the manifest twice: a first pass parses each line (no codes) to find the splits, malformed
lines, duplicate ids and bad split names; the second loads, validates and writes each record. A record that
fails is rejected (counted, its message kept under a category), never fatal. tfds cannot write an empty
split: a split whose records all fail is left out, found when it is written, at the cost of one more attempt.
The manifest's hash covers its text; the codes fingerprint each `.npy` file's size and content (BLAKE2b), so a
file changed behind an unchanged manifest is a changed build. Run one build per dataset at a time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import re
import shutil
import sys
import tempfile
from typing import Any, Iterator

import tensorflow_datasets as tfds
import tqdm
from absl import logging
from tensorflow_datasets.core import utils as tfds_utils
from tensorflow_datasets.core.utils import tqdm_utils

from flmjax import files
from flmjax.data.dataset_features import example_from_record, features
from flmjax.data.dataset_plan import (
    ManifestPlan,
    SplitLines,
    all_rejected_error,
    plan_manifest,
    planned,
    rejection_category,
    sha256_of,
)
from flmjax.data.dataset_source import SUMMARY_FILE, VERSION, BuildSummary, DatasetError, dataset_dir, read_summary
from flmjax.data.manifest import ManifestEntry
from flmjax.data.records import CHANNELS, RecordError

DATASET_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


# ---------------------------------------------------------------------------------------------------------------
# The builder.


class EmptySplitError(DatasetError):
    """Raised (and caught by `build_dataset`) when every record of a split failed: tfds cannot write it."""

    def __init__(self, split: str, rejections: list[tuple[str, str]]):
        super().__init__(f"every record of split {split!r} was rejected")
        self.split = split
        self.rejections = rejections  # (category, message) of the split's records


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

    def __init__(
        self,
        *,
        manifest_path: str | os.PathLike | None = None,
        progress: bool = False,
        plan: ManifestPlan | None = None,
        **kwargs,
    ):
        self._manifest_path = None if manifest_path is None else os.path.abspath(os.fspath(manifest_path))
        self._progress = progress
        self._given_plan = plan
        self._stats: dict[str, list[int]] = {}  # split -> [records, frames, words]
        self._rejections: dict[str, list[tuple[str, str]]] = {}  # split -> (category, message)
        self._bar = None
        self.summary: BuildSummary | None = None
        super().__init__(**{"file_format": "array_record", **kwargs})

    @functools.cached_property
    def plan(self) -> ManifestPlan:
        if self._given_plan is not None:
            return self._given_plan
        if self._manifest_path is None:
            raise ValueError(f"{type(self).__name__} builds from a manifest: pass manifest_path")
        return plan_manifest(self._manifest_path, sha256_of(self._manifest_path))

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            features=features(),
            description=(
                "Dialog records (Mimi codes of both channels, sentence segments, optional word times); see "
                "flmjax.data.dataset."
            ),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {split: self._generate_examples(split, lines) for split, lines in self.plan.lines.items()}

    def _generate_examples(self, split: str, lines: SplitLines) -> Iterator[tuple[str, dict[str, Any]]]:
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
            raise EmptySplitError(split, rejections)

    def _download_and_prepare(self, dl_manager, download_config):
        desc = f"building {self.name}"
        if self.plan.left_out_splits:
            desc += f" again without {', '.join(self.plan.left_out_splits)}"
        with tqdm.tqdm(
            total=self.plan.num_lines,
            desc=desc,
            unit=" records",
            file=sys.stderr,
            disable=not self._progress,
            dynamic_ncols=True,
        ) as self._bar:
            super()._download_and_prepare(dl_manager, download_config)
        rejections: dict[str, list[str]] = {}
        for category, message in self.plan.rejections + [r for rs in self._rejections.values() for r in rs]:
            rejections.setdefault(category, []).append(message)
        splits = sorted(self._stats)
        self.summary = BuildSummary(
            name=self.name,
            manifest=self.plan.manifest,
            manifest_sha256=self.plan.sha256,
            records={s: self._stats[s][0] for s in splits},
            frames={s: self._stats[s][1] for s in splits},
            text_words={s: self._stats[s][2] for s in splits},
            rejections=rejections,
            left_out_splits=sorted(self.plan.left_out_splits),
            codes_fingerprint=self.plan.codes_fingerprint,
        )
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
    return type(
        f"DialogDataset_{name}", (DialogDataset,), {"name": name, "__module__": __name__}, skip_registration=True
    )


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
        raise DatasetError(
            f"{path} holds files not written by {__name__} ({sorted(os.listdir(path))[:5]}); "
            "refusing to replace it: choose another --name or --out"
        )


def _remove_leftovers(data_dir: str, name: str) -> None:
    """Removes what a killed build left beside DATA_DIR/NAME/VERSION: staging folders, and tfds's temporary
    folders from builds of older versions."""
    path = dataset_dir(data_dir, name)
    files.remove_leftovers(path)
    parent = os.path.dirname(path)
    for entry in os.listdir(parent) if os.path.isdir(parent) else ():
        if entry.startswith("incomplete.") and entry.endswith(f"_{VERSION}"):
            shutil.rmtree(os.path.join(parent, entry))


def _existing_build(plan: ManifestPlan, data_dir: str, name: str, overwrite: bool) -> BuildSummary | None:
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
            changed = (
                f"a different manifest ({existing.manifest}, sha256 {existing.manifest_sha256[:12]}...; "
                f"{plan.manifest} now has {plan.sha256[:12]}...)"
            )
        elif not existing.codes_fingerprint:
            changed = "codes files an older flmjax did not fingerprint (it cannot tell whether they changed)"
        else:
            changed = f"different codes files (some of the {len(plan.codes_files)} that {plan.manifest} names changed)"
        raise DatasetError(
            f"{existing.path} was built from {changed}: pass overwrite=True (--overwrite) to "
            "rebuild it, or choose another --name"
        )
    _check_replaceable(target)
    return None


def existing_build(
    manifest_path: str | os.PathLike, data_dir: str | os.PathLike, name: str = "dialogs", overwrite: bool = False
) -> BuildSummary | None:
    """What `build_dataset` would do first, without writing anything: the finished build of these inputs
    (`already_built=True`), None when it would build, or the `DatasetError` it would refuse with."""
    return _existing_build(planned(manifest_path), os.path.abspath(os.fspath(data_dir)), name, overwrite)


def _build_once(plan: ManifestPlan, data_dir: str, name: str, progress: bool) -> BuildSummary:
    """Builds the plan into a staging folder and swaps it in as DATA_DIR/NAME/VERSION; raises `EmptySplitError`
    (nothing swapped) when every record of a split was rejected."""
    target = dataset_dir(data_dir, name)
    with files.staging_folder(target) as staging:  # a data dir of its own: tfds writes staging/NAME/VERSION
        builder = dialog_builder(staging, name, manifest_path=plan.manifest, progress=progress, plan=plan)
        with _tfds_progress_bars_off(), tempfile.TemporaryDirectory() as download_dir:
            builder.download_and_prepare(download_dir=download_dir)  # tfds makes one; nothing is downloaded
        files.swap_in(dataset_dir(staging, name), target)
    return dataclasses.replace(builder.summary, path=target)


def build_dataset(
    manifest_path: str | os.PathLike,
    data_dir: str | os.PathLike,
    name: str = "dialogs",
    progress: bool = True,
    overwrite: bool = False,
) -> BuildSummary:
    """Builds the manifest into DATA_DIR/NAME/VERSION and returns what was written.

    A finished build of the same manifest (same sha256) and codes files (same fingerprint) is kept and its
    stored summary returned with `already_built=True`; one of different inputs is a `DatasetError` unless
    `overwrite`, which rebuilds. The new dataset is built beside the old one and replaces it only when whole:
    a manifest whose records all fail is a `DatasetError` naming the reasons and leaves the old dataset as it
    was. A missing manifest is a `FileNotFoundError`. `progress` shows one progress bar on stderr.
    """
    plan = planned(manifest_path)
    data_dir = os.path.abspath(os.fspath(data_dir))
    existing = _existing_build(plan, data_dir, name, overwrite)
    if existing is not None:
        return existing
    _remove_leftovers(data_dir, name)
    while True:
        if not plan.lines:
            raise all_rejected_error(plan)
        try:
            return _build_once(plan, data_dir, name, progress)
        except EmptySplitError as empty:
            plan.rejections.extend(empty.rejections)
            del plan.lines[empty.split]
            plan.left_out_splits.append(empty.split)
