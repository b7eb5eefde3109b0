"""Import and export of the released checkpoint format (config.json + safetensors)."""

import itertools
import json
import shutil

import jax
import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from flmjax import model, presets
from flmjax.config import ModelConfig
from flmjax.convert import CheckpointError, load_official, name_map, official_shapes, save_official


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(np.testing.assert_array_equal, a, b)


def read_tensors(folder):
    tensors = {}
    for file in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


def copy_golden(golden_dir, tmp_path):
    target = tmp_path / "checkpoint"
    shutil.copytree(golden_dir, target)
    return target


def test_export_of_imported_golden_reproduces_the_released_files(golden_dir, tmp_path):
    config, params = load_official(golden_dir)
    save_official(tmp_path / "out", config, params, dtype="float32")
    released, exported = read_tensors(golden_dir), read_tensors(tmp_path / "out")
    assert sorted(exported) == sorted(released)
    for name, tensor in released.items():
        assert exported[name].dtype == np.float32, name
        np.testing.assert_array_equal(exported[name], tensor, err_msg=name)


def test_float32_save_then_load_is_bit_exact_and_config_round_trips(golden_dir, tmp_path):
    config, params = load_official(golden_dir)
    save_official(tmp_path / "out", config, params, dtype="float32")
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    assert written == config.to_official()
    assert ModelConfig.from_official(written) == config
    reloaded_config, reloaded = load_official(tmp_path / "out")
    assert reloaded_config == config
    assert_trees_equal(reloaded, params)


def test_bfloat16_export_writes_bfloat16_tensors_that_load_as_rounded_values(golden_dir, tmp_path):
    config, params = load_official(golden_dir)
    save_official(tmp_path / "out", config, params)  # bfloat16 is the default, as released
    assert json.loads((tmp_path / "out" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    tensors = read_tensors(tmp_path / "out")
    assert {tensor.dtype for tensor in tensors.values()} == {np.dtype(ml_dtypes.bfloat16)}
    _, reloaded = load_official(tmp_path / "out")
    rounded = jax.tree.map(lambda x: x.astype(ml_dtypes.bfloat16).astype(np.float32), params)
    assert_trees_equal(reloaded, rounded)


def test_sharded_export_writes_an_index_and_loads_back_exactly(golden_dir, tmp_path):
    config, params = load_official(golden_dir)
    written = save_official(tmp_path / "out", config, params, dtype="float32", max_shard_bytes=400_000)
    shards = sorted((tmp_path / "out").glob("model-*-of-*.safetensors"))
    assert len(shards) > 1 and not (tmp_path / "out" / "model.safetensors").exists()
    for shard in shards:  # within the limit, or a single tensor that alone exceeds it
        tensors = load_file(shard)
        assert sum(t.nbytes for t in tensors.values()) <= 400_000 or len(tensors) == 1, shard.name
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(official_shapes(config))
    assert set(index["weight_map"].values()) == {shard.name for shard in shards}
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in read_tensors(tmp_path / "out").values())
    assert len(written) == len(shards) + 2
    _, reloaded = load_official(tmp_path / "out")
    assert_trees_equal(reloaded, params)


def test_import_reads_float16_and_bfloat16_checkpoints(golden_dir, tmp_path):
    target = copy_golden(golden_dir, tmp_path)
    tensors = load_file(target / "model.safetensors")
    half = {
        name: t.astype(np.float16) if i % 2 else t.astype(ml_dtypes.bfloat16)
        for i, (name, t) in enumerate(sorted(tensors.items()))
    }
    save_file(half, target / "model.safetensors", metadata={"format": "pt"})
    config, params = load_official(target)
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {np.dtype(np.float32)}
    _, original = load_official(golden_dir)
    differences = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), params, original)
    assert 0 < max(jax.tree.leaves(differences)) < 0.1


def test_import_with_param_dtype_casts_every_param(golden_dir):
    _, params = load_official(golden_dir, param_dtype="bfloat16")
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {np.dtype(ml_dtypes.bfloat16)}


def test_unrolled_import_gives_per_layer_params_with_the_same_logits(golden_dir):
    config, params = load_official(golden_dir, scan_layers=False)
    assert "layers_1" in params["temporal"]
    reference = np.load(golden_dir / "forward.npz")
    logits, _ = model.forward(config, params, reference["input_ids"], reference["speak_ids"], reference["listen_ids"])
    assert float(np.max(np.abs(logits - reference["text_logits"]))) < 1e-4


def test_mismatched_checkpoint_lists_every_missing_unexpected_and_misshaped_tensor(golden_dir, tmp_path):
    target = copy_golden(golden_dir, tmp_path)
    tensors = load_file(target / "model.safetensors")
    del tensors["model.norm.weight"]
    del tensors["aud_output_layers.transformer.wtes.3.weight"]
    tensors["model.layers.7.mlp.up_proj.weight"] = np.zeros((4, 4), np.float32)
    tensors["lm_head.weight"] = np.zeros((999, 64), np.float32)
    save_file(tensors, target / "model.safetensors")
    with pytest.raises(CheckpointError) as error:
        load_official(target)
    message = str(error.value)
    assert "4 problems" in message
    assert "missing model.norm.weight: expected shape [64]" in message
    assert "missing aud_output_layers.transformer.wtes.3.weight: expected shape [" in message
    assert "unexpected model.layers.7.mlp.up_proj.weight: found shape [4, 4]" in message
    assert "wrong shape lm_head.weight: expected [1000, 64], found [999, 64]" in message


