"""``evaluate.py``: score a checkpoint, an exported adapter, a run's best checkpoint, or the base model."""

import logging
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

from src.callbacks.run_report import to_builtin, write_json
from src.errors import UserError
from src.runtime import build_model_and_data, check_hardware
from src.targets import load_target_weights, resolve_target, with_run_config

log = logging.getLogger(__name__)

SPLITS = ("val", "test")


def evaluate(cfg: DictConfig) -> dict[str, float]:
    if cfg.split not in SPLITS:
        raise UserError(f"split={cfg.split} must be one of {SPLITS}")
    target = resolve_target(cfg.ckpt, cfg.get("config_from"))
    if target.run_dir is not None:
        cfg = with_run_config(cfg, target.run_dir)
    check_hardware(cfg)
    L.seed_everything(cfg.seed, workers=True)

    module, datamodule = build_model_and_data(cfg)
    load_target_weights(module, target)
    # one process: predictions are collected in this process and written below
    trainer: L.Trainer = instantiate(cfg.trainer, devices=1, strategy="auto", num_nodes=1, logger=False,
                                     callbacks=[], enable_checkpointing=False)
    run = trainer.validate if cfg.split == "val" else trainer.test
    if target.kind == "base":
        with module.adapters_disabled():
            results = run(module, datamodule=datamodule, verbose=True)
    else:
        results = run(module, datamodule=datamodule, verbose=True)

    metrics = {k: to_builtin(v) for k, v in results[0].items()}
    out = Path(cfg.paths.output_dir)
    write_json(out / "metrics.json", {
        "metrics": metrics,
        "evaluated": {"kind": target.kind, "path": target.path, "run_dir": str(target.run_dir or ""),
                      "split": cfg.split, "samples": len(module.predictions), "model": module.report()},
    })
    module.write_predictions(out)
    log.info("evaluated %s (%s) on %d %s samples: %s\nwritten to %s: metrics.json, predictions.jsonl",
             target.path or "the base model", target.kind, len(module.predictions), cfg.split, metrics, out)
    return metrics
