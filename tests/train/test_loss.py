"""flmjax.train.loss: the loss matches a numpy reference, its weights and masks act as specified, micro-batches
add up exactly to the full batch, and a sharded loss equals the single-device one."""

import functools

import jax
import ml_collections
import numpy as np
import pytest

from flmjax import model, presets
from flmjax.sharding import activation_rules, batch_sharding, make_mesh, param_shardings
from flmjax.train import loss as loss_lib
from flmjax.train.loss import LossConfig, LossConfigError

CONFIG = presets.tiny()
C = CONFIG.aud_channel
WAIT, EMP = CONFIG.text_wait_id, CONFIG.aud_emp_id

model_logits = jax.jit(loss_lib.model_logits, static_argnums=0)
loss_full = jax.jit(loss_lib.loss_and_metrics_full, static_argnums=(0, 3))
sums_from_logits = jax.jit(loss_lib.metric_sums_from_logits, static_argnums=(0, 4))
normalizers_of = jax.jit(loss_lib.loss_normalizers, static_argnums=(0, 2))
finalize = jax.jit(loss_lib.finalize_metrics)
loss_from_sums = jax.jit(loss_lib.loss_from_sums)


def random_batch(seed: int, batch: int = 4, frames: int = 8) -> dict[str, np.ndarray]:
    """Valid ids; about half the text targets are <wait>, a fifth of the audio targets aud_emp; masks vary."""
    rng = np.random.default_rng(seed)
    words = rng.integers(4, CONFIG.vocab_size, (batch, frames))
    codes = lambda: rng.integers(0, 2048, (batch, frames, C))  # noqa: E731
    return {
        "text_ids": np.where(rng.random((batch, frames)) < 0.5, WAIT, words).astype(np.int32),
        "speak_ids": codes().astype(np.int32),
        "listen_ids": codes().astype(np.int32),
        "text_targets": np.where(
            rng.random((batch, frames)) < 0.5, WAIT, rng.integers(4, CONFIG.vocab_size, (batch, frames))
        ).astype(np.int32),
        "audio_targets": np.where(rng.random((batch, frames, C)) < 0.2, EMP, codes()).astype(np.int32),
        "text_mask": rng.random((batch, frames)) < 0.75,
        "audio_mask": rng.random((batch, frames, C)) < 0.75,
        "dropped_tokens": np.zeros((batch,), np.int32),
    }


@pytest.fixture(scope="module")
def params():
    return jax.jit(model.init_params, static_argnums=0)(CONFIG, jax.random.key(0))  # jit: 3x faster than eager


@pytest.fixture(scope="module")
def batch():
    return random_batch(1)


@pytest.fixture(scope="module")
def logits(params, batch):
    text_logits, audio_logits = model_logits(CONFIG, params, batch)
    return np.asarray(text_logits, np.float64), np.asarray(audio_logits, np.float64)


# ---------------------------------------------------------------------- numpy reference
def np_cross_entropy(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    return -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]


def np_text_loss(text_logits, batch, wait_weight=0.5):
    w = batch["text_mask"] * np.where(batch["text_targets"] == WAIT, wait_weight, 1.0)
    return (w * np_cross_entropy(text_logits, batch["text_targets"])).sum() / w.sum()


def np_audio_mask(batch, mask_aud_emp=True):
    return batch["audio_mask"] & ((batch["audio_targets"] != EMP) if mask_aud_emp else True)


def np_codebook_losses(audio_logits, batch):
    m = np_audio_mask(batch)
    ce = np_cross_entropy(audio_logits, batch["audio_targets"])
    return (m * ce).sum((0, 1)) / m.sum((0, 1))


def np_loss(text_logits, audio_logits, batch, cfg=None):
    cfg = LossConfig() if cfg is None else cfg
    cw = np.asarray(cfg.codebook_weights) / sum(cfg.codebook_weights)
    return (
        cfg.text_weight * np_text_loss(text_logits, batch, cfg.wait_weight)
        + cfg.audio_weight * (cw * np_codebook_losses(audio_logits, batch)).sum()
    )


