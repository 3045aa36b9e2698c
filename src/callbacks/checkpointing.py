"""Checkpoints that survive interruptions: atomic writes, and a save on Ctrl+C / SIGTERM."""

import logging
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only

from src.errors import NonFiniteLossError

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write ``<dir>/.<name>.tmp`` in the checkpoint's own directory, fsync, then ``os.replace``:
    a kill mid-save leaves the previous file whole. (Lightning's fsspec transaction stages the
    file in the system temp dir, which is a copy, not a rename, when that is another filesystem.)
    Remote URLs keep Lightning's own handling.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


class LastCheckpoint(ModelCheckpoint):
    """``last.ckpt``: the latest state at every validation, and on Ctrl+C, SIGTERM or an error —
    but never on a non-finite loss, whose weights are not worth keeping."""

    def __init__(self, dirpath: str, **kwargs):
        super().__init__(dirpath=dirpath, filename="last", monitor=None, save_top_k=1, save_on_exception=True,
                         **kwargs)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, NonFiniteLossError) or trainer.state.fn != "fit":
            return  # a failure in test() after fit holds the best weights, not the state to resume
        super().on_exception(trainer, pl_module, exception)
        self._announce(trainer)

    @rank_zero_only
    def _announce(self, trainer: L.Trainer) -> None:
        path = Path(self.dirpath) / "last.ckpt"
        if path.is_file():
            log.warning("training stopped at step %d; its state is in %s — resume with ckpt_path=%s",
                        trainer.global_step, path, path)
