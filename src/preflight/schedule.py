"""The training schedule in optimizer steps, computed as Lightning will run it.

Lightning counts ``val_check_interval`` in batches per process, accumulates within an epoch and steps on
an epoch's last batch; ``val_every_n_steps`` (src/callbacks/validation_interval.py) validates at multiples
of optimizer steps instead. Both are simulated here so the steps announced are the steps that happen.
"""

import math
from typing import Any

import torch
from omegaconf import DictConfig

from src.callbacks.validation_interval import ValidationInterval, refuse_a_second_interval
from src.errors import UserError

SIMULATION_LIMIT = 20_000_000  # batches; beyond that only step-based intervals are announced


def device_count(trainer_cfg: DictConfig) -> tuple[int, str]:
    """Processes per node, and a note when ``devices: auto`` had to be guessed on this machine."""
    devices = trainer_cfg.get("devices", 1)
    accelerator = str(trainer_cfg.get("accelerator", "auto"))
    if isinstance(devices, str) and "," in devices:  # "0,1": these device indices
        return len([d for d in devices.split(",") if d.strip()]), ""
    if isinstance(devices, str) and devices.lstrip("-").isdigit():
        devices = int(devices)
    if isinstance(devices, int) and devices >= 0:
        return devices, ""
    if not isinstance(devices, (int, str)):  # a list of device indices
        return len(devices), ""
    # devices: auto or -1 (every device of the machine that trains)
    if accelerator in ("gpu", "cuda") and torch.cuda.is_available():
        return torch.cuda.device_count(), ""
    if accelerator in ("gpu", "cuda"):
        return 1, "devices=auto counted as 1 GPU (no GPU here to count): set trainer.devices for the target"
    return 1, ""


def _batches_per_epoch(samples: int, world: int, batch_size: int, limit: Any) -> int:
    per_process = math.ceil(samples / world)  # Lightning's DistributedSampler pads to equal shares
    batches = math.ceil(per_process / batch_size)
    if isinstance(limit, int) and not isinstance(limit, bool):
        return min(batches, limit)
    if limit is not None and float(limit) < 1.0:
        if int(batches * float(limit)) == 0:  # Lightning refuses this at fit start
            raise UserError(f"trainer.limit_train_batches={limit} of {batches} batches is less than one batch — "
                            f"raise it to at least {1 / batches:.3g}")
        return int(batches * float(limit))
    return batches


def _validation_rounds(trainer_cfg: DictConfig, every_n_steps: int | None, batches: int, accumulate: int,
                       total_steps: int, epochs: int) -> tuple[list[int], str]:
    """The optimizer step at each validation round (a step repeats when several batches of one accumulation
    window validate), and a note when they cannot be announced."""
    if every_n_steps:  # the multiples, and the run's last step (src/callbacks/validation_interval.py)
        steps = list(range(every_n_steps, total_steps + 1, every_n_steps))
        return (steps if steps and steps[-1] == total_steps else [*steps, total_steps]), ""
    limit_val = trainer_cfg.get("limit_val_batches")
    if limit_val is not None and float(limit_val) == 0:
        return [], ""
    interval = trainer_cfg.get("val_check_interval")
    interval = 1.0 if interval is None else interval  # Lightning's default
    if isinstance(interval, (str, dict)):  # a time interval: when depends on speed
        return [], f"validation every {interval} of wall time: the steps depend on the machine's speed"
    every_epochs = trainer_cfg.get("check_val_every_n_epoch", 1)
    if every_epochs is None and not isinstance(interval, int):
        raise UserError("trainer.check_val_every_n_epoch=null needs an int trainer.val_check_interval "
                        "(or set val_every_n_steps)")
    if isinstance(interval, int):
        if every_epochs is not None and interval > batches:  # as Lightning refuses it at fit start
            raise UserError(f"trainer.val_check_interval={interval} batches is longer than an epoch of {batches} — "
                            "lower it, set trainer.check_val_every_n_epoch=null to count across epochs, or use "
                            "val_every_n_steps")
        check_batch = interval
    elif float(interval) == 1.0:
        check_batch = None  # the epoch's last batch
    else:
        check_batch = max(1, int(batches * float(interval)))
    if batches * epochs > SIMULATION_LIMIT:
        raise UserError(f"{batches * epochs} training batches are too many to simulate — set val_every_n_steps")
    rounds, step, total_batch = [], 0, 0
    for epoch in range(epochs):
        for i in range(batches):
            last = i == batches - 1
            if (i + 1) % accumulate == 0 or last:  # Lightning steps on the epoch's last batch too
                step += 1
            counter = total_batch if every_epochs is None else i
            if every_epochs is None or (epoch + 1) % every_epochs == 0:
                if last if check_batch is None else (counter + 1) % check_batch == 0:
                    rounds.append(step)
            total_batch += 1
            if step >= total_steps:
                return rounds, ""
    return rounds, ""


