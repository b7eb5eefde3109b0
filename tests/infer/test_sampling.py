"""Sampling (REFERENCE.md section 4): penalty arithmetic by hand, the samplers checked statistically."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flmjax.infer import SamplingConfig, StreamSampling, sampling

DRAWS = 20000
# Frequencies of DRAWS draws are within ~0.0035 (one std) of their probabilities; 0.015 is > 4 std, while every
# wrong rule below moves some frequency by > 0.1.
FREQUENCY_TOLERANCE = 0.015


def frequencies(logits, settings: StreamSampling, seed: int = 0) -> np.ndarray:
    logits = jnp.broadcast_to(jnp.asarray(logits, jnp.float32), (DRAWS, len(logits)))
    keys = jax.random.split(jax.random.key(seed), DRAWS)
    ids = np.asarray(jax.jit(sampling.sample, static_argnums=(1, 2))(logits, settings, True, keys))
    return np.bincount(ids, minlength=logits.shape[-1]) / DRAWS


def test_repetition_penalty_by_hand():
    logits = jnp.array([[2.0, -1.0, 0.5, -3.0, 4.0]])
    history = jnp.array([[0, 1, 1, sampling.EMPTY]])  # ids 0 and 1 seen (1 twice: penalised once)
    got = sampling.apply_repetition_penalty(logits, history, 2.0)
    np.testing.assert_allclose(got, [[1.0, -2.0, 0.5, -3.0, 4.0]])
    # An empty history (a session's first step) changes nothing; penalty 1 is off.
    empty = jnp.full((1, 4), sampling.EMPTY)
    np.testing.assert_array_equal(sampling.apply_repetition_penalty(logits, empty, 2.0), logits)
    np.testing.assert_array_equal(sampling.apply_repetition_penalty(logits, history, 1.0), logits)


def test_penalty_can_change_the_argmax():
    logits = jnp.array([[3.0, 2.0, -1.0]])
    history = jnp.array([[0, sampling.EMPTY]])
    penalised = sampling.apply_repetition_penalty(logits, history, 1.6)  # 3/1.6 = 1.875 < 2
    assert (
        int(
            sampling.sample(penalised, StreamSampling(temperature=1.0), False, jax.random.split(jax.random.key(0), 1))[
                0
            ]
        )
        == 1
    )


def test_history_ring_keeps_the_last_window_tokens():
    history = jnp.full((2, 3), sampling.EMPTY)
    for count, token in enumerate([5, 6, 7, 8]):
        history = sampling.push(history, jnp.array([token, token + 10]), jnp.array([count, count]))
    assert sorted(np.asarray(history[0]).tolist()) == [6, 7, 8]  # 5 fell out of the window
    assert sorted(np.asarray(history[1]).tolist()) == [16, 17, 18]
    seen = np.asarray(sampling.window_mask(history, 20))
    assert seen[0].nonzero()[0].tolist() == [6, 7, 8] and seen[1].nonzero()[0].tolist() == [16, 17, 18]


def test_argmax_when_not_sampling_or_temperature_zero():
    logits = jnp.array([[0.1, 0.9, 0.3], [2.0, -1.0, 1.0]])
    keys = jax.random.split(jax.random.key(0), 2)
    for do_sample, temperature in [(False, 1.0), (True, 0.0)]:
        ids = sampling.sample(logits, StreamSampling(temperature=temperature), do_sample, keys)
        np.testing.assert_array_equal(ids, [1, 0])


def test_temperature_scales_the_distribution():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    for temperature in (1.0, 0.5, 2.0):
        expected = np.exp(logits / temperature) / np.exp(logits / temperature).sum()
        got = frequencies(logits, StreamSampling(temperature=temperature, top_p=0.0))
        assert np.abs(got - expected).max() < FREQUENCY_TOLERANCE, (temperature, got, expected)


def test_top_p_keeps_tokens_while_the_mass_before_them_is_at_most_p():
    logits = np.log(np.array([0.05, 0.5, 0.15, 0.3]))  # sorted: 0.5, 0.3, 0.15, 0.05
    # Mass before: 0.5 -> 0, 0.3 -> 0.5, 0.15 -> 0.8, 0.05 -> 0.95.
    got = frequencies(logits, StreamSampling(temperature=1.0, top_p=0.7, top_k=1))  # top_k ignored
    np.testing.assert_allclose(got, [0, 0.5 / 0.8, 0, 0.3 / 0.8], atol=FREQUENCY_TOLERANCE)
    got = frequencies(logits, StreamSampling(temperature=1.0, top_p=0.85))
    np.testing.assert_allclose(got, [0, 0.5 / 0.95, 0.15 / 0.95, 0.3 / 0.95], atol=FREQUENCY_TOLERANCE)
    got = frequencies(logits, StreamSampling(temperature=1.0, top_p=0.2))  # the top token always stays
    np.testing.assert_array_equal(got, [0, 1, 0, 0])


def test_top_k_applies_only_without_top_p():
    logits = np.log(np.array([0.05, 0.5, 0.15, 0.3]))
    got = frequencies(logits, StreamSampling(temperature=1.0, top_p=0.0, top_k=2))
    np.testing.assert_allclose(got, [0, 0.5 / 0.8, 0, 0.3 / 0.8], atol=FREQUENCY_TOLERANCE)


def test_same_key_same_tokens():
    logits = jax.random.normal(jax.random.key(1), (8, 100))
    settings = StreamSampling(temperature=1.0, top_p=0.95)
    keys = jax.random.split(jax.random.key(3), 8)
    first = sampling.sample(logits, settings, True, keys)
    np.testing.assert_array_equal(first, sampling.sample(logits, settings, True, keys))
    other = sampling.sample(logits, settings, True, jax.random.split(jax.random.key(4), 8))
    assert (np.asarray(first) != np.asarray(other)).any()


def test_defaults_are_the_released_generators():
    config = SamplingConfig()
    assert config.do_sample and config.audio_penalty_codebooks == 4
    assert (config.text.temperature, config.text.top_p, config.text.repetition_penalty, config.text.window) == (
        0.01,
        0.9,
        1.03,
        50,
    )
    assert (config.audio.temperature, config.audio.top_p, config.audio.repetition_penalty, config.audio.window) == (
        0.5,
        0.9,
        1.2,
        50,
    )
    greedy = SamplingConfig.greedy()
    assert not greedy.do_sample and greedy.text.repetition_penalty == 1.03
    assert SamplingConfig.greedy(repetition_penalty=False).audio.repetition_penalty == 1.0


def test_invalid_settings_name_the_problem():
    with pytest.raises(ValueError, match="top_p must be in"):
        StreamSampling(temperature=1.0, top_p=1.5)
    with pytest.raises(ValueError, match="repetition_penalty must be > 0"):
        StreamSampling(temperature=1.0, repetition_penalty=0.0)


def test_rows_sample_each_row_with_its_own_settings():
    """SamplingRows: every row gives what sampling it alone with its StreamSampling gives (same key)."""
    logits = jax.random.normal(jax.random.key(7), (4, 300)) * 3
    keys = jax.random.split(jax.random.key(8), 4)
    settings = [
        StreamSampling(temperature=0.7, top_p=0.9),
        StreamSampling(temperature=1.3, top_p=0.0, top_k=5),
        StreamSampling(temperature=0.0),
        StreamSampling(temperature=1.0, top_p=0.0, top_k=0),
    ]
    rows = jax.tree.map(lambda *r: jnp.concatenate(r), *[sampling.SamplingRows.of(s, True, 1) for s in settings])
    for draw in range(5):
        step_keys = jax.vmap(jax.random.fold_in, (0, None))(keys, draw)
        together = np.asarray(sampling.sample(logits, rows, True, step_keys))
        for row, setting in enumerate(settings):
            alone = sampling.sample(logits[row : row + 1], setting, True, step_keys[row : row + 1])
            assert together[row] == int(alone[0]), (draw, row, setting)


def test_top_k_bisection_keeps_what_lax_top_k_keeps():
    probs = jax.nn.softmax(jax.random.normal(jax.random.key(2), (6, 500)) * 2, axis=-1)
    probs = probs.at[:, :3].set(probs[:, 3:4])  # ties at the cut are kept, as by the top_k threshold
    for k in (1, 3, 4, 10, 499):
        expected = probs >= jax.lax.top_k(probs, k)[0][:, -1:]
        got = sampling._keep_while(probs, jnp.ones_like(probs), jnp.full((6, 1), k - 1.0))
        np.testing.assert_array_equal(got, expected)


def test_penalty_window_per_row_counts_only_the_last_tokens():
    history = jnp.full((2, 4), sampling.EMPTY)
    for count, token in enumerate([1, 2, 3, 4, 5, 6]):  # the ring of 4 holds 3, 4, 5, 6
        history = sampling.push(history, jnp.array([token, token]), jnp.array([count, count]))
    seen = np.asarray(sampling.window_mask(history, 10, jnp.array([2, 4]), jnp.array([6, 6])))
    assert seen[0].nonzero()[0].tolist() == [5, 6] and seen[1].nonzero()[0].tolist() == [3, 4, 5, 6]
    logits = jnp.full((2, 10), 2.0)
    got = np.asarray(
        sampling.apply_repetition_penalty(logits, history, jnp.array([2.0, 4.0]), jnp.array([2, 4]), jnp.array([6, 6]))
    )
    np.testing.assert_allclose(got[0], [2, 2, 2, 2, 2, 1, 1, 2, 2, 2])
    np.testing.assert_allclose(got[1], [2, 2, 2, 0.5, 0.5, 0.5, 0.5, 2, 2, 2])
