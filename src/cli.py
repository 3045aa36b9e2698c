"""The command layer: what ``evaluate.py`` runs once Hydra has composed its config. It dispatches to one of three
commands that know nothing of each other: ``compare=all`` (every checkpoint of a run, or a sweep's runs),
``ckpt=retrieval`` (the retrieval baseline alone) and a single target (``src/evaluation.py``)."""

from typing import Any

from omegaconf import DictConfig

from src.comparison.retrieval import evaluate_retrieval
from src.comparison.runner import compare
from src.evaluation import check_split, evaluate


def evaluate_command(cfg: DictConfig) -> dict[str, Any]:
    check_split(cfg)
    if cfg.get("compare") is not None:
        return compare(cfg)
    if str(cfg.ckpt) == "retrieval":  # the retrieval baseline, not a model
        return evaluate_retrieval(cfg)
    return evaluate(cfg)
