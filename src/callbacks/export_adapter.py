"""Export the best checkpoint as the ecosystem's own adapter format at the end of fit."""

import logging
from pathlib import Path

import lightning as L

from src.errors import UserError

log = logging.getLogger(__name__)


class ExportBestAdapter(L.Callback):
    """Loads the best checkpoint's adapter weights (the last weights if no checkpoint was kept) into the
    module on every process and writes ``module.export_adapter(dirpath)`` on global rank zero only.

    The weights are restored through the strategy, as Lightning restores ``ckpt_path="best"``: a plain
    file under DDP, the gathered full state under FSDP (``state_dict_type: full``), DeepSpeed's own
    checkpoint directory. The module keeps the best weights afterwards, so a following test run sees
    the exported model.
    """

    def __init__(self, dirpath: str):
        self.dirpath = dirpath
        self.source: str | None = None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or getattr(trainer, "fast_dev_run", False):
            return
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if best and Path(best).exists():
            try:
                checkpoint = trainer.strategy.load_checkpoint(best)
            except Exception as err:  # truncated or not a checkpoint
                raise UserError(f"cannot read the best checkpoint {best}: {err} — resume from last.ckpt") from err
            trainer.strategy.load_model_state_dict(checkpoint, strict=False)
            self.source = best
        else:
            self.source = "final weights (no best checkpoint was saved)"
        if trainer.is_global_zero:
            pl_module.export_adapter(self.dirpath)
            log.info("exported adapter from %s to %s", self.source, self.dirpath)
        trainer.strategy.barrier("export_adapter")  # no process moves on while rank zero still writes
