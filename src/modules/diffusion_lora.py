"""LoRA fine-tuning of Stable Diffusion's UNet, validated by generating images (FID, KID, CLIP score)."""

import json
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (AutoencoderKL, DDPMScheduler, DPMSolverMultistepScheduler, StableDiffusionPipeline,
                       UNet2DConditionModel)
from diffusers.training_utils import compute_snr
from diffusers.utils import (convert_state_dict_to_diffusers, convert_state_dict_to_kohya,
                             convert_unet_state_dict_to_peft)
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from PIL import Image
from safetensors.torch import save_file
from transformers import CLIPTextModel

from src.errors import UserError
from src.metrics.image import MONITORABLE
from src.modules.attention import set_attention
from src.families import names
from src.modules.base import LoRAModuleBase, comparable
from src.modules.lora import lora_unet
from src.pretrained.loading import load_pretrained, load_tokenizer

log = logging.getLogger(__name__)

LORA_FILE = "pytorch_lora_weights.safetensors"
KOHYA_FILE = "pytorch_lora_weights_kohya.safetensors"  # the name diffusers' own training scripts give it


def kohya_state_dict(unet_weights: dict[str, torch.Tensor], lora: LoraConfig) -> dict[str, torch.Tensor]:
    """The UNet's peft LoRA weights in kohya's layout (``lora_unet_<module>.lora_down/lora_up/alpha``), by diffusers'
    ``convert_state_dict_to_kohya``. That function writes each module's alpha as its rank (a scale of 1); kohya's
    scale is alpha / rank, so the alphas are set to the config's, or a file with lora_alpha != r would load at
    the wrong strength."""
    if lora.alpha_pattern or lora.rank_pattern:
        raise UserError("model.lora.rank_pattern/alpha_pattern have no kohya export here — export without them")
    kohya = convert_state_dict_to_kohya({f"unet.{k}": v for k, v in unet_weights.items()})
    return {k: torch.tensor(float(lora.lora_alpha)) if k.endswith(".alpha") else v.contiguous()
            for k, v in kohya.items()}


