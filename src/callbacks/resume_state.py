"""What a resumed run needs beyond Lightning's checkpoint to continue the same run: the random number
generators of every process and early stopping that waits for a fresh
validation. (The training order is resumed by the loader itself: src/datamodules/sampling.py.)"""

import logging
import random
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason

log = logging.getLogger(__name__)


def rng_states() -> dict[str, Any]:
    """This process's generators: Python, NumPy, torch CPU and (when present) CUDA."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    # plain values and tensors only: checkpoints stay loadable with torch.load(weights_only=True)
    states = {"python": random.getstate(), "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos),
                                                     int(has_gauss), float(gauss)),
              "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class ResumeState(L.Callback):
    """Saves every process's RNG states in checkpoints and restores them right before the first resumed
    training batch: after Lightning's restore, after the training pass has started (and any validation a
    restart re-runs), so the next dropout mask and diffusion noise are the ones the uninterrupted run drew.

    (A Ctrl+C stops between optimizer steps, so the checkpoint it writes holds a finished step: ``LastCheckpoint``.)
    """

    def __init__(self):
        self._pending: dict[str, Any] | None = None

    # -- RNG states ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        # called on every process while a checkpoint is written; only rank zero's file is kept, so gather
        mine = rng_states()
        if torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            every = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(every, mine)
            return {"rng": every}
        return {"rng": [mine]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = {"rng": state_dict.get("rng") or []}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning hands the saved loader position to a stateful training loader when it builds the loader
        # after the restore; ``configure_optimizers`` reading ``trainer.estimated_stepping_batches`` builds it
        # before, and the position would be dropped. Hand it over now, before the first batch is drawn.
        load_positions = getattr(trainer.fit_loop, "_load_combined_loader_states", None)
        if load_positions is not None:
            load_positions()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self._pending is None:
            return
        saved, self._pending = self._pending["rng"], None
        if len(saved) == trainer.world_size:
            set_rng_states(saved[trainer.global_rank])
        else:
            log.warning("the checkpoint holds the RNG states of %d process(es), this run has %d: random draws "
                        "(dropout, noise) continue from the seed instead", len(saved), trainer.world_size)


class ResumableEarlyStopping(EarlyStopping):
    """Lightning's ``EarlyStopping`` that judges only after a validation of this fit.

    A resumed run starts with no logged metrics; when its first epoch ends before any validation (a
    ``max_steps`` reached mid-epoch), the epoch-end check would find no monitored value and stop the run
    with an error. The saved wait count and best score stay in force for the next validation.
    """

    @property
    def state_key(self) -> str:  # the same key as Lightning's class: older checkpoints restore into this one
        return f"EarlyStopping{{'monitor': '{self.monitor}', 'mode': '{self.mode}'}}"

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._validated = False
        self.stop_message: str | None = None  # why this fit stopped early (the run report's stop_reason)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._validated = True
        super().on_validation_end(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not getattr(self, "_validated", True) and self.monitor not in trainer.callback_metrics:
            return  # nothing new to judge since the run (re)started
        super().on_train_epoch_end(trainer, pl_module)

    def _run_early_stopping_check(self, trainer: L.Trainer) -> None:
        already_stopping = trainer.should_stop
        super()._run_early_stopping_check(trainer)
        if trainer.should_stop and not already_stopping and getattr(self, "stop_message", None) is None:
            self.stop_message = self.why_stopped(trainer)
            if trainer.is_global_zero:
                log.info("early stopping at step %d (epoch %d): %s", trainer.global_step, trainer.current_epoch + 1,
                         self.stop_message)

    def why_stopped(self, trainer: L.Trainer) -> str:
        """The reason in words, e.g. ``val/rougeL has not improved on 0.3124 for 3 validations (patience 3)``."""
        current = trainer.callback_metrics.get(self.monitor)
        current = float(current) if current is not None else float("nan")
        best = float(self.best_score)
        if self.stopping_reason == EarlyStoppingReason.NON_FINITE_METRIC:
            return f"{self.monitor} is {current} (best was {best:.4g})"
        if self.stopping_reason == EarlyStoppingReason.STOPPING_THRESHOLD:
            return f"{self.monitor} reached {current:.4g}, the stopping threshold {self.stopping_threshold}"
        if self.stopping_reason == EarlyStoppingReason.DIVERGENCE_THRESHOLD:
            return f"{self.monitor} reached {current:.4g}, past the divergence threshold {self.divergence_threshold}"
        if self.stopping_reason == EarlyStoppingReason.PATIENCE_EXHAUSTED:
            delta = f", min_delta {abs(self.min_delta):g}" if self.min_delta else ""
            return (f"{self.monitor} has not improved on {best:.4g} for {self.wait_count} validation"
                    f"{'s' if self.wait_count != 1 else ''} (patience {self.patience}{delta})")
        return f"another process's {self.monitor} asked to stop"  # ddp: any process may decide for all
