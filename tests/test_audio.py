"""WAV reading and writing, resampling, and loading audio at the codec's rate."""

import struct

import numpy as np
import pytest

from flmjax.audio import AudioError, NonFiniteAudioWarning, load_audio, read_wav, resample, wav_info, write_wav


def stereo(n=2400, rate=24000):
    t = np.arange(n) / rate
    return np.stack([0.5 * np.sin(2 * np.pi * 440 * t), 0.25 * np.cos(2 * np.pi * 1000 * t)]).astype(np.float32)


def write_pcm24(path, samples, rate):
    """A 24-bit PCM WAV by hand (scipy writes no 24-bit files): little-endian 3-byte frames."""
    ints = np.ascontiguousarray(np.clip(np.rint(samples.T * 2**23), -(2**23), 2**23 - 1).astype("<i4"))
    data = ints.view(np.uint8).reshape(*ints.shape, 4)[..., :3].tobytes()
    channels = samples.shape[0]
    header = struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        36 + len(data),
        b"WAVE",
        b"fmt ",
        16,
        1,
        channels,
        rate,
        rate * channels * 3,
        channels * 3,
        24,
        b"data",
        len(data),
    )
    path.write_bytes(header + data)


def sine_amplitude_and_frequency(samples, rate):
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    peak = int(np.argmax(spectrum))
    return np.sqrt(2 * np.mean(samples**2)), peak * rate / len(samples)


def test_int16_round_trip_of_a_stereo_file_is_within_one_step(tmp_path):
    samples = stereo()
    write_wav(tmp_path / "a.wav", samples, 24000)
    read, rate = read_wav(tmp_path / "a.wav")
    assert rate == 24000 and read.shape == (2, 2400) and read.dtype == np.float32
    np.testing.assert_allclose(read, samples, atol=0.5 / 32768 + 1e-7)


def test_float32_round_trip_is_exact_and_unclipped(tmp_path):
    samples = stereo() * 3  # beyond [-1, 1]
    write_wav(tmp_path / "a.wav", samples, 16000, dtype="float32")
    read, rate = read_wav(tmp_path / "a.wav")
    assert rate == 16000
    np.testing.assert_array_equal(read, samples)


def test_int16_writing_saturates_at_full_scale(tmp_path):
    write_wav(tmp_path / "a.wav", np.array([[-2.0, -1.0, 0.0, 0.99999, 1.0, 3.0]]), 8000)
    read, _ = read_wav(tmp_path / "a.wav")
    np.testing.assert_array_equal(read[0] * 32768, [-32768, -32768, 0, 32767, 32767, 32767])


def test_mono_reads_as_one_channel(tmp_path):
    write_wav(tmp_path / "a.wav", stereo()[0], 24000)
    read, _ = read_wav(tmp_path / "a.wav")
    assert read.shape == (1, 2400)


def test_24_and_32_bit_pcm_read_to_the_same_scale(tmp_path):
    samples = stereo(480)
    write_pcm24(tmp_path / "a24.wav", samples, 24000)
    read24, rate = read_wav(tmp_path / "a24.wav")
    assert rate == 24000
    np.testing.assert_allclose(read24, samples, atol=2**-23)
    from scipy.io import wavfile

    wavfile.write(tmp_path / "a32.wav", 24000, np.rint(samples.T * 2**31 * 0.999).astype(np.int32))
    read32, _ = read_wav(tmp_path / "a32.wav")
    np.testing.assert_allclose(read32, samples * 0.999, atol=1e-6)


def test_unreadable_and_empty_files_are_errors_naming_them(tmp_path):
    (tmp_path / "junk.wav").write_bytes(b"not a wav file at all")
    with pytest.raises(AudioError, match="junk.wav"):
        read_wav(tmp_path / "junk.wav")
    with pytest.raises(AudioError, match="missing.wav: no such file"):
        read_wav(tmp_path / "missing.wav")
    from scipy.io import wavfile

    wavfile.write(tmp_path / "empty.wav", 24000, np.zeros((0, 2), np.int16))
    with pytest.raises(AudioError, match="empty.wav: holds no samples"):
        read_wav(tmp_path / "empty.wav")


@pytest.mark.parametrize("from_rate", [16000, 44100])
def test_resampling_keeps_a_sines_frequency_and_amplitude(from_rate):
    n = from_rate  # one second
    t = np.arange(n) / from_rate
    signal = 0.6 * np.sin(2 * np.pi * 1000 * t)
    out = resample(signal, from_rate, 24000)
    assert out.shape == (round(n * 24000 / from_rate),) and out.dtype == np.float32
    amplitude, frequency = sine_amplitude_and_frequency(out[200:-200], 24000)
    assert abs(frequency - 1000) < 2
    assert abs(amplitude - 0.6) < 0.01


@pytest.mark.parametrize("from_rate,n", [(44100, 1001), (16000, 333), (22050, 7), (24000, 10)])
def test_resampled_length_is_rounded_ratio(from_rate, n):
    out = resample(np.zeros((2, n)), from_rate, 24000)
    assert out.shape == (2, round(n * 24000 / from_rate))


def test_load_audio_resamples_and_mixes_to_mono(tmp_path):
    write_wav(tmp_path / "a.wav", stereo(1600, 16000), 16000, dtype="float32")
    audio = load_audio(tmp_path / "a.wav")
    assert audio.shape == (2, 2400)
    mono = load_audio(tmp_path / "a.wav", mono=True)
    np.testing.assert_allclose(mono[0], audio.mean(axis=0), atol=1e-6)


def test_a_wav_cut_inside_its_header_is_an_audio_error_naming_it(tmp_path):
    write_wav(tmp_path / "whole.wav", stereo(), 24000)
    (tmp_path / "cut.wav").write_bytes((tmp_path / "whole.wav").read_bytes()[:30])  # inside the fmt chunk
    with pytest.raises(AudioError, match="cut.wav: not a readable WAV file"):
        read_wav(tmp_path / "cut.wav")
    with pytest.raises(AudioError, match="cut.wav"):
        wav_info(tmp_path / "cut.wav")
    assert wav_info(tmp_path / "whole.wav") == (2400, 2, 24000)


def test_non_finite_samples_are_an_error_naming_the_file_and_the_first_time(tmp_path):
    samples = stereo()
    samples[1, 1200] = np.nan
    samples[0, 1800:1810] = np.inf
    write_wav(tmp_path / "nan.wav", samples, 24000, dtype="float32")
    with pytest.raises(AudioError, match=r"nan.wav: 11 non-finite samples \(NaN or Inf\), the first at 0.050 s"):
        read_wav(tmp_path / "nan.wav")
    with pytest.raises(AudioError, match="--allow_nonfinite"):
        load_audio(tmp_path / "nan.wav")


def test_allow_nonfinite_reads_them_as_zeros_with_a_warning(tmp_path):
    samples = stereo()
    samples[1, 1200] = np.nan
    write_wav(tmp_path / "nan.wav", samples, 24000, dtype="float32")
    with pytest.warns(NonFiniteAudioWarning, match="nan.wav: 1 non-finite samples .* first at 0.050 s"):
        read, _ = read_wav(tmp_path / "nan.wav", allow_nonfinite=True)
    assert read[1, 1200] == 0 and np.isfinite(read).all()
    np.testing.assert_array_equal(np.delete(read[1], 1200), np.delete(samples[1], 1200))
    with pytest.warns(NonFiniteAudioWarning):
        assert np.isfinite(load_audio(tmp_path / "nan.wav", 16000, allow_nonfinite=True)).all()
