"""Row i: diffusion LoRA training, the framework (train.py's diffusion module, ``Trainer.fit`` as train.py
builds it with the default callbacks and logger, no validation, as row a) against a plain PyTorch loop doing
per step exactly what diffusers' ``examples/text_to_image/train_text_to_image_lora.py`` does (read at
huggingface/diffusers 58eb52c: the fetch tokenizes the captions to ``model_max_length``; the step encodes
the images with the VAE times its scaling factor, draws noise and timesteps, ``add_noise``, runs the text
encoder and the UNet, MSE against the noise or the velocity, ``avg_loss.item()`` for its log, backward,
clipping at 1.0, optimizer and scheduler steps, ``zero_grad``), on the tiny SD at 64x64, batch 8.

Step time: the two alternate step by step in one process on the same images (row a's ``Interleaved``
scheme: the loop's fetch reads the same files again). Peak RSS: each side trains a few steps in its own
fresh interpreter (``python -m bench.diffusion_training <spec>``); the plain loop imports no Lightning or
Hydra and reads images with PIL, as the script does with ``datasets`` and torchvision.
"""

import json
import sys
import time
from pathlib import Path

from bench.common import THREADS, WORK, compose, row, run_side

BATCH_SIZE = 8


def diffusion_config(run: str, steps: int, shape: str = "tiny"):
    return compose("train", [*SHAPES[shape]["overrides"](), "data=shoes", "trainer=cpu",
                             "trainer.enable_progress_bar=false", "+trainer.limit_val_batches=0",
                             f"trainer.max_steps={steps}", "trainer.max_epochs=-1",
                             f"data.batch_size={SHAPES[shape]['batch_size']}"], WORK / "runs" / run)


def sd15_dir() -> str:
    """Stable Diffusion 1.5's architecture (UNet 860M, VAE, CLIP ViT-L text encoder) at random init, built once."""
    from bench.common import ROOT
    from src.pretrained.random_init import random_sd

    shoes = ROOT / "data/samples/shoes"
    return random_sd(str(WORK / "models"), corpus_files=[str(shoes / "train/metadata.jsonl"),
                                                         str(shoes / "prompts.txt")])


# tiny: the tiny SD at 64x64, batch 8. sd15: the reference recipe's model and batch (1) at 512x512; its validation
# metrics as the real-architecture dry run builds them (InceptionV3 and CLIP ViT-L cannot be fetched here)
SHAPES = {
    "tiny": {"batch_size": BATCH_SIZE, "overrides": lambda: ["model=tiny_sd"]},
    "sd15": {"batch_size": 1, "overrides": lambda: [
        "model=sd15", f"model.pretrained={sd15_dir()}", "model.resolution=512",
        "model.metrics.feature_extractor.kind=tiny", "+model.metrics.feature_extractor.num_features=64",
        "model.metrics.clip_model=null"]},
}


