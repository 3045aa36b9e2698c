"""LoRA fine-tuning of encoder-decoder LMs (FLAN-T5, PTT5, any AutoModelForSeq2SeqLM)."""

from typing import Any

from peft import TaskType
from transformers import AutoModelForSeq2SeqLM

from src.modules.text_lora import TextLoRAModule


class Seq2SeqLoRAModule(TextLoRAModule):
    auto_class = AutoModelForSeq2SeqLM
    task_type = TaskType.SEQ_2_SEQ_LM
    encoding = "seq2seq"

    def generate_texts(self, batch: dict[str, Any], generation: dict | None = None) -> list[str]:
        out = self.model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                  **{**self.generation, **(generation or {})})
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]
