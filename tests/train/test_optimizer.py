"""flmjax.train.optimizer: the schedule, frozen groups and lr multipliers, clipping of the trainable gradients
only, weight decay on matrices only, config errors, and a jitted init of sharded params."""

import jax
import ml_collections
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from flmjax import model, presets
from flmjax.sharding import make_mesh, param_shardings
from flmjax.train.optimizer import (
    PARAM_GROUPS,
    OptimizerConfig,
    OptimizerConfigError,
    init_optimizer_state,
    learning_rate_schedule,
    learning_rates,
    make_optimizer,
    param_groups,
    weight_decay_mask,
)

CONFIG = presets.tiny()
GROUP_KEYS = {"embeddings": "embedder", "temporal": "temporal", "text_head": "text_head", "depth": "depth"}


@pytest.fixture(scope="module")
def params():
    return jax.jit(model.init_params, static_argnums=0)(CONFIG, jax.random.key(0))  # jit: 3x faster than eager


def random_grads(params, seed=0, scale=1.0, scales=None):
    """Gaussian float32 gradients (numpy: eager jax ops would compile once per shape); `scales`
    ({top-level key: factor}) scales whole groups."""
    rng = np.random.default_rng(seed)

    def group(key, sub):
        factor = (scales or {}).get(key, 1.0)
        return jax.tree.map(lambda p: (factor * scale * rng.standard_normal(p.shape)).astype(np.float32), sub)

    return {key: group(key, sub) for key, sub in params.items()}


def run_steps(cfg, params, grads, steps=3):
    """Params and optimizer state after `steps` updates with the same gradients."""
    tx = make_optimizer(cfg)
    state = init_optimizer_state(tx, params)

    @jax.jit
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for _ in range(steps):
        params, state = step(params, state, grads)
    return params, state


def group_changed(before, after, group):
    """Per param of the group: did any value change? (numpy: eager jnp ops would each compile.)"""
    key = GROUP_KEYS[group]
    return [
        bool(np.any(np.asarray(a) != np.asarray(b)))
        for a, b in zip(jax.tree.leaves(before[key]), jax.tree.leaves(after[key]))
    ]


def first_moments(state, group=None) -> list:
    """The Adam first moments (`mu`, param-shaped trees) of every trainable group, or of one group."""
    found = optax.tree_utils.tree_get_all_with_path(state, "mu")
    return [mu for path, mu in found if group is None or any(getattr(k, "key", None) == group for k in path)]


def tree_norm(tree) -> float:
    return float(np.sqrt(sum(np.sum(np.square(np.asarray(x, np.float64))) for x in jax.tree.leaves(tree))))


def state_size(state) -> int:
    return sum(np.size(leaf) for leaf in jax.tree.leaves(state))


CONSTANT = dict(schedule="constant", warmup_steps=0, learning_rate=1e-2)


# ---------------------------------------------------------------------- schedule
def test_cosine_schedule_warms_up_from_zero_then_decays_to_the_end_fraction():
    cfg = OptimizerConfig(learning_rate=1e-3, warmup_steps=10, total_steps=110, end_lr_fraction=0.1)
    lr = learning_rate_schedule(cfg)
    assert float(lr(0)) == 0.0
    assert float(lr(5)) == pytest.approx(5e-4)
    assert float(lr(10)) == pytest.approx(1e-3)
    assert float(lr(60)) == pytest.approx(1e-4 + 0.5 * 9e-4)  # halfway through the cosine
    assert float(lr(110)) == pytest.approx(1e-4)
    assert float(lr(500)) == pytest.approx(1e-4)


def test_constant_schedule_warms_up_then_stays_flat():
    lr = learning_rate_schedule(
        OptimizerConfig(learning_rate=2e-4, schedule="constant", warmup_steps=4, total_steps=10)
    )
    assert [float(lr(s)) for s in (0, 2, 4, 10, 1000)] == pytest.approx([0.0, 1e-4, 2e-4, 2e-4, 2e-4])


def test_group_learning_rates_are_the_schedule_times_the_multiplier():
    cfg = OptimizerConfig(**CONSTANT, lr_multipliers={"depth": 0.5}, frozen=("embeddings",))
    assert {k: float(v) for k, v in learning_rates(cfg, 3).items()} == pytest.approx(
        {"lr_embeddings": 0.0, "lr_temporal": 1e-2, "lr_text_head": 1e-2, "lr_depth": 5e-3}
    )


