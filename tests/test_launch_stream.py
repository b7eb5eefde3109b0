"""`python -m launch.stream`: golden tokens through the CLI, batch files, the monologue text, and its errors."""

import dataclasses
import subprocess
import sys

import jax
import numpy as np
import pytest

from flmjax import codec, model, presets
from flmjax.audio import load_audio, read_wav, resample, write_wav
from flmjax.convert import save_official
from flmjax.data.sentencepiece_tokenizer import SentencePieceTokenizer, train_sentencepiece
from flmjax.infer import sessions
from launch import cli
from launch import stream as stream_cli
from tests.conftest import REPO_ROOT, golden_path
from tests.helpers import damaged_copies


def run(argv) -> int:
    """The command line as `python -m launch.stream` runs it, in this process: its exit status."""
    return cli.run(stream_cli.main, [str(a) for a in argv])


def run_process(*argv) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "launch.stream", *map(str, argv)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_one_error_line(done: subprocess.CompletedProcess, *fragments: str) -> None:
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and all(fragment in last for fragment in fragments), last


WORDS = "hello there how are you doing today fine thanks what about the weather sunny and warm".split()


def tokenizer_bytes() -> bytes:
    return train_sentencepiece([" ".join(WORDS[i : i + 5]) for i in range(len(WORDS) - 5)] * 20, 32)


@pytest.fixture(scope="module")
def golden_stream():
    folder = golden_path("release_like")
    return folder, dict(np.load(folder / "stream.npz"))


def test_cli_reproduces_golden_greedy_frames(golden_stream, tmp_path):
    folder, reference = golden_stream
    np.save(tmp_path / "user.npy", reference["listen"])
    out = tmp_path / "out.npz"
    assert (
        run(["--checkpoint", str(folder), "--listen", str(tmp_path / "user.npy"), "--out", str(out), "--greedy"]) == 0
    )
    written = np.load(out)
    expected = reference["greedy/out_tokens"][1:]  # step s returns frame s-1: 60 steps, 59 frames
    np.testing.assert_array_equal(written["frames"], expected)
    np.testing.assert_array_equal(written["text_ids"], expected[:, 0])
    np.testing.assert_array_equal(written["speak_codes"], expected[:, 1:].T)
    assert written["step_ms"].shape == (60,) and (written["step_ms"] > 0).all()


@pytest.mark.parametrize("kind", ["main job's workdir", "step folder"])
def test_cli_takes_every_kind_of_checkpoint_path(golden_stream, tmp_path, kind):
    """The golden release imported as step 0 of the main job's last stage streams the same greedy frames, named by
    the main job's workdir or by the step's folder (`flmjax.checkpoints.resolve`)."""
    from launch import import_official

    folder, reference = golden_stream
    import_official.import_official(folder, tmp_path / "main" / "stage4_duplex_leading")
    (tmp_path / "main" / "stage1_post_train_trailing").mkdir()  # no checkpoint: passed over
    checkpoint = (
        tmp_path / "main"
        if kind == "main job's workdir"
        else tmp_path / "main" / "stage4_duplex_leading" / "checkpoints" / "0"
    )
    np.save(tmp_path / "user.npy", reference["listen"])
    out = tmp_path / "out.npz"
    assert (
        run(["--checkpoint", str(checkpoint), "--listen", str(tmp_path / "user.npy"), "--out", str(out), "--greedy"])
        == 0
    )
    np.testing.assert_array_equal(np.load(out)["frames"], reference["greedy/out_tokens"][1:])


