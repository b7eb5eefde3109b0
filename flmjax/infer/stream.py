"""Streaming full-duplex inference: one jitted step per 80 ms frame, many sessions in one batch.

Each step reads the user's codes of the new frame and returns the model's undelayed frame of the step before
(REFERENCE.md section 1.1). At step `s` of a session:

    input   = (text[s-1], speak[s-1] as sampled (still delayed), listen rows delayed: (listen[s][0],
               listen[s-1][1..7]))                     with text[-1] = <wait>, speak[-1] = listen[-1] = aud_pad
    sampled = text[s] (text head), speak[s] (8 depth steps, one compiled loop)
    output  = (text[s-1], speak[s-1][0], speak[s][1..7])  valid from s = 1 (the acoustic codes of step 0 are
              never emitted, as in the released generator)

Everything a session needs lives in `StreamState` (`flmjax.infer.stream_state`); `init_stream` and
`reset_slots` (`flmjax.infer.stream_slots`) make a stream and start sessions in its slots. This module runs the
step: `stream_step` (the frames to emit), `stream_step_details` (every intermediate), and for a stream laid out
over a device mesh (`flmjax.infer.stream_sharding`) `lower_stream_step` (the step lowered from abstract arrays,
ahead of time) and `place_stream_params` (params in the memory layouts the compiled step chooses). A sharded
step runs with the stream's shardings in and out (params placed on the first call) and gives the same tokens
as on one device, up to float32 summation order in the sharded matmuls.

Context: the KV cache holds `max_frames` frames per slot. A step that would go past it raises
`ContextLimitError` (the state passed in is left as it was), unless the stream was made with
`sliding_window=True`: then the cache is a ring and each frame attends to the last `max_frames` frames.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from flmjax import model, sharding
from flmjax.config import ModelConfig
from flmjax.infer import sampling as sampling_lib
from flmjax.infer.sampling import SamplingConfig
from flmjax.infer.stream_sharding import (
    keep_layout,
    on_mesh,
    stream_param_shardings,
    stream_rules,
    stream_state_shardings,
)
from flmjax.infer.stream_state import (
    ContextLimitError,
    Params,
    StepOutputs,
    StreamError,
    StreamState,
    codebook_size,
    fresh_state,
)
from flmjax.streams import AUDIO_DELAYS, FRAME_S


def _row_keys(rng: jax.Array, batch_size: int) -> jax.Array:
    """One key per slot: a single key is split; a batch of keys [B] is used as given (so a session samples
    the same tokens whatever slot or batch it runs in)."""
    typed = jnp.issubdtype(rng.dtype, jax.dtypes.prng_key)
    if not typed:
        rng = jax.random.wrap_key_data(rng)
    if rng.shape == ():
        return jax.random.split(rng, batch_size)
    if rng.shape != (batch_size,):
        raise StreamError(f"rng must be one key or {batch_size} keys (one per slot), got shape {rng.shape}")
    return rng


def _sample_audio(state: StreamState, params: Params, hidden: jax.Array, keys: jax.Array):
    """The 8 depth steps in one loop, against a depth KV cache: hidden [B,H] -> (codes [B,C], raw logits [B,C,A])."""
    config, sampling = state.config, state.sampling
    channels, penalised = config.aud_channel, sampling.audio_penalty_codebooks
    batch = hidden.shape[0]

    rows = state.slot_sampling.audio

    def codebook_step(j, carry):
        codes, all_logits, cache, token = carry
        logits, cache = model.depth_step(config, params, hidden, token, j, cache)
        scored = logits
        if penalised:
            history = jax.lax.dynamic_index_in_dim(
                state.audio_history, jnp.minimum(j, penalised - 1), axis=2, keepdims=False
            )
            scored = jnp.where(
                j < penalised,
                sampling_lib.apply_repetition_penalty(
                    logits, history, rows.repetition_penalty, rows.window, state.steps
                ),
                logits,
            )
        step_keys = jax.vmap(jax.random.fold_in, (0, None))(keys, j)
        token = sampling_lib.sample(scored, rows, sampling.do_sample, step_keys, state.unrolled)
        codes = jax.lax.dynamic_update_index_in_dim(codes, token, j, axis=1)
        all_logits = jax.lax.dynamic_update_index_in_dim(all_logits, logits, j, axis=1)
        return codes, all_logits, cache, token

    codes = jnp.full((batch, channels), config.aud_pad_id, jnp.int32)
    all_logits = jnp.zeros((batch, channels, config.aud_vocab_size), jnp.float32)
    start = jnp.full((batch,), config.aud_emp_id, jnp.int32)  # position 0 always embeds aud_emp
    codes, all_logits, _, _ = jax.lax.fori_loop(
        0,
        channels,
        codebook_step,
        (codes, all_logits, model.init_depth_cache(config, batch), start),
        unroll=state.unrolled or None,
    )
    return codes, all_logits


def _step(params: Params, state: StreamState, listen_codes: jax.Array, rng: jax.Array):
    """One frame for every slot -> (new state, StepOutputs, problems [B] int32: 0 ok, 1 context, 2 codes)."""
    config, sampling = state.config, state.sampling
    batch = state.batch_size
    text_keys, audio_keys = jnp.moveaxis(jax.vmap(jax.random.split)(_row_keys(rng, batch)), 1, 0)
    undelayed = jnp.asarray(AUDIO_DELAYS) == 0  # [C]: which rows show the current frame

    listen_input = jnp.where(undelayed, listen_codes, state.listen)
    model_inputs = jnp.concatenate([state.text[:, None], state.speak, listen_input], axis=1)
    text_logits, hidden, cache = model.forward_cached(
        config, params, state.cache, state.text[:, None], state.speak[:, None], listen_input[:, None]
    )
    text_logits, hidden = text_logits[:, 0], hidden[:, 0]

    rows = state.slot_sampling.text
    scored = sampling_lib.apply_repetition_penalty(
        text_logits, state.text_history, rows.repetition_penalty, rows.window, state.steps
    )
    text_token = sampling_lib.sample(scored, rows, sampling.do_sample, text_keys, state.unrolled)
    audio_tokens, depth_logits = _sample_audio(state, params, hidden, audio_keys)

    penalised = sampling.audio_penalty_codebooks
    new_state = state.replace(
        cache=cache,
        text=text_token,
        speak=audio_tokens,
        listen=listen_codes,
        text_history=sampling_lib.push(state.text_history, text_token, state.steps),
        audio_history=sampling_lib.push(state.audio_history, audio_tokens[:, :penalised], state.steps),
        steps=state.steps + 1,
    )
    new_state = keep_layout(new_state)
    out_frame = jnp.concatenate([state.text[:, None], jnp.where(undelayed, state.speak, audio_tokens)], axis=1)
    outputs = StepOutputs(
        model_inputs=model_inputs,
        text_token=text_token,
        audio_tokens=audio_tokens,
        text_logits=text_logits,
        hidden=hidden,
        depth_logits=depth_logits,
        out_frame=out_frame,
        out_valid=state.steps >= 1,
    )

    bad_codes = jnp.any((listen_codes < 0) | (listen_codes >= codebook_size(config)), axis=-1)
    context_full = jnp.logical_and(not state.sliding_window, state.cache["length"] >= state.max_frames)
    problems = jnp.where(context_full, 1, jnp.where(bad_codes, 2, 0)).astype(jnp.int32)
    return new_state, outputs, problems


@jax.jit
def _step_details(params, state, listen_codes, rng):
    return _step(params, state, listen_codes, rng)


def _step_frames_unjitted(params, state, listen_codes, rng):
    new_state, outputs, problems = _step(params, state, listen_codes, rng)
    return new_state, outputs.out_frame, outputs.out_valid, problems


_step_frames = jax.jit(_step_frames_unjitted)


def _checked_listen(state: StreamState, listen_codes) -> jax.Array:
    shape = (state.batch_size, state.config.aud_channel)
    if tuple(np.shape(listen_codes)) != shape:
        raise StreamError(
            f"listen_codes must have shape [batch, codebooks] = {list(shape)}, got {list(np.shape(listen_codes))}"
        )
    if not np.issubdtype(
        np.asarray(listen_codes).dtype if not isinstance(listen_codes, jax.Array) else listen_codes.dtype, np.integer
    ):
        raise StreamError(f"listen_codes must be integers, got {getattr(listen_codes, 'dtype', type(listen_codes))}")
    return jnp.asarray(listen_codes, jnp.int32)


def _raise_on(problems: jax.Array, state: StreamState, listen_codes: jax.Array) -> None:
    problems = np.asarray(problems)
    if not problems.any():
        return
    full = np.flatnonzero(problems == 1).tolist()
    if full:
        raise ContextLimitError(
            f"slot(s) {full} reached the context limit of {state.max_frames} frames "
            f"({state.max_frames * FRAME_S:.1f} s); start them afresh with reset_slots, or make the stream with "
            "a larger max_frames or sliding_window=True"
        )
    bad = np.flatnonzero(problems == 2).tolist()
    limit = codebook_size(state.config)
    values = np.asarray(listen_codes)[bad]
    raise StreamError(f"listen codes of slot(s) {bad} are outside 0..{limit - 1}: {values.tolist()}")


def place_stream_params(params: Params, state: StreamState) -> Params:
    """`params` placed for a sharded stream's step in the memory layouts the compiler chooses for that step.

    With the default (row-major) layouts the TPU program re-lays some weights out on every frame (`launch.aot
    stream` measures both); placed once here, `stream_step` compiles for these layouts (jit takes a committed
    array's layout as given) and the tokens are the same. Compiles the step once, from abstract arrays.
    """
    if state.mesh is None:
        raise StreamError("place_stream_params needs a sharded stream (init_stream(..., mesh=...))")
    lowered = lower_stream_step(
        state.config,
        state.mesh,
        state.batch_size,
        state.max_frames,
        state.sampling,
        state.sliding_window,
        auto_layouts=True,
    )
    formats = lowered.compile().input_formats[0][0]
    return jax.device_put(params, formats)


def stream_step_details(
    params: Params, state: StreamState, listen_codes, rng: jax.Array
) -> tuple[StreamState, StepOutputs]:
    """`stream_step` returning every intermediate (inputs, sampled tokens, raw logits, hidden state)."""
    listen_codes = _checked_listen(state, listen_codes)
    new_state, outputs, problems = on_mesh(_step_details, params, state, listen_codes, rng)
    _raise_on(problems, state, listen_codes)
    return new_state, outputs


def stream_step(
    params: Params, state: StreamState, listen_codes, rng: jax.Array
) -> tuple[StreamState, jax.Array, jax.Array]:
    """One 80 ms frame for every slot.

    listen_codes [B,C] ints in 0..2047 (the user's new frame); rng: one key, or [B] keys (one per session).
    Returns (new state, out_frame [B,1+C] = text id then speak codes 0..7 of the frame before, out_valid [B]).
    Raises ContextLimitError / StreamError (the state passed in stays usable) on a full cache or bad codes.
    """
    listen_codes = _checked_listen(state, listen_codes)
    new_state, out_frame, out_valid, problems = on_mesh(_step_frames, params, state, listen_codes, rng)
    _raise_on(problems, state, listen_codes)
    return new_state, out_frame, out_valid


def lower_stream_step(
    config: ModelConfig,
    mesh,
    batch_size: int,
    max_frames: int,
    sampling: SamplingConfig | None = None,
    sliding_window: bool = False,
    unrolled: bool = False,
    auto_layouts: bool = False,
):
    """`stream_step`'s jitted step for a sharded stream on `mesh`, lowered from abstract arrays only (no params,
    no cache allocated): `.compile()` it for the mesh's devices, which need not be attached.

    `unrolled`: every loop (layers, codebooks, top-p bisections) as straight-line code, for XLA's cost
    analysis. `auto_layouts`: the compiler chooses the params' memory layouts (a server places them so once);
    with the default row-major layouts the TPU program re-lays some weights out on every step.
    """
    sampling = SamplingConfig() if sampling is None else sampling
    if unrolled and config.scan_layers:
        config = config.replace(scan_unroll=config.num_hidden_layers)
    param_shardings = stream_param_shardings(config, mesh, batch_size)
    shapes = jax.eval_shape(lambda: fresh_state(config, sampling, batch_size, max_frames, sliding_window))
    state_shardings = stream_state_shardings(shapes.replace(mesh=mesh)).replace(mesh=None)
    state = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype), shapes).replace(mesh=mesh, unrolled=unrolled)
    rules = stream_rules(mesh, batch_size)
    listen_sharding = sharding.logical_sharding(mesh, ("batch", None), rules)
    keys = jax.eval_shape(lambda: jax.random.split(jax.random.key(0), batch_size))
    if auto_layouts:
        from jax.experimental.layout import Format, Layout

        param_shardings = jax.tree.map(lambda sh: Format(Layout.AUTO, sh), param_shardings)
    step = jax.jit(
        _step_frames_unjitted,
        in_shardings=(
            param_shardings,
            state_shardings.replace(mesh=mesh, unrolled=unrolled),
            listen_sharding,
            sharding.logical_sharding(mesh, ("batch",), rules),
        ),
    )
    params = model.abstract_params(config)  # outside the mesh context: it traces an init on the host
    with sharding.activation_rules(mesh, rules):
        return step.lower(
            params,
            state,
            jax.ShapeDtypeStruct((batch_size, config.aud_channel), jnp.int32),
            jax.ShapeDtypeStruct(keys.shape, keys.dtype),
        )
