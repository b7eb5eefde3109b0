"""launch.export (training checkpoint -> released format) and launch.import_official (released format -> step 0)."""

import functools
import os

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from flmjax import model, presets
from flmjax.checkpoints.checkpointer import Checkpointer
from flmjax.convert import load_official, save_official
from launch import cli
from launch import export as export_cli
from launch import import_official as import_cli
from tests.helpers import assert_one_line_error, run_module, tree_hash

CONFIG = presets.tiny()
CPU = jax.sharding.SingleDeviceSharding(jax.devices()[0])


@pytest.fixture(scope="module")
def params():
    return jax.device_get(jax.jit(functools.partial(model.init_params, CONFIG))(jax.random.key(0)))


@pytest.fixture
def workdir(params, tmp_path):
    """A training workdir with checkpoints at steps 10 and 20 (step 20's params are step 10's plus one)."""
    with Checkpointer(tmp_path / "work") as checkpointer:
        for step, offset in ((10, 0.0), (20, 1.0)):
            shifted = jax.tree.map(lambda x, offset=offset: x + offset, params)
            state = {"step": jnp.asarray(step, jnp.int32), "params": shifted}
            checkpointer.save(step, state, CONFIG)
    return tmp_path / "work"


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(np.testing.assert_array_equal, a, b)


def abstract_params(config=CONFIG):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=CPU), model.abstract_params(config))


def folder_state(path):
    return {name: os.path.getmtime(os.path.join(path, name)) for name in sorted(os.listdir(path))}


def test_float32_export_of_a_checkpoint_loads_back_bit_exact(params, workdir, tmp_path):
    written = export_cli.export(workdir, tmp_path / "out", step=10, dtype="float32")
    assert sorted(os.path.basename(path) for path in written) == ["config.json", "model.safetensors"]
    config, loaded = load_official(tmp_path / "out")
    assert config == CONFIG
    assert_trees_equal(loaded, params)


def test_export_defaults_to_the_newest_step_in_bfloat16(params, workdir, tmp_path):
    assert export_cli.main(["--workdir", str(workdir), "--out", str(tmp_path / "out")]) == 0
    _, loaded = load_official(tmp_path / "out")
    expected = jax.tree.map(lambda x: (x + 1.0).astype(ml_dtypes.bfloat16).astype(np.float32), params)
    assert_trees_equal(loaded, expected)


def test_export_writes_shards_with_an_index_above_max_shard_bytes(params, workdir, tmp_path):
    written = export_cli.export(workdir, tmp_path / "out", dtype="float32", max_shard_bytes=2**20)
    names = {os.path.basename(path) for path in written}
    assert "model.safetensors.index.json" in names and "model.safetensors" not in names
    assert_trees_equal(load_official(tmp_path / "out")[1], jax.tree.map(lambda x: x + 1.0, params))


