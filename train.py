"""Train: ``python train.py experiment=quickstart`` (see conf/train.yaml)."""

import os
from pathlib import Path

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

import src.resolvers  # noqa: E402,F401  (resolvers used by conf/)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from src.runtime import run_task
    from src.training import train

    return run_task(train, cfg)


if __name__ == "__main__":
    main()