@pytest.mark.slow
def test_batch_file_sessions_equal_each_alone(golden_stream, tmp_path):
    folder, reference = golden_stream
    listen = reference["listen"][0]  # [8, 60]
    rng = np.random.default_rng(0)
    users = {"long": listen, "short": rng.integers(0, 2048, (8, 25))}
    for name, codes in users.items():
        np.save(tmp_path / f"{name}.npy", codes)
    (tmp_path / "sessions.txt").write_text("long.npy\n# a comment\nshort.npy\n")
    # Sampled (the released defaults): each session has its own key, so batching changes nothing.
    assert (
        run(
            [
                "--checkpoint",
                str(folder),
                "--batch-file",
                str(tmp_path / "sessions.txt"),
                "--out",
                str(tmp_path / "out"),
                "--seed",
                "5",
            ]
        )
        == 0
    )
    for name, codes in users.items():
        alone = tmp_path / "alone" / f"{name}.npy"
        alone.parent.mkdir(exist_ok=True)
        np.save(alone, codes)
        assert (
            run(
                [
                    "--checkpoint",
                    str(folder),
                    "--listen",
                    str(alone),
                    "--out",
                    str(tmp_path / "alone" / f"{name}.npz"),
                    "--seed",
                    "5",
                ]
            )
            == 0
        )
        batched = np.load(tmp_path / "out" / f"{name}.npz")["frames"]
        assert batched.shape == (codes.shape[1] - 1, 9)
        np.testing.assert_array_equal(batched, np.load(tmp_path / "alone" / f"{name}.npz")["frames"])


def test_monologue_text_breaks_lines_at_wait(tmp_path):
    tokenizer = SentencePieceTokenizer(tokenizer_bytes())
    wait = tokenizer.wait_id
    hello, weather = tokenizer.encode("hello there"), tokenizer.encode("the weather")
    ids = np.array([wait, wait, *hello, wait, wait, wait, *weather, wait])
    assert sessions.monologue_text(ids, tokenizer, wait) == "hello there\nthe weather"


def test_cli_writes_the_monologue_with_a_tokenizer(tmp_path):
    (tmp_path / "tok.model").write_bytes(tokenizer_bytes())
    tokenizer = SentencePieceTokenizer(tokenizer_bytes())
    config = dataclasses.replace(
        presets.preset("tiny"), vocab_size=tokenizer.vocab_size, text_wait_id=tokenizer.wait_id
    )
    save_official(tmp_path / "ckpt", config, model.init_params(config, jax.random.key(0)), dtype="float32")
    np.save(tmp_path / "user.npy", np.random.default_rng(1).integers(0, 2048, (1, 8, 20)))
    out = tmp_path / "session.npz"
    assert (
        run(
            [
                "--checkpoint",
                str(tmp_path / "ckpt"),
                "--listen",
                str(tmp_path / "user.npy"),
                "--out",
                str(out),
                "--tokenizer",
                str(tmp_path / "tok.model"),
                "--seed",
                "3",
            ]
        )
        == 0
    )
    frames = np.load(out)["frames"]
    expected = sessions.monologue_text(frames[:, 0], tokenizer, tokenizer.wait_id)
    assert (tmp_path / "session.txt").read_text() == expected + "\n"
    assert (frames[:, 0] != tokenizer.wait_id).any()  # a random model writes some text: the file is not empty
    assert expected.strip()


def test_cli_errors_name_the_problem(golden_stream, tmp_path, capsys):
    folder, reference = golden_stream
    args = ["--checkpoint", str(folder), "--out", str(tmp_path / "out.npz")]
    np.save(tmp_path / "wrong_shape.npy", np.zeros((4, 10), np.int64))
    assert run(args + ["--listen", str(tmp_path / "wrong_shape.npy")]) == 2
    assert "have shape [4, 10]; expected [8, frames]" in capsys.readouterr().err
    bad = reference["listen"].copy()
    bad[0, 5, 7] = 2048
    np.save(tmp_path / "bad_codes.npy", bad)
    assert run(args + ["--listen", str(tmp_path / "bad_codes.npy")]) == 2
    assert "outside 0..2047" in capsys.readouterr().err
    assert not (tmp_path / "out.npz").exists()
    np.save(tmp_path / "ok.npy", reference["listen"][..., :5])
    assert run(args + ["--listen", str(tmp_path / "ok.npy"), "--max_frames", "3"]) == 2
    assert "context limit of 3 frames" in capsys.readouterr().err
    (tmp_path / "out.npz").write_bytes(b"keep me")
    assert run(args + ["--listen", str(tmp_path / "ok.npy")]) == 2
    assert "output exists" in capsys.readouterr().err
    assert (tmp_path / "out.npz").read_bytes() == b"keep me"
    assert (
        run(["--checkpoint", str(tmp_path), "--listen", str(tmp_path / "ok.npy"), "--out", str(tmp_path / "x.npz")])
        == 2
    )
    assert f"checkpoint {tmp_path}: it holds neither config.json" in capsys.readouterr().err


