"""``train.py preflight=true``: the reference recipes checked on the meta device, offline, in seconds."""

import json
import re
from pathlib import Path

import pytest

from tests.conftest import ROOT, compose_config, run_cli

AMAZON_SAMPLE = [f"data.train_file={ROOT}/data/samples/amazon/trn.json",
                 f"data.test_file={ROOT}/data/samples/amazon/tst.json"]
# LoRA sizes peft and diffusers count on the real architectures (seen here with get_peft_model / add_adapter,
# DESIGN.md): r16 on q,v of T5-base; r16 on c_attn,c_proj,c_fc of GPT-2 medium; r4 on the SD 1.5 UNet attention
# r16 on every linear projection ("all-linear") of Qwen2.5-0.5B/1.5B and Llama-3.1-8B: the counts peft prints for them
REFERENCE_TRAINABLE = {"amazon_flan_t5": 1_769_472, "tarot_ptt5": 1_769_472, "amazon_dialogpt": 6_291_456,
                       "shoes_sd15": 797_184, "amazon_qwen2_5_0_5b": 8_798_208, "tarot_qwen2_5": 18_464_768,
                       "amazon_llama3_8b_qlora": 41_943_040}


def preflight(tmp_path: Path, *overrides: str, check: bool = True):
    run_dir = tmp_path / "run"
    proc = run_cli("train.py", *overrides, "preflight=true", f"hydra.run.dir={run_dir}", check=check)
    report_file = run_dir / "preflight.json"
    return proc, (json.loads(report_file.read_text()) if report_file.is_file() else None)


@pytest.mark.slow
@pytest.mark.parametrize("experiment", sorted(REFERENCE_TRAINABLE))
def test_reference_experiments_preflight_offline(experiment, cache_dir, tmp_path):
    data = AMAZON_SAMPLE if experiment.startswith("amazon") else []
    proc, report = preflight(tmp_path, f"experiment={experiment}", *data)
    assert report["problems"] == []
    assert report["model"]["trainable_parameters"] == REFERENCE_TRAINABLE[experiment]
    assert report["model"]["config_source"] == "bundled copy"  # no hub here
    schedule = report["schedule"]
    assert schedule["effective_batch"] == schedule["batch_size"] * schedule["accumulate_grad_batches"]
    assert schedule["checkpoint_steps"] and all(isinstance(s, int) for s in schedule["checkpoint_steps"])
    assert 0 < report["memory"]["estimated_peak_bytes"]
    assert "preflight  passed" in proc.stderr + proc.stdout
    if experiment == "shoes_sd15":
        return
    fits = report["memory"]["gpu_fits"]  # with and without 4-bit and gradient checkpointing
    assert [(r["quantization"], r["gradient_checkpointing"]) for r in fits] == [
        (None, False), (None, True), ("4bit", False), ("4bit", True)]
    configured, = [r for r in fits if r["configured"]]
    assert configured["estimated_peak_bytes"] == report["memory"]["estimated_peak_bytes"]
    by_switch = {(r["quantization"], r["gradient_checkpointing"]): r["estimated_peak_bytes"] for r in fits}
    assert by_switch["4bit", True] < by_switch["4bit", False] and by_switch["4bit", True] < by_switch[None, True]
    if experiment == "amazon_llama3_8b_qlora":  # the recipe's point: an 8B model on one 24 GB card, in 4 bits
        assert configured["fits"] == {"24 GB": True, "80 GB": True}
        assert not any(r["fits"]["24 GB"] for r in fits if not r["gradient_checkpointing"])
        assert re.search(r"fits a 24 GB GPU: .*4bit \+ checkpointing [\d.]+ GiB \(this run\)", proc.stderr + proc.stdout)


def test_shoes_sd15_checkpoints_every_500_optimizer_steps(cache_dir, tmp_path):
    _, report = preflight(tmp_path, "experiment=shoes_sd15")
    schedule = report["schedule"]
    assert schedule["accumulate_grad_batches"] == 4
    assert schedule["checkpoint_steps"] == [500, 1000, 1500, 2000, 2500, 3000]
    assert schedule["optimizer_steps_total"] == 3000
    validation = report["validation"]
    assert validation["rounds"] == 6 and validation["inference_steps"] == 50


