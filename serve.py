"""Serve: ``python serve.py [logs_dir=logs] [port=8011]`` — the generation API (conf/serve.yaml), docs at /docs."""

import os
from pathlib import Path

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

import src.resolvers  # noqa: E402,F401  (resolvers used by conf/)


@hydra.main(version_base="1.3", config_path="conf", config_name="serve")
def main(cfg: DictConfig) -> None:
    from src.runtime import run_task
    from src.serving.server import serve

    return run_task(serve, cfg)


if __name__ == "__main__":
    main()
