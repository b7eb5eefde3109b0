"""The first pass of a dialog dataset build over its manifest: each split's lines, the records rejected before
loading (malformed lines, duplicate ids, bad split names), the manifest's sha256 and the fingerprint of the codes
files it names; and the categories of rejection messages.
"""

from __future__ import annotations

import array
import dataclasses
import functools
import hashlib
import os
import re

from flmjax.data.dataset_source import DatasetError
from flmjax.data.manifest import ManifestEntry, parse_line
from flmjax.data.records import CHANNELS, RecordError

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


def rejection_category(message: str) -> str:
    """The category of a rejection message ("codes out of range", "empty text", ...; "other" if unknown)."""
    for category, pattern in REJECTION_CATEGORIES:
        if re.search(pattern, message):
            return category
    return "other"


@dataclasses.dataclass
class SplitLines:
    """Manifest lines of one split: line numbers (for messages) and byte offsets (to read them again)."""

    numbers: array.array = dataclasses.field(default_factory=lambda: array.array("q"))
    offsets: array.array = dataclasses.field(default_factory=lambda: array.array("q"))


@dataclasses.dataclass
class ManifestPlan:
    """What a build will load: each split's lines; what it rejected already (found here, or in splits left out)."""

    manifest: str
    sha256: str
    lines: dict[str, SplitLines]  # split -> lines to load and write
    rejections: list[tuple[str, str]]  # (category, message) found before loading, or in splits left out
    left_out_splits: list[str] = dataclasses.field(default_factory=list)
    codes_files: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (as written, full path)

    @functools.cached_property
    def codes_fingerprint(self) -> str:
        return _codes_fingerprint(self.codes_files)

    @property
    def num_lines(self) -> int:
        return sum(len(lines.numbers) for lines in self.lines.values())


def sha256_of(path: str) -> str:
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


def plan_manifest(manifest: str, sha256: str) -> ManifestPlan:
    plan = ManifestPlan(manifest, sha256, {}, [])
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
                plan.rejections.append(
                    ("duplicate id", f"line {number}: record {entry.id!r}: id already used by an earlier line")
                )
            elif not SPLIT_NAME.match(entry.split) or entry.split.lower() == "all":
                plan.rejections.append(
                    (
                        "bad split name",
                        f"line {number}: record {entry.id!r}: split "
                        f"{entry.split!r} is not a name of letters, digits "
                        "and _ (nor 'all')",
                    )
                )
            else:
                seen_ids.add(entry.id)
                lines = plan.lines.setdefault(entry.split, SplitLines())
                lines.numbers.append(number)
                lines.offsets.append(start)
    return plan


def all_rejected_error(plan: ManifestPlan) -> DatasetError:
    by_category: dict[str, list[str]] = {}
    for category, message in plan.rejections:
        by_category.setdefault(category, []).append(message)
    if not by_category:
        return DatasetError(f"manifest {plan.manifest} holds no records")
    reasons = "; ".join(
        f"{category}: {len(messages)} (first: {messages[0]})" for category, messages in sorted(by_category.items())
    )
    return DatasetError(f"every record in {plan.manifest} was rejected ({len(plan.rejections)}): {reasons}")


def planned(manifest_path: str | os.PathLike) -> ManifestPlan:
    manifest = os.path.abspath(os.fspath(manifest_path))
    if not os.path.isfile(manifest):
        raise FileNotFoundError(f"manifest {manifest} does not exist")
    return plan_manifest(manifest, sha256_of(manifest))
