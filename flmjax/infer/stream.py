"""Streaming full-duplex inference: one jitted step per 80 ms frame, many sessions in one batch.

Each step reads the user's codes of the new frame and returns the model's undelayed frame of the step before
(REFERENCE.md section 1.1). At step `s` of a session:

    input   = (text[s-1], speak[s-1] as sampled (still delayed), listen rows delayed: (listen[s][0],
               listen[s-1][1..7]))                     with text[-1] = <wait>, speak[-1] = listen[-1] = aud_pad
    sampled = text[s] (text head), speak[s] (8 depth steps, one compiled loop)
    output  = (text[s-1], speak[s-1][0], speak[s][1..7])  valid from s = 1 (the acoustic codes of step 0 are
              never emitted, as in the released generator)

Everything a session needs lives in `StreamState`, a pytree whose static part (model config, sampling, the
context mode) is hashed by `jit`, so each batch size compiles once. `reset_slots` starts new conversations in
some slots without recompiling and without touching the others.

Sharded: `init_stream(..., mesh=mesh)` lays the stream out over a device mesh (`flmjax.sharding.make_mesh`, e.g.
{"data": 2, "tensor": 4}): params by the logical-axis rules (heads, MLP and vocabulary over `tensor`), the KV
cache with its slots over `data` and its kv heads over `tensor`, every other per-slot array with its slots over
`data` (a batch that does not divide over `data` is replicated over it). `stream_step` then runs one jitted
step with those shardings in and out (params placed on the first call), and gives the same tokens as on one
device, up to float32 summation order in the sharded matmuls.

Context: the KV cache holds `max_frames` frames per slot. A step that would go past it raises
`ContextLimitError` (the state passed in is left as it was), unless the stream was made with
`sliding_window=True`: then the cache is a ring and each frame attends to the last `max_frames` frames.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from flmjax import model, sharding
from flmjax.config import ModelConfig
from flmjax.errors import UserError
from flmjax.infer import sampling as sampling_lib
from flmjax.infer.sampling import SamplingConfig
from flmjax.streams import AUDIO_DELAYS, FRAME_S

Params = Any


class StreamError(UserError, ValueError):
    """A streaming step was given something it cannot run on."""


class ContextLimitError(StreamError):
    """A session reached the end of its KV cache."""


@struct.dataclass
class StreamState:
    """Per-slot streaming state. B = batch slots, C = codebooks, P = penalised audio codebooks."""

    cache: model.KVCache  # {"k","v": [L,B,max_frames,kv,hd], "length": [B]}
    text: jax.Array  # [B] the text token sampled at the previous step (<wait> before the first)
    speak: jax.Array  # [B,C] the speak codes sampled at the previous step, delayed (aud_pad before the first)
    listen: jax.Array  # [B,C] the previous frame's user codes (aud_pad before the first)
    text_history: jax.Array  # [B,window] sampled text ids, a ring (EMPTY = unused)
    audio_history: jax.Array  # [B,window,P] sampled codes of codebooks 0..P-1, a ring
    steps: jax.Array  # [B] steps taken since the slot's session began
    # Each slot's sampling (temperatures, top-p/k, penalties and their windows), set by `reset_slots`; the
    # static `sampling` gives the defaults, whether anything is sampled at all, and the history rings' sizes.
    slot_sampling: sampling_lib.SlotSampling
    config: ModelConfig = struct.field(pytree_node=False)
    sampling: SamplingConfig = struct.field(pytree_node=False)
    sliding_window: bool = struct.field(pytree_node=False, default=False)
    mesh: Any = struct.field(pytree_node=False, default=None)  # a jax Mesh (sharded stream) or None
    # Every loop of the step as straight-line code (same numbers): only for XLA's cost analysis, which counts
    # a loop's body once (`lower_stream_step(..., unrolled=True)`).
    unrolled: bool = struct.field(pytree_node=False, default=False)

    @property
    def batch_size(self) -> int:
        return self.steps.shape[0]

    @property
    def max_frames(self) -> int:
        return self.cache["k"].shape[2]


@struct.dataclass
class StepOutputs:
    """Everything one step computed, per slot (`stream_step` returns the last two)."""

    model_inputs: jax.Array  # [B,17] ids fed to the model: text, speak 0..7, listen 0..7
    text_token: jax.Array  # [B] sampled text id
    audio_tokens: jax.Array  # [B,C] sampled speak codes (delayed, as sampled)
    text_logits: jax.Array  # [B,V] raw text logits (before penalties)
    hidden: jax.Array  # [B,H] final-normed temporal state
    depth_logits: jax.Array  # [B,C,A] raw depth logits of each codebook step
    out_frame: jax.Array  # [B,1+C] the undelayed frame of the step before: text, speak 0..7
    out_valid: jax.Array  # [B] False on a session's first step (nothing to emit yet)


def codebook_size(config: ModelConfig) -> int:
    """Real audio codes are 0 .. codebook_size - 1; the two ids above them are aud_pad and aud_emp."""
    return config.aud_vocab_size - 2


def _fresh_state(
    config: ModelConfig, sampling: SamplingConfig, batch_size: int, max_frames: int, sliding_window: bool
) -> StreamState:
    channels, penalised = config.aud_channel, sampling.audio_penalty_codebooks
    return StreamState(
        cache=model.init_cache(config, batch_size, max_frames),
        text=jnp.full((batch_size,), config.text_wait_id, jnp.int32),
        speak=jnp.full((batch_size, channels), config.aud_pad_id, jnp.int32),
        listen=jnp.full((batch_size, channels), config.aud_pad_id, jnp.int32),
        text_history=jnp.full((batch_size, sampling.text.window), sampling_lib.EMPTY, jnp.int32),
        audio_history=jnp.full((batch_size, sampling.audio.window, penalised), sampling_lib.EMPTY, jnp.int32),
        steps=jnp.zeros((batch_size,), jnp.int32),
        slot_sampling=sampling_lib.SlotSampling.of(sampling, batch_size),
        config=config,
        sampling=sampling,
        sliding_window=sliding_window,
    )


def _check_params(config: ModelConfig, params: Params) -> None:
    expected = jax.tree.map(lambda leaf: leaf.shape, model.abstract_params(config))
    try:
        found = jax.tree.map(lambda leaf: tuple(leaf.shape), params)
    except AttributeError as error:
        raise StreamError(f"params must be a tree of arrays: {error}") from None
    if jax.tree.structure(expected) != jax.tree.structure(found) or expected != found:
        flat_expected = dict(jax.tree_util.tree_flatten_with_path(expected, is_leaf=lambda x: isinstance(x, tuple))[0])
        flat_found = dict(jax.tree_util.tree_flatten_with_path(found, is_leaf=lambda x: isinstance(x, tuple))[0])
        problems = [
            f"{jax.tree_util.keystr(k)}: expected {v}, found {flat_found.get(k, 'nothing')}"
            for k, v in flat_expected.items()
            if flat_found.get(k) != v
        ]
        problems += [f"{jax.tree_util.keystr(k)}: unexpected" for k in flat_found if k not in flat_expected]
        raise StreamError("params do not fit the model config:\n  " + "\n  ".join(problems[:20]))


# ---------------------------------------------------------------------- sharding
def stream_rules(mesh, batch_size: int) -> sharding.Rules:
    """The logical-axis rules of a stream of `batch_size` slots on `mesh`: the training rules, with the slots
    (`batch`, and the depth model's rows) over `data` when they divide it, else replicated."""
    slots = ("data", "fsdp") if batch_size % (mesh.shape["data"] * mesh.shape["fsdp"]) == 0 else None
    overrides = {"batch": slots, "depth_batch": slots}
    return tuple((name, overrides.get(name, axes)) for name, axes in sharding.DEFAULT_RULES)


@functools.cache
def stream_param_shardings(config: ModelConfig, mesh, batch_size: int) -> Any:
    """Shardings of the params of a stream on `mesh` (ShardingError lists every dim that does not divide)."""
    return sharding.param_shardings(config, mesh, stream_rules(mesh, batch_size))


def stream_state_shardings(state: StreamState) -> StreamState:
    """A `StreamState`-shaped tree of shardings for `state` (which must have a mesh)."""
    mesh, rules = state.mesh, stream_rules(state.mesh, state.batch_size)

    def named(*axes):
        return sharding.logical_sharding(mesh, axes, rules)

    kv_heads = "kv_heads" if state.config.num_key_value_heads % mesh.shape["tensor"] == 0 else None
    cache = {
        "k": named(None, "batch", None, kv_heads, None),
        "v": named(None, "batch", None, kv_heads, None),
        "length": named("batch"),
    }
    return state.replace(
        cache=cache,
        text=named("batch"),
        speak=named("batch", None),
        listen=named("batch", None),
        text_history=named("batch", None),
        audio_history=named("batch", None, None),
        steps=named("batch"),
        slot_sampling=jax.tree.map(lambda _: named("batch"), state.slot_sampling),
    )


def init_stream(
    config: ModelConfig,
    params: Params,
    batch_size: int,
    max_frames: int,
    sampling: SamplingConfig | None = None,
    sliding_window: bool = False,
    mesh=None,
) -> StreamState:
    """A fresh stream of `batch_size` sessions, each with room for `max_frames` frames of context.

    `params` are checked against `config` (every shape), so a mismatched checkpoint fails here, not inside jit.
    With `mesh`, the state is laid out over it (see the module docstring) and `stream_step` places the params
    by the rules; a model or batch that does not fit the mesh is a `ShardingError` here.
    """
    if batch_size < 1 or max_frames < 1:
        raise StreamError(f"batch_size and max_frames must be >= 1, got {batch_size} and {max_frames}")
    if max(AUDIO_DELAYS) > 1 or len(AUDIO_DELAYS) != config.aud_channel:
        raise StreamError(
            f"streaming supports delays of at most 1 frame on {config.aud_channel} codebooks, got {AUDIO_DELAYS}"
        )
    sampling = SamplingConfig() if sampling is None else sampling
    if not 0 <= sampling.audio_penalty_codebooks <= config.aud_channel:
        raise StreamError(
            f"audio_penalty_codebooks must be in 0..{config.aud_channel}, got {sampling.audio_penalty_codebooks}"
        )
    _check_params(config, params)
    if mesh is None:
        return _fresh_state(config, sampling, batch_size, max_frames, sliding_window)
    stream_param_shardings(config, mesh, batch_size)  # fails here if the model does not divide over the mesh
    abstract = jax.eval_shape(lambda: _fresh_state(config, sampling, batch_size, max_frames, sliding_window))
    shardings = stream_state_shardings(abstract.replace(mesh=mesh))
    state = jax.jit(
        lambda: _fresh_state(config, sampling, batch_size, max_frames, sliding_window),
        out_shardings=shardings.replace(mesh=None),
    )()
    return state.replace(mesh=mesh)


@jax.jit
def reset_slots(
    state: StreamState, mask: jax.Array, slot_sampling: sampling_lib.SlotSampling | None = None
) -> StreamState:
    """Starts a new session in every slot where `mask [B]` is True; the other slots are left untouched.

    The new sessions sample with their rows of `slot_sampling` (`SlotSampling` of [B] rows, e.g. from
    `with_settings`), or with the stream's `sampling`. A window longer than the stream's history ring is an
    error. The reset slots' cache contents stay in memory but are never attended to again: a session's frame at
    position p attends only to slots written at positions <= p of that session.
    """
    mask = jnp.asarray(mask, bool)
    fresh = _fresh_state(state.config, state.sampling, state.batch_size, 1, state.sliding_window)
    if slot_sampling is not None:
        fresh = fresh.replace(
            slot_sampling=jax.tree.map(lambda row, ref: jnp.asarray(row, ref.dtype), slot_sampling, fresh.slot_sampling)
        )

    def pick(new, old):
        return jnp.where(mask.reshape(mask.shape + (1,) * (old.ndim - 1)), new, old)

    return _keep_layout(
        state.replace(
            cache={**state.cache, "length": pick(fresh.cache["length"], state.cache["length"])},
            text=pick(fresh.text, state.text),
            speak=pick(fresh.speak, state.speak),
            listen=pick(fresh.listen, state.listen),
            text_history=pick(fresh.text_history, state.text_history),
            audio_history=pick(fresh.audio_history, state.audio_history),
            steps=pick(fresh.steps, state.steps),
            slot_sampling=jax.tree.map(pick, fresh.slot_sampling, state.slot_sampling),
        )
    )


def slot_sampling(state: StreamState, settings: Sequence[SamplingConfig | None]) -> sampling_lib.SlotSampling:
    """The per-slot sampling `reset_slots` takes: slot b samples with `settings[b]` (None: the stream's own).

    Each setting must fit the stream: penalty windows within its history rings, the same penalised codebooks,
    and sampling only in a stream made to sample (`init_stream` with `do_sample=True`)."""
    if len(settings) != state.batch_size:
        raise StreamError(f"{len(settings)} sampling settings for {state.batch_size} slots")
    own = state.sampling
    rows = []
    for slot, setting in enumerate(settings):
        setting = own if setting is None else setting
        problems = []
        if setting.text.window > own.text.window or setting.audio.window > own.audio.window:
            problems.append(
                f"penalty windows (text {setting.text.window}, audio {setting.audio.window}) must be "
                f"at most the stream's (text {own.text.window}, audio {own.audio.window})"
            )
        if setting.audio_penalty_codebooks != own.audio_penalty_codebooks:
            problems.append(
                f"audio_penalty_codebooks {setting.audio_penalty_codebooks} differs from the "
                f"stream's {own.audio_penalty_codebooks}"
            )
        if setting.do_sample and not own.do_sample:
            problems.append("the stream was made without sampling (do_sample=False)")
        if problems:
            raise StreamError(f"sampling settings of slot {slot} do not fit the stream: " + "; ".join(problems))
        rows.append(sampling_lib.SlotSampling.of(setting, 1))
    return jax.tree.map(lambda *row: np.concatenate([np.asarray(r) for r in row]), *rows)


def _keep_layout(state: StreamState) -> StreamState:
    """A sharded stream's new state in the layout of `init_stream` (inside jit), so every step sees the same
    input shardings and compiles once."""
    if state.mesh is None:
        return state
    shardings = stream_state_shardings(state)
    return jax.lax.with_sharding_constraint(state.replace(mesh=None), shardings.replace(mesh=None)).replace(
        mesh=state.mesh
    )


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
    new_state = _keep_layout(new_state)
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


def _on_mesh(step, params: Params, state: StreamState, *args):
    """Runs a jitted step function; for a sharded stream with the params placed by its rules and the model's
    activation constraints in force while it traces."""
    if state.mesh is None:
        return step(params, state, *args)
    params = jax.tree.map(_placed, params, stream_param_shardings(state.config, state.mesh, state.batch_size))
    with sharding.activation_rules(state.mesh, stream_rules(state.mesh, state.batch_size)):
        return step(params, state, *args)


def _placed(param, target_sharding):
    """`param` on `target_sharding`; one already there is left as it is (in whatever memory layout it has)."""
    if isinstance(param, jax.Array) and param.sharding == target_sharding:
        return param
    return jax.device_put(param, target_sharding)


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
    new_state, outputs, problems = _on_mesh(_step_details, params, state, listen_codes, rng)
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
    new_state, out_frame, out_valid, problems = _on_mesh(_step_frames, params, state, listen_codes, rng)
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
    shapes = jax.eval_shape(lambda: _fresh_state(config, sampling, batch_size, max_frames, sliding_window))
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
