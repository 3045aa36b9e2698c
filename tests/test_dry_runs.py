"""Dry runs of the four reference experiments at their real architectures (random weights) on the CPU.

Each test runs ``conf/experiment/<name>.yaml`` through the real CLI with only size knobs overridden (sequence
lengths, sample counts, epochs, resolution, inference steps, a scaled-down validation interval) and keeps the recipe's
gradient accumulation and LoRA settings, so that the accumulation arithmetic, the adapter-only checkpoints, the
export into the ecosystems' own formats, evaluation, comparison and serving are seen at the real model sizes.
The sizes give each run at least two checkpoints and an epoch whose batch count is not a multiple of the
accumulation; where the recipe validates every N optimizer steps, a checkpoint step falls inside an epoch after
such an epoch, where counting batches would have drifted off the step. The CLI runs are forks of one process that
imported the libraries once (``run_cli``), each otherwise ``python <script> <overrides>``.

Run them one at a time (each needs up to ~5 GB of memory): ``python -m pytest tests/test_dry_runs.py -k flan -s``
(``-s`` shows each run's time and peak memory). On a machine whose cores other jobs share, ``OMP_NUM_THREADS=1``
avoids thread oversubscription, which made these runs 10-20x slower here.
"""

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from src.families.registry import FAMILIES
from src.serving.registry import ModelRegistry
from tests.conftest import ROOT, preloaded_cli, read_json, run_cli


def meta_model(family: str, pretrained: str):
    return FAMILIES.get(family).meta_model(pretrained)

