"""The model as training would build it, on the meta device: real architecture, LoRA applied, counted.

No weights are read: the architecture comes from the model's config.json (a local directory, the Hugging Face
cache, the hub, or the bundled copy of a published config) and lives on the meta device.
"""

from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig
from peft import get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer

from src.errors import UserError
from src.pretrained.architecture import architecture_config, meta_model


@dataclass
class ModelPlan:
    family: str
    pretrained: str
    config_source: str
    trainable: int
    total: int
    lora_modules: dict[str, int]
    network: torch.nn.Module  # what trains: the peft-wrapped text model, or the UNet with its adapter

    def report(self) -> dict[str, Any]:
        return {"family": self.family, "pretrained": self.pretrained, "config_source": self.config_source,
                "trainable_parameters": self.trainable, "total_parameters": self.total,
                "trainable_percent": round(100 * self.trainable / max(self.total, 1), 4),
                "lora_modules": self.lora_modules}


def model_family(model_cfg: DictConfig) -> type:
    """The LightningModule class a model config names (not instantiated)."""
    return get_class(model_cfg._target_)


def resolve_pretrained(node: Any) -> str:
    """A hub id or local directory; a ``_target_`` node (the tiny models) is built and gives its directory."""
    if isinstance(node, DictConfig) and "_target_" in node:
        return str(instantiate(node))
    return str(node)


def _module_kind(name: str) -> str:
    """``encoder.block.0.layer.0.SelfAttention.q`` → ``q``; ``...attn1.to_out.0`` → ``to_out.0``."""
    parts = name.split(".")
    return ".".join(parts[-2:]) if parts[-1].isdigit() else parts[-1]


def plan_model(model_cfg: DictConfig) -> ModelPlan:
    cls = model_family(model_cfg)
    family = cls.encoding
    pretrained = resolve_pretrained(model_cfg.pretrained)
    lora = instantiate(model_cfg.lora)
    if family == "diffusion":
        return _plan_diffusion(pretrained, lora)
    source = architecture_config(pretrained)[1]
    lora.task_type = cls.task_type
    try:
        network = get_peft_model(meta_model(family, pretrained), lora)
    except ValueError as err:
        raise UserError(f"LoRA config does not fit {pretrained}: {str(err).splitlines()[0]} — set "
                        "model.lora.target_modules to module names of this model") from err
    trainable, total = network.get_nb_trainable_parameters()  # peft's own count, as training logs it
    kinds = Counter(_module_kind(n) for n in network.base_model.targeted_module_names)
    return ModelPlan(family, pretrained, source, trainable, total, dict(sorted(kinds.items())), network)


def _plan_diffusion(pretrained: str, lora) -> ModelPlan:
    source = architecture_config(pretrained, subfolder="unet")[1]
    parts = meta_model("diffusion", pretrained)
    unet = parts.unet
    for frozen in (parts.text_encoder, parts.vae, unet):
        frozen.requires_grad_(False)
    try:
        unet.add_adapter(lora)
    except ValueError as err:
        raise UserError(f"LoRA config does not fit the UNet of {pretrained}: {str(err).splitlines()[0]} — set "
                        "model.lora.target_modules (e.g. [to_k, to_q, to_v, to_out.0])") from err
    modules = [n for n, m in unet.named_modules() if isinstance(m, BaseTunerLayer)]
    trainable = sum(p.numel() for p in unet.parameters() if p.requires_grad)
    # what the LightningModule holds, as its own count (and the run's log) reports it
    total = sum(p.numel() for m in (unet, parts.vae, parts.text_encoder) for p in m.parameters())
    kinds = Counter(_module_kind(n) for n in modules)
    return ModelPlan("diffusion", pretrained, source, trainable, total, dict(sorted(kinds.items())), unet)
