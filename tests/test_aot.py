"""launch.aot: the real XLA TPU compiler (libtpu) on TPU topologies that are not attached. Tiny models, v5e:2x2.

These tests share one xdist group (`--dist loadgroup` in setup.cfg), so one worker process loads libtpu for
all of them; conftest sets ALLOW_MULTIPLE_LIBTPU_LOAD so that CLI subprocesses may load it too.
"""

import importlib
import json
import os
import pathlib
import subprocess
import sys

import pytest

from flmjax import compiled as compiled_lib
from flmjax import hardware

pytestmark = pytest.mark.xdist_group("libtpu")  # one worker loads the TPU compiler; the report fixtures are built once
REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
GIB = 2**30


def tiny_stage(layers: int = 4, accumulation: int = 2, batch: int = 8, frames: int = 64, remat: str = "full"):
    config = importlib.import_module("configs.stages.stage4_duplex_leading").get_config("tiny")
    config.unlock()
    config.data.global_batch_size, config.data.sequence_length = batch, frames
    config.train.accumulation_steps = accumulation
    config.model_overrides.update(dtype="bfloat16", remat_policy=remat, attention_chunk=16, num_hidden_layers=layers)
    config.lock()
    return config


@pytest.fixture(scope="module")
def v5e():
    return hardware.topology_devices("v5e:2x2")


@pytest.fixture(scope="module")
def train_report(v5e):
    from launch import aot_train

    return aot_train.train_report(tiny_stage(), v5e, progress=lambda message: None)


