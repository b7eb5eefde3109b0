"""Stage 3: full-duplex dialog fine-tuning with trailing monologues, keeping some ASR and TTS data."""

from configs.stages.common import base_config, source


def get_config(model: str = "tiny"):
    config = base_config("stage3_duplex_trailing", previous_stage="stage2_post_train_leading", model=model)
    config.data.sequence_length = 512
    config.data.sources.dialog = source("synthetic", "train_dialog", "dialog", "trailing", weight=3.0, trail_frames=1)
    config.data.sources.asr = source(
        "synthetic", "train_asr", "asr", "trailing", weight=0.5, trail_frames=1, audio_loss=False
    )
    config.data.sources.tts = source("synthetic", "train_tts", "tts", "trailing", weight=0.5, trail_frames=1)
    return config
