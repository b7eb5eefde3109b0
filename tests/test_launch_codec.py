"""`python -m launch.codec`: WAV files to Mimi codes and back, on real speech with the small golden Mimi."""

import subprocess
import sys

import numpy as np
import pytest

from flmjax import codec
from flmjax.audio import load_audio, read_wav, resample, write_wav
from launch import cli
from launch import codec as codec_cli
from tests.conftest import REPO_ROOT, golden_path
from tests.helpers import damaged_copies


@pytest.fixture(scope="module")
def mimi():
    directory = golden_path("mimi_small")
    config, params = codec.load_codec(directory)
    return str(directory), config, params


@pytest.fixture(scope="module")
def speech():
    return np.load(golden_path("mimi_small", "golden.npz"))["speech/audio"][0]  # [1, 72000] at 24 kHz


def run(*argv):
    return cli.run(codec_cli.main, [*map(str, argv), "--no_progress"])


def test_encode_of_a_24khz_file_equals_batch_encode(tmp_path, mimi, speech, capsys):
    directory, config, params = mimi
    write_wav(tmp_path / "speech.wav", speech, 24000)  # 16-bit
    assert run("encode", tmp_path / "speech.wav", tmp_path / "codes.npy", "--mimi", directory) == 0
    codes = np.load(tmp_path / "codes.npy")
    samples, _ = read_wav(tmp_path / "speech.wav")
    expected = np.asarray(codec.encode(config, params, samples[:, None]))
    assert codes.shape == (1, 8, 38) and codes.dtype == np.int16
    np.testing.assert_array_equal(codes, expected)
    assert "38 frames" in capsys.readouterr().out


def test_short_windows_carry_the_stream_state(tmp_path, mimi, speech):
    directory, config, params = mimi
    write_wav(tmp_path / "speech.wav", speech, 24000, dtype="float32")
    assert (
        run("encode", tmp_path / "speech.wav", tmp_path / "codes.npy", "--mimi", directory, "--chunk_frames", 16) == 0
    )
    np.testing.assert_array_equal(
        np.load(tmp_path / "codes.npy"), np.asarray(codec.encode(config, params, speech[None]))
    )


@pytest.mark.parametrize("rate", [16000, 44100])
def test_other_rates_are_resampled_to_24khz(tmp_path, mimi, speech, rate):
    directory, config, params = mimi
    write_wav(tmp_path / "speech.wav", resample(speech, 24000, rate), rate)
    assert run("encode", tmp_path / "speech.wav", tmp_path / "codes.npy", "--mimi", directory) == 0
    codes = np.load(tmp_path / "codes.npy")
    audio = load_audio(tmp_path / "speech.wav", 24000)
    assert codes.shape == (1, 8, -(-audio.shape[1] // 1920))
    np.testing.assert_array_equal(codes, np.asarray(codec.encode(config, params, audio[:, None])))


def test_stereo_encodes_each_channel_and_decodes_to_1920_samples_a_frame(tmp_path, mimi, speech):
    directory, config, params = mimi
    stereo = np.concatenate([speech, speech[:, ::-1]])
    write_wav(tmp_path / "stereo.wav", stereo, 24000, dtype="float32")
    assert run("encode", tmp_path / "stereo.wav", tmp_path / "codes.npy", "--mimi", directory) == 0
    codes = np.load(tmp_path / "codes.npy")
    np.testing.assert_array_equal(codes, np.asarray(codec.encode(config, params, stereo[:, None])))

    assert run("decode", tmp_path / "codes.npy", tmp_path / "out.wav", "--mimi", directory, "--dtype", "float32") == 0
    pcm, rate = read_wav(tmp_path / "out.wav")
    assert rate == 24000 and pcm.shape == (2, 1920 * 38)
    np.testing.assert_allclose(pcm, np.asarray(codec.decode(config, params, codes))[:, 0], atol=1e-4)

    assert run("decode", tmp_path / "codes.npy", tmp_path / "out16.wav", "--mimi", directory) == 0
    pcm16, _ = read_wav(tmp_path / "out16.wav")
    np.testing.assert_allclose(pcm16, np.clip(pcm, -1, 1), atol=1 / 32768 + 1e-6)


def test_an_existing_output_is_refused_without_overwrite(tmp_path, mimi, speech, capsys):
    directory, _, _ = mimi
    write_wav(tmp_path / "speech.wav", speech[:, :19200], 24000)
    (tmp_path / "codes.npy").write_bytes(b"keep me")
    assert run("encode", tmp_path / "speech.wav", tmp_path / "codes.npy", "--mimi", directory) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "codes.npy").read_bytes() == b"keep me"
    assert run("encode", tmp_path / "speech.wav", tmp_path / "codes.npy", "--mimi", directory, "--overwrite") == 0
    assert np.load(tmp_path / "codes.npy").shape == (1, 8, 10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["codes.npy", "speech.wav"]  # no temporary left


def test_bad_inputs_are_errors_naming_them(tmp_path, mimi, capsys):
    directory, _, _ = mimi
    np.save(tmp_path / "seven.npy", np.zeros((1, 7, 5), np.int16))
    assert run("decode", tmp_path / "seven.npy", tmp_path / "out.wav", "--mimi", directory) == 2
    assert "seven.npy: codes of shape (1, 7, 5)" in capsys.readouterr().err
    (tmp_path / "junk.wav").write_bytes(b"junk")
    assert run("encode", tmp_path / "junk.wav", tmp_path / "out.npy", "--mimi", directory) == 2
    assert "junk.wav: not a readable WAV file" in capsys.readouterr().err
    assert run("encode", tmp_path / "junk.wav", tmp_path / "out.npy", "--mimi", tmp_path) == 2
    assert "no Mimi weights" in capsys.readouterr().err
    assert not (tmp_path / "out.wav").exists() and not (tmp_path / "out.npy").exists()


def test_long_files_stream_in_windows_like_the_released_code(tmp_path, mimi):
    """12.8 s, past the 10 s context: the windows reproduce moshi's own streaming codes and pcm."""
    directory, _, _ = mimi
    golden = np.load(golden_path("mimi_small", "golden.npz"))
    write_wav(tmp_path / "long.wav", golden["long/audio"][0], 24000, dtype="float32")
    assert run("encode", tmp_path / "long.wav", tmp_path / "codes.npy", "--mimi", directory) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "codes.npy")[0], golden["long/stream_codes"][:, 0, :, 0].T)

    np.save(tmp_path / "batch_codes.npy", golden["long/codes"])
    assert (
        run("decode", tmp_path / "batch_codes.npy", tmp_path / "out.wav", "--mimi", directory, "--dtype", "float32")
        == 0
    )
    pcm, _ = read_wav(tmp_path / "out.wav")
    np.testing.assert_allclose(pcm[0], golden["long/stream_pcm"][:, 0, 0].reshape(-1), atol=1e-5)


