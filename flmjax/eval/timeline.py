"""A picture of one dialog: user and model speech lanes, and the model's monologue text where it was produced."""

from __future__ import annotations

import pathlib

HIDDEN_TOKENS = frozenset({"<wait>", "<pad>", ""})
USER_Y, MODEL_Y, LANE_H = 1.0, 0.0, 0.6


def plot_timeline(path_png, user_segments, model_segments, monologue=(), title: str = "",
                  duration_s: float | None = None, hidden_tokens=HIDDEN_TOKENS):
    """Draws two lanes of speech-activity bars, "user" (top) and "model" (bottom), on an axis in seconds,
    with each monologue piece `(time_s, text)` written above the model lane at its time (`<wait>`/pad and
    blank pieces are not shown); saves a PNG (matplotlib Agg, no display) and returns the Figure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    shown = [(float(t), str(text).strip()) for t, text in monologue if str(text).strip() not in hidden_tokens]
    ends = [e for _, e in [*user_segments, *model_segments]] + [t for t, _ in shown]
    duration_s = duration_s or (max(ends) + 0.5 if ends else 1.0)

    fig = Figure(figsize=(max(8.0, min(40.0, duration_s * 0.8)), 3.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for y, segments, color in ((USER_Y, user_segments, "tab:blue"), (MODEL_Y, model_segments, "tab:orange")):
        ax.broken_barh([(s, e - s) for s, e in segments], (y - LANE_H / 2, LANE_H), color=color)
    for k, (t, text) in enumerate(shown):  # three staggered rows so that neighbouring words overlap less
        ax.text(t, MODEL_Y + LANE_H / 2 + 0.05 + 0.1 * (k % 3), text, fontsize=7, rotation=0, va="bottom")
    ax.set_yticks([MODEL_Y, USER_Y], ["model", "user"])
    ax.set_ylim(MODEL_Y - 0.5, USER_Y + 0.5)
    ax.set_xlim(0.0, duration_s)
    ax.set_xlabel("time (s)")
    ax.grid(axis="x", alpha=0.3)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    path = pathlib.Path(path_png)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
    return fig
