"""What every stage of dual training shares; each `stage*.py` fills in its data mixture and schedule.

Dual training as this project reads the FLM-Audio paper (arXiv 2509.02521; its stage data and
hyperparameters are not public): the monologue alternates between trailing its audio (text after the speech,
as in ASR) and leading it (text before the speech, as in TTS) across four stages, and ends leading, which is
how the conversational model speaks.

    stage1_post_train_trailing   ASR + TTS-style data, trailing monologues
    stage2_post_train_leading    ASR + TTS-style data, leading monologues
    stage3_duplex_trailing       full-duplex dialogs (+ some ASR/TTS), trailing monologues
    stage4_duplex_leading        full-duplex dialogs (+ some TTS), leading monologues: the final model

A source names a dataset split, its task (`asr`: the text is the user's listen sentences; `tts`/`dialog`:
the model's own speak sentences), the monologue placement with its lead/trail frames, its mixture weight, and
which losses it feeds. Override anything from the command line, e.g.
`--config.data.sources.dialog.weight=2 --config.data.sequence_length=512`.
"""

import ml_collections


def source(dataset: str, split: str, task: str, placement: str, weight: float = 1.0, lead_frames: int = 0,
           trail_frames: int = 0, text_loss: bool = True, audio_loss: bool = True) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        dataset=dataset, split=split, task=task, placement=placement, weight=weight, lead_frames=lead_frames,
        trail_frames=trail_frames, text_loss=text_loss, audio_loss=audio_loss))


def base_config(stage: str, previous_stage: str | None, model: str = "tiny") -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.stage = stage
    config.previous_stage = previous_stage or ""  # whose final checkpoint this stage starts from
    config.model = model  # a flmjax.config preset name
    config.seed = 0
    config.data = ml_collections.ConfigDict(dict(
        data_dir="data",  # where `python -m launch.prepare_data` put the datasets
        tokenizer="data/tokenizer.model",
        sequence_length=256,
        global_batch_size=8,
        num_workers=0,
    ))
    config.data.sources = ml_collections.ConfigDict()
    return config
