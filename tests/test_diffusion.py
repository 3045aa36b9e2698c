"""Stable Diffusion family on the bundled shoes: training, FID/KID/CLIP validation, checkpoints, export."""

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from src.errors import UserError
from src.metrics.image import ImageGenerationMetrics
from src.building import build_model_and_data
from tests.conftest import compose_config, read_json, run_cli

QUICK_SHOES = ["experiment=quickstart_shoes", "logger=csv", "trainer.enable_progress_bar=false", "data.batch_size=4"]


@pytest.fixture(scope="module")
def shoes_run(cache_dir, tmp_path_factory) -> Path:
    """A short quickstart_shoes run: 30 steps, validation (images, FID, KID, CLIP) every 10."""
    run_dir = tmp_path_factory.mktemp("shoes")
    run_cli("train.py", *QUICK_SHOES, "trainer.max_steps=30", "val_every_n_steps=10",
            f"hydra.run.dir={run_dir}")
    return run_dir


def test_modalities_must_match(cache_dir, tmp_path):
    cfg = compose_config("train", ["experiment=quickstart", "data=shoes"], tmp_path)
    with pytest.raises(UserError, match=r"model=tiny_t5 \(a seq2seq text model\) cannot train on data=shoes"):
        build_model_and_data(cfg)
    cfg = compose_config("train", ["model=tiny_sd", "data=amazon_sample", "model.resolution=64"], tmp_path)
    with pytest.raises(UserError, match=r"model=tiny_sd \(a diffusion model\) cannot train on data=amazon_sample"):
        build_model_and_data(cfg)
    cfg = compose_config("train", ["experiment=quickstart", "+data.resolution=64"], tmp_path)
    with pytest.raises(UserError, match="unexpected keyword argument 'resolution' — remove that key"):
        build_model_and_data(cfg)


def test_the_unet_trains_in_training_mode_and_the_frozen_parts_stay_in_eval(cache_dir, tmp_path):
    """Lightning keeps submodules' own modes: a UNet left in from_pretrained's eval mode ignores LoRA dropout."""
    cfg = compose_config("train", [*QUICK_SHOES, "+model.lora.lora_dropout=0.1"], tmp_path)
    module, _ = build_model_and_data(cfg)
    dropouts = [m for n, m in module.unet.named_modules() if n.endswith("lora_dropout.default")]
    assert dropouts and all(m.training for m in dropouts) and module.unet.training
    assert not module.vae.training and not module.text_encoder.training


