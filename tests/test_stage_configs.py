"""The dual-training stage configs: they load, their sources are valid rules, and the schedule alternates."""

import importlib

import pytest

from flmjax.data.examples import SourceRule

STAGES = ("stage1_post_train_trailing", "stage2_post_train_leading", "stage3_duplex_trailing", "stage4_duplex_leading")


def load(stage):
    return importlib.import_module(f"configs.stages.{stage}").get_config()


@pytest.mark.parametrize("stage", STAGES)
def test_every_source_is_a_valid_rule_with_a_positive_weight(stage):
    config = load(stage)
    assert config.stage == stage and len(config.data.sources) > 0
    for name, source in config.data.sources.items():
        SourceRule(
            source.task, source.placement, source.lead_frames, source.trail_frames, source.text_loss, source.audio_loss
        )
        assert source.weight > 0, name


def test_the_monologue_alternates_trailing_leading_and_ends_leading():
    placements = [{s.placement for s in load(stage).data.sources.values()} for stage in STAGES]
    assert placements == [{"trailing"}, {"leading"}, {"trailing"}, {"leading"}]


def test_each_stage_starts_from_the_previous_one():
    assert [load(stage).previous_stage for stage in STAGES] == ["", *STAGES[:-1]]


def test_post_training_uses_utterances_and_fine_tuning_uses_dialogs():
    assert {s.task for s in load(STAGES[0]).data.sources.values()} == {"asr", "tts"}
    assert "dialog" in {s.task for s in load(STAGES[3]).data.sources.values()}


def test_asr_sources_do_not_train_the_voice():
    for stage in STAGES:
        for source in load(stage).data.sources.values():
            if source.task == "asr":
                assert not source.audio_loss, stage
