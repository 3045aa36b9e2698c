"""End to end on the bundled sample, through the real CLI: train, report, checkpoints, export, evaluate, resume."""

import csv
import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from src.training import train
from tests.conftest import QUICK, compose_config, read_json, run_cli

pytestmark = pytest.mark.slow
STEPS_PER_EPOCH = 30  # 478 training records / batch 16


def evaluate_cli(tmp_path: Path, name: str, *overrides: str) -> tuple[dict, list[dict]]:
    out = tmp_path / name
    run_cli("evaluate.py", *overrides, f"hydra.run.dir={out}")
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    return read_json(out / "metrics.json"), predictions


def test_run_report_has_every_section(trained_run):
    report = read_json(trained_run / "metrics.json")
    assert report["hardware"]["accelerator"] == "CPUAccelerator" and report["hardware"]["precision"] == "32-true"
    assert report["data"]["sizes"] == {"train": 478, "val": 60, "test": 60}
    assert report["data"]["skipped"] == {"empty:content": 2, "duplicate": 2}
    params = report["model"]["parameters"]
    assert 0 < params["trainable"] < params["total"] and report["model"]["lora"]["r"] == 16
    assert report["training"]["global_step"] == 6 * STEPS_PER_EPOCH
    assert report["training"]["train_samples_per_s"] > 0
    best = report["best_checkpoint"]
    assert Path(best["path"]).is_file() and best["monitor"] == "val/rougeL"
    logged = [float(r["val/rougeL"]) for r in csv.DictReader(open(trained_run / "csv" / "metrics.csv"))
              if r.get("val/rougeL")]
    assert len(logged) == 6 and best["score"] == pytest.approx(max(logged), abs=1e-6)
    assert report["final_metrics"]["val/rougeL_best"] == pytest.approx(max(logged), abs=1e-6)
    assert "test/rougeL" in report["final_metrics"] and "test/bleu" in report["final_metrics"]
    log = (trained_run / "train.log").read_text()
    assert "epoch 6/6 (step 180) | train/loss" in log and "| val/rougeL " in log  # one summary line per epoch
    kept = sorted(p.name for p in (trained_run / "checkpoints").glob("*.ckpt"))
    assert "last.ckpt" in kept and len(kept) == 3  # top-2 by val/rougeL + last


