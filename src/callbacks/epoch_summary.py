"""One line per epoch with the numbers people watch."""

import logging

import lightning as L
from lightning.pytorch.utilities import rank_zero_only

log = logging.getLogger(__name__)


class EpochSummary(L.Callback):
    """``epoch 3/20 (step 90) | train/loss 1.234 | val/loss 1.101 | val/rougeL 0.2512 | val/bleu 10.31 | best 0.2700``"""

    def __init__(self, keys: tuple[str, ...] = ("train/loss_epoch", "val/loss", "val/rougeL", "val/bleu", "val/fid",
                                                 "val/kid", "val/clip_mean")):
        self.keys = tuple(keys)

    @rank_zero_only
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = trainer.callback_metrics
        epochs = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        parts = [f"epoch {trainer.current_epoch + 1}{epochs} (step {trainer.global_step})"]
        parts += [f"{k.removesuffix('_epoch')} {float(metrics[k]):.4g}" for k in self.keys if k in metrics]
        ckpt = trainer.checkpoint_callback
        if ckpt is not None and ckpt.best_model_score is not None:
            parts.append(f"best {ckpt.monitor} {float(ckpt.best_model_score):.4g}")
        log.info(" | ".join(parts))