# ---------------------------------------------------------------------- train
def test_train_report_holds_the_compilers_figures(train_report):
    r = train_report
    assert r["devices"] == 4 and r["device_kind"] == "TPU v5 lite" and r["slices"] == 1
    assert r["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
    # The compiler's own limit, read from its refusal of a too-large program: 15.75 GiB on v5e.
    assert abs(r["hbm_bytes"] - 15.75 * GIB) < 0.01 * GIB
    m = r["memory"]
    assert m["total"] == m["argument"] + m["output"] - m["alias"] + m["temp"] + m["code"]
    assert 0 < m["total"] < r["hbm_bytes"] and r["fits"] is True
    assert m["alias"] > 0  # the state is donated
    assert set(r["collectives"]) == set(compiled_lib.COLLECTIVE_KINDS)
    assert sum(c["count"] for c in r["collectives"].values()) > 0  # FSDP over 4 chips must communicate
    assert r["compile_s"] > 0


def test_train_report_estimates_from_the_formula_and_the_chip(train_report):
    from flmjax.presets import preset
    from flmjax.train.step import model_flops_per_frame

    r = train_report
    config = preset("tiny", num_hidden_layers=4)
    assert r["frames_per_step"] == 8 * 64
    assert r["flops_formula"] == pytest.approx(model_flops_per_frame(config, 64) * 8 * 64)
    peak = hardware.CHIPS["v5e"].peak_bf16_flops
    assert 0 < r["estimated_step_s"]
    assert r["estimated_mfu"] == pytest.approx(r["flops_formula"] / (r["estimated_step_s"] * 4 * peak))
    assert r["estimated_frames_per_s_per_chip"] == pytest.approx(r["frames_per_step"] / r["estimated_step_s"] / 4)
    assert r["flops_xla"] == pytest.approx(r["flops_xla_per_device"] * 4)
    probes = r["estimate"]["probes"]
    assert list(probes) == ["P1", "P2 (layer loop unrolled 2x)", "Pa (micro-batch loop unrolled 2x)"]
    assert r["estimate"]["unexpected_loop_trip_counts"] == []


def test_the_estimate_counts_every_layer_and_micro_batch_like_an_unrolled_compile(train_report, v5e):
    """The method checked on a model small enough to compile both ways: the scanned step's probes, scaled by
    the loops' trips, against one compile with every layer and micro-batch unrolled."""
    from flmjax.train import loop
    from flmjax.train import step as step_lib
    from launch import aot_compile

    spec = loop.stage_step(tiny_stage(), v5e)
    unrolled_config = spec.model_config.replace(scan_layers=False)
    shardings = step_lib.state_shardings(unrolled_config, spec.tx, spec.mesh)
    unrolled = aot_compile.compile_lowered(
        step_lib.lower_train_step(
            unrolled_config, spec.loss_config, spec.tx, shardings, spec.mesh, 8, 64, 2, accumulation_unroll=2
        ),
        aot_compile.NO_WINDOWED_EINSUM,
    )
    assert compiled_lib.hlo_summary(unrolled.compiled.as_text()).loops == []
    r = train_report
    assert r["flops_xla_per_device"] == pytest.approx(unrolled.cost["flops"], rel=0.01)
    assert r["estimated_step_s"] == pytest.approx(unrolled.cost["optimal_seconds"], rel=0.15)
    # Without the scaling, XLA's own figures are far off: it counts each loop body once.
    assert r["flops_xla_loops_once_per_device"] < 0.75 * unrolled.cost["flops"]


def test_loop_estimate_algebra():
    from launch.aot_train import loop_estimate

    outside, micro, layer = 5.0, 2.0, 3.0  # O, m, T
    p1 = outside + micro + layer
    pd = outside + micro + 2 * layer
    pa = outside + 2 * (micro + layer)
    assert loop_estimate(p1, pd, 2, 28) == pytest.approx(outside + micro + 28 * layer)
    assert loop_estimate(p1, pd, 2, 28, accumulation=4, pa=pa) == pytest.approx(outside + 4 * (micro + 28 * layer))


def test_two_slices_put_the_slices_on_the_data_axis():
    from launch import aot_train

    devices = hardware.topology_devices("v5e:2x2", 2)
    assert hardware.slice_count(devices) == 2
    config = tiny_stage(layers=2, accumulation=1)
    config.unlock()
    config.mesh.data = 2
    config.lock()
    r = aot_train.train_report(config, devices, estimate=False, progress=lambda message: None)
    assert r["devices"] == 8 and r["slices"] == 2 and r["mesh"]["data"] == 2 and r["fits"]
    assert r["collectives"]["all-reduce"]["count"] > 0  # gradients cross the slices


def test_sweep_ranks_the_variants_that_fit_by_estimated_mfu(v5e):
    from launch import aot_sweep

    lines = []
    axes = aot_sweep.SweepAxes(tensor=(1, 3), remat=("none", "full"), micro_batch=(2,))
    reports = aot_sweep.run_sweep(tiny_stage(layers=2, accumulation=1), v5e, axes, progress=lines.append)
    assert [r["remat_policy"] for r in reports] in (["none", "full"], ["full", "none"])
    assert reports[0]["estimated_mfu"] >= reports[1]["estimated_mfu"] > 0
    assert all(r["accumulation_steps"] == 1 and r["fits"] for r in reports)
    assert any("left out: tensor 3" in line for line in lines)  # 4 devices do not split by 3


# ---------------------------------------------------------------------- stream
def test_stream_report_compiles_the_sharded_step_and_its_bound(v5e):
    from flmjax.presets import tiny
    from launch import aot_stream

    config = tiny(dtype="bfloat16", param_dtype="bfloat16")
    r = aot_stream.stream_report(
        config, v5e, batch=2, max_frames=128, mesh_shape={"data": 2, "tensor": 2}, progress=lambda message: None
    )
    assert r["mesh"] == {"data": 2, "fsdp": 1, "tensor": 2} and r["slots_split_over_data"] and r["fits"]
    assert 0 < r["memory"]["total"] < r["hbm_bytes"]
    assert r["estimated_frame_s"] > 0 and r["estimated_frame_s_compiler_layouts"] > 0
    assert r["bound_frame_s"] > 0 and r["x_bound"] == pytest.approx(r["estimated_frame_s"] / r["bound_frame_s"])
    assert all(probe["loops_left"] == 0 for probe in r["estimate"]["probes"].values())
    assert r["real_time"] is True


def test_stream_step_compiles_for_params_in_the_layouts_place_stream_params_gives(v5e):
    """`stream_step`'s own jit (no layouts given) takes the placed params' layouts as they are: the same program,
    by XLA's estimate, as the one compiled with the layouts left to the compiler."""
    import jax
    import jax.numpy as jnp

    from flmjax import model, sharding
    from flmjax.infer import SamplingConfig
    from flmjax.infer import stream as stream_lib
    from flmjax.infer.stream_sharding import stream_rules, stream_state_shardings
    from flmjax.infer.stream_state import fresh_state
    from flmjax.presets import tiny

    config = tiny(dtype="bfloat16", param_dtype="bfloat16")
    mesh = sharding.make_mesh({"data": 2, "tensor": 2}, v5e)
    batch, frames = 2, 64
    chosen = stream_lib.lower_stream_step(config, mesh, batch, frames, auto_layouts=True).compile()
    formats = chosen.input_formats[0][0]
    row_major = stream_lib.lower_stream_step(config, mesh, batch, frames).compile().input_formats[0][0]
    assert any(a.layout != b.layout for a, b in zip(jax.tree.leaves(formats), jax.tree.leaves(row_major)))
    rules = stream_rules(mesh, batch)
    fresh = jax.eval_shape(lambda: fresh_state(config, SamplingConfig(), batch, frames, False))
    state_shardings = stream_state_shardings(fresh.replace(mesh=mesh)).replace(mesh=None)
    state = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), fresh, state_shardings)
    params = jax.tree.map(
        lambda p, f: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=f), model.abstract_params(config), formats
    )
    listen = jax.ShapeDtypeStruct(
        (batch, config.aud_channel), jnp.int32, sharding=sharding.logical_sharding(mesh, ("batch", None), rules)
    )
    keys = jax.eval_shape(lambda: jax.random.split(jax.random.key(0), batch))
    keys = jax.ShapeDtypeStruct(keys.shape, keys.dtype, sharding=sharding.logical_sharding(mesh, ("batch",), rules))
    with sharding.activation_rules(mesh, rules):
        placed = stream_lib._step_frames.lower(params, state.replace(mesh=mesh), listen, keys).compile()
    assert [f.layout for f in jax.tree.leaves(placed.input_formats[0][0])] == [
        f.layout for f in jax.tree.leaves(formats)
    ]
    assert compiled_lib.cost(placed)["optimal_seconds"] == pytest.approx(compiled_lib.cost(chosen)["optimal_seconds"])


