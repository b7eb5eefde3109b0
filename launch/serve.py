"""`python -m launch.serve`: a live full-duplex server speaking the released FLM-Audio protocol, many
conversations in one batch on one frame clock.

    python -m launch.serve --checkpoint CKPT --mimi MIMI [--tokenizer TOK] [--slots 8] [--host 127.0.0.1]
        [--port 8990] [--max_minutes 5] [--greedy] [--seed 0]

The protocol is the released server's (`flmaudio/server.py`), so its terminal and Gradio clients work
unchanged:
- `GET /api/chat` upgrades to a WebSocket; the server sends `b"\\x00"` once the conversation has a slot.
  Client -> server: `b"\\x01"` + Ogg/Opus bytes (`sphn.OpusStreamWriter(24000)`'s pages). Server -> client:
  `b"\\x01"` + Ogg/Opus bytes of the model's voice, and `b"\\x02"` + UTF-8 pieces of the monologue as they
  are decided (`b"\\x02\\n"` when a run of words ends). `?seed=N` (an extension) gives the conversation the
  key fold_in(key(--seed), N), so the same audio gives the same answer; by default N is the connection's number.
  With every slot taken the upgrade is refused: HTTP 503 with a JSON reason.
- `POST /api/settings`: a JSON object of the released generator's settings (`use_sampling`, `temp_text`,
  `temp_audio`, `top_p_text`, `top_p_audio`, `top_k_text`, `top_k_audio`, `repetition_penalty_text`,
  `repetition_penalty_audio`, `repetition_penalty_window_text`, `repetition_penalty_window_audio`), for the
  conversations that start afterwards; 400 with a JSON error naming the key for anything invalid.
- `GET /api/health`: slots in use / total, frames served, tick latency p50/p99, late ticks, underruns.

Every 80 ms the clock takes the next 1920 samples of every conversation (silence if they have not arrived:
an underrun), runs one batched Mimi encode, model step and Mimi decode (`flmjax.infer.live`, off the event
loop), and queues each conversation's Opus and text for its socket. A tick that takes longer than 80 ms is
counted and logged, and the clock starts the next one at once rather than catching up. A connection that sends
something that is not Ogg/Opus, sends nothing for `--idle_timeout_s`, or does not read what it is sent (its
queue fills) is logged once and closed; none of them holds up the others. SIGTERM (or Ctrl-C) closes every
socket with a close frame and exits 0.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import json
import logging
import signal
import sys
import time
from typing import Any, Sequence

import jax
import numpy as np

from flmjax import checkpoints, codec
from flmjax.data import text as text_lib
from flmjax.errors import UserError
from flmjax.infer import audio as audio_sessions
from flmjax.infer.live import LiveSession, LiveSessions
from flmjax.infer.sampling import SamplingConfig, StreamSampling
from flmjax.infer.sessions import Scheduler
from flmjax.streams import FRAME_S
from launch import cli

LOG = logging.getLogger("flmjax.serve")
HANDSHAKE, AUDIO, TEXT = b"\x00", 1, 2
OGG_PAGE = b"OggS"
PENALTY_RING = 50  # the longest penalty window a conversation may ask for (the released default)
OUT_QUEUE = 64  # messages (~2.5 s of voice and text) waiting for a socket before it counts as not reading
SEND_BUFFER = 4096  # bytes the kernel may hold for a socket (it doubles them): a stalled reader shows soon


class ServeError(UserError, ValueError):
    """A server setting or a settings request that cannot be used."""


# ---------------------------------------------------------------------------------------------- settings
# The released generator's setting names -> (stream, field, kind, check).
SETTINGS = {
    "temp_text": ("text", "temperature", float, lambda v: v >= 0),
    "temp_audio": ("audio", "temperature", float, lambda v: v >= 0),
    "top_p_text": ("text", "top_p", float, lambda v: 0 <= v <= 1),
    "top_p_audio": ("audio", "top_p", float, lambda v: 0 <= v <= 1),
    "top_k_text": ("text", "top_k", int, lambda v: v >= 0),
    "top_k_audio": ("audio", "top_k", int, lambda v: v >= 0),
    "repetition_penalty_text": ("text", "repetition_penalty", float, lambda v: v > 0),
    "repetition_penalty_audio": ("audio", "repetition_penalty", float, lambda v: v > 0),
    "repetition_penalty_window_text": ("text", "window", int, lambda v: 1 <= v <= PENALTY_RING),
    "repetition_penalty_window_audio": ("audio", "window", int, lambda v: 1 <= v <= PENALTY_RING),
}
RANGES = {
    "temperature": ">= 0",
    "top_p": "in [0, 1]",
    "top_k": ">= 0",
    "repetition_penalty": "> 0",
    "window": f"in 1..{PENALTY_RING}",
}


def apply_settings(current: SamplingConfig, settings: Any) -> SamplingConfig:
    """`current` with the released-named `settings` applied; a `ServeError` (with `.key`) names a bad one."""
    if not isinstance(settings, dict):
        raise ServeError("settings must be a JSON object")
    streams = {"text": dataclasses.asdict(current.text), "audio": dataclasses.asdict(current.audio)}
    do_sample = current.do_sample
    for key, value in settings.items():
        error = ServeError(f"unknown setting {key!r} (known: use_sampling, {', '.join(SETTINGS)})")
        error.key = key
        if key == "use_sampling":
            if not isinstance(value, bool):
                error.args = (f"use_sampling must be true or false, got {value!r}",)
                raise error
            do_sample = value
            continue
        if key not in SETTINGS:
            raise error
        stream, field, kind, check = SETTINGS[key]
        number = value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
        if number is None or (kind is int and number != int(number)) or not check(number):
            error.args = (
                f"{key} must be {'an integer' if kind is int else 'a number'} {RANGES[field]}, got {value!r}",
            )
            raise error
        streams[stream][field] = kind(number)
    return dataclasses.replace(
        current, text=StreamSampling(**streams["text"]), audio=StreamSampling(**streams["audio"]), do_sample=do_sample
    )


# ---------------------------------------------------------------------------------------------- connections
class Connection:
    """One socket: its Opus reader and writer, and the queue of messages waiting to be sent."""

    def __init__(self, request, ws, session: LiveSession, sample_rate: int):
        import sphn

        self.request, self.ws, self.session = request, ws, session
        self.reader = sphn.OpusStreamReader(sample_rate)
        self.writer = sphn.OpusStreamWriter(sample_rate)
        self.out: asyncio.Queue = asyncio.Queue(OUT_QUEUE)
        self.logged: set[str] = set()
        self.sender: asyncio.Task | None = None
        self.last_audio = time.monotonic()
        self.unsent_since: float | None = None  # since when the socket has held bytes the kernel would not take

    def log_once(self, kind: str, message: str) -> None:
        if kind not in self.logged:
            self.logged.add(kind)
            LOG.warning("conversation %d: %s", self.session.number, message)

    def drain_reader(self) -> None:
        """Moves the user's decoded audio (the reader decodes in its own thread, a page per call) to the session."""
        while True:
            pcm = self.reader.read_pcm()
            if pcm is None or pcm.shape[-1] == 0:
                return
            self.session.feed(pcm)

    def queue(self, message: bytes) -> bool:
        """False if the client is not reading (its queue is full)."""
        try:
            self.out.put_nowait(message)
            return True
        except asyncio.QueueFull:
            return False

    def stalled(self, stall_s: float) -> bool:
        """The client has left what it was sent unread for `stall_s`: its socket's kernel buffers are full, so
        bytes wait in the transport (a reading client takes each frame as it comes)."""
        transport = self.request.transport
        if transport is None or transport.get_write_buffer_size() == 0:
            self.unsent_since = None
            return False
        now = time.monotonic()
        self.unsent_since = now if self.unsent_since is None else self.unsent_since
        return now - self.unsent_since > stall_s

    async def send_loop(self) -> None:
        while True:
            await self.ws.send_bytes(await self.out.get())


