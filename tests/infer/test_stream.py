"""Streaming inference against the released generator's 60 golden steps, and its own invariants."""

import dataclasses

import jax
import numpy as np
import pytest

from flmjax import model, presets
from flmjax.infer import (
    ContextLimitError,
    SamplingConfig,
    StreamError,
    init_stream,
    reset_slots,
    stream_step,
    stream_step_details,
)
from flmjax.infer import stream as stream_lib
from flmjax.infer.stream_state import codebook_size
from tests.conftest import golden_model

TOLERANCE = 1e-4
FIELDS = (
    "model_inputs",
    "text_token",
    "audio_tokens",
    "text_logits",
    "hidden",
    "depth_logits",
    "out_frame",
    "out_valid",
)


@pytest.fixture
def golden(golden_dir):
    """(config, params, stream.npz) of one golden checkpoint."""
    return (*golden_model(golden_dir), dict(np.load(golden_dir / "stream.npz")))


def run_details(params, state, listen_frames, rng=None):
    """Steps a stream over listen_frames [steps, B, C]; returns the final state and each field stacked
    [steps, B, ...]."""
    rng = jax.random.key(0) if rng is None else rng
    record = {name: [] for name in FIELDS}
    for s, listen in enumerate(listen_frames):
        state, outputs = stream_step_details(params, state, listen, jax.random.fold_in(rng, s))
        for name in FIELDS:
            record[name].append(np.asarray(getattr(outputs, name)))
    return state, {name: np.stack(values) for name, values in record.items()}


