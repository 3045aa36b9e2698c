"""The run report's hardware, batch, token and FLOPs fields; the start-of-run block; the early-stopping line;
and a quickstart console free of library warnings."""

import os
import re
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from src.building import build_model_and_data
from tests.conftest import QUICK, ROOT, compose_config, read_json, run_cli

# one epoch over 40 records in batches of 4, two batches per optimizer step: 10 batches, 5 steps, no validation
SMALL = ["data.limit_train_samples=40", "data.batch_size=4", "trainer.accumulate_grad_batches=2",
         "trainer.max_epochs=1", "+trainer.limit_val_batches=0", "test=false"]
# a line Python's or Lightning's warning format printed: "<file>.py:<line>: <message>" or "...Warning: ..."
WARNING_LINE = re.compile(r"Warning|\.py:\d+: ")


def fresh_cli(script: str, *overrides: str, cache: Path) -> subprocess.CompletedProcess:
    """Run the CLI as a user would: no warning filters of ours in the environment, empty caches."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"} | {"LORAFIT_CACHE": str(cache)}
    proc = subprocess.run([sys.executable, str(ROOT / script), *overrides], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def warning_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in (proc.stdout + proc.stderr).splitlines() if WARNING_LINE.search(line)]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> tuple[Path, str, subprocess.CompletedProcess]:
    """One tiny quickstart through ``python train.py`` with fresh caches; (run directory, cache, process)."""
    run_dir, cache = tmp_path_factory.mktemp("report_run"), tmp_path_factory.mktemp("fresh_cache")
    proc = fresh_cli("train.py", *QUICK, *SMALL, f"hydra.run.dir={run_dir}", cache=cache)
    return run_dir, cache, proc


def test_report_has_timestamps_versions_and_null_gpu_fields_on_a_cpu(small_run):
    run_dir, _, _ = small_run
    report = read_json(run_dir / "metrics.json")
    start, end = (datetime.fromisoformat(report["timestamp"][k]) for k in ("start", "end"))
    assert start.utcoffset().total_seconds() == 0 and start <= end <= datetime.now(timezone.utc)
    hardware = report["hardware"]
    assert hardware["torch"] and hardware["cuda_available"] is False and hardware["mps_available"] is False
    assert {"cuda", "cudnn", "lightning"} <= set(hardware)
    assert hardware["gpu"] is None and hardware["vram_total_gb"] is None and hardware["vram_peak_gb"] is None
    assert hardware["device"].startswith("cpu (") and hardware["ram_gb"] > 0
    assert hardware["accelerator"] == "CPUAccelerator"  # the keys from before stay
    assert report["data"]["max_source_length"] == 128 and report["data"]["max_target_length"] == 64
    assert report["training"]["global_step"] == 5 and report["training"]["stop_reason"] == "max_epochs"


def test_effective_batch_counts_accumulation(small_run):
    run_dir, _, proc = small_run
    batch = read_json(run_dir / "metrics.json")["training"]["effective_batch"]
    assert batch == {"total": 8, "per_device": 4, "accumulation": 2, "world_size": 1}
    assert proc.stdout.count("effective batch 8 = 4 per device × 2 accumulation × 1 device") == 1


def test_start_block_names_the_device_and_the_trainable_share(small_run):
    run_dir, _, proc = small_run
    params = read_json(run_dir / "metrics.json")["model"]["parameters"]
    share = 100 * params["trainable"] / params["total"]
    assert len(re.findall(r"device: cpu \(\d+ cores, [\d.]+ GB RAM\)", proc.stdout)) == 1, proc.stdout[-3000:]
    line = f"parameters: {params['trainable']:,} trainable of {params['total']:,} ({share:.3f}%)"
    assert proc.stdout.count(line) == 1, proc.stdout[-3000:]


def test_flops_are_six_n_times_the_tokens_trained_on(small_run, monkeypatch):
    run_dir, cache, _ = small_run
    training = read_json(run_dir / "metrics.json")["training"]
    # one full epoch: every training record's source and target tokens, whatever the order
    monkeypatch.setenv("LORAFIT_CACHE", str(cache))
    cfg = compose_config("train", [*QUICK, *SMALL], run_dir / "recount")
    _, datamodule = build_model_and_data(cfg)
    datamodule.setup("fit")
    train = datamodule.splits["train"]
    assert len(train) == 40
    tokens = sum(len(ids) + len(labels) for ids, labels in zip(train["input_ids"], train["labels"]))
    parameters = read_json(run_dir / "metrics.json")["model"]["parameters"]["total"]
    assert training["tokens"] == tokens
    assert training["flops"] == {"total": 6 * parameters * tokens, "method": "6*N*tokens",
                                 "parameters": parameters, "tokens": tokens}


def test_a_fresh_quickstart_prints_no_warnings(small_run):
    _, _, proc = small_run
    offending = warning_lines(proc)
    assert not offending, "warning lines on the console:\n" + "\n".join(offending)


@pytest.mark.slow
def test_a_fresh_shoes_quickstart_prints_no_warnings_and_measures_flops(tmp_path):
    proc = fresh_cli("train.py", "experiment=quickstart_shoes", "logger=csv", "trainer.enable_progress_bar=false",
                     "data.batch_size=2", "trainer.max_steps=2", "val_every_n_steps=2", "data.limit_val_prompts=2",
                     "test=false", f"hydra.run.dir={tmp_path / 'run'}", cache=tmp_path / "cache")
    offending = warning_lines(proc)
    assert not offending, "warning lines on the console:\n" + "\n".join(offending)
    training = read_json(tmp_path / "run" / "metrics.json")["training"]
    flops = training["flops"]
    assert training["tokens"] is None and flops["batches"] == 2 and flops["total"] == 2 * flops["per_batch"] > 0
    assert read_json(tmp_path / "run" / "metrics.json")["data"]["resolution"] == 64


def test_early_stopping_says_when_and_why(cache_dir, tmp_path):
    # a min_delta no validation can reach: the second validation finds no improvement and patience 1 is spent
    proc = run_cli("train.py", *QUICK, "callbacks=[default,early_stopping]", "callbacks.early_stopping.patience=1",
                   "callbacks.early_stopping.min_delta=10", "data.limit_train_samples=32", "data.limit_val_samples=4",
                   "trainer.max_epochs=5", "test=false", f"hydra.run.dir={tmp_path}")
    lines = re.findall(r"early stopping at step (\d+) \(epoch (\d+)\): (.*)", proc.stdout)
    assert len(lines) == 1, proc.stdout[-3000:]
    step, epoch, why = lines[0]
    assert (int(step), int(epoch)) == (4, 2)  # 2 steps per epoch (32 records, batch 16); stopped after epoch 2
    best = read_json(tmp_path / "metrics.json")["final_metrics"]["val/rougeL_best"]
    assert why == f"val/rougeL has not improved on {best:.4g} for 1 validation (patience 1, min_delta 10)"
    training = read_json(tmp_path / "metrics.json")["training"]
    assert training["stop_reason"] == f"early_stopping: {why}" and training["global_step"] == 4
