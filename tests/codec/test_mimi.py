"""Mimi in JAX against moshi 0.2.13 (PyTorch) on the small random-weight golden codec (golden/mimi_small).

Batch outputs are compared with the batch arrays and streaming outputs with the `stream_*` arrays: past the
250-step context the two modes differ by design (see `flmjax.codec.transformer`).
"""

import json
import math

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from flmjax import codec
from flmjax.codec import checkpoint, mimi
from tests.conftest import golden_path

pytestmark = pytest.mark.xdist_group("mimi")  # the batch and streaming codec outputs are module fixtures, built once

SIGNALS = ("speech", "chirp", "long")
ENCODER_STAGES = ("encoder_seanet", "encoder_transformer", "latent", "quantizer_first_in", "quantizer_rest_in")
DECODER_STAGES = ("quantized_latent", "decoder_upsampled", "decoder_transformer")
FRAME = 1920


@pytest.fixture(scope="module")
def config():
    return codec.MimiConfig.from_json(golden_path("mimi_small", "mimi_config.json"))


@pytest.fixture(scope="module")
def params(config):
    return codec.load_mimi(golden_path("mimi_small", "model.safetensors"), config)


@pytest.fixture(scope="module")
def golden():
    with np.load(golden_path("mimi_small", "golden.npz")) as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="module")
def batch_outputs(config, params, golden):
    """Batch encode of each signal's (unpadded) audio and batch decode of its golden codes."""
    out = {}
    for signal in SIGNALS:
        encoded = codec.encode_intermediates(config, params, golden[f"{signal}/audio"])
        decoded = codec.decode_intermediates(config, params, golden[f"{signal}/codes"])
        out[signal] = jax.device_get({**encoded, **decoded})
    return out


@pytest.fixture(scope="module")
def stream_outputs(config, params, golden):
    """Frame-by-frame streaming encode of each padded signal and streaming decode of its batch codes."""
    out = {}
    for signal in SIGNALS:
        audio, codes = golden[f"{signal}/audio_padded"], golden[f"{signal}/codes"]
        state = codec.init_codec_stream(config, params, 1)
        stream_codes, stream_latent, stream_pcm = [], [], []
        for s in range(codes.shape[-1]):
            state, step_codes, latent = codec.encode_step_latent(
                config, params, state, audio[..., FRAME * s : FRAME * (s + 1)]
            )
            state, pcm = codec.decode_step(config, params, state, codes[..., s : s + 1])
            stream_codes.append(step_codes)
            stream_latent.append(latent)
            stream_pcm.append(pcm)
        out[signal] = {
            name: np.stack(jax.device_get(values))
            for name, values in (
                ("stream_codes", stream_codes),
                ("stream_latent", stream_latent),
                ("stream_pcm", stream_pcm),
            )
        }
    return out


def max_abs(a, b) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)))


# ---------------------------------------------------------------------- batch
@pytest.mark.parametrize("signal", SIGNALS)
def test_batch_codes_equal_moshi(batch_outputs, golden, signal):
    codes = batch_outputs[signal]["codes"]
    assert codes.dtype == np.int32
    np.testing.assert_array_equal(codes, golden[f"{signal}/codes"])


@pytest.mark.parametrize("signal", SIGNALS)
def test_batch_intermediates_match_moshi(batch_outputs, golden, signal):
    diffs = {
        name: max_abs(batch_outputs[signal][name], golden[f"{signal}/{name}"])
        for name in ENCODER_STAGES + DECODER_STAGES
    }
    assert max(diffs.values()) < 1e-4, diffs


@pytest.mark.parametrize("signal", SIGNALS)
def test_batch_pcm_matches_moshi_untrimmed(batch_outputs, golden, signal):
    pcm = batch_outputs[signal]["pcm"]
    assert pcm.shape == (1, 1, FRAME * golden[f"{signal}/codes"].shape[-1])
    assert max_abs(pcm, golden[f"{signal}/pcm"]) < 1e-5