@pytest.mark.parametrize("mode", ["greedy", "greedy_nopen"])
def test_stream_reproduces_released_generator(golden, mode):
    config, params, reference = golden
    steps = reference["listen"].shape[-1]
    state = init_stream(
        config,
        params,
        batch_size=1,
        max_frames=steps,
        sampling=SamplingConfig.greedy(repetition_penalty=mode == "greedy"),
    )
    listen_frames = np.moveaxis(reference["listen"], -1, 0)  # [steps, 1, C]
    _, got = run_details(params, state, listen_frames)
    expected = {
        name: reference[f"{mode}/{name}"]
        for name in (
            "model_inputs",
            "text_tokens",
            "audio_tokens",
            "out_tokens",
            "out_valid",
            "text_logits",
            "hidden",
            "depth_logits_first4",
        )
    }
    np.testing.assert_array_equal(got["model_inputs"][:, 0], expected["model_inputs"])
    np.testing.assert_array_equal(got["text_token"][:, 0], expected["text_tokens"])
    np.testing.assert_array_equal(got["audio_tokens"][:, 0], expected["audio_tokens"])
    np.testing.assert_array_equal(got["out_valid"][:, 0], expected["out_valid"])
    valid = expected["out_valid"]
    np.testing.assert_array_equal(got["out_frame"][valid, 0], expected["out_tokens"][valid])
    np.testing.assert_allclose(got["text_logits"][:, 0], expected["text_logits"], rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(got["hidden"][:, 0], expected["hidden"], rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(got["depth_logits"][:4, 0], expected["depth_logits_first4"], rtol=0, atol=TOLERANCE)


# ---------------------------------------------------------------------- batching and reset (tiny random model)
@pytest.fixture(scope="module")
def tiny():
    config = presets.preset("tiny")
    return config, model.init_params(config, jax.random.key(1))


def user_streams(config, sessions: int, steps: int, seed: int = 0) -> np.ndarray:
    """[sessions, steps, C] random user codes."""
    return np.random.default_rng(seed).integers(0, codebook_size(config), (sessions, steps, config.aud_channel))


def run_frames(params, state, listen_frames, keys):
    """stream_step over listen_frames [steps, B, C] with per-slot keys [steps, B] -> (state, frames, valid)."""
    frames, valid = [], []
    for listen, step_keys in zip(listen_frames, keys):
        state, out_frame, out_valid = stream_step(params, state, listen, step_keys)
        frames.append(np.asarray(out_frame))
        valid.append(np.asarray(out_valid))
    return state, np.stack(frames), np.stack(valid)


def session_keys(steps: int, sessions: int, seed: int = 0):
    """[steps, sessions] keys: session i's key at step s does not depend on which slot or batch it runs in."""
    base = jax.random.split(jax.random.key(seed), sessions)
    return [jax.vmap(jax.random.fold_in, (0, None))(base, s) for s in range(steps)]


@pytest.mark.parametrize("sampling", [SamplingConfig.greedy(), SamplingConfig()], ids=["greedy", "sampled"])
def test_batch_of_sessions_equals_each_alone(tiny, sampling):
    config, params = tiny
    sessions, steps = 4, 12
    users = user_streams(config, sessions, steps)
    keys = session_keys(steps, sessions)
    state = init_stream(config, params, batch_size=sessions, max_frames=steps, sampling=sampling)
    _, frames, valid = run_frames(params, state, np.moveaxis(users, 0, 1), keys)
    for i in range(sessions):
        alone = init_stream(config, params, batch_size=1, max_frames=steps, sampling=sampling)
        _, alone_frames, alone_valid = run_frames(params, alone, users[i][:, None], [k[i : i + 1] for k in keys])
        np.testing.assert_array_equal(frames[:, i], alone_frames[:, 0])
        np.testing.assert_array_equal(valid[:, i], alone_valid[:, 0])
    assert not valid[0].any() and valid[1:].all()
    # Different users lead to different sessions: otherwise the comparison above proves little.
    assert len({frames[:, i].tobytes() for i in range(sessions)}) == sessions


def test_reset_slot_restarts_that_session_only(tiny):
    config, params = tiny
    sessions, before, after = 4, 6, 8
    users = user_streams(config, sessions, before + after, seed=1)
    fresh_user = user_streams(config, 1, after, seed=2)[0]
    sampling = SamplingConfig.greedy()
    keys = session_keys(before + after, sessions)

    state = init_stream(config, params, batch_size=sessions, max_frames=before + after, sampling=sampling)
    state, _, _ = run_frames(params, state, np.moveaxis(users[:, :before], 0, 1), keys[:before])
    state = reset_slots(state, np.array([False, False, True, False]))
    mixed = users[:, before:].copy()
    mixed[2] = fresh_user
    _, frames, valid = run_frames(params, state, np.moveaxis(mixed, 0, 1), keys[before:])

    # Slots 0, 1, 3 continue as if nothing happened.
    uninterrupted = init_stream(config, params, batch_size=sessions, max_frames=before + after, sampling=sampling)
    _, all_frames, _ = run_frames(params, uninterrupted, np.moveaxis(users, 0, 1), keys)
    for i in (0, 1, 3):
        np.testing.assert_array_equal(frames[:, i], all_frames[before:, i])
    # Slot 2 is a fresh session on the new user's stream.
    alone = init_stream(config, params, batch_size=1, max_frames=after, sampling=sampling)
    _, alone_frames, alone_valid = run_frames(params, alone, fresh_user[:, None], [k[2:3] for k in keys[before:]])
    np.testing.assert_array_equal(valid[:, 2], alone_valid[:, 0])
    assert not valid[0, 2] and valid[0, [0, 1, 3]].all()
    np.testing.assert_array_equal(frames[1:, 2], alone_frames[1:, 0])


def test_context_limit_raises_and_keeps_the_state(tiny):
    config, params = tiny
    state = init_stream(config, params, batch_size=2, max_frames=3, sampling=SamplingConfig.greedy())
    users = user_streams(config, 2, 4)
    for s in range(3):
        state, _, _ = stream_step(params, state, users[:, s], jax.random.key(s))
    with pytest.raises(ContextLimitError, match=r"slot\(s\) \[0, 1\] reached the context limit of 3 frames"):
        stream_step(params, state, users[:, 3], jax.random.key(3))
    # The state passed in is intact: resetting one slot lets it go on.
    state = reset_slots(state, np.array([True, False]))
    with pytest.raises(ContextLimitError, match=r"slot\(s\) \[1\]"):
        stream_step(params, state, users[:, 3], jax.random.key(3))


@pytest.mark.slow
def test_sliding_window_attends_to_the_last_max_frames():
    """Past its capacity a sliding stream attends to the last `window` frames, at their original positions.

    With one temporal layer a frame's cached key and value depend on that frame alone, and RoPE scores depend
    on position differences only, so step s must equal a plain causal pass over frames s-window+1 .. s.
    """
    config = dataclasses.replace(presets.preset("tiny"), num_hidden_layers=1)
    params = model.init_params(config, jax.random.key(2))
    window, steps = 4, 9
    users = user_streams(config, 1, steps, seed=3)
    sliding = init_stream(
        config, params, batch_size=1, max_frames=window, sampling=SamplingConfig.greedy(), sliding_window=True
    )
    _, got = run_details(params, sliding, users[0][:, None])
    full = init_stream(config, params, batch_size=1, max_frames=steps, sampling=SamplingConfig.greedy())
    _, reference = run_details(params, full, users[0][:, None])
    np.testing.assert_allclose(got["text_logits"][:window], reference["text_logits"][:window], atol=1e-5)
    inputs = got["model_inputs"][:, 0]  # [steps, 17]
    for s in range(window, steps):
        frames = inputs[None, s - window + 1 : s + 1]
        logits, _ = model.forward(config, params, frames[..., 0], frames[..., 1:9], frames[..., 9:])
        np.testing.assert_allclose(got["text_logits"][s, 0], np.asarray(logits)[0, -1], atol=1e-5)
    assert np.abs(got["text_logits"][-1] - reference["text_logits"][-1]).max() > 1e-3  # it did forget


def test_bad_listen_codes_are_an_error(tiny):
    config, params = tiny
    state = init_stream(config, params, batch_size=2, max_frames=4)
    codes = user_streams(config, 2, 1)[:, 0]
    codes[1, 3] = codebook_size(config)
    with pytest.raises(StreamError, match=r"slot\(s\) \[1\] are outside 0..2047"):
        stream_step(params, state, codes, jax.random.key(0))
    codes[1, 3] = -1
    with pytest.raises(StreamError, match="outside"):
        stream_step(params, state, codes, jax.random.key(0))
    with pytest.raises(StreamError, match=r"shape \[batch, codebooks\] = \[2, 8\]"):
        stream_step(params, state, codes[:1], jax.random.key(0))
    with pytest.raises(StreamError, match="integers"):
        stream_step(params, state, codes.astype(np.float32), jax.random.key(0))


def test_mismatched_params_are_an_error(tiny):
    config, params = tiny
    other = dataclasses.replace(config, vocab_size=config.vocab_size + 1)
    with pytest.raises(StreamError, match=r"text_head.*expected .*found"):
        init_stream(other, params, batch_size=1, max_frames=4)


def test_one_compile_per_batch_size(tiny):
    config, params = tiny
    before = stream_lib._step_frames._cache_size()
    for batch in (5, 5, 6):  # sizes no other test uses
        state = init_stream(config, params, batch_size=batch, max_frames=4)
        for s in range(2):
            state, _, _ = stream_step(params, state, user_streams(config, batch, 1, seed=s)[:, 0], jax.random.key(s))
        state = reset_slots(state, np.zeros(batch, bool))
        state, _, _ = stream_step(params, state, user_streams(config, batch, 1)[:, 0], jax.random.key(9))
    assert stream_lib._step_frames._cache_size() - before == 2


# ---------------------------------------------------------------------- sharded streams
MESHES = [
    ({"data": 2, "fsdp": 2, "tensor": 2}, 8),
    ({"data": 4, "tensor": 2}, 8),
    ({"data": 1, "tensor": 2}, 2),
    ({"data": 8}, 8),
]  # (mesh, devices)


@pytest.mark.slow
@pytest.mark.parametrize("sampling", [SamplingConfig.greedy(), SamplingConfig()], ids=["greedy", "sampled"])
def test_a_sharded_stream_gives_the_single_device_tokens(tiny, sampling):
    """On every mesh the tiny model divides over (its 2 kv heads allow tensor <= 2), with a slot reset half-way:
    the same frames as on one device, and the state keeps the layout init_stream gave it."""
    from flmjax import sharding

    config, params = tiny
    sessions, steps = 4, 10
    users = np.moveaxis(user_streams(config, sessions, steps, seed=3), 0, 1)
    keys = session_keys(steps, sessions, seed=3)

    def run(mesh):
        state = init_stream(config, params, sessions, steps, sampling, mesh=mesh)
        state, first, _ = run_frames(params, state, users[:5], keys[:5])
        state = reset_slots(state, np.array([False, True, False, False]))
        state, second, valid = run_frames(params, state, users[5:], keys[5:])
        return state, np.concatenate([first, second]), valid

    _, expected, expected_valid = run(None)
    for shape, devices in MESHES:
        mesh = sharding.make_mesh(shape, jax.devices()[:devices])
        state, frames, valid = run(mesh)
        np.testing.assert_array_equal(frames, expected, err_msg=str(shape))
        np.testing.assert_array_equal(valid, expected_valid)
        split = [axis for axis in ("data", "fsdp") if shape.get(axis, 1) > 1]
        batch_axes = tuple(split) if len(split) > 1 else (split[0] if split else None)
        if sessions % (shape.get("data", 1) * shape.get("fsdp", 1)):
            batch_axes = None  # 4 slots over 8: replicated
        assert spec_of(state.cache["k"]) == spec_of(
            (None, batch_axes, None, "tensor" if shape.get("tensor", 1) > 1 else None)
        ), shape
        assert spec_of(state.text) == spec_of((batch_axes,)), shape


@pytest.mark.slow
def test_params_placed_in_the_compilers_layouts_have_its_formats_and_give_the_same_tokens(tiny):
    from flmjax import sharding
    from flmjax.infer.stream import lower_stream_step, place_stream_params

    config, params = tiny
    sessions, steps = 4, 6
    users = np.moveaxis(user_streams(config, sessions, steps, seed=5), 0, 1)
    keys = session_keys(steps, sessions, seed=5)
    mesh = sharding.make_mesh({"data": 2, "tensor": 2}, jax.devices()[:4])
    state = init_stream(config, params, sessions, steps, SamplingConfig(), mesh=mesh)
    placed = place_stream_params(params, state)
    chosen = lower_stream_step(config, mesh, sessions, steps, SamplingConfig(), auto_layouts=True).compile()
    for leaf, wanted in zip(jax.tree.leaves(placed), jax.tree.leaves(chosen.input_formats[0][0])):
        assert leaf.format == wanted
    _, frames, _ = run_frames(placed, state, users, keys)
    _, expected, _ = run_frames(params, init_stream(config, params, sessions, steps, SamplingConfig()), users, keys)
    np.testing.assert_array_equal(frames, expected)
    with pytest.raises(StreamError, match="needs a sharded stream"):
        place_stream_params(params, init_stream(config, params, sessions, steps))


def spec_of(array_or_axes) -> tuple:
    """A partition spec as a tuple without trailing Nones (P() and P(None,) mean the same)."""
    spec = list(array_or_axes.sharding.spec if hasattr(array_or_axes, "sharding") else array_or_axes)
    while spec and spec[-1] is None:
        spec.pop()
    return tuple(spec)


def test_a_batch_that_does_not_divide_over_data_is_replicated_over_it(tiny):
    from flmjax import sharding

    config, params = tiny
    users = np.moveaxis(user_streams(config, 3, 4, seed=4), 0, 1)
    keys = session_keys(4, 3, seed=4)
    state = init_stream(
        config, params, 3, 4, SamplingConfig.greedy(), mesh=sharding.make_mesh({"data": 4, "tensor": 2})
    )
    assert spec_of(state.text) == ()
    _, frames, _ = run_frames(params, state, users, keys)
    _, expected, _ = run_frames(params, init_stream(config, params, 3, 4, SamplingConfig.greedy()), users, keys)
    np.testing.assert_array_equal(frames, expected)


def test_a_model_that_does_not_divide_over_the_mesh_is_an_error_naming_the_params(tiny):
    from flmjax import sharding

    config, params = tiny
    with pytest.raises(sharding.ShardingError, match=r"kv_kernel|k_kernel.*not divisible by mesh axes \('tensor',\)"):
        init_stream(config, params, 4, 4, mesh=sharding.make_mesh({"data": 2, "tensor": 4}))


def test_each_slot_samples_with_its_own_settings(tiny):
    """reset_slots with per-slot sampling: a session gives the tokens of a stream made with its settings alone,
    whatever the other slot samples with."""
    from flmjax.infer import StreamSampling, slot_sampling

    config, params = tiny
    own = SamplingConfig(
        text=StreamSampling(temperature=0.9, top_p=0.0, top_k=7, repetition_penalty=1.3, window=20),
        audio=StreamSampling(temperature=1.1, top_p=0.8, repetition_penalty=1.1, window=10),
    )
    listen = np.random.default_rng(0).integers(0, 2048, (6, 2, config.aud_channel)).astype(np.int32)
    keys = jax.random.split(jax.random.key(3), 2)

    def run(state):
        frames = []
        for step in range(6):
            state, frame, _ = stream_step(
                params, state, listen[step], jax.vmap(jax.random.fold_in, (0, None))(keys, step)
            )
            frames.append(np.asarray(frame))
        return np.stack(frames)

    alone = run(init_stream(config, params, 2, 8, own))
    mixed = init_stream(config, params, 2, 8, SamplingConfig())
    mixed = reset_slots(mixed, np.array([True, False]), slot_sampling(mixed, [own, None]))
    together = run(mixed)
    np.testing.assert_array_equal(together[:, 0], alone[:, 0])
    default = run(init_stream(config, params, 2, 8, SamplingConfig()))
    np.testing.assert_array_equal(together[:, 1], default[:, 1])
    assert (together[:, 0] != default[:, 0]).any()  # the settings matter
    with pytest.raises(StreamError, match="windows"):
        slot_sampling(mixed, [SamplingConfig(text=StreamSampling(temperature=1.0, window=51)), None])
