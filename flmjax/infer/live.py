"""Live conversations on a frame clock: what a full-duplex server does every 80 ms, without any networking.

`LiveSessions` holds the connections' sessions and drives the session `Scheduler` (with the streaming codec)
one tick at a time, in two halves so that a server can run the model's step off its event loop:

    inputs = live.begin_tick()      # open ready sessions, close ended ones, take each one's next 1920 samples
    tick = scheduler.step(inputs)   # the batched encode + model step + decode (a worker thread may run it)
    out = live.end_tick(tick)       # per session: its voice frame and the monologue's text pieces

A session's audio arrives as it comes (`LiveSession.feed`); a tick takes the next frame of every session, and
a session whose audio has not arrived hears silence (an underrun, counted, never waited on). A session opens
in the scheduler at the first tick after its first full frame arrived, so that what it hears does not depend
on when its connection happened to be accepted: a client that sends ahead of real time gets the same frames
whatever else is served. Input audio beyond what a session may still hear (its context) is dropped, so no
buffer grows without bound.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any

import jax
import numpy as np

from flmjax.infer.sampling import SamplingConfig
from flmjax.infer.sessions import Scheduler, Tick


class TextPieces:
    """The monologue as it is decided, as text pieces: each frame's token extends the current run of words and
    gives the text it added; `<wait>` ends the run (a "\\n" piece). Specials give nothing."""

    def __init__(self, tokenizer: Any, wait_id: int):
        self.tokenizer, self.wait_id = tokenizer, wait_id
        self._skip = set(tokenizer.special_ids.values()) if tokenizer is not None else set()
        self._run: list[int] = []
        self._sent = ""

    def push(self, token: int) -> list[str]:
        if self.tokenizer is None:
            return []
        if token == self.wait_id:
            ended = ["\n"] if self._run else []
            self._run, self._sent = [], ""
            return ended
        if token in self._skip or not 0 <= token < self.tokenizer.vocab_size:
            return []
        self._run.append(token)
        text = self.tokenizer.decode(self._run)
        if not text.startswith(self._sent):  # a piece that changes how earlier ones read: send the new text whole
            self._sent = ""
        piece, self._sent = text[len(self._sent) :], text
        return [piece] if piece else []


@dataclasses.dataclass
class LiveSession:
    """One conversation: the user's audio as it arrives, its key and sampling, and what it was served."""

    number: int
    key: jax.Array
    sampling: SamplingConfig | None
    text: TextPieces
    frame_size: int
    max_frames: int
    slot: int | None = None  # its scheduler slot, once open
    closing: bool = False  # the connection is gone: free the slot at the next tick
    ended: str | None = None  # why the server ended it (context reached)
    underruns: int = 0
    frames_heard: int = 0
    frames_served: int = 0
    dropped_samples: int = 0
    _chunks: collections.deque = dataclasses.field(default_factory=collections.deque)
    _buffered: int = 0

    @property
    def buffered_samples(self) -> int:
        return self._buffered

    def feed(self, pcm: np.ndarray) -> None:
        """Appends the user's decoded samples (float32 at 24 kHz); beyond what the session may still hear,
        they are dropped (counted in `dropped_samples`)."""
        room = (self.max_frames - self.frames_heard) * self.frame_size - self._buffered
        pcm = np.asarray(pcm, np.float32).reshape(-1)
        if len(pcm) > room:
            self.dropped_samples += len(pcm) - max(room, 0)
            pcm = pcm[: max(room, 0)]
        if len(pcm):
            self._chunks.append(pcm)
            self._buffered += len(pcm)

    def take_frame(self) -> np.ndarray:
        """The next frame of the user's audio, or silence (an underrun) if it has not all arrived."""
        if self._buffered < self.frame_size:
            self.underruns += 1
            return np.zeros(self.frame_size, np.float32)
        out, filled = np.empty(self.frame_size, np.float32), 0
        while filled < self.frame_size:
            chunk = self._chunks.popleft()
            used = min(len(chunk), self.frame_size - filled)
            out[filled : filled + used] = chunk[:used]
            if used < len(chunk):
                self._chunks.appendleft(chunk[used:])
            filled += used
        self._buffered -= self.frame_size
        return out


@dataclasses.dataclass
class Served:
    """What one tick gave one session: the model's frame [1+C] (text id, speak codes), its voice [1920] and the
    monologue's text pieces."""

    session: LiveSession
    frame: np.ndarray
    voice: np.ndarray
    text: list[str]