def plan_schedule(cfg: DictConfig, train_samples: int) -> dict[str, Any]:
    trainer_cfg = cfg.trainer
    batch_size = int(cfg.data.batch_size)
    accumulate = int(trainer_cfg.get("accumulate_grad_batches", 1) or 1)
    devices, note = device_count(trainer_cfg)
    nodes = int(trainer_cfg.get("num_nodes", 1) or 1)
    world = devices * nodes
    batches = _batches_per_epoch(train_samples, world, batch_size, trainer_cfg.get("limit_train_batches"))
    steps_per_epoch = math.ceil(batches / accumulate) if batches else 0
    max_steps = trainer_cfg.get("max_steps", -1)
    max_epochs = trainer_cfg.get("max_epochs")
    max_steps = None if max_steps in (None, -1) else int(max_steps)
    max_epochs = None if max_epochs in (None, -1) else int(max_epochs)
    if max_steps is None and max_epochs is None:
        raise UserError("the run has no end: set trainer.max_steps or trainer.max_epochs")
    if steps_per_epoch == 0:
        raise UserError(f"{train_samples} training samples give no batch — add data or lower data.batch_size")
    by_epochs = steps_per_epoch * max_epochs if max_epochs is not None else None
    total = min(s for s in (max_steps, by_epochs) if s is not None)
    epochs = math.ceil(total / steps_per_epoch)
    every_n_steps = cfg.get("val_every_n_steps")
    ValidationInterval(every_n_steps)  # refuses what the run's callback would refuse
    refuse_a_second_interval(every_n_steps, trainer_cfg.get("val_check_interval", 1.0),
                             trainer_cfg.get("check_val_every_n_epoch", 1))
    validation, note_rounds = _validation_rounds(trainer_cfg, every_n_steps, batches, accumulate, total, epochs)
    # ModelCheckpoint writes after a validation (save_on_train_epoch_end: false), once per step, never at step 0
    saved = sorted({step for step in validation if step > 0})
    checkpoint = cfg.get("callbacks", {}).get("model_checkpoint") or {}
    top_k = checkpoint.get("save_top_k", 1)
    kept = len(saved) if top_k == -1 else min(int(top_k), len(saved))
    early = (cfg.get("callbacks") or {}).get("early_stopping")
    return {
        "batch_size": batch_size, "accumulate_grad_batches": accumulate, "devices": devices, "num_nodes": nodes,
        "effective_batch": batch_size * accumulate * world, "train_samples": train_samples,
        "batches_per_epoch_per_process": batches, "optimizer_steps_per_epoch": steps_per_epoch,
        "epochs": epochs, "optimizer_steps_total": total, "monitor": cfg.model.monitor, "mode": cfg.model.mode,
        "val_every_n_steps": every_n_steps, "validation_steps": validation,
        "checkpoint_steps": saved if checkpoint else [],
        "checkpoints_kept": kept if checkpoint else 0,
        "early_stopping_patience": early.get("patience") if early else None,
        "notes": [n for n in (note, note_rounds) if n],
    }
