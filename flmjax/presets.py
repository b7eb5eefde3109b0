"""The named model configs (presets): `tiny` for tests and the demo, `small` for benchmarks, and `flm_audio_7b`,
the released model's size; `preset(name, **overrides)` builds one by its name (a stage config's `model` field, a
`--preset` flag), `PRESETS` maps the names to their builders.
"""

from __future__ import annotations

from flmjax.config import ConfigError, ModelConfig


def tiny(**overrides) -> ModelConfig:
    """A model the size of the golden checkpoints (hidden 64, 2 layers): for tests and the demo."""
    base = dict(
        vocab_size=1000,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=4096,
        rope_theta=1e6,
        text_wait_id=3,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,
        torch_dtype="float32",
        depth_layers=2,
        depth_heads=4,
        depth_dim=32,
    )
    return ModelConfig(**{**base, **overrides})


def small(**overrides) -> ModelConfig:
    """About 78M parameters, 50M of them temporal (hidden 512, 8 layers, 8k text vocab, depth 256 wide): for
    benchmarks."""
    base = dict(
        vocab_size=8192,
        hidden_size=512,
        intermediate_size=1536,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=64,
        max_position_embeddings=8192,
        rope_theta=1e6,
        text_wait_id=3,
        bos_token_id=1,
        eos_token_id=2,
        torch_dtype="float32",
        depth_layers=4,
        depth_heads=8,
        depth_dim=256,
    )
    return ModelConfig(**{**base, **overrides})


def flm_audio_7b(**overrides) -> ModelConfig:
    """The released FLM-Audio 7B, to the best of REFERENCE.md's knowledge.

    Verified (released facts): hidden 3584, text vocab 151668, audio vocab 2050, 8 channels, depth width 1024
    with 6 layers, per-position SwiGLU MLPs, no depth biases (this reproduces the 490.69M depth parameters).
    Unverified (inferred from the Qwen2.5-VL-7B backbone): 28 layers, 28 heads, 4 kv heads, head_dim 128,
    intermediate 18944, rope_theta 1e6, q/k/v bias without o bias, eps 1e-6, max positions 32768; depth RMSNorm
    and 16 heads; muP off; the special ids (`<wait>` 151665, `aud_pad` 2048, `aud_emp` 2049) and bos/eos ids.
    A released checkpoint's own config.json always decides: load it with `ModelConfig.from_official`.
    """
    base = dict(bos_token_id=151643, eos_token_id=151645, torch_dtype="bfloat16")
    return ModelConfig(**{**base, **overrides})


PRESETS = {"tiny": tiny, "small": small, "flm_audio_7b": flm_audio_7b}


def preset(name: str, **overrides) -> ModelConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; expected one of {sorted(PRESETS)}")
    return PRESETS[name](**overrides)