def loss_of_sums(text_logits, audio_logits, batch, cfg):
    """The loss of a batch with its own normalizers, computed from given logits."""
    sums = sums_from_logits(CONFIG, np.float32(text_logits), np.float32(audio_logits), batch, cfg)
    return float(loss_from_sums(sums, normalizers_of(CONFIG, batch, cfg)))


# ---------------------------------------------------------------------- the formula
def test_text_loss_is_the_wait_weighted_cross_entropy_of_the_text_logits(params, batch, logits):
    _, metrics = loss_full(CONFIG, params, batch, LossConfig())
    np.testing.assert_allclose(float(metrics["text_loss"]), np_text_loss(logits[0], batch), rtol=1e-5)


def test_per_codebook_losses_are_the_masked_cross_entropies_of_the_depth_logits(params, batch, logits):
    _, metrics = loss_full(CONFIG, params, batch, LossConfig())
    got = [float(metrics[f"audio_loss_c{c}"]) for c in range(C)]
    np.testing.assert_allclose(got, np_codebook_losses(logits[1], batch), rtol=1e-5)


def test_loss_is_text_plus_codebook_weighted_audio_loss(params, batch, logits):
    loss, metrics = loss_full(CONFIG, params, batch, LossConfig())
    np.testing.assert_allclose(float(loss), np_loss(*logits, batch), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["loss"]), float(loss), rtol=1e-6)


def test_text_and_audio_weights_scale_their_terms(batch, logits):
    cfg = LossConfig(text_weight=2.0, audio_weight=0.25)
    np.testing.assert_allclose(loss_of_sums(*logits, batch, cfg), np_loss(*logits, batch, cfg), rtol=1e-5)


def test_wait_weight_changes_the_text_loss_as_computed_by_hand(batch, logits):
    cfgs = [LossConfig(wait_weight=w, audio_weight=0.0) for w in (0.0, 0.5, 1.0)]
    got = [loss_of_sums(*logits, batch, cfg) for cfg in cfgs]
    want = [np_text_loss(logits[0], batch, cfg.wait_weight) for cfg in cfgs]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert len({round(x, 4) for x in got}) == 3


def test_wait_weight_scales_the_text_normalizer(batch):
    normalizers = normalizers_of(CONFIG, batch, LossConfig(wait_weight=0.5))
    mask, wait = batch["text_mask"], batch["text_targets"] == WAIT
    assert float(normalizers["text"]) == pytest.approx((mask & ~wait).sum() + 0.5 * (mask & wait).sum())


def test_targets_at_masked_positions_do_not_affect_the_loss(params, batch):
    rng = np.random.default_rng(7)
    changed = dict(batch)
    noise = rng.integers(4, CONFIG.vocab_size, batch["text_targets"].shape)
    changed["text_targets"] = np.where(batch["text_mask"], batch["text_targets"], noise).astype(np.int32)
    # Masked audio targets of codebooks 0..6 still feed the depth model as its teacher-forced prefix; those of
    # the last codebook, and of frames whose codebooks are all masked, feed nothing.
    audio_mask = batch["audio_mask"].copy()
    audio_mask[0, 2] = False
    changed["audio_mask"] = audio_mask
    free = ~audio_mask & (np.arange(C) == C - 1) | ~audio_mask.any(-1, keepdims=True)
    codes = rng.integers(0, 2048, batch["audio_targets"].shape)
    changed["audio_targets"] = np.where(free, codes, batch["audio_targets"]).astype(np.int32)
    assert (changed["text_targets"] != batch["text_targets"]).any()
    assert (changed["audio_targets"] != batch["audio_targets"]).any()
    reference = dict(batch, audio_mask=audio_mask)
    assert float(loss_full(CONFIG, params, changed, LossConfig())[0]) == float(
        loss_full(CONFIG, params, reference, LossConfig())[0]
    )


