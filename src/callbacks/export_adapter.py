"""Export the best checkpoint as the ecosystem's own adapter format at the end of fit."""

import logging
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_only

from src.modules.adapter_checkpoint import trainable_state_from_checkpoint

log = logging.getLogger(__name__)


class ExportBestAdapter(L.Callback):
    """Loads the best checkpoint's adapter weights (the last weights if no checkpoint was kept)
    into the module and writes ``module.export_adapter(dirpath)`` on rank zero.

    The module keeps the best weights afterwards, so a following test run sees the exported model.
    """

    def __init__(self, dirpath: str):
        self.dirpath = dirpath
        self.source: str | None = None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or getattr(trainer, "fast_dev_run", False):
            return
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if best and Path(best).is_file():
            pl_module.load_state_dict(trainable_state_from_checkpoint(best))
            self.source = best
        else:
            self.source = "final weights (no best checkpoint was saved)"
        self._export(pl_module)

    @rank_zero_only
    def _export(self, pl_module: L.LightningModule) -> None:
        pl_module.export_adapter(self.dirpath)
        log.info("exported adapter from %s to %s", self.source, self.dirpath)
