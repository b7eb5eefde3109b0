"""The Mimi codec config: the released sizes, and the `mimi_config.json` that moshi's `get_mimi` takes.

`MimiConfig` is a frozen, hashable dataclass (a static argument of `jax.jit`). It only describes what this
port implements: causal SEANet with constant padding and true skips, the learnt conv resamplers (depthwise
upsample, moshi's `upsample_channel_wise_bug=True`), a pre-norm LayerNorm/GELU transformer with RoPE and
layer scale whose width equals the SEANet dimension, and a split RVQ with one semantic codebook. Anything
else in a JSON file is rejected by name.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Mapping

from flmjax.errors import UserError

PRECISIONS = ("default", "high", "highest")


class MimiConfigError(UserError, ValueError):
    """A Mimi config this port cannot run; the message names every offending field."""


@dataclasses.dataclass(frozen=True)
class MimiConfig:
    """Mimi architecture. Defaults are the released codec (`MimiConfig.released()`)."""

    sample_rate: int = 24000
    frame_rate: float = 12.5
    # SEANet encoder / decoder (the encoder applies `ratios` reversed).
    dimension: int = 512
    n_filters: int = 64
    ratios: tuple[int, ...] = (8, 6, 5, 4)
    kernel_size: int = 7
    residual_kernel_size: int = 3
    last_kernel_size: int = 3
    compress: int = 2
    n_residual_layers: int = 1
    dilation_base: int = 2
    # Encoder and decoder transformers (same shape; d_model == dimension, so no projections).
    num_heads: int = 8
    num_layers: int = 8
    dim_feedforward: int = 2048
    context: int = 250  # attention window in encoder steps (25 Hz)
    max_period: float = 10000.0
    layer_norm_eps: float = 1e-5
    # Split residual VQ: 1 semantic codebook (rvq_first) + n_q - 1 acoustic ones (rvq_rest).
    quantizer_dimension: int = 256
    bins: int = 2048
    n_q: int = 32  # codebooks stored in the checkpoint; `load_mimi` keeps the first `num_codebooks`
    # Execution: matmul/conv precision. "highest" keeps float32 exact on TPU/GPU (TF32 / bf16 passes would
    # move latents by ~1e-3 and flip codes); on CPU all three are the same.
    precision: str = "highest"

    def __post_init__(self):
        problems = []
        if self.precision not in PRECISIONS:
            problems.append(f"precision: {self.precision!r} is not one of {PRECISIONS}")
        if self.dimension % self.num_heads:
            problems.append(f"num_heads: {self.num_heads} does not divide d_model {self.dimension}")
        if (self.dimension // self.num_heads) % 2:
            problems.append("num_heads: head_dim must be even for RoPE")
        if self.n_filters % self.compress:
            problems.append(f"compress: {self.compress} does not divide n_filters {self.n_filters}")
        if self.sample_rate % self.hop_length:
            problems.append(f"ratios: their product {self.hop_length} does not divide sample_rate")
        ratio = self.encoder_frame_rate / self.frame_rate
        if ratio != int(ratio) or int(ratio) < 1:
            problems.append(
                f"frame_rate: {self.frame_rate} Hz is not the {self.encoder_frame_rate} Hz encoder "
                "rate divided by an integer"
            )
        if not 1 <= self.n_q:
            problems.append(f"n_q: must be >= 1, got {self.n_q}")
        if problems:
            raise MimiConfigError("unsupported Mimi config:\n  " + "\n  ".join(problems))

    @classmethod
    def released(cls) -> "MimiConfig":
        """The released Mimi (`tokenizer-e351c8d8-checkpoint125.safetensors`, n_q 32, 8 codebooks used)."""
        return cls()

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "MimiConfig":
        """Reads a `mimi_config.json` (its `mimi_config` entry, or a bare `get_mimi` config dict)."""
        with open(path) as f:
            try:
                data = json.load(f)
            except ValueError as error:  # JSONDecodeError, UnicodeDecodeError: say which file
                raise MimiConfigError(f"{path}: not valid JSON ({error})") from None
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "MimiConfig":
        return _from_dict(data)

    # ------------------------------------------------------------------ derived sizes
    @property
    def hop_length(self) -> int:
        """Audio samples per encoder step (product of the ratios): 960."""
        return math.prod(self.ratios)

    @property
    def encoder_frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    @property
    def downsample_stride(self) -> int:
        """Encoder steps per code frame: 2."""
        return int(round(self.encoder_frame_rate / self.frame_rate))

    @property
    def frame_size(self) -> int:
        """Audio samples per code frame: 1920."""
        return self.hop_length * self.downsample_stride

    @property
    def head_dim(self) -> int:
        return self.dimension // self.num_heads


# ---------------------------------------------------------------------- JSON reading
# Settings this port implements, as the moshi constructor spells them; anything else is an error.
_SEANET_FIXED = {
    "channels": 1,
    "causal": True,
    "activation": "ELU",
    "norm": "none",
    "pad_mode": "constant",
    "true_skip": True,
}
_SEANET_FIELDS = {
    "dimension": "dimension",
    "n_filters": "n_filters",
    "ratios": "ratios",
    "kernel_size": "kernel_size",
    "residual_kernel_size": "residual_kernel_size",
    "last_kernel_size": "last_kernel_size",
    "compress": "compress",
    "n_residual_layers": "n_residual_layers",
    "dilation_base": "dilation_base",
}
_SEANET_IGNORED = ("disable_norm_outer_blocks",)  # only matters with a norm, and norm must be "none"
_TRANSFORMER_FIXED = {
    "causal": True,
    "conv_layout": True,
    "gating": "none",
    "norm": "layer_norm",
    "positional_embedding": "rope",
}
_TRANSFORMER_FIELDS = {
    "num_heads": "num_heads",
    "num_layers": "num_layers",
    "dim_feedforward": "dim_feedforward",
    "context": "context",
    "max_period": "max_period",
}
_QUANTIZER_FIELDS = {"dimension": "quantizer_dimension", "bins": "bins", "n_q": "n_q"}
_MODEL_FIXED = {"channels": 1, "causal": True, "resample_method": "conv", "upsample_channel_wise_bug": True}


def _from_dict(data: Mapping[str, Any]) -> MimiConfig:
    mimi = data.get("mimi_config", data)
    problems: list[str] = []
    kwargs: dict[str, Any] = {}

    def check_fixed(section: str, values: Mapping[str, Any], fixed: Mapping[str, Any]):
        for key, want in fixed.items():
            if key in values and values[key] != want:
                problems.append(f"{section}.{key}: {values[key]!r} is not supported (only {want!r})")

    def take(section: str, values: Mapping[str, Any], fields: Mapping[str, str], known: tuple[str, ...]):
        for key in values:
            if key not in fields and key not in known:
                problems.append(f"{section}.{key}: unknown setting")
        for key, field in fields.items():
            if key in values:
                kwargs[field] = tuple(values[key]) if isinstance(values[key], list) else values[key]

    for key in ("sample_rate", "frame_rate"):
        if key in mimi:
            kwargs[key] = mimi[key]
    check_fixed("mimi_config", mimi, {"channels": 1})
    for key in mimi:
        if key not in ("sample_rate", "frame_rate", "channels", "seanet", "transformer", "quantizer"):
            problems.append(f"mimi_config.{key}: unknown setting")

    seanet = mimi.get("seanet", {})
    check_fixed("seanet", seanet, _SEANET_FIXED)
    take("seanet", seanet, _SEANET_FIELDS, tuple(_SEANET_FIXED) + _SEANET_IGNORED)

    transformer = mimi.get("transformer", {})
    check_fixed("transformer", transformer, _TRANSFORMER_FIXED)
    take(
        "transformer",
        transformer,
        _TRANSFORMER_FIELDS,
        tuple(_TRANSFORMER_FIXED) + ("d_model", "input_dimension", "output_dimensions", "layer_scale"),
    )
    dimension = seanet.get("dimension", MimiConfig.dimension)
    for key, got in (
        ("d_model", transformer.get("d_model", dimension)),
        ("input_dimension", transformer.get("input_dimension", dimension)),
    ):
        if got != dimension:
            problems.append(f"transformer.{key}: {got} != seanet.dimension {dimension} (projections unsupported)")
    if list(transformer.get("output_dimensions", [dimension])) != [dimension]:
        problems.append(
            f"transformer.output_dimensions: {transformer['output_dimensions']} is not "
            f"[{dimension}] (projections unsupported)"
        )
    if transformer.get("layer_scale", 0.01) is None:
        problems.append("transformer.layer_scale: None is not supported (the layer_scale tensors are required)")

    quantizer = mimi.get("quantizer", {})
    take("quantizer", quantizer, _QUANTIZER_FIELDS, ("input_dimension", "output_dimension"))
    for key in ("input_dimension", "output_dimension"):
        if quantizer.get(key, dimension) != dimension:
            problems.append(f"quantizer.{key}: {quantizer[key]} != seanet.dimension {dimension}")

    model_kwargs = data.get("mimi_model_kwargs", {})
    check_fixed("mimi_model_kwargs", model_kwargs, _MODEL_FIXED)
    if problems:
        raise MimiConfigError("unsupported Mimi config:\n  " + "\n  ".join(problems))
    config = MimiConfig(**kwargs)
    rate = model_kwargs.get("encoder_frame_rate", config.encoder_frame_rate)
    if rate != config.encoder_frame_rate:
        raise MimiConfigError(
            f"unsupported Mimi config:\n  mimi_model_kwargs.encoder_frame_rate: {rate} != "
            f"sample_rate / prod(ratios) = {config.encoder_frame_rate}"
        )
    return config