def test_validation_cost_counts_the_loss_pass_only_when_the_run_computes_it(cache_dir, tmp_path):
    costs = {}
    for forced in ("null", "true"):
        _, report = preflight(tmp_path / forced, "experiment=quickstart", f"model.eval_loss={forced}")
        costs[forced] = report["validation"]
    assert costs["null"]["eval_loss"] is False and costs["true"]["eval_loss"] is True  # the monitor is val/rougeL
    assert costs["true"]["validation_flops"] > costs["null"]["validation_flops"]
    assert costs["true"]["train_flops"] == costs["null"]["train_flops"]


def test_preflight_json_holds_the_promised_keys(cache_dir, tmp_path):
    _, report = preflight(tmp_path, "experiment=quickstart")
    for path in ("model.trainable_parameters", "model.total_parameters", "schedule.effective_batch",
                 "schedule.optimizer_steps_total", "schedule.checkpoint_steps", "memory.estimated_peak_bytes",
                 "problems"):
        node = report
        for key in path.split("."):
            node = node[key]
    data = report["data"]
    assert data["records_read"] == data["records_kept"] + sum(data["skipped"].values())
    assert data["source_tokens"]["max_length"] == 128 and 0 <= data["target_tokens"]["truncated_share"] <= 1
    assert "the model's own" in data["tokenizer"]


