"""The Flax model against the released PyTorch model's outputs (../shared/golden), and its own invariants."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flmjax import config as flm_config
from flmjax import model, presets
from tests.conftest import golden_model

TOLERANCE = 1e-4


@pytest.fixture
def golden(golden_dir):
    """(config, params, forward.npz) of one golden checkpoint."""
    return (*golden_model(golden_dir), dict(np.load(golden_dir / "forward.npz")))


def inputs(reference):
    return reference["input_ids"], reference["speak_ids"], reference["listen_ids"]


def max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))


def test_embeddings_match_released(golden):
    config, params, reference = golden
    assert max_diff(model.embed(config, params, *inputs(reference)), reference["embeddings"]) < TOLERANCE


def test_hidden_states_and_text_logits_match_released(golden):
    config, params, reference = golden
    text_logits, hidden = jax.jit(functools.partial(model.forward, config))(params, *inputs(reference))
    assert text_logits.dtype == jnp.float32
    assert max_diff(hidden, reference["hidden_states"]) < TOLERANCE
    assert max_diff(text_logits, reference["text_logits"]) < TOLERANCE


def test_kv_cached_steps_match_released_incremental_logits(golden):
    config, params, reference = golden
    text_ids, speak_ids, listen_ids = inputs(reference)
    step = jax.jit(functools.partial(model.forward_cached, config))
    cache = model.init_cache(config, batch_size=text_ids.shape[0], max_frames=24)
    logits, hiddens = [], []
    for t in range(text_ids.shape[1]):
        step_logits, step_hidden, cache = step(
            params, cache, text_ids[:, t : t + 1], speak_ids[:, t : t + 1], listen_ids[:, t : t + 1]
        )
        logits.append(step_logits)
        hiddens.append(step_hidden)
    assert max_diff(np.concatenate(logits, 1), reference["text_logits_incremental"]) < TOLERANCE
    assert max_diff(np.concatenate(hiddens, 1), reference["hidden_states_incremental"]) < TOLERANCE
    np.testing.assert_array_equal(cache["length"], [text_ids.shape[1]] * text_ids.shape[0])


def test_prefill_then_steps_equals_full_forward(golden):
    config, params, reference = golden
    text_ids, speak_ids, listen_ids = inputs(reference)
    cache = model.init_cache(config, batch_size=2, max_frames=16)
    prefix_logits, _, cache = model.forward_cached(
        config, params, cache, text_ids[:, :10], speak_ids[:, :10], listen_ids[:, :10]
    )
    rest_logits, _, cache = model.forward_cached(
        config, params, cache, text_ids[:, 10:], speak_ids[:, 10:], listen_ids[:, 10:]
    )
    combined = np.concatenate([prefix_logits, rest_logits], axis=1)
    assert max_diff(combined, reference["text_logits"]) < TOLERANCE


def test_depth_teacher_forced_logits_match_released(golden):
    config, params, reference = golden
    logits = model.depth_forward(config, params, reference["depth_hidden"], reference["depth_audio"])
    assert logits.shape == reference["depth_logits"].shape
    assert max_diff(logits, reference["depth_logits"]) < TOLERANCE


@pytest.mark.slow
def test_depth_prefix_logits_match_released(golden):
    config, params, reference = golden
    audio = reference["depth_audio"]
    last_positions = [
        model.depth_forward(config, params, reference["depth_hidden"], audio[:, :k])[:, k]
        for k in range(config.aud_channel)
    ]
    assert max_diff(np.stack(last_positions, axis=1), reference["depth_logits_prefix"]) < TOLERANCE


def test_depth_steps_with_kv_cache_match_released_prefix_logits(golden):
    """Sequential decoding against a depth KV cache gives the released prefix-recomputing logits."""
    config, params, reference = golden
    hidden, audio = reference["depth_hidden"], reference["depth_audio"]
    step = jax.jit(functools.partial(model.depth_step, config))
    cache = model.init_depth_cache(config, hidden.shape[0])
    tokens = np.concatenate([np.full((hidden.shape[0], 1), config.aud_emp_id), audio], axis=1)  # audio: 7 codebooks
    logits = []
    for position in range(config.aud_channel):
        step_logits, cache = step(params, hidden, tokens[:, position], position, cache)
        logits.append(step_logits)
    assert max_diff(np.stack(logits, axis=1), reference["depth_logits_prefix"]) < TOLERANCE


@pytest.mark.parametrize(
    "switches",
    list(itertools.product([False, True], repeat=4)),
    ids=lambda s: "cmlp{}-swiglu{}-rms{}-bias{}".format(*map(int, s)),
)
def test_depth_steps_equal_teacher_forced_pass_for_every_variant(switches):
    per_position, swiglu, rmsnorm, bias = switches
    config = presets.tiny(
        depth_per_position_mlp=per_position, depth_swiglu=swiglu, depth_rmsnorm=rmsnorm, depth_bias=bias
    )
    params = model.init_params(config, jax.random.key(3))
    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((3, config.hidden_size)).astype(np.float32)
    audio = rng.integers(0, 2048, (3, config.aud_channel - 1))
    expected = model.depth_forward(config, params, hidden, audio)
    cache = model.init_depth_cache(config, 3)
    tokens = np.concatenate([np.full((3, 1), config.aud_emp_id), audio], axis=1)
    for position in range(config.aud_channel):
        logits, cache = model.depth_step(config, params, hidden, tokens[:, position], position, cache)
        assert max_diff(logits, expected[:, position]) < 1e-5, position


def test_depth_with_empty_prefix_matches_released(golden):
    config, params, reference = golden
    logits = model.depth_forward(config, params, reference["depth_hidden"], reference["depth_audio"][:, :0])
    assert logits.shape == reference["depth_logits_empty"].shape
    assert max_diff(logits, reference["depth_logits_empty"]) < TOLERANCE


def test_depth_over_batch_and_time_matches_released(golden):
    config, params, reference = golden
    hidden = reference["hidden_states"][:, :4]
    logits = model.depth_forward(config, params, hidden, reference["speak_ids"][:, :4, :7])
    assert logits.shape == reference["depth_logits_lm"].shape
    assert max_diff(logits, reference["depth_logits_lm"]) < TOLERANCE


def test_depth_rejects_a_prefix_of_all_codebooks():
    config = presets.tiny()
    params = model.init_params(config, jax.random.key(0))
    with pytest.raises(ValueError, match="audio_prefix holds 8 codebooks"):
        model.depth_forward(config, params, jnp.zeros((2, config.hidden_size)), jnp.zeros((2, 8), jnp.int32))


def random_inputs(config, batch, frames, seed=0):
    rng = np.random.default_rng(seed)
    return (
        rng.integers(0, config.vocab_size, (batch, frames)),
        rng.integers(0, config.aud_vocab_size, (batch, frames, config.aud_channel)),
        rng.integers(0, config.aud_vocab_size, (batch, frames, config.aud_channel)),
    )


@pytest.mark.parametrize("remat_policy", ["none", "full"])
def test_scanned_and_unrolled_stacks_give_the_same_logits(remat_policy):
    scanned_config = presets.tiny(num_hidden_layers=3, remat_policy=remat_policy)
    unrolled_config = scanned_config.replace(scan_layers=False)
    params = model.init_params(scanned_config, jax.random.key(1))
    unrolled_params = model.unstack_layers(params, scanned_config.num_hidden_layers)
    assert "layers_2" in unrolled_params["temporal"] and "layers" not in unrolled_params["temporal"]
    batch = random_inputs(scanned_config, 2, 12)
    scanned_logits, _ = model.forward(scanned_config, params, *batch)
    unrolled_logits, _ = model.forward(unrolled_config, unrolled_params, *batch)
    assert max_diff(scanned_logits, unrolled_logits) < 1e-5
    restacked = model.stack_layers(unrolled_params)
    jax.tree.map(np.testing.assert_array_equal, restacked, params)


def test_unrolled_init_creates_one_param_group_per_layer():
    config = presets.tiny(num_hidden_layers=3, scan_layers=False)
    params = model.init_params(config, jax.random.key(0))
    assert sorted(k for k in params["temporal"] if k.startswith("layers")) == ["layers_0", "layers_1", "layers_2"]
    assert params["temporal"]["layers_0"]["attn"]["q_kernel"].shape == (64, 4, 16)


@pytest.mark.slow
def test_remat_policies_do_not_change_gradients():
    config = presets.tiny()
    params = model.init_params(config, jax.random.key(2))
    batch = random_inputs(config, 2, 6)

    def loss(cfg, p):
        logits, _ = model.forward(cfg, p, *batch)
        return jnp.mean(jax.nn.logsumexp(logits, axis=-1))

    grads = {
        policy: jax.grad(functools.partial(loss, config.replace(remat_policy=policy)))(params)
        for policy in ("none", "full", "dots")
    }
    for policy in ("full", "dots"):
        differences = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), grads["none"], grads[policy])
        assert max(jax.tree.leaves(differences)) < 1e-6, policy


def test_cache_rows_are_independent_sessions():
    """Rows at different lengths attend only to their own past: a row's logits do not depend on the others."""
    config = presets.tiny()
    params = model.init_params(config, jax.random.key(3))
    text, speak, listen = random_inputs(config, 2, 7)
    cache = model.init_cache(config, batch_size=2, max_frames=8)
    cache["length"] = jnp.array([0, 3], jnp.int32)  # row 1 continues after 3 (zero) frames
    _, _, cache = model.forward_cached(config, params, cache, text[:, :4], speak[:, :4], listen[:, :4])
    np.testing.assert_array_equal(cache["length"], [4, 7])
    alone_cache = model.init_cache(config, batch_size=1, max_frames=8)
    alone_logits, _, _ = model.forward_cached(config, params, alone_cache, text[:1, :4], speak[:1, :4], listen[:1, :4])
    full_logits, _ = model.forward(config, params, text[:1, :4], speak[:1, :4], listen[:1, :4])
    assert max_diff(alone_logits, full_logits) < 1e-5


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_compute_stays_close_to_float32(dtype):
    config = presets.tiny()
    params = model.init_params(config, jax.random.key(4))
    batch = random_inputs(config, 2, 8)
    reference, _ = model.forward(config, params, *batch)
    low_config = config.replace(dtype=dtype, param_dtype=dtype)
    low_params = jax.tree.map(lambda x: x.astype(dtype), params)
    logits, hidden = model.forward(low_config, low_params, *batch)
    assert hidden.dtype == jnp.dtype(dtype) and logits.dtype == jnp.float32
    assert low_params["temporal"]["layers"]["attn"]["q_kernel"].dtype == jnp.dtype(dtype)
    scale = float(jnp.max(jnp.abs(reference)))
    assert max_diff(logits, reference) < 0.05 * scale


