"""``evaluate.py ckpt=<run dir> compare=all``: every saved checkpoint of a run (and, for text, the base model and
the retrieval baseline) on the same samples; over a multirun sweep directory, a leaderboard of the runs.

The module and datamodule are built once: the data are tokenized once, the base model stays in memory
and each checkpoint only swaps the LoRA weights in; a diffusion module keeps the real images' features
from its first pass. Each pass is seeded the same way, so the order of the passes does not matter.
"""

import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf

from src.building import build_model_and_data
from src.comparison.checkpoints import list_checkpoints
from src.comparison.leaderboard import is_sweep_dir, leaderboard
from src.comparison.report import Evaluated, build_report
from src.comparison.retrieval import IMAGE_NOTE, retrieval_row, training_index
from src.comparison.rows import PLOT, bootstrap_settings, evaluate_row, write_report
from src.comparison.samples import SIDE_BY_SIDE, side_by_side
from src.errors import UserError
from src.families.registry import FAMILIES
from src.runtime import check_hardware
from src.targets import run_dir_of, state_dict_of, with_run_config

log = logging.getLogger(__name__)


def compare(cfg: DictConfig) -> dict[str, Any]:
    if str(cfg.compare) != "all":
        raise UserError(f"compare={cfg.compare} is not an option — use compare=all (every checkpoint of a run, "
                        "or the best checkpoint of every run of a sweep)")
    path = Path(str(cfg.ckpt)).expanduser()
    if str(cfg.ckpt) == "base" or path.is_file():
        raise UserError(f"compare=all compares the checkpoints of a run, but ckpt={cfg.ckpt} is a single model — "
                        "pass ckpt=<run directory> (or a multirun sweep directory), or drop compare=all")
    if not path.is_dir():
        raise UserError(f"ckpt={cfg.ckpt} does not exist — pass a run directory (logs/train/runs/<time>) or a "
                        "multirun sweep directory (logs/train/multiruns/<time>)")
    if is_sweep_dir(path):
        return leaderboard(cfg, path)
    if run_dir_of(path) is None:
        raise UserError(f"{path} is neither a run directory (no .hydra/config.yaml) nor a multirun sweep directory "
                        "— pass the directory train.py wrote")
    return compare_checkpoints(cfg, path)


def kept_checkpoints_note(run_dir: Path, monitor: str) -> list[str]:
    run_cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    top_k = OmegaConf.select(run_cfg, "callbacks.model_checkpoint.save_top_k", default=None,
                             throw_on_resolution_failure=False)
    if top_k in (None, -1):
        return []
    return [f"only the checkpoints the run kept are compared (the top {top_k} by {monitor}, plus last.ckpt when it "
            "is later): train with callbacks.model_checkpoint.save_top_k=-1 to compare every validation"]


def write_side_by_side(out: Path, rows: list[Evaluated], report: dict[str, Any]) -> None:
    """Text runs: each input with the base model's, the recommended checkpoint's and the retrieval baseline's output
    (``side_by_side.jsonl``), named in the report."""
    recommended = next(r for r in rows if r.name == report["recommended"]["name"] and not r.reference)
    if not recommended.texts:
        return
    base = next((r for r in rows if r.baseline), None)
    retrieval = next((r for r in rows if r.retrieval), None)
    lines = side_by_side(recommended.texts, base.texts if base else None, recommended.name,
                         retrieval.texts if retrieval else None)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / SIDE_BY_SIDE, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
    report["side_by_side"] = SIDE_BY_SIDE


def compare_checkpoints(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    checkpoints = list_checkpoints(run_dir)
    settings = bootstrap_settings(cfg)
    cfg = with_run_config(cfg, run_dir)
    check_hardware(cfg)
    L.seed_everything(cfg.seed, workers=True)
    module, datamodule = build_model_and_data(cfg)
    out = Path(cfg.paths.output_dir)
    notes = kept_checkpoints_note(run_dir, module.monitor)

    text_outputs = FAMILIES.get(module.family_name).kind == "text"  # a base row and retrieval compare texts
    rows = []
    if cfg.get("baseline", True):
        if not text_outputs:
            notes.append("no base-model row: baseline=true adds one for text runs only")
        else:
            rows.append(evaluate_row(cfg, module, datamodule, out, "base", baseline=True))
    for checkpoint in checkpoints:
        module.load_state_dict(state_dict_of(str(checkpoint.path)))
        rows.append(evaluate_row(cfg, module, datamodule, out, checkpoint.name, step=checkpoint.step,
                                 path=str(checkpoint.path)))
    retrieval = None
    if cfg.get("retrieval", True):
        if not text_outputs:
            notes.append(IMAGE_NOTE)
        else:  # after the passes: the datamodule is set up and the samples are in the passes' order
            index = training_index(datamodule)
            rows.insert(int(rows[0].baseline), retrieval_row(datamodule, cfg.split, out, index))
            retrieval = index.describe()

    report = build_report(rows, monitor=module.monitor, mode=module.mode, split=cfg.split, settings=settings,
                          source=str(run_dir), notes=notes, retrieval=retrieval)
    write_side_by_side(out, rows, report)
    write_report(out, report)
    rec = report["recommended"]
    log.info("recommended: %s (step %s) — %s\nwritten to %s: report.md, report.json, %s, %sone directory per row",
             rec["path"], rec["step"], rec["reason"], out, PLOT,
             f"{report['side_by_side']} and " if report.get("side_by_side") else "")
    return {"recommended": rec["path"], "step": rec["step"], "report": str(out / "report.md")}
