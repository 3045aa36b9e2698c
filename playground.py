"""Playground: ``python playground.py ckpt=<run dir | .ckpt | adapter dir>`` (conf/playground.yaml)."""

import os
from pathlib import Path

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

import src.resolvers  # noqa: E402,F401  (resolvers used by conf/)


@hydra.main(version_base="1.3", config_path="conf", config_name="playground")
def main(cfg: DictConfig) -> None:
    from src.runtime import run_task
    from src.serving.playground import playground

    return run_task(playground, cfg)


if __name__ == "__main__":
    main()
