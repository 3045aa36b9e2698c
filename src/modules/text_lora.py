"""LoRA fine-tuning of a Hugging Face text-generation model, with generation-based evaluation.

Shared by every text family (seq2seq, causal). A family subclass names its ``auto_class``, peft
``task_type`` and data ``encoding``, and how to turn a batch into generated strings.
"""

import logging
from typing import Any

import lightning as L
import torch
from peft import LoraConfig, PeftConfig, PeftModel, get_peft_model, load_peft_weights, set_peft_model_state_dict
from torchmetrics import MaxMetric, MeanMetric, MinMetric

from src.errors import UserError
from src.metrics.text import TextGenerationMetrics
from src.modules.adapter_checkpoint import TrainableStateDictMixin
from src.modules.guards import check_finite_loss
from src.pretrained.loading import load_pretrained, load_tokenizer
from src.pretrained.quantization import check_quantization, prepare_for_kbit, quantized_load_kwargs

log = logging.getLogger(__name__)

MODES = {"max": MaxMetric, "min": MinMetric}


def _comparable(value: Any) -> Any:
    """LoRA settings as plain, order-free values (target_modules may be a set, a list or "all-linear")."""
    return sorted(value) if isinstance(value, (set, list, tuple)) else value


class TextLoRAModule(TrainableStateDictMixin, L.LightningModule):
    auto_class: Any = None
    task_type: str = ""
    encoding: str = ""

    def __init__(self, pretrained: str, lora: LoraConfig, optimizer, scheduler=None,
                 generation: dict | None = None, monitor: str = "val/rougeL", mode: str = "max",
                 gradient_checkpointing: bool = False, quantization: str | None = None):
        super().__init__()
        if mode not in MODES:
            raise UserError(f"model.mode={mode!r} must be 'max' or 'min'")
        stage, _, name = monitor.partition("/")
        if stage != "val" or name not in ("rougeL", "bleu", "loss"):
            raise UserError(f"model.monitor={monitor!r}: use val/rougeL, val/bleu or val/loss")
        self.pretrained = str(pretrained)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.generation = dict(generation or {})
        self.monitor, self.mode = monitor, mode

        self.quantization = quantization
        check_quantization(quantization)
        self.tokenizer = load_tokenizer(self.pretrained)
        base = load_pretrained(self.auto_class, self.pretrained, **quantized_load_kwargs(quantization))
        if quantization:
            base = prepare_for_kbit(base, gradient_checkpointing)
        elif gradient_checkpointing:
            base.gradient_checkpointing_enable()
            base.enable_input_require_grads()  # so checkpointed blocks see a grad-requiring input
        base.train()  # from_pretrained returns eval mode; Lightning switches modes per stage from here
        lora.task_type = self.task_type
        self.lora_config = lora
        try:
            self.model: PeftModel = get_peft_model(base, lora)
        except ValueError as err:  # e.g. target_modules that the base model does not have
            raise UserError(f"LoRA config does not fit {self.pretrained}: {str(err).splitlines()[0]} — "
                            "set model.lora.target_modules to module names of this model") from err
        params = self.count_parameters()
        log.info("LoRA on %s: %d trainable of %d parameters (%.3f%%)", self.pretrained, params["trainable"],
                 params["total"], 100 * params["trainable"] / params["total"])

        self.metrics = torch.nn.ModuleDict({"val": TextGenerationMetrics(), "test": TextGenerationMetrics()})
        self.losses = torch.nn.ModuleDict({"val": MeanMetric(), "test": MeanMetric()})
        self.train_loss = MeanMetric()
        self.best = MODES[mode]()
        self.predictions: list[dict[str, str]] = []

    # -- family hooks ------------------------------------------------------------------------------
    def generate_texts(self, batch: dict[str, Any]) -> list[str]:
        raise NotImplementedError

    # -- training ----------------------------------------------------------------------------------
    def forward(self, batch: dict[str, Any]):
        return self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self(batch).loss
        check_finite_loss(self, loss)
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        self.train_loss.update(loss)  # a Metric object: the epoch mean is synced across processes once
        self.log("train/loss_epoch", self.train_loss, on_step=False, on_epoch=True)
        return loss

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params=params)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer,
                                           num_training_steps=int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- evaluation --------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # the best score is metric state, not a parameter: keep it so a resumed run's *_best is honest
        checkpoint["best_score"] = self.best.compute().item() if self.best.update_called else None

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.best.reset()
        if checkpoint.get("best_score") is not None:
            self.best.update(torch.tensor(checkpoint["best_score"]))

    def _on_eval_epoch_start(self) -> None:
        self.predictions = []

    on_validation_epoch_start = on_test_epoch_start = _on_eval_epoch_start

    @torch.no_grad()
    def _eval_step(self, stage: str, batch: dict[str, Any]) -> None:
        n = len(batch["uid"])
        self.losses[stage].update(self(batch).loss, weight=n)
        predictions = self.generate_texts(batch)
        self.metrics[stage].update(predictions, batch["target"])
        self.predictions += [{"uid": u, "input": s, "reference": t, "prediction": p}
                             for u, s, t, p in zip(batch["uid"], batch["source"], batch["target"], predictions)]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step("val", batch)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step("test", batch)

    def _on_eval_epoch_end(self, stage: str) -> dict[str, float]:
        scores = {f"{stage}/{k}": v for k, v in self.metrics[stage].compute().items()}
        scores[f"{stage}/loss"] = self.losses[stage].compute()
        self.metrics[stage].reset()
        self.losses[stage].reset()
        # compute() already synced the metric states, so every rank holds the same values and
        # sync_dist's mean leaves them unchanged
        self.log_dict(scores, prog_bar=True, sync_dist=True)
        if stage == "val" and self.trainer.state.fn == "fit" and not self.trainer.sanity_checking:
            self.best.update(scores[self.monitor])
            self.log(f"{self.monitor}_best", self.best.compute(), sync_dist=True)
        return scores

    def on_validation_epoch_end(self) -> None:
        self._on_eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._on_eval_epoch_end("test")

    # -- adapters ----------------------------------------------------------------------------------
    def export_adapter(self, directory: str) -> None:
        """A standard PEFT adapter directory (config, safetensors, tokenizer) for ``PeftModel.from_pretrained``."""
        self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)

    def load_adapter(self, directory: str) -> None:
        """Load an exported adapter; its LoRA shape must match this module's (the scaling depends on it)."""
        saved = PeftConfig.from_pretrained(directory)
        for name in ("r", "lora_alpha", "target_modules"):
            theirs, ours = _comparable(getattr(saved, name)), _comparable(getattr(self.lora_config, name))
            if theirs != ours:
                raise UserError(f"adapter {directory} has {name}={theirs} but the model config has {ours} "
                                f"— set model.lora.{name} to match")
        result = set_peft_model_state_dict(self.model, load_peft_weights(directory, device="cpu"))
        unexpected = [k for k in result.unexpected_keys if "lora_" in k]
        if unexpected:
            raise UserError(f"adapter {directory} holds weights this model lacks, e.g. {unexpected[0]}")

    def report(self) -> dict[str, Any]:
        lora = self.lora_config
        return {"family": self.encoding, "base": self.pretrained, "quantization": self.quantization,
                "monitor": self.monitor, "mode": self.mode,
                "lora": {"r": lora.r, "alpha": lora.lora_alpha, "dropout": lora.lora_dropout,
                         "target_modules": _comparable(lora.target_modules)},
                "parameters": self.count_parameters(), "generation": self.generation}
