"""The run report: ``metrics.json`` in the run directory at the end of fit; while fit runs, a marker
(``RUNNING_MARKER``) saying which process trains, so the dashboard can tell a live run from a killed one."""

import json
import logging
import os
import platform
import socket
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lightning as L
import psutil
import torch
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch.utils.flop_counter import FlopCounterMode

from src.atomic import atomic_write_json, remove_orphan_temp_files
from src.outputs import to_builtin, write_json
from src.callbacks.run_start import GB, describe_device, device_facts, effective_batch
from src.distributed import is_spawning_parent
from src.errors import NonFiniteLossError

log = logging.getLogger(__name__)

RUNNING_MARKER = ".lorafit_running"  # in the run directory from fit start to the report's last write

def batch_size_of(batch: Any) -> int:
    """Samples in a dict batch: the length of its first tensor or list."""
    for value in (batch.values() if isinstance(batch, dict) else [batch]):
        if isinstance(value, (torch.Tensor, list, tuple)):
            return len(value)
    return 1


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_running_marker(run_dir: Path) -> None:
    """``{pid, hostname, create_time, started}`` of this process: a marker left by a killed process names a pid
    that no longer runs (or, reused, one with another start time)."""
    atomic_write_json(run_dir / RUNNING_MARKER, {
        "pid": os.getpid(), "hostname": socket.gethostname(), "create_time": psutil.Process().create_time(),
        "started": utc_now()})


def remove_running_marker(run_dir: Path) -> None:
    (run_dir / RUNNING_MARKER).unlink(missing_ok=True)


def fit_end_reason(trainer: L.Trainer) -> str:
    for callback in trainer.callbacks:
        if not isinstance(callback, EarlyStopping):
            continue
        why = getattr(callback, "stop_message", None)  # ResumableEarlyStopping: set in this fit, logged as it fired
        if why is None and not hasattr(callback, "stop_message") and \
                callback.stopping_reason != EarlyStoppingReason.NOT_STOPPED:
            why = callback.stopping_reason_message  # Lightning's own class
        if why:
            return f"early_stopping: {why}"
    if trainer.max_steps not in (-1, None) and trainer.global_step >= trainer.max_steps:
        return "max_steps"
    return "max_epochs"


def software() -> dict[str, Any]:
    """Library versions and which accelerator backends this build of torch has (None: not in this build)."""
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {"torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
            "cudnn": cudnn, "mps_available": torch.backends.mps.is_available(), "lightning": L.__version__}


def sequence_limits(datamodule: Any) -> dict[str, Any]:
    """The input sizes the data was cut to: token lengths for text, the image side for diffusion."""
    hparams = getattr(datamodule, "hparams", {}) or {}
    limits = {k: hparams[k] for k in ("max_source_length", "max_target_length", "max_length") if hparams.get(k)}
    resolution = getattr(datamodule, "resolution", None)  # the model's, connected to image data
    return {**limits, **({"resolution": resolution} if resolution else {})}


