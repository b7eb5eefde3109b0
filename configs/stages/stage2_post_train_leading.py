"""Stage 2: the same ASR and TTS-style utterances, monologue now leading the audio."""

from configs.stages.common import base_config, source


def get_config(model: str = "tiny"):
    config = base_config("stage2_post_train_leading", previous_stage="stage1_post_train_trailing", model=model)
    config.data.sources.asr = source("synthetic", "train_asr", "asr", "leading", weight=1.0, audio_loss=False)
    config.data.sources.tts = source("synthetic", "train_tts", "tts", "leading", weight=1.0, lead_frames=2)
    return config
