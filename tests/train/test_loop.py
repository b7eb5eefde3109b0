"""The training loop end to end: learning, exact resume after SIGKILL, SIGTERM and Ctrl-C, a damaged newest
checkpoint set aside, two hosts, bad input as one `error:` line, the main job."""

import hashlib
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from flmjax import checkpoints as checkpoint_lib
from flmjax import model
from flmjax.convert import load_official
from flmjax.train.metrics import read_metrics
from tests.conftest import FAST_COMPILE_FLAGS, REPO_ROOT

STAGE = "configs/stages/stage2_post_train_leading.py"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from launch import prepare_data

    out = tmp_path_factory.mktemp("data")
    assert prepare_data.main(["--synthetic", "120", "--out", str(out), "--no_progress"]) == 0
    return out


def stage_flags(data_dir, workdir, steps, *extra):
    return [
        "--config",
        STAGE,
        "--workdir",
        str(workdir),
        f"--config.data.data_dir={data_dir}",
        f"--config.data.tokenizer={data_dir}/tokenizer.model",
        f"--config.train.total_steps={steps}",
        "--config.data.sequence_length=32",
        "--config.data.global_batch_size=8",
        "--config.train.log_every=1",
        "--config.train.eval_every=0",
        "--config.optimizer.warmup_steps=1",
        *extra,
    ]


def environment(devices=1, fast_compile=True):
    """A CPU training subprocess's environment; `fast_compile=False` for runs of many steps, where XLA's optimised
    code wins back more than its slower compile costs (at -O0 the tiny step runs about 2.5x slower)."""
    flags = f"--xla_force_host_platform_device_count={devices}" + (f" {FAST_COMPILE_FLAGS}" if fast_compile else "")
    return {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": flags}


def train_command(flags):
    return [sys.executable, "-m", "launch.train", *flags]


def run_train(flags, log_path, devices=1, check=True, fast_compile=True):
    with open(log_path, "w") as log:
        result = subprocess.run(
            train_command(flags),
            cwd=REPO_ROOT,
            env=environment(devices, fast_compile),
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=600,
        )
    if check:
        assert result.returncode == 0, pathlib.Path(log_path).read_text()[-3000:]
    return result


def final_params(workdir, step=None):
    checkpointer = checkpoint_lib.Checkpointer(workdir, read_only=True)
    config, _, _ = checkpointer.read_meta(step)
    on_cpu = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=on_cpu), model.abstract_params(config)
    )
    return checkpointer.restore_params(step, abstract_params=abstract)