def test_default_stream_mesh_is_the_widest_tensor_size_the_model_divides_into(v5e):
    from flmjax.presets import tiny
    from launch import aot_stream

    assert aot_stream.default_stream_mesh(tiny(), v5e) == {"data": 2, "tensor": 2}  # tiny has 2 kv heads


# ---------------------------------------------------------------------- the command line
def run_aot(*args, cwd=None, env=None):
    """`python -m launch.aot ARGS` as a user runs it (no TPU_* settings of ours); the result carries its pid."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("TPU_")}
    environment.update(env or {})
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), environment.get("PYTHONPATH")]))
    with subprocess.Popen(
        [sys.executable, "-m", "launch.aot", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd or REPO_ROOT,
        env=environment,
    ) as process:
        stdout, stderr = process.communicate(timeout=600)
    result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    result.pid = process.pid
    return result


def error_lines(result):
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


TINY = [
    "--config",
    "configs/stages/stage4_duplex_leading.py",
    "--config.model=tiny",
    "--config.data.global_batch_size=8",
    "--config.data.sequence_length=32",
]


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--topology", "v9x:2x2", *TINY], "unknown TPU topology 'v9x:2x2'"),
        (["train", "--topology", "v5e:2x2", *TINY, "--config.mesh.fsdp=3"], "holds 3 devices, but there are 4"),
        (
            ["train", "--topology", "v5e:2x2", *TINY, "--config.mesh.fsdp=1", "--config.mesh.tensor=4"],
            "not divisible by mesh axes ('tensor',)",
        ),
        (["train", "--topology", "v5e:2x2", *TINY, "--config.data.global_batch_size=6"], "does not divide over the 4"),
        (
            ["stream", "--topology", "v5e:2x2", "--model", "tiny", "--mesh", "data=1,tensor=4"],
            "not divisible by mesh axes ('tensor',)",
        ),
        (["stream", "--topology", "v5e:2x2", "--model", "nonesuch"], "neither a preset"),
    ],
)
def test_bad_input_is_one_error_line_before_any_compile(args, message, tmp_path):
    result = run_aot(*args, "--out", str(tmp_path / "report.json"))
    assert result.returncode == 2, result.stderr[-2000:]
    lines = error_lines(result)
    assert len(lines) == 1 and message in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "compiling" not in result.stderr
    assert not list(tmp_path.iterdir())


def test_no_libtpu_says_how_to_install_it(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text("import sys\nsys.modules['libtpu'] = None  # import libtpu fails\n")
    result = run_aot("train", "--topology", "v5e:2x2", *TINY, env={"PYTHONPATH": str(blocker)})
    assert result.returncode == 2
    lines = error_lines(result)
    assert len(lines) == 1 and "needs libtpu" in lines[0] and "pip install" in lines[0]


def test_a_program_that_does_not_fit_gets_a_report_and_exit_status_1(tmp_path):
    """Dense attention over 16384 frames without remat: tens of GiB of scores per chip, far over 15.75 GiB."""
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    out = tmp_path / "reports" / "oom.json"
    result = run_aot(
        "train",
        "--topology",
        "v5e:2x2",
        "--config",
        str(REPO_ROOT / "configs/stages/stage4_duplex_leading.py"),
        "--config.model=tiny",
        "--config.data.global_batch_size=16",
        "--config.data.sequence_length=16384",
        "--out",
        str(out),
        cwd=workdir,
    )
    assert result.returncode == 1, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["fits"] is False and report["required_bytes"] > report["hbm_bytes"]
    assert "RESOURCE_EXHAUSTED" in report["error"]
    over = (report["required_bytes"] - report["hbm_bytes"]) / GIB
    assert f"over by {over:.2f} GiB" in result.stderr
    assert "Traceback" not in result.stderr
    assert list(workdir.iterdir()) == [] and [p.name for p in out.parent.iterdir()] == ["oom.json"]
    # libtpu, left to itself, logs to /tmp/tpu_logs/*.PID and warns that it cannot find the TPU's metadata.
    tpu_logs = pathlib.Path("/tmp/tpu_logs")
    assert not tpu_logs.exists() or not [p for p in tpu_logs.iterdir() if p.name.endswith(f".{result.pid}")]
    assert "TPU_ACCELERATOR_TYPE" not in result.stderr, result.stderr[-2000:]


def test_importing_flmjax_keeps_libtpu_quiet_on_a_machine_without_tpu_chips():
    """libtpu (the test extra) loads whenever jax looks for backends, e.g. in `python -m launch.train` on a CPU."""
    if hardware.has_tpu_chips():
        pytest.skip("TPU chips attached: libtpu's settings are the TPU runtime's own there")
    environment = {
        key: value for key, value in os.environ.items() if not key.startswith("TPU_") and key != "JAX_PLATFORMS"
    }
    with subprocess.Popen(
        [sys.executable, "-c", "import flmjax, jax; print(jax.devices()[0].platform)"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
        env=environment,
    ) as process:
        stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0 and stdout.strip() == "cpu", stderr
    assert "TPU" not in stderr and "libtpu" not in stderr, stderr
    tpu_logs = pathlib.Path("/tmp/tpu_logs")
    assert not tpu_logs.exists() or not [p for p in tpu_logs.iterdir() if p.name.endswith(f".{process.pid}")]


# ---------------------------------------------------------------------- the pieces
def test_topology_names_are_checked():
    assert hardware.parse_topology("v5p:4x4x4") == ("v5p", (4, 4, 4))
    for bad in ("v5p", "v7:2x2", "v5e:2", "v5e:2x2x2x2", ""):
        with pytest.raises(hardware.TopologyError, match="unknown TPU topology"):
            hardware.parse_topology(bad)


def test_out_of_memory_messages_are_read_in_binary_units():
    message = (
        "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries "
        "(531.70G) exceeds available HBM (95.74G)."
    )
    assert hardware.out_of_memory_bytes(message) == (int(531.70 * GIB), int(95.74 * GIB))
    assert hardware.out_of_memory_bytes("something else") == (None, None)


def test_device_kinds_map_to_the_chip_table():
    assert hardware.chip_for_kind("TPU v5 lite").name == "TPU v5e"
    assert hardware.chip_for_kind("TPU v5").name == "TPU v5p"
    assert hardware.chip_for_kind("NVIDIA H100 80GB HBM3").name == "NVIDIA H100"
    assert hardware.chip_for_kind("cpu") is None
    assert hardware.CHIPS["v4"].per_device().peak_bf16_flops == pytest.approx(137.5e12)


HLO = """HloModule m

