"""Early checks. A *problem* would stop or spoil the run on any machine (exit 2); a *warning* is about this
machine only (preflight usually runs on a laptop, for a run on a GPU machine)."""

import shutil
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from unittest import mock

import psutil
import torch
from omegaconf import DictConfig

from src.errors import UserError
from src.runtime import check_hardware

GB = 2**30


def hardware(cfg: DictConfig) -> tuple[list[str], list[str]]:
    """The trainer and quantization checks, first as on a machine with the hardware the config asks for
    (what fails there is a problem), then on this machine (what fails only here is a warning)."""
    problems, warnings = [], []
    present = [mock.patch("torch.cuda.is_available", return_value=True),
               mock.patch("torch.cuda.is_bf16_supported", return_value=True),
               mock.patch("torch.cuda.device_count", return_value=1024),
               mock.patch("torch.backends.mps.is_available", return_value=True),
               mock.patch("importlib.util.find_spec", return_value=object()),
               mock.patch("src.distributed.detected_cluster", return_value="torchrun")]
    try:
        with ExitStack() as stack:
            for patch in present:
                stack.enter_context(patch)
            check_hardware(cfg)
    except UserError as err:
        problems.append(str(err))
        return problems, warnings
    try:
        check_hardware(cfg)
    except UserError as err:
        warnings.append(f"on this machine: {err} (fine if the run is for another machine)")
    return problems, warnings


def generation_keys(family, generation: dict[str, Any]) -> list[str]:
    """Keys of ``model.generation`` that the family's generate() / pipeline does not take."""
    accepted, where = family.generation_arguments()
    return [f"model.generation.{key} is not an argument of {where} — remove it or fix its name"
            for key in generation if key not in accepted]


def output_dir(path: str, needed_bytes: int) -> list[str]:
    directory = Path(path)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory):
            pass
    except OSError as err:
        return [f"the run directory {directory} is not writable ({err.strerror}) — set hydra.run.dir or "
                "paths.log_dir to a writable place"]
    free = shutil.disk_usage(directory).free
    if needed_bytes > free:
        return [f"the checkpoints to keep need {needed_bytes / GB:.2f} GiB and {directory} has {free / GB:.2f} GiB "
                "free — free disk space, or keep fewer (callbacks.model_checkpoint.save_top_k)"]
    return []


def device_memory(trainer_cfg: DictConfig, given_gb: float | None) -> tuple[int | None, str]:
    """The target device's memory in bytes and where the figure comes from."""
    if given_gb:
        return int(float(given_gb) * GB), "preflight_device_memory_gb"
    accelerator = str(trainer_cfg.get("accelerator", "auto"))
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory, torch.cuda.get_device_name(0)
    if accelerator in ("mps", "auto") and torch.backends.mps.is_available():
        return int(torch.mps.recommended_max_memory()), "MPS recommended maximum"
    if accelerator in ("cpu", "auto"):
        return psutil.virtual_memory().total, "this machine's RAM"
    return None, f"unknown: no {accelerator} device here (set preflight_device_memory_gb=<GB of the target>)"
