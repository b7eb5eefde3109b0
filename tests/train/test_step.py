"""The sharded train step: accumulation, frozen groups, divisibility errors, FLOP formula vs XLA."""

import jax
import numpy as np
import pytest

from flmjax import presets, sharding
from flmjax.train import loss as loss_lib
from flmjax.train import optimizer as optimizer_lib
from flmjax.train import step as step_lib

CONFIG = presets.tiny()
LENGTH = 8
LEARNING_RATE = 1e-2


def random_batch(batch_size, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "text_ids": rng.integers(0, CONFIG.vocab_size, (batch_size, LENGTH), dtype=np.int32),
        "speak_ids": rng.integers(0, 2048, (batch_size, LENGTH, 8), dtype=np.int32),
        "listen_ids": rng.integers(0, 2048, (batch_size, LENGTH, 8), dtype=np.int32),
        "text_targets": rng.integers(0, CONFIG.vocab_size, (batch_size, LENGTH), dtype=np.int32),
        "audio_targets": rng.integers(0, 2048, (batch_size, LENGTH, 8), dtype=np.int32),
        "text_mask": rng.random((batch_size, LENGTH)) < 0.8,  # different per example: accumulation must
        "audio_mask": rng.random((batch_size, LENGTH, 8)) < 0.7,  # still match the whole batch
    }


def run_one_step(mesh_shape, accumulation_steps=1, frozen=(), batch_size=8):
    mesh = sharding.make_mesh(mesh_shape)
    tx = optimizer_lib.make_optimizer(
        optimizer_lib.OptimizerConfig(learning_rate=LEARNING_RATE, warmup_steps=0, total_steps=10, frozen=frozen)
    )
    shardings = step_lib.state_shardings(CONFIG, tx, mesh)
    compiled = step_lib.compile_train_step(
        CONFIG, loss_lib.LossConfig(), tx, shardings, mesh, batch_size, LENGTH, accumulation_steps
    )
    state = step_lib.init_state_sharded(CONFIG, tx, jax.random.key(0), shardings)
    before = jax.device_get(state["params"])
    batch = jax.device_put(random_batch(batch_size), step_lib.batch_shardings(mesh))
    with sharding.activation_rules(mesh):
        state, metrics = compiled.run(state, batch)
    return before, jax.device_get(state), jax.device_get(metrics), compiled


@pytest.fixture(scope="module")
def one_batch_of_8():
    return run_one_step((1, 8, 1))


@pytest.mark.xdist_group("one_batch_of_8")  # shares the module fixture `one_batch_of_8`
def test_two_micro_batches_of_4_match_one_batch_of_8(one_batch_of_8):
    _, state, metrics, _ = one_batch_of_8
    _, accumulated_state, accumulated_metrics, _ = run_one_step((1, 4, 2), accumulation_steps=2)
    assert accumulated_metrics["loss"] == pytest.approx(metrics["loss"], rel=1e-5)
    assert accumulated_metrics["grad_norm"] == pytest.approx(metrics["grad_norm"], rel=1e-4)
    differences = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), accumulated_state["params"], state["params"])
    # Adam divides by sqrt(v): float32 rounding in near-zero gradients moves a param by up to ~1% of the lr.
    assert max(jax.tree.leaves(differences)) < 1e-2 * LEARNING_RATE


@pytest.mark.xdist_group("one_batch_of_8")  # shares the module fixture `one_batch_of_8`
def test_a_step_changes_every_trainable_group_and_counts_steps(one_batch_of_8):
    before, state, _, _ = one_batch_of_8
    assert int(state["step"]) == 1
    for group in ("embedder", "temporal", "text_head", "depth"):
        changed = jax.tree.map(lambda a, b: bool(np.any(a != b)), before[group], state["params"][group])
        assert any(jax.tree.leaves(changed)), group


@pytest.mark.slow
def test_frozen_groups_do_not_change_in_a_train_step():
    before, state, _, _ = run_one_step((1, 8, 1), frozen=("embeddings", "depth"))
    for group in ("embedder", "depth"):
        jax.tree.map(np.testing.assert_array_equal, before[group], state["params"][group])
    changed = jax.tree.map(lambda a, b: bool(np.any(a != b)), before["temporal"], state["params"]["temporal"])
    assert all(jax.tree.leaves(changed))


@pytest.mark.xdist_group("one_batch_of_8")  # shares the module fixture `one_batch_of_8`
def test_sharded_step_on_2x2x2_equals_the_1x8_step(one_batch_of_8):
    _, state, metrics, _ = one_batch_of_8
    _, other_state, other_metrics, _ = run_one_step((2, 2, 2))
    assert other_metrics["loss"] == pytest.approx(metrics["loss"], rel=1e-5)
    differences = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), other_state["params"], state["params"])
    assert max(jax.tree.leaves(differences)) < 1e-2 * LEARNING_RATE


def test_batch_that_does_not_divide_over_the_data_axes_is_an_error():
    with pytest.raises(ValueError, match="micro-batch size 6 does not divide over the 8 devices"):
        run_one_step((2, 4, 1), batch_size=6)


def test_batch_that_does_not_split_into_micro_batches_is_an_error():
    with pytest.raises(ValueError, match="global batch size 8 is not divisible into 3 micro-batches"):
        run_one_step((1, 8, 1), accumulation_steps=3)


def test_flop_formula_is_within_10_percent_of_xla_on_an_unrolled_model():
    """XLA counts a scanned layer loop's body once; unrolled, its count must agree with the formula."""
    config = CONFIG.replace(scan_layers=False, hidden_size=256, intermediate_size=768, head_dim=64, depth_dim=64)
    mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    tx = optimizer_lib.make_optimizer(optimizer_lib.OptimizerConfig(warmup_steps=0, total_steps=10))
    shardings = step_lib.state_shardings(config, tx, mesh)
    compiled = step_lib.compile_train_step(config, loss_lib.LossConfig(), tx, shardings, mesh, 8, 128)
    formula = step_lib.model_flops_per_frame(config, 128) * 8 * 128
    assert compiled.flops == pytest.approx(formula, rel=0.10)