%body (p: (s32[], f32[8])) -> (s32[], f32[8]) {
  %p = (s32[], f32[8]) parameter(0)
  %x = f32[8]{0} get-tuple-element(%p), index=1
  %ag = f32[32]{0} all-gather(%x), replica_groups={}, dimensions={0}
  %ar = f32[8]{0} all-reduce(%x), to_apply=%add
  ROOT %t = (s32[], f32[8]) tuple(%i, %ar)
}

%cond (q: (s32[], f32[8])) -> pred[] {
  %q = (s32[], f32[8]) parameter(0)
  %n = s32[] constant(28)
  %i = s32[] get-tuple-element(%q), index=0
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

ENTRY %main (a: f32[8]) -> f32[8] {
  %a = f32[8]{0} parameter(0)
  %cp = (f32[8]{0}, f32[8]{0}, u32[], u32[]) collective-permute-start(%a), source_target_pairs={{0,1}}
  %w = (s32[], f32[8]) while(%init), condition=%cond, body=%body
  ROOT %r = f32[8]{0} get-tuple-element(%w), index=1
}
"""


def test_hlo_summary_counts_collectives_per_step_through_loops():
    summary = compiled_lib.hlo_summary(HLO)
    assert summary.loops == [{"body": "body", "trip_count": 28, "executions": 1.0}]
    assert summary.collectives["all-gather"] == {"count": 28.0, "bytes": 28 * 32 * 4.0, "static": 1}
    assert summary.collectives["all-reduce"] == {"count": 28.0, "bytes": 28 * 8 * 4.0, "static": 1}
    assert summary.collectives["collective-permute"] == {"count": 1.0, "bytes": 8 * 4.0, "static": 1}
    assert summary.largest_collectives[0]["kind"] == "all-gather"
