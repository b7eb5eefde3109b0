"""Token sampling of the released streaming generator (REFERENCE.md section 4), as pure jax functions.

Per token: (1) repetition penalty over a window of the stream's last sampled tokens: every distinct id in the
window has its logit `l` turned into `l * p` when `l < 0`, else `l / p`; (2) when sampling with `temperature
> 0`: softmax of `logits / temperature`, then top-p if `top_p > 0` (top-k is then ignored), else top-k if
`top_k > 0`, else plain categorical; otherwise argmax.

Histories are ring buffers of token ids, `-1` marking an empty place, so the first step of a session has no
penalty (nothing sampled yet) without a special case.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

EMPTY = -1  # an unused place of a history ring


@dataclasses.dataclass(frozen=True)
class StreamSampling:
    """How one stream (text, or the audio codebooks) is sampled."""

    temperature: float
    top_p: float = 0.9
    top_k: int = 0
    repetition_penalty: float = 1.0  # 1.0 = off
    window: int = 50  # tokens (text) or frames (audio) the penalty looks back over

    def __post_init__(self):
        problems = []
        if self.temperature < 0:
            problems.append(f"temperature must be >= 0, got {self.temperature}")
        if not 0 <= self.top_p <= 1:
            problems.append(f"top_p must be in [0, 1], got {self.top_p}")
        if self.top_k < 0:
            problems.append(f"top_k must be >= 0, got {self.top_k}")
        if self.repetition_penalty <= 0:
            problems.append(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.window < 1:
            problems.append(f"window must be >= 1, got {self.window}")
        if problems:
            raise ValueError("invalid sampling settings: " + "; ".join(problems))


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """Sampling of a streaming session; the defaults are the released generator's.

    `do_sample=False` decodes by argmax (after the repetition penalties). Audio penalties apply to codebooks
    `0 .. audio_penalty_codebooks - 1` only, each over its own history.
    """

    text: StreamSampling = StreamSampling(temperature=0.01, top_p=0.9, repetition_penalty=1.03)
    audio: StreamSampling = StreamSampling(temperature=0.5, top_p=0.9, repetition_penalty=1.2)
    do_sample: bool = True
    audio_penalty_codebooks: int = 4

    @classmethod
    def greedy(cls, repetition_penalty: bool = True) -> "SamplingConfig":
        """Argmax decoding, with the released default penalties (or none)."""
        config = cls(do_sample=False)
        if repetition_penalty:
            return config
        return dataclasses.replace(config, text=dataclasses.replace(config.text, repetition_penalty=1.0),
                                   audio=dataclasses.replace(config.audio, repetition_penalty=1.0))


def window_mask(history: jax.Array, vocab_size: int) -> jax.Array:
    """history [B, W] ids (EMPTY = none) -> bool [B, vocab_size]: the distinct ids present."""
    valid = history >= 0
    ids = jnp.where(valid, history, 0)
    rows = jnp.arange(history.shape[0])[:, None]
    return jnp.zeros((history.shape[0], vocab_size), bool).at[rows, ids].max(valid)


def apply_repetition_penalty(logits: jax.Array, history: jax.Array, penalty: float) -> jax.Array:
    """logits [B, V], history [B, W] -> logits with every id in the window penalised (`l*p` if l<0 else `l/p`)."""
    if penalty == 1.0:
        return logits
    seen = window_mask(history, logits.shape[-1])
    penalised = jnp.where(logits < 0, logits * penalty, logits / penalty)
    return jnp.where(seen, penalised, logits)


def _keep_top_p(probs: jax.Array, top_p: float, unroll: bool = False) -> jax.Array:
    """bool [B, V]: a token is kept while the probability mass strictly before it (in sorted order) is <= p.

    Equivalently, token i is kept iff the mass of the tokens more probable than it is <= p, which is monotone
    in its probability: the cut is found by bisection over the float32 bit patterns of the probabilities
    (ordered like the values, as they are >= 0), exactly, in 32 masked sums instead of a sort. XLA's sort on
    CPU takes ~0.4 s for 8 rows of a 151k vocabulary; this takes ~7 ms.
    """
    bits = jax.lax.bitcast_convert_type(probs.astype(jnp.float32), jnp.int32)

    def mass_above(threshold):  # [B, 1] -> [B, 1]
        return jnp.sum(jnp.where(bits > threshold, probs, 0.0), axis=-1, keepdims=True)

    def halve(_, bounds):  # invariant: mass_above(hi) <= top_p < mass_above(lo)
        lo, hi = bounds
        mid = lo + (hi - lo) // 2
        fits = mass_above(mid) <= top_p
        return jnp.where(fits, lo, mid), jnp.where(fits, mid, hi)

    lo = jnp.full(probs.shape[:-1] + (1,), -1, jnp.int32)
    hi = jnp.max(bits, axis=-1, keepdims=True)  # nothing is above the top token
    _, hi = jax.lax.fori_loop(0, 32, halve, (lo, hi), unroll=unroll or None)
    return bits >= hi


def _keep_top_k(probs: jax.Array, top_k: int) -> jax.Array:
    top_k = min(top_k, probs.shape[-1])
    threshold = jax.lax.top_k(probs, top_k)[0][:, -1:]
    return probs >= threshold


def sample(logits: jax.Array, settings: StreamSampling, do_sample: bool, keys: jax.Array,
           unroll: bool = False) -> jax.Array:
    """logits [B, V] (penalties already applied), keys [B] (one per row) -> ids [B] int32.

    `unroll`: the top-p bisection as straight-line code (what XLA's cost analysis needs to count it whole)."""
    if not do_sample or settings.temperature <= 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    probs = jax.nn.softmax(logits.astype(jnp.float32) / settings.temperature, axis=-1)
    if settings.top_p > 0:
        keep = _keep_top_p(probs, settings.top_p, unroll)
    elif settings.top_k > 0:
        keep = _keep_top_k(probs, settings.top_k)
    else:
        keep = jnp.ones_like(probs, bool)
    masked = jnp.where(keep, jnp.log(probs), -jnp.inf)
    return jax.vmap(jax.random.categorical)(keys, masked).astype(jnp.int32)


def push(history: jax.Array, tokens: jax.Array, count: jax.Array) -> jax.Array:
    """history [B, W, ...], tokens [B, ...], count [B] (tokens pushed so far) -> ring with the tokens added."""
    rows = jnp.arange(history.shape[0])
    return history.at[rows, count % history.shape[1]].set(tokens.astype(history.dtype))
