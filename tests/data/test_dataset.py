"""Building a manifest into a TFDS ArrayRecord dataset, and reading it back without TensorFlow."""

import json
import os
import pickle
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds

from flmjax import files
from flmjax.data import synthetic
from flmjax.data.dataset import build_dataset
from flmjax.data.dataset_features import record_from_example
from flmjax.data.dataset_plan import rejection_category
from flmjax.data.dataset_source import SUMMARY_FILE, DatasetError, DialogSource, dataset_dir, read_summary
from flmjax.data.manifest import write_manifest
from flmjax.data.records import FRAME_RATE, Segment, Word, make_record
from launch import cli, prepare_data
from tests.helpers import assert_one_line_error, run_module, tree_hash


def random_codes(seed, frames):
    codes = np.random.default_rng(seed).integers(0, 2048, (frames, 8))
    codes[0, :2] = 0, 2047  # both ends of the code range
    return codes


GOOD = [  # (record, split)
    (
        make_record(
            "dialog-1",
            random_codes(0, 40),
            random_codes(1, 40),
            speak_segments=[
                Segment(2, 10, "Hello there.", (Word(2, 5, "Hello"), Word(5, 10, "there."))),
                Segment(12, 20, "  Ça va ?\n"),
            ],  # no words
            listen_segments=[Segment(0, 8, "hi", ())],
        ),
        "train",
    ),  # an empty word list, not no words
    (
        make_record(
            "tts/only speak", speak_codes=random_codes(2, 25), speak_segments=[Segment(0, 25, "one two three four")]
        ),
        "train",
    ),
    (make_record("dialog-2", random_codes(3, 12), random_codes(4, 12)), "train"),  # no segments
    (
        make_record(
            "asr-only-listen",
            listen_codes=random_codes(5, 30),
            listen_segments=[Segment(1, 9, "a b", (Word(1, 4, "a"), Word(5, 9, "b"))), Segment(9, 30, "c")],
        ),
        "validation",
    ),
    (make_record("no codes", num_frames=17, speak_segments=[Segment(0, 17, "text only")]), "validation"),
    (make_record("test-1", random_codes(6, 8), random_codes(7, 8), listen_segments=[Segment(3, 8, "x")]), "test"),
]
BAD = {  # category -> a fragment of its message (all bad lines come after the good ones)
    "codes out of range": "'bad-range'",
    "wrong shape": "'bad-shape'",
    "segment outside record": "'bad-outside'",
    "start >= end": "'bad-order'",
    "overlapping segments": "'bad-overlap'",
    "empty text": "'bad-empty'",
    "unreadable codes": "'bad-path'",
    "malformed line": f"line {len(GOOD) + 8}: not valid JSON",
}


def bad_lines(directory):
    out_of_range = random_codes(8, 10)
    out_of_range[3, 5] = 2048
    np.save(directory / "out_of_range.npy", out_of_range)
    np.save(directory / "seven.npy", random_codes(9, 10)[:, :7])

    def line(id, **fields):
        return json.dumps({"id": id, "split": "train", "num_frames": 10, **fields}) + "\n"

    def segment(start, end, text="ok"):
        return {"start": start, "end": end, "text": text}

    return [
        line("bad-range", speak_codes="out_of_range.npy"),
        line("bad-shape", listen_codes="seven.npy"),
        line("bad-outside", speak_segments=[segment(5, 11)]),
        line("bad-order", speak_segments=[segment(6, 6)]),
        line("bad-overlap", listen_segments=[segment(0, 5), segment(4, 8)]),
        line("bad-empty", speak_segments=[segment(0, 5, "  ")]),
        line("bad-path", speak_codes="missing/nowhere.npy"),
        '{"id": "bad-json", "split": "train"\n',
    ]


def write_test_manifest(directory, records=GOOD, bad=True):
    path = write_manifest(records, directory)
    if bad:
        with open(path, "a") as f:
            f.writelines(bad_lines(directory))
    return path


def expected(split, records=GOOD):
    return {record.id: record for record, record_split in records if record_split == split}


