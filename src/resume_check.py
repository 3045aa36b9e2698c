"""Check ``ckpt_path`` before anything is built: a missing, truncated or foreign file, or a checkpoint of another
LoRA config, ends in one line instead of a traceback from deep inside Lightning or torch.

What a resumed run must share with the run that wrote the checkpoint: the model family, the base model and the
LoRA settings that decide the adapter's shape, scale and placement (``r``, ``lora_alpha``, ``target_modules``,
rsLoRA, DoRA, per-module patterns), and whether training batches are grouped by length (another order).
Everything else may change on resume — learning rate, ``max_steps``, data sizes, validation interval,
``lora_dropout`` (a regularisation setting, not part of the weights).
"""

import logging
from pathlib import Path, PurePath
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from src.datamodules.sampling import grouping_difference
from src.errors import UserError
from src.families.registry import FAMILIES
from src.modules.adapter_checkpoint import ADAPTER_KEY, lora_settings

log = logging.getLogger(__name__)

MUST_MATCH = ("r", "lora_alpha", "target_modules", "use_rslora", "use_dora", "rank_pattern", "alpha_pattern")
PASS_ONE = "pass a .ckpt written by train.py, such as <run dir>/checkpoints/last.ckpt"


def check_resume_checkpoint(ckpt_path: str, cfg: DictConfig) -> dict[str, Any]:
    """Read ``ckpt_path`` (``weights_only=True``) and refuse it with one line unless this run can continue or
    evaluate it; return the checkpoint."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise UserError(f"ckpt_path={ckpt_path} is not a file — pass a checkpoint such as "
                        "<run dir>/checkpoints/last.ckpt")
    checkpoint = read_checkpoint(path, f"ckpt_path={ckpt_path}")
    if cfg.get("train", True) and "optimizer_states" not in checkpoint:
        raise UserError(f"ckpt_path={ckpt_path} holds weights but no optimizer or loop state, so training cannot "
                        "continue from it — resume from <run dir>/checkpoints/last.ckpt, or evaluate it with "
                        "train=false test=true")
    record = checkpoint.get(ADAPTER_KEY)
    if record is None:
        if not any("lora_" in key for key in checkpoint["state_dict"]):
            raise UserError(f"ckpt_path={ckpt_path} holds no LoRA adapter weights: it was not written by "
                            f"lorafit's train.py — {PASS_ONE}")
        return checkpoint  # written before checkpoints named their config: the weight shapes are checked on load
    ours = lora_settings(instantiate(cfg.model.lora)) if cfg.model.get("lora") is not None else None
    difference = config_difference(record, cfg, ours) or order_difference(checkpoint, cfg)
    if difference:
        raise UserError(f"ckpt_path={ckpt_path} was trained with {difference} — resume with the settings it "
                        "was trained with, or start a new run without ckpt_path")
    if ours and "lora_dropout" in record and record["lora_dropout"] != ours["lora_dropout"]:
        log.info("continuing with model.lora.lora_dropout=%s (the checkpoint was trained with %s)",
                 ours["lora_dropout"], record["lora_dropout"])
    return checkpoint


def read_checkpoint(path: Path, name: str) -> dict[str, Any]:
    """A Lightning checkpoint on the CPU, unpickling tensors and plain values only (``weights_only=True``)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UserError(f"{name} cannot be read: {unreadable_reason(path, err)} — {PASS_ONE}") from None
    if not isinstance(checkpoint, dict) or not {"state_dict", "pytorch-lightning_version"} <= checkpoint.keys():
        raise UserError(f"{name} is not a Lightning checkpoint (no state_dict): a model or adapter file of another "
                        f"tool? — {PASS_ONE}")
    return checkpoint


def unreadable_reason(path: Path, err: Exception) -> str:
    text = str(err)
    if path.stat().st_size == 0:
        return "the file is empty"
    if "PytorchStreamReader" in text:
        return "the file is truncated or damaged (a copy or save that did not finish?)"
    if "Weights only load failed" in text and "Unsupported global" in text:
        return "it holds pickled Python objects, not only tensors (train.py checkpoints hold none)"
    return f"not a torch checkpoint ({type(err).__name__})"


def config_difference(record: dict[str, Any], cfg: DictConfig, ours: dict[str, Any] | None) -> str | None:
    """``"lora_alpha=32, this run has model.lora.lora_alpha=64"`` for the first setting that differs, or None;
    ``ours``: this run's ``lora_settings``."""
    family = FAMILIES.of_config(cfg.model).name
    if record.get("family") != family:
        return f"the {record.get('family')} model family, this run's model is {family} ({cfg.model._target_})"
    base = configured_base(cfg)
    if base and record.get("base") and PurePath(record["base"]).name != PurePath(base).name:
        return f"base model {record['base']}, this run has model.pretrained={base}"
    for name in MUST_MATCH if ours else ():
        if name == "target_modules" and ours[name] is None:
            continue  # peft's per-architecture default, which the record holds resolved
        if name in record and record[name] != ours[name]:
            return f"{name}={record[name]}, this run has model.lora.{name}={ours[name]}"
    return None


def order_difference(checkpoint: dict[str, Any], cfg: DictConfig) -> str | None:
    """A training order that this run's data settings would not replay (``data.group_by_length``), found in the
    training loader's saved state; None when training does not continue."""
    if not cfg.get("train", True):
        return None
    grouped = bool((cfg.get("data") or {}).get("group_by_length", False))
    loaders = checkpoint.get("loops", {}).get("fit_loop", {}).get("state_dict", {}).get("combined_loader", [])
    states = [s for s in loaders if isinstance(s, dict) and "samples" in s]  # a ResumableLoader's
    return next(filter(None, (grouping_difference(s, grouped) for s in states)), None)


def configured_base(cfg: DictConfig) -> str | None:
    """The hub id or directory ``model.pretrained`` names; None for a builder (``_target_``, the tiny test
    models), whose directory is only known once built — a different tiny model shows in the weight shapes."""
    pretrained = cfg.model.get("pretrained")
    return pretrained if isinstance(pretrained, str) else None
