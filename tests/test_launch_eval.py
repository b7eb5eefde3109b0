"""The duplex eval inside the training loop (`evals.duplex`, a hook built by `flmjax.eval.evaluators`) and
`python -m launch.eval tokens`."""

import dataclasses
import importlib
import json
import subprocess
import sys

import pytest

from flmjax import checkpoints as checkpoint_lib
from flmjax.data.dataset_source import DialogSource
from flmjax.eval import evaluators
from flmjax.train import loop
from flmjax.train.metrics import read_metrics
from launch import cli
from launch import eval as eval_cli
from tests.conftest import REPO_ROOT
from tests.eval.test_dialogs import _merged_turns

pytestmark = pytest.mark.xdist_group("launch_eval")  # the trained stage is a module fixture, built once

STEPS = 4


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from launch import prepare_data

    out = tmp_path_factory.mktemp("data")
    assert prepare_data.main(["--synthetic", "60", "--out", str(out), "--no_progress"]) == 0
    return out


def stage_config(data_dir, **duplex):
    config = importlib.import_module("configs.stages.stage4_duplex_leading").get_config()
    config.data.data_dir = str(data_dir)
    config.data.tokenizer = str(data_dir / "tokenizer.model")
    config.data.sequence_length = 32
    config.data.global_batch_size = 8
    config.optimizer.warmup_steps = 1
    config.train.update(dict(total_steps=STEPS, log_every=2, eval_every=2, save_every=STEPS, async_checkpoints=False))
    config.evals.held_out.batches = 1
    config.evals.duplex.update(duplex)
    return config


def run_stage(config, workdir, log):
    return loop.run_stage(config, workdir, log=log, evaluators=evaluators.from_config(config))


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    """A stage-4 run of 4 steps with the duplex eval on (2 dialogs, 24 frames) at steps 2 and 4."""
    workdir = tmp_path_factory.mktemp("stage4")
    lines = []
    run_stage(stage_config(data_dir, dialogs=2, frames=24, batch=2), str(workdir), log=lines.append)
    return workdir, lines


def test_the_loop_logs_duplex_metrics_at_each_eval(trained, data_dir):
    workdir, lines = trained
    evals = read_metrics(str(workdir), split="eval")
    assert sorted(evals) == [2, 4]
    source = DialogSource(str(data_dir), "synthetic", "validation_dialog")
    user_turns = sum(_merged_turns(source[i].listen_segments, 24) for i in range(2))
    for figures in evals.values():
        assert figures["duplex/dialogs"] == 2 and figures["duplex/frames"] == 48
        assert figures["duplex/speaking/n_user_turns"] == figures["duplex/thinking/n_user_turns"] == user_turns
        assert 0.0 <= figures["duplex/speaking/active_fraction"] <= 1.0
        assert 0.0 <= figures["duplex/speaking/turn_over_rate"] <= 1.0
        assert 0.0 <= figures["duplex/code_accuracy"] <= 1.0  # stage 4 is leading: speech quality
        assert "duplex/wer" not in figures
    assert sum(line.startswith("duplex eval at step") for line in lines) == 2
    assert any("TOR" in line and "code acc" in line for line in lines)


def test_duplex_eval_is_off_by_default_and_a_missing_split_is_an_error(data_dir, tmp_path):
    config = stage_config(data_dir, dialogs=2, source="synthetic/no_such_split")
    with pytest.raises(loop.StageError, match=r"evals\.duplex\.dialogs=0"):
        run_stage(config, str(tmp_path / "bad"), log=lambda line: None)
    assert stage_config(data_dir).evals.duplex.dialogs == 0
    assert evaluators.from_config(stage_config(data_dir))[1](None) is None  # the duplex factory: off


def test_cli_tokens_trained_and_untrained(trained, data_dir, tmp_path, capsys):
    workdir, _ = trained
    out = tmp_path / "tokens.json"
    assert (
        cli.run(
            eval_cli.main,
            [
                "tokens",
                "--checkpoint",
                str(workdir),
                "--untrained",
                "tiny",
                "--data_dir",
                str(data_dir),
                "--dialogs",
                "2",
                "--frames",
                "24",
                "--batch",
                "2",
                "--out",
                str(out),
            ],
        )
        == 0
    )
    printed = capsys.readouterr().out
    header = printed.splitlines()[0].split()
    assert header[0] == "trained" and "reference" in header
    assert "turn-taking latency s" in printed and "interruption stop rate" in printed
    report = json.loads(out.read_text())
    assert report["dialogs"] == 2 and report["frames"] == 24
    assert set(report["models"]) == {"trained", "untrained tiny"}
    trained_report = report["models"]["trained"]
    assert trained_report["placement"] == "leading"  # from the checkpoint's stage config
    assert trained_report["checkpoint"].endswith(f"step {checkpoint_lib.latest_complete_step(workdir)}")
    assert len(trained_report["dialogs"]) == 2
    assert trained_report["metrics"]["frames"] == 48
    assert report["reference"]["speaking/n_user_turns"] == trained_report["metrics"]["speaking/n_user_turns"]


def test_cli_errors(data_dir, tmp_path, capsys):
    assert cli.run(eval_cli.main, ["tokens", "--data_dir", str(data_dir)]) == 2
    assert "--checkpoint" in capsys.readouterr().err
    assert cli.run(eval_cli.main, ["tokens", "--checkpoint", str(tmp_path), "--data_dir", str(data_dir)]) == 2
    assert "neither" in capsys.readouterr().err
    assert (
        cli.run(eval_cli.main, ["tokens", "--untrained", "tiny", "--data_dir", str(data_dir), "--split", "nope"]) == 2
    )
    assert "nope" in capsys.readouterr().err


def test_a_tokenizer_that_does_not_fit_the_model_is_one_error_line(data_dir, tmp_path):
    import jax

    from flmjax import model, presets
    from flmjax.convert import save_official

    config = dataclasses.replace(presets.preset("tiny"), text_wait_id=5)  # the data's tokenizer says 3
    save_official(tmp_path / "ckpt", config, model.init_params(config, jax.random.key(0)), dtype="float32")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "launch.eval",
            "tokens",
            "--checkpoint",
            str(tmp_path / "ckpt"),
            "--data_dir",
            str(data_dir),
            "--dialogs",
            "1",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: tokenizer does not fit the model config: the tokenizer's <wait> id is 3")
