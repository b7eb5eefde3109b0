"""`launch/bench.py`: the forward benchmark's JSON report and its CLI (a tiny run, about 5 s)."""

import json

import jax
import pytest

from launch import bench, bench_train

pytestmark = pytest.mark.xdist_group("bench")  # the benchmark runs are module fixtures, each built once

BATCH, FRAMES = 1, 8
ROW_KEYS = {
    "benchmark",
    "preset",
    "dtype",
    "param_dtype",
    "batch",
    "frames",
    "params_temporal",
    "params_depth",
    "params_total",
    "lower_s",
    "compile_s",
    "repeats",
    "times_s",
    "median_s",
    "min_s",
    "frames_per_s",
    "flops_per_call",
    "flops_source",
    "gflops_per_s",
    "flops_analytic",
    "flops_xla_compiled",
    "temp_bytes",
    "argument_bytes",
    "output_bytes",
}
HEADER_KEYS = {
    "benchmark",
    "command",
    "date",
    "jax_version",
    "device_kind",
    "cpu_count",
    "settings",
    "elapsed_s",
    "persistent_compilation_cache",
}


def run_and_read(name, settings, folder):
    """Runs benchmark `name`; returns the JSON it wrote, checked equal to what it returned."""
    out = folder / f"{name}.json"
    returned = bench.run_benchmark(name, settings, out, command="test")
    written = json.loads(out.read_text())
    assert written == json.loads(json.dumps(returned))
    return written


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """The JSON written by one tiny forward run (float32, batch 1 x 8 frames, 2 timed runs)."""
    settings = bench.Settings(presets=("tiny",), dtypes=("float32",), batch=BATCH, frames=FRAMES, repeats=2)
    return run_and_read("forward", settings, tmp_path_factory.mktemp("bench"))


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
    assert (args.benchmark, args.presets, args.dtypes, args.batch) == ("forward", ("tiny", "small"), ("bfloat16",), 2)
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


# ---------------------------------------------------------------------- train
# 8 x 256 frames (the bench's default), not fewer: the FLOP formula leaves out the per-step optimizer update
# (about 20 FLOPs per param), which weighs more the fewer frames a step holds (formula/XLA 0.89 at 2 x 128).
TRAIN_BATCH, TRAIN_FRAMES, TRAIN_MESHES = 8, 256, (1, 2)
TRAIN_ROW_KEYS = {
    "benchmark",
    "preset",
    "dtype",
    "param_dtype",
    "devices",
    "mesh_shape",
    "batch",
    "frames",
    "params_total",
    "skipped",
    "compile_s",
    "repeats",
    "times_s",
    "median_s",
    "min_s",
    "final_loss",
    "frames_per_s",
    "tokens_per_frame",
    "tokens_per_s",
    "temp_bytes",
    "argument_bytes",
    "output_bytes",
    "alias_bytes",
    "compiled_bytes",
    "peak_rss_bytes",
    "flops_formula",
    "flops_xla_unrolled",
    "xla_unrolled_compile_s",
    "xla_unrolled_while_loops",
    "flops_formula_over_xla",
    "flops_xla_scanned_per_device",
    "achieved_flops_per_s",
    "peak_flops_per_device",
    "peak_flops_source",
    "mfu",
}


@pytest.fixture(scope="module")
def train_report(tmp_path_factory):
    """The JSON written by one tiny train run (float32, meshes of 1 and 2 devices, 2 timed steps)."""
    settings = bench.Settings(
        presets=("tiny",), dtypes=("float32",), meshes=TRAIN_MESHES, batch=TRAIN_BATCH, frames=TRAIN_FRAMES, repeats=2
    )
    return run_and_read("train", settings, tmp_path_factory.mktemp("bench"))


def test_train_report_has_a_row_per_mesh_with_every_key(train_report):
    assert HEADER_KEYS <= set(train_report["header"])
    header = train_report["header"]
    assert header["fake_cpu_devices"] is True and header["tokens_per_frame"] == 17
    assert any("fake CPU devices" in note for note in header["notes"])
    assert header["param_dtype_for"]["bfloat16"] == "float32"
    rows = train_report["rows"]
    assert [row["devices"] for row in rows] == list(TRAIN_MESHES)
    for row in rows:
        assert set(row) == TRAIN_ROW_KEYS
        assert (row["preset"], row["dtype"], row["param_dtype"]) == ("tiny", "float32", "float32")
        assert row["mesh_shape"] == {"data": 1, "fsdp": row["devices"], "tensor": 1}
        assert (row["batch"], row["frames"], row["repeats"], len(row["times_s"])) == (TRAIN_BATCH, TRAIN_FRAMES, 2, 2)


