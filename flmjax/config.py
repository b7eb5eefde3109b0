"""The FLM-Audio model config and its exchange with the released `config.json`.

`ModelConfig` holds every field the released loader reads (REFERENCE.md section 5), the depth ("DepthGPT")
config, the special token ids, and flmjax's own execution settings (dtypes, layer scanning, remat policy),
which never reach `config.json`. It is a frozen, hashable dataclass, so it can be a static argument of
`jax.jit`. The named configs (`tiny`, `small`, `flm_audio_7b`) are in `flmjax.presets`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

import jax.numpy as jnp

from flmjax.errors import UserError

# Activations the released `hidden_act` may name (transformers' ACT2FN keys), mapped to flmjax's names.
HIDDEN_ACTS = ("silu", "swish", "gelu", "gelu_new", "gelu_pytorch_tanh", "relu")
# `rope_scaling` types that reduce to plain RoPE in the released code (mrope for text-only positions).
PLAIN_ROPE_SCALING_TYPES = (None, "default", "mrope")
REMAT_POLICIES = (
    "none",  # no rematerialisation: keep every activation
    "full",  # save nothing, recompute the whole layer in the backward pass
    "dots",  # save matmul outputs
    "dots_no_batch",  # save matmul outputs without batch dimensions (weights-stationary)
    "attention",  # save the attention's q, k, v and output; recompute norms and the MLP
)
DTYPES = ("float32", "bfloat16", "float16")
NUM_CODES = 2048  # codes per Mimi codebook; audio ids at or above this are specials
# The sizes of the model, each a positive integer; with `scan_layers` they decide every param's shape.
SIZE_FIELDS = (
    "vocab_size",
    "aud_vocab_size",
    "aud_channel",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "depth_layers",
    "depth_heads",
    "depth_dim",
)

# Fields of `config.json` that are not `ModelConfig` fields but are always written.
_OFFICIAL_CONSTANTS = {"model_type": "FLMAudio", "architectures": ["FLMAudioForCausalLM"]}
# Official top-level fields that map one-to-one onto `ModelConfig` fields of the same name.
_OFFICIAL_PLAIN_FIELDS = (
    "vocab_size",
    "aud_vocab_size",
    "aud_channel",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "hidden_act",
    "max_position_embeddings",
    "rms_norm_eps",
    "rope_theta",
    "attention_bias",
    "disable_att_o_bias",
    "mlp_bias",
    "attention_dropout",
    "tie_word_embeddings",
    "use_mup",
    "input_mult",
    "output_mult",
    "mup_scale_factor",
    "initializer_range",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "torch_dtype",
)
_MM_TOKEN_FIELDS = {
    "text_wait_token_id": "text_wait_id",
    "aud_pad_token_id": "aud_pad_id",
    "aud_emp_token_id": "aud_emp_id",
}
_DEPTH_FIELDS = {
    "n_layer": "depth_layers",
    "n_head": "depth_heads",
    "n_embd": "depth_dim",
    "dropout": "depth_dropout",
    "bias": "depth_bias",
    "use_cmlp": "depth_per_position_mlp",
    "use_rmsnorm": "depth_rmsnorm",
    "use_swiglu": "depth_swiglu",
}
_EXECUTION_FIELDS = ("param_dtype", "dtype", "scan_layers", "remat_policy", "attention_chunk", "scan_unroll")


class ConfigError(UserError, ValueError):
    """A model config that the model cannot be built from; the message names every problem."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """FLM-Audio architecture (released field names where one exists) plus flmjax execution settings."""

    # Temporal transformer (Qwen2-style).
    vocab_size: int = 151668
    aud_vocab_size: int = 2050
    aud_channel: int = 8
    hidden_size: int = 3584
    intermediate_size: int = 18944
    num_hidden_layers: int = 28
    num_attention_heads: int = 28
    num_key_value_heads: int = 4
    head_dim: int = 128
    hidden_act: str = "silu"
    max_position_embeddings: int = 32768
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1e6
    rope_scaling: str | None = None  # JSON text of the released `rope_scaling` dict (kept verbatim)
    attention_bias: bool = True
    disable_att_o_bias: bool = True
    mlp_bias: bool = False
    attention_dropout: float = 0.0
    tie_word_embeddings: bool = False
    use_mup: bool = False
    input_mult: float = 1.0
    output_mult: float = 1.0
    mup_scale_factor: float = 1.0
    initializer_range: float = 0.02
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    torch_dtype: str = "bfloat16"
    # Special ids (`mm_token_info`).
    text_wait_id: int = 151665
    aud_pad_id: int = 2048
    aud_emp_id: int = 2049
    # Depth transformer (`aud_depthgpt`).
    depth_layers: int = 6
    depth_heads: int = 16
    depth_dim: int = 1024
    depth_dropout: float = 0.0
    depth_bias: bool = False
    depth_per_position_mlp: bool = True
    depth_rmsnorm: bool = True
    depth_swiglu: bool = True
    # Fields of config.json flmjax does not use, kept so that a round trip loses nothing: JSON text of a dict.
    extra_official: str = "{}"
    # flmjax execution settings (never written to config.json).
    param_dtype: str = "float32"
    dtype: str = "float32"  # compute dtype of activations and matmuls
    scan_layers: bool = True  # temporal layers under nn.scan (params stacked on a leading `layers` axis)
    remat_policy: str = "none"
    # Queries per block of the full-sequence (training) attention: each block attends only to the keys at or
    # before its last position and is rematerialised, so no [length, length] scores outlive one block.
    # 0: one block (dense). Same numbers either way, up to float32 summation order.
    attention_chunk: int = 0
    # Temporal layers per iteration of the scanned layer loop (it must divide num_hidden_layers). Only the
    # ahead-of-time estimates use 2, to see one layer's cost: XLA's cost analysis counts a loop body once.
    scan_unroll: int = 1

    def __post_init__(self):
        self.validate()

    # ------------------------------------------------------------------ derived sizes
    @property
    def num_kv_groups(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    @property
    def depth_head_dim(self) -> int:
        return self.depth_dim // self.depth_heads

    @property
    def depth_mlp_dim(self) -> int:
        """Inner width of the depth MLP: `int(8 D / 3)` for SwiGLU (as released), `4 D` for GELU."""
        return int(8 * self.depth_dim / 3) if self.depth_swiglu else 4 * self.depth_dim

    @property
    def o_proj_bias(self) -> bool:
        return self.attention_bias and not self.disable_att_o_bias

    @property
    def text_logit_scale(self) -> float:
        return self.output_mult / self.mup_scale_factor if self.use_mup else 1.0

    @property
    def embedding_scale(self) -> float:
        return self.input_mult if self.use_mup else 1.0

    @property
    def jnp_param_dtype(self):
        return jnp.dtype(self.param_dtype)

    @property
    def jnp_dtype(self):
        return jnp.dtype(self.dtype)

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        problems = []

        def positive(*names):
            for name in names:
                if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                    problems.append(f"{name} must be a positive integer, got {getattr(self, name)!r}")

        positive(*SIZE_FIELDS)
        if problems:
            raise ConfigError("invalid ModelConfig:\n  " + "\n  ".join(problems))
        if self.num_attention_heads % self.num_key_value_heads:
            problems.append(
                f"num_attention_heads ({self.num_attention_heads}) is not divisible by "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.hidden_size % self.num_attention_heads:
            problems.append(
                f"hidden_size ({self.hidden_size}) is not divisible by num_attention_heads ({self.num_attention_heads})"
            )
        if self.head_dim % 2:
            problems.append(f"head_dim ({self.head_dim}) must be even for rotary embeddings")
        if self.depth_dim % self.depth_heads:
            problems.append(f"depth n_embd ({self.depth_dim}) is not divisible by depth n_head ({self.depth_heads})")
        if self.depth_per_position_mlp and self.aud_channel != 8:
            problems.append(
                f"aud_channel is {self.aud_channel}, but per-position depth MLPs (use_cmlp) "
                "exist for exactly 8 codebooks"
            )
        if self.hidden_act not in HIDDEN_ACTS:
            problems.append(f"unknown hidden_act {self.hidden_act!r}; expected one of {HIDDEN_ACTS}")
        if self.aud_vocab_size < NUM_CODES:
            problems.append(f"aud_vocab_size ({self.aud_vocab_size}) is smaller than the codec's {NUM_CODES} codes")
        if not 0 <= self.text_wait_id < self.vocab_size:
            problems.append(
                f"text_wait_token_id {self.text_wait_id} is outside the text vocabulary [0, {self.vocab_size})"
            )
        for name in ("aud_pad_id", "aud_emp_id"):
            if not 0 <= getattr(self, name) < self.aud_vocab_size:
                problems.append(
                    f"{_official_name(name)} {getattr(self, name)} is outside the audio vocabulary "
                    f"[0, {self.aud_vocab_size})"
                )
        if self.aud_pad_id == self.aud_emp_id:
            problems.append(f"aud_pad_token_id and aud_emp_token_id are both {self.aud_pad_id}")
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < self.vocab_size:
                problems.append(f"{name} {value} is outside the text vocabulary [0, {self.vocab_size})")
        if self.tie_word_embeddings:
            problems.append("tie_word_embeddings is true, but the released model has an untied lm_head")
        if self.use_mup and self.mup_scale_factor == 0:
            problems.append("mup_scale_factor is 0 with use_mup on")
        if self.rms_norm_eps <= 0:
            problems.append(f"rms_norm_eps must be positive, got {self.rms_norm_eps}")
        if self.rope_theta <= 0:
            problems.append(f"rope_theta must be positive, got {self.rope_theta}")
        scaling = self.rope_scaling_dict
        scaling_type = None if scaling is None else scaling.get("type", scaling.get("rope_type"))
        if scaling_type not in PLAIN_ROPE_SCALING_TYPES:
            problems.append(
                f"rope_scaling type {scaling_type!r} is not supported (only plain RoPE and "
                "'mrope', which the released model runs as plain RoPE)"
            )
        for name in ("param_dtype", "dtype"):
            if getattr(self, name) not in DTYPES:
                problems.append(f"{name} {getattr(self, name)!r} is not one of {DTYPES}")
        if not isinstance(self.attention_chunk, int) or self.attention_chunk < 0:
            problems.append(f"attention_chunk must be a non-negative integer (0: dense), got {self.attention_chunk!r}")
        if not isinstance(self.scan_unroll, int) or self.scan_unroll < 1 or self.num_hidden_layers % self.scan_unroll:
            problems.append(
                f"scan_unroll must be a positive divisor of num_hidden_layers "
                f"({self.num_hidden_layers}), got {self.scan_unroll!r}"
            )
        if self.remat_policy not in REMAT_POLICIES:
            problems.append(f"unknown remat_policy {self.remat_policy!r}; expected one of {REMAT_POLICIES}")
        if problems:
            raise ConfigError("invalid ModelConfig:\n  " + "\n  ".join(problems))

    @property
    def rope_scaling_dict(self) -> dict | None:
        return None if self.rope_scaling is None else json.loads(self.rope_scaling)

    # ------------------------------------------------------------------ released config.json
    @classmethod
    def from_official(cls, dict_or_path: Mapping[str, Any] | str | os.PathLike, **execution) -> ModelConfig:
        """Builds a config from a released `config.json` (a dict, the file, or its folder).

        `execution` sets flmjax-only fields (`param_dtype`, `dtype`, `scan_layers`, `remat_policy`,
        `attention_chunk`, `scan_unroll`).
        A field the released loader needs that is missing is an error (the released code would silently
        fall back to 7B-sized defaults).
        """
        if isinstance(dict_or_path, Mapping):
            official, source = dict(dict_or_path), "config dict"
        else:
            path = os.fspath(dict_or_path)
            if os.path.isdir(path):
                path = os.path.join(path, "config.json")
            with open(path) as f:
                try:
                    official, source = json.load(f), path
                except ValueError as error:  # JSONDecodeError, UnicodeDecodeError: say which file
                    raise ConfigError(f"{path}: not valid JSON ({error})") from None
            if not isinstance(official, dict):
                raise ConfigError(f"{path}: expected a JSON object, found {type(official).__name__}")
        unknown_execution = set(execution) - set(_EXECUTION_FIELDS)
        if unknown_execution:
            raise ConfigError(
                f"from_official: unknown execution settings {sorted(unknown_execution)}; "
                f"expected some of {_EXECUTION_FIELDS}"
            )
        optional = {
            "pad_token_id",
            "bos_token_id",
            "eos_token_id",
            "torch_dtype",
            "rope_scaling",
            "attention_dropout",
            "initializer_range",
            "tie_word_embeddings",
        }
        required = set(_OFFICIAL_PLAIN_FIELDS) - optional | {"mm_token_info", "aud_depthgpt"}
        missing = sorted(required - set(official))
        missing += [f"mm_token_info.{k}" for k in _MM_TOKEN_FIELDS if k not in official.get("mm_token_info", {})]
        missing += [f"aud_depthgpt.{k}" for k in _DEPTH_FIELDS if k not in official.get("aud_depthgpt", {})]
        if missing:
            raise ConfigError(f"{source} lacks fields the released loader needs: {', '.join(missing)}")
        kwargs = {name: official[name] for name in _OFFICIAL_PLAIN_FIELDS if name in official}
        for name in (
            "rms_norm_eps",
            "rope_theta",
            "input_mult",
            "output_mult",
            "mup_scale_factor",
            "attention_dropout",
            "initializer_range",
        ):
            if name in kwargs:
                kwargs[name] = float(kwargs[name])
        scaling = official.get("rope_scaling")
        kwargs["rope_scaling"] = None if scaling is None else json.dumps(scaling, sort_keys=True)
        kwargs.update({ours: official["mm_token_info"][theirs] for theirs, ours in _MM_TOKEN_FIELDS.items()})
        kwargs.update({ours: official["aud_depthgpt"][theirs] for theirs, ours in _DEPTH_FIELDS.items()})
        kwargs["depth_dropout"] = float(kwargs["depth_dropout"])
        known = set(_OFFICIAL_PLAIN_FIELDS) | {"rope_scaling", "mm_token_info", "aud_depthgpt"}
        extra = {k: v for k, v in official.items() if k not in known}
        for key, expected in _OFFICIAL_CONSTANTS.items():
            if extra.get(key, expected) != expected:
                raise ConfigError(f"{source}: {key} is {extra[key]!r}, expected {expected!r}")
            extra.pop(key, None)
        kwargs["extra_official"] = json.dumps(extra, sort_keys=True)
        return cls(**kwargs, **execution)

    def to_official(self) -> dict[str, Any]:
        """The released `config.json` as a dict: every field the released loader needs, plus kept extras."""
        official = dict(_OFFICIAL_CONSTANTS)
        official.update(json.loads(self.extra_official))
        official.update({name: getattr(self, name) for name in _OFFICIAL_PLAIN_FIELDS})
        official["rope_scaling"] = self.rope_scaling_dict
        official["mm_token_info"] = {theirs: getattr(self, ours) for theirs, ours in _MM_TOKEN_FIELDS.items()}
        official["aud_depthgpt"] = {theirs: getattr(self, ours) for theirs, ours in _DEPTH_FIELDS.items()}
        return dict(sorted(official.items()))

    def execution_settings(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _EXECUTION_FIELDS}


def _official_name(field: str) -> str:
    return {ours: theirs for theirs, ours in _MM_TOKEN_FIELDS.items()}.get(field, field)
