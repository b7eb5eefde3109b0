"""flmjax.sharding: meshes over the 8 fake CPU devices, param shardings from the logical rules, sharded init and
a sharded forward pass that matches the single-device one."""

import functools

import jax
import numpy as np
import pytest
from flax import linen as nn
from jax.sharding import PartitionSpec as P

from flmjax import model, presets
from flmjax.sharding import (
    DEFAULT_RULES,
    ShardingError,
    activation_rules,
    batch_sharding,
    init_params_sharded,
    logical_sharding,
    make_mesh,
    param_partition_specs,
    param_shardings,
)

CONFIG = presets.tiny()
BATCH, FRAMES = 4, 8


def normalized(spec: P) -> tuple:
    """A PartitionSpec as a tuple without trailing Nones (P("a", None) and P("a") mean the same)."""
    entries = list(spec)
    while entries and entries[-1] is None:
        entries.pop()
    return tuple(entries)


@pytest.fixture(scope="module")
def mesh():
    return make_mesh({"data": 2, "fsdp": 2, "tensor": 2})


@pytest.fixture(scope="module")
def sharded_params(mesh):
    return init_params_sharded(CONFIG, jax.random.key(0), mesh)


@pytest.fixture(scope="module")
def inputs():
    """Random valid ids: text_ids [B,T] < vocab_size, speak_ids and listen_ids [B,T,C] < aud_vocab_size."""
    rng = np.random.default_rng(1)
    audio_shape = (BATCH, FRAMES, CONFIG.aud_channel)
    return (
        rng.integers(0, CONFIG.vocab_size, (BATCH, FRAMES), dtype=np.int32),
        rng.integers(0, CONFIG.aud_vocab_size, audio_shape, dtype=np.int32),
        rng.integers(0, CONFIG.aud_vocab_size, audio_shape, dtype=np.int32),
    )


# ---------------------------------------------------------------------- make_mesh
def test_make_mesh_from_a_dict_has_the_named_sizes():
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert mesh.axis_names == ("data", "fsdp", "tensor")


def test_make_mesh_fills_minus_one_with_the_rest_of_the_devices():
    assert dict(make_mesh({"data": 2, "fsdp": -1, "tensor": 1}).shape) == {"data": 2, "fsdp": 4, "tensor": 1}


def test_make_mesh_takes_a_tuple_in_mesh_axes_order():
    assert dict(make_mesh((1, 2, 4)).shape) == {"data": 1, "fsdp": 2, "tensor": 4}


def test_make_mesh_uses_auto_axis_types():
    mesh = make_mesh((2, 2, 2))
    assert mesh.axis_types == (jax.sharding.AxisType.Auto,) * 3


def test_make_mesh_over_given_devices_uses_only_those():
    devices = jax.devices()[:4]
    mesh = make_mesh({"data": -1, "tensor": 2}, devices=devices)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 1, "tensor": 2}
    assert set(mesh.devices.flat) == set(devices)


def test_make_mesh_rejects_a_product_that_is_not_the_device_count():
    with pytest.raises(ShardingError, match=r"holds 12 devices, but there are 8 devices"):
        make_mesh({"data": 3, "fsdp": 2, "tensor": 2})


def test_make_mesh_rejects_two_minus_ones():
    with pytest.raises(ShardingError, match=r"at most one axis may be -1"):
        make_mesh((-1, -1, 2))


def test_make_mesh_rejects_a_minus_one_the_rest_does_not_divide():
    with pytest.raises(ShardingError, match=r"3 devices, which does not divide the 8 devices"):
        make_mesh({"data": 3, "fsdp": -1})


def test_make_mesh_rejects_zero_and_negative_sizes():
    with pytest.raises(ShardingError, match=r"positive integers or -1.*tensor=0"):
        make_mesh((8, 1, 0))
    with pytest.raises(ShardingError, match=r"fsdp=-2"):
        make_mesh((-1, -2, 1))


def test_make_mesh_rejects_unknown_axis_names():
    with pytest.raises(ShardingError, match=r"unknown mesh axes \['model'\]"):
        make_mesh({"data": 4, "model": 2})


