"""WER, code accuracy, summaries and the timeline plot."""

import json

import numpy as np
import pytest

from flmjax.eval import duplex, quality, report, timeline


def test_word_error_rate():
    assert quality.word_error_rate("the cat sat down", "the cat sat up") == 0.25
    assert quality.word_error_rate("The cat, sat down!", "the CAT sat down") == 0.0
    assert quality.word_error_rate("a b c d", "a b") == 0.5
    assert quality.word_error_rate("a b", "a b c d") == 1.0
    assert quality.word_error_rate(["a b", "c d e f"], ["a x", "c d e f"]) == pytest.approx(1 / 6)
    assert quality.word_error_rate("", "") == 0.0
    assert quality.word_error_rate("", "hello") == 1.0
    assert quality.word_error_rate(["", "a b"], ["x", "a b"]) == 0.5  # the insertion counts
    with pytest.raises(ValueError):
        quality.word_error_rate(["a"], ["a", "b"])


def test_code_accuracy():
    ref = np.arange(4 * 8).reshape(4, 8)
    pred = ref.copy()
    pred[0, 0] = -1
    pred[1, :] = -1
    acc = quality.code_accuracy(pred, ref)
    assert acc["n_frames"] == 4
    assert acc["per_codebook"][0] == 0.5 and acc["per_codebook"][1] == 0.75
    assert acc["overall"] == pytest.approx(1 - 9 / 32)
    masked = quality.code_accuracy(pred, ref, valid=np.array([False, False, True, True]))
    assert masked["overall"] == 1.0 and masked["n_frames"] == 2
    assert quality.code_accuracy(pred, ref, valid=np.zeros(4, bool))["overall"] is None


def test_summary_table_and_files(tmp_path):
    results = {
        "smooth_turn_taking": [duplex.TurnTakingResult(True, 0.4), duplex.TurnTakingResult(False, None)],
        "user_interruption": [duplex.user_interruption([(0.0, 3.24), (5.5, 8.0)], 3.0, 5.0)],
    }
    markdown, summary = report.summary_table(results)
    turn = summary["tasks"]["smooth_turn_taking"]
    assert turn["n_samples"] == 2
    assert turn["metrics"]["took_turn"] == {"mean": 0.5, "n": 2}
    assert turn["metrics"]["latency_s"] == {"mean": pytest.approx(0.4), "n": 1}
    assert summary["tasks"]["user_interruption"]["metrics"]["stop_latency_s"]["mean"] == pytest.approx(0.24)
    assert summary["overall"]["n_samples"] == 3 and "took_turn" not in summary["overall"]["metrics"]
    assert "| smooth_turn_taking | 2 | took_turn | 0.5000 | 2 |" in markdown
    md_path, json_path = report.write_summary(tmp_path / "out", results)
    assert md_path.read_text().startswith("# ")
    loaded = json.loads(json_path.read_text())
    assert loaded["tasks"]["smooth_turn_taking"]["metrics"]["took_turn"]["mean"] == 0.5
    assert loaded["samples"]["user_interruption"][0]["stopped"] is True


def test_plot_timeline(tmp_path):
    path = tmp_path / "plots" / "dialog.png"
    user, model = [(0.0, 1.6), (3.2, 4.8)], [(2.0, 3.44), (5.2, 6.4)]
    monologue = [(2.0, "Hello"), (2.08, "<wait>"), (2.4, "there"), (5.2, "Sure"), (5.3, " ")]
    fig = timeline.plot_timeline(path, user, model, monologue, title="dialog 1")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == ["Hello", "there", "Sure"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["model", "user"]
    bars = [len(c.get_paths()) for c in ax.collections]
    assert bars == [2, 2]  # one bar per segment in each lane
    assert "s" in ax.get_xlabel() and ax.get_title() == "dialog 1"
