"""Dialog record validation: every error names the record and the field; manifests round trip."""

import json

import numpy as np
import pytest

from flmjax.data.manifest import read_manifest, write_manifest
from flmjax.data.records import RecordError, Segment, Word, make_record

CODES = np.zeros((20, 8), np.int64)


def seg(start, end, text="hello", words=None):
    return {"start": start, "end": end, "text": text, **({"words": words} if words else {})}


def test_a_valid_record_keeps_its_fields_and_stores_int16_codes():
    record = make_record("r1", speak_codes=CODES + 5, listen_codes=None, speak_segments=[seg(2, 6)])
    assert record.num_frames == 20 and record.listen_codes is None
    assert record.speak_codes.dtype == np.int16 and int(record.speak_codes[0, 0]) == 5
    assert record.speak_segments == (Segment(2, 6, "hello"),)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(speak_codes=np.full((20, 8), 2048)), "record 'bad': speak_codes holds 2048 at frame 0, codebook 0"),
        (dict(listen_codes=np.full((20, 8), -1)), "record 'bad': listen_codes holds -1"),
        (dict(speak_codes=np.zeros((20, 7), int)), "record 'bad': speak_codes has shape \\(20, 7\\)"),
        (dict(speak_codes=np.zeros((20, 8), np.float32)), "record 'bad': speak_codes has dtype float32"),
        (
            dict(speak_codes=CODES, listen_codes=np.zeros((19, 8), int)),
            "speak_codes has 20 frames but listen_codes has 19",
        ),
        (
            dict(speak_codes=CODES, speak_segments=[seg(15, 25)]),
            "record 'bad': speak_segments\\[0\\] \\[15, 25\\) lies outside",
        ),
        (
            dict(speak_codes=CODES, listen_segments=[seg(6, 6)]),
            "record 'bad': listen_segments\\[0\\] has start 6 >= end 6",
        ),
        (dict(speak_codes=CODES, speak_segments=[seg(2, 8), seg(7, 9)]), "speak_segments\\[1\\] starts at 7, before"),
        (
            dict(speak_codes=CODES, speak_segments=[seg(2, 8, "  ")]),
            "record 'bad': speak_segments\\[0\\] has empty text",
        ),
        (
            dict(speak_codes=CODES, speak_segments=[seg(2, 8, words=[{"start": 1, "end": 3, "text": "x"}])]),
            "speak_segments\\[0\\].words\\[0\\]",
        ),
        (dict(), "num_frames is required when both"),
        (dict(speak_codes=CODES, num_frames=21), "num_frames is 21 but the codes have 20 frames"),
        (
            dict(num_frames=10**10, speak_segments=[seg(0, 5)]),
            "num_frames is 10000000000 \\(222,222 hours\\); more than 1080000 \\(24 hours\\) is not a recording",
        ),
        (dict(num_frames=10), "record 'bad': holds nothing to learn from"),
    ],
)
def test_invalid_records_name_the_record_and_the_field(kwargs, message):
    with pytest.raises(RecordError, match=message):
        make_record("bad", **kwargs)


def test_manifest_round_trip_keeps_every_field(tmp_path):
    records = [
        (
            make_record(
                "a/1",
                speak_codes=CODES + 1,
                listen_codes=CODES + 2,
                speak_segments=[
                    seg(
                        1,
                        5,
                        "hi there",
                        [{"start": 1, "end": 3, "text": "hi"}, {"start": 3, "end": 5, "text": "there"}],
                    )
                ],
                listen_segments=[seg(6, 9, "yes")],
            ),
            "train",
        ),
        (make_record("b", listen_codes=CODES, listen_segments=[seg(0, 20, "all of it")]), "validation"),
    ]
    path = write_manifest(records, tmp_path)
    entries = list(read_manifest(path))
    assert [e.split for e in entries] == ["train", "validation"]
    for entry, (record, _) in zip(entries, records):
        assert entry.load() == record
    assert entries[0].load().speak_segments[0].words == (Word(1, 3, "hi"), Word(3, 5, "there"))


def test_manifest_line_that_is_not_json_is_named_by_number(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"id": "ok", "num_frames": 3}) + "\n{not json\n")
    entries = read_manifest(path)
    next(entries)
    with pytest.raises(RecordError, match="line 2: not valid JSON"):
        next(entries)


def test_manifest_entry_with_an_unreadable_codes_file_names_it(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"id": "x", "speak_codes": "missing.npy"}) + "\n")
    with pytest.raises(RecordError, match="record 'x': speak_codes file 'missing.npy' cannot be read"):
        next(read_manifest(path)).load()
