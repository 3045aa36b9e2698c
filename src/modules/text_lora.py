"""LoRA fine-tuning of a Hugging Face text-generation model, with generation-based evaluation.

Shared by every text family's module. A family's subclass names its ``family_name``, ``auto_class`` and peft
``task_type``, and how to turn a batch into generated strings.
"""

import copy
import logging
from contextlib import contextmanager
from typing import Any

import torch
from peft import LoraConfig, PeftConfig, PeftModel, load_peft_weights, set_peft_model_state_dict

from src.errors import UserError
from src.metrics.loss import EvalLoss
from src.metrics.text import MONITORABLE, TextGenerationMetrics, sentence_rouge_l
from src.modules.base import LoRAModuleBase, comparable
from src.modules.lora import lora_text_model
from src.pretrained.loading import base_load_kwargs, check_attn_implementation, load_pretrained, load_tokenizer
from src.pretrained.quantization import check_quantization, prepare_for_kbit, quantized_load_kwargs

log = logging.getLogger(__name__)

DEFAULT_ADAPTER = "default"  # peft's name for the adapter a module trains


class TextLoRAModule(LoRAModuleBase):
    auto_class: Any = None
    task_type: str = ""
    monitorable = MONITORABLE

    def __init__(self, pretrained: str, lora: LoraConfig, optimizer, scheduler=None,
                 generation: dict | None = None, monitor: str = "val/rougeL", mode: str = "max",
                 gradient_checkpointing: bool = False, quantization: str | None = None,
                 eval_loss: bool | None = None, attn_implementation: str | None = None, dtype: str | None = None):
        super().__init__(pretrained, lora, optimizer, scheduler, generation, monitor, mode)
        if eval_loss is False and self.monitor_is_loss:
            raise UserError(f"model.eval_loss=false but model.monitor={monitor} needs the evaluation loss "
                            "— set model.eval_loss=null (or true), or monitor val/rougeL")
        self.eval_loss = eval_loss
        self._loss_this_round = False  # decided at the start of each validation or test round

        self.quantization = quantization
        check_quantization(quantization)
        check_attn_implementation(attn_implementation)
        self.attn_implementation, self.dtype_name = attn_implementation, dtype
        self.tokenizer = load_tokenizer(self.pretrained)
        base = load_pretrained(self.auto_class, self.pretrained, **quantized_load_kwargs(quantization),
                               **base_load_kwargs(attn_implementation, dtype))
        if quantization:
            base = prepare_for_kbit(base, gradient_checkpointing)
        elif gradient_checkpointing:
            base.gradient_checkpointing_enable()
            base.enable_input_require_grads()  # so checkpointed blocks see a grad-requiring input
        base.train()  # from_pretrained returns eval mode; Lightning switches modes per stage from here
        self.model: PeftModel = lora_text_model(base, lora, self.task_type, self.pretrained)
        params = self.count_parameters()
        log.info("LoRA on %s: %d trainable of %d parameters (%.3f%%)", self.pretrained, params["trainable"],
                 params["total"], 100 * params["trainable"] / params["total"])

        self.metrics = torch.nn.ModuleDict({"val": TextGenerationMetrics(), "test": TextGenerationMetrics()})
        self.losses = torch.nn.ModuleDict({"val": EvalLoss(), "test": EvalLoss()})

    # -- family hooks ------------------------------------------------------------------------------
    def generate_tokens(self, batch: dict[str, Any], generation: dict | None = None, **encoded) -> torch.Tensor:
        """The generated token ids of each row, without the prompt (padded after the end of each answer);
        ``generation`` overrides ``model.generation`` for this call (serving: a streamer, stop strings)."""
        raise NotImplementedError

    def prompt_tokens(self, batch: dict[str, Any]) -> list[int]:
        """How many real (not padding) tokens each row's prompt has."""
        raise NotImplementedError

    def generate_texts(self, batch: dict[str, Any], generation: dict | None = None, **encoded) -> list[str]:
        """Generated strings for the batch, stripped."""
        out = self.generate_tokens(batch, generation, **encoded)
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]

    def end_token_ids(self) -> list[int]:
        """The tokens that end an answer (eos; a chat model's end-of-turn too)."""
        eos = self.model.generation_config.eos_token_id
        eos = self.tokenizer.eos_token_id if eos is None else eos
        return list(eos) if isinstance(eos, (list, tuple)) else [eos]

    # -- training ----------------------------------------------------------------------------------
    def forward(self, batch: dict[str, Any]):
        """The model's loss on a batch: the token mean of its labels (packed rows: position ids, no mask)."""
        # no cache: transformers builds the block-diagonal mask from packed position ids only without one
        extra = {"position_ids": batch["position_ids"], "use_cache": False} if "position_ids" in batch else {}
        return self.model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                          labels=batch["labels"], **extra)

    def tokens_in(self, batch: dict[str, Any]) -> torch.Tensor:
        """Non-pad tokens a batch runs through the model (the run report's FLOPs estimate): the inputs, plus the
        labels that an encoder-decoder feeds its decoder (a decoder-only model's labels are its inputs)."""
        if "attention_mask" not in batch:  # packed rows
            return batch["real_tokens"]
        tokens = batch["attention_mask"].sum()
        if self.model.config.is_encoder_decoder:
            tokens = tokens + (batch["labels"] != -100).sum()
        return tokens

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self(batch).loss  # this micro-batch's token mean: what train/loss shows
        self.log_train_loss(loss)
        return loss * self.step_share(batch)

    def step_share(self, batch: dict[str, Any]) -> torch.Tensor | float:
        """What turns a micro-batch's token mean into its part of the optimizer step's token mean.

        Lightning divides each micro-batch's loss by ``accumulate_grad_batches`` and DDP averages gradients over
        processes; a mean per micro-batch would weight a short sample's tokens more at batch 1 x accumulation 16
        than at batch 16 x 1. The batch's share is its label tokens over the step's (``step_label_tokens``, over
        all micro-batches and processes, from the training loader), times accumulation x processes: the gradient is
        then that of the sum of the step's token losses divided by its token count (transformers'
        ``num_items_in_batch``), whatever the batch size, accumulation and process count. One batch per step on
        one process: 1, the batch mean as it is.
        """
        step = batch.get("step_label_tokens")
        trainer = self._trainer
        if step is None or trainer is None:
            return 1.0
        accumulate, world = trainer.accumulate_grad_batches, trainer.world_size
        if accumulate == 1 and world == 1:
            return 1.0
        tokens = batch["label_tokens"].sum()
        return tokens.to(torch.float32) * (accumulate * world) / step.to(torch.float32).clamp(min=1)

    # -- evaluation --------------------------------------------------------------------------------
    # The teacher-forced loss is a second pass over every target position (14% of evaluation time in an A/B),
    # so it is computed only where something reads it; where it is not, <stage>/loss is not logged at all.
    @property
    def monitor_is_loss(self) -> bool:
        return self.monitor.partition("/")[2] == "loss"

    def loss_readers(self) -> list[str]:
        """What reads the evaluation loss in this round: the model's monitor (every evaluation, so the test split
        reports the monitored metric too) and, in validation while fitting, callbacks (early stopping,
        checkpoints) or LR schedulers (ReduceLROnPlateau) that monitor val/loss."""
        readers = [f"model.monitor={self.monitor}"] if self.monitor_is_loss else []
        trainer = self._trainer
        if trainer is None or trainer.state.fn != "fit":
            return readers
        readers += [type(c).__name__ for c in trainer.callbacks if getattr(c, "monitor", None) == "val/loss"]
        readers += ["the LR scheduler" for c in trainer.lr_scheduler_configs if c.monitor == "val/loss"]
        return readers

    def computes_eval_loss(self) -> bool:
        """``model.eval_loss``: true or false force it; null computes it when something reads it."""
        readers = self.loss_readers()
        if self.eval_loss is False and readers:
            raise UserError(f"model.eval_loss=false but {readers[0]} monitors val/loss "
                            "— set model.eval_loss=null (or true), or have it monitor another metric")
        return bool(readers) if self.eval_loss is None else self.eval_loss

    def on_fit_start(self) -> None:
        self.computes_eval_loss()  # a refused setting stops before the first training step, not at validation

    @torch.no_grad()
    def loss_and_predictions(self, batch: dict[str, Any], with_loss: bool = True
                             ) -> tuple[torch.Tensor | None, list[str]]:
        """The teacher-forced loss (None without ``with_loss``) and the generated texts of an evaluation batch."""
        return (self(batch).loss if with_loss else None), self.generate_texts(batch)

    def start_eval_round(self, stage: str) -> None:
        super().start_eval_round(stage)
        self._loss_this_round = self.computes_eval_loss()

    def eval_step(self, stage: str, batch: dict[str, Any]) -> None:
        loss, predictions = self.loss_and_predictions(batch, with_loss=self._loss_this_round)
        if loss is not None:  # weighted by label tokens: the round's loss is its token mean
            self.losses[stage].update(loss, weight=batch["label_tokens"].sum())
        self.metrics[stage].update(predictions, batch["target"])
        # sentence ROUGE-L per row: what bootstrap intervals resample (their mean is the logged ROUGE-L)
        rouge = sentence_rouge_l(predictions, batch["target"])
        self.predictions += [{"uid": u, "input": s, "reference": t, "prediction": p, "rougeL": r}
                             for u, s, t, p, r in zip(batch["uid"], batch["source"], batch["target"], predictions, rouge)]

    def finish_eval_round(self, stage: str) -> None:
        scores = dict(self.metrics[stage].compute())
        if self._loss_this_round:
            scores["loss"] = self.losses[stage].compute()
        self.metrics[stage].reset()
        self.losses[stage].reset()
        self.log_scores(stage, scores)

    # -- adapters ----------------------------------------------------------------------------------
    @contextmanager
    def adapters_disabled(self):
        with self.model.disable_adapter():
            yield

    def export_adapter(self, directory: str) -> None:
        """A standard PEFT adapter directory (config, safetensors, tokenizer) for ``PeftModel.from_pretrained``."""
        self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)

    def load_adapter(self, directory: str) -> None:
        """Load an exported adapter; its LoRA shape must match this module's (the scaling depends on it)."""
        saved = PeftConfig.from_pretrained(directory)
        for name in ("r", "lora_alpha", "target_modules"):
            theirs, ours = comparable(getattr(saved, name)), comparable(getattr(self.lora_config, name))
            if theirs != ours:
                raise UserError(f"adapter {directory} has {name}={theirs} but the model config has {ours} "
                                f"— set model.lora.{name} to match")
        result = set_peft_model_state_dict(self.model, load_peft_weights(directory, device="cpu"))
        unexpected = [k for k in result.unexpected_keys if "lora_" in k]
        if unexpected:
            raise UserError(f"adapter {directory} holds weights this model lacks, e.g. {unexpected[0]}")

    # -- many adapters on this base (serving) -------------------------------------------------------
    def add_named_adapter(self, name: str, lora: LoraConfig, checkpoint_state: dict | None = None,
                          directory: str | None = None) -> None:
        """Another adapter beside this module's own, named ``name``: an exported adapter ``directory`` (peft's
        ``load_adapter``), or a Lightning checkpoint's ``state_dict`` trained with ``lora``."""
        if directory is not None:
            self.model.load_adapter(directory, adapter_name=name)
            return
        lora = copy.copy(lora)
        lora.task_type = self.task_type
        self.model.add_adapter(name, lora)
        # module keys (model.<peft path>.lora_A.default.weight) → peft's saved form (<peft path>.lora_A.weight)
        weights = {k.removeprefix("model.").replace(f".{DEFAULT_ADAPTER}.", "."): v
                   for k, v in checkpoint_state.items() if "lora_" in k}
        result = set_peft_model_state_dict(self.model, weights, adapter_name=name)
        missing = [k for k in result.missing_keys if f".{name}." in k and "lora_" in k]
        if missing or not weights:
            self.model.delete_adapter(name)
            raise UserError(f"the checkpoint's LoRA weights do not fit this base model (e.g. {missing[:1]})")

    def remove_named_adapter(self, name: str) -> None:
        self.model.delete_adapter(name)

    @contextmanager
    def named_adapter(self, name: str):
        """Generate with adapter ``name`` (and back to this module's own afterwards)."""
        self.model.set_adapter(name)
        try:
            yield
        finally:
            self.model.set_adapter(DEFAULT_ADAPTER)

    def extra_report(self) -> dict[str, Any]:
        return {"quantization": self.quantization, "attn_implementation": self.attn_implementation,
                "dtype": self.dtype_name}
