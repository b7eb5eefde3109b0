"""Streaming full-duplex inference (`stream`) and the released generator's sampling (`sampling`)."""

from flmjax.infer.sampling import SamplingConfig, StreamSampling
from flmjax.infer.stream import (
    ContextLimitError,
    StepOutputs,
    StreamError,
    StreamState,
    init_stream,
    place_stream_params,
    reset_slots,
    slot_sampling,
    stream_step,
    stream_step_details,
)

__all__ = [
    "ContextLimitError",
    "SamplingConfig",
    "StepOutputs",
    "StreamError",
    "StreamSampling",
    "StreamState",
    "init_stream",
    "place_stream_params",
    "reset_slots",
    "slot_sampling",
    "stream_step",
    "stream_step_details",
]