def read_split(data_dir, split, name="dialogs"):
    source = DialogSource(data_dir, name, split)
    return {record.id: record for record in (source[i] for i in range(len(source)))}


def file_times(folder):
    return {
        os.path.join(root, f): os.stat(os.path.join(root, f)).st_mtime_ns
        for root, _, files in os.walk(folder)
        for f in files
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A dataset built once from the good records and the bad lines: (data_dir, summary)."""
    root = tmp_path_factory.mktemp("built")
    manifest = write_test_manifest(root / "manifest")
    return root / "data", build_dataset(manifest, root / "data", progress=False)


@pytest.mark.parametrize("record, split", GOOD, ids=[record.id for record, _ in GOOD])
def test_every_field_of_a_good_record_survives_the_round_trip(built, record, split):
    data_dir, _ = built
    got = read_split(data_dir, split)[record.id]
    assert got == record
    for channel in ("speak", "listen"):
        assert (got.codes(channel) is None) == (record.codes(channel) is None)
        assert got.codes(channel) is None or got.codes(channel).dtype == np.int16


def test_records_land_in_their_manifest_split(built):
    data_dir, summary = built
    assert summary.records == {"train": 3, "validation": 2, "test": 1}
    assert {split: len(DialogSource(data_dir, "dialogs", split)) for split in summary.records} == summary.records
    assert read_split(data_dir, "validation").keys() == expected("validation").keys()


def test_tfds_data_source_reads_numpy_dicts_that_become_records(built):
    data_dir, _ = built
    source = tfds.data_source("dialogs", data_dir=str(data_dir), split="validation")
    examples = [source[i] for i in range(len(source))]
    assert all(isinstance(example["listen_codes"], np.ndarray) for example in examples)
    assert {record_from_example(e).id: record_from_example(e) for e in examples} == expected("validation")


@pytest.mark.parametrize("category, fragment", BAD.items(), ids=list(BAD))
def test_a_bad_record_is_rejected_under_its_reason(built, category, fragment):
    _, summary = built
    assert [message for message in summary.rejections.get(category, []) if fragment in message]


def test_rejected_records_are_counted_and_left_out(built):
    data_dir, summary = built
    assert summary.rejected == len(BAD)
    assert set(summary.rejections) == set(BAD)
    assert not any(record_id.startswith("bad-") for record_id in read_split(data_dir, "train"))


def test_summary_counts_frames_hours_and_words_per_split(built):
    _, summary = built
    for split in ("train", "validation", "test"):
        records = expected(split).values()
        frames = sum(record.num_frames for record in records)
        words = sum(len(s.text.split()) for r in records for s in r.speak_segments + r.listen_segments)
        assert summary.frames[split] == frames
        assert summary.hours[split] == pytest.approx(frames / FRAME_RATE / 3600)
        assert summary.text_words[split] == words


def test_the_dataset_lives_in_data_dir_name_version_and_is_read_by_name(tmp_path):
    summary = build_dataset(
        write_test_manifest(tmp_path / "m", bad=False), tmp_path / "d", name="my_set", progress=False
    )
    assert summary.path == str(tmp_path / "d" / "my_set" / "1.0.0")
    assert os.path.isfile(os.path.join(summary.path, "dataset_info.json"))
    assert len(tfds.data_source("my_set", data_dir=str(tmp_path / "d"), split="train")) == 3
    assert read_split(tmp_path / "d", "test", name="my_set") == expected("test")


def test_rebuilding_a_finished_dataset_does_nothing(tmp_path):
    manifest = write_test_manifest(tmp_path / "m")
    first = build_dataset(manifest, tmp_path / "d", progress=False)
    before = file_times(tmp_path / "d")
    again = build_dataset(manifest, tmp_path / "d", progress=False)
    assert again.already_built and not first.already_built
    assert file_times(tmp_path / "d") == before
    assert (again.records, again.frames, again.rejections) == (first.records, first.frames, first.rejections)


def test_an_unfinished_dataset_is_removed_and_rebuilt_from_scratch(tmp_path):
    manifest = write_test_manifest(tmp_path / "m", bad=False)
    summary = build_dataset(manifest, tmp_path / "d", progress=False)
    os.remove(os.path.join(summary.path, SUMMARY_FILE))  # as if killed before the end
    stale = os.path.join(summary.path, "dialogs-old.array_record-00000-of-00001")
    open(stale, "w").close()
    killed_tfds_folder = tmp_path / "d" / "dialogs" / "incomplete.ABC123_1.0.0"
    killed_tfds_folder.mkdir()
    rebuilt = build_dataset(manifest, tmp_path / "d", progress=False)
    assert not rebuilt.already_built
    assert not os.path.exists(stale) and not killed_tfds_folder.exists()
    assert read_split(tmp_path / "d", "train") == expected("train")


def test_a_changed_manifest_is_an_error(tmp_path):
    build_dataset(write_test_manifest(tmp_path / "m", GOOD[:3]), tmp_path / "d", progress=False)
    manifest = write_test_manifest(tmp_path / "m", GOOD)
    with pytest.raises(DatasetError, match="different manifest.*overwrite"):
        build_dataset(manifest, tmp_path / "d", progress=False)


def test_overwrite_rebuilds_from_a_changed_manifest(tmp_path):
    build_dataset(write_test_manifest(tmp_path / "m", GOOD[:3]), tmp_path / "d", progress=False)
    manifest = write_test_manifest(tmp_path / "m", GOOD)
    summary = build_dataset(manifest, tmp_path / "d", progress=False, overwrite=True)
    assert summary.records == {"train": 3, "validation": 2, "test": 1}
    assert read_split(tmp_path / "d", "validation") == expected("validation")


def test_a_manifest_whose_records_all_fail_is_an_error_naming_the_reasons(tmp_path):
    manifest = write_test_manifest(tmp_path / "m", records=[])
    with pytest.raises(DatasetError, match="every record.*rejected") as error:
        build_dataset(manifest, tmp_path / "d", progress=False)
    assert all(category in str(error.value) for category in BAD)
    assert read_summary(tmp_path / "d", "dialogs") is None
    assert not os.path.exists(dataset_dir(tmp_path / "d", "dialogs"))


def test_a_split_whose_records_all_fail_is_left_out_and_reported(tmp_path):
    records = [(record, "train") for record, _ in GOOD[:2]]
    manifest = write_test_manifest(tmp_path / "m", records, bad=False)
    with open(manifest, "a") as f:
        f.write(json.dumps({"id": "lonely", "split": "validation", "num_frames": 0}) + "\n")
    summary = build_dataset(manifest, tmp_path / "d", progress=False)
    assert summary.records == {"train": 2}
    assert summary.left_out_splits == ["validation"]
    assert summary.rejections == {"no frames": [summary.rejections["no frames"][0]]}
    assert "'lonely'" in summary.rejections["no frames"][0]


def test_a_repeated_id_is_rejected_and_the_first_record_kept(tmp_path):
    first, second = GOOD[0][0], GOOD[1][0]
    twin = make_record(first.id, second.speak_codes, speak_segments=second.speak_segments)
    manifest = write_test_manifest(tmp_path / "m", [(first, "train"), (twin, "train")], bad=False)
    summary = build_dataset(manifest, tmp_path / "d", progress=False)
    assert read_split(tmp_path / "d", "train") == {first.id: first}
    assert len(summary.rejections["duplicate id"]) == 1


def test_a_missing_manifest_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.jsonl"):
        build_dataset(tmp_path / "nowhere.jsonl", tmp_path / "d", progress=False)


def test_an_unknown_message_falls_in_category_other():
    assert rejection_category("record 'x': something nobody foresaw") == "other"


def test_dialog_source_pickles_before_and_after_reading(built):
    data_dir, _ = built
    source = DialogSource(data_dir, "dialogs", "train")
    unopened = pickle.loads(pickle.dumps(source))
    first = source[0]
    opened = pickle.loads(pickle.dumps(source))
    assert unopened[0] == first == opened[0]
    assert len(unopened) == len(opened) == 3


def test_dialog_source_names_the_splits_when_one_is_missing(built):
    data_dir, _ = built
    with pytest.raises(ValueError, match="no split 'dev'.*train"):
        DialogSource(data_dir, "dialogs", "dev")


def test_a_build_shows_one_progress_bar_on_stderr_and_nothing_per_record(tmp_path, capfd):
    build_dataset(write_test_manifest(tmp_path / "m"), tmp_path / "d", progress=True)
    out, err = capfd.readouterr()
    assert out == ""
    assert "building dialogs" in err and "13/13" in err and f"rejected={len(BAD)}" in err  # 1 line unparsable
    assert not any(record_id in err for record_id in ("dialog-1", "bad-range"))


def test_cli_builds_and_prints_the_summary_table(tmp_path, capsys):
    manifest = write_test_manifest(tmp_path / "m")
    assert prepare_data.main(["--manifest", manifest, "--out", str(tmp_path / "d"), "--no_progress"]) == 0
    out = capsys.readouterr().out
    assert "(built)" in out
    for split, count in (("train", 3), ("validation", 2), ("test", 1), ("total", 6)):
        assert any(line.split()[:2] == [split, str(count)] for line in out.splitlines() if line.strip())
    assert f"rejected {len(BAD)}" in out
    assert "codes out of range: 1" in out and "'bad-range'" in out


def test_cli_says_already_built_on_a_rerun(tmp_path, capsys):
    argv = ["--manifest", write_test_manifest(tmp_path / "m"), "--out", str(tmp_path / "d"), "--no_progress"]
    prepare_data.main(argv)
    capsys.readouterr()
    assert prepare_data.main(argv) == 0
    assert "already built" in capsys.readouterr().out


@pytest.mark.parametrize("change", ["changed manifest", "missing manifest", "all rejected"])
def test_cli_exits_non_zero_with_a_message(tmp_path, capsys, change):
    out = str(tmp_path / "d")
    manifest = write_test_manifest(tmp_path / "m", GOOD[:2], bad=False)
    if change == "changed manifest":
        prepare_data.main(["--manifest", manifest, "--out", out, "--no_progress"])
        manifest = write_test_manifest(tmp_path / "m", GOOD)
    elif change == "missing manifest":
        manifest = str(tmp_path / "nowhere.jsonl")
    else:
        manifest = write_test_manifest(tmp_path / "m", [])
    capsys.readouterr()
    assert cli.run(prepare_data.main, ["--manifest", manifest, "--out", out, "--no_progress"]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("error: ")
        and {
            "changed manifest": "different manifest",
            "missing manifest": "does not exist",
            "all rejected": "every record",
        }[change]
        in err
    )


@pytest.mark.parametrize("argv", [[], ["--manifest", "m.jsonl", "--synthetic", "3"]], ids=["neither", "both"])
def test_cli_needs_exactly_one_of_manifest_and_synthetic(tmp_path, argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        prepare_data.main([*argv, "--out", str(tmp_path)])
    assert exit_.value.code == 2
    assert "--manifest" in capsys.readouterr().err


def test_cli_synthetic_builds_the_generated_corpus_with_a_split_per_kind(tmp_path, capsys):
    assert prepare_data.main(["--synthetic", "60", "--seed", "7", "--out", str(tmp_path), "--no_progress"]) == 0
    assert os.path.isfile(tmp_path / "synthetic_source" / "manifest.jsonl")
    generated = {e.record.id: (e.record, f"{e.split}_{e.kind}") for e in synthetic.generate_examples(60, 7)}
    splits = {split for _, split in generated.values()}
    assert {"train_dialog", "train_asr", "train_tts"} <= splits
    read_back = {}
    for split in splits:
        for record in DialogSource(tmp_path, "synthetic", split):
            read_back[record.id] = (record, split)
    assert sorted(read_back) == sorted(generated)
    for record_id, (record, split) in generated.items():
        assert read_back[record_id][1] == split and read_back[record_id][0] == record, record_id
    assert "dataset synthetic" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------------------
# Nothing lost, nothing silent: refusals change nothing on disk, a dataset is replaced only by a finished one.


def test_overwrite_with_a_manifest_whose_records_all_fail_leaves_the_dataset_as_it_was(tmp_path):
    data_dir = tmp_path / "d"
    build_dataset(write_test_manifest(tmp_path / "m", bad=False), data_dir, progress=False)
    before = tree_hash(data_dir)
    result = run_module(
        "launch.prepare_data",
        "--manifest",
        write_test_manifest(tmp_path / "bad", records=[]),
        "--out",
        data_dir,
        "--overwrite",
        "--no_progress",
    )
    assert_one_line_error(result, "every record")
    assert tree_hash(data_dir) == before
    assert read_split(data_dir, "train") == expected("train")


@pytest.fixture(scope="module")
def synthetic_data_dir(tmp_path_factory):
    """A data dir holding a 60-record synthetic corpus (seed 0), built once; tests copy it."""
    data_dir = tmp_path_factory.mktemp("synthetic") / "d"
    assert prepare_data.main(["--synthetic", "60", "--out", str(data_dir), "--no_progress"]) == 0
    return data_dir


@pytest.fixture
def synthetic_copy(synthetic_data_dir, tmp_path):
    copy = tmp_path / "d"
    shutil.copytree(synthetic_data_dir, copy)
    return copy


def test_a_refused_synthetic_build_leaves_the_corpus_and_dataset_untouched(synthetic_copy):
    before = tree_hash(synthetic_copy)
    result = run_module(
        "launch.prepare_data", "--synthetic", "50", "--seed", "1", "--out", synthetic_copy, "--no_progress"
    )
    assert_one_line_error(result, "different manifest")
    assert tree_hash(synthetic_copy) == before


def test_a_synthetic_rerun_is_already_built_and_rewrites_nothing(synthetic_copy, capsys):
    before = tree_hash(synthetic_copy)
    assert prepare_data.main(["--synthetic", "60", "--out", str(synthetic_copy), "--no_progress"]) == 0
    assert "already built" in capsys.readouterr().out
    assert tree_hash(synthetic_copy) == before


def test_overwrite_rebuilds_a_synthetic_dataset_with_its_new_corpus(synthetic_copy):
    assert (
        prepare_data.main(
            ["--synthetic", "50", "--seed", "1", "--out", str(synthetic_copy), "--no_progress", "--overwrite"]
        )
        == 0
    )
    summary = read_summary(synthetic_copy, "synthetic")
    assert sum(summary.records.values()) == 50 and summary.manifest == str(
        synthetic_copy / "synthetic_source" / "manifest.jsonl"
    )
    assert len(read_manifest_lines(synthetic_copy / "synthetic_source" / "manifest.jsonl")) == 50
    assert sorted(os.listdir(synthetic_copy)) == ["synthetic", "synthetic_source", "tokenizer.model"]


def read_manifest_lines(path):
    with open(path) as f:
        return [line for line in f if line.strip()]


@pytest.mark.parametrize("recorded_module", [None, "abc"], ids=["now", "as older versions recorded it"])
def test_overwrite_rebuilds_a_dataset_of_any_name(tmp_path, recorded_module):
    build_dataset(
        write_test_manifest(tmp_path / "m", GOOD[:3], bad=False), tmp_path / "d", name="my_set", progress=False
    )
    info_path = os.path.join(dataset_dir(tmp_path / "d", "my_set"), "dataset_info.json")
    with open(info_path) as f:
        info = json.load(f)
    assert info["moduleName"] == "flmjax.data.dataset"
    if recorded_module:
        with open(info_path, "w") as f:
            json.dump({**info, "moduleName": recorded_module}, f)
    summary = build_dataset(
        write_test_manifest(tmp_path / "m", GOOD, bad=False),
        tmp_path / "d",
        name="my_set",
        progress=False,
        overwrite=True,
    )
    assert summary.records == {"train": 3, "validation": 2, "test": 1}


def test_a_folder_that_is_not_our_dataset_is_never_replaced(tmp_path):
    foreign = dataset_dir(tmp_path / "d", "dialogs")
    os.makedirs(foreign)
    with open(os.path.join(foreign, "dataset_info.json"), "w") as f:
        json.dump({"moduleName": "someone.elses.builder"}, f)
    before = tree_hash(tmp_path / "d")
    with pytest.raises(DatasetError, match="not written by flmjax.data.dataset"):
        build_dataset(write_test_manifest(tmp_path / "m", bad=False), tmp_path / "d", progress=False, overwrite=True)
    assert tree_hash(tmp_path / "d") == before


def test_a_dataset_folder_holding_its_own_manifest_is_refused(tmp_path):
    folder = dataset_dir(tmp_path / "d", "dialogs")
    manifest = write_test_manifest(folder, GOOD[:2], bad=False)
    before = tree_hash(tmp_path / "d")
    with pytest.raises(files.OverlapError, match="contains the input"):
        build_dataset(manifest, tmp_path / "d", progress=False, overwrite=True)
    assert tree_hash(tmp_path / "d") == before


def test_a_codes_file_changed_behind_an_unchanged_manifest_is_a_changed_build(tmp_path):
    manifest = write_test_manifest(tmp_path / "m", GOOD[:3], bad=False)
    build_dataset(manifest, tmp_path / "d", progress=False)
    codes_path = os.path.join(tmp_path / "m", json.loads(read_manifest_lines(manifest)[0])["speak_codes"])
    changed = (np.load(codes_path) + 1) % 2048
    np.save(codes_path, changed)
    with pytest.raises(DatasetError, match="different codes files"):
        build_dataset(manifest, tmp_path / "d", progress=False)
    build_dataset(manifest, tmp_path / "d", progress=False, overwrite=True)
    np.testing.assert_array_equal(read_split(tmp_path / "d", "train")["dialog-1"].speak_codes, changed)


def test_impossible_durations_and_empty_records_are_rejected_with_reasons(tmp_path):
    manifest = write_test_manifest(tmp_path / "m", GOOD[:1], bad=False)
    with open(manifest, "a") as f:
        f.write(
            json.dumps({"id": "forever", "num_frames": 1e10, "speak_segments": [{"start": 0, "end": 5, "text": "hi"}]})
            + "\n"
        )
        f.write(json.dumps({"id": "nothing", "num_frames": 10}) + "\n")
    summary = build_dataset(manifest, tmp_path / "d", progress=False)
    assert summary.records == {"train": 1}
    assert "'forever'" in summary.rejections["impossible duration"][0]
    assert "'nothing'" in summary.rejections["empty record"][0]
    assert sum(summary.hours.values()) < 1


def test_dataset_modes_follow_the_umask(tmp_path):
    umask = os.umask(0o027)
    try:
        summary = build_dataset(
            write_test_manifest(tmp_path / "m", GOOD[:2], bad=False), tmp_path / "d", progress=False
        )
    finally:
        os.umask(umask)
    folders = [summary.path, os.path.dirname(summary.path)]
    written = [os.path.join(summary.path, name) for name in os.listdir(summary.path)]
    assert {os.stat(folder).st_mode & 0o777 for folder in folders} == {0o750}
    assert {os.stat(path).st_mode & 0o777 for path in written} == {0o640}


def test_a_build_of_an_older_version_without_a_codes_fingerprint_asks_for_overwrite(tmp_path):
    manifest = write_test_manifest(tmp_path / "m", GOOD[:2], bad=False)
    summary = build_dataset(manifest, tmp_path / "d", progress=False)
    summary_path = os.path.join(summary.path, SUMMARY_FILE)
    with open(summary_path) as f:
        stored = json.load(f)
    with open(summary_path, "w") as f:
        json.dump({key: value for key, value in stored.items() if key != "codes_fingerprint"}, f)
    with pytest.raises(DatasetError, match="older flmjax did not fingerprint.*--overwrite"):
        build_dataset(manifest, tmp_path / "d", progress=False)


def test_a_synthetic_dataset_named_like_its_source_folder_is_refused(tmp_path, capsys):
    argv = ["--synthetic", "5", "--name", "synthetic_source", "--out", str(tmp_path / "d"), "--no_progress"]
    assert cli.run(prepare_data.main, argv) == 2
    assert "sits inside the input" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
