"""Streaming full-duplex inference (`stream_state`, `stream_slots`, `stream_sharding`, `stream`) and the released
generator's sampling (`sampling`)."""

from flmjax.infer.sampling import SamplingConfig, StreamSampling
from flmjax.infer.stream import place_stream_params, stream_step, stream_step_details
from flmjax.infer.stream_slots import init_stream, reset_slots, slot_sampling
from flmjax.infer.stream_state import ContextLimitError, StepOutputs, StreamError, StreamState

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
