"""The optimizer: AdamW per parameter group, warmup + cosine (or constant) schedule, clipping, frozen groups.

Params fall into four groups by their top-level key (`param_groups`):

    embedder -> "embeddings"    temporal -> "temporal"    text_head -> "text_head"    depth -> "depth"

`make_optimizer(cfg)` chains, in this order:

1. zero the gradients of frozen groups (so they do not count in the clipping norm),
2. clip by the global norm of the remaining (trainable) gradients (`clip_norm`, 0: off),
3. per group: AdamW with `lr(step) = learning_rate_schedule(cfg)(step) * lr_multipliers[group]`, decoupled
   weight decay (PyTorch/optax AdamW: `p -= lr * (adam + weight_decay * p)`) on matrices only, or, for a
   frozen group, `optax.set_to_zero()`: its params never change and it holds no optimizer state.

A multiplier of 0 is not the same as freezing: the group's params stay fixed too (lr 0 scales both Adam and
weight decay away), but its gradients still count in the clipping norm and it keeps Adam moments. Freeze a
group to leave it out entirely.

Weight decay applies to kernels and embedding tables, never to norm scales or biases. They are told apart by
name (a leaf named `scale` or ending in `bias`), not by rank: scanned layers stack a leading `layers` axis, so a
stacked norm scale is [L, H] and a stacked bias [L, heads, head_dim].
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from flmjax.errors import UserError
from flmjax.train.config_fields import dataclass_kwargs

PARAM_GROUPS = ("embeddings", "temporal", "text_head", "depth")
SCHEDULES = ("cosine", "constant")
_GROUP_OF_TOP_KEY = {"embedder": "embeddings", "temporal": "temporal", "text_head": "text_head", "depth": "depth"}
_FROZEN, _TRAINABLE = "frozen", "trainable"


class OptimizerConfigError(UserError, ValueError):
    """An optimizer config that cannot be used; the message names every problem."""


def _default_multipliers() -> dict[str, float]:
    return {group: 1.0 for group in PARAM_GROUPS}


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW hyperparameters, the learning-rate schedule and the per-group settings of one training stage.

    `lr_multipliers` may name only some groups (the others get 1.0); after construction it holds all four.
    `frozen` names groups whose params never change.
    """

    learning_rate: float = 3e-4
    schedule: str = "cosine"  # "cosine": warmup then cosine decay to end_lr_fraction; "constant": warmup then flat
    warmup_steps: int = 100
    total_steps: int = 1000
    end_lr_fraction: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    clip_norm: float = 1.0  # global-norm clipping of the trainable gradients; 0 disables
    lr_multipliers: Mapping[str, float] = dataclasses.field(default_factory=_default_multipliers)
    frozen: tuple[str, ...] = ()

    def __post_init__(self):
        problems = []

        def number(name, low, high=math.inf, low_open=False, high_open=False):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                problems.append(f"{name} must be a finite number, got {value!r}")
                return
            too_low = value <= low if low_open else value < low
            too_high = value >= high if high_open else value > high
            if too_low or too_high:
                interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open or high == math.inf else ']'}"
                problems.append(f"{name} must be in {interval}, got {value!r}")

        def integer(name, low):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                problems.append(f"{name} must be an integer >= {low}, got {value!r}")

        number("learning_rate", 0, low_open=True)
        number("end_lr_fraction", 0, 1)
        number("b1", 0, 1, high_open=True)
        number("b2", 0, 1, high_open=True)
        number("eps", 0, low_open=True)
        number("weight_decay", 0)
        number("clip_norm", 0)
        integer("warmup_steps", 0)
        integer("total_steps", 1)
        if self.schedule not in SCHEDULES:
            problems.append(f"unknown schedule {self.schedule!r}; expected one of {SCHEDULES}")
        elif (
            self.schedule == "cosine"
            and isinstance(self.warmup_steps, int)
            and isinstance(self.total_steps, int)
            and self.warmup_steps >= self.total_steps
        ):
            problems.append(
                f"warmup_steps ({self.warmup_steps}) must be below total_steps ({self.total_steps}) "
                "for the cosine schedule"
            )

        multipliers = dict(self.lr_multipliers or {})
        unknown = sorted(set(multipliers) - set(PARAM_GROUPS))
        if unknown:
            problems.append(f"lr_multipliers names unknown groups {unknown}; valid groups are {PARAM_GROUPS}")
        for group, value in multipliers.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                problems.append(f"lr_multipliers[{group!r}] must be a finite non-negative number, got {value!r}")
        object.__setattr__(
            self,
            "lr_multipliers",
            {g: float(multipliers.get(g, 1.0)) if g not in unknown else 1.0 for g in PARAM_GROUPS},
        )

        frozen = (self.frozen,) if isinstance(self.frozen, str) else tuple(self.frozen or ())
        unknown = sorted(set(frozen) - set(PARAM_GROUPS))
        if unknown:
            problems.append(f"frozen names unknown groups {unknown}; valid groups are {PARAM_GROUPS}")
        elif set(frozen) == set(PARAM_GROUPS):
            problems.append(f"every group is frozen {frozen}: nothing would train")
        object.__setattr__(self, "frozen", tuple(g for g in PARAM_GROUPS if g in frozen))
        if problems:
            raise OptimizerConfigError("invalid OptimizerConfig:\n  " + "\n  ".join(problems))

    def __hash__(self):  # lr_multipliers is a dict: hash its items so the config stays a valid static argument
        return hash(
            tuple(
                tuple(sorted(getattr(self, f.name).items())) if f.name == "lr_multipliers" else getattr(self, f.name)
                for f in dataclasses.fields(self)
            )
        )

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | Any | None = None) -> OptimizerConfig:
        """From a dict or an `ml_collections.ConfigDict` (missing keys keep their defaults; unknown keys fail)."""
        return cls(**dataclass_kwargs(cls, config, OptimizerConfigError))

    @property
    def trainable_groups(self) -> tuple[str, ...]:
        return tuple(g for g in PARAM_GROUPS if g not in self.frozen)