def test_integer_tensor_is_rejected_by_name(golden_dir, tmp_path):
    target = copy_golden(golden_dir, tmp_path)
    tensors = load_file(target / "model.safetensors")
    tensors["model.norm.weight"] = np.ones(64, np.int32)
    save_file(tensors, target / "model.safetensors")
    with pytest.raises(CheckpointError, match="not a float tensor model.norm.weight: dtype I32"):
        load_official(target)


def test_folder_without_weights_is_a_clear_error(golden_dir, tmp_path):
    target = tmp_path / "empty"
    target.mkdir()
    shutil.copy(golden_dir / "config.json", target)
    with pytest.raises(FileNotFoundError, match="neither model.safetensors nor model.safetensors.index.json"):
        load_official(target)


@pytest.mark.slow
def test_export_refuses_a_non_empty_folder_and_leaves_it_untouched(tmp_path):
    config = presets.tiny()
    params = model.init_params(config, jax.random.key(0))
    target = tmp_path / "out"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="is not empty; pass overwrite=True"):
        save_official(target, config, params)
    assert sorted(p.name for p in target.iterdir()) == ["notes.txt"]
    assert (target / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folder left behind


def test_export_with_overwrite_replaces_the_folder_whole(tmp_path):
    config = presets.tiny()
    target = tmp_path / "out"
    save_official(target, config, model.init_params(config, jax.random.key(0)), dtype="float32")
    (target / "model-00002-of-00002.safetensors").write_text("a shard of an older export")
    (tmp_path / ".out.staging-0123abcd").mkdir()  # left by an export that was killed
    new_params = model.init_params(config, jax.random.key(1))
    save_official(target, config, new_params, dtype="float32", overwrite=True)
    assert not (target / "model-00002-of-00002.safetensors").exists()
    assert_trees_equal(load_official(target)[1], new_params)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_export_rejects_params_that_do_not_match_the_config(tmp_path):
    config = presets.tiny()
    params = model.init_params(config.replace(intermediate_size=96), jax.random.key(0))
    with pytest.raises(CheckpointError, match="wrong shape temporal/layers/mlp/gate_kernel: expected"):
        save_official(tmp_path / "out", config, params)
    assert not (tmp_path / "out").exists()


DEPTH_SWITCHES = list(itertools.product([False, True], repeat=4))


@pytest.mark.slow
@pytest.mark.parametrize("per_position, swiglu, rmsnorm, bias", DEPTH_SWITCHES)
def test_every_depth_variant_round_trips_through_the_released_format(per_position, swiglu, rmsnorm, bias, tmp_path):
    config = presets.tiny(
        depth_per_position_mlp=per_position,
        depth_swiglu=swiglu,
        depth_rmsnorm=rmsnorm,
        depth_bias=bias,
        attention_bias=bias,
        disable_att_o_bias=not bias,
        mlp_bias=bias,
    )
    params = model.init_params(config, jax.random.key(5))
    save_official(tmp_path / "out", config, params, dtype="float32")
    names = set(read_tensors(tmp_path / "out"))
    assert names == set(official_shapes(config))
    assert any(".mlps.7." in name for name in names) == per_position
    assert any("gate_proj" in name and "aud_output" in name for name in names) == swiglu
    assert ("aud_output_layers.transformer.ln_f.bias" in names) == (bias and not rmsnorm)
    assert ("model.layers.0.self_attn.o_proj.bias" in names) == bias
    reloaded_config, reloaded = load_official(tmp_path / "out")
    assert reloaded_config == config
    assert_trees_equal(reloaded, params)


@pytest.mark.parametrize("per_position, swiglu, rmsnorm, bias", DEPTH_SWITCHES)
def test_every_depth_variant_is_causal_over_codebooks(per_position, swiglu, rmsnorm, bias):
    config = presets.tiny(
        depth_per_position_mlp=per_position, depth_swiglu=swiglu, depth_rmsnorm=rmsnorm, depth_bias=bias
    )
    params = model.init_params(config, jax.random.key(6))
    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(3, config.hidden_size)).astype(np.float32)
    prefix = rng.integers(0, 2048, (3, 7))
    changed = prefix.copy()
    changed[:, 4:] = (changed[:, 4:] + 1) % 2048
    logits = model.depth_forward(config, params, hidden, prefix)
    changed_logits = model.depth_forward(config, params, hidden, changed)
    np.testing.assert_allclose(logits[:, :5], changed_logits[:, :5], atol=1e-6)  # positions 0..4 see 0..3
    assert float(np.max(np.abs(logits[:, 5:] - changed_logits[:, 5:]))) > 1e-4


def test_name_map_is_one_table_used_both_ways():
    config = presets.tiny(depth_per_position_mlp=True, attention_bias=True, disable_att_o_bias=False)
    params = model.init_params(config, jax.random.key(7))
    official_names = []
    for entry in name_map(config):
        leaf = np.asarray(_get(params, entry.path))
        for index, name in entry.official_names(leaf.shape):
            official = entry.to_official(leaf[index])
            assert official.shape == entry.official_shape(leaf.shape)
            np.testing.assert_array_equal(entry.to_flmjax(official, leaf.shape[entry.num_indexed :]), leaf[index])
            official_names.append(name)
    assert len(official_names) == len(set(official_names)) == len(official_shapes(config))
    flmjax_paths = {entry.path for entry in name_map(config)}
    assert len(flmjax_paths) == len(jax.tree.leaves(params))


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree
