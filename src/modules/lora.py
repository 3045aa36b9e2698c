"""Putting a LoRA adapter on a base model, the same way in training and in preflight's meta-device plan."""

from collections import Counter

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer

from src.errors import UserError


def lora_text_model(base: torch.nn.Module, lora: LoraConfig, task_type: str, pretrained: str) -> PeftModel:
    """``base`` wrapped by peft with ``lora`` (its ``task_type`` set); one line when the config does not fit."""
    lora.task_type = task_type
    try:
        return get_peft_model(base, lora)
    except ValueError as err:  # e.g. target_modules that the base model does not have
        raise UserError(f"LoRA config does not fit {pretrained}: {str(err).splitlines()[0]} — "
                        "set model.lora.target_modules to module names of this model") from err


def lora_unet(unet: torch.nn.Module, frozen: list[torch.nn.Module], lora: LoraConfig, pretrained: str) -> None:
    """Freeze the pipeline's parts (``frozen``, the UNet among them) and add ``lora`` to the UNet."""
    for part in frozen:
        part.requires_grad_(False)
    try:
        unet.add_adapter(lora)
    except ValueError as err:
        raise UserError(f"LoRA config does not fit the UNet of {pretrained}: {str(err).splitlines()[0]} "
                        "— set model.lora.target_modules (e.g. [to_k, to_q, to_v, to_out.0])") from err


def module_kind(name: str) -> str:
    """``encoder.block.0.layer.0.SelfAttention.q`` → ``q``; ``...attn1.to_out.0`` → ``to_out.0``."""
    parts = name.split(".")
    return ".".join(parts[-2:]) if parts[-1].isdigit() else parts[-1]


def adapted_module_kinds(names) -> dict[str, int]:
    """How many modules of each kind carry the adapter (``{"q": 24, "v": 24}``)."""
    return dict(sorted(Counter(module_kind(n) for n in names).items()))


def lora_layer_names(model: torch.nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
