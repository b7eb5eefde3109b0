"""Data: dialog records, dataset building, monologue placement, tokenizers, training examples, Grain pipelines."""
