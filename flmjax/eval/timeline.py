"""A picture of one dialog saved as a PNG: the drawing is `flmjax.viz.plot_timeline` (user and model speech
lanes, the model's monologue text where it was produced); this keeps the evaluation's file-writing form."""

from __future__ import annotations

from flmjax import viz

HIDDEN_TOKENS = viz.HIDDEN_TOKENS


def plot_timeline(
    path_png,
    user_segments,
    model_segments,
    monologue=(),
    title: str = "",
    duration_s: float | None = None,
    hidden_tokens=HIDDEN_TOKENS,
):
    """`viz.plot_timeline` saved at `path_png` (parent folders made); returns the Figure."""
    fig = viz.plot_timeline(
        user_segments, model_segments, monologue, title=title, duration_s=duration_s, hidden_tokens=hidden_tokens
    )
    viz.save_png(fig, path_png)
    return fig
