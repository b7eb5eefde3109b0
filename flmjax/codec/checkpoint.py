"""Loads the released Mimi checkpoint (`tokenizer-e351c8d8-checkpoint125.safetensors` naming) into params.

`name_map` is the one table between the file and the param tree: each `Entry` names the released tensors it
reads, their torch shapes, where the result goes, and the layout change:

- conv `[out, in/groups, K]` -> `[K, in/groups, out]`; transposed conv `[in, out/groups, K]` -> `[in, K, out/groups]`
- linear `[out, in]` -> `[in, out]`; k=1 projection conv `[out, in, 1]` -> `[in, out]`
- attention `in_proj_weight [3d, d]` (rows q;k;v, each heads-major) -> `[d, 3, heads, head_dim]`;
  `out_proj.weight [d, d]` -> `[heads, head_dim, d]`
- codebook `embedding_sum [bins, dim]`, `cluster_usage [bins]`, `_initialized [1]` -> centroids
  `embedding_sum / max(cluster_usage, 1e-5)[:, None]`

The param paths are the ones the `Mimi` Linen module declares.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import re
from typing import Callable

import jax.numpy as jnp
import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file

from flmjax.codec.config import MimiConfig
from flmjax.errors import UserError

CODEBOOK_EPSILON = 1e-5  # moshi `EuclideanCodebook` epsilon


class MimiCheckpointError(UserError, ValueError):
    """A checkpoint that does not fit the config; the message lists every missing, unexpected or mis-shaped
    tensor."""


@dataclasses.dataclass(frozen=True)
class Entry:
    """Released tensors `keys` (torch shapes `shapes`) -> `convert(*tensors)` at param path `path`."""

    keys: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    path: tuple
    convert: Callable[..., np.ndarray]


def _conv(w):
    return w.transpose(2, 1, 0)


def _conv_transpose(w):
    return w.transpose(0, 2, 1)


def _linear(w):
    return w.T


def _projection(w):
    return w[:, :, 0].T


def _same(w):
    return w


def _qkv(heads: int):
    def convert(w):
        d = w.shape[1]
        return w.reshape(3, heads, d // heads, d).transpose(3, 0, 1, 2)

    return convert


def _attn_out(heads: int):
    def convert(w):
        d = w.shape[0]
        return w.reshape(d, heads, d // heads).transpose(1, 2, 0)

    return convert


def _centroids(embedding_sum, cluster_usage, initialized):
    del initialized  # the released file has 1 everywhere; moshi's eval path reads the buffers regardless
    return embedding_sum / np.maximum(cluster_usage, CODEBOOK_EPSILON)[:, None]


def _codebook_keys(half: str, level: int) -> tuple[str, ...]:
    prefix = f"quantizer.rvq_{half}.vq.layers.{level}._codebook"
    return tuple(f"{prefix}.{name}" for name in ("embedding_sum", "cluster_usage", "_initialized"))


# Codebooks past the ones in use: accepted and ignored (the released file holds 32, Moshi uses 8).
_EXTRA_CODEBOOK = re.compile(
    r"quantizer\.rvq_rest\.vq\.layers\.(\d+)\._codebook\.(embedding_sum|cluster_usage|"
    r"_initialized)"
)


@dataclasses.dataclass(frozen=True)
class SEANetConv:
    """One conv of a SEANet: its param path (under `encoder` / `decoder`), name in moshi's `model` Sequential
    and sizes."""

    path: tuple[str, ...]
    torch_name: str
    channels_in: int
    channels_out: int
    kernel_size: int
    transposed: bool = False


def seanet_convs(config: MimiConfig, part: str) -> list[SEANetConv]:
    """Every conv of the `encoder` or `decoder` SEANet (see `seanet`), in moshi's order: a residual block
    takes one `model` index, a resampling conv two (the ELU before it, then the conv)."""
    top = config.n_filters * 2 ** len(config.ratios)  # channels between the SEANet and `dimension`
    convs, index = [], 1

    def residuals(block: int, channels: int):
        nonlocal index
        hidden = channels // config.compress
        for j in range(config.n_residual_layers):
            path, name = (f"blocks_{block}", f"residual_{j}"), f"model.{index}.block"
            convs.append(
                SEANetConv(path + ("conv_a",), f"{name}.1.conv.conv", channels, hidden, config.residual_kernel_size)
            )
            convs.append(SEANetConv(path + ("conv_b",), f"{name}.3.conv.conv", hidden, channels, 1))
            index += 1

    if part == "encoder":
        channels = config.n_filters
        convs.append(SEANetConv(("conv_in",), "model.0.conv.conv", 1, channels, config.kernel_size))
        for block, ratio in enumerate(reversed(config.ratios)):
            residuals(block, channels)
            convs.append(
                SEANetConv(
                    (f"blocks_{block}", "down"), f"model.{index + 1}.conv.conv", channels, 2 * channels, 2 * ratio
                )
            )
            channels, index = 2 * channels, index + 2
        convs.append(
            SEANetConv(
                ("conv_out",), f"model.{index + 1}.conv.conv", channels, config.dimension, config.last_kernel_size
            )
        )
    else:
        channels = top
        convs.append(SEANetConv(("conv_in",), "model.0.conv.conv", config.dimension, channels, config.kernel_size))
        for block, ratio in enumerate(config.ratios):
            convs.append(
                SEANetConv(
                    (f"blocks_{block}", "up"),
                    f"model.{index + 1}.convtr.convtr",
                    channels,
                    channels // 2,
                    2 * ratio,
                    transposed=True,
                )
            )
            channels, index = channels // 2, index + 2
            residuals(block, channels)
        convs.append(SEANetConv(("conv_out",), f"model.{index + 1}.conv.conv", channels, 1, config.last_kernel_size))
    return convs


def name_map(config: MimiConfig, num_codebooks: int = 8) -> list[Entry]:
    """Every released tensor the params are built from, for `num_codebooks` codebooks in use."""
    entries: list[Entry] = []
    d, ffn, heads = config.dimension, config.dim_feedforward, config.num_heads

    for part in ("encoder", "decoder"):
        for conv in seanet_convs(config, part):
            name, path = f"{part}.{conv.torch_name}", (part, *conv.path)
            if conv.transposed:
                entries.append(
                    Entry(
                        (f"{name}.weight",),
                        ((conv.channels_in, conv.channels_out, conv.kernel_size),),
                        path + ("kernel",),
                        _conv_transpose,
                    )
                )
            else:
                entries.append(
                    Entry(
                        (f"{name}.weight",),
                        ((conv.channels_out, conv.channels_in, conv.kernel_size),),
                        path + ("kernel",),
                        _conv,
                    )
                )
            entries.append(Entry((f"{name}.bias",), ((conv.channels_out,),), path + ("bias",), _same))

    for part in ("encoder_transformer", "decoder_transformer"):
        for i in range(config.num_layers):
            name = f"{part}.transformer.layers.{i}"
            table = [
                ("norm1.weight", (d,), ("norm1", "scale"), _same),
                ("norm1.bias", (d,), ("norm1", "bias"), _same),
                ("self_attn.in_proj_weight", (3 * d, d), ("attn", "qkv"), _qkv(heads)),
                ("self_attn.out_proj.weight", (d, d), ("attn", "out"), _attn_out(heads)),
                ("layer_scale_1.scale", (d,), ("layer_scale_1",), _same),
                ("norm2.weight", (d,), ("norm2", "scale"), _same),
                ("norm2.bias", (d,), ("norm2", "bias"), _same),
                ("linear1.weight", (ffn, d), ("mlp", "fc1"), _linear),
                ("linear2.weight", (d, ffn), ("mlp", "fc2"), _linear),
                ("layer_scale_2.scale", (d,), ("layer_scale_2",), _same),
            ]
            entries += [
                Entry((f"{name}.{key}",), (shape,), (part, f"layers_{i}", *path), convert)
                for key, shape, path, convert in table
            ]

    kernel = 2 * config.downsample_stride
    entries.append(Entry(("downsample.conv.conv.conv.weight",), ((d, d, kernel),), ("downsample", "kernel"), _conv))
    # Depthwise (groups = d): moshi's `upsample_channel_wise_bug=True`.
    entries.append(
        Entry(("upsample.convtr.convtr.convtr.weight",), ((d, 1, kernel),), ("upsample", "kernel"), _conv_transpose)
    )

    dim, bins = config.quantizer_dimension, config.bins
    for half, levels in (("first", 1), ("rest", num_codebooks - 1)):
        name, path = f"quantizer.rvq_{half}", ("quantizer", half)
        entries.append(Entry((f"{name}.input_proj.weight",), ((dim, d, 1),), path + ("input_proj",), _projection))
        entries.append(Entry((f"{name}.output_proj.weight",), ((d, dim, 1),), path + ("output_proj",), _projection))
        entries += [
            Entry(_codebook_keys(half, level), ((bins, dim), (bins,), (1,)), path + (f"codebook_{level}",), _centroids)
            for level in range(levels)
        ]
    return entries


def checkpoint_file(path: str | os.PathLike) -> pathlib.Path:
    """`path` itself, or `model.safetensors` (else the only `*.safetensors`) in the folder `path`."""
    path = pathlib.Path(path)
    if not path.is_dir():
        return path
    if (path / "model.safetensors").exists():
        return path / "model.safetensors"
    candidates = sorted(path.glob("*.safetensors"))
    if len(candidates) != 1:
        raise MimiCheckpointError(
            f"{path}: expected model.safetensors or exactly one *.safetensors file, found "
            f"{[c.name for c in candidates]}"
        )
    return candidates[0]


def params_from_tensors(tensors: dict[str, np.ndarray], config: MimiConfig, num_codebooks: int = 8) -> dict:
    """Params from released tensors (a name -> array dict); raises `MimiCheckpointError` listing every problem."""
    if not 1 <= num_codebooks <= config.n_q:
        raise MimiCheckpointError(f"num_codebooks must be in [1, n_q={config.n_q}], got {num_codebooks}")
    entries = name_map(config, num_codebooks)
    expected = {key for entry in entries for key in entry.keys}
    missing, misshaped = [], []
    for entry in entries:
        for key, shape in zip(entry.keys, entry.shapes):
            if key not in tensors:
                missing.append(f"{key} (expected shape {list(shape)})")
            elif tuple(tensors[key].shape) != shape:
                misshaped.append(f"{key}: expected shape {list(shape)}, found {list(tensors[key].shape)}")
    unexpected = []
    for key in sorted(set(tensors) - expected):
        extra = _EXTRA_CODEBOOK.fullmatch(key)
        if extra is None or int(extra.group(1)) < num_codebooks - 1:
            unexpected.append(f"{key} (shape {list(tensors[key].shape)})")
    if missing or misshaped or unexpected:
        lines = (
            [f"missing: {line}" for line in missing]
            + [f"wrong shape: {line}" for line in misshaped]
            + [f"unexpected: {line}" for line in unexpected]
        )
        raise MimiCheckpointError(
            f"checkpoint does not match the Mimi config ({len(lines)} problems):\n  " + "\n  ".join(lines)
        )
    params: dict = {}
    for entry in entries:
        value = entry.convert(*(np.asarray(tensors[key], np.float32) for key in entry.keys))
        set_path(params, entry.path, jnp.asarray(np.ascontiguousarray(value)))
    return params


def get_path(tree, path: tuple):
    for key in path:
        tree = tree[key]
    return tree


def set_path(tree: dict, path: tuple[str, ...], value) -> None:
    """Sets `tree[path]`, creating the dicts on the way."""
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def load_mimi(path: str | os.PathLike, config: MimiConfig, num_codebooks: int = 8) -> dict:
    """Params for `mimi.encode` / `decode` from a released-format safetensors file (or a folder holding one).

    Codebooks past `num_codebooks` (the released file has 32) are ignored; any missing, unexpected or
    mis-shaped tensor raises `MimiCheckpointError` naming all of them.
    """
    file = checkpoint_file(path)
    try:
        tensors = load_file(file)
    except SafetensorError as error:
        raise MimiCheckpointError(f"{file}: not a readable safetensors file ({error})") from None
    return params_from_tensors(tensors, config, num_codebooks)


CONFIG_FILE = "mimi_config.json"
WEIGHTS_FILE = "model.safetensors"


def _weights_and_config_paths(path: str) -> tuple[str, str]:
    if os.path.isdir(path):
        return os.path.join(path, WEIGHTS_FILE), os.path.join(path, CONFIG_FILE)
    return path, os.path.join(os.path.dirname(path), CONFIG_FILE)


def load_codec(path: str | os.PathLike):
    """`(MimiConfig, params)` of a Mimi folder (model.safetensors, and mimi_config.json if there: else the
    released sizes) or of a safetensors file (mimi_config.json beside it, if any)."""
    weights, config_path = _weights_and_config_paths(os.fspath(path))
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"no Mimi weights at {weights}")
    config = MimiConfig.from_json(config_path) if os.path.isfile(config_path) else MimiConfig.released()
    return config, load_mimi(weights, config)


def codec_fingerprint(path: str | os.PathLike) -> str:
    """sha256 of the weights and the config file: identifies the codes a Mimi folder makes."""
    weights, config_path = _weights_and_config_paths(os.fspath(path))
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"no Mimi weights at {weights}")
    digest = hashlib.sha256()
    for file in (weights, config_path):
        if os.path.isfile(file):
            with open(file, "rb") as f:
                for block in iter(lambda: f.read(1 << 22), b""):
                    digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()
