"""ModelConfig: the released config.json round trip, presets, and validation errors that name the problem."""

import json

import pytest

from flmjax import presets
from flmjax.config import ConfigError, ModelConfig
from tests.conftest import GOLDEN_MODELS, golden_path


@pytest.mark.parametrize("name", GOLDEN_MODELS)
def test_from_official_reads_every_golden_field(name):
    official = json.loads(golden_path(name, "config.json").read_text())
    config = ModelConfig.from_official(official)
    assert config.hidden_size == official["hidden_size"]
    assert config.num_key_value_heads == official["num_key_value_heads"]
    assert config.text_wait_id == official["mm_token_info"]["text_wait_token_id"]
    assert config.aud_pad_id == official["mm_token_info"]["aud_pad_token_id"]
    assert config.aud_emp_id == official["mm_token_info"]["aud_emp_token_id"]
    assert config.depth_per_position_mlp == official["aud_depthgpt"]["use_cmlp"]
    assert config.depth_dim == official["aud_depthgpt"]["n_embd"]


@pytest.mark.parametrize("name", GOLDEN_MODELS)
def test_to_official_keeps_every_golden_field_and_value(name):
    official = json.loads(golden_path(name, "config.json").read_text())
    written = ModelConfig.from_official(golden_path(name)).to_official()
    assert {key: written[key] for key in official} == official


@pytest.mark.parametrize("name", GOLDEN_MODELS)
def test_official_round_trip_is_lossless(name):
    config = ModelConfig.from_official(golden_path(name, "config.json"))
    assert ModelConfig.from_official(json.loads(json.dumps(config.to_official()))) == config


def test_to_official_writes_every_field_the_released_loader_needs():
    written = presets.tiny().to_official()
    required = (
        "vocab_size aud_vocab_size aud_channel hidden_size intermediate_size num_hidden_layers "
        "num_attention_heads num_key_value_heads head_dim hidden_act max_position_embeddings rms_norm_eps "
        "rope_theta rope_scaling attention_bias disable_att_o_bias mlp_bias attention_dropout "
        "tie_word_embeddings use_mup input_mult output_mult mup_scale_factor initializer_range "
        "bos_token_id eos_token_id pad_token_id torch_dtype mm_token_info aud_depthgpt"
    ).split()
    assert not [key for key in required if key not in written]
    assert set(written["mm_token_info"]) == {"text_wait_token_id", "aud_pad_token_id", "aud_emp_token_id"}
    assert set(written["aud_depthgpt"]) == {
        "n_layer",
        "n_head",
        "n_embd",
        "dropout",
        "bias",
        "use_cmlp",
        "use_rmsnorm",
        "use_swiglu",
    }
    assert written["model_type"] == "FLMAudio" and written["architectures"] == ["FLMAudioForCausalLM"]


def test_execution_settings_stay_out_of_config_json_and_can_be_set_on_import():
    config = presets.tiny(dtype="bfloat16", scan_layers=False, remat_policy="full")
    written = config.to_official()
    assert not {"dtype", "param_dtype", "scan_layers", "remat_policy"} & set(written)
    reread = ModelConfig.from_official(written, **config.execution_settings())
    assert reread == config


def test_from_official_names_missing_fields():
    official = presets.tiny().to_official()
    del official["num_key_value_heads"]
    del official["aud_depthgpt"]["use_cmlp"]
    with pytest.raises(ConfigError, match=r"num_key_value_heads.*aud_depthgpt\.use_cmlp"):
        ModelConfig.from_official(official)


def test_mrope_scaling_is_accepted_as_plain_rope_and_kept():
    official = presets.tiny().to_official()
    official["rope_scaling"] = {"type": "mrope", "mrope_section": [2, 3, 3]}
    config = ModelConfig.from_official(official)
    assert config.to_official()["rope_scaling"] == official["rope_scaling"]


def test_presets_build_and_have_the_sizes_they_promise():
    assert presets.preset("tiny").hidden_size == 64
    big = presets.preset("flm_audio_7b")
    assert (big.hidden_size, big.vocab_size, big.aud_vocab_size, big.depth_dim, big.depth_layers) == (
        3584,
        151668,
        2050,
        1024,
        6,
    )
    with pytest.raises(ConfigError, match="unknown model preset 'huge'"):
        presets.preset("huge")


def test_7b_preset_reproduces_the_released_depth_parameter_count():
    """490.69M depth parameters is a released fact; the preset's depth config must reproduce it."""
    import jax
    import numpy as np

    from flmjax import model

    shapes = model.abstract_params(presets.flm_audio_7b())
    depth = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(shapes["depth"]))
    assert round(depth / 1e6, 2) == 490.69


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(num_attention_heads=4, num_key_value_heads=3), "not divisible by num_key_value_heads"),
        (dict(hidden_size=66), "hidden_size \\(66\\) is not divisible by num_attention_heads"),
        (dict(aud_channel=4), "aud_channel is 4, but per-position depth MLPs"),
        (dict(text_wait_id=1000), "text_wait_token_id 1000 is outside the text vocabulary"),
        (dict(aud_pad_id=2050), "aud_pad_token_id 2050 is outside the audio vocabulary"),
        (dict(aud_emp_id=-1), "aud_emp_token_id -1 is outside the audio vocabulary"),
        (dict(aud_pad_id=2049), "aud_pad_token_id and aud_emp_token_id are both 2049"),
        (dict(bos_token_id=5000), "bos_token_id 5000 is outside the text vocabulary"),
        (dict(hidden_act="mish"), "unknown hidden_act 'mish'"),
        (dict(depth_dim=30), "depth n_embd \\(30\\) is not divisible by depth n_head"),
        (dict(head_dim=15), "head_dim \\(15\\) must be even"),
        (dict(aud_vocab_size=1000, aud_pad_id=998, aud_emp_id=999), "smaller than the codec's 2048 codes"),
        (dict(rope_scaling='{"type": "yarn"}'), "rope_scaling type 'yarn' is not supported"),
        (dict(tie_word_embeddings=True), "untied lm_head"),
        (dict(dtype="int8"), "dtype 'int8' is not one of"),
        (dict(remat_policy="sometimes"), "unknown remat_policy 'sometimes'"),
        (dict(num_hidden_layers=0), "num_hidden_layers must be a positive integer"),
    ],
)
def test_invalid_configs_are_rejected_with_a_message_naming_the_problem(overrides, message):
    with pytest.raises(ConfigError, match=message):
        presets.tiny(**overrides)


def test_all_problems_are_reported_together():
    with pytest.raises(ConfigError) as error:
        presets.tiny(hidden_act="mish", text_wait_id=5000)
    assert "mish" in str(error.value) and "5000" in str(error.value)


def test_from_official_rejects_a_foreign_model_type():
    official = presets.tiny().to_official()
    official["model_type"] = "qwen2"
    with pytest.raises(ConfigError, match="model_type is 'qwen2', expected 'FLMAudio'"):
        ModelConfig.from_official(official)


def test_unknown_execution_settings_are_rejected():
    with pytest.raises(ConfigError, match="unknown execution settings \\['dtpye'\\]"):
        ModelConfig.from_official(presets.tiny().to_official(), dtpye="bfloat16")


def test_config_is_hashable_for_jit_static_arguments():
    assert hash(presets.tiny()) == hash(presets.tiny())
