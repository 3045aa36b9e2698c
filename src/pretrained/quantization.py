"""QLoRA: load a text model in 4 or 8 bits through bitsandbytes, then prepare it for k-bit training.

bitsandbytes' k-bit kernels need CUDA, so a missing GPU or package stops the run with one line
before any weights are read.
"""

import importlib.util
import os
from typing import Any

import torch
from peft import prepare_model_for_kbit_training
from transformers import BitsAndBytesConfig

from src.errors import UserError

MODES = ("4bit", "8bit")


def check_quantization(mode: str | None) -> None:
    if mode is None:
        return
    if mode not in MODES:
        raise UserError(f"model.quantization={mode!r} is not one of {MODES} (or null for none)")
    if not torch.cuda.is_available():
        raise UserError(f"model.quantization={mode} needs a CUDA GPU (bitsandbytes k-bit kernels) and none is "
                        "visible — set model.quantization=null to train without quantization")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise UserError(f"model.quantization={mode} needs bitsandbytes — pip install bitsandbytes")


def bnb_config(mode: str, compute_dtype: torch.dtype = torch.bfloat16) -> BitsAndBytesConfig:
    """NF4 with double quantization (the QLoRA recipe) for 4bit; LLM.int8 for 8bit.

    >>> bnb_config("4bit").bnb_4bit_quant_type, bnb_config("8bit").load_in_8bit
    ('nf4', True)
    """
    if mode == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=compute_dtype)
    return BitsAndBytesConfig(load_in_8bit=True)


def quantized_load_kwargs(mode: str | None) -> dict[str, Any]:
    """Extra ``from_pretrained`` arguments: the quantization config, weights on this process's GPU."""
    if mode is None:
        return {}
    compute_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"quantization_config": bnb_config(mode, compute_dtype),
            "device_map": {"": int(os.environ.get("LOCAL_RANK", 0))}}


def prepare_for_kbit(model, gradient_checkpointing: bool):
    """peft's k-bit preparation: frozen base, norms in float32, input grads on for checkpointing."""
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
