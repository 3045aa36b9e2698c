"""Evaluating one model on one split: the building blocks the comparison reuses (``run_evaluation``,
``write_evaluation``) and ``evaluate``, the single-target command (a checkpoint, an exported adapter, a run's best
checkpoint, or the base model). ``evaluate.py`` dispatches ``compare=all`` and ``ckpt=retrieval`` elsewhere."""

import logging
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

from src.building import build_model_and_data
from src.errors import UserError
from src.outputs import to_builtin, write_json
from src.runtime import check_hardware
from src.targets import load_target_weights, resolve_target, with_run_config

log = logging.getLogger(__name__)

SPLITS = ("val", "test")


def check_split(cfg: DictConfig) -> None:
    if cfg.split not in SPLITS:
        raise UserError(f"split={cfg.split} must be one of {SPLITS}")


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    check_split(cfg)
    target = resolve_target(cfg.ckpt, cfg.get("config_from"))
    if target.run_dir is not None:
        cfg = with_run_config(cfg, target.run_dir)
    check_hardware(cfg)
    L.seed_everything(cfg.seed, workers=True)

    module, datamodule = build_model_and_data(cfg)
    load_target_weights(module, target)
    metrics = run_evaluation(cfg, module, datamodule, as_base=target.kind == "base", verbose=True)
    out = Path(cfg.paths.output_dir)
    write_evaluation(out, metrics, module, {"kind": target.kind, "path": target.path,
                                            "run_dir": str(target.run_dir or ""), "split": cfg.split})
    log.info("evaluated %s (%s) on %d %s samples: %s\nwritten to %s: metrics.json, predictions.jsonl",
             target.path or "the base model", target.kind, len(module.predictions), cfg.split, metrics, out)
    return metrics


def run_evaluation(cfg: DictConfig, module: L.LightningModule, datamodule: L.LightningDataModule,
                   as_base: bool = False, verbose: bool = False) -> dict[str, float]:
    """One pass over ``cfg.split`` with the module's current weights (LoRA disabled with ``as_base``).

    Seeded before every pass, so a pass does not depend on what ran before it in the same process.
    """
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    # one process: predictions are collected in this process and written by the caller
    trainer: L.Trainer = instantiate(cfg.trainer, devices=1, strategy="auto", num_nodes=1, logger=False,
                                     callbacks=[], enable_checkpointing=False)
    run = trainer.validate if cfg.split == "val" else trainer.test
    with module.adapters_disabled() if as_base else nullcontext():
        results = run(module, datamodule=datamodule, verbose=verbose)
    return {k: to_builtin(v) for k, v in results[0].items()}


def write_evaluation(directory: Path, metrics: dict[str, float], module, evaluated: dict[str, Any]) -> None:
    """``metrics.json`` (scores and what was evaluated) and the module's predictions."""
    directory.mkdir(parents=True, exist_ok=True)
    write_json(directory / "metrics.json", {
        "metrics": metrics,
        "evaluated": {**evaluated, "samples": len(module.predictions), "model": module.report()},
    })
    module.write_predictions(directory)
