"""Load pretrained weights and tokenizers from a hub id or a local directory, failing clearly."""

import importlib.util
from pathlib import Path
from typing import Any

import torch
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


ATTENTION = ("eager", "sdpa", "flash_attention_2", "flex_attention")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


def check_attn_implementation(name: str | None) -> None:
    """One line, before any weights are read, for an unknown choice or a FlashAttention-2 that cannot run here."""
    if name is None:
        return
    if name not in ATTENTION:
        raise UserError(f"model.attn_implementation={name!r}: use one of {', '.join(ATTENTION)} (or null: the model's "
                        "default, sdpa)")
    if name == "flash_attention_2":
        if importlib.util.find_spec("flash_attn") is None:
            raise UserError("model.attn_implementation=flash_attention_2 needs the flash-attn package, which is not "
                            "installed — pip install flash-attn on a CUDA machine, or use model.attn_implementation=sdpa")
        if not torch.cuda.is_available():
            raise UserError("model.attn_implementation=flash_attention_2 needs a CUDA GPU and none is visible — use "
                            "model.attn_implementation=sdpa")


def base_load_kwargs(attn_implementation: str | None, dtype: str | None) -> dict[str, Any]:
    """``from_pretrained`` arguments for the attention kernel and the base weights' dtype (bfloat16 halves a 7B
    model's 28 GB; LoRA weights stay float32, peft's default)."""
    kwargs: dict[str, Any] = {}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if dtype and dtype not in DTYPES:
        raise UserError(f"model.dtype={dtype!r}: use one of {', '.join(DTYPES)} (or null: float32)")
    # null is float32 even for a checkpoint stored in bfloat16, which transformers 5 would otherwise load as stored
    kwargs["dtype"] = DTYPES[dtype or "float32"]
    return kwargs