def test_make_mesh_rejects_a_tuple_of_the_wrong_length():
    with pytest.raises(ShardingError, match=r"has 2 entries; expected 3"):
        make_mesh((4, 2))


# ---------------------------------------------------------------------- rules and specs
def test_rules_cover_every_logical_axis_the_model_uses():
    logical_specs = nn.get_partition_spec(model.abstract_params(CONFIG, boxed=True))
    names = {
        name
        for spec in jax.tree.leaves(logical_specs, is_leaf=lambda x: isinstance(x, P))
        for name in spec
        if name is not None
    }
    ruled = {name for name, _ in DEFAULT_RULES}
    assert names <= ruled, f"logical axes without a rule: {names - ruled}"
    assert {"batch", "length", "embed", "vocab"} <= ruled


def test_param_partition_specs_follow_the_rules():
    specs = param_partition_specs(CONFIG)
    assert specs["temporal"]["layers"]["attn"]["q_kernel"] == P(None, "fsdp", "tensor", None)
    assert specs["temporal"]["layers"]["attn"]["k_kernel"] == P(None, "fsdp", "tensor", None)
    assert specs["embedder"]["speak"] == P(None, None, "fsdp")
    assert specs["depth"]["token_embed"] == P(None, None, "fsdp")


def test_a_mesh_axis_is_used_once_per_param_first_rule_wins():
    # depth/linear_in [embed, codebook, depth_embed]: embed and depth_embed both map to fsdp.
    assert param_partition_specs(CONFIG)["depth"]["linear_in"] == P("fsdp", None, None)


def test_batch_sharding_splits_only_the_batch_dim(mesh):
    assert batch_sharding(mesh, ndim=3).spec == P(("data", "fsdp"), None, None)
    assert batch_sharding(mesh).mesh is mesh


# ---------------------------------------------------------------------- sharded init
@pytest.mark.parametrize(
    "path, spec",
    [
        ("temporal/layers/attn/q_kernel", P(None, "fsdp", "tensor", None)),  # [layers, embed, heads, head_dim]
        ("temporal/layers/attn/o_kernel", P(None, "tensor", None, "fsdp")),  # [layers, heads, head_dim, embed]
        ("temporal/layers/mlp/gate_kernel", P(None, "fsdp", "tensor")),  # [layers, embed, mlp]
        ("temporal/layers/mlp/down_kernel", P(None, "tensor", "fsdp")),  # [layers, mlp, embed]
        ("embedder/text", P("tensor", "fsdp")),  # [vocab, embed]
        ("text_head/kernel", P("fsdp", "tensor")),  # [embed, vocab]
        ("depth/blocks/mlp/gate_kernel", P(None, None, "fsdp", None)),  # [layers, codebook, depth_embed, depth_mlp]
        ("depth/heads", P(None, "fsdp", None)),  # [codebook, depth_embed, audio_vocab]
    ],
)
def test_sharded_init_places_params_by_their_logical_axes(sharded_params, path, spec):
    leaf = functools.reduce(lambda tree, key: tree[key], path.split("/"), sharded_params)
    assert normalized(leaf.sharding.spec) == normalized(spec)
    assert len(leaf.sharding.device_set) == 8


def test_sharded_init_returns_plain_arrays_shaped_like_init_params(sharded_params):
    expected = model.abstract_params(CONFIG)
    assert jax.tree.structure(sharded_params) == jax.tree.structure(expected)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), sharded_params) == jax.tree.map(
        lambda a: (a.shape, a.dtype), expected
    )


def test_sharded_init_has_the_values_of_unsharded_init(sharded_params):
    reference = jax.jit(functools.partial(model.init_params, CONFIG))(jax.random.key(0))  # on one device
    for (path, got), want in zip(
        jax.tree_util.tree_flatten_with_path(sharded_params)[0], jax.tree.leaves(reference), strict=True
    ):
        np.testing.assert_allclose(
            np.asarray(got), np.asarray(want), rtol=0, atol=0, err_msg=jax.tree_util.keystr(path)
        )


