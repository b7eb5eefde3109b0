"""The one table between flmjax param paths and the released checkpoint's tensor names.

Each `Entry` names a flmjax array (canonical, scanned layout), the released name template, and how one slice
of the array becomes one released tensor. The leading `num_indexed` axes of the flmjax array are indexed into
the template (`{0}` = layer, `{1}` = position, ...); what remains is one slice, converted by `layout`:

- `same`: identical shape (embedding tables, norm weights);
- `flat`: the slice flattened (biases: `[heads, head_dim]` <-> `[heads * head_dim]`);
- `linear`: a kernel whose first `linear_in_dims` dims are inputs: flmjax `[*in, *out]` <-> torch `[out, in]`.

The same entries drive import (`to_flmjax`) and export (`to_official`).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Iterator

import numpy as np

from flmjax.config import ModelConfig

SAME, FLAT, LINEAR = "same", "flat", "linear"


@dataclasses.dataclass(frozen=True)
class Entry:
    path: tuple[str, ...]
    official: str
    layout: str = SAME
    num_indexed: int = 0
    linear_in_dims: int = 1

    def official_names(self, flmjax_shape: tuple[int, ...]) -> Iterator[tuple[tuple[int, ...], str]]:
        """(index into the flmjax array, released name) for every slice."""
        for index in itertools.product(*(range(n) for n in flmjax_shape[: self.num_indexed])):
            yield index, self.official.format(*index)

    def official_shape(self, flmjax_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of each released tensor cut from a flmjax array of `flmjax_shape`."""
        return self._slice_to_official_shape(tuple(flmjax_shape[self.num_indexed :]))

    def _slice_to_official_shape(self, slice_shape: tuple[int, ...]) -> tuple[int, ...]:
        if self.layout == FLAT:
            return (math.prod(slice_shape),)
        if self.layout == LINEAR:
            fan_in = math.prod(slice_shape[: self.linear_in_dims])
            return (math.prod(slice_shape[self.linear_in_dims :]), fan_in)
        return tuple(slice_shape)

    def to_official(self, flmjax_slice: np.ndarray) -> np.ndarray:
        if self.layout == LINEAR:
            fan_in = math.prod(flmjax_slice.shape[: self.linear_in_dims])
            return np.ascontiguousarray(flmjax_slice.reshape(fan_in, -1).T)
        return np.ascontiguousarray(flmjax_slice.reshape(self._slice_to_official_shape(flmjax_slice.shape)))

    def to_flmjax(self, official: np.ndarray, slice_shape: tuple[int, ...]) -> np.ndarray:
        if self.layout == LINEAR:
            official = official.T
        return official.reshape(slice_shape)


def name_map(config: ModelConfig) -> list[Entry]:
    """Every param of a model with `config`, in the canonical layout, with its released name."""
    entries = [
        Entry(("embedder", "text"), "model.embed_tokens.text_embeddings.weight"),
        Entry(("embedder", "speak"), "model.embed_tokens.aud_speak_embeddings.{0}.weight", num_indexed=1),
        Entry(("embedder", "listen"), "model.embed_tokens.aud_listen_embeddings.{0}.weight", num_indexed=1),
        Entry(("temporal", "final_norm", "scale"), "model.norm.weight"),
        Entry(("text_head", "kernel"), "lm_head.weight", LINEAR),
    ]

    def layer(path, name, layout=SAME, **kw):
        entries.append(Entry(("temporal", "layers", *path), "model.layers.{0}." + name, layout, 1, **kw))

    layer(("input_norm", "scale"), "input_layernorm.weight")
    layer(("post_attn_norm", "scale"), "post_attention_layernorm.weight")
    for proj in "qkv":
        layer(("attn", f"{proj}_kernel"), f"self_attn.{proj}_proj.weight", LINEAR)
        if config.attention_bias:
            layer(("attn", f"{proj}_bias"), f"self_attn.{proj}_proj.bias", FLAT)
    layer(("attn", "o_kernel"), "self_attn.o_proj.weight", LINEAR, linear_in_dims=2)
    if config.o_proj_bias:
        layer(("attn", "o_bias"), "self_attn.o_proj.bias", FLAT)
    for proj in ("gate", "up", "down"):
        layer(("mlp", f"{proj}_kernel"), f"mlp.{proj}_proj.weight", LINEAR)
        if config.mlp_bias:
            layer(("mlp", f"{proj}_bias"), f"mlp.{proj}_proj.bias", FLAT)

    depth = "aud_output_layers."
    entries += [
        Entry(("depth", "linear_in"), depth + "linear_in.weight", LINEAR),
        Entry(("depth", "token_embed"), depth + "transformer.wtes.{0}.weight", num_indexed=1),
        Entry(("depth", "pos_embed"), depth + "transformer.wpe.weight"),
        Entry(("depth", "heads"), depth + "lm_heads.{0}.weight", LINEAR, num_indexed=1),
    ]
    norm_has_bias = not config.depth_rmsnorm and config.depth_bias

    def norm(path, name, **kw):
        entries.append(Entry((*path, "scale"), name + ".weight", **kw))
        if norm_has_bias:
            entries.append(Entry((*path, "bias"), name + ".bias", **kw))

    norm(("depth", "final_norm"), depth + "transformer.ln_f")
    block = depth + "transformer.h.{0}."

    def block_entry(path, name, layout=SAME, num_indexed=1, **kw):
        entries.append(Entry(("depth", "blocks", *path), block + name, layout, num_indexed, **kw))

    norm(("depth", "blocks", "attn_norm"), block + "ln_1", num_indexed=1)
    norm(("depth", "blocks", "mlp_norm"), block + "ln_2", num_indexed=1)
    block_entry(("attn", "qkv_kernel"), "attn.c_attn.weight", LINEAR)
    block_entry(("attn", "out_kernel"), "attn.c_proj.weight", LINEAR, linear_in_dims=2)
    if config.depth_bias:
        block_entry(("attn", "qkv_bias"), "attn.c_attn.bias", FLAT)
        block_entry(("attn", "out_bias"), "attn.c_proj.bias", FLAT)
    mlp, mlp_indexed = ("mlps.{1}.", 2) if config.depth_per_position_mlp else ("mlp.", 1)
    projections = (
        (("gate", "gate_proj"), ("up", "up_proj"), ("down", "down_proj"))
        if config.depth_swiglu
        else (("fc", "c_fc"), ("down", "c_proj"))
    )
    for ours, theirs in projections:
        block_entry(("mlp", f"{ours}_kernel"), f"{mlp}{theirs}.weight", LINEAR, mlp_indexed)
        if config.depth_bias:
            block_entry(("mlp", f"{ours}_bias"), f"{mlp}{theirs}.bias", FLAT, mlp_indexed)
    return entries
