"""Building the train package's frozen dataclass configs from dicts or `ml_collections.ConfigDict`s."""

from __future__ import annotations

import dataclasses
from typing import Any


def dataclass_kwargs(cls, config: Any, error: type[Exception]) -> dict[str, Any]:
    """The fields of dataclass `cls` given in a mapping or ConfigDict (None: none); an unknown key raises `error`
    naming the valid ones. Nested ConfigDicts become plain dicts."""
    if config is None:
        return {}
    if hasattr(config, "to_dict"):  # ml_collections.ConfigDict / FrozenConfigDict
        config = config.to_dict()
    config = dict(config)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(config) - set(names))
    if unknown:
        raise error(f"unknown {cls.__name__} keys {unknown}; valid keys are {names}")
    return config