class Server:
    def __init__(
        self,
        live: LiveSessions,
        sampling: SamplingConfig,
        sample_rate: int,
        idle_timeout_s: float = 30.0,
        stall_s: float = 5.0,
    ):
        self.live, self.sampling, self.sample_rate = live, sampling, sample_rate
        self.idle_timeout_s, self.stall_s = idle_timeout_s, stall_s
        self.connections: dict[int, Connection] = {}  # by session number
        self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="flmjax-tick")
        self.stopping = asyncio.Event()
        self._last_late_log = 0.0

    # ------------------------------------------------------------------ http
    async def chat(self, request):
        from aiohttp import web

        seed = request.query.get("seed")
        if seed is not None and not seed.lstrip("-").isdigit():
            return web.json_response({"error": f"seed must be an integer, got {seed!r}"}, status=400)
        if self.stopping.is_set() or not self.live.can_admit():
            reason = (
                "the server is shutting down"
                if self.stopping.is_set()
                else f"all {self.live.slots} conversation slots are busy; try again later"
            )
            LOG.info("refused a connection: %s", reason)
            return web.json_response({"error": reason}, status=503)
        session = self.live.admit(self.sampling, None if seed is None else int(seed) % 2**32)
        ws = web.WebSocketResponse(max_msg_size=1 << 20)
        connection = Connection(request, ws, session, self.sample_rate)
        self.connections[session.number] = connection
        try:
            await ws.prepare(request)
            _small_send_buffers(request.transport)
            LOG.info("conversation %d: connected from %s", session.number, request.remote)
            connection.sender = asyncio.create_task(connection.send_loop())
            connection.queue(HANDSHAKE)
            await self._receive(connection)
        finally:
            session.closing = True
            if connection.sender is not None:
                connection.sender.cancel()
            self.connections.pop(session.number, None)
            LOG.info(
                "conversation %d: closed (%d frames heard, %d served, %d underruns)",
                session.number,
                session.frames_heard,
                session.frames_served,
                session.underruns,
            )
        return ws

    async def _receive(self, connection: Connection) -> None:
        from aiohttp import WSMsgType

        async for message in connection.ws:
            if message.type != WSMsgType.BINARY:
                connection.log_once("type", f"ignoring a {message.type.name} message (the protocol is binary)")
                continue
            data = message.data
            if not data:
                connection.log_once("empty", "ignoring an empty message")
            elif data[0] != AUDIO:
                connection.log_once("kind", f"ignoring messages of unknown kind {data[0]}")
            elif len(data) == 1:
                continue  # no pages yet: the released Gradio client sends its writer's empty reads as they are
            elif not data[1:].startswith(OGG_PAGE):
                connection.log_once("opus", "ignoring audio that is not Ogg/Opus pages")
            else:
                connection.reader.append_bytes(data[1:])
                connection.last_audio = time.monotonic()

    async def settings(self, request):
        from aiohttp import web

        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            return web.json_response({"error": f"invalid JSON: {error}"}, status=400)
        try:
            self.sampling = apply_settings(self.sampling, body)
        except ServeError as error:
            return web.json_response({"error": str(error), "key": getattr(error, "key", None)}, status=400)
        LOG.info("settings for new conversations: %s", body)
        return web.json_response({"status": "success", "settings": settings_view(self.sampling)})

    async def health(self, request):
        from aiohttp import web

        return web.json_response(self.live.health())

    # ------------------------------------------------------------------ the frame clock
    async def clock(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while not self.stopping.is_set():
            delay = next_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            start = loop.time()
            await self.tick(loop)
            seconds = loop.time() - start
            next_at = max(next_at + FRAME_S, loop.time())  # late: start the next tick now, never catch up
            if seconds > FRAME_S and start - self._last_late_log > 1.0:
                self._last_late_log = start
                LOG.warning("tick took %.1f ms (> 80 ms); %d late ticks so far", seconds * 1e3, self.live.late_ticks)

    async def tick(self, loop) -> None:
        now = time.monotonic()
        for connection in list(self.connections.values()):
            connection.drain_reader()
            if connection.session.slot is None and now - connection.last_audio > self.idle_timeout_s:
                connection.log_once("idle", f"no audio for {self.idle_timeout_s:.0f} s; closing")
                self._close(connection, 1000, "no audio received")
        start = time.perf_counter()
        inputs = self.live.begin_tick()
        if inputs is None:
            return
        tick = await loop.run_in_executor(self.pool, self.live.scheduler.step, inputs)
        for served in self.live.end_tick(tick, time.perf_counter() - start, FRAME_S):
            connection = self.connections.get(served.session.number)
            if connection is None:
                continue
            connection.writer.append_pcm(served.voice)
            messages = [bytes([AUDIO]) + connection.writer.read_bytes()] if served.voice is not None else []
            messages += [bytes([TEXT]) + piece.encode() for piece in served.text]
            queued = all(connection.queue(m) for m in messages if len(m) > 1)
            if not queued or connection.stalled(self.stall_s):
                connection.log_once("slow", "the client is not reading what it is sent; closing")
                self._close(connection, 1008, "not reading")
        for connection in list(self.connections.values()):
            if connection.session.ended == "context":
                connection.log_once("context", "reached the conversation length limit; closing")
                self._close(connection, 1000, "conversation length limit reached")

    def _close(self, connection: Connection, code: int, message: str) -> None:
        """Ends a conversation now: its slot is freed at the next tick, its socket closed without waiting on it."""
        connection.session.closing = True
        self.connections.pop(connection.session.number, None)
        if connection.sender is not None:
            connection.sender.cancel()
        asyncio.create_task(_close_socket(connection, code, message))

    async def shutdown(self) -> None:
        self.stopping.set()
        await asyncio.gather(*[_close_socket(c, 1001, "server shutting down") for c in list(self.connections.values())])
        self.pool.shutdown(wait=True)


def _small_send_buffers(transport) -> None:
    """Little room for a socket's unsent bytes, so a client that stops reading is seen within seconds (a
    reading client never needs more: a second of voice is ~4 kB of Opus)."""
    import socket

    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
    transport.set_write_buffer_limits(high=SEND_BUFFER)


async def _close_socket(connection: Connection, code: int, message: str, timeout_s: float = 2.0) -> None:
    """A close frame with `message`; a peer that does not answer within `timeout_s` has its connection cut."""
    try:
        await asyncio.wait_for(connection.ws.close(code=code, message=message.encode()), timeout_s)
    except (asyncio.TimeoutError, ConnectionError, RuntimeError):
        pass
    finally:
        transport = connection.request.transport
        if not connection.ws.closed and transport is not None:
            transport.abort()


def settings_view(sampling: SamplingConfig) -> dict[str, Any]:
    view = {"use_sampling": sampling.do_sample}
    for key, (stream, field, _, _) in SETTINGS.items():
        view[key] = getattr(getattr(sampling, stream), field)
    return view


# ---------------------------------------------------------------------------------------------- command line
def parse_args(argv: Sequence[str] | None) -> Any:
    parser = cli.ArgumentParser(prog="python -m launch.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--checkpoint", required=True, help="released-format folder, stage workdir, main-job workdir or step folder"
    )
    parser.add_argument("--step", type=int, help="training checkpoint step (default: newest complete)")
    parser.add_argument(
        "--mimi",
        required=True,
        help="Mimi folder (model.safetensors [+ mimi_config.json]), or 'random': the released "
        "size with random weights (benchmarks, smoke tests)",
    )
    parser.add_argument("--tokenizer", help="tokenizer file or folder (text pieces are sent only with one)")
    parser.add_argument("--slots", type=int, default=8, help="conversations served at once (one batch)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8990)
    parser.add_argument("--max_minutes", type=float, default=5.0, help="longest conversation (its KV cache)")
    parser.add_argument("--greedy", action="store_true", help="argmax decoding by default (use_sampling false)")
    parser.add_argument("--seed", type=int, default=0, help="base of every conversation's key")
    parser.add_argument(
        "--idle_timeout_s",
        type=float,
        default=30.0,
        help="close a connection that sends no audio for this long before its first frame",
    )
    parser.add_argument(
        "--stall_s", type=float, default=5.0, help="close a connection that takes none of what it is sent for this long"
    )
    args = parser.parse_args(argv)
    for name in ("slots", "port", "max_minutes", "idle_timeout_s", "stall_s"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name} must be positive, got {getattr(args, name)}")
    return args


def load_mimi(path: str, seed: int):
    if path == "random":
        config = codec.MimiConfig()
        return config, codec.init_params(config, seed)
    return codec.load_codec(path)


def build(args) -> tuple[LiveSessions, SamplingConfig, int]:
    """The model, codec and scheduler of `args`, compiled (one warm-up tick) before the server listens."""
    config, params, loaded = checkpoints.load_model(args.checkpoint, args.step)
    LOG.info("model: %s", loaded)
    tokenizer = None
    if args.tokenizer:
        tokenizer = text_lib.load_tokenizer(args.tokenizer, config.text_wait_id)
        text_lib.check_compatible(tokenizer, config)
    else:
        LOG.info("no --tokenizer: the monologue's text pieces are not sent")
    mimi_config, mimi_params = load_mimi(args.mimi, args.seed)
    stream_sampling = SamplingConfig(
        text=dataclasses.replace(SamplingConfig().text, window=PENALTY_RING),
        audio=dataclasses.replace(SamplingConfig().audio, window=PENALTY_RING),
        do_sample=True,
    )
    max_frames = max(1, round(args.max_minutes * 60 / FRAME_S))
    scheduler = Scheduler(
        config,
        params,
        slots=args.slots,
        max_frames=max_frames,
        sampling=stream_sampling,
        codec=audio_sessions.StreamingCodec(config, mimi_config, mimi_params, args.slots),
    )
    start = time.perf_counter()
    silence = np.zeros((args.slots, mimi_config.frame_size), np.float32)
    # Compile every path a tick takes (a session's start with its own sampling, its decoder's restart) before
    # listening: the first conversation's ticks are then on time.
    slot = scheduler.open(jax.random.key(args.seed), stream_sampling)
    for _ in range(3):
        scheduler.step(silence)
    scheduler.close(slot)
    LOG.info("compiled the %d-slot step in %.1f s", args.slots, time.perf_counter() - start)
    sampling = dataclasses.replace(stream_sampling, do_sample=not args.greedy)
    return LiveSessions(scheduler, tokenizer, seed=args.seed), sampling, mimi_config.sample_rate


async def serve(args, live: LiveSessions, sampling: SamplingConfig, sample_rate: int) -> None:
    from aiohttp import web

    server = Server(live, sampling, sample_rate, args.idle_timeout_s, args.stall_s)
    app = web.Application()
    app.router.add_get("/api/chat", server.chat)
    app.router.add_post("/api/settings", server.settings)
    app.router.add_get("/api/health", server.health)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port)
    await site.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"serving {live.slots} slots at ws://{args.host}:{args.port}/api/chat", flush=True)
    clock = asyncio.create_task(server.clock())
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait([clock, stopped], return_when=asyncio.FIRST_COMPLETED)
    LOG.info("stopping: closing %d connection(s)", len(server.connections))
    await server.shutdown()
    clock.cancel()
    stopped.cancel()
    await runner.cleanup()
    print(f"stopped: {json.dumps(live.health())}", flush=True)
    if clock.done() and not clock.cancelled() and clock.exception() is not None:
        raise clock.exception()  # the frame clock failed: a bug, with its traceback


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr, force=True
    )
    try:
        import aiohttp  # noqa: F401
        import sphn  # noqa: F401
    except ImportError as error:
        raise ServeError(f"launch.serve needs the serve extra (pip install -e '.[serve]'): {error}") from None
    live, sampling, sample_rate = build(args)
    asyncio.run(serve(args, live, sampling, sample_rate))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
