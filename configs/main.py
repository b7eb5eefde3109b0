"""The main job: a short dual-training run of the `tiny` model on the embedded synthetic corpus, on local CPUs.

    python -m launch.train                      # this config, workdir runs/main
    python -m launch.train --config configs/main.py --config.steps_per_stage=300

It builds the synthetic corpus and its tokenizer in `data_dir` if they are missing, then runs the four stages
of configs/stages in order, each in WORKDIR/<stage> and starting from the previous stage's final checkpoint,
with the shared settings below overriding each stage's own.
"""

import ml_collections

STAGES = ("stage1_post_train_trailing", "stage2_post_train_leading", "stage3_duplex_trailing", "stage4_duplex_leading")


def get_config():
    config = ml_collections.ConfigDict()
    config.schedule = STAGES
    config.model = "tiny"
    config.data_dir = "data"
    config.synthetic_records = 600
    config.steps_per_stage = 100
    config.sequence_length = 128
    config.global_batch_size = 8
    config.learning_rate = 3e-3
    config.log_every = 10
    config.eval_every = 50
    config.duplex_eval_dialogs = 8  # held-out dialogs streamed at each eval (token-level duplex metrics; 0: off)
    # Sampled monologue (audio argmax): greedy text never starts talking on this short run (<wait> stays the
    # single likeliest token while the mass on starting spreads over many first words).
    config.duplex_eval_text_temperature = 1.0
    config.seed = 0
    # What every stage takes from the settings above, by its place in a stage config (configs/stages/common.py
    # `schedule_stage` lays it over each stage's own config). References, so that `--config.steps_per_stage=300`
    # reaches every stage.
    ref = config.get_ref
    config.shared = ml_collections.ConfigDict(
        dict(
            seed=ref("seed"),
            data=dict(
                data_dir=ref("data_dir"),
                tokenizer=ref("data_dir") + "/tokenizer.model",
                sequence_length=ref("sequence_length"),
                global_batch_size=ref("global_batch_size"),
            ),
            optimizer=dict(learning_rate=ref("learning_rate")),
            train=dict(
                total_steps=ref("steps_per_stage"),
                log_every=ref("log_every"),
                eval_every=ref("eval_every"),
                save_every=ref("steps_per_stage"),
            ),
            evals=dict(
                duplex=dict(dialogs=ref("duplex_eval_dialogs"), text_temperature=ref("duplex_eval_text_temperature"))
            ),
        )
    )
    return config