@pytest.mark.slow
def test_killed_run_resumes_with_identical_losses_and_params(data_dir, tmp_path):
    steps = 36
    straight = tmp_path / "straight"
    # Optimised code (many steps), the same in all three runs: their losses must be bit-equal.
    run_train(
        stage_flags(data_dir, straight, steps, "--config.train.save_every=12"),
        tmp_path / "straight.log",
        fast_compile=False,
    )

    resumed = tmp_path / "resumed"
    flags = stage_flags(data_dir, resumed, steps, "--config.train.save_every=12")
    with open(tmp_path / "killed.log", "w") as log:
        process = subprocess.Popen(
            train_command(flags),
            cwd=REPO_ROOT,
            env=environment(fast_compile=False),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 300
        while checkpoint_lib.latest_complete_step(resumed) is None and time.time() < deadline:
            assert process.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    killed_at = checkpoint_lib.latest_complete_step(resumed)
    assert killed_at is not None and killed_at < steps, "the run finished before it could be killed"
    run_train(flags, tmp_path / "resume.log", fast_compile=False)
    assert f"resumed from {resumed} step {killed_at}" in (tmp_path / "resume.log").read_text()

    expected, got = read_metrics(straight), read_metrics(resumed)
    assert sorted(got) == sorted(expected) == list(range(1, steps + 1))
    for step in expected:
        for key in ("loss", "text_loss", "audio_loss", "grad_norm"):
            assert got[step][key] == expected[step][key], (step, key)
    jax.tree.map(np.testing.assert_array_equal, final_params(resumed), final_params(straight))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_of_four_devices_match_one_process_of_eight(data_dir, tmp_path):
    steps = 4
    one = tmp_path / "one"
    run_train(stage_flags(data_dir, one, steps), tmp_path / "one.log", devices=8)
    two = tmp_path / "two"
    port = free_port()
    processes = []
    for process_id in range(2):
        flags = stage_flags(
            data_dir,
            two,
            steps,
            "--num_processes=2",
            f"--process_id={process_id}",
            f"--coordinator_address=127.0.0.1:{port}",
        )
        log = open(tmp_path / f"two-{process_id}.log", "w")
        processes.append(
            (
                subprocess.Popen(
                    train_command(flags), cwd=REPO_ROOT, env=environment(4), stdout=log, stderr=subprocess.STDOUT
                ),
                log,
            )
        )
    for process, log in processes:
        process.wait(timeout=600)
        log.close()
    for process_id, (process, _) in enumerate(processes):
        assert process.returncode == 0, (tmp_path / f"two-{process_id}.log").read_text()[-3000:]
    expected, got = read_metrics(one), read_metrics(two)
    assert sorted(got) == sorted(expected) == list(range(1, steps + 1))
    for step in expected:
        for key in ("loss", "text_loss", "audio_loss"):
            assert got[step][key] == pytest.approx(expected[step][key], rel=1e-5), (step, key)


def assert_one_error_line(result, log_path, *fragments):
    """A user's mistake: exit status 2 and nothing but one `error: ...` line holding every fragment."""
    log = pathlib.Path(log_path).read_text()
    assert result.returncode == 2, log[-3000:]
    assert len(log.strip().splitlines()) == 1 and log.startswith("error: "), log[-3000:]
    for fragment in fragments:
        assert fragment in log, (fragment, log)


@pytest.mark.parametrize("case", ["unknown_config_key", "missing_tokenizer", "missing_data_dir"])
def test_a_stage_that_cannot_start_is_one_error_line_and_creates_no_workdir(data_dir, tmp_path, case):
    flag, fragment = {
        "unknown_config_key": ("--config.train.bogus=1", "--config.train.bogus: the config has no field 'bogus'"),
        "missing_tokenizer": (f"--config.data.tokenizer={tmp_path}/none.model", f"no tokenizer at {tmp_path}"),
        "missing_data_dir": (f"--config.data.data_dir={tmp_path}/none", f"no finished dataset at {tmp_path}/none"),
    }[case]
    result = run_train(stage_flags(data_dir, tmp_path / "w", 2, flag), tmp_path / "bad.log", check=False)
    assert_one_error_line(result, tmp_path / "bad.log", fragment)
    assert not (tmp_path / "w").exists()


def test_a_workdir_that_is_a_file_is_one_error_line_and_the_file_is_kept(data_dir, tmp_path):
    workdir = tmp_path / "a_file"
    workdir.write_text("not a folder")
    result = run_train(stage_flags(data_dir, workdir, 2), tmp_path / "file.log", check=False)
    assert_one_error_line(result, tmp_path / "file.log", f"workdir {workdir}: {workdir} is a file, not a folder")
    assert workdir.read_text() == "not a folder"


def read_only_folder(tmp_path) -> pathlib.Path:
    """A folder this user may not write into: a chmod 555 one, or, for root (who writes through permissions),
    one on a file system the kernel keeps read-only (/proc/sys)."""
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):
        folder = pathlib.Path("/proc/sys")
    assert not os.access(folder, os.W_OK), "no folder this user cannot write into"
    return folder


def test_a_read_only_workdir_is_one_error_line(data_dir, tmp_path):
    folder = read_only_folder(tmp_path)
    before = sorted(p.name for p in folder.iterdir())
    workdir = folder / "run"
    result = run_train(stage_flags(data_dir, workdir, 2), tmp_path / "read_only.log", check=False)
    assert_one_error_line(result, tmp_path / "read_only.log", f"workdir {workdir}: {folder} is not writable")
    assert sorted(p.name for p in folder.iterdir()) == before


