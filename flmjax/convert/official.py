"""Reading and writing checkpoints in the released PyTorch format (config.json + safetensors), torch-free."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
from typing import Any

import jax
import ml_dtypes
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from flmjax import files
from flmjax import model as flm_model
from flmjax.config import ModelConfig
from flmjax.convert.name_map import Entry, name_map
from flmjax.errors import UserError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
CONFIG_FILE = "config.json"
EXPORT_FILE = re.compile(r"^(config\.json|model\.safetensors(\.index\.json)?|model-\d{5}-of-\d{5}\.safetensors)$")
DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3
_FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}
_EXPORT_DTYPES = {"bfloat16": ml_dtypes.bfloat16, "float32": np.float32, "float16": np.float16}


class CheckpointError(UserError, ValueError):
    """A checkpoint that does not match its config; the message lists every offending tensor."""


@functools.lru_cache(maxsize=32)
def _canonical_shapes(config: ModelConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
    """flmjax param path -> shape in the canonical (scanned) layout; cached: do not mutate."""
    abstract = flm_model.abstract_params(config.replace(scan_layers=True))
    return {
        tuple(k.key for k in path): tuple(leaf.shape)
        for path, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]
    }


def official_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every released tensor name a checkpoint of `config` holds, with its shape."""
    shapes = _canonical_shapes(config)
    return {
        name: entry.official_shape(shapes[entry.path])
        for entry in name_map(config)
        for _, name in entry.official_names(shapes[entry.path])
    }


