"""The released generator's settings (`POST /api/settings` of `launch.serve`): their names mapped onto a
`SamplingConfig`, checked one by one (`apply_settings`, a `ServeError` naming the bad key), and the view of a
`SamplingConfig` under those names that the server answers with (`settings_view`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from flmjax.errors import UserError
from flmjax.infer.sampling import SamplingConfig, StreamSampling

PENALTY_RING = 50  # the longest penalty window a conversation may ask for (the released default)


class ServeError(UserError, ValueError):
    """A server setting or a settings request that cannot be used."""


# The released generator's setting names -> (stream, field, kind, check).
SETTINGS = {
    "temp_text": ("text", "temperature", float, lambda v: v >= 0),
    "temp_audio": ("audio", "temperature", float, lambda v: v >= 0),
    "top_p_text": ("text", "top_p", float, lambda v: 0 <= v <= 1),
    "top_p_audio": ("audio", "top_p", float, lambda v: 0 <= v <= 1),
    "top_k_text": ("text", "top_k", int, lambda v: v >= 0),
    "top_k_audio": ("audio", "top_k", int, lambda v: v >= 0),
    "repetition_penalty_text": ("text", "repetition_penalty", float, lambda v: v > 0),
    "repetition_penalty_audio": ("audio", "repetition_penalty", float, lambda v: v > 0),
    "repetition_penalty_window_text": ("text", "window", int, lambda v: 1 <= v <= PENALTY_RING),
    "repetition_penalty_window_audio": ("audio", "window", int, lambda v: 1 <= v <= PENALTY_RING),
}
RANGES = {
    "temperature": ">= 0",
    "top_p": "in [0, 1]",
    "top_k": ">= 0",
    "repetition_penalty": "> 0",
    "window": f"in 1..{PENALTY_RING}",
}


def apply_settings(current: SamplingConfig, settings: Any) -> SamplingConfig:
    """`current` with the released-named `settings` applied; a `ServeError` (with `.key`) names a bad one."""
    if not isinstance(settings, dict):
        raise ServeError("settings must be a JSON object")
    streams = {"text": dataclasses.asdict(current.text), "audio": dataclasses.asdict(current.audio)}
    do_sample = current.do_sample
    for key, value in settings.items():
        error = ServeError(f"unknown setting {key!r} (known: use_sampling, {', '.join(SETTINGS)})")
        error.key = key
        if key == "use_sampling":
            if not isinstance(value, bool):
                error.args = (f"use_sampling must be true or false, got {value!r}",)
                raise error
            do_sample = value
            continue
        if key not in SETTINGS:
            raise error
        stream, field, kind, check = SETTINGS[key]
        number = value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
        if number is None or (kind is int and number != int(number)) or not check(number):
            error.args = (
                f"{key} must be {'an integer' if kind is int else 'a number'} {RANGES[field]}, got {value!r}",
            )
            raise error
        streams[stream][field] = kind(number)
    return dataclasses.replace(
        current, text=StreamSampling(**streams["text"]), audio=StreamSampling(**streams["audio"]), do_sample=do_sample
    )


def settings_view(sampling: SamplingConfig) -> dict[str, Any]:
    view = {"use_sampling": sampling.do_sample}
    for key, (stream, field, _, _) in SETTINGS.items():
        view[key] = getattr(getattr(sampling, stream), field)
    return view
