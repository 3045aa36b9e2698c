"""Logging inside processes that Hydra did not start (``strategy=ddp_spawn`` workers)."""

import logging
import sys

import lightning as L
from src.runtime import ignore_library_warnings

HYDRA_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"


class WorkerLogging(L.Callback):
    """``ddp_spawn`` trains in fresh processes that never saw Hydra's logging setup, so rank zero's lines
    (epoch summaries, the report and export messages) would be lost. On global rank zero of such a
    process, log to the run's log file and stdout in Hydra's format; processes Hydra or a cluster
    launcher started (with their handlers in place) are left alone.
    """

    def __init__(self, log_file: str, fmt: str = HYDRA_FORMAT):
        self.log_file, self.fmt = log_file, fmt

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        ignore_library_warnings()  # a spawned process starts without the run's warning filters
        root = logging.getLogger()
        if root.handlers or trainer.global_rank != 0:
            return
        formatter = logging.Formatter(self.fmt)
        for handler in (logging.FileHandler(self.log_file), logging.StreamHandler(sys.stdout)):
            handler.setFormatter(formatter)
            root.addHandler(handler)
        root.setLevel(logging.INFO)
