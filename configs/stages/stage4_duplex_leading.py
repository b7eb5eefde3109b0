"""Stage 4: full-duplex dialog fine-tuning with leading monologues: the final conversational model."""

from configs.stages.common import base_config, source


def get_config(model: str = "tiny"):
    config = base_config("stage4_duplex_leading", previous_stage="stage3_duplex_trailing", model=model)
    config.data.sequence_length = 512
    config.data.sources.dialog = source("synthetic", "train_dialog", "dialog", "leading", weight=3.0, lead_frames=2)
    config.data.sources.tts = source("synthetic", "train_tts", "tts", "leading", weight=0.5, lead_frames=2)
    return config
