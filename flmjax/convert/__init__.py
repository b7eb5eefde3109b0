"""Checkpoint exchange with the released PyTorch FLM-Audio (config.json + safetensors), in both directions."""

from flmjax.convert.name_map import Entry, name_map
from flmjax.convert.official import CheckpointError, load_official, official_shapes, save_official

__all__ = ["CheckpointError", "Entry", "load_official", "name_map", "official_shapes", "save_official"]