def test_checkpoint_holds_adapter_and_loop_state_but_no_base_weights(trained_run):
    ckpt = torch.load(trained_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    keys = list(ckpt["state_dict"])
    assert keys and all("lora_" in k for k in keys)
    saved = sum(t.numel() for t in ckpt["state_dict"].values())
    assert saved == read_json(trained_run / "metrics.json")["model"]["parameters"]["trainable"]
    assert ckpt["optimizer_states"] and ckpt["lr_schedulers"] and ckpt["global_step"] == 6 * STEPS_PER_EPOCH


def test_training_improves_over_the_untrained_model(trained_run, tmp_path):
    base, _ = evaluate_cli(tmp_path, "base", "ckpt=base", f"config_from={trained_run}", "split=val")
    best = read_json(trained_run / "metrics.json")["best_checkpoint"]["score"]
    assert base["evaluated"]["kind"] == "base"
    assert best > base["metrics"]["val/rougeL"] + 0.1


def test_evaluate_reproduces_the_logged_validation_score(trained_run, tmp_path):
    metrics, predictions = evaluate_cli(tmp_path, "val", f"ckpt={trained_run}", "split=val")
    best = read_json(trained_run / "metrics.json")["best_checkpoint"]
    assert metrics["evaluated"]["path"] == best["path"]
    assert metrics["metrics"]["val/rougeL"] == pytest.approx(best["score"], abs=1e-5)
    assert len(predictions) == 60 and set(predictions[0]) == {"uid", "input", "reference", "prediction", "rougeL"}


def test_base_and_adapter_are_evaluated_on_the_same_test_samples(trained_run, tmp_path):
    adapter, adapter_preds = evaluate_cli(tmp_path, "adapter", f"ckpt={trained_run / 'adapter'}")
    base, base_preds = evaluate_cli(tmp_path, "base", "ckpt=base", "experiment=quickstart")
    assert adapter["evaluated"]["kind"] == "adapter" and adapter["evaluated"]["split"] == "test"
    assert [p["uid"] for p in adapter_preds] == [p["uid"] for p in base_preds]
    assert [p["reference"] for p in adapter_preds] == [p["reference"] for p in base_preds]
    # the adapter is the best checkpoint, which train.py also tested at the end of the run
    test_rouge = read_json(trained_run / "metrics.json")["final_metrics"]["test/rougeL"]
    assert adapter["metrics"]["test/rougeL"] == pytest.approx(test_rouge, abs=1e-5)
    assert adapter["metrics"]["test/rougeL"] > base["metrics"]["test/rougeL"]


def test_exported_adapter_loads_with_plain_peft_and_generates(trained_run):
    adapter_dir = trained_run / "adapter"
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert Path(config["base_model_name_or_path"]).is_dir()  # the tiny model's own directory
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    model = PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(config["base_model_name_or_path"]),
                                      adapter_dir).eval()
    base = AutoModelForSeq2SeqLM.from_pretrained(config["base_model_name_or_path"]).eval()
    prompt = "Given a product title, generate its product description.\nTitle: Acme Desk Lamp - Black, Pro\nDescription:"
    enc = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=32, do_sample=False)
        assert not torch.equal(model(**enc, labels=enc["input_ids"]).logits,
                               base(**enc, labels=enc["input_ids"]).logits)  # the adapter is applied
    assert tokenizer.decode(out[0], skip_special_tokens=True).strip()
    # the exported weights are exactly the best checkpoint's
    exported = load_file(adapter_dir / "adapter_model.safetensors")
    best = torch.load(read_json(trained_run / "metrics.json")["best_checkpoint"]["path"], weights_only=False)
    from_ckpt = {k.removeprefix("model.").replace(".default.", "."): v for k, v in best["state_dict"].items()}
    assert exported.keys() == from_ckpt.keys()
    assert all(torch.equal(exported[k], from_ckpt[k]) for k in exported)


def test_resume_from_last_checkpoint_continues_the_step_count(trained_run, tmp_path):
    run_cli("train.py", *QUICK, "trainer.max_epochs=7", "test=false",
            f"ckpt_path={trained_run / 'checkpoints' / 'last.ckpt'}", f"hydra.run.dir={tmp_path}")
    report = read_json(tmp_path / "metrics.json")
    assert report["training"]["global_step"] == 7 * STEPS_PER_EPOCH
    # the best score so far travels in the checkpoint, so *_best covers the whole run
    first_best = read_json(trained_run / "metrics.json")["best_checkpoint"]["score"]
    assert report["final_metrics"]["val/rougeL_best"] >= first_best - 1e-6
    epochs = {int(r["epoch"]) for r in csv.DictReader(open(tmp_path / "csv" / "metrics.csv")) if r.get("epoch")}
    assert epochs == {6}  # only the one remaining epoch was trained


def test_test_only_run_evaluates_the_given_checkpoint(trained_run, tmp_path):
    best = read_json(trained_run / "metrics.json")
    run_cli("train.py", *QUICK, "train=false", "test=true", f"ckpt_path={best['best_checkpoint']['path']}",
            f"hydra.run.dir={tmp_path}")
    log = (tmp_path / "train.log").read_text()
    assert f"'test/rougeL': {round(best['final_metrics']['test/rougeL'], 4)}" in log


