"""Evaluate: ``python evaluate.py ckpt=<run dir | .ckpt | adapter dir | base | retrieval>`` (see conf/evaluate.yaml).

``compare=all`` compares every checkpoint of a run (or the runs of a sweep, ``src/comparison``); ``ckpt=retrieval``
scores the retrieval baseline alone; anything else is one model (``src/evaluation.py``).
"""

import os
from pathlib import Path

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

import src.resolvers  # noqa: E402,F401  (resolvers used by conf/)


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> dict:
    from src.cli import evaluate_command
    from src.runtime import run_task

    return run_task(evaluate_command, cfg)


if __name__ == "__main__":
    main()