def read_image(path: str, resolution: int, flip: bool):
    """The script's train_transforms (Resize, CenterCrop, RandomHorizontalFlip, ToTensor, Normalize) with PIL."""
    import numpy as np
    import torch
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB")
    w, h = img.size
    scale = resolution / min(w, h)
    img = img.resize((max(resolution, round(w * scale)), max(resolution, round(h * scale))), Image.BILINEAR)
    left, top = (img.size[0] - resolution) // 2, (img.size[1] - resolution) // 2
    img = img.crop((left, top, left + resolution, top + resolution))
    if flip:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return torch.from_numpy(np.array(img, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)


class ScriptLoop:
    """train_text_to_image_lora.py's models, optimizer and per-step work, without accelerate (one CPU process,
    fp32: its ``accelerator.backward`` and ``clip_grad_norm_`` are then ``loss.backward`` and torch's)."""

    def __init__(self, pretrained: str, lora: dict, lr: float, weight_decay: float, resolution: int):
        import torch
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from diffusers.optimization import get_scheduler
        from peft import LoraConfig
        from transformers import CLIPTextModel, CLIPTokenizer

        self.noise_scheduler = DDPMScheduler.from_pretrained(pretrained, subfolder="scheduler")
        self.tokenizer = CLIPTokenizer.from_pretrained(pretrained, subfolder="tokenizer")
        self.text_encoder = CLIPTextModel.from_pretrained(pretrained, subfolder="text_encoder")
        self.vae = AutoencoderKL.from_pretrained(pretrained, subfolder="vae")
        self.unet = UNet2DConditionModel.from_pretrained(pretrained, subfolder="unet")
        for model in (self.unet, self.vae, self.text_encoder):
            model.requires_grad_(False)
        self.unet.add_adapter(LoraConfig(**lora))
        self.lora_layers = [p for p in self.unet.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.lora_layers, lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay,
                                           eps=1e-8)
        self.lr_scheduler = get_scheduler("constant", optimizer=self.optimizer, num_warmup_steps=0)
        self.unet.train()
        self.resolution, self.train_loss = resolution, 0.0

    def fetch(self, items: list[tuple[str, str, bool]]) -> dict:
        """The script's preprocess_train + collate_fn on (path, caption, flip) items."""
        import torch

        ids = self.tokenizer([c for _, c, _ in items], max_length=self.tokenizer.model_max_length,
                             padding="max_length", truncation=True, return_tensors="pt").input_ids
        pixels = torch.stack([read_image(p, self.resolution, f) for p, _, f in items])
        return {"pixel_values": pixels.contiguous().float(), "input_ids": ids}

    def step(self, batch: dict) -> None:
        import torch
        import torch.nn.functional as F

        latents = self.vae.encode(batch["pixel_values"]).latent_dist.sample()
        latents = latents * self.vae.config.scaling_factor
        noise = torch.randn_like(latents)
        bsz = latents.shape[0]
        timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (bsz,), device=latents.device)
        timesteps = timesteps.long()
        noisy_latents = self.noise_scheduler.add_noise(latents, noise, timesteps)
        encoder_hidden_states = self.text_encoder(batch["input_ids"], return_dict=False)[0]
        if self.noise_scheduler.config.prediction_type == "epsilon":
            target = noise
        else:
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        model_pred = self.unet(noisy_latents, timesteps, encoder_hidden_states, return_dict=False)[0]
        loss = F.mse_loss(model_pred.float(), target.float(), reduction="mean")
        avg_loss = loss.repeat(bsz).mean()  # the script's accelerator.gather(...).mean() on one process
        self.train_loss += avg_loss.item()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.lora_layers, 1.0)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad()


def script_settings(cfg) -> dict:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    lora = {k: v for k, v in OmegaConf.to_container(cfg.model.lora, resolve=True).items() if not k.startswith("_")}
    pretrained = cfg.model.pretrained
    return {"pretrained": str(pretrained if isinstance(pretrained, str) else instantiate(pretrained)), "lora": lora,
            "lr": cfg.model.optimizer.lr, "weight_decay": cfg.model.optimizer.weight_decay,
            "resolution": cfg.model.resolution}


def interleaved_callback(loop: ScriptLoop, warmup: int):
    import lightning as L
    import torch

    class Interleaved(L.Callback):
        """Row a's scheme: the loop's step right after each framework step, on the images of that batch (the
        sampler's (index, seed) items of this epoch, read again from their files)."""

        def __init__(self):
            self.framework, self.script, self.same_images = [], [], []
            self._start, self._script_seconds = None, 0.0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            now = time.perf_counter()
            if self._start is not None and trainer.global_step > warmup:
                self.framework.append(now - self._start - self._script_seconds)
            self._start = now

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            start = time.perf_counter()
            loader = trainer.train_dataloader
            share = loader.sampler.share(trainer.current_epoch)[batch_idx * BATCH_SIZE:(batch_idx + 1) * BATCH_SIZE]
            data = loader.dataset
            items = [(str(data.items[i][0]), data.items[i][1], False) for i, _ in share]
            fetched = loop.fetch(items)
            loop.step(fetched)
            self._script_seconds = time.perf_counter() - start
            if trainer.global_step > warmup:
                self.script.append(self._script_seconds)
            for mine, theirs in zip(fetched["pixel_values"], batch["pixel_values"]):  # theirs may be mirrored
                self.same_images.append(bool(torch.equal(mine, theirs) or torch.equal(mine, theirs.flip(-1))))

    return Interleaved()


def framework_rss_side(spec: dict) -> dict:
    import lightning as L
    from hydra.utils import instantiate

    from src.building import build_model_and_data
    from src.instantiation import instantiate_group

    cfg = diffusion_config(f"i_framework_rss_{spec['shape']}", spec["steps"], spec["shape"])
    module, datamodule = build_model_and_data(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    trainer = instantiate(cfg.trainer, callbacks=instantiate_group(cfg.get("callbacks")),
                          logger=instantiate_group(cfg.get("logger")) or False)
    trainer.fit(module, datamodule=datamodule)
    return {"steps": trainer.global_step}


def script_rss_side(spec: dict) -> dict:
    """The plain loop alone: its own listing of the images (metadata.jsonl), shuffled, flipped at p=0.5."""
    import random

    settings = spec["settings"]
    loop = ScriptLoop(**settings)
    folder = Path(spec["data_dir"])
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines() if line.strip()]
    items = [(str(folder / r["file_name"]), r["text"]) for r in rows]
    rng = random.Random(0)
    for _ in range(spec["steps"]):
        batch = rng.sample(items, SHAPES[spec["shape"]]["batch_size"])
        loop.step(loop.fetch([(p, c, rng.random() < 0.5) for p, c in batch]))
    return {"steps": spec["steps"]}