# the filter: peft calls a deprecated transformers method inside the plain-peft check
pytestmark = [pytest.mark.slow,
              pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")]

SAMPLES = ROOT / "data" / "samples"
AMAZON = [SAMPLES / "amazon" / "trn.json", SAMPLES / "amazon" / "tst.json"]
COMMON = ["trainer=cpu", "logger=csv", "trainer.enable_progress_bar=false"]
TEXT_SIZES = ["data.max_source_length=32", "data.max_target_length=32", "model.generation.max_new_tokens=8",
              "data.limit_val_samples=8", "data.limit_test_samples=8", "data.eval_batch_size=8"]
# float32 weights (see DRY_RUNS); data.max_length: a templated conversation's tokens (longer ones are refused)
CHAT_SIZES = ["model.dtype=null"]
CHECKPOINT_SHARE = 0.03  # an adapter checkpoint's LoRA tensors against the full float32 model


@dataclass
class DryRun:
    experiment: str
    family: str  # seq2seq, causal, diffusion
    hub_id: str  # the real model whose architecture is built
    builder: str  # function of src.pretrained.random_init
    corpus: list[Path]  # the tokenizer's training text
    overrides: list[str] = field(default_factory=list)  # size knobs only
    reduced: dict = field(default_factory=dict)  # the builder's size reductions (layers, embedding rows)


DRY_RUNS = {
    # batch 1 x accumulation 16, 17 samples: epochs of 17 batches step at batches 16 and 17 (2 steps), so 4 steps
    # in 2 epochs (the recipe's 3 add nothing here); step 3 is the 16th batch of epoch 2 (global batch 33, not a
    # multiple of 16), checkpointed with the last step
    "amazon_flan_t5": DryRun(
        "amazon_flan_t5", "seq2seq", "google/flan-t5-base", "random_seq2seq", AMAZON,
        [f"data.train_file={AMAZON[0]}", f"data.test_file={AMAZON[1]}", *TEXT_SIZES,
         "data.limit_train_samples=17", "trainer.max_epochs=2", "val_every_n_steps=3"]),
    # batch 2 x accumulation 2 (the recipe's 4 x 2 halved), 6 samples: 3 batches step at batches 2 and 3, two
    # epochs (validated at each epoch end, as the recipe) give checkpoints at steps 2 and 4; no 4-bit on a CPU
    "tarot_ptt5": DryRun(
        "tarot_ptt5", "seq2seq", "unicamp-dl/ptt5-base-portuguese-vocab", "random_seq2seq",
        [SAMPLES / "tarot" / "readings.jsonl"],
        [*TEXT_SIZES, "model.quantization=null", "data.batch_size=2", "data.limit_train_samples=6",
         "trainer.max_epochs=2", "callbacks.model_checkpoint.save_top_k=-1"]),
    # batch 2 x accumulation 4 (the recipe's 8 x 4 shrunk), 10 samples: 5 batches step at batches 4 and 5, the
    # recipe's 2 epochs make 4 steps; step 3 is the 4th batch of epoch 2 (global batch 9)
    "amazon_dialogpt": DryRun(
        "amazon_dialogpt", "causal", "microsoft/DialoGPT-medium", "random_causal", AMAZON,
        [f"data.train_file={AMAZON[0]}", f"data.test_file={AMAZON[1]}", *TEXT_SIZES, "data.batch_size=2",
         "data.limit_train_samples=10", "val_every_n_steps=3", "callbacks.model_checkpoint.save_top_k=-1"]),
    # the recipe's batch 1 x accumulation 4, 5 images at 64 px: epochs step at batches 4 and 5; 4 steps; step 3 is
    # the 4th batch of epoch 2. InceptionV3 and the CLIP model are not on this machine: a small feature extractor
    "shoes_sd15": DryRun(
        "shoes_sd15", "diffusion", "stable-diffusion-v1-5/stable-diffusion-v1-5", "random_sd",
        [SAMPLES / "shoes" / "train" / "metadata.jsonl", SAMPLES / "shoes" / "prompts.txt"],
        ["model.resolution=64", "data.limit_train_samples=5", "data.limit_val_prompts=2", "data.eval_batch_size=2",
         "model.generation.num_inference_steps=2", "trainer.max_steps=4", "val_every_n_steps=3",
         "model.metrics.feature_extractor.kind=tiny", "+model.metrics.feature_extractor.num_features=64",
         "model.metrics.clip_model=null"]),
    # the instruct recipes at 2 of their layers (each of the published shape) and 1000 embedding rows: their
    # 128k-152k-row LM heads alone took 3 s per micro-batch here, and bfloat16 matmuls 5x longer than float32 on
    # this CPU, so the weights are float32 (model.dtype=null); the full sizes are preflight's, on meta.
    # batch 2 x accumulation 2 (the recipe's 8 x 2 shrunk), 10 samples: 5 batches step at batches 2, 4 and 5;
    # 6 steps in 2 epochs; step 4 is the 3rd step of epoch 2
    "amazon_qwen2_5_0_5b": DryRun(
        "amazon_qwen2_5_0_5b", "chat", "Qwen/Qwen2.5-0.5B-Instruct", "random_chat", AMAZON,
        [f"data.train_file={AMAZON[0]}", f"data.test_file={AMAZON[1]}", *TEXT_SIZES, *CHAT_SIZES,
         "data.max_length=128", "data.batch_size=2", "data.limit_train_samples=10", "trainer.max_epochs=2",
         "val_every_n_steps=4", "callbacks.model_checkpoint.save_top_k=-1"], {"num_hidden_layers": 2, "embedding_rows": 1000}),
    # batch 2 x accumulation 2, 6 samples, one validation per epoch (as the recipe): steps 2 and 4; a reading
    # takes up to ~200 tokens of this tokenizer
    "tarot_qwen2_5": DryRun(
        "tarot_qwen2_5", "chat", "Qwen/Qwen2.5-1.5B-Instruct", "random_chat", [SAMPLES / "tarot" / "readings.jsonl"],
        [*TEXT_SIZES, *CHAT_SIZES, "data.max_length=320", "data.batch_size=2", "data.limit_train_samples=6",
         "trainer.max_epochs=2", "callbacks.model_checkpoint.save_top_k=-1"], {"num_hidden_layers": 2, "embedding_rows": 1000}),
    # one layer of Llama-3.1-8B's shape (hidden 4096, 32 query / 8 key-value heads, MLP 14336: 218M parameters,
    # 7 LoRA'd projections); no 4-bit on a CPU. The recipe's batch 4 x accumulation 4 at batch 1: 5 samples step
    # at batches 4 and 5, 4 steps in 2 epochs
    "amazon_llama3_8b_qlora": DryRun(
        "amazon_llama3_8b_qlora", "chat", "meta-llama/Llama-3.1-8B-Instruct", "random_chat", AMAZON,
        [f"data.train_file={AMAZON[0]}", f"data.test_file={AMAZON[1]}", *TEXT_SIZES, *CHAT_SIZES,
         "data.max_length=128", "model.quantization=null", "data.batch_size=1", "data.limit_train_samples=5",
         "data.limit_val_samples=4", "data.limit_test_samples=4", "data.eval_batch_size=4", "trainer.max_epochs=2", "val_every_n_steps=3",
         "callbacks.model_checkpoint.save_top_k=-1"], {"num_hidden_layers": 1, "embedding_rows": 1000}),
}


@pytest.fixture(scope="session")
def random_models(cache_dir):
    """``build(dry_run)``: the directory of its real architecture at random init, built once per session."""
    from src.pretrained import random_init

    built: dict[str, str] = {}

    def build(run: DryRun) -> str:
        if run.hub_id not in built:
            builder = getattr(random_init, run.builder)
            built[run.hub_id] = builder(str(cache_dir / "models"), name=run.hub_id,
                                        corpus_files=[str(f) for f in run.corpus], **run.reduced)
        return built[run.hub_id]

    return build


def float32_bytes(run: DryRun, pretrained: str) -> int:
    """The built model's float32 size (its architecture as reduced, for the instruct recipes)."""
    model = meta_model(run.family, pretrained)
    modules = [model.unet, model.vae, model.text_encoder] if run.family == "diffusion" else [model]
    return 4 * sum(p.numel() for m in modules for p in m.parameters())


def checkpoint_steps(directory: Path) -> list[int]:
    return sorted(int(p.stem.split("-")[1]) for p in directory.glob("checkpoint-*.ckpt"))


def sums_of_squares(tensors) -> list[float]:
    """Tensors compared as a multiset, whatever each format names them."""
    return sorted(float(t.double().pow(2).sum()) for t in tensors)


# -- check 3: the exported adapter in the ecosystem's own loaders -------------------------------------------
def check_text_adapter(run: DryRun, pretrained: str, adapter: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    auto_class = AutoModelForSeq2SeqLM if run.family == "seq2seq" else AutoModelForCausalLM
    base = auto_class.from_pretrained(pretrained).eval()
    tokenizer = AutoTokenizer.from_pretrained(pretrained)
    inputs = tokenizer(["Title: walking shoe\nDescription: a light shoe"], return_tensors="pt")
    if run.family == "seq2seq":
        inputs["decoder_input_ids"] = torch.full((1, 4), base.config.decoder_start_token_id)
    with torch.no_grad():
        before = base(**inputs).logits
        model = PeftModel.from_pretrained(base, str(adapter)).eval()
        after = model(**inputs).logits
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # every trained weight arrived
    assert (after - before).abs().max() > 1e-6


def check_diffusion_adapter(pretrained: str, adapter: Path) -> None:
    from diffusers import StableDiffusionPipeline

    pipeline = StableDiffusionPipeline.from_pretrained(pretrained, safety_checker=None)

    def image():
        return pipeline("a photo of a red sneaker", height=64, width=64, num_inference_steps=1,
                        generator=torch.Generator().manual_seed(0), output_type="np").images[0]

    before = image()
    pipeline.load_lora_weights(str(adapter))
    lora_b = [p for n, p in pipeline.unet.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)
    assert abs(image() - before).max() > 0


def adapter_tensors(run: DryRun, adapter: Path) -> list[torch.Tensor]:
    from safetensors.torch import load_file

    name = "pytorch_lora_weights.safetensors" if run.family == "diffusion" else "adapter_model.safetensors"
    return list(load_file(adapter / name).values())


# -- the dry runs -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(DRY_RUNS))
def test_dry_run(name, random_models, tmp_path):
    run = DRY_RUNS[name]
    start = time.monotonic()
    pretrained = random_models(run)
    built_s = time.monotonic() - start
    overrides = [f"experiment={run.experiment}", *COMMON, f"model.pretrained={pretrained}", *run.overrides]

    # 1. preflight announces the checkpoint steps, and training writes exactly those
    preflight_dir = tmp_path / "preflight"
    run_cli("train.py", *overrides, "preflight=true", f"hydra.run.dir={preflight_dir}")
    plan = read_json(preflight_dir / "preflight.json")
    assert plan["problems"] == []
    announced = plan["schedule"]["checkpoint_steps"]
    assert len(announced) >= 2
    accumulate = plan["schedule"]["accumulate_grad_batches"]
    assert accumulate == {"amazon_flan_t5": 16, "tarot_ptt5": 2, "amazon_dialogpt": 4, "shoes_sd15": 4,
                          "amazon_qwen2_5_0_5b": 2, "tarot_qwen2_5": 2, "amazon_llama3_8b_qlora": 4}[name]
    assert plan["schedule"]["batches_per_epoch_per_process"] % accumulate != 0  # a short last step each epoch

    logs = tmp_path / "logs"
    run_dir = logs / "train" / "runs" / name
    start = time.monotonic()
    run_cli("train.py", *overrides, f"hydra.run.dir={run_dir}")
    train_s, train_rss = time.monotonic() - start, preloaded_cli().last_rss_gb
    checkpoints = run_dir / "checkpoints"
    assert checkpoint_steps(checkpoints) == announced
    report = read_json(run_dir / "metrics.json")
    assert report["training"]["global_step"] == announced[-1] == plan["schedule"]["optimizer_steps_total"]

    # 2. adapter-only checkpoints, a few percent of the model, holding what preflight counted
    full_bytes = float32_bytes(run, pretrained)
    trainable = plan["model"]["trainable_parameters"]
    for step in announced:
        path = checkpoints / f"checkpoint-{step}.ckpt"
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        state = ckpt["state_dict"]
        assert state and all("lora_" in key for key in state), [k for k in state if "lora_" not in k][:3]
        assert sum(t.numel() for t in state.values()) == trainable
        lora_bytes = sum(t.numel() * t.element_size() for t in state.values())
        assert lora_bytes < CHECKPOINT_SHARE * full_bytes
        # the file: the LoRA weights, AdamW's two moments of each, and small loop state; no frozen weight
        assert path.stat().st_size < 3 * lora_bytes + 2**20
        assert ckpt["global_step"] == step

    # 3. the exported adapter (the best checkpoint) loads in the plain ecosystem at the real architecture
    best = Path(report["best_checkpoint"]["path"])
    adapter = run_dir / "adapter"
    best_state = torch.load(best, map_location="cpu", weights_only=False)["state_dict"].values()
    assert sums_of_squares(adapter_tensors(run, adapter)) == pytest.approx(sums_of_squares(best_state), rel=1e-6)
    if run.family == "diffusion":
        check_diffusion_adapter(pretrained, adapter)
    else:
        check_text_adapter(run, pretrained, adapter)

    # 4. evaluate, compare every checkpoint, and the serving listing
    evaluated = tmp_path / "evaluate"
    run_cli("evaluate.py", f"ckpt={run_dir}", f"hydra.run.dir={evaluated}")
    scores = read_json(evaluated / "metrics.json")["metrics"]
    expected = {"test/fid", "test/kid"} if run.family == "diffusion" else {"test/rougeL", "test/bleu"}
    assert expected <= set(scores)
    compared = tmp_path / "compare"
    run_cli("evaluate.py", f"ckpt={run_dir}", "compare=all", "split=val", "bootstrap.n_resamples=100",
            f"hydra.run.dir={compared}")
    rows = read_json(compared / "report.json")["rows"]
    assert sorted(r["step"] for r in rows if not (r["baseline"] or r["retrieval"])) == announced  # the checkpoints
    assert sum(r["recommended"] for r in rows) == 1

    listed = [e for e in ModelRegistry(logs).list() if e.run == f"train/runs/{name}"]
    names = [e.name for e in listed if e.source == "checkpoint"]
    assert names == [f"train/runs/{name}/checkpoint-{step}" for step in announced]
    assert [e.name for e in listed if e.recommended] == [f"train/runs/{name}/{best.stem}"]

    total_s, total_rss = time.monotonic() - start, preloaded_cli().peak_rss_gb
    sys.stderr.write(f"\ndry run {name}: random model built in {built_s:.0f} s; train.py {train_s:.0f} s wall, peak "
                     f"RSS {train_rss:.2f} GB; whole test {total_s + built_s:.0f} s, peak RSS of any forked run so far "
                     f"{total_rss:.2f} GB; checkpoints at {announced}, "
                     f"{path.stat().st_size / 2**20:.1f} MB each ({path.stat().st_size / full_bytes:.2%} of the "
                     f"{full_bytes / 2**30:.2f} GB float32 model)\n")