# ---------------------------------------------------------------------- groups and masks
def param_groups(params) -> Any:
    """A tree shaped like `params` whose leaves are group names (`PARAM_GROUPS`), by top-level key.

    Works on arrays and on `jax.ShapeDtypeStruct`s. An unknown top-level key is an error.
    """
    unknown = sorted(set(params) - set(_GROUP_OF_TOP_KEY))
    if unknown:
        raise OptimizerConfigError(
            f"params have top-level keys {unknown} that belong to no group; known keys "
            f"are {sorted(_GROUP_OF_TOP_KEY)} (groups {PARAM_GROUPS})"
        )
    return {key: jax.tree.map(lambda _, g=_GROUP_OF_TOP_KEY[key]: g, subtree) for key, subtree in params.items()}


def _decays(path) -> bool:
    name = str(getattr(path[-1], "key", path[-1])) if path else ""
    return not (name == "scale" or name.endswith("bias"))


def weight_decay_mask(params) -> Any:
    """A tree of bools: True for kernels and embedding tables, False for norm scales and biases.

    Leaves that are `optax.MaskedNode`s (inside `optax.partition`) are passed through.
    """
    return jax.tree_util.tree_map_with_path(lambda path, _: _decays(path), params)


# ---------------------------------------------------------------------- schedule and optimizer
def learning_rate_schedule(cfg: OptimizerConfig) -> optax.Schedule:
    """Linear warmup from 0 to `learning_rate` over `warmup_steps`, then cosine decay to
    `end_lr_fraction * learning_rate` at `total_steps` (flat after), or constant `learning_rate`."""
    if cfg.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=cfg.learning_rate,
            warmup_steps=cfg.warmup_steps,
            decay_steps=cfg.total_steps,
            end_value=cfg.end_lr_fraction * cfg.learning_rate,
        )
    constant = optax.constant_schedule(cfg.learning_rate)
    if cfg.warmup_steps == 0:
        return constant
    warmup = optax.linear_schedule(0.0, cfg.learning_rate, cfg.warmup_steps)
    return optax.join_schedules([warmup, constant], [cfg.warmup_steps])


def group_learning_rate(cfg: OptimizerConfig, group: str) -> optax.Schedule:
    """The schedule of one group: the base schedule times its multiplier."""
    if group not in PARAM_GROUPS:
        raise OptimizerConfigError(f"unknown group {group!r}; valid groups are {PARAM_GROUPS}")
    base, multiplier = learning_rate_schedule(cfg), cfg.lr_multipliers[group]
    return lambda step: base(step) * multiplier


