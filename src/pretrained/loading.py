"""Load pretrained weights and tokenizers from a hub id or a local directory, failing clearly."""

from pathlib import Path
from typing import Any

import transformers
from hydra.utils import instantiate
from omegaconf import DictConfig
from transformers import AutoTokenizer

from src.errors import UserError

transformers.utils.logging.disable_progress_bar()


def _is_local(name_or_path: str) -> bool:
    return Path(name_or_path).expanduser().exists()


def load_pretrained(auto_class, name_or_path: str, **kwargs):
    """``auto_class.from_pretrained`` with a one-line error when the model cannot be found."""
    try:
        return auto_class.from_pretrained(str(name_or_path), **kwargs)
    except (OSError, ValueError) as err:
        where = "local directory" if _is_local(name_or_path) else "hub id"
        raise UserError(
            f"cannot load model '{name_or_path}' ({where}): {str(err).splitlines()[0]} — "
            "pass an existing local model directory, or a hub id on a machine that can reach the hub "
            "(tiny offline models: model=tiny_t5)"
        ) from err


def load_tokenizer(name_or_path: str, **kwargs):
    return load_pretrained(AutoTokenizer, name_or_path, **kwargs)


def resolve_pretrained(node: Any) -> str:
    """A hub id or local directory; a ``_target_`` node (the tiny models) is built and gives its directory."""
    if isinstance(node, DictConfig) and "_target_" in node:
        return str(instantiate(node))
    return str(node)