def test_adapter_that_does_not_match_the_model_config_is_refused(trained_run, tmp_path):
    proc = run_cli("evaluate.py", f"ckpt={trained_run / 'adapter'}", "model.lora.r=4", f"hydra.run.dir={tmp_path}",
                   check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: adapter {trained_run / 'adapter'} has r=16 but the model config has 4 — set model.lora.r to match"]
    proc = run_cli("evaluate.py", f"ckpt={trained_run / 'checkpoints' / 'last.ckpt'}", "model.lora.r=4",
                   f"hydra.run.dir={tmp_path}", check=False)
    assert proc.returncode == 2 and "the LoRA settings differ" in proc.stderr


def test_data_error_under_ddp_spawn_is_one_line(cache_dir, tmp_path):
    proc = run_cli("train.py", *QUICK, "trainer=ddp_sim", "data.train_file=/no/such.json", check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith(
        "error: data file not found: /no/such.json")
    assert "Traceback" not in proc.stderr


def test_fast_dev_run_in_process(cache_dir, tmp_path):
    cfg = compose_config("train", ["experiment=quickstart", "debug=fdr", "logger=csv"], tmp_path)
    train(cfg)
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "adapter").exists()


def test_multirun_over_two_lora_ranks(cache_dir, tmp_path):
    run_cli("train.py", "-m", *QUICK, "model.lora.r=4,8", "debug=limit", "test=false", f"hydra.sweep.dir={tmp_path}")
    for job, rank in ((0, 4), (1, 8)):
        assert read_json(tmp_path / str(job) / "metrics.json")["model"]["lora"]["r"] == rank
        assert json.loads((tmp_path / str(job) / "adapter" / "adapter_config.json").read_text())["r"] == rank


def test_ddp_sim_trains_on_two_cpu_processes(cache_dir, tmp_path):
    proc = run_cli("train.py", *QUICK, "trainer=ddp_sim", "trainer.max_epochs=2", "test=false",
                   f"hydra.run.dir={tmp_path}")
    report = read_json(tmp_path / "metrics.json")
    assert report["training"]["world_size"] == 2 and report["hardware"]["devices"] == 2
    assert report["training"]["global_step"] == 2 * 15  # each process sees half of every epoch
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert Path(report["best_checkpoint"]["path"]).is_file()
    assert proc.stdout.count("best checkpoint:") + proc.stderr.count("best checkpoint:") == 1


def test_user_mistakes_end_with_one_line(cache_dir, tmp_path):
    proc = run_cli("train.py", *QUICK, "ckpt_path=/no/such.ckpt", check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: ckpt_path=/no/such.ckpt is not a file — pass a checkpoint such as <run dir>/checkpoints/last.ckpt"]
    proc = run_cli("evaluate.py", f"ckpt={tmp_path}", check=False)
    assert proc.returncode == 2 and "neither a run directory" in proc.stderr


def test_optuna_sweep_runs_trials_and_reports_the_best(cache_dir, tmp_path):
    # with test=true (the quickstart's), so the returned val/rougeL_best must survive the test stage
    run_cli("train.py", "-m", "hparams_search=rouge_optuna", *QUICK, "hydra.sweeper.n_trials=2", "debug=limit",
            f"hydra.sweep.dir={tmp_path}")
    results = (tmp_path / "optimization_results.yaml").read_text()
    assert "best_params" in results and "model.lora.r" in results
    assert (tmp_path / "0" / "metrics.json").is_file() and (tmp_path / "1" / "metrics.json").is_file()


def test_seq2seq_evaluation_encodes_once_and_matches_separate_loss_and_generation(cache_dir, tmp_path):
    from src.building import build_model_and_data

    cfg = compose_config("train", [*QUICK, "data.eval_batch_size=8", "model.generation.num_beams=2"], tmp_path)
    module, datamodule = build_model_and_data(cfg)
    datamodule.prepare_data()
    datamodule.setup("validate")
    batch = next(iter(datamodule.val_dataloader()))
    module.eval()
    with torch.inference_mode():
        torch.nn.init.normal_(module.model.base_model.model.encoder.block[0].layer[0].SelfAttention.q.lora_B.default.weight)
        loss, predictions = module.loss_and_predictions(batch)
        assert loss.item() == pytest.approx(module(batch).loss.item(), rel=1e-6)
        assert predictions == module.generate_texts(batch)
