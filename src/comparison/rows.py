"""What a comparison is made of, shared by a run's checkpoints (``runner``) and a sweep's re-evaluation
(``leaderboard``): bootstrap settings, one evaluated row, and the written report."""

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from src.comparison.plots import plot_metrics_by_step
from src.comparison.report import BootstrapSettings, Evaluated, fmt, to_markdown
from src.comparison.samples import per_sample
from src.errors import UserError
from src.evaluation import run_evaluation, write_evaluation
from src.outputs import write_json

log = logging.getLogger(__name__)

PLOT = "metrics_by_step.png"


def bootstrap_settings(cfg: DictConfig) -> BootstrapSettings:
    settings = BootstrapSettings(**OmegaConf.to_container(cfg.get("bootstrap") or {}))
    if settings.n_resamples < 1 or settings.fid_n_resamples < 1 or not 0 < settings.confidence < 1:
        raise UserError("bootstrap.n_resamples and bootstrap.fid_n_resamples must be ≥ 1 and bootstrap.confidence "
                        f"in (0, 1), got {settings}")
    return settings


def evaluate_row(cfg: DictConfig, module, datamodule, out: Path, name: str, *, step: int | None = None,
                 path: str | None = None, baseline: bool = False) -> Evaluated:
    """One pass with the module's current weights; its metrics and predictions go to ``out/name``."""
    metrics = run_evaluation(cfg, module, datamodule, as_base=baseline)
    write_evaluation(out / name, metrics, module, {"kind": "base" if baseline else "checkpoint", "path": path,
                                                   "step": step, "split": cfg.split})
    samples = per_sample(module)
    prefix = f"{cfg.split}/"
    scores = {k.removeprefix(prefix): v for k, v in metrics.items() if k.startswith(prefix)}
    log.info("%s%s: %s", name, "" if step is None else f" (step {step})",
             " | ".join(f"{k} {fmt(v)}" for k, v in scores.items()))
    return Evaluated(name, step, scores, samples.statistics, samples.sample_ids, path, baseline, name,
                     samples.fid_samples, samples.texts)


def write_report(out: Path, report: dict[str, Any], plot: bool = True) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if plot:
        plot_metrics_by_step(report, out / PLOT)
    write_json(out / "report.json", report)
    (out / "report.md").write_text(to_markdown(report, PLOT if plot else None), encoding="utf-8")
