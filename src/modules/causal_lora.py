"""LoRA fine-tuning of decoder-only LMs (DialoGPT, GPT-2, any AutoModelForCausalLM)."""

from typing import Any

import torch
from peft import TaskType
from transformers import AutoModelForCausalLM

from src.families import names
from src.modules.text_lora import TextLoRAModule


class CausalLoRAModule(TextLoRAModule):
    auto_class = AutoModelForCausalLM
    task_type = TaskType.CAUSAL_LM
    family_name = names.CAUSAL

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.tokenizer.pad_token is None:  # GPT-2 style tokenizers have none; padding is masked anyway
            self.tokenizer.pad_token = self.tokenizer.eos_token

    def generate_tokens(self, batch: dict[str, Any], generation: dict | None = None) -> torch.Tensor:
        prompts = batch["prompt_input_ids"]  # left-padded: every continuation starts at the same column
        out = self.model.generate(input_ids=prompts, attention_mask=batch["prompt_attention_mask"],
                                  pad_token_id=self.tokenizer.pad_token_id,
                                  **{**self.generation, **(generation or {})})
        return out[:, prompts.shape[1]:]

    def prompt_tokens(self, batch: dict[str, Any]) -> list[int]:
        return batch["prompt_attention_mask"].sum(dim=1).tolist()
