"""OmegaConf resolvers used by conf/ (registered when the entry points import this module)."""

import logging

import torch
from omegaconf import OmegaConf

log = logging.getLogger(__name__)


def optuna_direction(mode: str, objective: str = "") -> str:
    """A sweep minimises a loss objective (optimized_metric=val/loss); else it follows model.mode."""
    if objective.removesuffix("_best").partition("/")[2] == "loss":
        return "minimize"
    return {"max": "maximize", "min": "minimize"}[mode]


OmegaConf.register_new_resolver("optuna_direction", optuna_direction, replace=True)


def cuda_mixed_precision() -> str:
    """trainer.precision for CUDA trainers: bf16-mixed where the GPU has bfloat16, else 16-mixed (with a note).
    Resolved where the trainer is built, i.e. on the GPU machine, not where a sweep was submitted."""
    if torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        log.info("this GPU has no bfloat16: trainer.precision=16-mixed (with loss scaling)")
        return "16-mixed"
    return "bf16-mixed"


OmegaConf.register_new_resolver("cuda_mixed_precision", cuda_mixed_precision, replace=True)