class LiveSessions:
    """The sessions of a live server over one `Scheduler` (with a codec), ticked by a frame clock."""

    def __init__(self, scheduler: Scheduler, tokenizer: Any = None, seed: int = 0, latency_window: int = 10_000):
        if scheduler.codec is None:
            raise ValueError("a live server's scheduler needs the streaming codec")
        self.scheduler, self.tokenizer, self.seed = scheduler, tokenizer, seed
        self.frame_size = scheduler.codec.frame_size
        self.sessions: list[LiveSession] = []
        self.started = 0
        self.tick_s: collections.deque = collections.deque(maxlen=latency_window)
        self.ticks = 0
        self.late_ticks = 0
        self.frames_served = 0
        self._underruns_of_gone = 0  # underruns of sessions no longer held

    @property
    def slots(self) -> int:
        return self.scheduler.slots

    def can_admit(self) -> bool:
        return len(self.sessions) < self.slots

    def admit(self, sampling: SamplingConfig | None = None, seed: int | None = None) -> LiveSession:
        """A new session holding a place (it opens in the scheduler once its audio arrives). `seed`: its key
        is fold_in(key(server seed), seed); default the session's number."""
        if not self.can_admit():
            raise RuntimeError(f"all {self.slots} slots are taken")
        number = self.started
        self.started += 1
        key = jax.random.fold_in(jax.random.key(self.seed), number if seed is None else seed)
        session = LiveSession(
            number=number,
            key=key,
            sampling=sampling,
            text=TextPieces(self.tokenizer, self.scheduler.config.text_wait_id),
            frame_size=self.frame_size,
            max_frames=self.scheduler.max_frames,
        )
        self.sessions.append(session)
        return session

    @property
    def underruns(self) -> int:
        return self._underruns_of_gone + sum(s.underruns for s in self.sessions)

    def begin_tick(self) -> np.ndarray | None:
        """Closes gone sessions, opens those whose first frame arrived, and gives the tick's input [B, 1920]
        (None when no session is open: nothing to step)."""
        for session in [s for s in self.sessions if s.closing]:
            self._drop(session)
        for session in self.sessions:
            if session.slot is None and session.ended is None and session.buffered_samples >= self.frame_size:
                session.slot = self.scheduler.open(session.key, session.sampling)
        if not any(s.slot is not None for s in self.sessions):
            return None
        inputs = np.zeros((self.slots, self.frame_size), np.float32)
        for session in self.sessions:
            if session.slot is not None:
                inputs[session.slot] = session.take_frame()
                session.frames_heard += 1
        return inputs

    def end_tick(self, tick: Tick, seconds: float, period_s: float) -> list[Served]:
        """Each open session's voice frame and text pieces from `tick`; `seconds` the tick's wall time (late if
        over `period_s`)."""
        self.tick_s.append(seconds)
        self.ticks += 1
        self.late_ticks += seconds > period_s
        by_slot = {s.slot: s for s in self.sessions if s.slot is not None}
        for slot in tick.ended:  # reached its context: the server closes it
            if slot in by_slot:
                by_slot[slot].ended = "context"
                by_slot[slot].slot = None
        served = []
        for slot, session in by_slot.items():
            if session.ended or not tick.emitted[slot]:
                continue
            session.frames_served += 1
            self.frames_served += 1
            served.append(
                Served(
                    session,
                    tick.frames[slot].copy(),
                    tick.voice[slot].copy(),
                    session.text.push(int(tick.frames[slot, 0])),
                )
            )
        return served

    def _drop(self, session: LiveSession) -> None:
        if session.slot is not None:
            self.scheduler.close(session.slot)
        self._underruns_of_gone += session.underruns
        self.sessions.remove(session)

    def health(self) -> dict[str, Any]:
        """Slots in use / total, frames served, tick latency p50/p99 (ms) so far, late ticks, underruns."""
        times = np.asarray(self.tick_s) * 1e3
        return {
            "slots_in_use": len(self.sessions),
            "slots_total": self.slots,
            "frames_served": self.frames_served,
            "tick_ms_p50": float(np.percentile(times, 50)) if len(times) else None,
            "tick_ms_p99": float(np.percentile(times, 99)) if len(times) else None,
            "ticks": self.ticks,
            "late_ticks": self.late_ticks,
            "underruns": self.underruns,
        }
