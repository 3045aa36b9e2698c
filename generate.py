"""Batch generation: ``python generate.py ckpt=<run dir | .ckpt | adapter dir> prompts=<file>`` (conf/generate.yaml)."""

import os
from pathlib import Path

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

import src.resolvers  # noqa: E402,F401  (resolvers used by conf/)


@hydra.main(version_base="1.3", config_path="conf", config_name="generate")
def main(cfg: DictConfig) -> None:
    from src.runtime import run_task
    from src.serving.batch import generate_batch

    return run_task(generate_batch, cfg)


if __name__ == "__main__":
    main()
