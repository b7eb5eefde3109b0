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

This module is the command line: the model, codec and scheduler built and compiled, the server run until a
signal; `launch.serve_protocol` speaks the protocol and runs the frame clock, `launch.serve_settings` reads the
settings requests.
"""

from __future__ import annotations

import asyncio
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
from flmjax.infer import audio as audio_sessions
from flmjax.infer.live import LiveSessions
from flmjax.infer.sampling import SamplingConfig
from flmjax.infer.sessions import Scheduler
from flmjax.streams import FRAME_S
from launch import cli
from launch.serve_protocol import Server
from launch.serve_settings import PENALTY_RING, ServeError

LOG = logging.getLogger("flmjax.serve")


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
