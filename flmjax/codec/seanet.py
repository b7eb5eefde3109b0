"""SEANet encoder and decoder (moshi `SEANetEncoder` / `SEANetDecoder`, causal, no norm, true skip).

Param tree (`[K, in, out]` conv kernels, `[in, K, out]` transposed-conv kernels, see `layers`):

    encoder/{conv_in, blocks_{i}/{residual_{j}/{conv_a, conv_b}, down}, conv_out}
    decoder/{conv_in, blocks_{i}/{up, residual_{j}/{conv_a, conv_b}}, conv_out}

The streaming state has the same tree: each conv holds `previous [batch, K_eff - stride, in]` and each
transposed conv `tail [batch, K - stride, out]`. Every module maps (x [batch, time, channels], state) to
(y, new state); an ELU precedes every conv but the first.
"""

from __future__ import annotations

import jax
from flax import linen as nn

from flmjax.codec.config import MimiConfig
from flmjax.codec.layers import CausalConv, ConvTranspose


class ResidualBlock(nn.Module):
    """`x + conv_b(elu(conv_a(elu(x))))`: moshi `SEANetResnetBlock` with `true_skip`, x [batch, time, channels]."""

    config: MimiConfig
    channels: int
    dilation: int

    def setup(self):
        cfg = self.config
        self.conv_a = CausalConv(
            self.channels // cfg.compress, cfg.residual_kernel_size, dilation=self.dilation, precision=cfg.precision
        )
        self.conv_b = CausalConv(self.channels, 1, precision=cfg.precision)

    def init_state(self, batch_size: int) -> dict:
        return {
            "conv_a": self.conv_a.init_state(batch_size, self.channels),
            "conv_b": self.conv_b.init_state(batch_size, self.channels // self.config.compress),
        }

    def __call__(self, x: jax.Array, state: dict) -> tuple[jax.Array, dict]:
        h, conv_a = self.conv_a(nn.elu(x), state["conv_a"])
        y, conv_b = self.conv_b(nn.elu(h), state["conv_b"])
        return x + y, {"conv_a": conv_a, "conv_b": conv_b}


def _residuals(config: MimiConfig, channels: int) -> list[ResidualBlock]:
    return [ResidualBlock(config, channels, config.dilation_base**j) for j in range(config.n_residual_layers)]


class EncoderBlock(nn.Module):
    """Residual blocks, then a strided conv: x [batch, time, channels] -> [batch, time / ratio, 2 * channels]."""

    config: MimiConfig
    channels: int
    ratio: int

    def setup(self):
        self.residual = _residuals(self.config, self.channels)
        self.down = CausalConv(2 * self.channels, 2 * self.ratio, stride=self.ratio, precision=self.config.precision)

    def init_state(self, batch_size: int) -> dict:
        state = {f"residual_{j}": block.init_state(batch_size) for j, block in enumerate(self.residual)}
        return {**state, "down": self.down.init_state(batch_size, self.channels)}

    def __call__(self, x: jax.Array, state: dict) -> tuple[jax.Array, dict]:
        new_state = {}
        for j, block in enumerate(self.residual):
            x, new_state[f"residual_{j}"] = block(x, state[f"residual_{j}"])
        x, new_state["down"] = self.down(nn.elu(x), state["down"])
        return x, new_state


class DecoderBlock(nn.Module):
    """A transposed conv, then residual blocks: x [batch, time, channels] -> [batch, time * ratio, channels / 2]."""

    config: MimiConfig
    channels: int
    ratio: int

    def setup(self):
        self.up = ConvTranspose(self.channels // 2, 2 * self.ratio, stride=self.ratio, precision=self.config.precision)
        self.residual = _residuals(self.config, self.channels // 2)

    def init_state(self, batch_size: int) -> dict:
        state = {f"residual_{j}": block.init_state(batch_size) for j, block in enumerate(self.residual)}
        return {"up": self.up.init_state(batch_size), **state}

    def __call__(self, x: jax.Array, state: dict) -> tuple[jax.Array, dict]:
        x, up = self.up(nn.elu(x), state["up"])
        new_state = {"up": up}
        for j, block in enumerate(self.residual):
            x, new_state[f"residual_{j}"] = block(x, state[f"residual_{j}"])
        return x, new_state


class _SEANetStack(nn.Module):
    """conv_in, the blocks, ELU, conv_out; subclasses build them (`setup`) and name the channels that
    conv_in and conv_out read (`state_channels`), which size their carried left context."""

    config: MimiConfig

    def state_channels(self) -> tuple[int, int]:
        raise NotImplementedError

    def init_state(self, batch_size: int) -> dict:
        conv_in_channels, conv_out_channels = self.state_channels()
        blocks = {f"blocks_{i}": block.init_state(batch_size) for i, block in enumerate(self.blocks)}
        return {
            "conv_in": self.conv_in.init_state(batch_size, conv_in_channels),
            **blocks,
            "conv_out": self.conv_out.init_state(batch_size, conv_out_channels),
        }

    def __call__(self, x: jax.Array, state: dict) -> tuple[jax.Array, dict]:
        new_state = {}
        x, new_state["conv_in"] = self.conv_in(x, state["conv_in"])
        for i, block in enumerate(self.blocks):
            x, new_state[f"blocks_{i}"] = block(x, state[f"blocks_{i}"])
        x, new_state["conv_out"] = self.conv_out(nn.elu(x), state["conv_out"])
        return x, new_state


class SEANetEncoder(_SEANetStack):
    """audio [batch, samples, 1] -> [batch, samples / hop_length, dimension] (the ratios applied reversed)."""

    def setup(self):
        cfg = self.config
        self.conv_in = CausalConv(cfg.n_filters, cfg.kernel_size, precision=cfg.precision)
        self.blocks = [EncoderBlock(cfg, cfg.n_filters * 2**i, ratio) for i, ratio in enumerate(reversed(cfg.ratios))]
        self.conv_out = CausalConv(cfg.dimension, cfg.last_kernel_size, precision=cfg.precision)

    def state_channels(self) -> tuple[int, int]:
        return 1, self.config.n_filters * 2 ** len(self.config.ratios)


class SEANetDecoder(_SEANetStack):
    """x [batch, time, dimension] -> audio [batch, time * hop_length, 1]."""

    def setup(self):
        cfg = self.config
        channels = cfg.n_filters * 2 ** len(cfg.ratios)
        self.conv_in = CausalConv(channels, cfg.kernel_size, precision=cfg.precision)
        self.blocks = [DecoderBlock(cfg, channels // 2**i, ratio) for i, ratio in enumerate(cfg.ratios)]
        self.conv_out = CausalConv(1, cfg.last_kernel_size, precision=cfg.precision)

    def state_channels(self) -> tuple[int, int]:
        return self.config.dimension, self.config.n_filters
