"""Checks every model family's training step runs."""

import torch
from lightning import LightningModule

from src.errors import NonFiniteLossError


def check_finite_loss(module: LightningModule, loss: torch.Tensor) -> None:
    """Stop before a NaN/inf loss reaches the optimizer, so the weights and last.ckpt stay good.

    Under DDP every rank takes the same decision (one flag all-reduced), so no rank is left waiting.
    """
    bad = not bool(torch.isfinite(loss.detach()).all())
    if module.trainer.world_size > 1:
        bad = module.trainer.strategy.reduce_boolean_decision(bad, all=False)
    if bad:
        raise NonFiniteLossError(
            f"training loss is {loss.item()} at step {module.global_step} (epoch {module.current_epoch}); "
            "training stopped and checkpoints/last.ckpt keeps the last good state — lower model.optimizer.lr "
            "or set trainer.gradient_clip_val, then resume with ckpt_path=<run dir>/checkpoints/last.ckpt")
