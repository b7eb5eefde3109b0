"""The Full-Duplex-Bench file-contract runner: discovery, running (batched, resumable), scoring, CLI."""

import argparse
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from flmjax.audio import read_wav, resample, write_wav
from flmjax.eval import fdb_io, fdb_run
from launch import cli, eval_fdb
from tests.conftest import REPO_ROOT, golden_path

RATE = 16_000
TASKS = (
    "candor_turn_taking",
    "synthetic_pause_handling",
    "synthetic_user_interruption",
    "icc_backchannel",
    "user_interruption",
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fdb")
    eval_fdb.add_fdb_arguments(parser)
    return parser


def _cli(*argv) -> int:
    """`launch.eval fdb ARGV` in this process: its exit status (a user's error: one line, 2)."""
    return cli.run(lambda args: eval_fdb.run_fdb_command(_parser().parse_args(args)), [str(a) for a in argv])


def _write_sample(
    folder: pathlib.Path, audio: np.ndarray, rate: int, task_file: str | None = None, content=None
) -> None:
    folder.mkdir(parents=True)
    write_wav(folder / "input.wav", audio, rate)
    if task_file:
        (folder / task_file).write_text(json.dumps(content, indent=2))


def _silence(seconds: float, rate: int = RATE) -> np.ndarray:
    return np.zeros(int(seconds * rate), np.float32)


def build_dataset(root: pathlib.Path) -> pathlib.Path:
    """Five samples in FDB's layout (v1.0 task folders and a v1.5 category) cut from the golden Mimi's real
    speech (`speech`: 3 s, `long`: 12.8 s at 24 kHz), with task files in FDB's schemas."""
    golden = np.load(golden_path("mimi_small") / "golden.npz")
    speech = resample(golden["speech/audio"][0, 0], 24000, RATE)
    long = resample(golden["long/audio"][0, 0], 24000, RATE)

    def cut(audio, start_s, end_s):
        return audio[int(start_s * RATE) : int(end_s * RATE)]

    v1 = root / "v1.0"
    # turn-taking: the user speaks 3 s then stops (odd length: output must match it to the sample)
    _write_sample(
        v1 / "candor_turn_taking" / "0001",
        np.concatenate([speech, _silence(1.5), _silence(0.0023)]),
        RATE,
        "turn_taking.json",
        [{"text": "[TURN-TAKING]", "timestamp": [3.0, 4.5]}],
    )
    # pause handling: speech, a 1.5 s pause, speech
    _write_sample(
        v1 / "synthetic_pause_handling" / "0001",
        np.concatenate([cut(long, 0, 1.5), _silence(1.5), cut(long, 1.5, 3.0)]),
        RATE,
        "pause.json",
        [{"text": "[PAUSE]", "timestamp": [1.5, 3.0]}],
    )
    # user interruption: a 2 s context, 1.5 s in which the model would answer, then the interruption
    _write_sample(
        v1 / "synthetic_user_interruption" / "0001",
        np.concatenate([cut(long, 3.0, 5.0), _silence(1.5), cut(speech, 0, 1.5)]),
        RATE,
        "interrupt.json",
        [{"context": "a question", "interrupt": "wait, another one", "timestamp": [3.5, 5.0]}],
    )
    # ICC backchannel: input.wav alone (no task file)
    _write_sample(v1 / "icc_backchannel" / "0001", cut(long, 5.0, 8.5), RATE)
    # v1.5 overlap: context, then the user's new turn starting at 2.5 s
    _write_sample(
        root / "v1.5" / "user_interruption" / "1",
        np.concatenate([cut(long, 9.0, 11.0), _silence(0.5), cut(speech, 1.5, 3.0)]),
        RATE,
        "metadata.json",
        {"context_text": "a question", "current_turn_text": "hold on", "timestamps": [2.5, 4.0]},
    )
    # ... and its clean input (no new turn), here at 24 kHz: run as a session of its own
    write_wav(
        root / "v1.5" / "user_interruption" / "1" / "clean_input.wav",
        resample(np.concatenate([cut(long, 9.0, 11.0), _silence(2.0)]), RATE, 24000),
        24000,
    )
    return root


def test_discovery_follows_fdb_layout_and_schemas(tmp_path, capsys):
    data = build_dataset(tmp_path / "data")
    (data / "v1.0" / "notes").mkdir()
    write_wav(data / "v1.0" / "notes" / "input.wav", _silence(0.5), RATE)  # no task file: not a sample
    samples = fdb_io.discover_samples(data)
    by_task = {s.task: s for s in samples}
    assert sorted(by_task) == sorted(TASKS)
    assert {t: s.family for t, s in by_task.items()} == {
        "candor_turn_taking": "turn_taking",
        "synthetic_pause_handling": "pause_handling",
        "synthetic_user_interruption": "user_interruption",
        "icc_backchannel": "backchannel",
        "user_interruption": "user_interruption",
    }
    assert by_task["candor_turn_taking"].info == {"turn_end_s": 3.0}
    assert by_task["synthetic_pause_handling"].info == {"pauses_s": [(1.5, 3.0)]}
    assert by_task["synthetic_user_interruption"].info["event_start_s"] == 3.5
    assert by_task["user_interruption"].info["event_end_s"] == 4.0
    assert by_task["user_interruption"].rel == "v1.5/user_interruption/1"
    # a task folder given directly as --data: the task name comes from its own name
    direct = fdb_io.discover_samples(data / "v1.0" / "candor_turn_taking")
    assert [(s.rel, s.task) for s in direct] == [("0001", "candor_turn_taking")]

    (data / "v1.0" / "candor_turn_taking" / "0001" / "turn_taking.json").write_text('[{"text": "x"}]')
    with pytest.raises(fdb_io.FdbError, match="turn_taking.json"):
        fdb_io.discover_samples(data)
    assert _cli("--data", data, "--out", tmp_path / "out") == 2  # the CLI skips it; the others need a model
    error = capsys.readouterr().err
    assert "skipping v1.0/candor_turn_taking/0001" in error and "turn_taking.json" in error
    assert "4 samples need running" in error

    assert _cli("--data", tmp_path / "empty_missing", "--out", tmp_path / "out") == 2
    assert "not a folder" in capsys.readouterr().err


def test_cli_needs_model_only_for_pending_samples(tmp_path, capsys):
    data = build_dataset(tmp_path / "data")
    assert _cli("--data", data, "--out", tmp_path / "out", "--no_score") == 2
    assert "give --checkpoint and --mimi" in capsys.readouterr().err


def _mtimes(out: pathlib.Path) -> dict[str, int]:
    return {
        p.relative_to(out).as_posix(): p.stat().st_mtime_ns
        for p in out.rglob("*")
        if p.name in (fdb_io.OUTPUT_WAV, fdb_io.FRAMES_NPZ)
    }


@pytest.mark.slow
def test_run_resume_score_and_batch_independence(tmp_path, capsys):
    data = build_dataset(tmp_path / "data")
    model, mimi = golden_path("release_like"), golden_path("mimi_small")
    out = tmp_path / "out"
    common = ["--data", data, "--checkpoint", model, "--mimi", mimi]  # sampled: the released defaults

    assert _cli(*common, "--out", out, "--batch", "2") == 0
    captured = capsys.readouterr()
    assert "5 to run" in captured.err and "5/5 samples done" in captured.err
    assert "real-time factor" in captured.err and "batch 3/3" in captured.err
    samples = fdb_io.discover_samples(data)
    for sample in samples:
        written = out / sample.rel
        voice, rate = read_wav(written / "output.wav")
        user, user_rate = read_wav(sample.folder / "input.wav")
        assert rate == user_rate and voice.shape == user.shape  # exactly the input's samples and rate
        frames = np.load(written / "frames.npz")
        steps = -(-round(user.shape[1] * 24000 / user_rate) // 1920)
        assert frames["frames"].shape == (steps - 1, 9) and frames["listen_codes"].shape == (8, steps)
        assert not list(written.glob(".*tmp*"))  # no temporary files left
    assert np.abs(read_wav(out / samples[0].rel / "output.wav")[0]).max() > 0  # the model's voice is there

    md = (out / "summary.md").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(summary["tasks"]) == sorted(TASKS)
    for task in TASKS:
        assert f"| {task} | 1 |" in md
        assert summary["tasks"][task]["n_samples"] == 1
    assert "| overall | 5 |" in md and "pocketsphinx" in md.lower()
    records = {r["task"]: r for rs in summary["samples"].values() for r in rs}
    assert records["candor_turn_taking"]["task_info"] == {"duration_s": 4.50225, "turn_end_s": 3.0}
    assert "fdb_TOR" in records["candor_turn_taking"] and "flmjax_n_words" in records["candor_turn_taking"]
    assert "turn_end_s" not in summary["tasks"]["candor_turn_taking"]["metrics"]  # times are not averaged
    assert "flmjax_n_backchannels" in records["icc_backchannel"]
    assert "fdb_stop_latency_s" in records["user_interruption"]
    assert "flmjax_clean_response_latency_s" in records["user_interruption"]
    assert "flmjax_vad_stopped" in records["synthetic_user_interruption"]
    for sample in samples:  # FDB's files beside each output
        written = out / sample.rel
        assert json.loads((written / "output.json").read_text())["recogniser"].startswith("flmjax.eval.asr")
        assert (written / "input.wav").read_bytes() == (sample.folder / "input.wav").read_bytes()
    clean = out / "v1.5" / "user_interruption" / "1"
    voice, rate = read_wav(clean / "clean_output.wav")
    assert rate == 24000 and voice.shape == read_wav(clean / "clean_input.wav")[0].shape
    assert (clean / "clean_output.json").is_file() and (clean / "metadata.json").is_file()
    png = (out / "timeline.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000

    # Second run: nothing new; the summary is rewritten from the stored outputs.
    before = _mtimes(out)
    summary_before = (out / "summary.md").stat().st_mtime_ns
    assert _cli(*common, "--out", out, "--batch", "2") == 0
    assert "nothing new to do" in capsys.readouterr().err
    assert _mtimes(out) == before
    assert (out / "summary.md").stat().st_mtime_ns > summary_before

    # A removed output is redone alone.
    redo = samples[2]
    (out / redo.rel / "output.wav").unlink()
    assert _cli(*common, "--out", out, "--batch", "2", "--no_score") == 0
    assert "4 already done, 1 to run" in capsys.readouterr().err
    after = _mtimes(out)
    assert {k for k in after if after[k] != before[k]} == {f"{redo.rel}/output.wav", f"{redo.rel}/frames.npz"}

    # Batching does not change a session, even sampled (each sample has its own key): --batch 1 gives the same
    # tokens, and the same voice up to the codec's float32 rounding at another batch size (one int16 step).
    single = tmp_path / "single"
    assert _cli(*common, "--out", single, "--batch", "1", "--no_score") == 0
    capsys.readouterr()
    for sample in samples:
        alone, batched = np.load(single / sample.rel / "frames.npz"), np.load(out / sample.rel / "frames.npz")
        for name in batched.files:
            np.testing.assert_array_equal(alone[name], batched[name], err_msg=f"{sample.rel} {name}")
        voice_alone, rate_alone = read_wav(single / sample.rel / "output.wav")
        voice_batched, rate_batched = read_wav(out / sample.rel / "output.wav")
        assert rate_alone == rate_batched and voice_alone.shape == voice_batched.shape
        np.testing.assert_allclose(voice_alone, voice_batched, rtol=0, atol=1.5 / 32768, err_msg=sample.rel)
        np.testing.assert_array_equal(
            np.load(single / sample.rel / "frames.npz")["frames"], np.load(out / sample.rel / "frames.npz")["frames"]
        )


def test_non_finite_model_voice_is_written_as_silence_and_flagged(tmp_path, monkeypatch):
    """A speak code outside the codebook decodes to NaN: the runner writes silence there, warns and records it."""
    from types import SimpleNamespace

    from flmjax.infer import sessions

    data = tmp_path / "data"
    _write_sample(
        data / "candor_turn_taking" / "7",
        np.full(8000, 0.1, np.float32),
        RATE,
        "turn_taking.json",
        [{"text": "[TURN-TAKING]", "timestamp": [0.5, 0.5]}],
    )
    frames = np.zeros((7, 9), np.int32)
    frames[3, 8] = 2048  # the audio pad id

    def fake_run(config, params, user_audio, **options):
        voice = np.full(len(user_audio[0]), 0.25, np.float32)
        voice[4 * 1920 :] = np.nan
        return SimpleNamespace(voice=[voice], heard=[np.zeros((8, 8), np.int32)], frames=[frames])

    monkeypatch.setattr(sessions, "run_sessions", fake_run)
    logged = []
    (sample,) = fdb_io.discover_samples(data)
    stats = fdb_run.run_samples(
        [sample],
        tmp_path / "out",
        SimpleNamespace(text_wait_id=3),
        None,
        SimpleNamespace(bins=2048),
        None,
        log=logged.append,
    )
    assert stats.samples == 1 and any("non-finite" in line and "frame 3" in line for line in logged)
    voice, rate = read_wav(tmp_path / "out" / "candor_turn_taking" / "7" / "output.wav")
    assert rate == RATE and voice.shape == (1, 8000)
    assert np.all(voice[0, : 4 * 1280] > 0.2) and np.all(voice[0, 4 * 1280 + 16 :] == 0)
    assert fdb_io.is_complete(sample, tmp_path / "out")
    with np.load(tmp_path / "out" / "candor_turn_taking" / "7" / "frames.npz") as stored:
        assert float(stored["nonfinite_audio_s"]) > 0 and int(stored["text_wait_id"]) == 3


def build_dataset_with_bad_samples(root: pathlib.Path) -> pathlib.Path:
    """One good turn-taking sample beside one of each kind of bad sample, named after what is wrong with it."""
    speech = resample(np.load(golden_path("mimi_small") / "golden.npz")["speech/audio"][0, 0], 24000, RATE)
    turn = [{"text": "[TURN-TAKING]", "timestamp": [1.0, 1.5]}]
    tasks = root / "candor_turn_taking"
    _write_sample(tasks / "good", np.concatenate([speech[:RATE], _silence(1.0)]), RATE, "turn_taking.json", turn)
    _write_sample(tasks / "malformed_task", speech[:RATE], RATE, "turn_taking.json", [{"text": "no timestamp"}])
    _write_sample(tasks / "cut_header", speech[:RATE], RATE, "turn_taking.json", turn)
    cut = tasks / "cut_header" / "input.wav"
    cut.write_bytes(cut.read_bytes()[:30])
    nan = np.concatenate([speech[:RATE], _silence(1.0)])
    nan[RATE // 2] = np.nan  # 0.5 s
    (tasks / "non_finite").mkdir()
    write_wav(tasks / "non_finite" / "input.wav", nan, RATE, dtype="float32")
    (tasks / "non_finite" / "turn_taking.json").write_text(json.dumps(turn))
    _write_sample(tasks / "fifty_ms", speech[: RATE // 20], RATE, "turn_taking.json", turn)
    _write_sample(tasks / "turn_after_clip", speech[: RATE // 2], RATE, "turn_taking.json", turn)  # ends at 1.0 s
    return root


def test_bad_samples_are_skipped_with_reasons_and_the_good_ones_finish(tmp_path, capsys):
    data = build_dataset_with_bad_samples(tmp_path / "data")
    out = tmp_path / "out"
    common = [
        "--data",
        data,
        "--out",
        out,
        "--checkpoint",
        golden_path("release_like"),
        "--mimi",
        golden_path("mimi_small"),
        "--greedy",
    ]
    assert _cli(*common) == 0
    captured = capsys.readouterr()
    reasons = {
        entry["sample"].rsplit("/", 1)[1]: entry["reason"]
        for entry in json.loads((out / "summary.json").read_text())["skipped_samples"]
    }
    assert sorted(reasons) == ["cut_header", "fifty_ms", "malformed_task", "non_finite", "turn_after_clip"]
    assert "turn_taking.json: expected" in reasons["malformed_task"]
    assert "cut_header/input.wav: not a readable WAV file" in reasons["cut_header"]
    assert "non_finite/input.wav: 1 non-finite samples" in reasons["non_finite"] and "0.500 s" in reasons["non_finite"]
    assert "0.050 s is too short" in reasons["fifty_ms"]
    assert "not scoreable" in reasons["turn_after_clip"] and "turn_end at 1 s" in reasons["turn_after_clip"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tasks"]["candor_turn_taking"]["n_samples"] == 1  # only the good one is scored
    assert [r["sample"] for r in summary["samples"]["candor_turn_taking"]] == ["candor_turn_taking/good"]
    assert "5 samples skipped" in captured.out and "`candor_turn_taking/fifty_ms`: " in captured.out
    assert all(f"skipping candor_turn_taking/{name}" in captured.err for name in reasons)
    assert (out / "candor_turn_taking" / "good" / "output.wav").is_file()
    assert not (out / "candor_turn_taking" / "non_finite").exists()

    # --allow_nonfinite: the NaN sample runs, heard as silence there, with a warning; the rest stay skipped.
    with pytest.warns(UserWarning, match="non_finite/input.wav: 1 non-finite samples .* read as zeros"):
        assert _cli(*common, "--allow_nonfinite") == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tasks"]["candor_turn_taking"]["n_samples"] == 2
    assert len(summary["skipped_samples"]) == 4


def test_a_dataset_of_only_bad_samples_is_one_error_line(tmp_path):
    data = tmp_path / "data" / "candor_turn_taking" / "1"
    _write_sample(data, _silence(1.0), RATE, "turn_taking.json", [{"text": "x", "timestamp": [0.5]}])
    (data / "input.wav").write_bytes((data / "input.wav").read_bytes()[:30])
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "launch.eval",
            "fdb",
            "--data",
            str(tmp_path / "data"),
            "--out",
            str(tmp_path / "out"),
            "--checkpoint",
            str(golden_path("release_like")),
            "--mimi",
            str(golden_path("mimi_small")),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: every sample under") and f"{data / 'input.wav'}: not a readable WAV" in last
