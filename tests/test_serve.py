"""`launch.serve` and `launch.client`: the released protocol end to end over loopback, many conversations on one
frame clock, misbehaving clients, slot exhaustion, settings, SIGTERM; and the frame clock without a network."""

import asyncio
import dataclasses
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import jax
import numpy as np
import pytest

from flmjax import codec, model, presets
from flmjax.convert import save_official
from flmjax.data.sentencepiece_tokenizer import SentencePieceTokenizer, train_sentencepiece
from flmjax.infer import audio as audio_sessions
from flmjax.infer.live import LiveSessions, TextPieces
from flmjax.infer.sampling import SamplingConfig
from flmjax.infer.sessions import Scheduler
from launch import client as client_lib
from launch import serve_settings
from tests.conftest import REPO_ROOT, golden_path

pytestmark = pytest.mark.xdist_group("serve")  # one server process, its tests in order

SLOTS = 6
FRAME = 1920
WORDS = "hello there how are you doing today fine thanks what about the weather sunny and warm".split()


def tokenizer_bytes() -> bytes:
    return train_sentencepiece([" ".join(WORDS[i : i + 5]) for i in range(len(WORDS) - 5)] * 20, 32)


def user_audio(seconds: float, seed: int) -> np.ndarray:
    """Speech-like bursts of noise with pauses, float32 at 24 kHz."""
    rng = np.random.default_rng(seed)
    n = int(seconds * 24000)
    envelope = (np.sin(np.arange(n) / 24000 * 2 * np.pi * rng.uniform(0.3, 0.8)) > 0).astype(np.float32)
    return (0.1 * rng.standard_normal(n) * envelope).astype(np.float32)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A server of a tiny random model (with a tokenizer) and the golden small Mimi, as `python -m launch.serve`."""
    folder = tmp_path_factory.mktemp("serve")
    (folder / "tok.model").write_bytes(tokenizer_bytes())
    tokenizer = SentencePieceTokenizer(tokenizer_bytes())
    config = dataclasses.replace(
        presets.preset("tiny"), vocab_size=tokenizer.vocab_size, text_wait_id=tokenizer.wait_id
    )
    save_official(folder / "ckpt", config, model.init_params(config, jax.random.key(0)), dtype="float32")
    port = free_port()
    log_path = folder / "server.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "launch.serve",
                "--checkpoint",
                folder / "ckpt",
                "--mimi",
                golden_path("mimi_small"),
                "--tokenizer",
                folder / "tok.model",
                "--slots",
                str(SLOTS),
                "--port",
                str(port),
                "--max_minutes",
                "1",
                "--idle_timeout_s",
                "4",
                "--stall_s",
                "1",
            ],
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 300
    while "serving" not in log_path.read_text():
        assert process.poll() is None, log_path.read_text()
        assert time.monotonic() < deadline, "the server did not start within 300 s"
        time.sleep(0.5)
    yield dict(
        url=f"ws://127.0.0.1:{port}/api/chat",
        http=f"http://127.0.0.1:{port}",
        process=process,
        log=log_path,
        tokenizer=tokenizer,
    )
    if process.poll() is None:
        process.kill()
        process.wait(10)


def health(server) -> dict:
    with urllib.request.urlopen(server["http"] + "/api/health", timeout=10) as response:
        return json.loads(response.read())


def post_settings(server, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(server["http"] + "/api/settings", data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def wait_until_free(server, timeout_s: float = 10) -> None:
    """Until every conversation of an earlier test has let its slot go (at the tick after it closed)."""
    deadline = time.monotonic() + timeout_s
    while health(server)["slots_in_use"]:
        assert time.monotonic() < deadline, health(server)
        time.sleep(0.1)


def converse(server, audio, seed=None, **options):
    url = server["url"] if seed is None else f"{server['url']}?seed={seed}"
    return client_lib.converse(url, audio, timeout_s=60, **options)


def log_lines(server, fragment: str, conversation: int | None = None) -> list[str]:
    lines = [line for line in server["log"].read_text().splitlines() if fragment in line]
    return [line for line in lines if conversation is None or f"conversation {conversation}:" in line]


# ---------------------------------------------------------------------------------------------- the protocol
def test_three_concurrent_clients_each_hear_as_much_as_they_said(served):
    audios = [user_audio(seconds, seed) for seconds, seed in ((3.0, 1), (2.2, 2), (2.6, 3))]
    before = health(served)

    async def three():
        return await asyncio.gather(*[converse(served, audio) for audio in audios])

    results = asyncio.run(three())
    for audio, result in zip(audios, results):
        assert result.handshake_s < 10
        assert abs(result.received_samples - len(audio)) <= 2 * FRAME, (result.received_samples, len(audio))
        assert result.voice.shape == audio.shape and np.abs(result.voice).max() > 0  # the model's voice came back
        assert result.text and "".join(result.text).strip()  # a random model writes: pieces of text came
    after = health(served)
    assert after["slots_total"] == SLOTS
    assert after["frames_served"] - before["frames_served"] >= sum(len(a) // FRAME - 1 for a in audios)


def test_a_conversation_gets_the_same_answer_whatever_else_is_served(served):
    """The same audio with the same key, sent ahead of real time: alone, and beside two other conversations."""
    audio = user_audio(2.4, 7)
    alone = asyncio.run(converse(served, audio, seed=11))

    async def crowded():
        return await asyncio.gather(
            converse(served, audio, seed=11),
            converse(served, user_audio(3, 8), seed=12),
            converse(served, user_audio(2, 9)),
        )

    again = asyncio.run(crowded())[0]
    assert "".join(again.text) == "".join(alone.text) and alone.text
    compared = len(audio) - 2 * FRAME  # the Opus writer holds its last pages back until the conversation goes on
    np.testing.assert_array_equal(again.voice[:compared], alone.voice[:compared])
    other_key = asyncio.run(converse(served, audio, seed=12))
    assert not np.array_equal(other_key.voice[:compared], alone.voice[:compared])  # the key matters


def test_settings_are_checked_and_apply_to_new_conversations(served):
    assert post_settings(served, b"{not json")[0] == 400
    status, body = post_settings(served, json.dumps({"temp_text": -1}).encode())
    assert status == 400 and body["key"] == "temp_text" and ">= 0" in body["error"]
    status, body = post_settings(served, json.dumps({"top_k_audio": 2.5}).encode())
    assert status == 400 and body["key"] == "top_k_audio"
    status, body = post_settings(served, json.dumps({"repetition_penalty_window_text": 51}).encode())
    assert status == 400 and body["key"] == "repetition_penalty_window_text"
    status, body = post_settings(served, json.dumps({"temperature": 1.0}).encode())
    assert status == 400 and body["key"] == "temperature" and "unknown setting" in body["error"]
    status, body = post_settings(served, json.dumps({"use_sampling": False}).encode())
    assert status == 200 and body["settings"]["use_sampling"] is False
    audio = user_audio(1.6, 5)

    async def two_keys():
        return await asyncio.gather(converse(served, audio, seed=1), converse(served, audio, seed=2))

    first, second = asyncio.run(two_keys())  # greedy: the key no longer matters
    assert "".join(first.text) == "".join(second.text)
    np.testing.assert_array_equal(first.voice[: len(audio) - 2 * FRAME], second.voice[: len(audio) - 2 * FRAME])
    assert post_settings(served, json.dumps({"use_sampling": True}).encode())[0] == 200


# ---------------------------------------------------------------------------------------------- bad clients
async def _raw_client(url: str, **options):
    from websockets.asyncio.client import connect

    ws = await connect(url, proxy=None, **options)
    assert await asyncio.wait_for(ws.recv(), 30) == b"\x00"
    return ws


def _conversation_number(server, before: set[str]) -> int:
    """The number of the conversation that connected since the log held `before`."""
    new = [line for line in log_lines(server, "connected from") if line not in before]
    return int(new[-1].split("conversation ")[1].split(":")[0])


def test_misbehaving_clients_neither_stall_the_others_nor_crash_the_server(served):
    import sphn

    good_audio = user_audio(5.0, 21)

    async def scenario():
        seen = set(log_lines(served, "connected from"))
        silent = await _raw_client(served["url"])
        numbers = {"silent": _conversation_number(served, seen)}
        seen = set(log_lines(served, "connected from"))
        garbage = await _raw_client(served["url"])
        numbers["garbage"] = _conversation_number(served, seen)
        for message in (b"\x07junk", b"\x01not ogg at all", b"", b"\x07junk", b"\x01still not ogg", b""):
            await garbage.send(message)
        writer = sphn.OpusStreamWriter(24000)  # then good audio: still served
        for index in range(0, 24000, FRAME):
            writer.append_pcm(
                user_audio(1.0, 22)[index : index + FRAME] if index + FRAME <= 24000 else np.zeros(FRAME, np.float32)
            )
            pages = writer.read_bytes()
            if pages:
                await garbage.send(b"\x01" + pages)
        seen = set(log_lines(served, "connected from"))
        quitter = await _raw_client(served["url"])
        numbers["quitter"] = _conversation_number(served, seen)
        writer = sphn.OpusStreamWriter(24000)
        for index in range(0, 12 * FRAME, FRAME):
            writer.append_pcm(user_audio(1.0, 23)[index : index + FRAME])
            pages = writer.read_bytes()
            if pages:
                await quitter.send(b"\x01" + pages)
        quitter.transport.abort()  # gone mid-sentence, without a close frame
        # One that sends a long turn ahead of real time and reads nothing (a small receive buffer fills fast).
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", int(served["http"].rsplit(":", 1)[1])))
        sock.setblocking(False)
        seen = set(log_lines(served, "connected from"))
        deaf = await _raw_client(served["url"], sock=sock, max_queue=1)
        numbers["deaf"] = _conversation_number(served, seen)
        writer = sphn.OpusStreamWriter(24000)
        long_turn = user_audio(20.0, 24)
        for index in range(0, len(long_turn), FRAME):
            writer.append_pcm(long_turn[index : index + FRAME])
            pages = writer.read_bytes()
            if pages:
                await deaf.send(b"\x01" + pages)
        good = await converse(served, good_audio, realtime=True)
        await asyncio.sleep(6)  # the silent one's idle timeout (4 s) and the deaf one's stall (buffers + 1 s)
        await garbage.close()
        for ws in (silent, deaf):  # closed by the server: let the sockets go
            ws.transport.abort()
        return numbers, good

    numbers, good = asyncio.run(scenario())
    assert served["process"].poll() is None  # still serving
    assert abs(good.received_samples - len(good_audio)) <= 2 * FRAME
    assert np.abs(good.voice).max() > 0
    for kind, fragment in (
        ("silent", "no audio for"),
        ("garbage", "unknown kind 7"),
        ("garbage", "not Ogg/Opus"),
        ("garbage", "empty message"),
        ("deaf", "not reading"),
        ("quitter", "closed"),
    ):
        assert len(log_lines(served, fragment, numbers[kind])) == 1, (kind, fragment, served["log"].read_text())
    garbage_closed = log_lines(served, "closed (", numbers["garbage"])
    assert not garbage_closed or "0 frames heard" not in garbage_closed[0]  # its good audio was heard
    assert "Traceback" not in served["log"].read_text()


def test_all_slots_busy_is_refused_and_a_freed_slot_is_reused(served):
    from websockets.exceptions import InvalidStatus

    wait_until_free(served)

    async def scenario():
        held = [await _raw_client(served["url"]) for _ in range(SLOTS)]
        with pytest.raises(InvalidStatus) as refused:
            await _raw_client(served["url"])
        assert refused.value.response.status_code == 503
        assert b"slots are busy" in refused.value.response.body
        await held[0].close()
        for _ in range(50):  # freed at the next tick
            if health(served)["slots_in_use"] < SLOTS:
                break
            await asyncio.sleep(0.1)
        again = await _raw_client(served["url"])
        for ws in held[1:] + [again]:
            await ws.close()

    asyncio.run(scenario())


def test_sigterm_closes_every_socket_with_a_close_frame_and_exits_0(served):
    from websockets.exceptions import ConnectionClosed

    wait_until_free(served)

    async def scenario():
        talking = asyncio.create_task(converse(served, user_audio(30.0, 31), realtime=True))
        idle = await _raw_client(served["url"])
        await asyncio.sleep(1.5)
        served["process"].send_signal(signal.SIGTERM)
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(idle.recv(), 20)
        result = await asyncio.wait_for(talking, 30)
        return closed.value, result

    closed, result = asyncio.run(scenario())
    assert closed.rcvd is not None and closed.rcvd.code == 1001 and closed.rcvd.reason == "server shutting down"
    assert result.received_samples > 0 and result.closed_by_server == (1001, "server shutting down")
    assert served["process"].wait(30) == 0
    assert "stopped:" in served["log"].read_text()


# ---------------------------------------------------------------------------------------------- the frame clock
def test_text_pieces_add_up_to_the_monologue():
    tokenizer = SentencePieceTokenizer(tokenizer_bytes())
    wait = tokenizer.wait_id
    ids = [wait] + tokenizer.encode("hello there how") + [wait, wait, 1] + tokenizer.encode("the weather") + [wait]
    pieces = TextPieces(tokenizer, wait)
    sent = [piece for token in ids for piece in pieces.push(token)]
    assert "".join(sent) == "hello there how\nthe weather\n"
    assert TextPieces(None, wait).push(5) == []


def test_live_sessions_hear_the_same_whatever_arrives_when():
    """Frame-clock level, no network: a session fed its audio in odd chunks at odd times beside another gives
    exactly the tokens it gives alone, fed all at once; a late frame is an underrun heard as silence."""
    config = presets.preset("tiny")
    params = model.init_params(config, jax.random.key(2))
    mimi_config, mimi_params = codec.load_codec(golden_path("mimi_small"))

    def live(slots):
        scheduler = Scheduler(
            config,
            params,
            slots=slots,
            max_frames=40,
            sampling=SamplingConfig(),
            codec=audio_sessions.StreamingCodec(config, mimi_config, mimi_params, slots),
        )
        return LiveSessions(scheduler, seed=4)

    audio = user_audio(1.2, 41)
    frames = len(audio) // FRAME

    def tick(clock, seconds=0.0):
        return clock.end_tick(clock.scheduler.step(clock.begin_tick()), seconds, 0.08)

    alone = live(1)
    session = alone.admit(seed=9)
    session.feed(audio)
    frames_alone = []
    while session.frames_heard < frames:
        frames_alone += [(s.frame, s.voice) for s in tick(alone)]
    assert session.underruns == 0

    crowded = live(3)
    crowded.admit(seed=1).feed(user_audio(3, 42))
    tick(crowded)
    again = crowded.admit(seed=9)
    chunks = np.split(audio, [1000, 5000, 5100, 16000])  # the first is less than a frame: it waits
    frames_again = []
    for chunk in chunks:
        again.feed(chunk)
        frames_again += [(s.frame, s.voice) for s in tick(crowded, 0.1) if s.session is again]
    while again.frames_heard < frames:
        frames_again += [(s.frame, s.voice) for s in tick(crowded) if s.session is again]
    assert again.underruns == 0 and crowded.late_ticks == len(chunks)
    assert len(frames_again) == len(frames_alone) == frames - 1
    np.testing.assert_array_equal([f for f, _ in frames_again], [f for f, _ in frames_alone])  # the same tokens
    # and the same voice, up to float32 summation order (a batch of 3 is another compiled program than of 1)
    np.testing.assert_allclose([v for _, v in frames_again], [v for _, v in frames_alone], atol=1e-5)
    # A frame that has not arrived is silence, counted.
    tick(crowded)
    assert again.underruns == 1 and crowded.health()["underruns"] >= 1


def test_settings_names_and_ranges():
    updated = serve_settings.apply_settings(
        SamplingConfig(), {"temp_text": 0.7, "top_k_audio": 250, "top_p_audio": 0.0, "use_sampling": False}
    )
    assert updated.text.temperature == 0.7 and updated.audio.top_k == 250 and not updated.do_sample
    for bad, key in (
        ({"top_p_text": 1.5}, "top_p_text"),
        ({"use_sampling": 1}, "use_sampling"),
        ({"temp_audio": "hot"}, "temp_audio"),
        ({"nope": 1}, "nope"),
    ):
        with pytest.raises(serve_settings.ServeError) as error:
            serve_settings.apply_settings(SamplingConfig(), bad)
        assert error.value.key == key