def test_train_times_memory_and_loss_are_positive(train_report):
    for row in train_report["rows"]:
        for key in (
            "compile_s",
            "xla_unrolled_compile_s",
            "median_s",
            "min_s",
            "compiled_bytes",
            "peak_rss_bytes",
            "flops_formula",
            "flops_xla_unrolled",
            "achieved_flops_per_s",
            "peak_flops_per_device",
            "mfu",
        ):
            assert row[key] > 0, key
        assert row["min_s"] <= row["median_s"]
        assert row["compiled_bytes"] == row["temp_bytes"] + row["argument_bytes"] + row["output_bytes"]
        assert 0 < row["final_loss"] < 100
        assert row["skipped"] is None


def test_train_rates_follow_from_the_median_step(train_report):
    for row in train_report["rows"]:
        frames_per_s = TRAIN_BATCH * TRAIN_FRAMES / row["median_s"]
        assert row["frames_per_s"] == pytest.approx(frames_per_s, rel=1e-9)
        assert row["tokens_per_s"] == pytest.approx(17 * row["frames_per_s"], rel=1e-9)
        assert row["achieved_flops_per_s"] == pytest.approx(row["flops_formula"] / row["median_s"], rel=1e-9)
        assert row["mfu"] == pytest.approx(
            row["flops_formula"] / row["median_s"] / (row["peak_flops_per_device"] * row["devices"]), rel=1e-9
        )


def test_train_flop_formula_is_within_10_percent_of_xla_unrolled(train_report):
    from flmjax import presets
    from flmjax.train import step as step_lib

    for row in train_report["rows"]:
        formula = step_lib.model_flops_per_frame(presets.tiny(), TRAIN_FRAMES) * TRAIN_BATCH * TRAIN_FRAMES
        assert row["flops_formula"] == pytest.approx(formula, rel=1e-9)
        assert row["flops_formula_over_xla"] == pytest.approx(row["flops_formula"] / row["flops_xla_unrolled"])
        assert 0.9 <= row["flops_formula_over_xla"] <= 1.1
        # The scanned program counts its layer loop's body once, and a partitioned one counts one device's share.
        assert row["flops_xla_scanned_per_device"] < row["flops_xla_unrolled"]


def test_train_cpu_peak_is_the_machine_split_over_the_mesh(train_report):
    one, two = train_report["rows"]
    assert one["peak_flops_per_device"] == pytest.approx(2 * two["peak_flops_per_device"], rel=1e-9)


def test_train_cli_defaults_and_mesh_list():
    args = bench.parse_args(["train"])
    assert (args.presets, args.meshes, args.dtypes, args.batch, args.frames, args.repeats) == (
        ("tiny", "small"),
        (1, 8),
        ("float32",),
        8,
        256,
        5,
    )
    assert args.out == "bench_results/train.json"
    assert bench.parse_args(["train", "--meshes", "1,2,4"]).meshes == (1, 2, 4)
    assert bench.parse_args(["forward"]).dtypes == ("float32", "bfloat16")


def test_train_rejects_meshes_the_batch_or_devices_cannot_fill():
    settings = bench.Settings(presets=("tiny",), dtypes=("float32",), meshes=(3, 16), batch=4, frames=8)
    with pytest.raises(
        ValueError, match="(?s)16-device mesh needs 16 devices.*batch 4 does not divide over a 3-device mesh"
    ):
        bench_train.run_train_bench(settings)


def test_train_skips_a_case_whose_devices_would_not_fit_in_host_memory(monkeypatch, tmp_path, capsys):
    """On CPU all fake devices live in host memory: a case that would be OOM-killed (losing every row) is
    compiled but not run."""
    monkeypatch.setattr(bench_train, "_available_host_bytes", lambda: 2**20)
    settings = bench.Settings(
        presets=("tiny",), dtypes=("float32",), meshes=(1,), batch=TRAIN_BATCH, frames=TRAIN_FRAMES, repeats=2
    )  # the fixture's shapes: compiles come from the cache
    [row] = bench.run_benchmark("train", settings, tmp_path / "train.json", command="test")["rows"]
    assert row["skipped"].startswith("skipped: 1 device(s) x ")
    assert (row["times_s"], row["median_s"], row["frames_per_s"], row["mfu"]) == ([], None, None, None)
    assert row["compile_s"] > 0 and row["flops_formula_over_xla"] > 0
    table = capsys.readouterr().out
    assert "tiny float32 on 1 device(s) skipped:" in table
    assert table.splitlines()[-1].split()[3:6] == [f"{row['compile_s']:.2f}", "-", "-"]


