"""`flmjax.eval.evaluators.from_config`: a stage config's `evals`, by type, as the training loop's hooks."""

import importlib
import types

import ml_collections
import pytest

from flmjax.eval import evaluators


def stage4():
    return importlib.import_module("configs.stages.stage4_duplex_leading").get_config()


def test_every_stage_names_the_held_out_loss_and_the_duplex_eval():
    config = stage4()
    assert {name: spec.type for name, spec in config.evals.items()} == {"held_out": "held_out_loss", "duplex": "duplex"}
    assert len(evaluators.from_config(config)) == 2


def test_held_out_losses_run_first_whatever_the_names(tmp_path):
    config = stage4()
    config.data.data_dir = str(tmp_path)  # no datasets: the held-out factory finds no split
    config.evals.a_first = ml_collections.ConfigDict(
        dict(type="duplex", dialogs=0, frames=0, batch=1, text_temperature=0.0, source="x/y")
    )
    factories = evaluators.from_config(config)
    assert len(factories) == 3
    with pytest.raises(ValueError, match="held-out split"):  # the held-out factory reads the sources' splits
        factories[0](types.SimpleNamespace(config=config, say=lambda line: None))
    assert factories[1](None) is None and factories[2](None) is None  # duplex with 0 dialogs: off


def test_an_unknown_type_is_one_user_error_naming_it():
    config = stage4()
    config.evals.held_out.type = "nonesuch"
    with pytest.raises(evaluators.EvaluatorConfigError, match=r"evals\.held_out\.type='nonesuch'"):
        evaluators.from_config(config)


def test_a_config_without_evals_has_no_evaluators():
    assert evaluators.from_config(ml_collections.ConfigDict()) == []