def test_export_refuses_a_non_empty_out_and_leaves_it_alone(workdir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert cli.run(export_cli.main, ["--workdir", str(workdir), "--out", str(out)]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert os.listdir(out) == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"


def test_export_of_a_missing_step_names_it_and_the_steps_there_are(workdir, tmp_path, capsys):
    assert cli.run(export_cli.main, ["--workdir", str(workdir), "--step", "15", "--out", str(tmp_path / "out")]) == 2
    assert "no complete checkpoint for step 15" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_export_of_a_workdir_without_checkpoints_fails_without_creating_anything(tmp_path, capsys):
    assert cli.run(export_cli.main, ["--workdir", str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 2
    assert (
        "--workdir " + str(tmp_path / "empty") + ": no such folder; expected a released-format folder"
        in capsys.readouterr().err
    )
    assert not (tmp_path / "empty").exists() and not (tmp_path / "out").exists()


def test_export_of_a_folder_that_is_no_checkpoint_is_the_resolvers_one_line(tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    assert cli.run(export_cli.main, ["--workdir", str(tmp_path / "notes"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "it holds neither config.json, nor checkpoints/" in err
    assert not (tmp_path / "out").exists()


def test_export_of_the_main_jobs_workdir_takes_its_last_stage(params, workdir, tmp_path):
    main = tmp_path / "main"
    main.mkdir()
    workdir.rename(main / "stage2_b")
    (main / "stage1_a").mkdir()  # an earlier stage without a checkpoint is passed over, as is a later empty one
    (main / "stage3_c" / "checkpoints").mkdir(parents=True)
    assert cli.run(export_cli.main, ["--workdir", str(main), "--out", str(tmp_path / "out"), "--dtype", "float32"]) == 0
    _, exported = load_official(tmp_path / "out")
    assert_trees_equal(exported, jax.tree.map(lambda x: x + 1.0, params))  # stage2_b's newest step, 20


def test_export_of_a_step_folder_exports_that_step(params, workdir, tmp_path):
    assert (
        cli.run(
            export_cli.main,
            ["--workdir", str(workdir / "checkpoints" / "10"), "--out", str(tmp_path / "out"), "--dtype", "float32"],
        )
        == 0
    )
    assert_trees_equal(load_official(tmp_path / "out")[1], params)


def test_imported_release_restores_the_original_params_and_config(params, tmp_path):
    save_official(tmp_path / "release", CONFIG, params, dtype="float32")
    assert import_cli.main([str(tmp_path / "release"), "--workdir", str(tmp_path / "work")]) == 0
    checkpointer = Checkpointer(tmp_path / "work")
    assert checkpointer.all_steps() == [0]
    assert checkpointer.read_meta() == (CONFIG, None, 0)
    assert_trees_equal(jax.device_get(checkpointer.restore_params(abstract_params=abstract_params())), params)


def test_import_refuses_a_workdir_that_holds_checkpoints(params, workdir, tmp_path, capsys):
    save_official(tmp_path / "release", CONFIG, params, dtype="float32")
    before = folder_state(workdir / "checkpoints")
    assert cli.run(import_cli.main, [str(tmp_path / "release"), "--workdir", str(workdir)]) == 2
    assert "already holds checkpoints" in capsys.readouterr().err
    assert folder_state(workdir / "checkpoints") == before


@pytest.mark.parametrize("target", ["parent", "itself", "inside"])
def test_export_into_its_own_workdir_or_a_parent_is_refused_and_changes_nothing(workdir, target):
    out = {"parent": workdir.parent, "itself": workdir, "inside": workdir / "export"}[target]
    before = tree_hash(workdir.parent)
    result = run_module("launch.export", "--workdir", workdir, "--out", out, "--overwrite")
    assert_one_line_error(result, "the input")
    assert tree_hash(workdir.parent) == before


def test_overwrite_replaces_a_previous_export_but_no_other_folder(workdir, tmp_path, capsys):
    out = tmp_path / "out"
    export_cli.export(workdir, out, step=10, dtype="float32")
    export_cli.export(workdir, out, step=20, dtype="float32", overwrite=True)  # a previous export: replaced
    (out / "notes.txt").write_text("mine")
    before = tree_hash(out)
    assert cli.run(export_cli.main, ["--workdir", str(workdir), "--out", str(out), "--overwrite"]) == 2
    assert "holds more than a previous export (notes.txt)" in capsys.readouterr().err
    assert tree_hash(out) == before


def test_export_modes_follow_the_umask(workdir, tmp_path):
    umask = os.umask(0o027)
    try:
        written = export_cli.export(workdir, tmp_path / "out", max_shard_bytes=2**20)
    finally:
        os.umask(umask)
    assert os.stat(tmp_path / "out").st_mode & 0o777 == 0o750
    assert {os.stat(path).st_mode & 0o777 for path in written} == {0o640}


def test_export_of_a_checkpoint_with_damaged_metadata_is_one_line(workdir, tmp_path):
    (workdir / "checkpoints" / "20" / "meta" / "metadata").write_text('{"format": ')
    result = run_module("launch.export", "--workdir", workdir, "--out", tmp_path / "out")
    assert_one_line_error(result, "unreadable")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage", ["truncated safetensors", "malformed config.json"])
def test_import_of_a_damaged_release_is_one_line_and_creates_nothing(params, tmp_path, damage):
    save_official(tmp_path / "release", CONFIG, params, dtype="float32")
    if damage == "truncated safetensors":
        tensors = tmp_path / "release" / "model.safetensors"
        tensors.write_bytes(tensors.read_bytes()[:1000])
    else:
        (tmp_path / "release" / "config.json").write_text('{"hidden_size": 64,')
    result = run_module("launch.import_official", tmp_path / "release", "--workdir", tmp_path / "work")
    assert_one_line_error(
        result,
        {
            "truncated safetensors": "model.safetensors: not a readable safetensors",
            "malformed config.json": "config.json: not valid JSON",
        }[damage],
    )
    assert not (tmp_path / "work" / "checkpoints").exists() or not os.listdir(tmp_path / "work" / "checkpoints")


def test_import_into_the_release_folder_itself_is_refused_and_changes_nothing(params, tmp_path, capsys):
    save_official(tmp_path / "release", CONFIG, params, dtype="float32")
    before = tree_hash(tmp_path / "release")
    assert cli.run(import_cli.main, [str(tmp_path / "release"), "--workdir", str(tmp_path / "release")]) == 2
    assert "sits inside the input" in capsys.readouterr().err
    assert tree_hash(tmp_path / "release") == before
