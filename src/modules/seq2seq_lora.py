"""LoRA fine-tuning of encoder-decoder LMs (FLAN-T5, PTT5, any AutoModelForSeq2SeqLM)."""

from typing import Any

import torch
from peft import TaskType
from transformers import AutoModelForSeq2SeqLM

from src.families import names
from src.modules.text_lora import TextLoRAModule


class Seq2SeqLoRAModule(TextLoRAModule):
    auto_class = AutoModelForSeq2SeqLM
    task_type = TaskType.SEQ_2_SEQ_LM
    family_name = names.SEQ2SEQ

    def generate_tokens(self, batch: dict[str, Any], generation: dict | None = None, **encoded) -> torch.Tensor:
        out = self.model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                  **encoded, **{**self.generation, **(generation or {})})
        return out[:, 1:]  # after the decoder's start token

    def prompt_tokens(self, batch: dict[str, Any]) -> list[int]:
        return batch["attention_mask"].sum(dim=1).tolist()

    def loss_and_predictions(self, batch: dict[str, Any], with_loss: bool = True
                             ) -> tuple[torch.Tensor | None, list[str]]:
        """The loss and the generation read the same encoder output: the source is encoded once per batch."""
        if not with_loss:
            return None, self.generate_texts(batch)
        encoder_outputs = self.model.get_encoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        loss = self.model(encoder_outputs=encoder_outputs, attention_mask=batch["attention_mask"],
                          labels=batch["labels"]).loss
        return loss, self.generate_texts(batch, encoder_outputs=encoder_outputs)