def tree_digest(folder):
    digest = hashlib.sha256()
    for path in sorted(pathlib.Path(folder).rglob("*")):
        digest.update(str(path.relative_to(folder)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def trained_workdir(data_dir, tmp_path_factory):
    """A tiny stage trained 4 steps, with checkpoints at steps 2 and 4."""
    workdir = tmp_path_factory.mktemp("trained")
    run_train(stage_flags(data_dir, workdir, 4, "--config.train.save_every=2"), workdir.parent / "trained.log")
    assert checkpoint_lib.complete_steps(workdir) == [2, 4]
    return workdir


def truncate_checkpoint(workdir, step):
    """Cuts the largest params file of checkpoint `step` in half, as a disk-full or killed copy would."""
    step_dir = pathlib.Path(workdir) / "checkpoints" / str(step)
    victim = max((p for p in (step_dir / "params").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])


@pytest.mark.xdist_group("trained_workdir")  # shares the module fixture `trained_workdir`
def test_a_checkpoint_of_another_preset_is_one_error_line_listing_the_differences(data_dir, trained_workdir, tmp_path):
    before = tree_digest(trained_workdir)
    result = run_train(
        stage_flags(data_dir, trained_workdir, 6, "--config.model=small"), tmp_path / "mismatch.log", check=False
    )
    assert_one_error_line(
        result, tmp_path / "mismatch.log", "checkpoint step 4", "does not fit", "hidden_size=64", "params/"
    )
    assert tree_digest(trained_workdir) == before


@pytest.mark.xdist_group("trained_workdir")  # shares the module fixture `trained_workdir`
def test_a_truncated_only_checkpoint_is_one_error_line_and_is_left_as_it_is(data_dir, trained_workdir, tmp_path):
    workdir = tmp_path / "copy"
    shutil.copytree(trained_workdir, workdir)
    shutil.rmtree(workdir / "checkpoints" / "2")
    truncate_checkpoint(workdir, 4)
    before = tree_digest(workdir)
    # 8 devices: orbax then leaves reads in flight whose finalization printed pages of tracebacks at exit.
    result = run_train(stage_flags(data_dir, workdir, 6), tmp_path / "corrupt.log", devices=8, check=False)
    assert_one_error_line(
        result, tmp_path / "corrupt.log", "checkpoint step 4", "truncated or corrupt", "no older checkpoint"
    )
    assert tree_digest(workdir) == before


@pytest.mark.xdist_group("trained_workdir")  # shares the module fixture `trained_workdir`
def test_a_damaged_newest_checkpoint_is_set_aside_and_the_older_one_resumed(data_dir, trained_workdir, tmp_path):
    workdir = tmp_path / "copy"
    shutil.copytree(trained_workdir, workdir)
    truncate_checkpoint(workdir, 4)
    damaged = tree_digest(workdir / "checkpoints" / "4")
    run_train(stage_flags(data_dir, workdir, 6), tmp_path / "resume.log")
    log = (tmp_path / "resume.log").read_text()
    set_aside = workdir / "checkpoints_damaged" / "4"
    assert log.count("warning:") == 1 and "Traceback" not in log
    assert f"warning: checkpoint step 4 is damaged, moved to {set_aside}; resuming from step 2" in log
    assert f"resumed from {workdir} step 2" in log
    assert tree_digest(set_aside) == damaged
    assert checkpoint_lib.complete_steps(workdir)[-1] == 6


@pytest.mark.slow
def test_main_job_trains_every_stage_and_exports_a_loadable_checkpoint(data_dir, tmp_path):
    workdir = tmp_path / "main"
    run_train(
        [
            "--workdir",
            str(workdir),
            f"--config.data_dir={data_dir}",
            "--config.steps_per_stage=4",
            "--config.sequence_length=32",
            "--config.log_every=2",
            "--config.eval_every=4",
        ],
        tmp_path / "main.log",
    )
    stages = sorted(p.name for p in workdir.iterdir())
    assert stages == [
        "stage1_post_train_trailing",
        "stage2_post_train_leading",
        "stage3_duplex_trailing",
        "stage4_duplex_leading",
    ]
    for stage in stages:
        assert checkpoint_lib.latest_complete_step(workdir / stage) == 4
        assert sorted(read_metrics(workdir / stage, "eval")) == [4]
    final = workdir / "stage4_duplex_leading"
    out = tmp_path / "exported"
    result = subprocess.run(
        [sys.executable, "-m", "launch.export", "--workdir", str(final), "--out", str(out), "--dtype", "float32"],
        cwd=REPO_ROOT,
        env=environment(),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    config, params = load_official(out)
    jax.tree.map(np.testing.assert_array_equal, params, final_params(final))


def speech_accuracy(params, config, data_dir, batches=4):
    """Per-codebook accuracy of the teacher-forced depth model on the TTS records' speech frames (silence
    left out: it is one fixed frame and would flatter the model)."""
    import importlib

    from flmjax.data import pipeline, sentencepiece_tokenizer, synthetic
    from flmjax.data.examples import StreamIds
    from flmjax.train import loss as loss_lib

    stage = importlib.import_module("configs.stages.stage2_post_train_leading").get_config()
    tokenizer = sentencepiece_tokenizer.SentencePieceTokenizer(str(data_dir / "tokenizer.model"))
    source = pipeline.weighted_source(str(data_dir), "tts", stage.data.sources.tts)
    data = pipeline.stage_dataset([source], tokenizer, StreamIds.from_config(config), 32, 8, seed=1)
    correct = np.zeros(8)
    counted = np.zeros(8)
    for batch in [next(iter(pipeline.batch_iterator(data)))] * batches:
        _, audio_logits = loss_lib.model_logits(config, params, batch)
        speech = batch["audio_mask"] & (batch["audio_targets"] != synthetic.SILENCE_FRAME[None, None, :])
        hits = np.asarray(np.argmax(audio_logits, -1)) == batch["audio_targets"]
        correct += (hits & speech).sum(axis=(0, 1))
        counted += speech.sum(axis=(0, 1))
    assert counted.min() > 20
    return correct / counted


@pytest.mark.slow
def test_tiny_model_learns_the_corpus_text_to_audio_rule(data_dir, tmp_path):
    workdir = tmp_path / "learn"
    steps = 200
    run_train(
        stage_flags(
            data_dir,
            workdir,
            steps,
            "--config.train.log_every=10",
            "--config.train.save_every=200",
            "--config.optimizer.warmup_steps=20",
        ),
        tmp_path / "learn.log",
        fast_compile=False,
    )
    metrics = read_metrics(workdir)
    first, last = metrics[10], metrics[steps]
    assert last["text_loss"] < 0.5 * first["text_loss"]
    assert last["audio_loss"] < 0.5 * first["audio_loss"]
    checkpointer = checkpoint_lib.Checkpointer(workdir, read_only=True)
    config, _, _ = checkpointer.read_meta()
    accuracy = speech_accuracy(final_params(workdir), config, data_dir)
    chance = 1 / 2048
    print("speech-frame accuracy per codebook:", np.round(accuracy, 3))
    assert accuracy[0] > 0.25 > 500 * chance  # the semantic code of a word frame, from the text leading it
    assert accuracy[1:].mean() > 0.4  # acoustic codes: a lookup of the semantic code


def wait_for(condition, process, log_path, timeout_s=300):
    deadline = time.time() + timeout_s
    while not condition() and time.time() < deadline:
        assert process.poll() is None, pathlib.Path(log_path).read_text()[-3000:]
        time.sleep(0.05)


def train_and_signal(data_dir, tmp_path, signals, steps_logged=3, *flags):
    """A long stage in a subprocess, sent `signals` once `steps_logged` steps are logged (each later one as soon as
    the first is acknowledged); (workdir, exit status, output)."""
    workdir, log_path = tmp_path / "work", tmp_path / "train.log"
    flags = stage_flags(data_dir, workdir, 10_000, "--config.train.save_every=5000", *flags)
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            train_command(flags), cwd=REPO_ROOT, env=environment(), stdout=log, stderr=subprocess.STDOUT
        )
        wait_for(lambda: len(read_metrics(workdir)) >= steps_logged, process, log_path)
        process.send_signal(signals[0])
        for signum in signals[1:]:
            wait_for(lambda: "saving at the end of this step" in log_path.read_text(), process, log_path)
            process.send_signal(signum)
        process.wait(timeout=120)
    return workdir, process.returncode, log_path.read_text()


@pytest.mark.slow
@pytest.mark.parametrize("signum, exit_status", [(signal.SIGTERM, 0), (signal.SIGINT, 130)], ids=["sigterm", "ctrl_c"])
def test_sigterm_or_ctrl_c_saves_a_checkpoint_at_the_interrupted_step_and_stops(
    data_dir, tmp_path, signum, exit_status
):
    workdir, status, log = train_and_signal(data_dir, tmp_path, [signum])
    assert status == exit_status, log[-3000:]
    assert "Traceback" not in log and "KeyboardInterrupt" not in log, log[-3000:]
    saved = checkpoint_lib.latest_complete_step(workdir)
    assert saved is not None and 3 <= saved < 5000
    assert f"{signal.Signals(signum).name}: saved step {saved}, stopping" in log
    assert max(read_metrics(workdir)) == saved


@pytest.mark.slow
def test_a_second_ctrl_c_stops_at_once_without_saving_or_a_traceback(data_dir, tmp_path):
    # Steps of about a second (8x the usual frames), so that the second Ctrl-C lands in the step the first one
    # interrupted.
    workdir, status, log = train_and_signal(
        data_dir, tmp_path, [signal.SIGINT, signal.SIGINT], 1, "--config.data.sequence_length=256"
    )
    assert status == 130, log[-3000:]
    assert "Traceback" not in log and "saved step" not in log and log.rstrip().endswith("interrupted"), log[-3000:]
    assert checkpoint_lib.latest_complete_step(workdir) is None
