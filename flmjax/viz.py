"""Pictures of arrays: a dialog's 17 streams, training loss curves, a session's speech timeline.

Each function takes plain arrays (numpy or anything `np.asarray` reads) and returns a matplotlib `Figure`
built without pyplot (Agg canvas: no display needed, nothing global changed), so a notebook shows it as the
cell's value and a CLI saves it with `save_png`. matplotlib is imported only when a function is called (it is
in the `eval` and `notebooks` extras, not a core dependency). This module reads no files and imports nothing
from `data`, `train`, `infer` or `eval`: callers turn records, metrics and tokens into arrays first.

    plot_stream_grid(arrays, wait_id)     one record's training arrays (`flmjax.data.examples.record_arrays`):
                                          the text row with its words, speak and listen codebooks as heatmaps,
                                          segment boundaries, the loss masks; 4 axes per grid
    plot_stream_grids(panels, wait_id)    several of them side by side (one column each)
    plot_losses(history)                  one curve per metric over the steps
    plot_timeline(user, model, monologue) user and model speech lanes in seconds, the monologue written above
"""

from __future__ import annotations

import os
import pathlib
from typing import Callable, Mapping, Sequence

import numpy as np

from flmjax.streams import FRAME_S, NUM_CODEBOOKS

HIDDEN_TOKENS = frozenset({"<wait>", "<pad>", ""})
USER_Y, MODEL_Y, LANE_H = 1.0, 0.0, 0.6
GRID_AXES = ("text", "speak", "listen", "loss mask")  # the axes of one stream grid, top to bottom
SPEAK_COLOR, LISTEN_COLOR = "tab:orange", "tab:blue"

# A segment as drawn: (start_frame, end_frame) or (start_frame, end_frame, text, ...).
FrameSegment = Sequence


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def save_png(fig, path: str | os.PathLike, dpi: int = 100) -> pathlib.Path:
    """Writes `fig` as a PNG at `path` (parent folders made) and returns the path."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=dpi)
    return path


# ------------------------------------------------------------------------------------------- stream grid
def _token_label(token: int, token_text: Callable[[int], str] | None) -> str:
    return token_text(token) if token_text is not None else str(token)


def draw_stream_grid(
    axes: Sequence,
    arrays: Mapping[str, np.ndarray],
    wait_id: int,
    *,
    token_text: Callable[[int], str] | None = None,
    speak_segments: Sequence[FrameSegment] = (),
    listen_segments: Sequence[FrameSegment] = (),
    title: str = "",
    code_range: tuple[int, int] = (0, 2048),
) -> None:
    """Draws one record's streams into four axes (`GRID_AXES`), time (delayed steps) on x.

    arrays: `text_targets [N]` (the text row: the monologue as placed, `<wait>` elsewhere), `audio_targets
    [N, 8]` (the model's speak codebooks, delayed), `listen_ids [N, 8]` (the user's, delayed), `text_mask [N]`
    and `audio_mask [N, 8]` (what the loss counts), as `record_arrays` returns them.
    - text: each token that is not `<wait>` written at its step (`token_text(id)`, default the id), `<wait>`
      steps as small grey ticks;
    - speak, listen: the 8 codebooks' codes as heatmaps (`image data [8, N]`, codes outside `code_range`,
      the delay and padding fills, shown blank);
    - loss mask: rows text, c0..c7 (image data [9, N], 1 = counted, drawn green);
    - segment boundaries (frames; delayed steps = frames for codebook 0) as vertical lines on the text row and
      their own channel: speak orange, listen blue.
    """
    from matplotlib.colors import ListedColormap
    from matplotlib.ticker import MaxNLocator

    text_ax, speak_ax, listen_ax, mask_ax = axes
    text = np.asarray(arrays["text_targets"]).reshape(-1)
    steps = len(text)
    lo, hi = code_range

    words = np.nonzero(text != wait_id)[0]
    waits = np.nonzero(text == wait_id)[0]
    text_ax.scatter(waits, np.zeros(len(waits)), marker="|", s=12, color="0.75", label="<wait>")
    for k, step in enumerate(words):  # three staggered rows so that neighbouring pieces overlap less
        text_ax.text(
            step,
            0.15 + 0.25 * (k % 3),
            _token_label(int(text[step]), token_text),
            fontsize=6,
            rotation=45,
            ha="left",
            va="bottom",
            clip_on=True,
        )
    text_ax.set_ylim(-0.3, 1.2)
    text_ax.set_yticks([])
    text_ax.set_ylabel("text", rotation=0, ha="right", va="center")

    for ax, key, name in ((speak_ax, "audio_targets", "speak"), (listen_ax, "listen_ids", "listen")):
        codes = np.asarray(arrays[key]).reshape(steps, NUM_CODEBOOKS).T.astype(np.float64)  # [8, N]
        codes = np.ma.masked_outside(codes, lo, hi - 1)
        ax.imshow(
            codes,
            aspect="auto",
            interpolation="nearest",
            cmap="viridis",
            vmin=lo,
            vmax=hi - 1,
            extent=(-0.5, steps - 0.5, NUM_CODEBOOKS - 0.5, -0.5),
        )
        ax.set_yticks([0, NUM_CODEBOOKS - 1], ["c0", f"c{NUM_CODEBOOKS - 1}"])
        ax.set_ylabel(name, rotation=0, ha="right", va="center")

    mask = np.concatenate(
        [
            np.asarray(arrays["text_mask"]).reshape(1, steps),
            np.asarray(arrays["audio_mask"]).reshape(steps, NUM_CODEBOOKS).T,
        ]
    ).astype(np.float64)
    mask_ax.imshow(
        mask,
        aspect="auto",
        interpolation="nearest",
        cmap=ListedColormap(["white", "#8fbc8f"]),
        vmin=0,
        vmax=1,
        extent=(-0.5, steps - 0.5, NUM_CODEBOOKS + 0.5, -0.5),
    )
    mask_ax.set_yticks([0, 1, NUM_CODEBOOKS], ["text", "c0", f"c{NUM_CODEBOOKS - 1}"], fontsize=6)
    mask_ax.set_ylabel("loss mask", rotation=0, ha="right", va="center")
    mask_ax.set_xlabel("step (80 ms frames, delayed grid)")
    mask_ax.xaxis.set_major_locator(MaxNLocator(integer=True))

    for segments, color, own_ax in (
        (speak_segments, SPEAK_COLOR, speak_ax),
        (listen_segments, LISTEN_COLOR, listen_ax),
    ):
        for segment in segments:
            for edge in (segment[0] - 0.5, segment[1] - 0.5):
                for ax in (text_ax, own_ax):
                    ax.axvline(edge, color=color, linewidth=0.8, alpha=0.8)
    for ax in axes:
        ax.set_xlim(-0.5, steps - 0.5)
    for ax in axes[:-1]:
        ax.tick_params(labelbottom=False)
    if title:
        text_ax.set_title(title, fontsize=9)


def plot_stream_grids(
    panels: Sequence[Mapping],
    wait_id: int,
    *,
    token_text: Callable[[int], str] | None = None,
    width_per_panel: float = 9.0,
):
    """Stream grids side by side: one column of four axes (`GRID_AXES`) per panel. Each panel is a mapping
    with `arrays` and optionally `title`, `speak_segments`, `listen_segments` (see `draw_stream_grid`).
    Returns the Figure; its axes are ordered panel by panel, each panel's four top to bottom."""
    fig = _figure(width_per_panel * len(panels), 4.6)
    grid = fig.add_gridspec(len(GRID_AXES), len(panels), height_ratios=(1.3, 1, 1, 0.8), hspace=0.08, wspace=0.2)
    for column, panel in enumerate(panels):
        axes = [fig.add_subplot(grid[row, column]) for row in range(len(GRID_AXES))]
        draw_stream_grid(
            axes,
            panel["arrays"],
            wait_id,
            token_text=token_text,
            speak_segments=panel.get("speak_segments", ()),
            listen_segments=panel.get("listen_segments", ()),
            title=panel.get("title", ""),
        )
    fig.subplots_adjust(left=0.07, right=0.99, top=0.92, bottom=0.1)
    return fig


