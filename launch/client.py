"""`python -m launch.client`: talk to a served model (`launch.serve`, or the released server) with a WAV file as
the microphone.

    python -m launch.client --url ws://HOST:PORT/api/chat --wav IN.wav --out OUT.wav [--realtime] [--seed N]

It speaks the released protocol the way the released terminal client does (`websockets` + `sphn` Opus
streams): waits for the handshake, sends the WAV (resampled to 24 kHz mono) as Opus pages of 80 ms frames,
paced like a live microphone with `--realtime` or as fast as the server takes them without, then a few frames
of silence so the last words leave the encoder. It writes the model's voice time-aligned with the input (stereo:
user left, model right; the model's frame s-1 plays in frame s's slot, as live) and prints the monologue's text
as it comes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import time
from typing import Sequence

import numpy as np

from flmjax import audio as audio_lib
from flmjax.errors import UserError
from launch import cli

SAMPLE_RATE = 24000
FRAME = 1920
FLUSH_FRAMES = 3  # silence after the input: the Opus writer holds the last pages back until more audio comes


class ClientError(UserError, RuntimeError):
    """The server refused the conversation or went away."""


@dataclasses.dataclass
class Conversation:
    """What a conversation gave: the model's voice [n] at 24 kHz aligned with the input (same length), its
    monologue text pieces, and when the handshake came (seconds after connecting)."""

    voice: np.ndarray
    text: list[str]
    handshake_s: float
    received_samples: int
    closed_by_server: tuple[int, str] | None = None  # (code, reason) of a close frame the server sent first


async def converse(
    url: str, user: np.ndarray, *, realtime: bool = False, timeout_s: float = 120.0, on_text=None
) -> Conversation:
    """Streams `user` (float32 mono at 24 kHz) to the server at `url` and collects its answer, until the voice
    that came back is as long as what was sent (or `timeout_s`)."""
    import sphn
    import websockets
    from websockets.asyncio.client import connect

    writer, reader = sphn.OpusStreamWriter(SAMPLE_RATE), sphn.OpusStreamReader(SAMPLE_RATE)
    frames = -(-len(user) // FRAME)
    padded = np.zeros((frames + FLUSH_FRAMES) * FRAME, np.float32)
    padded[: len(user)] = user
    voice, text = [], []
    start = time.monotonic()
    try:
        ws = await connect(url, proxy=None, max_size=1 << 22)
    except websockets.exceptions.InvalidStatus as error:
        body = error.response.body.decode(errors="replace") if error.response.body else ""
        raise ClientError(f"{url} refused the conversation: HTTP {error.response.status_code} {body}") from None
    except OSError as error:
        raise ClientError(f"cannot connect to {url}: {error}") from None
    async with ws:
        first = await asyncio.wait_for(ws.recv(), timeout_s)
        if first != b"\x00":
            raise ClientError(f"expected the handshake b'\\x00', got {first[:16]!r}")
        handshake_s = time.monotonic() - start

        def received() -> int:
            while True:
                pcm = reader.read_pcm()
                if pcm is None or pcm.shape[-1] == 0:
                    return sum(len(v) for v in voice)
                voice.append(np.asarray(pcm, np.float32))

        async def send() -> None:
            began = time.monotonic()
            for index in range(0, len(padded), FRAME):
                writer.append_pcm(padded[index : index + FRAME])
                pages = writer.read_bytes()
                if pages:
                    try:
                        await ws.send(b"\x01" + pages)
                    except websockets.exceptions.ConnectionClosed:
                        return  # the server ended the conversation: keep what came back
                if realtime:
                    await asyncio.sleep(max(0.0, began + (index // FRAME + 1) * FRAME / SAMPLE_RATE - time.monotonic()))
                else:
                    await asyncio.sleep(0)

        async def receive() -> None:
            async for message in ws:
                if not isinstance(message, bytes) or not message:
                    continue
                if message[0] == 1:
                    reader.append_bytes(message[1:])
                elif message[0] == 2:
                    piece = message[1:].decode(errors="replace")
                    text.append(piece)
                    if on_text is not None:
                        on_text(piece)

        receiving = asyncio.create_task(receive())
        await send()
        deadline = time.monotonic() + timeout_s
        # The model's frame s-1 comes back after the server heard frame s: wait for as many frames as were sent.
        while received() < (frames - 1) * FRAME and time.monotonic() < deadline and not receiving.done():
            await asyncio.sleep(0.02)
        receiving.cancel()
        if receiving.done() and not receiving.cancelled() and receiving.exception() is not None:
            raise ClientError(f"the connection failed: {receiving.exception()}")
    closed_by_server, closing = None, ws.protocol.close_exc
    if closing.rcvd is not None and (closing.sent is None or closing.rcvd_then_sent):
        closed_by_server = (closing.rcvd.code, closing.rcvd.reason)
    total = received()
    spoken = np.concatenate([np.zeros(FRAME, np.float32)] + voice) if voice else np.zeros(0, np.float32)
    aligned = np.zeros(len(user), np.float32)
    aligned[: min(len(user), len(spoken))] = spoken[: len(user)]
    return Conversation(
        voice=aligned, text=text, handshake_s=handshake_s, received_samples=total, closed_by_server=closed_by_server
    )


def parse_args(argv: Sequence[str] | None):
    parser = cli.ArgumentParser(prog="python -m launch.client", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="ws://127.0.0.1:8990/api/chat", help="the server's /api/chat WebSocket")
    parser.add_argument("--wav", required=True, help="the user's side of the conversation (any rate, mono)")
    parser.add_argument("--out", required=True, help="stereo WAV written: the user left, the model right")
    parser.add_argument("--realtime", action="store_true", help="send at the pace of a live microphone")
    parser.add_argument("--seed", type=int, help="the conversation's key (a launch.serve extension: ?seed=N)")
    parser.add_argument("--timeout_s", type=float, default=120.0)
    parser.add_argument("--overwrite", action="store_true")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    import os

    args = parse_args(argv)
    if os.path.exists(args.out) and not args.overwrite:
        raise ClientError(f"output exists: {args.out} (use --overwrite to replace)")
    user = audio_lib.load_audio(args.wav, SAMPLE_RATE, mono=True)[0]
    url = args.url if args.seed is None else f"{args.url}{'&' if '?' in args.url else '?'}seed={args.seed}"
    result = asyncio.run(
        converse(
            url,
            user,
            realtime=args.realtime,
            timeout_s=args.timeout_s,
            on_text=lambda piece: print(piece, end="", flush=True),
        )
    )
    print()
    audio_lib.write_wav(args.out, np.stack([user, result.voice]), SAMPLE_RATE)
    print(
        f"wrote {args.out} ({len(user) / SAMPLE_RATE:.2f} s, stereo: user left, model right); "
        f"{result.received_samples / SAMPLE_RATE:.2f} s of voice received",
        file=sys.stderr,
    )
    if result.closed_by_server is not None:
        print(
            f"the server ended the conversation: {result.closed_by_server[1] or result.closed_by_server[0]}",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