# ---------------------------------------------------------------------- groups
def test_param_groups_label_every_param_by_its_top_level_key(params):
    labels = param_groups(params)
    for group, key in GROUP_KEYS.items():
        assert set(jax.tree.leaves(labels[key])) == {group}
    assert set(jax.tree.leaves(labels)) == set(PARAM_GROUPS)


def test_an_unknown_top_level_key_belongs_to_no_group(params):
    with pytest.raises(OptimizerConfigError, match="'adapter'.*groups"):
        param_groups({**params, "adapter": {"kernel": np.zeros((2, 2))}})


def test_frozen_group_params_never_change_while_the_others_train(params):
    cfg = OptimizerConfig(**CONSTANT, frozen=("embeddings", "text_head"))
    after, _ = run_steps(cfg, params, random_grads(params))
    assert not any(group_changed(params, after, "embeddings") + group_changed(params, after, "text_head"))
    assert all(group_changed(params, after, "temporal") + group_changed(params, after, "depth"))


def test_frozen_groups_hold_no_optimizer_state(params):
    tx_all = make_optimizer(OptimizerConfig(**CONSTANT))
    tx_frozen = make_optimizer(OptimizerConfig(**CONSTANT, frozen=("embeddings",)))
    embedder_size = sum(np.size(p) for p in jax.tree.leaves(params["embedder"]))
    full = state_size(init_optimizer_state(tx_all, params))
    saved = full - state_size(init_optimizer_state(tx_frozen, params))
    assert 0 <= saved - 2 * embedder_size <= 4  # both Adam moments (and the group's step counters)


def test_zero_multiplier_keeps_params_fixed_but_unlike_freezing_counts_in_clipping(params):
    """Multiplier 0: lr 0, so no Adam step and no weight decay, but its gradients count in the clipping norm
    and it keeps Adam moments. Frozen: left out of both."""
    grads = random_grads(params, scale=1e-4, scales={"embedder": 1e4})  # norm 0.1 without the embeddings
    zero = OptimizerConfig(**CONSTANT, lr_multipliers={"embeddings": 0.0}, clip_norm=1.0)
    frozen = OptimizerConfig(**CONSTANT, frozen=("embeddings",), clip_norm=1.0)
    after_zero, state_zero = run_steps(zero, params, grads, steps=1)
    after_frozen, state_frozen = run_steps(frozen, params, grads, steps=1)
    for after in (after_zero, after_frozen):
        assert not any(group_changed(params, after, "embeddings"))
        assert all(group_changed(params, after, "depth"))
    depth_mu = lambda state: first_moments(state, "depth")[0]["depth"]  # noqa: E731
    # First-step Adam moment = (1 - b1) * clipped gradient: clipped hard when the embeddings count.
    assert tree_norm(depth_mu(state_frozen)) == pytest.approx(0.1 * tree_norm(grads["depth"]), rel=1e-5)
    assert tree_norm(depth_mu(state_zero)) < 1e-3 * tree_norm(depth_mu(state_frozen))
    assert state_size(state_zero) > state_size(state_frozen)


# ---------------------------------------------------------------------- clipping and weight decay
def test_clipping_bounds_the_gradient_the_optimizer_sees(params):
    grads = random_grads(params, scale=1e3)
    total = float(tree_norm(grads))
    seen = {}
    for clip in (1.0, 0.0):
        _, state = run_steps(OptimizerConfig(**CONSTANT, clip_norm=clip), params, grads, steps=1)
        moments = first_moments(state)
        assert len(moments) == len(PARAM_GROUPS)
        seen[clip] = tree_norm(moments) / 0.1  # first-step moment = (1 - b1) * gradient
    assert total > 1e4
    assert seen[1.0] == pytest.approx(1.0, rel=1e-5)
    assert seen[0.0] == pytest.approx(total, rel=1e-5)


