"""The Hugging Face hub and its cache, seen from this machine: is the hub off limits, is a model here already."""

import os
from pathlib import Path

from huggingface_hub import constants, try_to_load_from_cache
from omegaconf import DictConfig


def hub_offline() -> bool:
    """True when the Hugging Face hub must not be contacted (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)."""
    flags = (os.environ.get(name, "").upper() for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return constants.HF_HUB_OFFLINE or any(flag in {"1", "ON", "YES", "TRUE"} for flag in flags)


def available_offline(pretrained, marker: str = "config.json") -> bool:
    """A model that needs no download: a builder config (a tiny model), a local directory, or a hub id whose
    ``marker`` file (``config.json``, a pipeline's ``model_index.json``) is in the Hugging Face cache."""
    if isinstance(pretrained, DictConfig):  # a tiny-model builder
        return True
    if Path(str(pretrained)).expanduser().is_dir():
        return True
    try:
        return isinstance(try_to_load_from_cache(str(pretrained), marker), str)
    except ValueError:  # not a valid repo id either
        return False
