"""SEANet encoder and decoder (moshi `SEANetEncoder` / `SEANetDecoder`, causal, no norm, true skip).

Param tree (`[K, in, out]` conv kernels, `[in, K, out]` transposed-conv kernels, see `layers`):

    encoder/{conv_in, blocks: [{residual: [{conv_a, conv_b}], down}], conv_out}
    decoder/{conv_in, blocks: [{up, residual: [{conv_a, conv_b}]}], conv_out}

The streaming state mirrors it: each conv holds `previous [batch, K_eff - stride, in]` and each transposed
conv holds `tail [batch, K - stride, out]`. `encoder_plan` / `decoder_plan` list the layers once (with the
index of each in moshi's `model` Sequential); params, state, the forward pass and the checkpoint name map
are all built from them.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from flmjax.codec.config import MimiConfig
from flmjax.codec.layers import causal_conv, conv_state_length, conv_transpose


@dataclasses.dataclass(frozen=True)
class Conv:
    """A causal conv (`transposed=False`) or transposed conv, and where it sits in both param trees."""

    path: tuple  # path in our param tree, e.g. ("blocks", 0, "down")
    torch_name: str  # e.g. "model.3.conv.conv"
    channels_in: int
    channels_out: int
    kernel_size: int
    stride: int = 1
    dilation: int = 1
    transposed: bool = False
    elu_before: bool = True  # every SEANet conv but the first follows an ELU

    @property
    def state_length(self) -> int:
        if self.transposed:
            return self.kernel_size - self.stride
        return conv_state_length(self.kernel_size, self.stride, self.dilation)

    @property
    def state_channels(self) -> int:
        return self.channels_out if self.transposed else self.channels_in


@dataclasses.dataclass(frozen=True)
class Residual:
    """`x + conv_b(elu(conv_a(elu(x))))`: moshi `SEANetResnetBlock` with `true_skip`."""

    conv_a: Conv
    conv_b: Conv


def _residual(config: MimiConfig, path: tuple, index: int, channels: int, dilation: int) -> Residual:
    hidden = channels // config.compress
    name = f"model.{index}.block"
    return Residual(
        Conv(path + ("conv_a",), f"{name}.1.conv.conv", channels, hidden, config.residual_kernel_size,
             dilation=dilation),
        Conv(path + ("conv_b",), f"{name}.3.conv.conv", hidden, channels, 1))


def encoder_plan(config: MimiConfig) -> list[Conv | Residual]:
    """The encoder's layers in order; an ELU precedes every `Conv` with `elu_before`."""
    plan: list[Conv | Residual] = [
        Conv(("conv_in",), "model.0.conv.conv", 1, config.n_filters, config.kernel_size, elu_before=False)]
    channels, index = config.n_filters, 1
    for block, ratio in enumerate(reversed(config.ratios)):
        for j in range(config.n_residual_layers):
            plan.append(_residual(config, ("blocks", block, "residual", j), index, channels, config.dilation_base ** j))
            index += 1
        plan.append(Conv(("blocks", block, "down"), f"model.{index + 1}.conv.conv", channels, channels * 2,
                         ratio * 2, stride=ratio))
        channels, index = channels * 2, index + 2
    plan.append(Conv(("conv_out",), f"model.{index + 1}.conv.conv", channels, config.dimension,
                     config.last_kernel_size))
    return plan


def decoder_plan(config: MimiConfig) -> list[Conv | Residual]:
    channels = config.n_filters * 2 ** len(config.ratios)
    plan: list[Conv | Residual] = [
        Conv(("conv_in",), "model.0.conv.conv", config.dimension, channels, config.kernel_size, elu_before=False)]
    index = 1
    for block, ratio in enumerate(config.ratios):
        plan.append(Conv(("blocks", block, "up"), f"model.{index + 1}.convtr.convtr", channels, channels // 2,
                         ratio * 2, stride=ratio, transposed=True))
        channels, index = channels // 2, index + 2
        for j in range(config.n_residual_layers):
            plan.append(_residual(config, ("blocks", block, "residual", j), index, channels, config.dilation_base ** j))
            index += 1
    plan.append(Conv(("conv_out",), f"model.{index + 1}.conv.conv", channels, 1, config.last_kernel_size))
    return plan


def convs(plan: list[Conv | Residual]) -> list[Conv]:
    """Every conv of a plan, in order."""
    out = []
    for layer in plan:
        out.extend([layer.conv_a, layer.conv_b] if isinstance(layer, Residual) else [layer])
    return out


# ---------------------------------------------------------------------- nested-path helpers
def get_path(tree, path: tuple):
    for key in path:
        tree = tree[key]
    return tree


def set_path(tree: dict, path: tuple, value) -> None:
    """Sets `tree[path]`, creating dicts for string keys and lists for int keys on the way."""
    for key, next_key in zip(path[:-1], path[1:]):
        empty = [] if isinstance(next_key, int) else {}
        if isinstance(key, int):
            while len(tree) <= key:
                tree.append(None)
            if tree[key] is None:
                tree[key] = empty
        else:
            tree.setdefault(key, empty)
        tree = tree[key]
    if isinstance(path[-1], int):
        while len(tree) <= path[-1]:
            tree.append(None)
    tree[path[-1]] = value


# ---------------------------------------------------------------------- forward
def init_state(plan: list[Conv | Residual], batch_size: int, dtype=jnp.float32) -> dict:
    """Fresh (zero) streaming state: `previous` or `tail` per conv, at the conv's param path."""
    state: dict = {}
    for conv in convs(plan):
        set_path(state, conv.path, jnp.zeros((batch_size, conv.state_length, conv.state_channels), dtype))
    return state


def _apply_conv(conv: Conv, params: dict, x: jax.Array, state: dict, new_state: dict,
                precision: str) -> jax.Array:
    if conv.elu_before:
        x = jax.nn.elu(x)
    p, s = get_path(params, conv.path), get_path(state, conv.path)
    if conv.transposed:
        y, s = conv_transpose(p, x, s, stride=conv.stride, precision=precision)
    else:
        y, s = causal_conv(p, x, s, stride=conv.stride, dilation=conv.dilation, precision=precision)
    set_path(new_state, conv.path, s)
    return y


def run(plan: list[Conv | Residual], params: dict, x: jax.Array, state: dict,
        precision: str = "highest") -> tuple[jax.Array, dict]:
    """Runs an encoder or decoder plan on x [batch, time, channels] from `state`; returns (y, new state)."""
    new_state: dict = {}
    for layer in plan:
        if isinstance(layer, Residual):
            h = _apply_conv(layer.conv_a, params, x, state, new_state, precision)
            x = x + _apply_conv(layer.conv_b, params, h, state, new_state, precision)
        else:
            x = _apply_conv(layer, params, x, state, new_state, precision)
    return x, new_state
