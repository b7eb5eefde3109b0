"""launch.export (training checkpoint -> released format) and launch.import_official (released format -> step 0)."""

import functools
import os

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from flmjax import config as flm_config
from flmjax import model
from flmjax.convert import load_official, save_official
from flmjax.train.checkpoint import Checkpointer
from launch import export as export_cli
from launch import import_official as import_cli

CONFIG = flm_config.tiny()
CPU = jax.sharding.SingleDeviceSharding(jax.devices()[0])


@pytest.fixture(scope="module")
def params():
    return jax.device_get(jax.jit(functools.partial(model.init_params, CONFIG))(jax.random.key(0)))


@pytest.fixture
def workdir(params, tmp_path):
    """A training workdir with checkpoints at steps 10 and 20 (step 20's params are step 10's plus one)."""
    with Checkpointer(tmp_path / "work") as checkpointer:
        for step, offset in ((10, 0.0), (20, 1.0)):
            state = {"step": jnp.asarray(step, jnp.int32), "params": jax.tree.map(lambda x: x + offset, params)}
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
    written = export_cli.export(workdir, tmp_path / "out", dtype="float32", max_shard_bytes=2 ** 20)
    names = {os.path.basename(path) for path in written}
    assert "model.safetensors.index.json" in names and "model.safetensors" not in names
    assert_trees_equal(load_official(tmp_path / "out")[1], jax.tree.map(lambda x: x + 1.0, params))


def test_export_refuses_a_non_empty_out_and_leaves_it_alone(workdir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert export_cli.main(["--workdir", str(workdir), "--out", str(out)]) == 1
    assert "is not empty" in capsys.readouterr().err
    assert os.listdir(out) == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"


def test_export_of_a_missing_step_names_it_and_the_steps_there_are(workdir, tmp_path, capsys):
    assert export_cli.main(["--workdir", str(workdir), "--step", "15", "--out", str(tmp_path / "out")]) == 1
    assert "no complete checkpoint for step 15" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_export_of_a_workdir_without_checkpoints_fails_without_creating_anything(tmp_path, capsys):
    assert export_cli.main(["--workdir", str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 1
    assert "no complete checkpoint under" in capsys.readouterr().err
    assert not (tmp_path / "empty").exists() and not (tmp_path / "out").exists()


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
    assert import_cli.main([str(tmp_path / "release"), "--workdir", str(workdir)]) == 1
    assert "already holds checkpoints" in capsys.readouterr().err
    assert folder_state(workdir / "checkpoints") == before
