"""Scoring an FDB results folder (`flmjax.eval.fdb_score` through `launch.eval fdb`): a small FDB-layout dataset
built here, outputs and transcripts written as a run and FDB's `asr.py` would have, and the summary's `fdb_*`
figures checked against answers worked out by hand from FDB's scripts. Silero is replaced by "speech wherever
the signal is not zero", so the segments are known exactly."""

import argparse
import json
import pathlib

import numpy as np
import pytest

from flmjax.audio import write_wav
from flmjax.eval import fdb_io, fdb_score
from launch import cli, eval_fdb

RATE = 16_000


def _signal(seconds: float, *spans) -> np.ndarray:
    audio = np.zeros(int(round(seconds * RATE)), np.float32)
    for start, end in spans:
        audio[int(round(start * RATE)) : int(round(end * RATE))] = 0.1
    return audio


def _runs(samples, rate):
    active = np.concatenate([[0], (np.abs(np.asarray(samples)) > 0).astype(np.int8), [0]])
    edges = np.diff(active)
    return [(s / rate, e / rate) for s, e in zip(np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0])]


def _words(*spans):
    return {
        "text": " ".join(f"w{k}" for k in range(len(spans))),
        "chunks": [{"text": f"w{k}", "timestamp": [s, e]} for k, (s, e) in enumerate(spans)],
    }


def _sample(
    data: pathlib.Path,
    out: pathlib.Path,
    rel: str,
    user,
    model,
    task_file=None,
    content=None,
    transcript=None,
    clean=None,
):
    """A dataset folder (input.wav + task file) and its finished OUT folder (output.wav, frames.npz, output.json
    as FDB's asr.py writes it); `clean`: (clean_input, clean_output, clean transcript) for v1.5."""
    folder, done = data / rel, out / rel
    folder.mkdir(parents=True)
    done.mkdir(parents=True)
    write_wav(folder / "input.wav", user, RATE)
    if task_file:
        (folder / task_file).write_text(json.dumps(content))
    sessions = [("", model, transcript)]
    if clean is not None:
        write_wav(folder / "clean_input.wav", clean[0], RATE)
        sessions.append(("clean_", clean[1], clean[2]))
    for prefix, voice, words in sessions:
        write_wav(done / f"{prefix}output.wav", voice, RATE)
        np.savez(done / f"{prefix}frames.npz", text_ids=np.full(4, 3, np.int32), text_wait_id=np.int32(3))
        (done / f"{prefix}output.json").write_text(json.dumps(words))