def test_encode_and_decode_return_the_batch_outputs(config, params, golden, batch_outputs):
    codes = codec.encode(config, params, golden["chirp/audio"])
    np.testing.assert_array_equal(codes, batch_outputs["chirp"]["codes"])
    np.testing.assert_array_equal(codec.decode(config, params, codes), batch_outputs["chirp"]["pcm"])


# ---------------------------------------------------------------------- streaming
@pytest.mark.parametrize("signal", SIGNALS)
def test_stream_codes_equal_moshi(stream_outputs, golden, signal):
    np.testing.assert_array_equal(stream_outputs[signal]["stream_codes"], golden[f"{signal}/stream_codes"])
    assert max_abs(stream_outputs[signal]["stream_latent"], golden[f"{signal}/stream_latent"]) < 1e-4


@pytest.mark.parametrize("signal", SIGNALS)
def test_stream_pcm_matches_moshi(stream_outputs, golden, signal):
    assert max_abs(stream_outputs[signal]["stream_pcm"], golden[f"{signal}/stream_pcm"]) < 1e-5


def test_long_stream_differs_from_batch_past_the_context(stream_outputs, batch_outputs):
    """The ring cache drops one key per even step past 250 steps, as moshi's does (golden README)."""
    stream_pcm = stream_outputs["long"]["stream_pcm"][:, 0, 0].reshape(-1)
    batch_pcm = batch_outputs["long"]["pcm"][0, 0]
    early, late = slice(0, 125 * FRAME), slice(126 * FRAME, None)
    assert max_abs(stream_pcm[early], batch_pcm[early]) < 1e-5
    assert max_abs(stream_pcm[late], batch_pcm[late]) > 1e-4


def test_reset_restarts_only_masked_sessions(config, params, golden):
    audio, codes = golden["chirp/audio_padded"][0], golden["chirp/codes"][0]
    state = codec.init_codec_stream(config, params, 2)
    for s in range(3):
        state, _ = codec.encode_step(config, params, state, np.stack([audio[:, FRAME * s : FRAME * (s + 1)]] * 2))
        state, _ = codec.decode_step(config, params, state, np.stack([codes[:, s : s + 1]] * 2))
    state = codec.reset_stream(config, state, np.array([True, False]))
    got_codes, got_pcm = [], []
    for s in range(3):  # row 0 starts over; row 1 goes on with frames 3..5
        pcm_in = np.stack([audio[:, FRAME * s : FRAME * (s + 1)], audio[:, FRAME * (s + 3) : FRAME * (s + 4)]])
        state, step_codes = codec.encode_step(config, params, state, pcm_in)
        state, pcm = codec.decode_step(config, params, state, np.stack([codes[:, s : s + 1], codes[:, s + 3 : s + 4]]))
        got_codes.append(step_codes)
        got_pcm.append(pcm)
    got_codes, got_pcm = np.stack(got_codes), np.stack(got_pcm)
    want_codes, want_pcm = golden["chirp/stream_codes"], golden["chirp/stream_pcm"]
    np.testing.assert_array_equal(got_codes[:, 0], want_codes[0:3, 0])
    np.testing.assert_array_equal(got_codes[:, 1], want_codes[3:6, 0])
    assert max_abs(got_pcm[:, 0], want_pcm[0:3, 0]) < 1e-5
    assert max_abs(got_pcm[:, 1], want_pcm[3:6, 0]) < 1e-5


# ---------------------------------------------------------------------- checkpoint loading
@pytest.fixture(scope="module")
def golden_tensors():
    return load_file(golden_path("mimi_small", "model.safetensors"))


def test_load_ignores_codebooks_past_num_codebooks(tmp_path, config, params, golden, golden_tensors, batch_outputs):
    tensors = dict(golden_tensors)
    rng = np.random.default_rng(0)
    for level in range(7, 31):  # the released file's n_q = 32
        prefix = f"quantizer.rvq_rest.vq.layers.{level}._codebook"
        tensors[f"{prefix}.embedding_sum"] = rng.normal(size=(2048, 32)).astype(np.float32)
        tensors[f"{prefix}.cluster_usage"] = np.ones(2048, np.float32)
        tensors[f"{prefix}._initialized"] = np.ones(1, np.float32)
    save_file(tensors, tmp_path / "model.safetensors")
    loaded = codec.load_mimi(tmp_path, config, num_codebooks=8)  # a folder holding model.safetensors
    assert sorted(loaded["quantizer"]["rest"]) == [f"codebook_{i}" for i in range(7)] + ["input_proj", "output_proj"]
    jax.tree.map(np.testing.assert_array_equal, loaded, params)
    codes = codec.encode_intermediates(config, loaded, golden["chirp/audio"])["codes"]
    np.testing.assert_array_equal(codes, golden["chirp/codes"])


