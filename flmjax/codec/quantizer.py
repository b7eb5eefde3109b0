"""Split residual VQ (moshi `SplitResidualVectorQuantizer`): one semantic codebook plus the acoustic ones.

Both halves quantize the *same* latent through their own input projection (`rest` does not see `first`'s
residual); inside each, plain residual VQ with the nearest centroid by Euclidean distance. Param tree:

    quantizer/{first, rest}/{input_proj [latent, dim], output_proj [dim, latent], codebooks: [[bins, dim]]}

`first` holds 1 codebook and `rest` the other `num_codebooks - 1`; the list lengths fix the number of codes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from flmjax.codec.layers import PRECISIONS

HIGHEST = jax.lax.Precision.HIGHEST


def nearest(residual: jax.Array, centroids: jax.Array) -> jax.Array:
    """Index of the nearest centroid: residual [..., dim], centroids [bins, dim] -> [...] int32.

    argmin of ||c||^2 - 2 r.c (||r||^2 is constant per row). Full float32 precision whatever the config:
    the closest two centroids are only ~2e-3 apart in squared distance, so bf16 passes would flip codes.
    """
    scores = jnp.sum(jnp.square(centroids), axis=-1) - 2 * jnp.einsum("...d,kd->...k", residual, centroids,
                                                                     precision=HIGHEST)
    return jnp.argmin(scores, axis=-1).astype(jnp.int32)


def project(x: jax.Array, kernel: jax.Array, precision: str) -> jax.Array:
    """A k=1 conv without bias: x [batch, time, in], kernel [in, out] -> [batch, time, out]."""
    return jnp.einsum("bti,io->bto", x, kernel, precision=PRECISIONS[precision])


def _encode_half(params: dict, projected: jax.Array) -> list[jax.Array]:
    residual, codes = projected, []
    for centroids in params["codebooks"]:
        index = nearest(residual, centroids)
        residual = residual - jnp.take(centroids, index, axis=0)
        codes.append(index)
    return codes


def encode(params: dict, latent: jax.Array, precision: str = "highest") -> tuple[jax.Array, dict]:
    """latent [batch, time, latent] -> (codes [batch, codebooks, time] int32, {"first_in", "rest_in"}
    [batch, time, dim], the projected inputs of the two halves)."""
    first_in = project(latent, params["first"]["input_proj"], precision)
    rest_in = project(latent, params["rest"]["input_proj"], precision)
    codes = _encode_half(params["first"], first_in) + _encode_half(params["rest"], rest_in)
    return jnp.stack(codes, axis=1), {"first_in": first_in, "rest_in": rest_in}


def _decode_half(params: dict, codes: jax.Array, precision: str) -> jax.Array:
    # Summed level by level in order, as moshi does.
    total = jnp.take(params["codebooks"][0], codes[:, 0], axis=0)
    for level in range(1, codes.shape[1]):
        total = total + jnp.take(params["codebooks"][level], codes[:, level], axis=0)
    return project(total, params["output_proj"], precision)


def decode(params: dict, codes: jax.Array, precision: str = "highest") -> jax.Array:
    """codes [batch, codebooks, time] -> quantized latent [batch, time, latent]."""
    num_first = len(params["first"]["codebooks"])
    if codes.shape[1] != num_first + len(params["rest"]["codebooks"]):
        raise ValueError(f"codes have {codes.shape[1]} codebooks, the params "
                         f"{num_first + len(params['rest']['codebooks'])}")
    quantized = _decode_half(params["first"], codes[:, :num_first], precision)
    if codes.shape[1] > num_first:
        quantized = quantized + _decode_half(params["rest"], codes[:, num_first:], precision)
    return quantized
