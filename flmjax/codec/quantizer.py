"""Split residual VQ (moshi `SplitResidualVectorQuantizer`): one semantic codebook plus the acoustic ones.

Both halves quantize the *same* latent through their own input projection (`rest` does not see `first`'s
residual); inside each, plain residual VQ with the nearest centroid by Euclidean distance. Param tree:

    quantizer/{first, rest}/{input_proj [latent, dim], output_proj [dim, latent], codebook_{level} [bins, dim]}

`first` holds 1 codebook and `rest` the other `num_codebooks - 1`. One param per codebook, not a stacked one:
XLA:CPU would copy each level's slice out of a stack on every call (2 MB each at the released sizes).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from flmjax.codec.config import MimiConfig
from flmjax.codec.layers import PRECISIONS, declare

HIGHEST = jax.lax.Precision.HIGHEST


def nearest(residual: jax.Array, centroids: jax.Array) -> jax.Array:
    """Index of the nearest centroid: residual [..., dim], centroids [bins, dim] -> [...] int32.

    argmin of ||c||^2 - 2 r.c (||r||^2 is constant per row). Full float32 precision whatever the config:
    the closest two centroids are only ~2e-3 apart in squared distance, so bf16 passes would flip codes.
    """
    scores = jnp.sum(jnp.square(centroids), axis=-1) - 2 * jnp.einsum(
        "...d,kd->...k", residual, centroids, precision=HIGHEST
    )
    return jnp.argmin(scores, axis=-1).astype(jnp.int32)


def project(x: jax.Array, kernel: jax.Array, precision: str) -> jax.Array:
    """A k=1 conv without bias: x [batch, time, in], kernel [in, out] -> [batch, time, out]."""
    return jnp.einsum("bti,io->bto", x, kernel, precision=PRECISIONS[precision])


class ResidualVQ(nn.Module):
    """Residual VQ of `levels` codebooks between its own input and output projections."""

    config: MimiConfig
    levels: int

    def setup(self):
        cfg = self.config
        latent, dim = cfg.dimension, cfg.quantizer_dimension
        self.input_proj = declare(self, "input_proj", (latent, dim), std=latent**-0.5)
        self.output_proj = declare(self, "output_proj", (dim, latent), std=dim**-0.5)
        self.codebooks = [
            declare(self, f"codebook_{level}", (cfg.bins, dim), std=dim**-0.5) for level in range(self.levels)
        ]

    def project_in(self, latent: jax.Array) -> jax.Array:
        """latent [batch, time, latent] -> [batch, time, dim]."""
        return project(latent, self.input_proj, self.config.precision)

    def encode(self, projected: jax.Array) -> list[jax.Array]:
        """projected [batch, time, dim] -> `levels` codes [batch, time] int32."""
        residual, codes = projected, []
        for centroids in self.codebooks:
            index = nearest(residual, centroids)
            residual = residual - jnp.take(centroids, index, axis=0)
            codes.append(index)
        return codes

    def decode(self, codes: jax.Array) -> jax.Array:
        """codes [batch, levels, time] -> [batch, time, latent], the levels summed in order, as moshi does."""
        total = jnp.take(self.codebooks[0], codes[:, 0], axis=0)
        for level in range(1, codes.shape[1]):
            total = total + jnp.take(self.codebooks[level], codes[:, level], axis=0)
        return project(total, self.output_proj, self.config.precision)


class SplitResidualVQ(nn.Module):
    """`first` (1 semantic codebook) and `rest` (`num_codebooks - 1` acoustic ones) on the same latent."""

    config: MimiConfig
    num_codebooks: int

    def setup(self):
        self.first = ResidualVQ(self.config, 1)
        self.rest = ResidualVQ(self.config, self.num_codebooks - 1)

    def encode(self, latent: jax.Array) -> tuple[jax.Array, dict]:
        """latent [batch, time, latent] -> (codes [batch, codebooks, time] int32, {"first_in", "rest_in"}
        [batch, time, dim], the projected inputs of the two halves)."""
        first_in, rest_in = self.first.project_in(latent), self.rest.project_in(latent)
        codes = self.first.encode(first_in) + self.rest.encode(rest_in)
        return jnp.stack(codes, axis=1), {"first_in": first_in, "rest_in": rest_in}

    def decode(self, codes: jax.Array) -> jax.Array:
        """codes [batch, codebooks, time] -> quantized latent [batch, time, latent]."""
        if codes.shape[1] != self.num_codebooks:
            raise ValueError(f"codes have {codes.shape[1]} codebooks, the params {self.num_codebooks}")
        quantized = self.first.decode(codes[:, :1])
        if self.num_codebooks > 1:
            quantized = quantized + self.rest.decode(codes[:, 1:])
        return quantized