def test_load_computes_centroids_from_usage(params, golden_tensors):
    prefix = "quantizer.rvq_rest.vq.layers.2._codebook"
    usage = golden_tensors[f"{prefix}.cluster_usage"]
    assert not np.allclose(usage, 1.0)  # the golden file's usage is U(0.5, 2): dividing matters
    want = golden_tensors[f"{prefix}.embedding_sum"] / np.maximum(usage, 1e-5)[:, None]
    np.testing.assert_allclose(params["quantizer"]["rest"]["codebook_2"], want, rtol=1e-6)


def _load_error(tmp_path, config, tensors) -> str:
    save_file(tensors, tmp_path / "bad.safetensors")
    with pytest.raises(codec.MimiCheckpointError) as error:
        codec.load_mimi(tmp_path / "bad.safetensors", config)
    return str(error.value)


def test_load_rejects_a_wrong_shaped_tensor(tmp_path, config, golden_tensors):
    name = "decoder.model.5.convtr.convtr.weight"
    tensors = {**golden_tensors, name: np.zeros((64, 32, 10), np.float32)}
    message = _load_error(tmp_path, config, tensors)
    assert name in message and "[64, 32, 12]" in message and "[64, 32, 10]" in message


def test_load_rejects_missing_and_unexpected_tensors(tmp_path, config, golden_tensors):
    missing = "encoder_transformer.transformer.layers.1.self_attn.in_proj_weight"
    tensors = {k: v for k, v in golden_tensors.items() if k != missing}
    tensors["encoder.model.99.conv.conv.weight"] = np.zeros(3, np.float32)
    message = _load_error(tmp_path, config, tensors)
    assert f"missing: {missing}" in message
    assert "unexpected: encoder.model.99.conv.conv.weight" in message


def test_name_map_covers_the_golden_file_exactly(config, golden_tensors):
    keys = [key for entry in checkpoint.name_map(config) for key in entry.keys]
    assert len(keys) == len(set(keys))
    assert set(keys) == set(golden_tensors)


# ---------------------------------------------------------------------- config
def test_released_params_match_the_name_map_and_count():
    config = codec.MimiConfig.released()
    abstract = jax.eval_shape(lambda: codec.init_params(config, seed=0, num_codebooks=8))
    entries = checkpoint.name_map(config, num_codebooks=8)
    mapped = {}
    for entry in entries:
        converted = entry.convert(*(np.zeros(shape, np.float32) for shape in entry.shapes))
        mapped[entry.path] = converted.shape
        assert checkpoint.get_path(abstract, entry.path).shape == converted.shape, entry.keys[0]
    assert len(mapped) == len(jax.tree.leaves(abstract))  # every param comes from the file

    # Counted by hand from the released architecture (8 of the 32 codebooks).
    f, d, dim, ffn = 64, 512, 256, 2048

    def conv(c_in, c_out, k):
        return c_in * c_out * k + c_out

    def resblock(c):
        return conv(c, c // 2, 3) + conv(c // 2, c, 1)

    encoder = conv(1, f, 7) + conv(16 * f, d, 3)
    decoder = conv(d, 16 * f, 7) + conv(f, 1, 3)
    for i, ratio in enumerate((4, 5, 6, 8)):
        c = f * 2**i
        encoder += resblock(c) + conv(c, 2 * c, 2 * ratio)
        decoder += resblock(c) + conv(2 * c, c, 2 * ratio)
    transformer = 8 * (4 * d * d + 2 * d * ffn + 6 * d)
    resample = d * d * 4 + d * 4
    quantizer = 2 * (2 * d * dim) + 8 * 2048 * dim
    total = encoder + decoder + 2 * transformer + resample + quantizer
    assert sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(abstract)) == total
    assert sum(math.prod(shape) for shape in mapped.values()) == total


