"""What docs/extending.md promises: a model family and a data format added from a module outside src/ train,
evaluate, plan and serve, with no file under src/ edited (tests/toy_plugins.py)."""

import json
from pathlib import Path

from omegaconf import OmegaConf, open_dict

from src.building import build_data
from src.cli import evaluate_command
from src.families.registry import FAMILIES
from src.serving.registry import ModelRegistry
from src.training import train
from src.trust import is_trusted_target
from tests import toy_plugins
from tests.conftest import compose_config, read_json

TOY = "tests.toy_plugins.ToyCausalModule"
SHORT = ["logger=csv", "trainer.enable_progress_bar=false", "trainer.max_epochs=1", "data.limit_train_samples=16",
         "data.limit_val_samples=4", "data.limit_test_samples=4", "model.generation.max_new_tokens=4"]


def test_a_family_beside_its_module_class_is_found_from_the_config_alone(cache_dir, tmp_path):
    cfg = compose_config("train", ["experiment=quickstart_causal", f"model._target_={TOY}"], tmp_path)
    family = FAMILIES.of_config(cfg.model)  # not registered by anyone: found next to ToyCausalModule
    assert family is toy_plugins.FAMILY and "toy_causal" in FAMILIES.names()
    assert is_trusted_target(TOY)  # a registered family's module loads from a run directory


def test_a_toy_family_trains_evaluates_plans_and_serves(cache_dir, tmp_path):
    run_dir = tmp_path / "logs" / "train" / "runs" / "toy"
    cfg = compose_config("train", ["experiment=quickstart_causal", f"model._target_={TOY}", *SHORT], run_dir)
    train(cfg)
    saved = cfg.copy()
    with open_dict(saved):
        saved.pop("hydra")
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    OmegaConf.save(saved, run_dir / ".hydra" / "config.yaml")  # what Hydra's job runner writes beside a run
    report = read_json(run_dir / "metrics.json")
    assert report["model"]["family"] == "toy_causal" and report["best_checkpoint"]["path"]

    evaluated = tmp_path / "evaluated"
    eval_cfg = compose_config("evaluate", [f"ckpt={run_dir}", "data.limit_test_samples=4"], evaluated)
    evaluate_command(eval_cfg)
    rows = [json.loads(line) for line in (evaluated / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(r["prediction"] == r["prediction"].lower() for r in rows)  # the toy's generation

    plan_cfg = compose_config("train", ["experiment=quickstart_causal", f"model._target_={TOY}", "preflight=true"],
                              tmp_path / "preflight")
    train(plan_cfg)  # exits 2 when it finds a problem
    plan = read_json(tmp_path / "preflight" / "preflight.json")
    assert plan["problems"] == [] and plan["model"]["family"] == "toy_causal"

    served = {e.name: e for e in ModelRegistry(tmp_path / "logs").list()}
    assert served["train/runs/toy/adapter"].family == "toy_causal" and served["train/runs/toy/adapter"].kind == "text"


def test_a_toy_data_format_reads_trains_and_formats_requests(cache_dir, tmp_path):
    data = tmp_path / "qa.jsonl"
    records = [{"q": f"What is item {i}?", "a": f"Item {i} is a thing number {i}."} for i in range(40)]
    data.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    cfg = compose_config("train", ["experiment=pairs_quickstart", "data.format=toy_qa", f"data.data_file={data}",
                                   *SHORT], tmp_path / "run")
    with open_dict(cfg):
        cfg.data.columns = {"id": None, "group": None}
    datamodule = build_data(cfg)
    samples = datamodule.load_samples()
    assert len(samples) == 40 and samples[0]["messages"][0] == {"role": "system", "content": toy_plugins.SYSTEM}
    assert datamodule.request("Why?") == [{"role": "system", "content": toy_plugins.SYSTEM},
                                          {"role": "user", "content": "Why?"}]
    train(cfg)
    report = read_json(Path(cfg.paths.output_dir) / "metrics.json")
    assert report["data"]["sizes"]["train"] == 16 and report["best_checkpoint"]["path"]
