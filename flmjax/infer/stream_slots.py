"""Making a stream and starting sessions in its slots: `init_stream` (a fresh stream of `batch_size` slots,
its params checked against the config, optionally laid out over a mesh), `reset_slots` (new sessions in some
slots, without recompiling and without touching the others) and `slot_sampling` (each new session's own
sampling settings, checked against the stream).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from flmjax import model
from flmjax.config import ModelConfig
from flmjax.infer import sampling as sampling_lib
from flmjax.infer.sampling import SamplingConfig
from flmjax.infer.stream_sharding import keep_layout, stream_param_shardings, stream_state_shardings
from flmjax.infer.stream_state import Params, StreamError, StreamState, fresh_state
from flmjax.streams import AUDIO_DELAYS


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
    With `mesh`, the state is laid out over it (see `flmjax.infer.stream_sharding`) and `stream_step` places the
    params by the rules; a model or batch that does not fit the mesh is a `ShardingError` here.
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
        return fresh_state(config, sampling, batch_size, max_frames, sliding_window)
    stream_param_shardings(config, mesh, batch_size)  # fails here if the model does not divide over the mesh
    abstract = jax.eval_shape(lambda: fresh_state(config, sampling, batch_size, max_frames, sliding_window))
    shardings = stream_state_shardings(abstract.replace(mesh=mesh))
    state = jax.jit(
        lambda: fresh_state(config, sampling, batch_size, max_frames, sliding_window),
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
    fresh = fresh_state(state.config, state.sampling, state.batch_size, 1, state.sliding_window)
    if slot_sampling is not None:
        fresh = fresh.replace(
            slot_sampling=jax.tree.map(lambda row, ref: jnp.asarray(row, ref.dtype), slot_sampling, fresh.slot_sampling)
        )

    def pick(new, old):
        return jnp.where(mask.reshape(mask.shape + (1,) * (old.ndim - 1)), new, old)

    return keep_layout(
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
