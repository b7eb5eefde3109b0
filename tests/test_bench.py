"""`launch/bench.py`: the forward benchmark's JSON report and its CLI (a tiny run, about 5 s)."""

import json

import pytest

from launch import bench

BATCH, FRAMES = 1, 8
ROW_KEYS = {"benchmark", "preset", "dtype", "param_dtype", "batch", "frames", "params_temporal", "params_depth",
            "params_total", "lower_s", "compile_s", "repeats", "times_s", "median_s", "min_s", "frames_per_s",
            "flops_per_call", "flops_source", "gflops_per_s", "flops_analytic", "flops_xla_compiled",
            "temp_bytes", "argument_bytes", "output_bytes"}
HEADER_KEYS = {"benchmark", "command", "date", "jax_version", "device_kind", "cpu_count", "settings", "elapsed_s",
               "persistent_compilation_cache"}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """The JSON written by one tiny forward run (float32, batch 1 x 8 frames, 2 timed runs)."""
    out = tmp_path_factory.mktemp("bench") / "forward.json"
    settings = bench.Settings(presets=("tiny",), dtypes=("float32",), batch=BATCH, frames=FRAMES, repeats=2)
    returned = bench.run_benchmark("forward", settings, out, command="test")
    written = json.loads(out.read_text())
    assert written == json.loads(json.dumps(returned))
    return written


def test_forward_report_has_one_row_per_case_with_every_key(report):
    assert HEADER_KEYS <= set(report["header"])
    assert report["header"]["command"] == "test"
    [row] = report["rows"]
    assert set(row) == ROW_KEYS
    assert (row["preset"], row["dtype"], row["param_dtype"]) == ("tiny", "float32", "float32")
    assert (row["batch"], row["frames"], row["repeats"], len(row["times_s"])) == (BATCH, FRAMES, 2, 2)


def test_forward_timings_and_counts_are_positive(report):
    [row] = report["rows"]
    for key in ("lower_s", "compile_s", "median_s", "min_s", "frames_per_s", "flops_per_call", "gflops_per_s"):
        assert row[key] > 0, key
    assert row["min_s"] <= row["median_s"]
    assert 0 < row["params_temporal"] < row["params_total"]
    assert row["params_temporal"] + row["params_depth"] == row["params_total"]


def test_forward_frames_per_s_is_batch_times_frames_over_median(report):
    [row] = report["rows"]
    assert row["frames_per_s"] == pytest.approx(BATCH * FRAMES / row["median_s"], rel=1e-9)
    assert row["gflops_per_s"] == pytest.approx(row["flops_per_call"] / row["median_s"] / 1e9, rel=1e-9)


def test_forward_flops_count_every_layer_not_one_scan_body(report):
    [row] = report["rows"]
    assert row["flops_source"] == "xla-unrolled"
    assert row["flops_per_call"] == pytest.approx(row["flops_analytic"], rel=0.2)
    assert row["flops_xla_compiled"] < row["flops_per_call"]


def test_cli_splits_comma_separated_lists_and_defaults_the_out_path():
    args = bench.parse_args(["forward", "--presets", "tiny,small", "--dtypes", "bfloat16", "--batch", "2"])
    assert (args.benchmark, args.presets, args.dtypes, args.batch) == ("forward", ("tiny", "small"),
                                                                       ("bfloat16",), 2)
    assert args.out == "bench_results/forward.json"


def test_settings_reject_unknown_presets_and_dtypes():
    with pytest.raises(ValueError, match="(?s)unknown preset 'huge'.*unknown dtype 'float8'"):
        bench.Settings(presets=("huge",), dtypes=("float8",))


def test_data_report_has_a_row_per_worker_count_with_consistent_rates(tmp_path):
    settings = bench.Settings(batch=2, frames=64, repeats=3, records=40, workers=(0,))
    report = bench.run_benchmark("data", settings, tmp_path / "data.json", command="test")
    [row] = report["rows"]
    assert (row["workers"], row["batch"], row["frames"], row["batches"]) == (0, 2, 64, 3)
    assert row["batches_per_s"] == pytest.approx(3 / row["elapsed_s"])
    assert row["frames_per_s"] == pytest.approx(row["batches_per_s"] * 2 * 64)
    assert json.loads((tmp_path / "data.json").read_text())["rows"] == report["rows"]


def test_data_benchmark_defaults_to_the_issue_shape():
    args = bench.parse_args(["data"])
    assert (args.batch, args.frames, args.workers) == (8, 2048, (0, 2))
    assert bench.parse_args(["forward"]).batch == 4
