"""The session scheduler: the slots of one stream, driven one 80 ms frame at a time.

Every streaming loop of flmjax runs through `Scheduler`: the live server (`launch.serve`), which opens and
closes sessions as connections come and go, and `run_sessions`, which streams recorded sessions with a
fixed number of slots, starting the next session in a slot as soon as its session ends (`launch.stream`, the
dialog eval, the FDB runner, `launch.bench`).

One tick (`Scheduler.step`): the slots whose session just started are reset (`reset_slots`, and the codec's
encoder); every slot's input frame (the user's codes, or 1920 samples of the user's voice encoded by the
streaming Mimi) goes through one batched `stream_step`; with a codec, the emitted frames are decoded to the
model's voice. Each session samples from its own key (`fold_in(key, session step)`) and with its own
settings, so a conversation gives the same tokens whatever else is being served.

Frames: step s of a session hears its input frame s and emits the model's frame s-1 (REFERENCE.md 1.1);
step 0 emits nothing. So a session of T input frames yields T - 1 model frames, and its voice, played in the
slot of the step that emitted it, is silent for the first frame and exactly as long as its input. A caller
that wants the frame after the input feeds one more input frame (the dialog eval appends a silence frame).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from flmjax.config import ModelConfig
from flmjax.errors import UserError
from flmjax.infer import stream as stream_lib
from flmjax.infer import stream_slots
from flmjax.infer.audio import StreamingCodec
from flmjax.infer.sampling import SamplingConfig
from flmjax.infer.stream_state import ContextLimitError
from flmjax.streams import FRAME_S


class SlotsFull(UserError, RuntimeError):
    """Every slot of the scheduler holds a session."""


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


@dataclasses.dataclass
class Tick:
    """What one step gave. B = slots, C = codebooks."""

    frames: np.ndarray  # [B, 1+C] the frame each slot emitted: text id, speak codes 0..7
    emitted: np.ndarray  # [B] bool: the slot's session emitted `frames[b]` (its step >= 1)
    session_steps: np.ndarray  # [B] the session step each slot ran (-1: no session); frame = step - 1
    heard: np.ndarray  # [B, C] the codes each slot heard (the encoder's, with a codec)
    voice: np.ndarray | None  # [B, frame_size] the emitted frame as sound (with a codec; silence if none)
    ended: list[int]  # slots whose session reached the end of its context before this step (closed)
    model_s: float  # wall seconds of the model's step
    codec_s: float  # wall seconds of the codec's encode + decode


class Scheduler:
    """The slots of one stream: `open` a session (a slot and its key), `step` every slot by one frame,
    `close` it. Slots without a session run on the idle input and their outputs are ignored."""

    def __init__(
        self,
        config: ModelConfig,
        params: Any,
        *,
        slots: int,
        max_frames: int,
        sampling: SamplingConfig | None = None,
        sliding_window: bool = False,
        mesh=None,
        codec: StreamingCodec | None = None,
    ):
        self.config, self.params, self.codec = config, params, codec
        self.state = stream_slots.init_stream(config, params, slots, max_frames, sampling, sliding_window, mesh)
        if mesh is not None:
            self.params = stream_lib.place_stream_params(params, self.state)
        self.slots, self.max_frames, self.sliding_window = slots, max_frames, sliding_window
        self.keys = jax.random.split(jax.random.key(0), slots)
        self.session_step = np.full(slots, -1, np.int64)  # -1: no session
        self.cache_length = np.zeros(slots, np.int64)  # frames in each slot's KV cache
        self._settings: list[SamplingConfig | None] = [None] * slots
        self._starting = np.zeros(slots, bool)
        self._decoder_restart = np.zeros(slots, bool)

    @property
    def open_slots(self) -> np.ndarray:
        return np.flatnonzero(self.session_step >= 0)

    @property
    def free_slots(self) -> int:
        return int((self.session_step < 0).sum())

    def open(self, key: jax.Array, sampling: SamplingConfig | None = None) -> int:
        """Starts a session in a free slot (its first step is the next `step`) and returns the slot. `key`: the
        session's base key; `sampling`: its settings (default the stream's), checked against the stream."""
        free = np.flatnonzero(self.session_step < 0)
        if not len(free):
            raise SlotsFull(f"all {self.slots} slots hold a session")
        slot = int(free[0])
        if sampling is not None:
            stream_slots.slot_sampling(self.state, [sampling] + [None] * (self.slots - 1))  # fits the stream?
        self.keys = self.keys.at[slot].set(key)
        self.session_step[slot], self._starting[slot], self._settings[slot] = 0, True, sampling
        return slot

    def close(self, slot: int) -> None:
        """Ends the slot's session; the slot is free for the next `open`."""
        self.session_step[slot], self._starting[slot] = -1, False

    def _reset(self) -> list[int]:
        """Resets starting slots (and idle ones about to fill their cache); ends sessions at the context end."""
        ended = []
        if not self.sliding_window:
            ended = np.flatnonzero(self.session_step >= self.max_frames).tolist()
            for slot in ended:
                self.close(slot)
        # A slot without a session still steps (on the idle input): restart it before its cache is full.
        refill = (self.session_step < 0) & (self.cache_length >= self.max_frames) & (not self.sliding_window)
        mask = self._starting | refill
        if mask.any():
            settings = None
            if any(self._settings[b] is not None for b in np.flatnonzero(self._starting)):
                settings = stream_slots.slot_sampling(
                    self.state, [self._settings[b] if self._starting[b] else None for b in range(self.slots)]
                )
            self.state = stream_slots.reset_slots(self.state, mask, settings)
            self.cache_length[mask] = 0
        return ended

    def step(self, inputs: np.ndarray) -> Tick:
        """One frame for every slot. `inputs`: [B, C] codes, or with a codec [B, frame_size] float samples of
        the user's voice; rows of slots without a session are ignored (give anything valid, e.g. silence)."""
        ended = self._reset()
        starting, self._starting = self._starting.copy(), np.zeros(self.slots, bool)
        codec_s = 0.0
        if self.codec is not None:
            start = time.perf_counter()
            heard = self.codec.encode(inputs, restart=starting)
            codec_s += time.perf_counter() - start
        else:
            heard = np.asarray(inputs, np.int32)
        session_steps = self.session_step.copy()
        keys = step_keys(self.keys, np.maximum(session_steps, 0).astype(np.uint32))
        start = time.perf_counter()
        self.state, out_frame, out_valid = stream_lib.stream_step(self.params, self.state, heard, keys)
        frames, emitted = np.asarray(out_frame), np.asarray(out_valid) & (session_steps >= 0)
        model_s = time.perf_counter() - start
        voice = None
        if self.codec is not None:
            start = time.perf_counter()
            # A session's first step decodes nothing real: its decoder restarts before its first frame.
            voice = self.codec.decode(frames[:, 1:], restart=self._decoder_restart)
            voice[~emitted] = 0.0
            codec_s += time.perf_counter() - start
        self._decoder_restart = starting
        self.session_step[session_steps >= 0] += 1
        self.cache_length += 1
        return Tick(
            frames=frames,
            emitted=emitted,
            session_steps=session_steps,
            heard=heard,
            voice=voice,
            ended=ended,
            model_s=model_s,
            codec_s=codec_s,
        )