def make_optimizer(cfg: OptimizerConfig) -> optax.GradientTransformation:
    """The stage's optimizer (see the module docstring for the order of its parts).

    `update(grads, state, params)` needs params (weight decay). Frozen groups get zero updates.
    """
    parts = []
    if cfg.frozen:
        frozen = set(cfg.frozen)
        parts.append(
            optax.partition(
                {_TRAINABLE: optax.identity(), _FROZEN: optax.set_to_zero()},
                lambda params: jax.tree.map(lambda g: _FROZEN if g in frozen else _TRAINABLE, param_groups(params)),
            )
        )
    if cfg.clip_norm > 0:
        parts.append(optax.clip_by_global_norm(cfg.clip_norm))
    per_group = {}
    for group in PARAM_GROUPS:
        if group in cfg.frozen:
            per_group[group] = optax.set_to_zero()
        else:
            per_group[group] = optax.adamw(
                group_learning_rate(cfg, group),
                b1=cfg.b1,
                b2=cfg.b2,
                eps=cfg.eps,
                weight_decay=cfg.weight_decay,
                mask=weight_decay_mask,
            )
    parts.append(optax.partition(per_group, param_groups))
    return optax.chain(*parts)


# ---------------------------------------------------------------------- state under jit
def optimizer_state_shardings(tx: optax.GradientTransformation, params, param_shardings) -> Any:
    """The sharding of every leaf of `tx.init(params)`: a param-shaped leaf (an Adam moment) takes its param's
    sharding, every other leaf (step counters) is replicated on the params' mesh.

    params: arrays or `jax.ShapeDtypeStruct`s; param_shardings: a `NamedSharding` per param. A state leaf is
    a param's moment when its path ends with that param's path and it has the param's shape (how optax lays
    out `partition`/`masked` states; `optax.tree_map_params` cannot see through them). Do not leave this to
    XLA: `jax.jit(tx.init)` on sharded params lays the moments out on one device.
    """
    mesh = jax.tree.leaves(param_shardings)[0].mesh
    replicated = NamedSharding(mesh, PartitionSpec())
    by_path = {}
    for (path, param), sharding in zip(
        jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(param_shardings), strict=True
    ):
        by_path[_dict_keys(path)] = (tuple(param.shape), sharding)

    def leaf_sharding(path, leaf):
        keys = _dict_keys(path)
        for start in range(len(keys)):
            shape, sharding = by_path.get(keys[start:], (None, None))
            if sharding is not None and shape == tuple(leaf.shape):
                return sharding
        return replicated

    return jax.tree_util.tree_map_with_path(leaf_sharding, jax.eval_shape(tx.init, params))


def _dict_keys(path) -> tuple:
    """The trailing run of dict keys of a pytree path (the part that names a param inside its tree)."""
    keys = []
    for entry in reversed(path):
        if not isinstance(entry, jax.tree_util.DictKey):
            break
        keys.append(entry.key)
    return tuple(reversed(keys))


def init_optimizer_state(tx: optax.GradientTransformation, params) -> Any:
    """`tx.init(params)` under `jax.jit`; with params sharded on a mesh, the state is created in its shardings
    (`optimizer_state_shardings`), so every leaf, counters included, lives on that mesh."""
    leaves = jax.tree.leaves(params)
    if leaves and all(isinstance(getattr(leaf, "sharding", None), NamedSharding) for leaf in leaves):
        shardings = jax.tree.map(lambda leaf: leaf.sharding, params)
        return jax.jit(tx.init, out_shardings=optimizer_state_shardings(tx, params, shardings))(params)
    return jax.jit(tx.init)(params)


def learning_rates(cfg: OptimizerConfig, step) -> dict[str, Any]:
    """The learning rate of every group at `step` (frozen groups: 0), for logging."""
    return {
        f"lr_{group}": jnp.zeros((), jnp.float32)
        if group in cfg.frozen
        else jnp.asarray(group_learning_rate(cfg, group)(step), jnp.float32)
        for group in PARAM_GROUPS
    }


__all__ = [
    "PARAM_GROUPS",
    "SCHEDULES",
    "OptimizerConfig",
    "OptimizerConfigError",
    "param_groups",
    "weight_decay_mask",
    "learning_rate_schedule",
    "group_learning_rate",
    "make_optimizer",
    "optimizer_state_shardings",
    "init_optimizer_state",
    "learning_rates",
]
