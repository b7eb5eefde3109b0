"""The 7B on v5p-64 (64 chips, 95 GiB HBM each), every stage: `--config configs/pods/v5p_64.py:STAGE`.

Pure FSDP over the v5p:4x4x4 slice, 8192 frames per chip per step (4096-frame sequences). Checked with
`python -m launch.aot train --topology v5p:4x4x4 --config configs/pods/v5p_64.py:stage4_duplex_leading`:
64.0 GiB of 95.7 GiB per chip, an estimated 1.64 s per step, 53% MFU
(XLA's memory analysis and cost-model estimate; the four stages compile to the same step).
"""

from configs.pods.common import STAGES, PodSettings, pod_config

SETTINGS = PodSettings(
    topology="v5p:4x4x4",
    tensor=1,
    global_batch_size=128,
    sequence_length=4096,
    remat_policy="dots_no_batch",
    attention_chunk=512,
)


def get_config(stage: str = "stage4_duplex_leading"):
    return pod_config(stage, SETTINGS)


__all__ = ["STAGES", "SETTINGS", "get_config"]
