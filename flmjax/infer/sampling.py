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
from flax import struct

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
        return dataclasses.replace(
            config,
            text=dataclasses.replace(config.text, repetition_penalty=1.0),
            audio=dataclasses.replace(config.audio, repetition_penalty=1.0),
        )


@struct.dataclass
class SamplingRows:
    """One stream's sampling settings per slot, as arrays [B] (so every session of a batch may sample its own
    way without recompiling). `temperature` 0 decodes by argmax; `window` counts the last tokens of the history
    ring the penalty looks at (at most the ring's size)."""

    temperature: jax.Array  # [B] float32
    top_p: jax.Array  # [B] float32
    top_k: jax.Array  # [B] int32
    repetition_penalty: jax.Array  # [B] float32
    window: jax.Array  # [B] int32

    @classmethod
    def of(cls, settings: StreamSampling, do_sample: bool, batch_size: int) -> "SamplingRows":
        """`settings` for every one of `batch_size` rows (`do_sample=False`: temperature 0, argmax)."""

        def full(value, dtype):
            return jnp.full((batch_size,), value, dtype)

        return cls(
            temperature=full(settings.temperature if do_sample else 0.0, jnp.float32),
            top_p=full(settings.top_p, jnp.float32),
            top_k=full(settings.top_k, jnp.int32),
            repetition_penalty=full(settings.repetition_penalty, jnp.float32),
            window=full(settings.window, jnp.int32),
        )


@struct.dataclass
class SlotSampling:
    """A stream's per-slot sampling: the text stream's rows and the audio codebooks' rows."""

    text: SamplingRows
    audio: SamplingRows

    @classmethod
    def of(cls, config: "SamplingConfig", batch_size: int) -> "SlotSampling":
        return cls(
            text=SamplingRows.of(config.text, config.do_sample, batch_size),
            audio=SamplingRows.of(config.audio, config.do_sample, batch_size),
        )


def window_mask(
    history: jax.Array, vocab_size: int, window: jax.Array | None = None, count: jax.Array | None = None
) -> jax.Array:
    """history [B, W] ids (EMPTY = none) -> bool [B, vocab_size]: the distinct ids present.

    With `window` [B] and `count` [B] (tokens pushed so far, see `push`): only the last `window` pushed."""
    valid = history >= 0
    if window is not None:
        ring = history.shape[1]
        age = (count[:, None] - 1 - jnp.arange(ring)[None, :]) % ring  # 0: the token pushed last
        valid &= age < window[:, None]
    ids = jnp.where(valid, history, 0)
    rows = jnp.arange(history.shape[0])[:, None]
    return jnp.zeros((history.shape[0], vocab_size), bool).at[rows, ids].max(valid)


def apply_repetition_penalty(
    logits: jax.Array, history: jax.Array, penalty, window: jax.Array | None = None, count: jax.Array | None = None
) -> jax.Array:
    """logits [B, V], history [B, W] -> logits with every id in the window penalised (`l*p` if l<0 else `l/p`).

    `penalty`: one number, or [B] (one per row, with `window`/`count` as in `window_mask`)."""
    if isinstance(penalty, (int, float)):
        if penalty == 1.0:
            return logits
    else:  # per row, in the logits' dtype (as a Python number would be taken)
        penalty = jnp.asarray(penalty).astype(logits.dtype)[:, None]
    seen = window_mask(history, logits.shape[-1], window, count)
    penalised = jnp.where(logits < 0, logits * penalty, logits / penalty)
    return jnp.where(seen, penalised, logits)


def _keep_while(probs: jax.Array, weights: jax.Array, limit: jax.Array, unroll: bool = False) -> jax.Array:
    """bool [B, V]: a token is kept while the weight of the tokens more probable than it is <= limit [B, 1].

    Weights = probabilities: top-p (the mass strictly before a token in sorted order is <= p). Weights = 1 and
    limit k - 1: top-k (the tokens at least as probable as the k-th, ties kept, as `lax.top_k`'s threshold).
    The kept set is monotone in a token's probability, so its cut is found by bisection over the float32 bit
    patterns of the probabilities (ordered like the values, as they are >= 0), exactly, in 32 masked sums
    instead of a sort. XLA's sort on CPU takes ~0.4 s for 8 rows of a 151k vocabulary; this takes ~7 ms.
    """
    bits = jax.lax.bitcast_convert_type(probs.astype(jnp.float32), jnp.int32)

    def weight_above(threshold):  # [B, 1] -> [B, 1]
        return jnp.sum(jnp.where(bits > threshold, weights, 0.0), axis=-1, keepdims=True)

    def halve(_, bounds):  # invariant: weight_above(hi) <= limit < weight_above(lo)
        lo, hi = bounds
        mid = lo + (hi - lo) // 2
        fits = weight_above(mid) <= limit
        return jnp.where(fits, lo, mid), jnp.where(fits, mid, hi)

    lo = jnp.full(probs.shape[:-1] + (1,), -1, jnp.int32)
    hi = jnp.max(bits, axis=-1, keepdims=True)  # nothing is above the top token
    _, hi = jax.lax.fori_loop(0, 32, halve, (lo, hi), unroll=unroll or None)
    return bits >= hi


def sample(
    logits: jax.Array, settings: "StreamSampling | SamplingRows", do_sample: bool, keys: jax.Array, unroll: bool = False
) -> jax.Array:
    """logits [B, V] (penalties already applied), keys [B] (one per row) -> ids [B] int32.

    `settings`: one `StreamSampling` for every row, or `SamplingRows` (a row with temperature 0 takes the
    argmax). `do_sample=False`: argmax for every row. `unroll`: the bisection as straight-line code (what
    XLA's cost analysis needs to count it whole)."""
    batch = logits.shape[0]
    if isinstance(settings, StreamSampling):
        if not do_sample or settings.temperature <= 0:
            return jnp.argmax(logits, axis=-1).astype(jnp.int32)
        settings = SamplingRows.of(settings, True, batch)
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    if not do_sample:
        return greedy
    sampled_rows = settings.temperature > 0
    temperature = jnp.where(sampled_rows, settings.temperature, 1.0)[:, None]
    probs = jax.nn.softmax(logits.astype(jnp.float32) / temperature, axis=-1)
    # top-p if top_p > 0 (top-k is then ignored), else top-k if top_k > 0, else every token.
    by_p, by_k = settings.top_p > 0, settings.top_k > 0
    weights = jnp.where(by_p[:, None], probs, 1.0)
    limit = jnp.where(by_p, settings.top_p, jnp.where(by_k, settings.top_k - 1, jnp.inf).astype(jnp.float32))
    keep = _keep_while(probs, weights, limit[:, None], unroll)
    masked = jnp.where(keep, jnp.log(probs), -jnp.inf)
    drawn = jax.vmap(jax.random.categorical)(keys, masked).astype(jnp.int32)
    return jnp.where(sampled_rows, drawn, greedy)


def push(history: jax.Array, tokens: jax.Array, count: jax.Array) -> jax.Array:
    """history [B, W, ...], tokens [B, ...], count [B] (tokens pushed so far) -> ring with the tokens added."""
    rows = jnp.arange(history.shape[0])
    return history.at[rows, count % history.shape[1]].set(tokens.astype(history.dtype))
