"""LoRA fine-tuning of instruct decoder LLMs (Llama 3, Qwen 2.5, Gemma, SmolLM2, Mistral: any
``AutoModelForCausalLM`` with a chat template) on conversations.

Prompts and answers go through the model's chat template (``src/encoders/chat.py``); generation stops at the
template's end-of-turn token as well as at eos, so a fine-tuned model ends its answer where it learned to.
"""

from typing import Any

from src.pretrained.chat_templates import resolve_template
from src.encoders.chat import ChatEncoder
from src.families import names
from src.modules.causal_lora import CausalLoRAModule


class ChatLoRAModule(CausalLoRAModule):
    family_name = names.CHAT

    def __init__(self, *args, chat_template: str | None = None, train_on: str = "assistant", **kwargs):
        super().__init__(*args, **kwargs)
        template = resolve_template(chat_template)
        if template:  # saved with the tokenizer: exported adapters and merged models carry it
            self.tokenizer.chat_template = template
        self.train_on = train_on
        # the template's end-of-turn token ends an answer; checked here, so a tokenizer without one fails at once
        self.stop_token_ids = ChatEncoder(self.tokenizer, 1, 1, train_on=train_on).stop_token_ids()

    def generate_tokens(self, batch: dict[str, Any], generation: dict | None = None):
        return super().generate_tokens(batch, {"eos_token_id": self.stop_token_ids, **(generation or {})})

    def end_token_ids(self) -> list[int]:
        return list(self.stop_token_ids)

    def extra_report(self) -> dict[str, Any]:
        return {**super().extra_report(), "train_on": self.train_on, "stop_token_ids": self.stop_token_ids}