def build(tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    tt = "v1.0/candor_turn_taking"
    turn = [{"text": "[TURN-TAKING]", "timestamp": [3.0, 6.0]}]
    user = _signal(6.0, (0.5, 3.0))
    # a turn at 0.4 s; a silent model; a short "mm hmm" (2 words in 0.5 s: no turn)
    _sample(
        data,
        out,
        f"{tt}/1",
        user,
        _signal(6.0, (3.4, 4.5)),
        "turn_taking.json",
        turn,
        _words((3.4, 3.7), (3.8, 4.1), (4.1, 4.3), (4.3, 4.5)),
    )
    _sample(data, out, f"{tt}/2", user, _signal(6.0), "turn_taking.json", turn, _words())
    _sample(
        data, out, f"{tt}/3", user, _signal(6.0, (3.2, 3.7)), "turn_taking.json", turn, _words((3.2, 3.4), (3.5, 3.7))
    )
    ui = "v1.0/synthetic_user_interruption"
    interrupt = [{"context": "tell me a story", "interrupt": "wait", "timestamp": [2.0, 3.0]}]
    user = _signal(6.0, (0.2, 0.9), (2.0, 3.0))
    # talks straight through 1.0-5.0: the transcript cropped at 3.0 (asr.py --task user_interruption) still has
    # 3 words over 1.1 s -> TOR 1, latency 0.0; VAD: it did not stop, 1.0 s over the interruption
    _sample(
        data,
        out,
        f"{ui}/1",
        user,
        _signal(6.0, (1.0, 5.0)),
        "interrupt.json",
        interrupt,
        _words((3.0, 3.3), (3.4, 3.6), (3.7, 4.1)),
    )
    # stops at 2.3 (0.3 s into the interruption) and answers at 3.5 -> TOR 1, latency 0.5
    _sample(
        data,
        out,
        f"{ui}/2",
        user,
        _signal(6.0, (1.0, 2.3), (3.5, 4.7)),
        "interrupt.json",
        interrupt,
        _words((3.5, 3.8), (3.9, 4.1), (4.1, 4.7)),
    )
    ph = "v1.0/synthetic_pause_handling"
    pause = [{"text": "[PAUSE]", "timestamp": [1.5, 3.0]}]
    user = _signal(5.0, (0.2, 1.5), (3.0, 4.5))
    _sample(data, out, f"{ph}/1", user, _signal(5.0, (2.0, 2.2)), "pause.json", pause, _words((2.0, 2.2)))
    _sample(
        data,
        out,
        f"{ph}/2",
        user,
        _signal(5.0, (2.0, 2.8)),
        "pause.json",
        pause,
        _words((2.0, 2.2), (2.2, 2.4), (2.4, 2.6), (2.6, 2.8)),
    )
    bc = "v1.0/icc_backchannel"
    user = _signal(10.0, (0.0, 9.0))
    # two backchannels (one word in 0.5 s, two in 0.8 s): TOR 0, 2 per 10 s; then a 3.5 s turn: TOR 1, none
    _sample(
        data,
        out,
        f"{bc}/1",
        user,
        _signal(10.0, (1.0, 1.5), (6.0, 6.8)),
        transcript=_words((1.1, 1.4), (6.1, 6.3), (6.4, 6.7)),
    )
    _sample(
        data,
        out,
        f"{bc}/2",
        user,
        _signal(10.0, (2.0, 5.5)),
        transcript=_words((2.0, 2.5), (2.6, 3.0), (3.1, 4.0), (4.2, 5.5)),
    )
    # v1.5: the user's new turn 2.0-3.0 after 0-1.5 (merged: 0.5 s gap); the model talks 2.5-4.0 over it
    # (stop latency 0.5) and never starts after 3.0 (no response gap). Clean: the user 0-1.5, the model answers
    # at 1.8 (response 0.3, no overlap).
    _sample(
        data,
        out,
        "v1.5/user_interruption/1",
        _signal(5.0, (0.0, 1.5), (2.0, 3.0)),
        _signal(5.0, (2.5, 4.0)),
        "metadata.json",
        {"context_text": "a", "current_turn_text": "b", "timestamps": [2.0, 3.0]},
        _words((2.6, 2.9), (3.1, 3.3), (3.3, 3.6)),
        clean=(
            _signal(5.0, (0.0, 1.5)),
            _signal(5.0, (1.8, 3.0)),
            _words((1.9, 2.2), (2.2, 2.5), (2.6, 3.0), (3.0, 3.1)),
        ),
    )
    icc_gt = tmp_path / "icc_gt_distribution.json"
    icc_gt.write_text(json.dumps({"1": [0.0] * 50 + [1.0], "2": [1.0]}))  # window 50: none of sample 1's
    return data, out, icc_gt


def _run(*argv) -> int:
    parser = argparse.ArgumentParser()
    eval_fdb.add_fdb_arguments(parser)
    return cli.run(lambda args: eval_fdb.run_fdb_command(parser.parse_args(args)), [str(a) for a in argv])


@pytest.fixture
def exact_vad(monkeypatch):
    monkeypatch.setattr(fdb_score, "silero_segments", _runs)


def test_fdb_figures_from_a_results_folder(tmp_path, exact_vad, capsys):
    data, out, icc_gt = build(tmp_path)
    assert _run("--data", data, "--out", out, "--transcripts", "keep", "--icc_gt", icc_gt) == 0
    assert "nothing new to do" in capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    tasks = summary["tasks"]
    assert sorted(tasks) == [
        "candor_turn_taking",
        "icc_backchannel",
        "synthetic_pause_handling",
        "synthetic_user_interruption",
        "user_interruption",
    ]
    mean = lambda task, name: tasks[task]["metrics"][name]["mean"]  # noqa: E731
    assert mean("candor_turn_taking", "fdb_TOR") == pytest.approx(1 / 3)
    assert mean("candor_turn_taking", "fdb_latency_s") == pytest.approx(0.4)
    assert tasks["candor_turn_taking"]["metrics"]["fdb_latency_s"]["n"] == 1
    assert mean("synthetic_user_interruption", "fdb_TOR") == 1.0
    assert mean("synthetic_user_interruption", "fdb_latency_s") == pytest.approx(0.25)
    assert mean("synthetic_user_interruption", "flmjax_vad_stop_latency_s") == pytest.approx(0.65)
    assert mean("synthetic_user_interruption", "flmjax_vad_stopped") == 0.5
    assert mean("synthetic_pause_handling", "fdb_TOR") == 0.5
    assert mean("icc_backchannel", "fdb_TOR") == 0.5
    assert mean("icc_backchannel", "fdb_frequency_per_s") == pytest.approx(0.1)
    assert mean("icc_backchannel", "fdb_jsd") == pytest.approx((np.sqrt(np.log(2)) + 1) / 2, abs=1e-4)
    v15 = summary["samples"]["user_interruption"][0]
    assert v15["fdb_timing"] == {"latency_stop_list": [[2.5, 3.0]], "latency_resp_list": []}
    assert v15["fdb_stop_latency_s"] == pytest.approx(0.5) and v15["fdb_response_latency_s"] is None
    assert v15["flmjax_TOR_after_event"] == 0 and v15["flmjax_clean_TOR_after_event"] == 0
    assert v15["flmjax_clean_response_latency_s"] == pytest.approx(0.3)
    assert v15["flmjax_clean_stop_latency_s"] is None
    assert tasks["user_interruption"]["root_dir"] == "v1.5/user_interruption"
    assert "fdb_TOR" not in summary["overall"]["metrics"]
    assert (
        f"python evaluate.py --task smooth_turn_taking --root_dir {out / 'v1.0/candor_turn_taking'}"
        in summary["fdb_commands"]
    )
    assert f"python get_timing.py --root_dir {out / 'v1.5/user_interruption'}" in summary["fdb_commands"]
    # OUT is an FDB results folder: inputs and task files beside each output; nothing else in a task folder
    assert (out / "v1.0/candor_turn_taking/1/turn_taking.json").is_file()
    assert (out / "v1.5/user_interruption/1/clean_input.wav").is_file()
    assert sorted(p.name for p in out.iterdir()) == ["summary.json", "summary.md", "timeline.png", "v1.0", "v1.5"]
    for task_dir in (out / "v1.0").iterdir():
        assert all(p.is_dir() for p in task_dir.iterdir())


def test_flmjax_transcripts_crop_an_interruption_at_its_end(tmp_path, exact_vad, monkeypatch):
    """Without --transcripts keep, output.json is rewritten by flmjax's recogniser; for v1 interruptions on the
    output from the interruption's end (asr.py --task user_interruption), times shifted back."""
    from flmjax.eval import asr

    data, out, _ = build(tmp_path)
    heard = {}

    def fake_words(samples, rate):
        heard[len(heard)] = samples.size / rate
        return [("yes", 0.5, 0.8), ("go", 0.9, 1.1), ("ahead", 1.1, 1.7)]

    monkeypatch.setattr(asr, "word_timings", fake_words)
    sample = next(s for s in fdb_io.discover_samples(data) if s.rel == "v1.0/synthetic_user_interruption/2")
    fdb_score.ensure_transcripts(sample, out, "flmjax", print)
    written = json.loads((out / sample.rel / "output.json").read_text())
    assert heard[0] == pytest.approx(3.0)  # 6 s of output from 3.0 s on
    assert [c["timestamp"] for c in written["chunks"]] == [[3.5, 3.8], [3.9, 4.1], [4.1, 4.7]]
    assert written["text"] == "yes go ahead" and written["recogniser"] == fdb_score.RECOGNISER


def test_bad_samples_and_foreign_transcripts_are_skipped_with_reasons(tmp_path, exact_vad, capsys):
    data, out, _ = build(tmp_path)
    tt = data / "v1.0" / "candor_turn_taking"
    turn = json.dumps([{"text": "[TURN-TAKING]", "timestamp": [1.0, 2.0]}])
    for name, audio, rate in (
        ("stereo", np.stack([_signal(2.0, (0, 1))] * 2), RATE),
        ("narrowband", np.zeros(16000, np.float32), 8000),
        ("no_task", _signal(2.0), RATE),
        ("tiny", np.zeros(100, np.float32), RATE),
        ("malformed", _signal(2.0), RATE),
    ):
        (tt / name).mkdir()
        write_wav(tt / name / "input.wav", audio, rate)
        if name != "no_task":
            (tt / name / "turn_taking.json").write_text(turn if name != "malformed" else "[{")
    # an output.json of another, longer run
    (out / "v1.0/candor_turn_taking/3/output.json").write_text(json.dumps(_words((8.0, 8.5))))
    assert _run("--data", data, "--out", out, "--transcripts", "keep") == 0
    captured = capsys.readouterr()
    reasons = {e["sample"]: e["reason"] for e in json.loads((out / "summary.json").read_text())["skipped_samples"]}
    prefix = "v1.0/candor_turn_taking/"
    assert sorted(reasons) == [prefix + n for n in ("3", "malformed", "narrowband", "no_task", "stereo", "tiny")]
    assert "2 channels" in reasons[prefix + "stereo"]
    assert "8000 Hz" in reasons[prefix + "narrowband"]
    assert "no turn_taking.json" in reasons[prefix + "no_task"]
    assert "too short" in reasons[prefix + "tiny"]
    assert "not readable JSON" in reasons[prefix + "malformed"]
    assert "ends at 8.500 s, after the end of its audio at 6.000 s" in reasons[prefix + "3"]
    for rel in reasons:
        assert sum(f"skipping {rel}:" in line for line in captured.err.splitlines()) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tasks"]["candor_turn_taking"]["n_samples"] == 2  # 1 and 2 are still scored
    assert summary["tasks"]["candor_turn_taking"]["metrics"]["fdb_TOR"]["mean"] == 0.5
