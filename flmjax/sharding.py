"""Device meshes, the logical-axis rules, and the shardings they give params and batches.

The mesh has three axes, `MESH_AXES = ("data", "fsdp", "tensor")`: pure data parallelism, data parallelism
with params sharded along `embed` (FSDP), and tensor parallelism over heads, MLP and vocabulary widths. The model
names every param dim with a logical axis (`embed`, `heads`, `mlp`, ...) and never mentions the mesh; the
rules table (plain data, as in MaxText's `logical_axis_rules`) maps logical axes onto mesh axes:

    rules = DEFAULT_RULES
    mesh = make_mesh({"data": 2, "fsdp": -1, "tensor": 2})          # -1: the rest of the devices
    params = init_params_sharded(config, jax.random.key(0), mesh, rules)
    with activation_rules(mesh, rules):                              # the model's activation constraints apply
        step = jax.jit(f, in_shardings=(param_shardings(config, mesh, rules), batch_sharding(mesh, rules)))

A logical axis maps to at most one place per array: when two dims of one param ask for the same mesh axis
(`depth/linear_in [embed, codebook, depth_embed]` asks `fsdp` twice), the first rule in the table wins and the
other dim is replicated (Flax's `logical_to_mesh_axes` semantics).
"""

from __future__ import annotations

import contextlib
import functools
import math
from typing import Any, Iterator, Mapping, Sequence

import jax
import numpy as np
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from flmjax import model
from flmjax.config import ModelConfig
from flmjax.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")

MeshAxes = str | tuple[str, ...] | None
Rules = Sequence[tuple[str, MeshAxes]]

# Logical axis -> mesh axes. Params use every name but `batch` and `length`; activations use
# `batch, length, embed, vocab`. `audio_vocab` (2050 = 2 * 5^2 * 41) and `depth_mlp` (the released
# int(8 D / 3): 2730 for the 7B, 85 for tiny) stay replicated: they divide no typical tensor size.
DEFAULT_RULES: tuple[tuple[str, MeshAxes], ...] = (
    ("batch", ("data", "fsdp")),
    # The depth transformer's rows (frames of the batch, flattened): small weights, many rows, so every
    # device takes its own rows, tensor-parallel ones included (no chip repeats another's depth work).
    ("depth_batch", ("data", "fsdp", "tensor")),
    ("length", None),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("layers", None),
    ("audio_vocab", None),
    ("codebook", None),
    ("depth_embed", "fsdp"),
    ("depth_heads", None),  # the depth model is data-parallel over every device (see depth_batch)
    ("depth_mlp", None),
)


class ShardingError(UserError, ValueError):
    """A mesh or sharding that does not fit the devices or the model; the message names every problem."""


# ---------------------------------------------------------------------- meshes
def resolve_mesh_shape(mesh_shape: Mapping[str, int] | Sequence[int], num_devices: int) -> tuple[int, int, int]:
    """The mesh shape in `MESH_AXES` order with its `-1` (if any) replaced by the rest of the devices.

    `mesh_shape`: {"data": d, "fsdp": f, "tensor": t} (a missing axis has size 1) or (d, f, t).
    """
    if isinstance(mesh_shape, Mapping):
        unknown = sorted(set(mesh_shape) - set(MESH_AXES))
        if unknown:
            raise ShardingError(f"unknown mesh axes {unknown} in {dict(mesh_shape)}; expected some of {MESH_AXES}")
        sizes = [mesh_shape.get(axis, 1) for axis in MESH_AXES]
    else:
        sizes = list(mesh_shape)
        if len(sizes) != len(MESH_AXES):
            raise ShardingError(
                f"mesh shape {tuple(sizes)} has {len(sizes)} entries; expected "
                f"{len(MESH_AXES)}, one per axis of {MESH_AXES}"
            )
    named = dict(zip(MESH_AXES, sizes))
    bad = [
        f"{axis}={size!r}"
        for axis, size in named.items()
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or (size <= 0 and size != -1)
    ]
    if bad:
        raise ShardingError(
            f"mesh shape {named}: sizes must be positive integers or -1 (the rest), got {', '.join(bad)}"
        )
    rest = [axis for axis, size in named.items() if size == -1]
    if len(rest) > 1:
        raise ShardingError(
            f"mesh shape {named}: at most one axis may be -1 (the rest of the devices), got {len(rest)}: {rest}"
        )
    known = math.prod(size for size in sizes if size != -1)
    if rest:
        if num_devices % known:
            raise ShardingError(
                f"mesh shape {named}: the other axes hold {known} devices, which does not "
                f"divide the {num_devices} devices, so -1 for {rest[0]!r} has no size"
            )
        named[rest[0]] = num_devices // known
    elif known != num_devices:
        raise ShardingError(f"mesh shape {named} holds {known} devices, but there are {num_devices} devices")
    return tuple(int(named[axis]) for axis in MESH_AXES)


