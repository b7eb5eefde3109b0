"""A stream laid out over a device mesh: the logical-axis rules of a stream, the shardings of its params and
state, and running a step with the params placed by those rules.

The mesh comes from `flmjax.sharding.make_mesh`, e.g. {"data": 2, "tensor": 4}. Params follow the training
rules (heads, MLP and vocabulary over `tensor`); the KV cache has its slots over `data` and its kv heads over
`tensor`; every other per-slot array has its slots over `data` (a batch that does not divide over `data` is
replicated over it).
"""

from __future__ import annotations

import functools
from typing import Any

import jax

from flmjax import sharding
from flmjax.config import ModelConfig
from flmjax.infer.stream_state import Params, StreamState


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


def keep_layout(state: StreamState) -> StreamState:
    """A sharded stream's new state in the layout of `init_stream` (inside jit), so every step sees the same
    input shardings and compiles once."""
    if state.mesh is None:
        return state
    shardings = stream_state_shardings(state)
    return jax.lax.with_sharding_constraint(state.replace(mesh=None), shardings.replace(mesh=None)).replace(
        mesh=state.mesh
    )


def on_mesh(step, params: Params, state: StreamState, *args):
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