def test_aud_emp_targets_are_masked_out(batch):
    emp = batch["audio_targets"] == EMP
    assert (emp & batch["audio_mask"]).any()
    masked = normalizers_of(CONFIG, batch, LossConfig())
    kept = normalizers_of(CONFIG, batch, LossConfig(mask_aud_emp=False))
    for c in range(C):
        assert float(masked[f"audio_c{c}"]) == (batch["audio_mask"][..., c] & ~emp[..., c]).sum()
        assert float(kept[f"audio_c{c}"]) == batch["audio_mask"][..., c].sum()


def test_all_codebook_weight_on_codebook_0_makes_audio_loss_the_codebook_0_loss(batch, logits):
    cfg = LossConfig(codebook_weights=(3.0,) + (0.0,) * 7)
    sums = sums_from_logits(CONFIG, np.float32(logits[0]), np.float32(logits[1]), batch, cfg)
    metrics = finalize(sums)
    assert float(metrics["audio_loss"]) == pytest.approx(float(metrics["audio_loss_c0"]), rel=1e-6)
    assert float(metrics["audio_loss_c0"]) != pytest.approx(float(metrics["audio_loss_c1"]), rel=1e-3)


def test_accuracies_match_numpy_and_lie_in_the_unit_interval(batch, logits):
    text_logits, audio_logits = logits
    rng = np.random.default_rng(3)
    # Make about half of the targets the argmax, so that accuracies are neither 0 nor 1.
    hit = rng.random(batch["text_targets"].shape) < 0.5
    text_targets = np.where(hit, text_logits.argmax(-1), batch["text_targets"]).astype(np.int32)
    hit = rng.random(batch["audio_targets"].shape) < 0.5
    audio_targets = np.where(hit, audio_logits.argmax(-1), batch["audio_targets"]).astype(np.int32)
    b = dict(batch, text_targets=text_targets, audio_targets=audio_targets)
    metrics = finalize(sums_from_logits(CONFIG, np.float32(text_logits), np.float32(audio_logits), b, LossConfig()))
    text_hit = text_logits.argmax(-1) == text_targets
    mask, words = b["text_mask"], b["text_mask"] & (text_targets != WAIT)
    want = {
        "text_accuracy": (text_hit & mask).sum() / mask.sum(),
        "text_accuracy_non_wait": (text_hit & words).sum() / words.sum(),
    }
    audio_m = np_audio_mask(b)
    audio_hit = (audio_logits.argmax(-1) == audio_targets) & audio_m
    want.update({f"audio_accuracy_c{c}": audio_hit[..., c].sum() / audio_m[..., c].sum() for c in range(C)})
    for name, value in want.items():
        assert 0.0 < value < 1.0, name
        assert float(metrics[name]) == pytest.approx(value, rel=1e-6), name
    assert float(metrics["text_tokens"]) == mask.sum()
    assert float(metrics["audio_tokens"]) == audio_m.sum()


def test_nothing_counted_gives_zero_not_nan(params, batch):
    empty = dict(batch, text_mask=np.zeros_like(batch["text_mask"]), audio_mask=np.zeros_like(batch["audio_mask"]))
    loss, metrics = loss_full(CONFIG, params, empty, LossConfig())
    assert float(loss) == 0.0
    assert all(float(v) == 0.0 for v in metrics.values())


# ---------------------------------------------------------------------- gradients and accumulation
@functools.partial(jax.jit, static_argnums=(0, 3))
def loss_and_grad(config, params, batch, loss_config, normalizers):
    return jax.value_and_grad(loss_lib.loss_and_metric_sums, argnums=1, has_aux=True)(
        config, params, batch, loss_config, normalizers
    )


