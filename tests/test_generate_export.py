"""Batch generation (generate.py), the playground (playground.py) and standalone export (export.py)."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import ROOT, compose_config, run_cli
from tests.test_serving import plain_peft_texts, prompt_template

TITLES = ["Stainless Steel Insulated Water Bottle", "", "Kids Waterproof Rain Boots", "Leather Bifold Wallet"]


def rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def load_in_process(ckpt, tmp_path):
    from src.serving.loading import load_from_command_line

    return load_from_command_line(compose_config("generate", [f"ckpt={ckpt}", "prompts=unused"], tmp_path))[1]


# -- generate.py -------------------------------------------------------------------------------------

def test_prompts_file_must_exist_and_hold_prompts(tmp_path):
    missing = run_cli("generate.py", "ckpt=base", f"prompts={tmp_path / 'nope.txt'}", f"hydra.run.dir={tmp_path / 'a'}",
                      check=False)
    (tmp_path / "blank.txt").write_text("\n  \n")
    blank = run_cli("generate.py", "ckpt=base", f"prompts={tmp_path / 'blank.txt'}", f"hydra.run.dir={tmp_path / 'b'}",
                    check=False)
    for proc, words in ((missing, "is not a file"), (blank, "has no prompts")):
        assert proc.returncode == 2
        assert proc.stderr.strip().splitlines()[-1].startswith("error: prompts=") and words in proc.stderr
        assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_batch_generation_writes_texts_and_an_index(trained_run, tmp_path):
    prompts = tmp_path / "titles.txt"
    prompts.write_text("\n".join(TITLES) + "\n")
    out = tmp_path / "out"
    proc = run_cli("generate.py", f"ckpt={trained_run}", f"prompts={prompts}", f"output_dir={out}",
                   f"hydra.run.dir={tmp_path / 'run'}")
    assert "generating: 100%" in proc.stderr  # the progress bar
    index = rows(out / "predictions.jsonl")
    assert [r["line"] for r in index] == [1, 3, 4] and [r["input"] for r in index] == [t for t in TITLES if t]
    template = prompt_template(trained_run)
    assert [r["prompt"] for r in index] == [template.format(title=r["input"]) for r in index]
    for r in index:
        assert (out / r["file"]).read_text().strip() == r["text"]
    # the run's best checkpoint is what its adapter holds: plain peft generates the same
    expected = plain_peft_texts(trained_run / "adapter", [r["prompt"] for r in index], 48)
    assert [r["text"] for r in index] == expected


@pytest.mark.slow
def test_batch_generation_writes_reproducible_images(trained_shoes_run, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of a red casual sneaker\na photo of a brown loafer\n")
    out = tmp_path / "out"
    run_cli("generate.py", f"ckpt={trained_shoes_run}", f"prompts={prompts}", f"output_dir={out}", "num_images=2",
            "+generation.num_inference_steps=4", "batch_size=3", f"hydra.run.dir={tmp_path / 'run'}")
    index = rows(out / "predictions.jsonl")
    assert [(r["line"], r["seed"]) for r in index] == [(1, 42), (1, 43), (2, 44), (2, 45)]
    images = [np.asarray(Image.open(out / r["file"])) for r in index]
    assert all(img.shape == (64, 64, 3) for img in images) and not np.array_equal(images[0], images[1])
    loaded = load_in_process(trained_shoes_run, tmp_path)
    again = loaded.module.generate_images([index[2]["prompt"]], [index[2]["seed"]], {"num_inference_steps": 4})
    # one image regenerates alone from its seed (up to float rounding: batched matmuls sum in another order)
    assert np.abs(again[0].permute(1, 2, 0).numpy().astype(int) - images[2]).max() <= 2


# -- playground.py -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_playground_changes_settings_on_the_fly(trained_run, tmp_path):
    title = TITLES[0]
    script = "\n".join([title, ":set max_new_tokens=3", title, ":set temperature=abc", ":set colour=red", ":show",
                        ":quit", "never read"]) + "\n"
    proc = subprocess.run([sys.executable, str(ROOT / "playground.py"), f"ckpt={trained_run / 'adapter'}",
                           f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT, input=script, text=True,
                          capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    replies = [line.removeprefix("> ") for line in proc.stdout.splitlines() if line.startswith("> ")]
    full = plain_peft_texts(trained_run / "adapter", [prompt_template(trained_run).format(title=title)], 48)[0]
    short = plain_peft_texts(trained_run / "adapter", [prompt_template(trained_run).format(title=title)], 3)[0]
    assert replies[0] == full and replies[2] == short and short != full
    assert "max_new_tokens=3" in replies[1]
    assert replies[3].startswith("not changed: temperature")
    assert replies[4].startswith("unknown setting colour")
    assert "max_new_tokens=3" in replies[5] and "temperature" not in replies[5]
    assert proc.stdout.rstrip().endswith("bye") and "never read" not in proc.stdout


# -- export.py ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_exported_text_model_loads_without_peft_and_matches_the_adapter(trained_run, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    out = tmp_path / "model"
    run_cli("export.py", f"ckpt={trained_run / 'adapter'}", f"output_dir={out}", f"hydra.run.dir={tmp_path / 'run'}")
    assert not (out / "adapter_config.json").exists()
    merged = AutoModelForSeq2SeqLM.from_pretrained(out).eval()
    assert not isinstance(merged, PeftModel) and not [k for k in merged.state_dict() if "lora" in k]
    tokenizer = AutoTokenizer.from_pretrained(out)
    template = json.loads((out / "lorafit_export.json").read_text())["prompt_template"]
    assert template == prompt_template(trained_run)
    sources = [template.format(title=t) for t in TITLES if t]
    inputs = tokenizer(sources, return_tensors="pt", padding=True)
    texts = tokenizer.batch_decode(merged.generate(**inputs), skip_special_tokens=True)  # its saved generation_config
    assert [t.strip() for t in texts] == plain_peft_texts(trained_run / "adapter", sources, 48)

    base_dir = json.loads((trained_run / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]
    adapter = PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(base_dir), trained_run / "adapter").eval()
    start = torch.zeros(len(sources), 1, dtype=torch.long)
    with torch.no_grad():
        ours = merged(**inputs, decoder_input_ids=start).logits
        theirs = adapter(**inputs, decoder_input_ids=start).logits
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)

    again = run_cli("export.py", f"ckpt={trained_run}", f"output_dir={out}", f"hydra.run.dir={tmp_path / 'run2'}",
                    check=False)
    assert again.returncode == 2 and "is not empty" in again.stderr


@pytest.mark.slow
def test_exported_pipeline_loads_without_peft_and_matches_the_adapter(trained_shoes_run, tmp_path):
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    out = tmp_path / "pipeline"
    run_cli("export.py", f"ckpt={trained_shoes_run}", f"output_dir={out}", f"hydra.run.dir={tmp_path / 'run'}")
    pipe = StableDiffusionPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.scheduler, DPMSolverMultistepScheduler)
    assert not getattr(pipe.unet, "peft_config", None) and not [k for k in pipe.unet.state_dict() if "lora" in k]

    prompts, seeds, steps = ["a photo of a red casual sneaker", "a photo of a brown loafer"], [3, 4], 4
    exported = pipe(prompts, height=64, width=64, num_inference_steps=steps, guidance_scale=3.0, output_type="pt",
                    generator=[torch.Generator().manual_seed(s) for s in seeds]).images
    exported = (exported.clamp(0, 1) * 255).round()
    loaded = load_in_process(trained_shoes_run, tmp_path)
    settings = {"num_inference_steps": steps, "guidance_scale": 3.0}
    tuned = loaded.module.generate_images(prompts, seeds, settings).float()
    with loaded.module.adapters_disabled():
        base = loaded.module.generate_images(prompts, seeds, settings).float()
    assert (exported - tuned).abs().max() <= 2  # merged weights: the same images up to rounding
    assert (exported - tuned).abs().mean() < (base - tuned).abs().mean()  # and not the base model's