def _shapes(tree):
    return jax.tree.map(lambda leaf: (leaf.shape, leaf.dtype), tree)


@pytest.mark.parametrize("num_codebooks", [1, 8])
def test_init_params_is_the_linen_init_tree(num_codebooks):
    """`init_params` (numpy draws) gives exactly the tree, shapes and dtypes the `Mimi` Linen init declares."""
    config = codec.MimiConfig.released()
    linen = jax.eval_shape(lambda: mimi.mimi_init(config, jax.random.key(0), num_codebooks))
    drawn = codec.init_params(config, seed=0, num_codebooks=num_codebooks)
    assert _shapes(drawn) == _shapes(linen)
    rest = drawn["quantizer"]["rest"]
    assert sorted(rest) == [f"codebook_{i}" for i in range(num_codebooks - 1)] + ["input_proj", "output_proj"]


def test_loaded_params_are_the_linen_init_tree(config, params):
    linen = jax.eval_shape(lambda: mimi.mimi_init(config, jax.random.key(0)))
    assert _shapes(params) == _shapes(linen)


def test_linen_init_runs_and_matches_init_params_statistics(config):
    """The Linen init draws what `init_params` draws: same means (layer scale 0.01, norm scale 1, zero bias)
    and N(0, 1/fan_in) kernels."""
    linen = mimi.mimi_init(config, jax.random.key(0))
    drawn = codec.init_params(config, seed=0)
    layer = linen["encoder_transformer"]["layers_0"]
    np.testing.assert_array_equal(layer["layer_scale_1"], drawn["encoder_transformer"]["layers_0"]["layer_scale_1"])
    np.testing.assert_array_equal(layer["norm1"]["scale"], np.ones(config.dimension, np.float32))
    for tree in (linen, drawn):
        kernel = np.asarray(tree["decoder_transformer"]["layers_1"]["mlp"]["fc1"])
        assert abs(kernel.std() * config.dimension**0.5 - 1) < 0.05
    codes = codec.encode(config, linen, np.zeros((1, 1, FRAME), np.float32))
    assert codes.shape == (1, 8, 1)


def test_config_from_json_reads_the_golden_sizes(config):
    assert (config.dimension, config.n_filters, config.num_heads, config.num_layers) == (64, 8, 4, 2)
    assert (config.dim_feedforward, config.quantizer_dimension, config.n_q, config.context) == (128, 32, 8, 250)
    assert (config.frame_size, config.hop_length, config.encoder_frame_rate) == (1920, 960, 25.0)
    released = codec.MimiConfig.released()
    assert (released.dimension, released.num_layers, released.quantizer_dimension, released.n_q) == (512, 8, 256, 32)


def test_config_from_json_names_unsupported_settings(tmp_path):
    data = json.loads(golden_path("mimi_small", "mimi_config.json").read_text())
    data["mimi_config"]["seanet"]["norm"] = "weight_norm"
    data["mimi_config"]["transformer"]["gating"] = "silu"
    data["mimi_config"]["quantizer"]["codebook_dim"] = 16
    path = tmp_path / "mimi_config.json"
    path.write_text(json.dumps(data))
    with pytest.raises(codec.MimiConfigError) as error:
        codec.MimiConfig.from_json(path)
    for field in ("seanet.norm", "transformer.gating", "quantizer.codebook_dim"):
        assert field in str(error.value)


def test_encode_rejects_audio_without_a_channel_axis(config, params, golden):
    with pytest.raises(ValueError, match=r"\[batch, 1, k \* 1920\]"):
        codec.encode(config, params, golden["chirp/audio"][0])
    state = codec.init_codec_stream(config, params, 1)
    with pytest.raises(ValueError, match="mono"):
        codec.encode_step(config, params, state, golden["chirp/audio"][..., :1000])