def flops_estimate(parameters: int, tokens: int | None) -> dict[str, Any]:
    """Training FLOPs by the usual transformer rule: 2·N per token forward, 4·N backward (Kaplan et al. 2020).
    N counts the frozen weights too: activations flow back through them (LoRA skips only their weight
    gradients, so this overestimates a LoRA step by up to a third)."""
    total = 6 * parameters * tokens if tokens is not None else None
    return {"total": total, "method": "6*N*tokens", "parameters": parameters, "tokens": tokens}


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
        self.started_at: str | None = None
        self.train_samples = 0
        self.train_batches = 0
        self.train_tokens: torch.Tensor | int | None = None  # on the device: no sync per batch
        self.flops_per_batch: int | None = None  # measured on the first batch when tokens are not counted
        self._flop_counter: FlopCounterMode | None = None
        self.mps_peak = 0
        self.stop_reason: str | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started = time.perf_counter()
        self.started_at = utc_now()
        self.train_samples = self.train_batches = self.mps_peak = 0
        self.train_tokens = 0 if hasattr(pl_module, "tokens_in") else None
        self.flops_per_batch = None
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(trainer.strategy.root_device)
        if trainer.is_global_zero:
            remove_orphan_temp_files(Path(self.path).parent)  # a report a killed run was writing
            write_running_marker(Path(self.path).parent)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.train_tokens is None and self.flops_per_batch is None and self._flop_counter is None:
            # no token count to estimate from (diffusion): count the FLOPs of one batch's forward and backward
            self._flop_counter = FlopCounterMode(display=False)
            self._flop_counter.__enter__()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.stop_flop_counter()
        self.train_samples += batch_size_of(batch)
        self.train_batches += 1
        if self.train_tokens is not None:
            self.train_tokens = self.train_tokens + pl_module.tokens_in(batch)
        if trainer.strategy.root_device.type == "mps" and hasattr(torch.mps, "driver_allocated_memory"):
            self.mps_peak = max(self.mps_peak, torch.mps.driver_allocated_memory())  # MPS keeps no peak itself

    def stop_flop_counter(self) -> None:
        if self._flop_counter is not None:
            counter, self._flop_counter = self._flop_counter, None
            counter.__exit__(None, None, None)
            self.flops_per_batch = counter.get_total_flops()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if isinstance(self.train_tokens, torch.Tensor) and trainer.world_size > 1:  # every process's batches
            self.train_tokens = trainer.strategy.reduce(self.train_tokens, reduce_op="sum")
        self.stop_reason = self.stop_reason or fit_end_reason(trainer)
        self.write(trainer, pl_module)
        self.fit_ended()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if trainer.state.fn != "fit":
            return
        if is_spawning_parent(trainer) and isinstance(exception, (KeyboardInterrupt, SIGTERMException)):
            return  # ddp_spawn: the workers stop and report with their state; this process trained nothing
        self.stop_flop_counter()
        if isinstance(self.train_tokens, torch.Tensor):  # no collective after an error: estimate from this share
            self.train_tokens = self.train_tokens * trainer.world_size
        self.stop_reason = exception_reason(exception)
        self.write(trainer, pl_module)
        self.fit_ended()

    @rank_zero_only
    def fit_ended(self) -> None:
        remove_running_marker(Path(self.path).parent)  # after the report: its stop reason says how fit ended

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if Path(self.path).exists():  # add test metrics after fit's report
            self.write(trainer, pl_module)

    def device_section(self, trainer: L.Trainer) -> dict[str, Any]:
        """The training device's name and memory, with the peak this fit used (None where there is no GPU)."""
        device = trainer.strategy.root_device
        facts = device_facts(device)
        peak, source = None, None
        if device.type == "cuda":
            peak, source = torch.cuda.max_memory_allocated(device), "torch.cuda.max_memory_allocated"
        elif device.type == "mps" and self.mps_peak:
            peak, source = self.mps_peak, "torch.mps.driver_allocated_memory, highest at a training batch end"
        return {"device": describe_device(facts, trainer.num_devices), "gpu": facts["gpu"],
                "vram_total_gb": facts["vram_total_gb"], "vram_peak_gb": round(peak / GB, 3) if peak else None,
                "vram_peak_source": source, "ram_gb": facts["ram_gb"]}

    def compute_section(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """Tokens trained on and the estimated training FLOPs of this fit."""
        tokens = int(self.train_tokens) if self.train_tokens is not None else None
        if tokens is not None:
            return {"tokens": tokens, "flops": flops_estimate(pl_module.count_parameters()["total"], tokens)}
        batches = self.train_batches * trainer.world_size
        total = self.flops_per_batch * batches if self.flops_per_batch is not None else None
        return {"tokens": None, "flops": {"total": total, "method": "measured_first_batch*batches",
                                          "per_batch": self.flops_per_batch, "batches": batches}}

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
                         "precision": trainer.precision, **software(),
                         "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                         **self.device_section(trainer)},
            "data": {**(datamodule.report() if hasattr(datamodule, "report") else {}), **sequence_limits(datamodule)},
            "model": pl_module.report() if hasattr(pl_module, "report") else {},
            "final_metrics": final,
        }
        if "training" not in previous or trainer.state.fn == "fit":
            report["timestamp"] = {"start": self.started_at, "end": utc_now()}
            report["training"] = {
                "global_step": trainer.global_step, "epochs": trainer.current_epoch,
                "runtime_s": round(runtime, 2),
                "train_samples_per_s": round(self.train_samples * trainer.world_size / runtime, 2) if runtime else None,
                "world_size": trainer.world_size, "stop_reason": self.stop_reason,
                "effective_batch": effective_batch(trainer), **self.compute_section(trainer, pl_module),
            }
            report["best_checkpoint"] = {
                "path": ckpt.best_model_path if ckpt else None, "monitor": ckpt.monitor if ckpt else None,
                "score": to_builtin(ckpt.best_model_score) if ckpt else None,
            }
        write_json(self.path, report)
        log.info("run report written to %s", self.path)
