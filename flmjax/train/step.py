"""The training state and the jitted, sharded train step.

The state is a plain dict pytree, `{"step": int32 [], "params": ..., "opt_state": ...}`: params and optimizer
state in `param_dtype` (float32 by default), sharded by the logical rules; the forward and backward passes run
in the model config's compute dtype. One step takes a global batch (see `flmjax.data.examples`), splits it into
`accumulation_steps` micro-batches whose gradients add up to the full batch's exactly (the loss normalisers are
computed from the whole batch first), then applies one optimizer update.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from flmjax import compiled as compiled_lib
from flmjax import model, sharding
from flmjax.config import ModelConfig
from flmjax.errors import UserError
from flmjax.streams import AUDIO_BATCH_KEYS, BATCH_KEYS
from flmjax.train import loss as loss_lib
from flmjax.train import optimizer as optimizer_lib

State = dict[str, Any]
Batch = dict[str, jax.Array]


def init_state(config: ModelConfig, tx: optax.GradientTransformation, params) -> State:
    """A step-0 state around `params` (optimizer state initialised for them)."""
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}


def state_shardings(
    config: ModelConfig, tx: optax.GradientTransformation, mesh: Mesh, rules=sharding.DEFAULT_RULES
) -> State:
    """Shardings of every state leaf: params by the logical rules, Adam moments like their params, counters
    and the step replicated."""
    param_shardings = sharding.param_shardings(config, mesh, rules)
    opt_shardings = optimizer_lib.optimizer_state_shardings(tx, model.abstract_params(config), param_shardings)
    return {"step": NamedSharding(mesh, PartitionSpec()), "params": param_shardings, "opt_state": opt_shardings}


def abstract_state(config: ModelConfig, tx: optax.GradientTransformation, shardings: State) -> State:
    """The state as `jax.ShapeDtypeStruct`s carrying `shardings` (what a checkpoint restores into)."""
    shapes = jax.eval_shape(lambda: init_state(config, tx, model.init_params(config, jax.random.key(0))))
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)


def init_state_sharded(
    config: ModelConfig, tx: optax.GradientTransformation, rng: jax.Array, shardings: State, params=None
) -> State:
    """A fresh (or around given `params`) step-0 state, created directly in its shardings."""
    if params is None:
        return jax.jit(lambda key: init_state(config, tx, model.init_params(config, key)), out_shardings=shardings)(rng)
    params = jax.device_put(params, shardings["params"])
    return jax.jit(functools.partial(init_state, config, tx), out_shardings=shardings)(params)


def batch_shardings(mesh: Mesh, rules=sharding.DEFAULT_RULES) -> dict[str, NamedSharding]:
    return {key: sharding.batch_sharding(mesh, rules, ndim=3 if key in AUDIO_BATCH_KEYS else 2) for key in BATCH_KEYS}


def global_batch(local_batch: dict[str, np.ndarray], shardings: dict[str, NamedSharding], process_count: int) -> Batch:
    """This process's rows [local, ...] -> global arrays [local * process_count, ...] laid out as `shardings`
    say (process p's rows at p * local .. (p + 1) * local - 1)."""
    out = {}
    for key, sharding_ in shardings.items():
        local = local_batch[key]
        global_shape = (local.shape[0] * process_count,) + local.shape[1:]
        out[key] = jax.make_array_from_process_local_data(sharding_, local, global_shape)
    return out


def _split(batch: Batch, parts: int) -> Batch:
    """[B, ...] -> [parts, B / parts, ...]: micro-batch `i` holds examples i*B/parts .. (i+1)*B/parts - 1."""
    return jax.tree.map(lambda x: x.reshape(parts, x.shape[0] // parts, *x.shape[1:]), batch)


def train_step(
    state: State,
    batch: Batch,
    *,
    config: ModelConfig,
    loss_config: loss_lib.LossConfig,
    tx: optax.GradientTransformation,
    accumulation_steps: int = 1,
    accumulation_unroll: int = 1,
) -> tuple[State, dict[str, jax.Array]]:
    """One optimizer update on a global batch; returns the new state and float32 metrics.

    With `accumulation_steps` > 1 the micro-batches run in one scanned loop (`accumulation_unroll` of them per
    iteration: only the ahead-of-time estimates change it, to see one micro-batch's cost).
    """
    batch = {key: batch[key] for key in BATCH_KEYS}
    normalizers = loss_lib.loss_normalizers(config, batch, loss_config)

    def micro_loss(params, micro_batch):
        return loss_lib.loss_and_metric_sums(config, params, micro_batch, loss_config, normalizers)

    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)
    if accumulation_steps == 1:
        (loss, sums), grads = grad_fn(state["params"], batch)
    else:
        micro_batches = _split(batch, accumulation_steps)

        def accumulate(totals, micro_batch):
            return jax.tree.map(jnp.add, totals, grad_fn(state["params"], micro_batch)), None

        one = jax.tree.map(lambda x: x[0], micro_batches)
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(grad_fn, state["params"], one))
        ((loss, sums), grads), _ = jax.lax.scan(accumulate, zeros, micro_batches, unroll=accumulation_unroll)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = {
        **loss_lib.finalize_metrics(sums),
        "loss": loss,
        "grad_norm": optax.tree.norm(grads),
        "update_norm": optax.tree.norm(updates),
    }
    new_state = {"step": state["step"] + 1, "params": params, "opt_state": opt_state}
    return new_state, jax.tree.map(lambda m: m.astype(jnp.float32), metrics)


class BatchLayoutError(UserError, ValueError):
    """A global batch that does not split into micro-batches or over the data-parallel devices."""


def check_batch_layout(mesh: Mesh, global_batch_size: int, accumulation_steps: int = 1) -> None:
    """The global batch must split into micro-batches, and each micro-batch over the data-parallel devices."""
    if global_batch_size % accumulation_steps:
        raise BatchLayoutError(
            f"global batch size {global_batch_size} is not divisible into {accumulation_steps} micro-batches"
        )
    data_parallel = int(np.prod([mesh.shape[a] for a in ("data", "fsdp")]))
    if (global_batch_size // accumulation_steps) % data_parallel:
        raise BatchLayoutError(
            f"micro-batch size {global_batch_size // accumulation_steps} does not divide over "
            f"the {data_parallel} devices of the data and fsdp mesh axes {dict(mesh.shape)}"
        )


@dataclasses.dataclass
class CompiledStep:
    """An ahead-of-time compiled train step and what XLA says about it."""

    run: Callable[[State, Batch], tuple[State, dict[str, jax.Array]]]
    compile_seconds: float
    flops: float | None  # XLA's count for one step (a scanned layer loop counted once: see `model_flops`)
    memory: dict[str, int | None]  # per device: `flmjax.compiled.memory`


def abstract_batch(
    config: ModelConfig, mesh: Mesh, global_batch_size: int, sequence_length: int, rules=sharding.DEFAULT_RULES
) -> Batch:
    """A global batch as `jax.ShapeDtypeStruct`s carrying their shardings (what the step is compiled for)."""
    return {
        key: jax.ShapeDtypeStruct(
            (global_batch_size, sequence_length) + ((config.aud_channel,) if len(s.spec) == 3 else ()),
            jnp.bool_ if key.endswith("_mask") else jnp.int32,
            sharding=s,
        )
        for key, s in batch_shardings(mesh, rules).items()
    }


def lower_train_step(
    config: ModelConfig,
    loss_config: loss_lib.LossConfig,
    tx: optax.GradientTransformation,
    shardings: State,
    mesh: Mesh,
    global_batch_size: int,
    sequence_length: int,
    accumulation_steps: int = 1,
    rules=sharding.DEFAULT_RULES,
    accumulation_unroll: int = 1,
):
    """The train step jitted with explicit in/out shardings and the state donated, lowered for `mesh` from
    abstract arrays only (no params, no data): `.compile()` it for the mesh's devices, which need not be
    attached (`flmjax.hardware.topology_devices`)."""
    check_batch_layout(mesh, global_batch_size, accumulation_steps)
    metrics_sharding = NamedSharding(mesh, PartitionSpec())
    step = jax.jit(
        functools.partial(
            train_step,
            config=config,
            loss_config=loss_config,
            tx=tx,
            accumulation_steps=accumulation_steps,
            accumulation_unroll=accumulation_unroll,
        ),
        in_shardings=(shardings, batch_shardings(mesh, rules)),
        out_shardings=(shardings, metrics_sharding),
        donate_argnums=(0,),
    )
    with sharding.activation_rules(mesh, rules):
        return step.lower(
            abstract_state(config, tx, shardings),
            abstract_batch(config, mesh, global_batch_size, sequence_length, rules),
        )


def compile_train_step(
    config: ModelConfig,
    loss_config: loss_lib.LossConfig,
    tx: optax.GradientTransformation,
    shardings: State,
    mesh: Mesh,
    global_batch_size: int,
    sequence_length: int,
    accumulation_steps: int = 1,
    rules=sharding.DEFAULT_RULES,
) -> CompiledStep:
    """`lower_train_step`, compiled ahead of time, with XLA's compile time, FLOPs and memory."""
    start = time.perf_counter()
    lowered = lower_train_step(
        config, loss_config, tx, shardings, mesh, global_batch_size, sequence_length, accumulation_steps, rules
    )
    compiled = lowered.compile()
    seconds = time.perf_counter() - start
    return CompiledStep(compiled, seconds, compiled_lib.cost(compiled)["flops"], compiled_lib.memory(compiled))


CROSS_ENTROPY_FLOPS = 10  # per logit, forward and backward


def model_flops_per_frame(config: ModelConfig, sequence_length: int) -> float:
    """Training FLOPs per frame (forward + backward = 3 x forward), counting matmuls only:

    temporal: 2 x (attention projections + MLP + text head) weights per frame, plus attention scores and
    values, 2 x 2 x heads x head_dim x (average context = (L + 1) / 2) per layer; depth: 2 x (linear_in +
    8 positions x (per-position weights)) + its attention over 8 positions; the loss: `CROSS_ENTROPY_FLOPS`
    per logit (softmax and its gradient: max, subtract, exp, sum, normalise, each way). Embedding lookups are
    free. Not counted: norms, activations, RoPE and the optimizer update (per step, not per frame), which XLA
    does count: the formula is within 10% of XLA's count of the unrolled step once a step holds a few thousand
    frames (`tests/train/test_step.py`).
    """
    h, heads, kv, hd = config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.head_dim
    per_layer = h * hd * (heads + 2 * kv) + heads * hd * h + 3 * h * config.intermediate_size
    temporal = config.num_hidden_layers * (2 * per_layer + 4 * heads * hd * (sequence_length + 1) / 2)
    text_head = 2 * h * config.vocab_size
    d, c = config.depth_dim, config.aud_channel
    depth_block = 4 * d * d + (3 if config.depth_swiglu else 2) * d * config.depth_mlp_dim
    depth = (
        2 * h * c * d
        + config.depth_layers * c * (2 * depth_block + 4 * d * (c + 1) / 2)
        + 2 * c * d * config.aud_vocab_size
    )
    logits = config.vocab_size + c * config.aud_vocab_size
    return 3.0 * (temporal + text_head + depth) + CROSS_ENTROPY_FLOPS * logits
