"""The run report: ``metrics.json`` in the run directory at the end of fit."""

import json
import logging
import math
import platform
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from src.errors import NonFiniteLossError

log = logging.getLogger(__name__)


def to_builtin(value: Any) -> Any:
    """Tensors and numbers to JSON-friendly floats (NaN/inf to None)."""
    if isinstance(value, torch.Tensor):
        value = value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def batch_size_of(batch: Any) -> int:
    """Samples in a dict batch: the length of its first tensor or list."""
    for value in (batch.values() if isinstance(batch, dict) else [batch]):
        if isinstance(value, (torch.Tensor, list, tuple)):
            return len(value)
    return 1


def write_json(path: str | Path, payload: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    tmp.replace(path)


def fit_end_reason(trainer: L.Trainer) -> str:
    for callback in trainer.callbacks:
        if isinstance(callback, EarlyStopping) and (callback.stopped_epoch > 0 or callback.wait_count >= callback.patience):
            return f"early_stopping: {callback.monitor} did not improve for {callback.patience} validations"
    if trainer.max_steps not in (-1, None) and trainer.global_step >= trainer.max_steps:
        return "max_steps"
    return "max_epochs"


def exception_reason(exception: BaseException) -> str:
    if isinstance(exception, KeyboardInterrupt):
        return "interrupted: Ctrl+C"
    if isinstance(exception, SIGTERMException):
        return "interrupted: SIGTERM"
    if isinstance(exception, NonFiniteLossError):
        return "non_finite_loss"
    return f"error: {type(exception).__name__}: {exception}"


class RunReport(L.Callback):
    """Hardware, data, model, training and best-checkpoint sections plus the final metrics."""

    def __init__(self, path: str):
        self.path = path
        self.started = 0.0
        self.train_samples = 0
        self.stop_reason: str | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started = time.perf_counter()
        self.train_samples = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.train_samples += batch_size_of(batch)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.stop_reason = self.stop_reason or fit_end_reason(trainer)
        self.write(trainer, pl_module)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if trainer.state.fn != "fit":
            return
        self.stop_reason = exception_reason(exception)
        self.write(trainer, pl_module)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if Path(self.path).exists():  # add test metrics after fit's report
            self.write(trainer, pl_module)

    @rank_zero_only
    def write(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        runtime = time.perf_counter() - self.started
        ckpt = trainer.checkpoint_callback
        datamodule = trainer.datamodule
        previous = json.loads(Path(self.path).read_text()) if Path(self.path).exists() else {}
        final = {**previous.get("final_metrics", {}),
                 **{k: to_builtin(v) for k, v in trainer.callback_metrics.items()}}
        report = previous | {
            "hardware": {"accelerator": type(trainer.accelerator).__name__, "devices": trainer.num_devices,
                         "num_nodes": trainer.num_nodes, "strategy": type(trainer.strategy).__name__,
                         "precision": trainer.precision, "torch": torch.__version__,
                         "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()},
            "data": datamodule.report() if hasattr(datamodule, "report") else {},
            "model": pl_module.report() if hasattr(pl_module, "report") else {},
            "final_metrics": final,
        }
        if "training" not in previous or trainer.state.fn == "fit":
            report["training"] = {
                "global_step": trainer.global_step, "epochs": trainer.current_epoch,
                "runtime_s": round(runtime, 2),
                "train_samples_per_s": round(self.train_samples * trainer.world_size / runtime, 2) if runtime else None,
                "world_size": trainer.world_size, "stop_reason": self.stop_reason,
            }
            report["best_checkpoint"] = {
                "path": ckpt.best_model_path if ckpt else None, "monitor": ckpt.monitor if ckpt else None,
                "score": to_builtin(ckpt.best_model_score) if ckpt else None,
            }
        write_json(self.path, report)
        log.info("run report written to %s", self.path)