def make_mesh(mesh_shape: Mapping[str, int] | Sequence[int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A `Mesh` with axes `MESH_AXES` (all `AxisType.Auto`) over `devices` (default: all devices).

    TPU devices are laid out along the chips' physical torus (`mesh_utils`), so neighbours on the `tensor`
    and `fsdp` axes are neighbours on the interconnect. Devices of several slices (multi-slice, joined by the
    slower data-centre network) put the slices on the `data` axis, which must then be a multiple of their
    number: only data parallelism crosses slices.
    """
    num_devices = len(jax.devices()) if devices is None else len(devices)
    shape = resolve_mesh_shape(mesh_shape, num_devices)
    axis_types = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    if devices is None:
        return jax.make_mesh(shape, MESH_AXES, axis_types=axis_types)
    return Mesh(_device_grid(shape, list(devices)), MESH_AXES, axis_types=axis_types)


def _device_grid(shape: tuple[int, int, int], devices: list[jax.Device]) -> np.ndarray:
    from jax.experimental import mesh_utils

    slices = len({getattr(device, "slice_index", 0) or 0 for device in devices})
    if slices > 1:
        if shape[0] % slices:
            raise ShardingError(
                f"mesh shape {dict(zip(MESH_AXES, shape))}: the devices span {slices} slices, "
                f"so the data axis must be a multiple of {slices} (only data parallelism "
                "crosses slices)"
            )
        return mesh_utils.create_hybrid_device_mesh(
            (shape[0] // slices, *shape[1:]), (slices, 1, 1), devices, allow_split_physical_axes=True
        )
    if devices[0].platform == "tpu":
        try:
            return mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
        except (AssertionError, ValueError, NotImplementedError):
            pass  # e.g. v4 with one device per TensorCore: keep the given order
    return np.asarray(devices).reshape(shape)


# ---------------------------------------------------------------------- params
def param_partition_specs(config: ModelConfig, rules: Rules = DEFAULT_RULES) -> Any:
    """The mesh `PartitionSpec` of every param: a tree shaped like `model.init_params(config, rng)`.

    E.g. `temporal/layers/attn/q_kernel [layers, embed, heads, head_dim]` -> `P(None, "fsdp", "tensor", None)`.
    """
    logical = nn.get_partition_spec(model.abstract_params(config, boxed=True))
    return nn.logical_to_mesh(logical, rules)


def _is_spec(x: Any) -> bool:
    return isinstance(x, PartitionSpec)


def _path_name(path) -> str:
    return "/".join(str(getattr(key, "key", key)) for key in path)


def _mesh_axis_names(entry: MeshAxes) -> tuple[str, ...]:
    if entry is None:
        return ()
    return (entry,) if isinstance(entry, str) else tuple(entry)


def sharding_problems(shapes: Any, specs: Any, mesh: Mesh) -> list[str]:
    """Every dim of `shapes` (a tree of arrays or `ShapeDtypeStruct`s) that `specs` cannot shard on `mesh`."""
    problems = []
    flat_specs = jax.tree_util.tree_flatten_with_path(specs, is_leaf=_is_spec)[0]
    flat_shapes = jax.tree.leaves(shapes)
    for (path, spec), leaf in zip(flat_specs, flat_shapes, strict=True):
        for dim, (size, entry) in enumerate(zip(leaf.shape, spec)):
            axes = _mesh_axis_names(entry)
            unknown = [axis for axis in axes if axis not in mesh.shape]
            if unknown:
                problems.append(
                    f"{_path_name(path)} dim {dim} is sharded over {unknown}, which the mesh "
                    f"{dict(mesh.shape)} does not have"
                )
                continue
            ways = math.prod(mesh.shape[axis] for axis in axes)
            if size % ways:
                problems.append(
                    f"{_path_name(path)} {tuple(leaf.shape)} dim {dim} (size {size}) is not "
                    f"divisible by mesh axes {axes} of size {ways}"
                )
    return problems


def param_shardings(config: ModelConfig, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Any:
    """A `NamedSharding` per param (tree shaped like `model.init_params`); every sharded dim must divide evenly.

    Raises `ShardingError` listing every param dim whose size is not divisible by the mesh axes it maps to.
    """
    specs = param_partition_specs(config, rules)
    problems = sharding_problems(model.abstract_params(config), specs, mesh)
    if problems:
        raise ShardingError(
            f"{len(problems)} param dims do not fit the mesh {dict(mesh.shape)}:\n  " + "\n  ".join(problems)
        )
    return jax.tree.map(lambda spec: NamedSharding(mesh, spec), specs, is_leaf=_is_spec)


def init_params_sharded(config: ModelConfig, rng: jax.Array, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Any:
    """`model.init_params(config, rng)`, each param created directly in its sharding on `mesh` (same values)."""
    shardings = param_shardings(config, mesh, rules)
    with activation_rules(mesh, rules):
        return jax.jit(functools.partial(model.init_params, config), out_shardings=shardings)(rng)


# ---------------------------------------------------------------------- activations and batches
def logical_sharding(mesh: Mesh, logical_axes: Sequence[str | None], rules: Rules = DEFAULT_RULES) -> NamedSharding:
    """The `NamedSharding` of an array whose dims have these logical names (e.g. `("batch", "length", "vocab")`)."""
    return NamedSharding(mesh, nn.logical_to_mesh_axes(tuple(logical_axes), rules))


def batch_sharding(mesh: Mesh, rules: Rules = DEFAULT_RULES, ndim: int = 2) -> NamedSharding:
    """Sharding of a batch-leading array `[batch, ...]` of rank `ndim`: `batch` split, every other dim whole."""
    return logical_sharding(mesh, ("batch",) + (None,) * (ndim - 1), rules)


@contextlib.contextmanager
def activation_rules(mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Iterator[Mesh]:
    """Makes `mesh` the current mesh and `rules` the logical-axis rules, so that the model's
    `nn.with_logical_constraint` calls become sharding constraints when traced under `jax.jit`.

    Uses `jax.set_mesh`: Flax reads the mesh from `jax.sharding.get_abstract_mesh()`, which the legacy
    `with mesh:` leaves empty in jax 0.10 (the constraints would silently vanish).
    """
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield mesh