def _tensor_files(path: str) -> list[str]:
    index = os.path.join(path, INDEX_FILE)
    if os.path.exists(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        return sorted(set(os.path.join(path, shard) for shard in weight_map.values()))
    single = os.path.join(path, SINGLE_FILE)
    if os.path.exists(single):
        return [single]
    raise FileNotFoundError(f"{path} holds neither {SINGLE_FILE} nor {INDEX_FILE}")


def _open_tensors(file: str):
    """`safe_open(file)`, with a truncated or damaged file as a `CheckpointError` naming it."""
    try:
        return safe_open(file, framework="numpy")
    except SafetensorError as error:
        raise CheckpointError(f"{file}: not a readable safetensors file ({error})") from None


def _mismatch_report(expected: dict[str, tuple], found: dict[str, tuple], dtypes: dict[str, str]) -> list[str]:
    problems = [f"missing {name}: expected shape {list(expected[name])}" for name in sorted(set(expected) - set(found))]
    problems += [f"unexpected {name}: found shape {list(found[name])}" for name in sorted(set(found) - set(expected))]
    problems += [
        f"wrong shape {name}: expected {list(expected[name])}, found {list(found[name])}"
        for name in sorted(set(expected) & set(found))
        if tuple(expected[name]) != tuple(found[name])
    ]
    problems += [
        f"not a float tensor {name}: dtype {dtypes[name]}"
        for name in sorted(dtypes)
        if name in expected and dtypes[name] not in _FLOAT_DTYPES
    ]
    return problems


def load_official(path: str | os.PathLike, **execution: Any) -> tuple[ModelConfig, dict]:
    """Reads a released-format folder -> (ModelConfig, params as host numpy arrays of `param_dtype`).

    Accepts `model.safetensors` or shards with `model.safetensors.index.json`, in any float dtype.
    `execution` sets flmjax-only config fields (`param_dtype`, `dtype`, `scan_layers`, `remat_policy`); the
    params come in the layout `scan_layers` asks for. Raises `CheckpointError` listing every missing,
    unexpected or wrongly shaped tensor.
    """
    path = os.fspath(path)
    config = ModelConfig.from_official(path, **execution)
    tensor_files = _tensor_files(path)
    found, dtypes, location = {}, {}, {}
    for file in tensor_files:
        with _open_tensors(file) as f:
            for name in f.keys():
                tensor_slice = f.get_slice(name)
                found[name], dtypes[name], location[name] = (
                    tuple(tensor_slice.get_shape()),
                    tensor_slice.get_dtype(),
                    file,
                )
    expected = official_shapes(config)
    problems = _mismatch_report(expected, found, dtypes)
    if problems:
        raise CheckpointError(
            f"{path} does not match its config.json ({len(problems)} problems):\n  " + "\n  ".join(problems)
        )

    param_dtype = np.dtype(config.jnp_param_dtype)
    shapes = _canonical_shapes(config)
    params: dict = {}
    with contextlib.ExitStack() as stack:
        handles = {file: stack.enter_context(_open_tensors(file)) for file in tensor_files}
        for entry in name_map(config):
            shape = shapes[entry.path]
            array = np.empty(shape, param_dtype)
            for index, name in entry.official_names(shape):
                tensor = handles[location[name]].get_tensor(name)
                array[index] = entry.to_flmjax(tensor, shape[entry.num_indexed :]).astype(param_dtype)
            _set_path(params, entry.path, array)
    if not config.scan_layers:
        params = jax.tree.map(np.asarray, flm_model.unstack_layers(params, config.num_hidden_layers))
    return config, params


def _set_path(tree: dict, path: tuple[str, ...], value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _get_path(tree: dict, path: tuple[str, ...]):
    for key in path:
        tree = tree[key]
    return tree


def _plan_shards(sizes: list[tuple[str, int]], max_shard_bytes: int) -> list[list[str]]:
    shards, current, current_bytes = [], [], 0
    for name, size in sizes:
        if current and current_bytes + size > max_shard_bytes:
            shards.append(current)
            current, current_bytes = [], 0
        current.append(name)
        current_bytes += size
    return shards + [current] if current else shards


def check_export_target(path: str | os.PathLike, dtype: str, overwrite: bool) -> None:
    """What `save_official` refuses, checked up front: an unknown dtype, a file, a non-empty folder (without
    `overwrite`), and, even with it, a folder that holds anything but a previous export (a workdir, a parent)."""
    path = os.fspath(path)
    if dtype not in _EXPORT_DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {sorted(_EXPORT_DTYPES)}")
    if os.path.isfile(path):
        raise FileExistsError(f"{path} is a file, not a checkpoint folder")
    entries = sorted(os.listdir(path)) if os.path.isdir(path) else []
    if entries and not overwrite:
        raise FileExistsError(f"{path} is not empty; pass overwrite=True to replace it")
    others = [entry for entry in entries if not EXPORT_FILE.match(entry)]
    if others:
        shown = ", ".join(others[:5]) + (f", ... ({len(others)} in all)" if len(others) > 5 else "")
        raise FileExistsError(
            f"{path} holds more than a previous export ({shown}); overwrite replaces only an "
            "export folder: choose an empty or new folder"
        )


def save_official(
    path: str | os.PathLike,
    config: ModelConfig,
    params: dict,
    dtype: str = "bfloat16",
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    overwrite: bool = False,
) -> list[str]:
    """Writes `config.json` and safetensors in the released format; returns the files written.

    `params` in either layer layout. Tensors are cast to `dtype` ("bfloat16", "float16" or "float32") and
    split into shards of at most `max_shard_bytes` (one tensor larger than that gets a shard of its own) with
    an index; a checkpoint that fits is one `model.safetensors`. A non-empty `path` is refused unless
    `overwrite`; the folder is written beside it and swapped in whole, so a failure leaves the old one intact.
    """
    path = os.fspath(path)
    check_export_target(path, dtype, overwrite)
    if "layers" not in params.get("temporal", {}):
        params = flm_model.stack_layers(params)
    shapes = _canonical_shapes(config)
    found = {
        path_: tuple(np.shape(leaf))
        for path_, leaf in (
            (tuple(k.key for k in p), leaf) for p, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
        )
    }
    problems = _mismatch_report(
        {"/".join(p): s for p, s in shapes.items()}, {"/".join(p): s for p, s in found.items()}, {}
    )
    if problems:
        raise CheckpointError(f"params do not match the config ({len(problems)} problems):\n  " + "\n  ".join(problems))

    np_dtype = np.dtype(_EXPORT_DTYPES[dtype])
    entries = name_map(config)
    slices: dict[str, tuple[Entry, tuple[int, ...]]] = {}
    for entry in entries:
        for index, name in entry.official_names(shapes[entry.path]):
            slices[name] = (entry, index)
    names = sorted(slices)
    official = official_shapes(config)
    sizes = [(name, int(np.prod(official[name])) * np_dtype.itemsize) for name in names]
    shards = _plan_shards(sizes, max_shard_bytes)
    host_leaves: dict[tuple[str, ...], np.ndarray] = {}

    def tensor(name: str) -> np.ndarray:
        entry, index = slices[name]
        if entry.path not in host_leaves:
            host_leaves[entry.path] = np.asarray(jax.device_get(_get_path(params, entry.path)))
        return entry.to_official(host_leaves[entry.path][index].astype(np_dtype))

    files.remove_leftovers(path)  # of a killed export (one export per folder at a time)
    written = files.replace_folder(
        path, lambda staging: _write_folder(staging, config.replace(torch_dtype=dtype), shards, sizes, tensor)
    )
    return [os.path.join(path, name) for name in written]


def _write_folder(
    folder: str, config: ModelConfig, shards: list[list[str]], sizes: list[tuple[str, int]], tensor
) -> list[str]:
    with open(os.path.join(folder, CONFIG_FILE), "w") as f:
        json.dump(config.to_official(), f, indent=2, sort_keys=True)
    written = [CONFIG_FILE]
    shard_names = (
        [SINGLE_FILE]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    for shard_name, shard in zip(shard_names, shards):
        save_file({name: tensor(name) for name in shard}, os.path.join(folder, shard_name), metadata={"format": "pt"})
        files.follow_umask(os.path.join(folder, shard_name))
        written.append(shard_name)
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(size for _, size in sizes)},
            "weight_map": {name: shard_name for shard_name, shard in zip(shard_names, shards) for name in shard},
        }
        with open(os.path.join(folder, INDEX_FILE), "w") as f:
            json.dump(index, f, indent=2, sort_keys=True)
        written.append(INDEX_FILE)
    return written
