"""What every LoRA family shares: the monitored metric and its best value, optimizers from config,
adapter-only checkpoints, the training-loss guard, and writing evaluation outputs."""

import json
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torchmetrics import MaxMetric, MeanMetric, Metric, MinMetric

from src.distributed import unshare_metric_states
from src.errors import UserError
from src.modules.adapter_checkpoint import TrainableStateDictMixin
from src.modules.guards import check_finite_loss

MODES = {"max": MaxMetric, "min": MinMetric}


def comparable(value: Any) -> Any:
    """LoRA settings as plain, order-free values (target_modules may be a set, a list or "all-linear")."""
    return sorted(value) if isinstance(value, (set, list, tuple)) else value


class LoRAModuleBase(TrainableStateDictMixin, L.LightningModule):
    """What every family's LightningModule shares. A family's module sets ``family_name`` (the registry's name,
    ``src/families/names.py``) and ``monitorable`` (the scores ``monitor`` may name, each with the torchmetrics
    ``Metric`` whose ``higher_is_better`` says which way is better), builds its model, and implements
    the methods below that raise ``NotImplementedError``: ``training_step``, ``eval_step`` and
    ``finish_eval_round`` (Lightning's validation and test hooks call them), ``export_adapter``, ``load_adapter``
    and ``adapters_disabled``; ``start_eval_round`` and ``extra_report`` are optional."""

    family_name: str = ""
    monitorable: dict[str, type[Metric]] = {}

    def __init__(self, pretrained: str, lora, optimizer, scheduler=None, generation: dict | None = None,
                 monitor: str = "", mode: str = "max"):
        super().__init__()
        if mode not in MODES:
            raise UserError(f"model.mode={mode!r} must be 'max' or 'min'")
        stage, _, name = monitor.partition("/")
        if stage != "val" or name not in self.monitorable:
            raise UserError(f"model.monitor={monitor!r}: use one of " + ", ".join(f"val/{m}" for m in self.monitorable))
        better = "max" if self.monitorable[name].higher_is_better else "min"
        if better != mode:
            raise UserError(f"model.monitor={monitor} is better when {'higher' if better == 'max' else 'lower'}"
                            f" — set model.mode={better}")
        self.pretrained = str(pretrained)
        self.lora_config = lora
        self.generation = dict(generation or {})
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.monitor, self.mode = monitor, mode
        self.train_loss = MeanMetric()
        self.best = MODES[mode]()
        self.predictions: list[dict[str, Any]] = []

    def setup(self, stage: str) -> None:
        unshare_metric_states(self)  # runs in each process, after ddp_spawn has shared the module's tensors

    # -- training ------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        raise NotImplementedError

    def log_train_loss(self, loss: torch.Tensor) -> None:
        check_finite_loss(self, loss)
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        self.train_loss.update(loss)  # a Metric object: the epoch mean is synced across processes once
        self.log("train/loss_epoch", self.train_loss, on_step=False, on_epoch=True)

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params=params)
        if self.scheduler_factory is None:
            return optimizer
        total = self.trainer.estimated_stepping_batches
        if total == float("inf"):
            raise UserError("the learning-rate schedule needs a finite run — set trainer.max_steps or "
                            "trainer.max_epochs (or model.scheduler=null)")
        scheduler = self.scheduler_factory(optimizer=optimizer, num_training_steps=int(total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)  # the adapter record (family, base, LoRA settings)
        # the best score is metric state, not a parameter: keep it so a resumed run's *_best is honest
        checkpoint["best_score"] = self.best.compute().item() if self.best.update_called else None
        # mid-epoch, so is the running epoch loss: a resumed epoch then averages over all of its batches
        trainer = self._trainer
        mid_epoch = trainer is not None and not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        if mid_epoch and trainer.state.fn == "fit":
            checkpoint["train_loss_epoch_state"] = {k: v.detach().cpu().clone()
                                                    for k, v in self.train_loss.metric_state.items()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.best.reset()
        if checkpoint.get("best_score") is not None:
            self.best.update(torch.tensor(checkpoint["best_score"]))
        self.train_loss.reset()
        saved = checkpoint.get("train_loss_epoch_state")
        # one process's share only: under ddp the epoch mean starts afresh rather than counting one share twice
        if saved and (self._trainer is None or self._trainer.world_size == 1):
            for name, value in saved.items():
                setattr(self.train_loss, name, value.to(self.train_loss.device))
            self.train_loss._update_count = 1

    # -- evaluation: Lightning's validation and test hooks, one round per epoch --------------------------
    def start_eval_round(self, stage: str) -> None:
        """Before a validation or test round (``stage`` is "val" or "test")."""
        self.predictions = []

    def eval_step(self, stage: str, batch: dict[str, Any]) -> None:
        raise NotImplementedError

    def finish_eval_round(self, stage: str) -> None:
        """Compute, log (``log_scores``) and reset the round's metrics."""
        raise NotImplementedError

    def on_validation_epoch_start(self) -> None:
        self.start_eval_round("val")

    def on_test_epoch_start(self) -> None:
        self.start_eval_round("test")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.eval_step("val", batch)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.eval_step("test", batch)

    def on_validation_epoch_end(self) -> None:
        self.finish_eval_round("val")

    def on_test_epoch_end(self) -> None:
        self.finish_eval_round("test")

    def log_scores(self, stage: str, scores: dict[str, torch.Tensor]) -> None:
        """Log ``<stage>/<name>`` and, while fitting, ``<monitor>_best``."""
        scores = {f"{stage}/{k}": v for k, v in scores.items()}
        # values computed by torchmetrics are already synced, so every rank holds the same numbers
        # and sync_dist's mean leaves them unchanged
        self.log_dict(scores, prog_bar=True, sync_dist=True)
        if stage == "val" and self.trainer.state.fn == "fit" and not self.trainer.sanity_checking:
            self.best.update(scores[self.monitor])
            self.log(f"{self.monitor}_best", self.best.compute(), sync_dist=True)

    def write_predictions(self, directory: str | Path) -> None:
        """``predictions.jsonl``, one line per evaluated sample (families may add files)."""
        with open(Path(directory) / "predictions.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(p, ensure_ascii=False) + "\n" for p in self.predictions)

    def report(self) -> dict[str, Any]:
        """The model section of the run report; families add theirs in ``extra_report``."""
        lora = self.lora_config
        return {"family": self.family_name, "base": self.pretrained, "monitor": self.monitor, "mode": self.mode,
                "lora": {"r": lora.r, "alpha": lora.lora_alpha, "dropout": lora.lora_dropout,
                         "target_modules": comparable(lora.target_modules)},
                "parameters": self.count_parameters(), "generation": self.generation, **self.extra_report()}

    def extra_report(self) -> dict[str, Any]:
        return {}

    # -- adapters ------------------------------------------------------------------------------------
    def export_adapter(self, directory: str) -> None:
        """The adapter in its ecosystem's format (a PEFT directory, a diffusers LoRA file)."""
        raise NotImplementedError

    def load_adapter(self, directory: str) -> None:
        """An exported adapter's weights into this module (its LoRA settings must match)."""
        raise NotImplementedError

    def adapters_disabled(self):
        """A context in which the module runs as its base model (``evaluate.py ckpt=base``)."""
        raise NotImplementedError