def image_grid(images: torch.Tensor, cols: int = 4) -> np.ndarray:
    """uint8 [N, 3, H, W] → one HxWx3 array, ``cols`` images per row (no torchvision here)."""
    n, c, h, w = images.shape
    rows = -(-n // cols)
    grid = torch.zeros(rows * cols, c, h, w, dtype=torch.uint8)
    grid[:n] = images.cpu()
    return grid.view(rows, cols, c, h, w).permute(0, 3, 1, 4, 2).reshape(rows * h, cols * w, c).numpy()


class DiffusionLoRAModule(LoRAModuleBase):
    """VAE and text encoder frozen; LoRA on the UNet attention projections.

    The training step is the denoising objective: encode latents, add noise at random timesteps,
    predict the noise (or the velocity), MSE — optionally Min-SNR weighted.
    """

    family_name = names.DIFFUSION
    monitorable = MONITORABLE

    def __init__(self, pretrained: str, lora: LoraConfig, optimizer, metrics, scheduler=None,
                 generation: dict | None = None, resolution: int = 512, prediction_type: str | None = None,
                 snr_gamma: float | None = None, noise_offset: float = 0.0, monitor: str = "val/fid",
                 mode: str = "min", gradient_checkpointing: bool = False, attention: str = "sdpa",
                 image_grid_columns: int = 4, enable_xformers: bool | None = None):
        super().__init__(pretrained, lora, optimizer, scheduler,
                         {"num_inference_steps": 30, "guidance_scale": 7.5, **(generation or {})}, monitor, mode)
        if metrics is not None:  # serving builds no metrics; model.metrics.include=[clip] has no val/fid to monitor
            metrics.check_monitor(monitor)
        if enable_xformers is not None:  # the earlier switch: runs saved with it still evaluate and serve
            log.warning("model.enable_xformers is deprecated — use model.attention=xformers (or sdpa)")
            attention = "xformers" if enable_xformers else attention
        self.resolution = resolution
        self.snr_gamma, self.noise_offset = snr_gamma, noise_offset
        self.grid_columns = image_grid_columns

        self.tokenizer = load_tokenizer(self.pretrained, subfolder="tokenizer")
        self.text_encoder = load_pretrained(CLIPTextModel, self.pretrained, subfolder="text_encoder")
        self.vae = load_pretrained(AutoencoderKL, self.pretrained, subfolder="vae")
        self.unet = load_pretrained(UNet2DConditionModel, self.pretrained, subfolder="unet")
        self.noise_scheduler = DDPMScheduler.from_pretrained(self.pretrained, subfolder="scheduler")
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1) * 2 ** (len(self.unet.config.block_out_channels) - 1)
        if resolution % factor:
            raise UserError(f"resolution {resolution} is not a multiple of {factor}, which this VAE and UNet need "
                            f"— set model.resolution to a multiple of {factor}")
        self.prediction_type = prediction_type or self.noise_scheduler.config.prediction_type
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise UserError(f"model.prediction_type={self.prediction_type!r}: use epsilon or v_prediction")
        self.noise_scheduler.register_to_config(prediction_type=self.prediction_type)
        if gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        set_attention(self.unet, attention)  # sdpa | xformers | default (src/modules/attention.py)
        lora_unet(self.unet, [self.text_encoder, self.vae, self.unet], lora, self.pretrained)
        # from_pretrained returns eval mode and Lightning keeps submodules' modes: without this the LoRA
        # dropout (and any UNet dropout) would never act in training. The VAE and text encoder stay in eval.
        self.unet.train()
        self.image_metrics = metrics
        self._pipeline: StableDiffusionPipeline | None = None
        self._real_set = False
        self.generated_features = torch.zeros(0)  # of the last evaluation round
        params = self.count_parameters()
        log.info("LoRA on the UNet of %s: %d trainable of %d parameters", self.pretrained, params["trainable"],
                 params["total"])

    # -- training ------------------------------------------------------------------------------------
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids.to(self.device)
        return self.text_encoder(ids, return_dict=False)[0]

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        with torch.no_grad():
            latents = self.vae.encode(batch["pixel_values"]).latent_dist.sample() * self.vae.config.scaling_factor
            text = self.encode_prompts(batch["caption"])
        noise = torch.randn_like(latents)
        if self.noise_offset:
            noise += self.noise_offset * torch.randn(latents.shape[0], latents.shape[1], 1, 1, device=self.device)
        timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (latents.shape[0],),
                                  device=self.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        target = noise if self.prediction_type == "epsilon" else \
            self.noise_scheduler.get_velocity(latents, noise, timesteps)
        prediction = self.unet(noisy, timesteps, text, return_dict=False)[0]
        if self.snr_gamma is None:
            loss = F.mse_loss(prediction.float(), target.float())
        else:  # Min-SNR weighting (Hang et al. 2023), as in diffusers' training examples
            snr = compute_snr(self.noise_scheduler, timesteps)
            weights = torch.clamp(snr, max=self.snr_gamma) / (snr if self.prediction_type == "epsilon" else snr + 1)
            per_sample = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
            loss = (per_sample * weights).mean()
        self.log_train_loss(loss)
        return loss

    # -- evaluation ----------------------------------------------------------------------------------
    @property
    def pipeline(self) -> StableDiffusionPipeline:
        """An inference pipeline over this module's own components (so it sees the LoRA as trained)."""
        if self._pipeline is None:
            self._pipeline = StableDiffusionPipeline(
                vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer, unet=self.unet,
                scheduler=DPMSolverMultistepScheduler.from_config(self.noise_scheduler.config),
                safety_checker=None, feature_extractor=None, requires_safety_checker=False)
            self._pipeline.set_progress_bar_config(disable=True)
        return self._pipeline

    @torch.no_grad()
    def generate_images(self, prompts: list[str], seeds: list[int], generation: dict | None = None) -> torch.Tensor:
        """uint8 [N, 3, R, R]; each prompt's noise comes from its own seed, so runs are comparable.
        ``generation`` overrides ``model.generation`` for this call (serving)."""
        generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
        out = self.pipeline(list(prompts), height=self.resolution, width=self.resolution, generator=generators,
                            output_type="pt", **{**self.generation, **(generation or {})}).images
        return (out.clamp(0, 1) * 255).round().to(torch.uint8)

    def start_eval_round(self, stage: str) -> None:
        super().start_eval_round(stage)
        if not self._real_set:  # the real images' features are computed once and kept
            real = self.trainer.datamodule.real_images()
            # each process adds its own shard: FID/KID states are summed across processes
            shard = real[self.global_rank::self.trainer.world_size]
            self.image_metrics.set_real_images(shard.to(self.device))
            self._real_set = True

    def eval_step(self, stage: str, batch: dict[str, Any]) -> None:
        images = self.generate_images(batch["prompt"], batch["seed"])
        self.image_metrics.update(images, list(batch["prompt"]))
        self.predictions += [{"prompt": p, "seed": int(s), "image": img}
                             for p, s, img in zip(batch["prompt"], batch["seed"], images.cpu())]

    def finish_eval_round(self, stage: str) -> None:
        scores = {k: v for k, v in self.image_metrics.compute().items()
                  if k in ("fid", "kid", "clip_mean", "clip_min", "clip_max")}
        self._keep_per_image_scores()
        self.image_metrics.reset()
        self.log_scores(stage, scores)
        if self.predictions and not self.trainer.sanity_checking:
            self._log_grid(f"{stage}/samples")

    def _keep_per_image_scores(self) -> None:
        """What bootstrap intervals resample: each image's CLIP score (in its prediction row) and the
        generated images' features (FID), kept until the next evaluation round."""
        self.generated_features = self.image_metrics.generated_features.cpu()
        clip = self.image_metrics.clip_scores.tolist()
        if self.trainer.world_size == 1 and len(clip) == len(self.predictions):  # gathered order = row order
            for row, score in zip(self.predictions, clip):
                row["clip"] = score

    def _log_grid(self, key: str) -> None:
        grid = image_grid(torch.stack([p["image"] for p in self.predictions]), self.grid_columns)
        for logger in self.loggers:
            if hasattr(logger, "log_image"):  # W&B, MLflow-style loggers
                logger.log_image(key=key, images=[grid], step=self.global_step)
            elif hasattr(getattr(logger, "experiment", None), "add_image"):  # TensorBoard
                logger.experiment.add_image(key, grid, self.global_step, dataformats="HWC")

    def write_predictions(self, directory: str | Path) -> None:
        """``images/<n>.png``, ``grid.png`` and ``predictions.jsonl`` (prompt, seed, file)."""
        directory = Path(directory)
        (directory / "images").mkdir(parents=True, exist_ok=True)
        rows = []
        for i, p in enumerate(self.predictions):
            name = f"images/{i:04d}_seed{p['seed']}.png"
            Image.fromarray(p["image"].permute(1, 2, 0).numpy()).save(directory / name)
            rows.append({"prompt": p["prompt"], "seed": p["seed"], "image": name,
                         **({"clip": p["clip"]} if "clip" in p else {})})
        if self.predictions:
            Image.fromarray(image_grid(torch.stack([p["image"] for p in self.predictions]),
                                       self.grid_columns)).save(directory / "grid.png")
        with open(directory / "predictions.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)

    # -- adapters ------------------------------------------------------------------------------------
    @contextmanager
    def adapters_disabled(self):
        self.unet.disable_adapters()
        try:
            yield
        finally:
            self.unet.enable_adapters()

    def export_adapter(self, directory: str) -> None:
        """diffusers' LoRA file, for ``StableDiffusionPipeline.from_pretrained(base).load_lora_weights(dir)``;
        the LoRA config rides along as metadata so alpha (the scaling) survives the round trip. Beside it, the same
        weights in kohya's key layout (``KOHYA_FILE``), which AUTOMATIC1111, ComfyUI and kohya's scripts load."""
        weights = get_peft_model_state_dict(self.unet)
        StableDiffusionPipeline.save_lora_weights(
            directory, unet_lora_layers=convert_state_dict_to_diffusers(weights),
            unet_lora_adapter_metadata=self.lora_config.to_dict(), safe_serialization=True)
        save_file(kohya_state_dict(weights, self.lora_config), str(Path(directory) / KOHYA_FILE))

    def load_adapter(self, directory: str) -> None:
        if not (Path(directory) / LORA_FILE).is_file():
            raise UserError(f"{directory} holds no {LORA_FILE} — pass an adapter directory exported by train.py")
        state, _, metadata = StableDiffusionPipeline.lora_state_dict(directory, return_lora_metadata=True)
        for name in ("r", "lora_alpha", "target_modules"):  # a different alpha would load with the wrong scale
            theirs, ours = comparable((metadata or {}).get(f"unet.{name}")), comparable(getattr(self.lora_config, name))
            if theirs is not None and theirs != ours:
                raise UserError(f"adapter {directory} has {name}={theirs} but the model config has {ours} "
                                f"— set model.lora.{name} to match")
        state = {k.removeprefix("unet."): v for k, v in state.items() if k.startswith("unet.")}
        result = set_peft_model_state_dict(self.unet, convert_unet_state_dict_to_peft(state), adapter_name="default")
        unexpected = [k for k in (getattr(result, "unexpected_keys", None) or []) if "lora" in k]
        if unexpected:
            raise UserError(f"adapter {directory} does not fit this UNet's LoRA (e.g. {unexpected[0]}) "
                            "— set model.lora to the settings it was trained with")

    def extra_report(self) -> dict[str, Any]:
        return {"resolution": self.resolution, "prediction_type": self.prediction_type, "snr_gamma": self.snr_gamma}
