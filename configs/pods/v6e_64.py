"""The 7B on v6e-64 (64 chips, 32 GiB HBM each), every stage: `--config configs/pods/v6e_64.py:STAGE`.

Pure FSDP over the v6e:8x8 slice, 8192 frames per chip per step (4096-frame sequences). Checked with
`python -m launch.aot train --topology v6e:8x8 --config configs/pods/v6e_64.py:stage4_duplex_leading`:
24.8 GiB of 31.25 GiB per chip, an estimated 1.30 s per step, 33% MFU
(XLA's memory analysis and cost-model estimate; the four stages compile to the same step).
"""

from configs.pods.common import STAGES, PodSettings, pod_config

SETTINGS = PodSettings(
    topology="v6e:8x8",
    tensor=1,
    global_batch_size=128,
    sequence_length=4096,
    remat_policy="attention",
    attention_chunk=512,
)


def get_config(stage: str = "stage4_duplex_leading"):
    return pod_config(stage, SETTINGS)


__all__ = ["STAGES", "SETTINGS", "get_config"]