# ---------------------------------------------------------------------------------------------- recorded sessions
@dataclasses.dataclass
class SessionsResult:
    """Per session i: `frames[i]` [T_i - 1, 1+C] the model's frames (text id, speak codes 0..7); `heard[i]`
    [T_i, C] the codes it heard; with a codec, `voice[i]` [n_i] float32 at 24 kHz, as long as its input (frame
    s-1 in step s's slot, the first silent). Per step: `step_s` wall seconds of the model's step (the first
    includes compilation unless compiled before) and `codec_s` of the codec's encode + decode."""

    frames: list[np.ndarray]
    heard: list[np.ndarray]
    voice: list[np.ndarray] | None
    step_s: np.ndarray
    codec_s: np.ndarray

    def latency_summary(self) -> dict[str, float]:
        """Per-frame latency percentiles (ms) over the steps after the first, and the real-time factor
        (median step time / 80 ms: below 1 keeps up with a live conversation)."""
        steady = self.step_s[1:] if len(self.step_s) > 1 else self.step_s
        summary = {f"p{q}_ms": float(np.percentile(steady, q) * 1e3) for q in (50, 90, 99)}
        summary["max_ms"] = float(steady.max() * 1e3)
        summary["first_step_ms"] = float(self.step_s[0] * 1e3)
        summary["real_time_factor"] = float(np.median(steady) / FRAME_S)
        return summary