def test_training_step_follows_the_denoising_objective(cache_dir, tmp_path):
    cfg = compose_config("train", QUICK_SHOES, tmp_path)
    module, datamodule = build_model_and_data(cfg)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    trainable = [p for p in module.parameters() if p.requires_grad]
    assert trainable and all("lora" in n for n, p in module.named_parameters() if p.requires_grad)
    optimizer = torch.optim.AdamW(trainable, lr=3e-3)
    module.log_train_loss = lambda loss: None  # outside a Trainer
    torch.manual_seed(0)
    losses = []
    for _ in range(20):  # the same batch: the LoRA must be able to fit it
        loss = module.training_step(batch, 0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    assert module.vae.encoder.conv_in.weight.grad is None  # VAE and text encoder stay frozen


def test_quickstart_logs_image_metrics_and_picks_best_by_fid(shoes_run):
    report = read_json(shoes_run / "metrics.json")
    assert report["best_checkpoint"]["monitor"] == "val/fid"
    rows = [r for r in csv.DictReader(open(shoes_run / "csv" / "metrics.csv")) if r.get("val/fid")]
    assert len(rows) == 3
    for row in rows:
        assert float(row["val/fid"]) > 0 and float(row["val/kid"]) > -1
        assert 0 <= float(row["val/clip_min"]) <= float(row["val/clip_mean"]) <= float(row["val/clip_max"]) <= 100
    assert report["best_checkpoint"]["score"] == pytest.approx(min(float(r["val/fid"]) for r in rows), rel=1e-5)
    assert {"test/fid", "test/kid", "test/clip_mean"} <= set(report["final_metrics"])
    ckpt = torch.load(report["best_checkpoint"]["path"], weights_only=False)
    assert ckpt["state_dict"] and all("lora" in k for k in ckpt["state_dict"])  # no base weights


def test_real_image_features_are_computed_once(cache_dir, tmp_path, monkeypatch):
    calls = []
    original = ImageGenerationMetrics.set_real_images

    def counting(self, images, *args, **kwargs):
        calls.append(len(images))
        return original(self, images, *args, **kwargs)

    monkeypatch.setattr(ImageGenerationMetrics, "set_real_images", counting)
    from src.training import train

    cfg = compose_config("train", [*QUICK_SHOES, "trainer.max_steps=10", "val_every_n_steps=5",
                                   "test=true"], tmp_path)
    train(cfg)  # 2 validations and a test
    assert len(calls) == 1


def test_exported_lora_loads_with_plain_diffusers_and_changes_the_output(shoes_run):
    base_dir = read_json(shoes_run / "metrics.json")["model"]["base"]
    adapter = shoes_run / "adapter"
    assert (adapter / "pytorch_lora_weights.safetensors").is_file()

    def generate(pipe):
        pipe.set_progress_bar_config(disable=True)
        return pipe("a photo of a red casual sneaker", num_inference_steps=4, guidance_scale=3.0, height=64,
                    width=64, generator=torch.Generator().manual_seed(0), output_type="np").images[0]

    base = generate(StableDiffusionPipeline.from_pretrained(base_dir, safety_checker=None))
    pipe = StableDiffusionPipeline.from_pretrained(base_dir, safety_checker=None)
    pipe.load_lora_weights(adapter)
    tuned = generate(pipe)
    assert np.abs(tuned - base).mean() > 1e-3


def test_the_kohya_file_loads_through_diffusers_as_the_diffusers_file_does(shoes_run):
    # kohya's layout (A1111, ComfyUI): diffusers reads it with its own converter for that format
    from safetensors.torch import load_file

    base_dir = read_json(shoes_run / "metrics.json")["model"]["base"]
    adapter = shoes_run / "adapter"
    kohya = load_file(adapter / "pytorch_lora_weights_kohya.safetensors")
    assert kohya and all(k.startswith("lora_unet_") for k in kohya)
    assert {float(v) for k, v in kohya.items() if k.endswith(".alpha")} == {8.0}  # the run's lora_alpha, not r

    def unet_out(weight_name):
        pipe = StableDiffusionPipeline.from_pretrained(base_dir, safety_checker=None)
        pipe.load_lora_weights(adapter, weight_name=weight_name)
        generator = torch.Generator().manual_seed(0)
        sample = torch.randn(1, pipe.unet.config.in_channels, 8, 8, generator=generator)
        text = torch.randn(1, 4, pipe.unet.config.cross_attention_dim, generator=generator)
        with torch.no_grad():
            return pipe.unet(sample, 10, encoder_hidden_states=text).sample

    diffusers_file, kohya_file = unet_out("pytorch_lora_weights.safetensors"), unet_out(
        "pytorch_lora_weights_kohya.safetensors")
    assert torch.allclose(kohya_file, diffusers_file, atol=1e-5)


def test_exported_lora_evaluates_and_must_match_the_lora_config(shoes_run, tmp_path):
    run_cli("evaluate.py", f"ckpt={shoes_run / 'adapter'}",
            f"hydra.run.dir={tmp_path / 'ok'}")
    assert read_json(tmp_path / "ok" / "metrics.json")["evaluated"]["kind"] == "adapter"
    proc = run_cli("evaluate.py", f"ckpt={shoes_run / 'adapter'}", "model.lora.lora_alpha=4",
                   f"hydra.run.dir={tmp_path / 'bad'}", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: adapter {shoes_run / 'adapter'} has lora_alpha=8 but the model config has 4 "
        "— set model.lora.lora_alpha to match")


def test_resolution_must_fit_the_vae_and_unet(cache_dir, tmp_path):
    cfg = compose_config("train", [*QUICK_SHOES, "model.resolution=36"], tmp_path)
    with pytest.raises(UserError, match="resolution 36 is not a multiple of 8"):
        build_model_and_data(cfg)


def test_resume_continues_the_step_count(shoes_run, tmp_path):
    run_cli("train.py", *QUICK_SHOES, "trainer.max_steps=40", "val_every_n_steps=10", "test=false",
            f"ckpt_path={shoes_run / 'checkpoints' / 'last.ckpt'}", f"hydra.run.dir={tmp_path}")
    assert read_json(tmp_path / "metrics.json")["training"]["global_step"] == 40


def test_evaluate_writes_metrics_images_and_grid(shoes_run, tmp_path):
    run_cli("evaluate.py", f"ckpt={shoes_run}", f"hydra.run.dir={tmp_path / 'tuned'}")
    metrics = read_json(tmp_path / "tuned" / "metrics.json")["metrics"]
    assert {"test/fid", "test/kid", "test/clip_mean", "test/clip_min", "test/clip_max"} <= set(metrics)
    images = sorted((tmp_path / "tuned" / "images").glob("*.png"))
    assert images and (tmp_path / "tuned" / "grid.png").is_file()
    assert len((tmp_path / "tuned" / "predictions.jsonl").read_text().splitlines()) == len(images)
    run_cli("evaluate.py", "ckpt=base", f"config_from={shoes_run}", f"hydra.run.dir={tmp_path / 'base'}")
    base = read_json(tmp_path / "base" / "metrics.json")["metrics"]
    assert base["test/fid"] != metrics["test/fid"]  # the adapter changes what is generated
