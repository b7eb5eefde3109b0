"""The 7B on a TPU slice: a dual-training stage with the settings that fit a topology and run fastest there.

Each `configs/pods/<slice>.py` names its topology and its settings; `get_config(stage)` is the stage's own
config (`configs/stages`, data mixture, placement, schedule) with the released-size model and those settings,
e.g. `--config configs/pods/v5p_64.py:stage4_duplex_leading`. The settings come from
`python -m launch.aot train --sweep` (README: "Before you rent the pod"); every figure is the XLA compiler's
memory analysis and its cost model's estimate, not a measurement on the hardware.
"""

import dataclasses
import importlib

import ml_collections

STAGES = ("stage1_post_train_trailing", "stage2_post_train_leading", "stage3_duplex_trailing", "stage4_duplex_leading")


@dataclasses.dataclass(frozen=True)
class PodSettings:
    topology: str  # what `launch.aot --topology` compiles for
    tensor: int  # tensor-parallel size; fsdp takes the rest of the devices
    global_batch_size: int  # sequences per step
    sequence_length: int  # frames per sequence (4096 frames = 5.5 minutes)
    remat_policy: str
    accumulation_steps: int = 1
    attention_chunk: int = 0  # queries per attention block (0: dense)
    loss_chunk_frames: int = 0  # frames per logits chunk (0: all at once)
    dtype: str = "bfloat16"  # compute
    param_dtype: str = "float32"  # params and Adam state


def pod_config(stage: str, settings: PodSettings) -> ml_collections.ConfigDict:
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
    config = importlib.import_module(f"configs.stages.{stage}").get_config("flm_audio_7b")
    config.topology = settings.topology  # what `launch.aot` compiles for when --topology is not given
    config.mesh.update(data=1, fsdp=-1, tensor=settings.tensor)
    config.data.global_batch_size = settings.global_batch_size
    config.data.sequence_length = settings.sequence_length
    config.train.accumulation_steps = settings.accumulation_steps
    config.model_overrides.update(
        dtype=settings.dtype,
        param_dtype=settings.param_dtype,
        remat_policy=settings.remat_policy,
        attention_chunk=settings.attention_chunk,
    )
    config.loss.chunk_frames = settings.loss_chunk_frames
    return config