# ---------------------------------------------------------------------- audio in and out (golden small Mimi)
@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory):
    """The golden 3 s speech clip as a 16 kHz WAV (so the CLI must resample), and the golden Mimi's codes."""
    mimi = golden_path("mimi_small")
    reference = np.load(mimi / "golden.npz")
    path = tmp_path_factory.mktemp("audio") / "user.wav"
    write_wav(path, resample(reference["speech/audio"][0], 24000, 16000), 16000)
    return mimi, path


def test_wav_session_hears_the_streaming_encoder_and_speaks_in_time(golden_stream, speech_wav, tmp_path):
    folder, _ = golden_stream
    mimi, user_wav = speech_wav
    base = ["--checkpoint", str(folder), "--mimi", str(mimi), "--greedy"]
    assert (
        run(
            base
            + [
                "--listen",
                str(user_wav),
                "--out",
                str(tmp_path / "a.npz"),
                "--out_wav",
                str(tmp_path / "a.wav"),
                "--stereo",
            ]
        )
        == 0
    )
    written = np.load(tmp_path / "a.npz")
    user = load_audio(user_wav, 24000, mono=True)
    mimi_config, mimi_params = codec.load_codec(mimi)
    state = codec.init_codec_stream(mimi_config, mimi_params, 1)
    frames = -(-user.shape[1] // 1920)
    padded = np.zeros((1, 1, frames * 1920), np.float32)
    padded[0, 0, : user.shape[1]] = user[0]
    _, expected_codes = codec.encode_step(mimi_config, mimi_params, state, padded)  # all frames in one call
    np.testing.assert_array_equal(written["listen_codes"], np.asarray(expected_codes)[0])

    # The same session from the heard codes gives the same frames, and the same voice.
    np.save(tmp_path / "heard.npy", written["listen_codes"])
    assert (
        run(
            base
            + [
                "--listen",
                str(tmp_path / "heard.npy"),
                "--out",
                str(tmp_path / "b.npz"),
                "--out_wav",
                str(tmp_path / "b.wav"),
            ]
        )
        == 0
    )
    np.testing.assert_array_equal(np.load(tmp_path / "b.npz")["frames"], written["frames"])
    stereo, rate = read_wav(tmp_path / "a.wav")
    voice, _ = read_wav(tmp_path / "b.wav")
    assert rate == 24000 and stereo.shape == (2, user.shape[1])  # as long as the input
    np.testing.assert_allclose(stereo[0], user[0], atol=1 / 32767)  # user on the left (16-bit)
    np.testing.assert_array_equal(stereo[1], voice[0][: user.shape[1]])  # the model on the right
    assert np.abs(stereo[1, :1920]).max() == 0  # slot 0: nothing emitted yet
    assert np.abs(stereo[1, 1920:]).max() > 0.01


def test_audio_options_need_mimi(golden_stream, speech_wav, tmp_path, capsys):
    folder, _ = golden_stream
    _, user_wav = speech_wav
    assert run(["--checkpoint", str(folder), "--listen", str(user_wav), "--out", str(tmp_path / "a.npz")]) == 2
    assert "needs --mimi" in capsys.readouterr().err


def test_non_finite_wav_input_is_refused_or_heard_as_silence(golden_stream, speech_wav, tmp_path, capsys):
    folder, _ = golden_stream
    mimi, _ = speech_wav
    audio = np.load(mimi / "golden.npz")["speech/audio"][0, :, :12000].copy()  # 0.5 s at 24 kHz
    audio[0, 6000] = np.inf
    write_wav(tmp_path / "inf.wav", audio, 24000, dtype="float32")
    base = ["--checkpoint", folder, "--mimi", mimi, "--listen", tmp_path / "inf.wav", "--out", tmp_path / "a.npz"]
    assert run(base) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: ") and "inf.wav: 1 non-finite samples" in error and "at 0.250 s" in error
    assert not (tmp_path / "a.npz").exists()
    with pytest.warns(UserWarning, match="inf.wav: 1 non-finite .* at 0.250 s, read as zeros"):
        assert run(base + ["--allow_nonfinite", "--greedy"]) == 0
    assert np.load(tmp_path / "a.npz")["frames"].shape == (6, 9)


def test_max_frames_zero_is_an_error_not_the_default(golden_stream, tmp_path, capsys):
    folder, reference = golden_stream
    np.save(tmp_path / "user.npy", reference["listen"][..., :5])
    with pytest.raises(SystemExit) as exited:
        run(
            [
                "--checkpoint",
                folder,
                "--listen",
                tmp_path / "user.npy",
                "--out",
                tmp_path / "a.npz",
                "--max_frames",
                "0",
            ]
        )
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "--max_frames 0: must be at least 1" in err
    assert err.startswith("error:") and err.count("\n") == 1, err  # one line, not argparse's usage + error
    assert not (tmp_path / "a.npz").exists()


def test_out_is_written_exactly_as_named(golden_stream, tmp_path, capsys):
    folder, reference = golden_stream
    np.save(tmp_path / "user.npy", reference["listen"][..., :5])
    assert run(["--checkpoint", folder, "--listen", tmp_path / "user.npy", "--out", tmp_path / "x"]) == 0
    assert f"wrote {tmp_path / 'x'} (4 frames)" in capsys.readouterr().out
    assert (tmp_path / "x").is_file() and not (tmp_path / "x.npz").exists()
    assert np.load(tmp_path / "x")["frames"].shape == (4, 9)


def test_a_bad_session_of_a_batch_is_skipped_and_listed(golden_stream, tmp_path, capsys):
    folder, reference = golden_stream
    np.save(tmp_path / "good.npy", reference["listen"][..., :6])
    np.save(tmp_path / "shape.npy", np.zeros((4, 10), np.int64))
    (tmp_path / "cut.npy").write_bytes((tmp_path / "good.npy").read_bytes()[:100])
    (tmp_path / "sessions.txt").write_text("good.npy\nshape.npy\ncut.npy\nmissing.npy\n")
    assert run(["--checkpoint", folder, "--batch_file", tmp_path / "sessions.txt", "--out", tmp_path / "out"]) == 0
    printed = capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.npz"]
    assert "skipped 3 of 4 session(s)" in printed
    for name, reason in (
        ("shape.npy", "have shape [4, 10]"),
        ("cut.npy", "cannot read"),
        ("missing.npy", "cannot read"),
    ):
        assert any(name in line and reason in line for line in printed.splitlines()), (name, printed)

    (tmp_path / "bad.txt").write_text("shape.npy\ncut.npy\n")
    assert run(["--checkpoint", folder, "--batch_file", tmp_path / "bad.txt", "--out", tmp_path / "none"]) == 2
    assert "no session could be read (2 skipped)" in capsys.readouterr().err


@pytest.mark.slow
def test_damaged_checkpoint_and_wav_are_one_error_line_naming_the_file(golden_stream, speech_wav, tmp_path):
    folder, reference = golden_stream
    np.save(tmp_path / "user.npy", reference["listen"][..., :5])
    for checkpoint, named in damaged_copies(folder, tmp_path, "config.json", '{"hidden_size": 64,'):
        done = run_process("--checkpoint", checkpoint, "--listen", tmp_path / "user.npy", "--out", tmp_path / "o")
        assert_one_error_line(done, str(checkpoint / named))

    mimi, user_wav = speech_wav
    (tmp_path / "cut.wav").write_bytes(user_wav.read_bytes()[:30])
    done = run_process(
        "--checkpoint", folder, "--mimi", mimi, "--listen", tmp_path / "cut.wav", "--out", tmp_path / "o"
    )
    assert_one_error_line(done, f"{tmp_path / 'cut.wav'}: not a readable WAV file")
