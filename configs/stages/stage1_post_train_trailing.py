"""Stage 1: post-training on ASR and TTS-style utterances, monologue trailing the audio."""

from configs.stages.common import base_config, source


def get_config(model: str = "tiny"):
    config = base_config("stage1_post_train_trailing", previous_stage=None, model=model)
    config.data.sources.asr = source(
        "synthetic", "train_asr", "asr", "trailing", weight=1.0, trail_frames=1, audio_loss=False
    )  # the model listens: nothing to say
    config.data.sources.tts = source("synthetic", "train_tts", "tts", "trailing", weight=1.0, trail_frames=1)
    return config
