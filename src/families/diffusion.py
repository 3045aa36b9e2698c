"""Text-to-image diffusion (Stable Diffusion): LoRA on the UNet, trained on captioned images."""

import inspect
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from hydra.utils import instantiate
from omegaconf import DictConfig
from transformers import AutoModel

from src.families import names
from src.families.protocol import ModelPlan
from src.metrics.image import METRICS
from src.metrics.inception import inception_status
from src.modules.diffusion_lora import DiffusionLoRAModule
from src.modules.lora import adapted_module_kinds, lora_layer_names, lora_unet
from src.preflight.cost import image_validation_cost
from src.preflight.data import plan_image_data
from src.preflight.memory import meta_tensor
from src.pretrained.architecture import architecture_config, hf_config
from src.pretrained.hub import available_offline, hub_offline
from src.pretrained.loading import resolve_pretrained
from src.pretrained.tiny import train_clip_tokenizer

STANDIN_MERGES = 2000
VAE_DOWNSAMPLING = 8  # the SD VAE's latents are 8x smaller than the image
CAPTION_TOKENS = 77


class DiffusionArchitecture(NamedTuple):
    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module


@dataclass(frozen=True, eq=False)
class DiffusionFamily:
    name: str = names.DIFFUSION
    kind: str = "image"
    description: str = "a diffusion model"
    module_class: type = DiffusionLoRAModule
    hub_marker: str = "model_index.json"
    tokenizer_subfolder: str | None = "tokenizer"

    def connect(self, datamodule, tokenizer, model_cfg: DictConfig) -> None:
        """Images are read at the model's resolution (``model.resolution``)."""
        datamodule.connect(resolution=int(model_cfg.resolution))

    def meta_model(self, pretrained: str) -> DiffusionArchitecture:
        """The UNet, VAE and text encoder of a Stable Diffusion pipeline on the meta device."""
        unet_config = architecture_config(pretrained, "unet")[0]
        vae_config = architecture_config(pretrained, "vae")[0]
        text_config = hf_config(architecture_config(pretrained, "text_encoder")[0], f"{pretrained}/text_encoder")
        with torch.device("meta"):
            return DiffusionArchitecture(unet=UNet2DConditionModel.from_config(unet_config),
                                         vae=AutoencoderKL.from_config(vae_config),
                                         text_encoder=AutoModel.from_config(text_config))

    def plan(self, model_cfg: DictConfig) -> ModelPlan:
        pretrained = resolve_pretrained(model_cfg.pretrained)
        source = architecture_config(pretrained, subfolder="unet")[1]
        parts = self.meta_model(pretrained)
        lora_unet(parts.unet, [parts.text_encoder, parts.vae, parts.unet], instantiate(model_cfg.lora), pretrained)
        trainable = sum(p.numel() for p in parts.unet.parameters() if p.requires_grad)
        # what the LightningModule holds, as its own count (and the run's log) reports it
        total = sum(p.numel() for m in parts for p in m.parameters())
        return ModelPlan(self, pretrained, source, trainable, total, adapted_module_kinds(lora_layer_names(parts.unet)),
                         parts.unet)

    def memory_probe(self, plan: ModelPlan, batch: int, data: dict[str, Any], gradient_checkpointing: bool):
        """The UNet's denoising loss; the VAE and text encoder run without gradients, as in training."""
        unet, config = plan.network, plan.network.config
        if gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        resolution = int(data["resolution"])
        side = resolution // VAE_DOWNSAMPLING
        latents = meta_tensor(batch, config.in_channels, side, side, dtype=torch.float32)
        text = meta_tensor(batch, CAPTION_TOKENS, config.cross_attention_dim, dtype=torch.float32)
        loss = lambda: torch.nn.functional.mse_loss(unet(latents, meta_tensor(batch), text).sample, latents)  # noqa: E731
        return loss, {"batch": batch, "resolution": resolution}

    def base_weight_bytes(self, plan: ModelPlan, quantization: str | None) -> int:
        return 4 * (plan.total - plan.trainable)  # the UNet, VAE and text encoder stay float32

    def plan_data(self, cfg: DictConfig, pretrained: str) -> dict[str, Any]:
        return plan_image_data(cfg, self, pretrained)

    def validation_cost(self, plan: ModelPlan, cfg: DictConfig, data: dict[str, Any], schedule: dict[str, Any],
                        memory: dict[str, Any]) -> dict[str, Any]:
        return image_validation_cost(cfg, data, schedule, memory)

    def train_tokenizer(self, texts) -> tuple[Any, str]:
        return (train_clip_tokenizer(iter(texts), num_merges=STANDIN_MERGES),
                f"a CLIP BPE tokenizer ({STANDIN_MERGES} merges) trained on the captions")

    def generation_arguments(self) -> tuple[set[str], str]:
        return set(inspect.signature(StableDiffusionPipeline.__call__).parameters), "StableDiffusionPipeline.__call__"

    def preflight_warnings(self, model_cfg: DictConfig) -> list[str]:
        """When FID's InceptionV3 or the CLIP model cannot be had on this machine."""
        warnings = []
        metrics = model_cfg.get("metrics") or {}
        include = set(metrics.get("include") or METRICS)
        extractor = metrics.get("feature_extractor") or {}
        if {"fid", "kid"} & include and extractor.get("kind", "inception") == "inception":
            status = inception_status(extractor.get("weights_path"))
            if status:
                warnings.append(f"on this machine: {status}")
        clip = metrics.get("clip_model")
        if "clip" in include and isinstance(clip, str) and not (available_offline(clip, "config.json")
                                                                or not hub_offline()):
            warnings.append(f"on this machine: CLIP score needs {clip}, which is neither a local directory nor in the "
                            "Hugging Face cache and the hub is not reachable — download it where the run will happen, "
                            "or set model.metrics.clip_model to a local directory (or null to skip CLIP score)")
        return warnings


DIFFUSION = DiffusionFamily()
