"""Prepare data once and report on it: ``python prepare_data.py data=amazon`` (see conf/prepare_data.yaml)."""

import os
from pathlib import Path

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="prepare_data")
def main(cfg: DictConfig) -> None:
    from src.datatools.prepare import prepare
    from src.runtime import run_task

    run_task(prepare, cfg)


if __name__ == "__main__":
    main()
