"""``train.py``: fit, export the best adapter, optionally test, report where everything is."""

import json
import logging
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from src.building import build_model_and_data
from src.errors import UserError
from src.instantiation import instantiate_group
from src.preflight.run import preflight
from src.resume_check import check_resume_checkpoint
from src.runtime import check_hardware, check_launcher, sweeper_reads_objective
from src.modules.text_lora import TextLoRAModule

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> float | None:
    if cfg.get("preflight"):
        return preflight(cfg)  # exits 2 when it finds a problem
    check_hardware(cfg)
    L.seed_everything(cfg.seed, workers=True)
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path:  # missing, truncated, foreign, or of another LoRA config: one line, before anything is built
        check_resume_checkpoint(ckpt_path, cfg)

    check_launcher(cfg)
    module, datamodule = build_model_and_data(cfg)
    _check_objective(cfg.get("optimized_metric"), module)
    # here, not only in a spawned worker, so data errors surface as one line (and the cache is built once)
    datamodule.prepare_data()
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=instantiate_group(cfg.get("callbacks")),
                                     logger=instantiate_group(cfg.get("logger")) or False)
    # again, now that everything is built: building a model (a tiny one on first use, a LoRA init) or reading
    # data draws from the seeded RNG, so without this a run whose caches were cold would train differently
    L.seed_everything(cfg.seed, workers=True)
    metrics: dict[str, float] = {}
    if cfg.get("train", True):
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        metrics |= {k: float(v) for k, v in trainer.callback_metrics.items()}  # test() resets them
    ckpt_cb = trainer.checkpoint_callback
    best = ckpt_cb.best_model_path if ckpt_cb else ""
    if cfg.get("test") and not trainer.interrupted:
        # "best" restores the adapter weights of the best checkpoint; without training, the given one
        trainer.test(module, datamodule=datamodule, ckpt_path=best or ckpt_path)
        metrics |= {k: float(v) for k, v in trainer.callback_metrics.items()}

    if trainer.is_global_zero:  # under ddp/torchrun every process runs this script
        _print_summary(cfg, best, metrics)
    objective = cfg.get("optimized_metric")
    # a sweeper such as Optuna needs the value (elsewhere it is only returned): one line, the run is saved by now
    if sweeper_reads_objective() and objective and objective not in metrics and not trainer.interrupted:
        raise UserError(f"optimized_metric={objective} was not logged by this run (it logged: "
                        f"{', '.join(sorted(metrics))}) — set optimized_metric to one of them")
    return metrics.get(objective or "", None)


def _check_objective(objective: str | None, module: L.LightningModule) -> None:
    """A sweep's objective must be a value the run will log: refuse what it never can, before training."""
    if not objective:
        return
    monitor = module.monitor
    if objective.endswith("_best") and objective != f"{monitor}_best":
        raise UserError(f"optimized_metric={objective}: only model.monitor ({monitor}) has a _best value — set "
                        f"optimized_metric={monitor}_best, or model.monitor={objective.removesuffix('_best')}")
    if objective in ("val/loss", "test/loss") and isinstance(module, TextLoRAModule):
        if module.eval_loss is False:
            raise UserError(f"model.eval_loss=false but optimized_metric={objective} needs the evaluation loss "
                            "— set model.eval_loss=null (or true), or optimize another metric")
        module.eval_loss = True  # computed only when something reads it: the objective does


def _print_summary(cfg: DictConfig, best: str, metrics: dict[str, float]) -> None:
    callbacks = cfg.get("callbacks") or {}
    report = OmegaConf.select(callbacks, "run_report.path")
    report = Path(report) if report and Path(report).is_file() else None
    adapter = OmegaConf.select(callbacks, "export_adapter.dirpath")
    lines = [f"run directory:   {cfg.paths.output_dir}"]
    if best:
        # read back from the report: under ddp_spawn the score stays in the process that trained
        score = json.loads(report.read_text())["best_checkpoint"]["score"] if report else None
        lines.append(f"best checkpoint: {best} ({cfg.model.monitor}={score})")
    if adapter and Path(adapter).is_dir():
        lines.append(f"adapter:         {adapter}")
    if report:
        lines.append(f"metrics:         {report}")
    shown = {k: round(v, 4) for k, v in sorted(metrics.items()) if k.startswith(("val/", "test/"))}
    if shown:
        lines.append(f"scores:          {shown}")
    log.info("done\n%s", "\n".join(lines))