def side_main(spec: dict) -> None:
    import torch

    from bench.common import quiet
    from bench.hf_trainer import peak_rss_mb

    quiet()
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    start = time.perf_counter()
    figures = (framework_rss_side if spec["side"] == "framework" else script_rss_side)(spec)
    figures["seconds"] = round(time.perf_counter() - start, 1)
    figures.update(peak_rss_mb=peak_rss_mb(), threads=torch.get_num_threads())
    print(json.dumps(figures))




def bench_diffusion_training(quick: bool) -> list[dict]:
    import lightning as L
    import torch
    from hydra.utils import instantiate

    from src.building import build_model_and_data
    from src.instantiation import instantiate_group

    warmup, steps, rss_steps = (2, 6, 3) if quick else (3, 30, 6)
    sd15_steps = 2 if quick else 3  # ~8-12 s a step at 512 px on 2 cores
    total = warmup + steps + 1  # the last batch only closes the previous framework step's interval
    cfg = diffusion_config("i_diffusion", total)
    settings = script_settings(cfg)
    module, datamodule = build_model_and_data(cfg)
    loop = ScriptLoop(**settings)
    probe = interleaved_callback(loop, warmup)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    trainer = instantiate(cfg.trainer, callbacks=[*instantiate_group(cfg.get("callbacks")), probe],
                          logger=instantiate_group(cfg.get("logger")) or False)
    trainer.fit(module, datamodule=datamodule)
    pairs = list(zip(probe.framework, probe.script))
    per_step = sorted(f / s for f, s in pairs)
    overhead = per_step[len(per_step) // 2] - 1  # median of the paired steps, as row a
    framework, script = (sum(f for f, _ in pairs) / len(pairs), sum(s for _, s in pairs) / len(pairs))
    what = "diffusion LoRA training (tiny SD, 64x64, batch 8), framework vs train_text_to_image_lora.py's step"
    return [row("i", what + ", s/step", round(framework, 4), round(script, 4), "s/step", round(overhead, 4),
                "overhead <= 3%", overhead <= 0.03, overhead_percent_median_step=round(100 * overhead, 1),
                overhead_percent_total=round(100 * (framework / script - 1), 1), paired_steps=len(pairs),
                warmup_steps=warmup, batch_size=BATCH_SIZE, same_images=all(probe.same_images),
                step_seconds={"framework": [round(f, 3) for f, _ in pairs], "script": [round(s, 3) for _, s in pairs]},
                lora={k: settings["lora"][k] for k in ("r", "lora_alpha", "target_modules")},
                framework_callbacks=[type(c).__name__ for c in trainer.callbacks if c is not probe],
                threads=torch.get_num_threads()),
            memory_row("tiny", cfg, rss_steps),
            memory_row("sd15", diffusion_config("i_sd15", sd15_steps, "sd15"), sd15_steps)]


def memory_row(shape: str, cfg, steps: int) -> dict:
    """Peak RSS of each side training ``steps`` steps in its own process."""
    spec = {"shape": shape, "steps": steps, "settings": script_settings(cfg), "data_dir": str(Path(cfg.data.data_dir))}
    rss = {side: run_side("bench.diffusion_training", "i", {**spec, "side": side}) for side in ("framework", "script")}
    memory = rss["framework"]["peak_rss_mb"] / rss["script"]["peak_rss_mb"]
    what = {"tiny": "tiny SD, 64x64, batch 8", "sd15": "SD 1.5 shape, 512x512, batch 1"}[shape]
    extra = "" if shape == "tiny" else "; the framework's FID/KID extractor small, no CLIP model, as the dry run"
    return row(f"i.mem.{shape}", f"diffusion LoRA training ({what}), framework vs train_text_to_image_lora.py's "
               "step, peak RSS (each in its own process)", rss["framework"]["peak_rss_mb"],
               rss["script"]["peak_rss_mb"], "MB", round(memory, 3), "overhead <= 3%", memory <= 1.03,
               steps_per_process=steps, framework_builds="the validation metrics too" + extra,
               seconds={side: r["seconds"] for side, r in rss.items()})


if __name__ == "__main__":
    side_main(json.loads(sys.argv[1]))
