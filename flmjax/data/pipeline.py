"""Grain pipelines: from dialog datasets to batches of training examples, one pipeline per training stage.

    source (random access, one per dataset split) -> seeded shuffle -> epochs -> record to example
      (monologue placement, delays, crop/pad; seeded per element) -> weighted mixture -> batch of the
      per-process size -> this process's share -> iterator (optionally with worker processes)

The global stream is the same whatever the number of processes: global batch `i` is the concatenation of
process 0's, 1's, ... batch `i`, each process reading and transforming only its own rows. So a run on two hosts
sees exactly the batches a run on one host with the same global batch size sees.

Batches are dicts of numpy arrays, `B` = the per-process batch size, `L` = the stage's sequence length:
`text_ids, text_targets [B, L] int32`, `speak_ids, listen_ids, audio_targets [B, L, 8] int32`,
`text_mask [B, L] bool`, `audio_mask [B, L, 8] bool`, `dropped_tokens [B] int32` (see `flmjax.data.examples`).

Everything is a function of the seed and the element index, so an iterator's `get_state()` restores the exact
same stream, with or without worker processes.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol, Sequence

import grain
import numpy as np

from flmjax.data.examples import SourceRule, StreamIds, TextEncoder, make_example, stack_examples
from flmjax.data.records import DialogRecord


class RecordSource(Protocol):
    """A picklable random-access sequence of dialog records (e.g. `flmjax.data.dataset_source.DialogSource`)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> DialogRecord: ...


@dataclasses.dataclass(frozen=True)
class WeightedSource:
    """One data source of a stage: its records, how they become examples, and its share of the mixture."""

    name: str
    records: Any  # RecordSource
    rule: SourceRule
    weight: float = 1.0


class ExampleMaker(grain.transforms.RandomMap):
    """record -> example, with the element's own generator (crop offsets); picklable for worker processes."""

    def __init__(self, rule: SourceRule, tokenizer: TextEncoder, ids: StreamIds, length: int):
        self.rule, self.tokenizer, self.ids, self.length = rule, tokenizer, ids, length

    def random_map(self, record: DialogRecord, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return make_example(record, self.rule, self.tokenizer, self.ids, self.length, rng)


def source_dataset(
    source: WeightedSource,
    tokenizer: TextEncoder,
    ids: StreamIds,
    length: int,
    seed: int,
    num_epochs: int | None = None,
    shuffle: bool = True,
) -> grain.MapDataset:
    """Examples of one source, lazily computed on access (infinite when `num_epochs` is None)."""
    if len(source.records) == 0:
        raise ValueError(f"source {source.name!r} holds no records")
    dataset = grain.MapDataset.source(source.records)
    if shuffle:
        dataset = dataset.shuffle(seed=seed)
    dataset = dataset.repeat(num_epochs)
    return dataset.random_map(ExampleMaker(source.rule, tokenizer, ids, length), seed=seed + 1)


def stage_dataset(
    sources: Sequence[WeightedSource],
    tokenizer: TextEncoder,
    ids: StreamIds,
    length: int,
    batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    num_epochs: int | None = None,
    shuffle: bool = True,
) -> grain.MapDataset:
    """This process's batches of a weighted mixture of sources (`batch_size` is per process: rows
    `process_index * batch_size ...` of each global batch)."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is outside [0, {process_count})")
    if not sources:
        raise ValueError("a stage needs at least one data source")
    tokenizer_wait_id = getattr(tokenizer, "wait_id", ids.wait_id)
    if tokenizer_wait_id != ids.wait_id:
        raise ValueError(
            f"the tokenizer's <wait> id is {tokenizer_wait_id} but the model's text_wait_token_id is "
            f"{ids.wait_id}: the text row would mix two meanings of <wait>"
        )
    weights = [s.weight for s in sources]
    if any(w <= 0 for w in weights):
        raise ValueError(f"source weights must be positive, got {dict((s.name, s.weight) for s in sources)}")
    datasets = [
        source_dataset(source, tokenizer, ids, length, seed + 1000 * i, num_epochs, shuffle)
        for i, source in enumerate(sources)
    ]
    mixture = datasets[0] if len(datasets) == 1 else grain.MapDataset.mix(datasets, weights)
    batches = mixture.batch(batch_size, drop_remainder=True, batch_fn=stack_examples)
    return batches[process_index::process_count]


def batch_iterator(
    dataset: grain.MapDataset, num_workers: int = 0, worker_buffer_size: int = 2
) -> grain.DatasetIterator:
    """An iterator over `dataset` with `get_state()`/`set_state()`; `num_workers > 0` uses worker processes."""
    iter_dataset = dataset.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2))
    if num_workers > 0:
        iter_dataset = iter_dataset.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=num_workers, per_worker_buffer_size=worker_buffer_size)
        )
    return iter(iter_dataset)


# ---------------------------------------------------------------------- from a stage config
def weighted_source(data_dir: str, name: str, source, split: str | None = None) -> WeightedSource:
    """One source of a stage config (`data.sources.NAME`) over its built dataset (`split` overrides its own)."""
    from flmjax.data.dataset_source import DialogSource  # tfds is only needed when reading built datasets

    return WeightedSource(
        name,
        DialogSource(data_dir, source.dataset, split or source.split),
        SourceRule(
            source.task, source.placement, source.lead_frames, source.trail_frames, source.text_loss, source.audio_loss
        ),
        source.weight,
    )


def stage_sources(data_config) -> list[WeightedSource]:
    """The `data.sources` of a stage config (configs/stages) as weighted sources over built datasets."""
    return [weighted_source(data_config.data_dir, name, source) for name, source in sorted(data_config.sources.items())]


def per_process_batch_size(global_batch_size: int, process_count: int) -> int:
    if global_batch_size % process_count:
        raise ValueError(
            f"global batch size {global_batch_size} is not divisible by the {process_count} "
            "processes that each load a share of it"
        )
    return global_batch_size // process_count


def stage_pipeline(
    config, tokenizer: TextEncoder, ids: StreamIds, process_index: int = 0, process_count: int = 1
) -> grain.MapDataset:
    """This process's batches for a stage config (`config.data`, `config.seed`)."""
    data = config.data
    return stage_dataset(
        stage_sources(data),
        tokenizer,
        ids,
        data.sequence_length,
        per_process_batch_size(data.global_batch_size, process_count),
        config.seed,
        process_index,
        process_count,
    )
