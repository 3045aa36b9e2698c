"""Validate (and so checkpoint) every N optimizer steps, as Hugging Face's ``eval_steps`` / ``save_steps`` do.

Lightning's ``val_check_interval`` counts training batches per process. With gradient accumulation that is
N x accumulate_grad_batches, and not even exactly: Lightning restarts accumulation at every epoch and steps
on an epoch's last batch, so a batch count drifts off the step multiples when an epoch's length is not a
multiple of the accumulation. Lightning has no public hook for "after this optimizer step", so this callback
replaces the decision of its training epoch loop (``_should_check_val_fx``, Lightning 2.6) on the trainer it
runs in, keeping Lightning's own checks (validation enabled for this epoch, an early-stopping request).
"""

from datetime import timedelta
from types import MethodType
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from src.errors import UserError


class ValidationInterval(L.Callback):
    """Validate right after each optimizer step that makes ``trainer.global_step % every_n_steps == 0`` and after
    the run's last step (so the final weights are scored and checkpointed, as Hugging Face Trainer saves at the
    end), at no other epoch end; ``every_n_steps=None`` leaves Lightning's ``val_check_interval`` /
    ``check_val_every_n_epoch`` in charge.

    >>> ValidationInterval(every_n_steps=500).every_n_steps
    500
    """

    def __init__(self, every_n_steps: int | None = None, val_check_interval: Any = None,
                 check_val_every_n_epoch: Any = 1):
        """``val_check_interval`` / ``check_val_every_n_epoch``: the trainer's config, when known, so that a
        conflict is refused here, in the process that reads the config, rather than in ddp_spawn workers."""
        if every_n_steps is not None and (isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int)
                                          or every_n_steps < 1):
            raise UserError(f"val_every_n_steps={every_n_steps!r} is not a positive number of optimizer steps — "
                            "set a whole number such as val_every_n_steps=500, or null for Lightning's interval")
        self.every_n_steps = every_n_steps
        if val_check_interval is not None:
            refuse_a_second_interval(every_n_steps, val_check_interval, check_val_every_n_epoch)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.every_n_steps is None or stage != "fit" or trainer.fast_dev_run:
            return  # fast_dev_run: Lightning's one training and one validation batch
        time_interval = trainer._val_check_time_interval
        refuse_a_second_interval(self.every_n_steps, trainer.val_check_interval if time_interval is None
                                 else timedelta(seconds=time_interval), trainer.check_val_every_n_epoch)
        epoch_loop = trainer.fit_loop.epoch_loop
        every_n_steps = self.every_n_steps

        def should_check_val(loop, data_fetcher) -> bool:
            if not loop._should_check_val_epoch():  # no validation data, limit_val_batches=0
                return False
            if loop.trainer.should_stop and loop.trainer.fit_loop._can_stop_early:
                return True  # as Lightning: validate once more when early stopping ends the run
            # a pure function of the loop's state: on resume, Lightning asks again before the next batch and
            # skips the validation that already ran at the saved step (restarted_on_last)
            stepped = not loop._should_accumulate()
            return stepped and loop.global_step > 0 and (loop.global_step % every_n_steps == 0 or _run_ends_here(loop))

        epoch_loop._should_check_val_fx = MethodType(should_check_val, epoch_loop)
        # left at None, these follow val_check_interval=1.0 and would save or check at every epoch end too
        for callback in trainer.callbacks:
            if isinstance(callback, ModelCheckpoint) and callback._save_on_train_epoch_end is None:
                callback._save_on_train_epoch_end = False
            if isinstance(callback, EarlyStopping) and callback._check_on_train_epoch_end is None:
                callback._check_on_train_epoch_end = False

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":  # back to Lightning's own method for any later fit with this trainer
            trainer.fit_loop.epoch_loop.__dict__.pop("_should_check_val_fx", None)


def _run_ends_here(loop) -> bool:
    """This optimizer step is the run's last: max_steps reached, or the last batch of the last epoch."""
    fit_loop = loop.trainer.fit_loop
    if fit_loop.max_steps > 0 and loop.global_step >= fit_loop.max_steps:
        return True
    max_epochs = fit_loop.max_epochs
    return (max_epochs is not None and max_epochs >= 0 and loop._num_ready_batches_reached()
            and loop.trainer.current_epoch + 1 >= max_epochs)


def refuse_a_second_interval(every_n_steps: int | None, val_check_interval: Any,
                             check_val_every_n_epoch: Any) -> None:
    """A UserError when ``val_every_n_steps`` is set beside a batch, fraction or time ``val_check_interval``, or
    beside a ``check_val_every_n_epoch`` that would skip whole epochs."""
    if every_n_steps is None:
        return
    if isinstance(val_check_interval, (int, str, dict, timedelta)) or val_check_interval != 1.0:
        raise UserError(f"val_every_n_steps={every_n_steps} and trainer.val_check_interval={val_check_interval} both "
                        "say when to validate — keep one: val_every_n_steps=null, or trainer.val_check_interval=1.0 "
                        "(val_every_n_steps counts optimizer steps, val_check_interval training batches)")
    if check_val_every_n_epoch not in (None, 1):
        raise UserError(f"val_every_n_steps={every_n_steps} with trainer.check_val_every_n_epoch="
                        f"{check_val_every_n_epoch} would skip the step multiples in some epochs — set "
                        "trainer.check_val_every_n_epoch=1, or val_every_n_steps=null")
