"""What a run trains on, said once at the start: the device and its memory, the effective batch, and the
trainable share of the parameters. The same figures go into the run report (``run_report.py``)."""

import logging
import os
import platform
import subprocess
import sys
from typing import Any

import lightning as L
import psutil
import torch
from lightning.pytorch.utilities import rank_zero_only

log = logging.getLogger(__name__)

GB = 2**30


def cpu_cores() -> int:
    """Cores this process may run on (a container's share, not the host's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def apple_chip() -> str | None:
    if sys.platform != "darwin":
        return None
    try:
        return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                              timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def device_facts(device: torch.device) -> dict[str, Any]:
    """Name and memory of the device a process trains on; GPU fields are None on a CPU."""
    facts: dict[str, Any] = {"type": device.type, "gpu": None, "vram_total_gb": None, "ram_gb": None}
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        facts |= {"index": index, "gpu": props.name, "vram_total_gb": round(props.total_memory / GB, 2)}
    elif device.type == "mps":
        recommended = getattr(torch.mps, "recommended_max_memory", None)  # the GPU's share of unified memory
        facts |= {"gpu": apple_chip() or platform.machine(),
                  "vram_total_gb": round(recommended() / GB, 2) if recommended else None,
                  "ram_gb": round(psutil.virtual_memory().total / GB, 1)}
    else:
        facts |= {"cores": cpu_cores(), "ram_gb": round(psutil.virtual_memory().total / GB, 1)}
    return facts


def describe_device(facts: dict[str, Any], devices: int = 1) -> str:
    """``cpu (2 cores, 15.5 GB RAM)``, ``cuda:0 NVIDIA A100 (80.0 GB)``, ``mps (Apple M2, 16.0 GB unified)``."""
    count = f" × {devices}" if devices > 1 else ""
    if facts["type"] == "cuda":
        return f"cuda:{facts['index']} {facts['gpu']} ({facts['vram_total_gb']:.1f} GB){count}"
    if facts["type"] == "mps":
        return f"mps ({facts['gpu']}, {facts['ram_gb']:.1f} GB unified)"
    return f"{facts['type']} ({facts.get('cores', '?')} cores, {facts['ram_gb']:.1f} GB RAM){count}"


def effective_batch(trainer: L.Trainer) -> dict[str, int | None]:
    """Samples per optimizer step: per-device batch × gradient accumulation × processes."""
    hparams = getattr(trainer.datamodule, "hparams", {}) or {}
    per_device = hparams.get("batch_size")
    accumulation, world = int(trainer.accumulate_grad_batches), int(trainer.world_size)
    return {"total": per_device * accumulation * world if per_device else None, "per_device": per_device,
            "accumulation": accumulation, "world_size": world}


def describe_batch(batch: dict[str, int | None]) -> str:
    devices = f"{batch['world_size']} device{'s' if batch['world_size'] != 1 else ''}"
    if batch["total"] is None:  # a datamodule without hparams.batch_size
        return f"effective batch: the per-device batch × {batch['accumulation']} accumulation × {devices}"
    return (f"effective batch {batch['total']} = {batch['per_device']} per device × {batch['accumulation']} "
            f"accumulation × {devices}")


def describe_parameters(counts: dict[str, int]) -> str:
    share = 100 * counts["trainable"] / counts["total"] if counts["total"] else 0.0
    return f"parameters: {counts['trainable']:,} trainable of {counts['total']:,} ({share:.3f}%)"


class RunStart(L.Callback):
    """Logs, once on rank zero when fit starts::

        device: cpu (2 cores, 15.5 GB RAM)
        effective batch 16 = 16 per device × 1 accumulation × 1 device
        parameters: 73,728 trainable of 287,424 (25.651%)
    """

    @rank_zero_only
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        facts = device_facts(trainer.strategy.root_device)
        log.info("device: %s", describe_device(facts, trainer.num_devices))
        log.info(describe_batch(effective_batch(trainer)))
        log.info(describe_parameters(pl_module.count_parameters()))
