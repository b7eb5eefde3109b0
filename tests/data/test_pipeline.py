"""Grain stage pipelines: batch layout, exact resume (with and without workers), shards, mixtures."""

import numpy as np
import pytest
from absl import flags

from flmjax.data.examples import EXAMPLE_KEYS, SourceRule, StreamIds
from flmjax.data.pipeline import WeightedSource, batch_iterator, source_dataset, stage_dataset
from flmjax.data.records import make_record

IDS = StreamIds(wait_id=3, aud_pad_id=2048)
LENGTH, BATCH = 24, 4


class CharEncoder:
    """Module-level (picklable for worker processes): one id per character."""

    def encode(self, text):
        return [10 + (ord(c) % 200) for c in text]


def numbered_records(count, task, frames=20):
    """Records whose first listen (or speak) code is their index, so examples tell where they came from."""
    records = []
    for index in range(count):
        codes = np.full((frames, 8), 7, np.int64)
        codes[0, 0] = index
        segment = [{"start": 2, "end": 8, "text": f"utterance {index}"}]
        if task == "asr":
            records.append(make_record(f"asr-{index}", listen_codes=codes, listen_segments=segment))
        else:
            records.append(make_record(f"tts-{index}", speak_codes=codes, speak_segments=segment))
    return records


def example_index(batch, task):
    """The record index of every example of a batch (step 0 listen is unshifted; speak targets likewise)."""
    return (batch["listen_ids"] if task == "asr" else batch["audio_targets"])[:, 0, 0].tolist()


def tts_stage(count=40, seed=0, batch_size=BATCH, **kwargs):
    source = WeightedSource("tts", numbered_records(count, "tts"), SourceRule("tts", "leading", lead_frames=1))
    return stage_dataset([source], CharEncoder(), IDS, LENGTH, batch_size, seed, **kwargs)


def take(iterator, count):
    return [next(iterator) for _ in range(count)]


def assert_batches_equal(first, second):
    assert len(first) == len(second)
    for a, b in zip(first, second):
        for key in EXAMPLE_KEYS:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_batches_have_the_documented_names_shapes_and_dtypes():
    batch = next(batch_iterator(tts_stage()))
    assert set(batch) == set(EXAMPLE_KEYS)
    assert batch["text_ids"].shape == (BATCH, LENGTH) and batch["text_ids"].dtype == np.int32
    assert batch["speak_ids"].shape == batch["listen_ids"].shape == batch["audio_targets"].shape == (BATCH, LENGTH, 8)
    assert batch["text_mask"].dtype == bool and batch["audio_mask"].shape == (BATCH, LENGTH, 8)
    assert batch["dropped_tokens"].shape == (BATCH,)


def test_same_seed_gives_the_same_stream_and_another_seed_another_order():
    first = take(batch_iterator(tts_stage(seed=1)), 3)
    assert_batches_equal(first, take(batch_iterator(tts_stage(seed=1)), 3))
    other = take(batch_iterator(tts_stage(seed=2)), 3)
    assert [example_index(b, "tts") for b in first] != [example_index(b, "tts") for b in other]


def test_an_epoch_visits_every_record_once():
    dataset = tts_stage(count=40, num_epochs=1)
    seen = sum((example_index(b, "tts") for b in batch_iterator(dataset)), [])
    assert sorted(seen) == list(range(40))


def test_restored_iterator_yields_exactly_the_next_batches():
    iterator = batch_iterator(tts_stage())
    take(iterator, 5)
    state = iterator.get_state()
    expected = take(iterator, 4)
    restored = batch_iterator(tts_stage())
    restored.set_state(state)
    assert_batches_equal(take(restored, 4), expected)


@pytest.fixture
def parsed_flags():
    flags.FLAGS.mark_as_parsed()  # grain worker processes read absl flags


def test_worker_processes_give_the_same_batches_and_resume_exactly(parsed_flags):
    in_process = take(batch_iterator(tts_stage()), 8)
    iterator = batch_iterator(tts_stage(), num_workers=2)
    try:
        first = take(iterator, 5)
        state = iterator.get_state()
        rest = take(iterator, 3)
    finally:
        iterator.close()
    assert_batches_equal(first + rest, in_process)
    restored = batch_iterator(tts_stage(), num_workers=2)
    try:
        restored.set_state(state)
        assert_batches_equal(take(restored, 3), rest)
    finally:
        restored.close()