def test_non_finite_samples_are_refused_or_encoded_as_silence_with_a_warning(tmp_path, mimi, speech, capsys):
    directory, config, params = mimi
    poisoned = speech[:, :19200].copy()
    poisoned[0, 9600] = np.nan  # 0.4 s: before the check, every code from frame 5 on came out 0
    write_wav(tmp_path / "nan.wav", poisoned, 24000, dtype="float32")
    assert run("encode", tmp_path / "nan.wav", tmp_path / "codes.npy", "--mimi", directory) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "nan.wav: 1 non-finite samples" in error and "at 0.400 s" in error
    assert not (tmp_path / "codes.npy").exists()

    with pytest.warns(UserWarning, match="nan.wav: 1 non-finite samples .* at 0.400 s, read as zeros"):
        assert (
            run("encode", tmp_path / "nan.wav", tmp_path / "codes.npy", "--mimi", directory, "--allow_nonfinite") == 0
        )
    silenced = np.where(np.isnan(poisoned), 0, poisoned)
    np.testing.assert_array_equal(
        np.load(tmp_path / "codes.npy"), np.asarray(codec.encode(config, params, silenced[None]))
    )


def test_a_repaired_input_is_one_warning_line_without_pythons_file_and_line(tmp_path, mimi, speech):
    directory, _, _ = mimi
    poisoned = speech[:, :3840].copy()
    poisoned[0, 100] = np.inf
    write_wav(tmp_path / "inf.wav", poisoned, 24000, dtype="float32")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "launch.codec",
            "encode",
            str(tmp_path / "inf.wav"),
            str(tmp_path / "out.npy"),
            "--mimi",
            directory,
            "--no_progress",
            "--allow_nonfinite",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    warned = [line for line in done.stderr.splitlines() if "non-finite" in line]
    assert warned == [
        f"warning: {tmp_path / 'inf.wav'}: 1 non-finite samples (NaN or Inf), the first at 0.004 s, "
        "read as zeros (--allow_nonfinite)"
    ], done.stderr


def test_a_wav_cut_inside_its_header_is_one_error_line(tmp_path, mimi, speech):
    directory, _, _ = mimi
    write_wav(tmp_path / "whole.wav", speech[:, :1920], 24000)
    (tmp_path / "cut.wav").write_bytes((tmp_path / "whole.wav").read_bytes()[:30])
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "launch.codec",
            "encode",
            str(tmp_path / "cut.wav"),
            str(tmp_path / "out.npy"),
            "--mimi",
            directory,
            "--no_progress",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path / 'cut.wav'}: not a readable WAV")


def test_a_damaged_codec_folder_is_one_error_line_naming_the_file(tmp_path, mimi, speech, capsys):
    directory, _, _ = mimi
    write_wav(tmp_path / "speech.wav", speech[:, :1920], 24000)
    for folder, named in damaged_copies(directory, tmp_path, "mimi_config.json", '{"mimi_config": '):
        assert run("encode", tmp_path / "speech.wav", tmp_path / "out.npy", "--mimi", folder) == 2
        error = capsys.readouterr().err
        assert error.startswith(f"error: {folder / named}: not ") and error.count("\n") == 1