@pytest.fixture(scope="module")
def varied_batch():
    """8 examples whose masks differ a lot: one without text targets, one without audio, one nearly empty."""
    b = random_batch(5, batch=8)
    b["text_mask"][1] = False
    b["audio_mask"][2] = False
    b["text_mask"][6, 1:] = False
    b["audio_mask"][6, 2:] = False
    b["text_targets"][5] = WAIT
    return b


@pytest.fixture(scope="module")
def full_batch_result(params, varied_batch):
    normalizers = normalizers_of(CONFIG, varied_batch, LossConfig())
    return loss_and_grad(CONFIG, params, varied_batch, LossConfig(), normalizers)


def test_loss_is_differentiable_with_finite_nonzero_gradients_in_every_group(full_batch_result):
    (loss, _), grads = full_batch_result
    assert np.isfinite(float(loss))
    for group in ("embedder", "temporal", "text_head", "depth"):
        leaves = jax.tree.leaves(grads[group])
        assert all(np.isfinite(np.asarray(g)).all() for g in leaves), group
        assert sum(np.abs(np.asarray(g)).sum() for g in leaves) > 0, group


def test_micro_batch_losses_and_grads_add_up_to_the_full_batch(params, varied_batch, full_batch_result):
    (full_loss, full_sums), full_grads = full_batch_result
    normalizers = normalizers_of(CONFIG, varied_batch, LossConfig())
    parts = [jax.tree.map(lambda x, i=i: x[4 * i : 4 * i + 4], varied_batch) for i in range(2)]
    results = [loss_and_grad(CONFIG, params, part, LossConfig(), normalizers) for part in parts]
    loss = sum(float(r[0][0]) for r in results)
    add = lambda a, b: np.asarray(a) + np.asarray(b)  # noqa: E731 (numpy: eager jnp ops would each compile)
    grads = jax.tree.map(add, results[0][1], results[1][1])
    sums = jax.tree.map(add, results[0][0][1], results[1][0][1])
    assert loss == pytest.approx(float(full_loss), rel=1e-6)
    # Relative to each gradient's norm: the two sums only differ by float32 reassociation.
    for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(full_grads)):
        got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
        error = np.linalg.norm(got - want) / np.linalg.norm(want)
        assert error <= 1e-6, (jax.tree_util.keystr(path), error)
    metrics, full_metrics = finalize(sums), finalize(full_sums)
    for name in full_metrics:
        assert float(metrics[name]) == pytest.approx(float(full_metrics[name]), rel=1e-6, abs=1e-7), name
    assert float(metrics["loss"]) == pytest.approx(float(full_loss), rel=1e-6)


def test_micro_batch_means_with_their_own_normalizers_would_not_add_up(varied_batch):
    """Why the normalizers come from outside: averaging per-micro-batch means weighs the examples wrongly."""
    rng = np.random.default_rng(11)
    sharpness = np.array([10.0] * 4 + [1.0] * 4)  # the first half's losses are much larger than the second's
    text_logits = np.float32(sharpness[:, None, None] * rng.standard_normal((8, 8, CONFIG.vocab_size)))
    audio_logits = np.float32(sharpness[:, None, None, None] * rng.standard_normal((8, 8, C, CONFIG.aud_vocab_size)))

    def loss(rows, normalizer_rows):
        part = jax.tree.map(lambda x: x[rows], varied_batch)
        sums = sums_from_logits(CONFIG, text_logits[rows], audio_logits[rows], part, LossConfig())
        normalizers = normalizers_of(CONFIG, jax.tree.map(lambda x: x[normalizer_rows], varied_batch), LossConfig())
        return float(loss_from_sums(sums, normalizers))

    halves, everything = (slice(0, 4), slice(4, 8)), slice(0, 8)
    full = loss(everything, everything)
    assert sum(loss(h, everything) for h in halves) == pytest.approx(full, rel=1e-6)
    assert sum(loss(h, h) for h in halves) / 2 != pytest.approx(full, rel=1e-3)