def run_sessions(
    config: ModelConfig,
    params: Any,
    inputs: Sequence[np.ndarray],
    *,
    slots: int | None = None,
    sampling: SamplingConfig | None = None,
    max_frames: int | None = None,
    sliding_window: bool = False,
    seed: int = 0,
    session_seeds: Sequence[int] | None = None,
    codec: Callable[[int], StreamingCodec] | None = None,
    mesh=None,
    progress: Callable[[int, int], None] | None = None,
) -> SessionsResult:
    """Streams every session of `inputs` through a `Scheduler` of `slots` slots (default: all at once), in
    order, each slot starting the next session when its session ends.

    `inputs[i]`: the user's codes [T_i, C], or with `codec` (a function of the slot count giving a
    `StreamingCodec`) the user's voice [n_i] float32 at 24 kHz, T_i = ceil(n_i / 1920) (the last frame padded
    with silence). `max_frames`: the KV cache (default the longest session). Keys: see `session_keys`.
    `progress(done, total)` counts session steps."""
    if not inputs:
        raise ValueError("no sessions to run")
    slots = len(inputs) if slots is None else max(1, min(slots, len(inputs)))
    streaming_codec = None if codec is None else codec(slots)
    frame = None if streaming_codec is None else streaming_codec.frame_size
    if frame is None:
        feeds = [np.asarray(codes, np.int32) for codes in inputs]
        lengths = [len(codes) for codes in feeds]
    else:
        lengths = [-(-len(audio) // frame) for audio in inputs]
        feeds = [np.zeros(n * frame, np.float32) for n in lengths]
        for feed, audio in zip(feeds, inputs):
            feed[: len(audio)] = audio
    if min(lengths) < 1:
        raise ValueError(f"every session needs at least one frame; lengths {lengths}")
    max_frames = max(lengths) if max_frames is None else max_frames
    if max(lengths) > max_frames and not sliding_window:
        longest = int(np.argmax(lengths))
        raise ContextLimitError(
            f"session {longest} has {lengths[longest]} frames, past the context limit of {max_frames} frames "
            f"({max_frames * FRAME_S:.1f} s); use a larger max_frames or sliding_window=True"
        )
    scheduler = Scheduler(
        config,
        params,
        slots=slots,
        max_frames=max_frames,
        sampling=sampling,
        sliding_window=sliding_window,
        mesh=mesh,
        codec=streaming_codec,
    )
    keys = session_keys(seed, len(inputs), session_seeds)
    frames = [np.zeros((n - 1, 1 + config.aud_channel), np.int32) for n in lengths]
    heard = [np.zeros((n, config.aud_channel), np.int32) for n in lengths]
    voice = None if frame is None else [np.zeros(len(audio), np.float32) for audio in inputs]
    idle = np.zeros((slots, config.aud_channel), np.int32) if frame is None else np.zeros((slots, frame), np.float32)
    running = np.full(slots, -1)  # the session each slot runs
    waiting, done, total = iter(range(len(inputs))), 0, sum(lengths)
    step_s, codec_s = [], []
    while True:
        for _ in np.flatnonzero(running < 0):
            session = next(waiting, None)
            if session is None:
                break
            running[scheduler.open(keys[session])] = session
        if (running < 0).all():
            break
        feed = idle.copy()
        for slot in np.flatnonzero(running >= 0):
            step, source = scheduler.session_step[slot], feeds[running[slot]]
            feed[slot] = source[step] if frame is None else source[step * frame : (step + 1) * frame]
        tick = scheduler.step(feed)
        step_s.append(tick.model_s)
        codec_s.append(tick.codec_s)
        for slot in np.flatnonzero(running >= 0):
            session, step = running[slot], tick.session_steps[slot]
            heard[session][step] = tick.heard[slot]
            if tick.emitted[slot]:
                frames[session][step - 1] = tick.frames[slot]
                if voice is not None:
                    chunk = voice[session][step * frame : (step + 1) * frame]
                    chunk[:] = tick.voice[slot][: len(chunk)]
            if step + 1 == lengths[session]:
                scheduler.close(slot)
                running[slot] = -1
        done += int((tick.session_steps >= 0).sum())
        if progress is not None:
            progress(done, total)
    return SessionsResult(
        frames=frames, heard=heard, voice=voice, step_s=np.asarray(step_s), codec_s=np.asarray(codec_s)
    )


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
