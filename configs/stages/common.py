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

import importlib

import ml_collections

from flmjax.data.synthetic import SILENCE_FRAME


def source(
    dataset: str,
    split: str,
    task: str,
    placement: str,
    weight: float = 1.0,
    lead_frames: int = 0,
    trail_frames: int = 0,
    text_loss: bool = True,
    audio_loss: bool = True,
    eval_split: str | None = None,
) -> ml_collections.ConfigDict:
    """`eval_split` (held out, for periodic eval) defaults to `split` with "train" replaced by "validation"."""
    return ml_collections.ConfigDict(
        dict(
            dataset=dataset,
            split=split,
            task=task,
            placement=placement,
            weight=weight,
            lead_frames=lead_frames,
            trail_frames=trail_frames,
            text_loss=text_loss,
            audio_loss=audio_loss,
            eval_split=eval_split if eval_split is not None else split.replace("train", "validation", 1),
        )
    )


def base_config(stage: str, previous_stage: str | None, model: str = "tiny") -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.stage = stage
    config.previous_stage = previous_stage or ""  # whose final checkpoint this stage starts from
    config.model = model  # a flmjax.presets preset name
    config.model_overrides = ml_collections.ConfigDict(
        dict(dtype="float32", param_dtype="float32", remat_policy="none", scan_layers=True, attention_chunk=0)
    )
    # Where the params come from when the workdir has no checkpoint yet: "" (fresh init), a workdir of an
    # earlier stage (its newest checkpoint), or a released PyTorch checkpoint folder (config.json + safetensors).
    config.init_from = ""
    config.seed = 0
    config.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))  # -1: the rest of the devices
    config.train = ml_collections.ConfigDict(
        dict(
            total_steps=200,
            accumulation_steps=1,
            log_every=10,
            eval_every=100,  # eval_every 0: no evals
            save_every=100,
            max_to_keep=3,
            async_checkpoints=True,
        )
    )
    # Evaluators run every `train.eval_every` steps, named by type (flmjax.eval.evaluators maps the types).
    config.evals = ml_collections.ConfigDict(
        dict(
            # The loss on the first `batches` batches of the sources' held-out splits (each source's `eval_split`).
            held_out=dict(type="held_out_loss", batches=4),
            # Token-level duplex eval (flmjax.eval.dialogs): the streaming model on the first `dialogs` held-out
            # dialogs of "DATASET/SPLIT" `source` (0: off), each cut to `frames` frames (0: data.sequence_length),
            # `batch` at a time, logged as eval metrics `duplex/...`; text temperature 0: greedy. `silence_codes`: the
            # source's silence frame (the synthetic corpus's; a codec's silence frame for recorded data).
            duplex=dict(
                type="duplex",
                dialogs=0,
                frames=0,
                batch=8,
                text_temperature=0.0,
                source="synthetic/validation_dialog",
                silence_codes=tuple(int(c) for c in SILENCE_FRAME),
            ),
        )
    )
    config.optimizer = ml_collections.ConfigDict(
        dict(
            learning_rate=3e-3,
            schedule="cosine",
            warmup_steps=20,
            end_lr_fraction=0.1,
            b1=0.9,
            b2=0.95,
            eps=1e-8,
            weight_decay=0.1,
            clip_norm=1.0,
            frozen=(),
            lr_multipliers=ml_collections.ConfigDict(dict(embeddings=1.0, temporal=1.0, text_head=1.0, depth=1.0)),
        )
    )
    config.loss = ml_collections.ConfigDict(
        dict(
            text_weight=1.0,
            audio_weight=1.0,
            wait_weight=0.5,
            codebook_weights=(1.0,) + (0.1,) * 7,
            mask_aud_emp=True,
            chunk_frames=0,
        )
    )
    config.data = ml_collections.ConfigDict(
        dict(
            data_dir="data",  # where `python -m launch.prepare_data` put the datasets
            tokenizer="data/tokenizer.model",
            sequence_length=256,
            global_batch_size=8,
            num_workers=0,
        )
    )
    config.data.sources = ml_collections.ConfigDict()
    return config


def schedule_stage(schedule: ml_collections.ConfigDict, stage: str) -> ml_collections.ConfigDict:
    """A stage of a schedule (configs/main.py): the stage's own config for the schedule's model with the schedule's
    shared settings (`schedule.shared`, by their places in a stage config) laid over it. A stage warms up over at
    most a fifth of its steps."""
    config = importlib.import_module(f"configs.stages.{stage}").get_config(schedule.model)
    config.update(schedule.shared.to_dict())
    config.optimizer.warmup_steps = min(config.optimizer.warmup_steps, config.train.total_steps // 5)
    return config