# ---------------------------------------------------------------------- sharding
def test_sharded_loss_matches_the_single_device_loss(params, batch):
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    sharded_params = jax.device_put(params, param_shardings(CONFIG, mesh))
    batch_shardings = {k: batch_sharding(mesh, ndim=np.ndim(v)) for k, v in batch.items()}
    sharded_batch = jax.device_put(batch, batch_shardings)
    assert len(sharded_batch["audio_targets"].sharding.device_set) == 8
    with activation_rules(mesh):
        sharded = jax.jit(
            functools.partial(loss_lib.loss_and_metrics_full, CONFIG, loss_config=LossConfig()),
            in_shardings=(param_shardings(CONFIG, mesh), batch_shardings),
        )
        loss, metrics = sharded(sharded_params, sharded_batch)
    want_loss, want_metrics = loss_full(CONFIG, params, batch, LossConfig())
    assert float(loss) == pytest.approx(float(want_loss), rel=1e-5)
    for name in want_metrics:
        assert float(metrics[name]) == pytest.approx(float(want_metrics[name]), rel=1e-5, abs=1e-6), name


# ---------------------------------------------------------------------- config
def test_codebook_weights_must_match_the_model_channels(batch):
    with pytest.raises(LossConfigError, match="aud_channel=8"):
        normalizers_of(CONFIG, batch, LossConfig(codebook_weights=(1.0,) * 4))


@pytest.mark.parametrize("weights, message", [((1.0, -0.1) + (0.1,) * 6, "non-negative"), ((0.0,) * 8, "all zero")])
def test_codebook_weights_are_non_negative_and_not_all_zero(weights, message):
    with pytest.raises(LossConfigError, match=message):
        LossConfig(codebook_weights=weights)


def test_negative_wait_weight_is_an_error():
    with pytest.raises(LossConfigError, match="wait_weight"):
        LossConfig(wait_weight=-1.0)


def test_from_config_reads_a_config_dict_and_keeps_defaults():
    cfg = LossConfig.from_config(ml_collections.ConfigDict({"wait_weight": 1, "codebook_weights": [100] + [1] * 7}))
    assert cfg == LossConfig(wait_weight=1.0, codebook_weights=(100.0,) + (1.0,) * 7)
    assert cfg.codebook_weights == (100.0,) + (1.0,) * 7 and cfg.mask_aud_emp
    hash(cfg)


def test_from_config_rejects_unknown_keys_naming_the_valid_ones():
    with pytest.raises(LossConfigError, match="codebook_weight.*valid keys.*codebook_weights"):
        LossConfig.from_config({"codebook_weight": (1.0,) * 8})


# ---------------------------------------------------------------------- logits in chunks
@pytest.mark.slow
@pytest.mark.parametrize("chunk", [3, 8])
def test_chunked_logits_give_the_same_loss_metrics_and_gradients(params, varied_batch, full_batch_result, chunk):
    """chunk_frames only changes memory: the loss, every metric sum and every gradient equal the whole-sequence
    ones up to float32 summation order (8 frames in chunks of 3: a shorter last chunk; of 8: no chunking)."""
    (full_loss, full_sums), full_grads = full_batch_result
    config = LossConfig(chunk_frames=chunk)
    normalizers = normalizers_of(CONFIG, varied_batch, config)
    (loss, sums), grads = loss_and_grad(CONFIG, params, varied_batch, config, normalizers)
    assert float(loss) == pytest.approx(float(full_loss), rel=1e-6)
    for name in full_sums:
        np.testing.assert_allclose(np.asarray(sums[name]), np.asarray(full_sums[name]), rtol=1e-6, atol=1e-6)
    for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(full_grads)):
        got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
        assert np.linalg.norm(got - want) <= 1e-6 * np.linalg.norm(want), jax.tree_util.keystr(path)


def test_negative_chunk_frames_is_an_error():
    with pytest.raises(LossConfigError, match="chunk_frames"):
        LossConfig(chunk_frames=-1)