def test_weight_decay_shrinks_matrices_but_not_norm_scales_or_biases(params):
    assert CONFIG.attention_bias  # the tiny model has q/k/v biases to check
    cfg = OptimizerConfig(**CONSTANT, weight_decay=0.5)
    zero_grads = jax.tree.map(np.zeros_like, params)
    after, _ = run_steps(cfg, params, zero_grads, steps=1)
    decays = weight_decay_mask(params)
    flat = jax.tree_util.tree_leaves_with_path(params)
    names = {jax.tree_util.keystr(path): leaf for path, leaf in flat}
    undecayed = [k for k, d in zip(names, jax.tree.leaves(decays)) if not d]
    assert "['temporal']['layers']['input_norm']['scale']" in undecayed  # stacked [L, H]: rank 2, still a norm
    assert "['temporal']['layers']['attn']['q_bias']" in undecayed  # stacked [L, heads, head_dim]
    assert "['embedder']['text']" not in undecayed
    for (path, before), now, decay in zip(flat, jax.tree.leaves(after), jax.tree.leaves(decays)):
        want = before * (1 - 1e-2 * 0.5) if decay else before
        np.testing.assert_allclose(np.asarray(now), np.asarray(want), rtol=1e-6, err_msg=jax.tree_util.keystr(path))


# ---------------------------------------------------------------------- config
def test_an_unknown_group_name_is_an_error_naming_the_valid_groups():
    with pytest.raises(OptimizerConfigError, match=r"\['decoder'\].*embeddings.*temporal.*text_head.*depth"):
        OptimizerConfig(frozen=("decoder",))
    with pytest.raises(OptimizerConfigError, match=r"\['audio'\].*valid groups"):
        OptimizerConfig(lr_multipliers={"audio": 2.0})


@pytest.mark.parametrize(
    "field, value",
    [("learning_rate", 0.0), ("warmup_steps", -1), ("b2", 1.0), ("clip_norm", -1.0), ("schedule", "linear")],
)
def test_invalid_values_are_errors_naming_the_field(field, value):
    with pytest.raises(OptimizerConfigError, match=field if field != "schedule" else "linear"):
        OptimizerConfig(**{field: value})


def test_freezing_every_group_is_an_error():
    with pytest.raises(OptimizerConfigError, match="nothing would train"):
        OptimizerConfig(frozen=PARAM_GROUPS)


def test_from_config_reads_a_config_dict_and_fills_missing_multipliers():
    cfg = OptimizerConfig.from_config(
        ml_collections.ConfigDict({"learning_rate": 1e-4, "lr_multipliers": {"depth": 2.0}, "frozen": ["embeddings"]})
    )
    assert cfg.lr_multipliers == {"embeddings": 1.0, "temporal": 1.0, "text_head": 1.0, "depth": 2.0}
    assert cfg.frozen == ("embeddings",) and cfg.learning_rate == 1e-4
    assert hash(cfg) == hash(OptimizerConfig(learning_rate=1e-4, lr_multipliers={"depth": 2}, frozen=["embeddings"]))
    with pytest.raises(OptimizerConfigError, match="unknown OptimizerConfig keys"):
        OptimizerConfig.from_config({"lr": 1e-4})


# ---------------------------------------------------------------------- sharded init
def test_init_under_jit_puts_the_state_of_sharded_params_on_their_mesh(params):
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    params = jax.device_put(params, param_shardings(CONFIG, mesh))
    tx = make_optimizer(OptimizerConfig(frozen=("text_head",)))
    state = init_optimizer_state(tx, params)
    for leaf in jax.tree.leaves(state):
        assert isinstance(leaf.sharding, NamedSharding) and leaf.sharding.mesh == mesh
    for group, key in GROUP_KEYS.items():
        if group == "text_head":
            assert first_moments(state, group) == []
            continue
        (mu,) = first_moments(state, group)
        for moment, param in zip(jax.tree.leaves(mu[key]), jax.tree.leaves(params[key]), strict=True):
            assert moment.sharding == param.sharding
        assert any(leaf.sharding.spec != PartitionSpec() for leaf in jax.tree.leaves(mu[key]))
    counts = optax.tree_utils.tree_get_all_with_path(state, "count")
    assert counts and all(c.sharding.spec == PartitionSpec() for _, c in counts)
    # A sharded, jitted update accepts the state as is.
    grads = jax.tree.map(np.ones_like, params)
    updates, _ = jax.jit(tx.update)(grads, state, params)
    assert not any(np.any(np.asarray(u)) for u in jax.tree.leaves(updates["text_head"]))
