"""Running whole conversations through the streaming step: several sessions as one batch, timed per frame.

`run_sessions` is what the CLI, the evaluation and the benchmark share: it feeds each session's user codes
frame by frame (as a live microphone would), collects the model's undelayed frames, and times every step.
Hooks let a caller produce the user's codes on the fly (a streaming codec encoder) and consume the model's
frames as they come (a streaming decoder).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from flmjax.config import ModelConfig
from flmjax.infer.sampling import SamplingConfig
from flmjax.infer.stream import init_stream, stream_step
from flmjax.streams import FRAME_S



@dataclasses.dataclass
class SessionsResult:
    """frames[i]: [T_i - 1, 1+C] session i's undelayed frames (text id, speak codes 0..7): step s emits frame
    s-1, so T_i user frames give T_i - 1 model frames. step_s: [steps] wall seconds of each step (the first
    includes compilation unless the step was compiled before)."""

    frames: list[np.ndarray]
    step_s: np.ndarray

    def latency_summary(self) -> dict[str, float]:
        """Per-frame latency percentiles (ms) over the steps after the first, and the real-time factor
        (median step time / 80 ms: below 1 keeps up with a live conversation)."""
        steady = self.step_s[1:] if len(self.step_s) > 1 else self.step_s
        summary = {f"p{q}_ms": float(np.percentile(steady, q) * 1e3) for q in (50, 90, 99)}
        summary["max_ms"] = float(steady.max() * 1e3)
        summary["first_step_ms"] = float(self.step_s[0] * 1e3)
        summary["real_time_factor"] = float(np.median(steady) / FRAME_S)
        return summary


def session_keys(seed: int, sessions: int, session_seeds: Sequence[int] | None = None) -> jax.Array:
    """One base key per session; step s uses fold_in(key, s). With `session_seeds` (one per session, e.g. from
    a sample's name) a session samples the same tokens whatever batch or slot it runs in; without, session i
    gets the i-th key split from `seed`."""
    if session_seeds is None:
        return jax.random.split(jax.random.key(seed), sessions)
    if len(session_seeds) != sessions:
        raise ValueError(f"{len(session_seeds)} session seeds for {sessions} sessions")
    return jax.vmap(lambda s: jax.random.fold_in(jax.random.key(seed), s))(jnp.asarray(session_seeds, jnp.uint32))


@jax.jit
def step_keys(session_keys_: jax.Array, steps: jax.Array) -> jax.Array:
    """Keys [B] of one step: fold_in(session key, that session's step), per slot."""
    return jax.vmap(jax.random.fold_in)(session_keys_, steps)


def run_sessions(config: ModelConfig, params: Any, listen: Sequence[np.ndarray], *,
                 sampling: SamplingConfig | None = None, max_frames: int | None = None,
                 sliding_window: bool = False, seed: int = 0, session_seeds: Sequence[int] | None = None,
                 listen_hook: Callable[[int, np.ndarray], np.ndarray] | None = None,
                 frame_hook: Callable[[int, np.ndarray, np.ndarray], None] | None = None,
                 progress: Callable[[int, int], None] | None = None) -> SessionsResult:
    """Streams every session of `listen` (each [T_i, C] user codes) in one batch.

    A session shorter than the longest repeats its last frame afterwards; its outputs past its end are dropped.
    `max_frames` defaults to the longest session. `listen_hook(step, codes [B, C]) -> codes` may replace the
    user codes of a step; `frame_hook(step, out_frame [B, 1+C], out_valid [B])` sees each step's output.
    """
    if not listen:
        raise ValueError("no sessions to run")
    lengths = [len(codes) for codes in listen]
    steps = max(lengths)
    if min(lengths) < 1:
        raise ValueError(f"every session needs at least one frame; lengths {lengths}")
    padded = np.stack([np.concatenate([codes, np.repeat(codes[-1:], steps - len(codes), axis=0)])
                       for codes in listen]).astype(np.int32)  # [B, steps, C]
    state = init_stream(config, params, len(listen), steps if max_frames is None else max_frames, sampling,
                        sliding_window)  # max_frames 0 is an error there, never the default
    keys = session_keys(seed, len(listen), session_seeds)
    outputs, step_s = [], []
    for step in range(steps):
        codes = padded[:, step]
        if listen_hook is not None:
            codes = listen_hook(step, codes)
        start = time.perf_counter()
        state, out_frame, out_valid = stream_step(params, state, codes,
                                                  step_keys(keys, np.full(len(listen), step, np.uint32)))
        out_frame, out_valid = np.asarray(out_frame), np.asarray(out_valid)
        step_s.append(time.perf_counter() - start)
        if frame_hook is not None:
            frame_hook(step, out_frame, out_valid)
        outputs.append(out_frame)
        if progress is not None:
            progress(step + 1, steps)
    frames = np.stack(outputs, axis=1)  # [B, steps, 1+C]; step s holds frame s-1
    return SessionsResult(frames=[frames[i, 1:length] for i, length in enumerate(lengths)],
                          step_s=np.asarray(step_s))


def monologue_text(text_ids: np.ndarray, tokenizer: Any, text_wait_id: int) -> str:
    """The monologue as text: each run of <wait> becomes one line break, the tokens between are decoded."""
    lines, run = [], []
    for token in np.asarray(text_ids).tolist():
        if token == text_wait_id:
            if run:
                lines.append(tokenizer.decode(run))
                run = []
            continue
        run.append(token)
    if run:
        lines.append(tokenizer.decode(run))
    return "\n".join(lines)
