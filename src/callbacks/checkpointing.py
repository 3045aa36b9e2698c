"""Checkpoints that survive interruptions: atomic writes, and a save on Ctrl+C / SIGTERM (also under ddp_spawn)."""

import logging
import threading
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.call import _interrupt
from lightning.pytorch.utilities import rank_zero_only

from src.atomic import atomic_path, remove_orphan_temp_files
from src.distributed import StopOnSignal, forward_interrupt_to_workers, is_spawned_worker, is_spawning_parent
from src.errors import NonFiniteLossError

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write ``<dir>/.<name>.<pid>.tmp`` in the checkpoint's own directory, fsync, ``os.replace``, fsync the
    directory: a kill mid-save leaves the previous file whole. (Lightning's fsspec transaction stages the
    file in the system temp dir, which is a copy, not a rename, when that is another filesystem.)
    The first save into a directory removes temporary files that killed processes left there.
    Remote URLs keep Lightning's own handling.
    """

    def __init__(self):
        super().__init__()
        self._swept: set[Path] = set()

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        if path.parent not in self._swept:
            self._swept.add(path.parent)
            remove_orphans(path.parent)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            torch.save(checkpoint, f)


def remove_orphans(directory: str | Path) -> None:
    for orphan in remove_orphan_temp_files(directory):
        log.info("removed %s, a partial checkpoint of a process that was killed while saving", orphan)


def _validation_due(trainer: L.Trainer) -> bool:
    """Whether the loop validates after the step that just ended (Lightning's own decision, or
    ValidationInterval's, which replaces it)."""
    fit_loop = trainer.fit_loop
    return bool(fit_loop.epoch_loop._should_check_val_fx(fit_loop._data_fetcher))


class LastCheckpoint(ModelCheckpoint):
    """``last.ckpt``: the latest state at every validation, and on Ctrl+C, SIGTERM or an error —
    but never on a non-finite loss, whose weights are not worth keeping.

    Under ``strategy=ddp_spawn`` the workers hold the state: they stop together on Ctrl+C / SIGTERM and save
    there (see ``StopOnSignal``); the spawning process only passes Ctrl+C on.
    """

    def __init__(self, dirpath: str, **kwargs):
        super().__init__(dirpath=dirpath, filename="last", monitor=None, save_top_k=1, save_on_exception=True,
                         **kwargs)
        self._stop: StopOnSignal | None = None
        self._last_step = 0
        self._stop_after_validation = 0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit" and trainer.is_global_zero:
            remove_orphans(self.dirpath)  # before the first save, which may be far away

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._last_step = trainer.global_step
        if not is_spawning_parent(trainer) and threading.current_thread() is threading.main_thread():
            # after Lightning registered its own SIGTERM handler, which this replaces: Lightning's stops after
            # any batch, which may be one whose gradients are still being accumulated
            self._stop = StopOnSignal(again_stops_now=not is_spawned_worker(trainer))
            self._stop.install()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        # only after an optimizer step: gradients accumulated so far are not in a checkpoint
        stepped, self._last_step = trainer.global_step != self._last_step, trainer.global_step
        signum = self._stop.agreed_signal(trainer) if self._stop and stepped else 0
        if not signum:
            return
        if _validation_due(trainer):
            # after this step's validation and checkpoints: a resumed run counts them as done and never runs them
            self._stop_after_validation = signum
            return
        self._stop_now(trainer, signum)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)  # last.ckpt; the top-k callback ran before this one
        signum, self._stop_after_validation = self._stop_after_validation, 0
        if signum and not trainer.sanity_checking:
            self._stop_now(trainer, signum)

    def _stop_now(self, trainer: L.Trainer, signum: int) -> None:
        self._restore_signal_handlers()
        exception = StopOnSignal.exception_for(signum)
        if is_spawned_worker(trainer):
            _interrupt(trainer, exception)  # Lightning's own interrupt handling, here where the state is
        raise exception  # in a single process, Lightning's handling around fit() catches it

    def _restore_signal_handlers(self) -> None:
        # before Lightning's teardown restores the handlers it replaced, or ours would reinstate its stale one
        if self._stop:
            self._stop.uninstall()
            self._stop = None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._restore_signal_handlers()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore_signal_handlers()
        super().teardown(trainer, pl_module, stage)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore_signal_handlers()
        if is_spawning_parent(trainer):
            if isinstance(exception, KeyboardInterrupt):
                forward_interrupt_to_workers(trainer)
            return  # no state here: the workers save theirs
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