def test_param_dtype_sets_every_param_dtype():
    config = presets.tiny(param_dtype="bfloat16")
    dtypes = {leaf.dtype for leaf in jax.tree.leaves(model.abstract_params(config))}
    assert dtypes == {jnp.dtype("bfloat16")}


def test_every_param_has_logical_axis_names():
    config = presets.tiny(
        depth_per_position_mlp=False,
        depth_swiglu=False,
        depth_rmsnorm=False,
        depth_bias=True,
        mlp_bias=True,
        attention_bias=True,
        disable_att_o_bias=False,
    )
    boxed = model.abstract_params(config, boxed=True)
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: hasattr(x, "names"))
    assert leaves and all(hasattr(leaf, "names") and len(leaf.names) == leaf.value.ndim for leaf in leaves)
    named = {name for leaf in leaves for name in leaf.names if name is not None}
    assert named <= {
        "vocab",
        "embed",
        "heads",
        "kv_heads",
        "head_dim",
        "mlp",
        "layers",
        "audio_vocab",
        "codebook",
        "depth_embed",
        "depth_heads",
        "depth_mlp",
    }


@pytest.mark.slow
@pytest.mark.parametrize("chunk", [4, 5, 16])
def test_chunked_attention_gives_the_dense_logits_and_gradients(chunk):
    """Blocks of `chunk` queries (the last one shorter where 16 frames do not divide) attend only to their
    keys so far and are rematerialised: the same numbers as the dense pass, up to float32 summation order."""
    config = presets.tiny(num_hidden_layers=2)
    chunked = config.replace(attention_chunk=chunk)
    params = model.init_params(config, jax.random.key(4))
    batch = random_inputs(config, 2, 16, seed=4)

    def loss(cfg, p):
        logits, hidden = model.forward(cfg, p, *batch)
        return jnp.mean(jax.nn.logsumexp(logits, axis=-1)) + jnp.mean(hidden**2)

    dense_logits, _ = model.forward(config, params, *batch)
    chunked_logits, _ = model.forward(chunked, params, *batch)
    assert max_diff(dense_logits, chunked_logits) < 1e-5
    dense_grads = jax.grad(functools.partial(loss, config))(params)
    chunked_grads = jax.grad(functools.partial(loss, chunked))(params)
    for (path, want), got in zip(jax.tree_util.tree_leaves_with_path(dense_grads), jax.tree.leaves(chunked_grads)):
        scale = float(jnp.max(jnp.abs(want))) or 1.0
        assert float(jnp.max(jnp.abs(got - want))) <= 1e-5 * scale, jax.tree_util.keystr(path)


def test_chunked_attention_matches_the_released_logits(golden):
    config, params, reference = golden
    logits, hidden = model.forward(config.replace(attention_chunk=3), params, *inputs(reference))
    assert max_diff(logits, reference["text_logits"]) < TOLERANCE
    assert max_diff(hidden, reference["hidden_states"]) < TOLERANCE


def test_attention_chunk_and_scan_unroll_are_checked():
    with pytest.raises(flm_config.ConfigError, match="attention_chunk"):
        presets.tiny(attention_chunk=-1)
    with pytest.raises(flm_config.ConfigError, match="scan_unroll must be a positive divisor of num_hidden_layers"):
        presets.tiny(num_hidden_layers=3, scan_unroll=2)


def test_unrolling_the_layer_loop_changes_no_number():
    config = presets.tiny(num_hidden_layers=4)
    params = model.init_params(config, jax.random.key(5))
    batch = random_inputs(config, 2, 6, seed=5)
    logits, _ = model.forward(config, params, *batch)
    unrolled, _ = model.forward(config.replace(scan_unroll=2), params, *batch)
    assert max_diff(logits, unrolled) < 1e-6