# ---------------------------------------------------------------------- activations and forward
def test_activation_rules_turn_logical_constraints_into_sharding_constraints(mesh, inputs):
    forward = jax.jit(functools.partial(model.embed, CONFIG))
    params = model.abstract_params(CONFIG)
    assert "sharding_constraint" not in forward.lower(params, *inputs).as_text()
    with activation_rules(mesh, DEFAULT_RULES):
        assert "sharding_constraint" in forward.lower(params, *inputs).as_text()


def test_sharded_forward_matches_the_single_device_forward(mesh, sharded_params, inputs):
    logits_sharding = logical_sharding(mesh, ("batch", "length", "vocab"))
    hidden_sharding = logical_sharding(mesh, ("batch", "length", "embed"))
    sharded_forward = jax.jit(
        functools.partial(model.forward, CONFIG),
        in_shardings=(
            param_shardings(CONFIG, mesh),
            batch_sharding(mesh, ndim=2),
            batch_sharding(mesh, ndim=3),
            batch_sharding(mesh, ndim=3),
        ),
        out_shardings=(logits_sharding, hidden_sharding),
    )
    with activation_rules(mesh, DEFAULT_RULES):
        text_logits, hidden = sharded_forward(sharded_params, *inputs)
    assert text_logits.sharding.is_equivalent_to(logits_sharding, text_logits.ndim)

    one_device = jax.devices()[0]
    local_params = jax.device_put(jax.device_get(sharded_params), one_device)
    want_logits, want_hidden = jax.jit(functools.partial(model.forward, CONFIG))(
        local_params, *jax.device_put(inputs, one_device)
    )
    np.testing.assert_allclose(np.asarray(text_logits), np.asarray(want_logits), atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(hidden), np.asarray(want_hidden), atol=1e-5, rtol=0)


# ---------------------------------------------------------------------- configs that do not fit
def test_param_shardings_name_every_param_whose_heads_do_not_divide_the_tensor_axis():
    config = CONFIG.replace(num_key_value_heads=2)  # 2 kv heads on a tensor axis of 4; all else divides
    with pytest.raises(ShardingError) as error:
        param_shardings(config, make_mesh((1, 2, 4)))
    message = str(error.value)
    for name in ("k_kernel", "v_kernel", "k_bias", "v_bias"):
        assert f"temporal/layers/attn/{name}" in message
    assert "dim 2 (size 2) is not divisible by mesh axes ('tensor',) of size 4" in message
    assert message.startswith("4 param dims do not fit")  # nothing else (q_kernel has 4 heads: fits)


def test_param_shardings_name_the_released_odd_depth_mlp_width_when_rules_shard_it():
    """int(8 D / 3) is 85 for tiny (2730 for the 7B): why DEFAULT_RULES keeps depth_mlp replicated."""
    rules = tuple((name, "tensor" if name == "depth_mlp" else axes) for name, axes in DEFAULT_RULES)
    with pytest.raises(ShardingError, match=r"depth/blocks/mlp/gate_kernel .* \(size 85\) is not divisible"):
        param_shardings(presets.tiny(), make_mesh((2, 2, 2)), rules)


def test_param_shardings_fit_when_the_tensor_axis_is_one():
    rules = tuple((name, "tensor" if name == "depth_mlp" else axes) for name, axes in DEFAULT_RULES)
    shardings = param_shardings(presets.tiny(), make_mesh((2, 4, 1)), rules)
    assert shardings["depth"]["blocks"]["mlp"]["gate_kernel"].spec == P(None, None, "fsdp", "tensor")


def test_param_shardings_reject_rules_naming_an_axis_the_mesh_lacks():
    rules = tuple((name, "model" if axes == "tensor" else axes) for name, axes in DEFAULT_RULES)
    with pytest.raises(ShardingError, match=r"text_head/kernel dim 1 is sharded over \['model'\]"):
        param_shardings(CONFIG, make_mesh((2, 4, 1)), rules)