def test_process_shares_concatenate_to_the_single_process_global_batches():
    global_batches = take(batch_iterator(tts_stage(count=30, batch_size=6)), 5)
    shares = [
        take(batch_iterator(tts_stage(count=30, batch_size=2, process_index=p, process_count=3)), 5) for p in range(3)
    ]
    for i, global_batch in enumerate(global_batches):
        for key in EXAMPLE_KEYS:
            np.testing.assert_array_equal(np.concatenate([shares[p][i][key] for p in range(3)]), global_batch[key])


def test_process_shares_are_disjoint_and_cover_an_epoch():
    seen = []
    for process in range(2):
        share = batch_iterator(tts_stage(count=40, batch_size=2, process_index=process, process_count=2, num_epochs=1))
        seen += sum((example_index(b, "tts") for b in share), [])
    assert sorted(seen) == list(range(40))


def test_mixture_follows_the_source_weights():
    sources = [
        WeightedSource("asr", numbered_records(30, "asr"), SourceRule("asr", "trailing"), weight=3.0),
        WeightedSource("tts", numbered_records(30, "tts"), SourceRule("tts"), weight=1.0),
    ]
    batches = take(batch_iterator(stage_dataset(sources, CharEncoder(), IDS, LENGTH, BATCH, seed=0)), 25)
    from_tts = sum(int(b["audio_mask"][i].any()) for b in batches for i in range(BATCH))
    assert from_tts == 25  # 1 in 4 of 100 examples
    asr_rows = [i for b in batches for i in range(BATCH) if not b["audio_mask"][i].any()]
    assert len(asr_rows) == 75


def test_an_empty_source_is_an_error():
    source = WeightedSource("empty", [], SourceRule("tts"))
    with pytest.raises(ValueError, match="source 'empty' holds no records"):
        source_dataset(source, CharEncoder(), IDS, LENGTH, seed=0)


def test_a_process_index_outside_the_process_count_is_an_error():
    with pytest.raises(ValueError, match="process_index 2 is outside \\[0, 2\\)"):
        tts_stage(process_index=2, process_count=2)


def test_non_positive_weights_are_rejected():
    source = WeightedSource("tts", numbered_records(4, "tts"), SourceRule("tts"), weight=0.0)
    with pytest.raises(ValueError, match="weights must be positive"):
        stage_dataset([source], CharEncoder(), IDS, LENGTH, BATCH, seed=0)


@pytest.fixture(scope="module")
def synthetic_data(tmp_path_factory):
    """The project's own synthetic corpus and tokenizer, built by `launch.prepare_data`."""
    from launch import prepare_data

    out = tmp_path_factory.mktemp("data")
    assert prepare_data.main(["--synthetic", "80", "--out", str(out), "--no_progress"]) == 0
    return out


@pytest.mark.parametrize("stage", ["stage1_post_train_trailing", "stage4_duplex_leading"])
def test_stage_configs_run_over_the_built_synthetic_corpus(synthetic_data, stage):
    import importlib

    from flmjax import presets
    from flmjax.data.pipeline import stage_pipeline
    from flmjax.data.sentencepiece_tokenizer import SentencePieceTokenizer
    from flmjax.data.text import check_compatible

    config = importlib.import_module(f"configs.stages.{stage}").get_config()
    config.data.data_dir = str(synthetic_data)
    config.data.sequence_length = 64
    tokenizer = SentencePieceTokenizer(str(synthetic_data / "tokenizer.model"))
    model = presets.tiny()
    check_compatible(tokenizer, model)
    batches = take(batch_iterator(stage_pipeline(config, tokenizer, StreamIds.from_config(model))), 4)
    for batch in batches:
        assert batch["text_ids"].shape == (config.data.global_batch_size, 64)
        assert batch["text_targets"].max() < tokenizer.vocab_size
    targets = np.concatenate([b["text_targets"][b["text_mask"]] for b in batches])
    assert (targets != tokenizer.wait_id).any() and (targets == tokenizer.wait_id).any()


def test_stage_batch_must_divide_among_processes():
    from flmjax.data.pipeline import per_process_batch_size

    assert per_process_batch_size(8, 2) == 4
    with pytest.raises(ValueError, match="global batch size 8 is not divisible by the 3 processes"):
        per_process_batch_size(8, 3)


def test_a_tokenizer_whose_wait_id_differs_from_the_models_is_rejected():
    class OtherWait(CharEncoder):
        wait_id = 997

    source = WeightedSource("tts", numbered_records(4, "tts"), SourceRule("tts"))
    with pytest.raises(ValueError, match="tokenizer's <wait> id is 997 but the model's text_wait_token_id is 3"):
        stage_dataset([source], OtherWait(), IDS, LENGTH, BATCH, seed=0)