def test_preflight_reads_no_weights(cache_dir, tmp_path, monkeypatch):
    """A model directory holding only its config.json and tokenizer preflights: nothing reads weights."""
    import shutil

    from hydra.utils import instantiate

    cfg = compose_config("train", ["experiment=quickstart"], tmp_path)
    built = Path(instantiate(cfg.model.pretrained))
    bare = tmp_path / "bare"
    shutil.copytree(built, bare, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    _, report = preflight(tmp_path, "experiment=quickstart", f"model.pretrained={bare}")
    assert report["problems"] == [] and report["model"]["config_source"] == "local directory"


@pytest.mark.parametrize("overrides,message", [
    (["+model.generation.num_beam=2"], r"model\.generation\.num_beam is not an argument"),
    (["trainer.check_val_every_n_epoch=50"], r"no validation falls within the run's 600 optimizer steps"),
    (["preflight_device_memory_gb=0.001"], r"exceeds the device's 0\.0 GiB"),
    (["model.lora.target_modules=[nope]"], r"LoRA config does not fit"),
])
def test_each_problem_is_one_line_and_exit_2(overrides, message, cache_dir, tmp_path):
    proc, report = preflight(tmp_path, "experiment=quickstart", *overrides, check=False)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == len(report["problems"]) >= 1
    assert any(re.search(message, line) for line in errors), errors


def test_mismatched_model_and_data_fail_preflight_in_one_line(cache_dir, tmp_path):
    proc, report = preflight(tmp_path, "experiment=quickstart", "model=tiny_sd", check=False)
    assert proc.returncode == 2
    assert [line for line in proc.stderr.splitlines() if line.strip()] == [f"error: {report['problems'][0]}"]


def test_target_hardware_missing_here_is_a_warning_not_a_problem(cache_dir, tmp_path):
    _, report = preflight(tmp_path, "experiment=tarot_ptt5")  # trainer=gpu, 4-bit: neither is on this machine
    assert report["problems"] == []
    assert any("needs a CUDA GPU" in w for w in report["warnings"])
    assert report["memory"]["quantization"] == "4bit"


def test_config_mistakes_are_problems_whatever_the_machine(cache_dir, tmp_path):
    proc, report = preflight(tmp_path, "experiment=shoes_sd15", "trainer=mps", "trainer.precision=16-mixed",
                             check=False)
    assert proc.returncode == 2 and any("not supported on MPS" in p for p in report["problems"])


def test_large_files_are_read_through_a_bounded_sample(cache_dir, tmp_path, monkeypatch):
    from src.families.seq2seq import SEQ2SEQ
    from src.preflight import data as preflight_data

    cfg = compose_config("train", ["experiment=quickstart"], tmp_path)
    full = preflight_data.plan_text_data(cfg, SEQ2SEQ, "unused/not-on-this-machine")
    monkeypatch.setattr(preflight_data, "SAMPLE_BYTES", 10_000)
    monkeypatch.setattr(preflight_data, "SAMPLE_RECORDS", 100)
    sampled = preflight_data.plan_text_data(cfg, SEQ2SEQ, "unused/not-on-this-machine")
    assert full["sampled"] is None and full["records_read"] == 602
    assert "first 100 records" in sampled["sampled"]
    # 200 of 602 lines read, scaled by file size: the estimate lands near the true count
    assert abs(sampled["records_read"] - 602) / 602 < 0.25
    assert "stand-in" in sampled["tokenizer"]


def test_a_large_json_array_is_sampled_by_its_first_items(cache_dir, tmp_path, monkeypatch):
    """A byte or line head of a JSON array would be a truncated array, which the reader refuses."""
    import json

    from src.families.seq2seq import SEQ2SEQ
    from src.preflight import data as preflight_data

    cfg = compose_config("train", ["experiment=quickstart"], tmp_path)
    array = tmp_path / "trn.json"
    with open(cfg.data.train_file, encoding="utf-8") as f:
        array.write_text(json.dumps([json.loads(line) for line in f], indent=1), encoding="utf-8")
    cfg.data.train_file = str(array)
    monkeypatch.setattr(preflight_data, "SAMPLE_BYTES", 10_000)
    monkeypatch.setattr(preflight_data, "SAMPLE_RECORDS", 100)
    sampled = preflight_data.plan_text_data(cfg, SEQ2SEQ, "unused/not-on-this-machine")
    assert "first 100 records" in sampled["sampled"]
    assert abs(sampled["records_read"] - 602) / 602 < 0.25


def test_activation_estimate_follows_batch_and_checkpointing(cache_dir, tmp_path):
    from src.preflight.memory import estimate, probe
    from src.preflight.model import plan_model

    cfg = compose_config("train", ["experiment=amazon_flan_t5"], tmp_path)
    data = {"source_tokens": {"max_length": 128, "max": 128}, "target_tokens": {"max_length": 224, "max": 224}}

    def measured(gradient_checkpointing: bool) -> dict:
        plan = plan_model(cfg.model)
        return estimate(plan, cfg, probe(plan, cfg, data, gradient_checkpointing), None)

    one = measured(False)
    cfg.data.batch_size = 4
    four = measured(False)
    recomputed = measured(True)
    assert 3.5 < four["activations_bytes"] / one["activations_bytes"] < 4.5
    assert recomputed["activations_bytes"] < four["activations_bytes"] / 4
    assert one["base_weights_bytes"] == 4 * (one["base_weights_bytes"] // 4)


@pytest.mark.slow
@pytest.mark.parametrize("interval", [
    ["trainer.val_check_interval=5", "trainer.check_val_every_n_epoch=null"],  # Lightning's batch count
    ["val_every_n_steps=2"],                                                   # optimizer steps
])
def test_announced_checkpoint_steps_are_the_ones_a_run_writes(interval, cache_dir, tmp_path):
    """7 batches per epoch with accumulation 3: Lightning steps on each epoch's last batch, so batch-counted
    validation drifts off step multiples; preflight must announce exactly what the run then writes."""
    overrides = ["experiment=quickstart", "logger=csv", "trainer.enable_progress_bar=false", "test=false",
                 "data.limit_train_samples=100", "trainer.accumulate_grad_batches=3", "trainer.max_epochs=3",
                 "callbacks.model_checkpoint.save_top_k=-1", "data.limit_val_samples=8", *interval]
    _, report = preflight(tmp_path / "pre", *overrides)
    announced = report["schedule"]["checkpoint_steps"]
    run_dir = tmp_path / "train"
    run_cli("train.py", *overrides, f"hydra.run.dir={run_dir}")
    written = sorted(int(p.stem.split("-")[1]) for p in (run_dir / "checkpoints").glob("checkpoint-*.ckpt"))
    assert report["schedule"]["optimizer_steps_per_epoch"] == 3
    assert written == announced and len(announced) >= 3


@pytest.mark.parametrize("family,model", [("seq2seq", "tiny_t5"), ("causal", "tiny_gpt2")])
def test_meta_measurement_equals_the_same_steps_on_real_tensors(family, model, cache_dir, tmp_path):
    """The memory estimate's premise: meta tensors are allocated and freed where real ones are. (With the same
    kernels: on meta, scaled_dot_product_attention takes the unfused path, so eager attention on both here.)"""
    import torch
    from hydra.utils import instantiate
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    from src.preflight.memory import measure_training
    from src.families.registry import FAMILIES

    directory = instantiate(compose_config("train", [f"model={model}"], tmp_path).model.pretrained)
    auto = AutoModelForSeq2SeqLM if family == "seq2seq" else AutoModelForCausalLM
    task = TaskType.SEQ_2_SEQ_LM if family == "seq2seq" else TaskType.CAUSAL_LM
    targets = ["q", "v"] if family == "seq2seq" else ["c_attn"]

    def measured(base, device):
        model = get_peft_model(base, LoraConfig(r=8, target_modules=targets, task_type=task, lora_dropout=0.1))
        model.train()
        ids = torch.ones(4, 40, dtype=torch.long, device=device)
        return measure_training(model, lambda: model(input_ids=ids, labels=ids).loss, count_flops=True)

    meta = FAMILIES.get(family).meta_model(directory)
    meta.set_attn_implementation("eager")
    on_meta = measured(meta, "meta")
    on_cpu = measured(auto.from_pretrained(directory, attn_implementation="eager"), "cpu")
    assert on_meta == on_cpu and on_meta[0] > 0


def schedule_for(tmp_path, *overrides: str, samples: int = 80) -> dict:
    from src.preflight.schedule import plan_schedule

    cfg = compose_config("train", ["experiment=quickstart", "trainer.max_epochs=2", "data.batch_size=8", *overrides],
                         tmp_path)
    return plan_schedule(cfg, samples)


def test_schedule_counts_devices_as_lightning_does(tmp_path):
    assert schedule_for(tmp_path, "trainer.devices=-1")["devices"] == 1  # every device of this CPU machine
    assert schedule_for(tmp_path, "trainer.devices='0,1'")["devices"] == 2
    two = schedule_for(tmp_path, "trainer=ddp_sim")
    assert two["effective_batch"] == 16 and two["batches_per_epoch_per_process"] == 5


def test_schedule_never_announces_a_checkpoint_at_step_0_but_counts_every_round(tmp_path):
    # 10 batches, accumulation 4 (steps after batches 4, 8, 10), validation every 2 batches: a round at step 0
    plan = schedule_for(tmp_path, "trainer.accumulate_grad_batches=4", "trainer.val_check_interval=2",
                        "trainer.max_epochs=1")
    assert plan["validation_steps"] == [0, 1, 1, 2, 3]
    assert plan["checkpoint_steps"] == [1, 2, 3]


def test_schedule_takes_every_interval_lightning_takes(tmp_path):
    from src.errors import UserError

    assert schedule_for(tmp_path, "trainer.val_check_interval=null")["checkpoint_steps"] == [10, 20]
    timed = schedule_for(tmp_path, "trainer.val_check_interval='00:00:30:00'")
    assert timed["checkpoint_steps"] == [] and "wall time" in timed["notes"][0]
    assert schedule_for(tmp_path, "+trainer.limit_val_batches=0")["checkpoint_steps"] == []
    with pytest.raises(UserError, match="longer than an epoch of 10"):
        schedule_for(tmp_path, "trainer.val_check_interval=50")
    with pytest.raises(UserError, match="val_every_n_steps=-5 is not a positive number"):
        schedule_for(tmp_path, "val_every_n_steps=-5")


def test_quantized_weights_count_tied_embeddings_once(cache_dir, tmp_path, monkeypatch):
    from src.preflight import memory
    from src.preflight.model import plan_model

    plan = plan_model(compose_config("train", ["experiment=quickstart_causal"], tmp_path).model)  # GPT-2: tied
    monkeypatch.setitem(memory.QUANTIZED_BYTES, "4bit", 4)  # "quantized" at full size: must equal the plain count
    assert memory.quantized_base_bytes(plan, "4bit") == 4 * (plan.total - plan.trainable)


def test_clip_only_metrics_need_no_inception(cache_dir, tmp_path):
    from src.families.diffusion import DIFFUSION

    cfg = compose_config("train", ["experiment=shoes_sd15", "model.metrics.feature_extractor.weights_path=/nowhere.pth"],
                         tmp_path)
    assert any("InceptionV3" in w or "/nowhere.pth" in w for w in DIFFUSION.preflight_warnings(cfg.model))
    cfg.model.metrics.include = ["clip"]
    assert not any("InceptionV3" in w or "/nowhere.pth" in w for w in DIFFUSION.preflight_warnings(cfg.model))
