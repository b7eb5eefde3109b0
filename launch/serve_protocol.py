"""The released protocol over aiohttp (`launch.serve`'s docstring has it): a `Connection` per WebSocket (its Opus
reader and writer, the queue of messages waiting for the socket), and the `Server`: its three endpoints
(`/api/chat`, `/api/settings`, `/api/health`) and the 80 ms frame clock that runs every conversation's tick
and closes the connections that are idle, not reading, or out of context.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import time

from flmjax.infer.live import LiveSession, LiveSessions
from flmjax.infer.sampling import SamplingConfig
from flmjax.streams import FRAME_S
from launch.serve_settings import ServeError, apply_settings, settings_view

LOG = logging.getLogger("flmjax.serve")
HANDSHAKE, AUDIO, TEXT = b"\x00", 1, 2
OGG_PAGE = b"OggS"
OUT_QUEUE = 64  # messages (~2.5 s of voice and text) waiting for a socket before it counts as not reading
SEND_BUFFER = 4096  # bytes the kernel may hold for a socket (it doubles them): a stalled reader shows soon


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