# ---------------------------------------------------------------------- stream
@pytest.fixture(scope="module")
def stream_report(tmp_path_factory):
    """One tiny streaming run: batch 1 and 2, an 8-frame cache, 3 timed steps."""
    settings = bench.Settings(presets=("tiny",), dtypes=("float32",), batches=(1, 2), frames=8, steps=3)
    return run_and_read("stream", settings, tmp_path_factory.mktemp("bench_stream"))


def test_stream_rows_follow_from_their_times_and_sizes(stream_report):
    from flmjax import presets
    from launch import bench_stream

    config = presets.preset("tiny")
    rows = stream_report["rows"]
    assert [row["batch"] for row in rows] == [1, 2]
    for row in rows:
        assert len(row["times_s"]) == 3 and row["first_step_s"] > 0
        assert row["p50_ms"] == pytest.approx(sorted(row["times_s"])[1] * 1e3)
        assert row["real_time_factor"] == pytest.approx(row["p50_ms"] / 80.0)
        assert row["cache_mib"] * 2**20 == bench_stream.cache_bytes(config, row["batch"], 8, "float32")
        assert row["bound_ms"] == pytest.approx(row["bytes_needed"] / (row["read_bandwidth_gbs"] * 1e9) * 1e3)
        assert row["x_bound"] == pytest.approx(row["p50_ms"] / row["bound_ms"])
    # More sessions read the same weights once but more embedding rows and cache.
    assert rows[0]["weight_bytes_read"] < rows[1]["weight_bytes_read"] < rows[0]["weight_bytes_read"] * 1.1


def test_stream_weight_bytes_count_embedding_rows_not_tables():
    from flmjax import model, presets
    from launch import bench_stream

    config = presets.preset("tiny")
    params = model.abstract_params(config)
    total = sum(leaf.size * 4 for leaf in jax.tree.leaves(params))
    width, depth_width = config.hidden_size, config.depth_dim
    tables = (
        config.vocab_size + 2 * config.aud_channel * config.aud_vocab_size
    ) * width + config.aud_channel * config.aud_vocab_size * depth_width
    rows = (1 + 2 * config.aud_channel) * width + (config.aud_channel - 1) * depth_width
    assert bench_stream.weight_bytes_per_frame(config, params, 1) == total - 4 * tables + 4 * rows


def test_stream_notes_give_the_7b_bound_per_chip(stream_report):
    analytic = stream_report["header"]["analytic_7b"]
    assert {row["chip"] for row in analytic} == {"TPU v5e", "H100 SXM"}
    by_chip = {}
    for row in analytic:
        by_chip.setdefault(row["chip"], []).append(row)
        assert row["bound_ms"] == pytest.approx(
            row["bytes"] / stream_report["header"]["hbm_bandwidth"][row["chip"]] * 1e3
        )
    # The same bytes on a faster memory take proportionally less time.
    for v5e, h100 in zip(by_chip["TPU v5e"], by_chip["H100 SXM"]):
        assert v5e["bytes"] == h100["bytes"] and v5e["bound_ms"] > h100["bound_ms"]
    assert any("flm_audio_7b" in note for note in stream_report["header"]["notes"])


# ---------------------------------------------------------------------- codec
def test_codec_report_rates_follow_from_median_times(tmp_path):
    settings = bench.Settings(batches=(1,), seconds=0.16, repeats=1)
    [row] = run_and_read("codec", settings, tmp_path)["rows"]
    assert (row["batch"], row["frames"]) == (1, 2)
    assert row["encode_realtime"] == pytest.approx(row["seconds"] / row["encode_median_s"])
    assert row["decode_realtime"] == pytest.approx(row["seconds"] / row["decode_median_s"])
    assert 0 < row["frame_p50_ms"] <= row["frame_p99_ms"]
    assert row["step_compile_s"] == pytest.approx(row["encode_step_compile_s"] + row["decode_step_compile_s"])
