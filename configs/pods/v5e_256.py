"""The 7B on v5e-256 (256 chips, 16 GiB HBM each), every stage: `--config configs/pods/v5e_256.py:STAGE`.

Pure FSDP over the v5e:16x16 slice, 8192 frames per chip per step (4096-frame sequences). Checked with
`python -m launch.aot train --topology v5e:16x16 --config configs/pods/v5e_256.py:stage4_duplex_leading`:
11.8 GiB of 15.75 GiB per chip, an estimated 4.47 s per step, 45% MFU
(XLA's memory analysis and cost-model estimate; the four stages compile to the same step).
"""

from configs.pods.common import STAGES, PodSettings, pod_config

SETTINGS = PodSettings(
    topology="v5e:16x16",
    tensor=1,
    global_batch_size=512,
    sequence_length=4096,
    remat_policy="full",
    attention_chunk=512,
)


def get_config(stage: str = "stage4_duplex_leading"):
    return pod_config(stage, SETTINGS)


__all__ = ["STAGES", "SETTINGS", "get_config"]