def plot_stream_grid(arrays: Mapping[str, np.ndarray], wait_id: int, **kwargs):
    """One stream grid (see `draw_stream_grid` for the arrays and keywords) as a Figure of four axes."""
    token_text = kwargs.pop("token_text", None)
    return plot_stream_grids([{"arrays": arrays, **kwargs}], wait_id, token_text=token_text, width_per_panel=12.0)


# ------------------------------------------------------------------------------------------- loss curves
def plot_losses(
    history: Mapping[str, Sequence[float]],
    steps: Sequence[int] | None = None,
    *,
    title: str = "",
    log_scale: bool = True,
):
    """One line per metric (`history[name]`: its values, one per logged step; `steps` default 1, 2, ...),
    labelled with the metric's name; log y axis by default. Returns the Figure (one axes)."""
    fig = _figure(8.0, 3.6)
    ax = fig.add_subplot()
    for name, values in history.items():
        values = np.asarray(values, np.float64)
        xs = np.arange(1, len(values) + 1) if steps is None else np.asarray(steps)[: len(values)]
        ax.plot(xs, values, label=name, linewidth=1.2)
    if log_scale:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    if history:
        ax.legend(fontsize=7, ncol=2)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------- timeline
def plot_timeline(
    user_segments: Sequence[tuple[float, float]],
    model_segments: Sequence[tuple[float, float]],
    monologue: Sequence[tuple[float, str]] = (),
    title: str = "",
    duration_s: float | None = None,
    hidden_tokens=HIDDEN_TOKENS,
):
    """Two lanes of speech-activity bars, "user" (top) and "model" (bottom), on an axis in seconds, with each
    monologue piece `(time_s, text)` written above the model lane at its time (`<wait>`/pad and blank pieces
    are not shown). Returns the Figure (one axes)."""
    shown = [(float(t), str(text).strip()) for t, text in monologue if str(text).strip() not in hidden_tokens]
    ends = [e for _, e in [*user_segments, *model_segments]] + [t for t, _ in shown]
    duration_s = duration_s or (max(ends) + 0.5 if ends else 1.0)

    fig = _figure(max(8.0, min(40.0, duration_s * 0.8)), 3.2)
    ax = fig.add_subplot()
    for y, segments, color in ((USER_Y, user_segments, LISTEN_COLOR), (MODEL_Y, model_segments, SPEAK_COLOR)):
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
    return fig


def frame_times(frames: Sequence[int] | np.ndarray, frame_s: float = FRAME_S) -> np.ndarray:
    """Frame indices -> their start times in seconds (12.5 frames/s)."""
    return np.asarray(frames, np.float64) * frame_s
