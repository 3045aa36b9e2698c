"""A model family and a data format defined outside src/, as docs/extending.md describes (tests/test_extending.py).

``toy_causal`` is a decoder-only family whose module answers in its own way (every generated text lower-cased):
enough to tell its outputs from the built-in causal family's. ``toy_qa`` reads records ``{"q": ..., "a": ...}``
into a two-turn conversation: a fixed system instruction, the question, the answer.
"""

from dataclasses import dataclass
from typing import Any, ClassVar

from peft import TaskType
from transformers import AutoModelForCausalLM

from src.conversation import Conversation, one_turn
from src.datamodules.formats import TEXT, register_format
from src.encoders.causal import CausalEncoder
from src.families.text import TextFamily, decoder_only_probe
from src.modules.causal_lora import CausalLoRAModule
from src.pretrained.tiny import train_byte_bpe_tokenizer


class ToyCausalModule(CausalLoRAModule):
    family_name = "toy_causal"

    def generate_texts(self, batch: dict[str, Any], generation: dict | None = None) -> list[str]:
        return [text.lower() for text in super().generate_texts(batch, generation)]


FAMILY = TextFamily(
    name="toy_causal", description="a toy causal text model", module_class=ToyCausalModule,
    auto_class=AutoModelForCausalLM, task_type=TaskType.CAUSAL_LM, encoder_class=CausalEncoder,
    train_tokenizer_fn=train_byte_bpe_tokenizer, tokenizer_description="a byte-level BPE ({vocab_size} tokens)",
    special_token_ids=lambda tok: {"eos_token_id": tok.eos_token_id}, probe_inputs=decoder_only_probe,
    default_max_positions=512)

SYSTEM = "Answer in one sentence."


@dataclass(frozen=True)
class QAFormat:
    question: str
    answer: str
    roles: ClassVar[tuple[str, ...]] = ("question", "answer")
    can_skip: ClassVar[bool] = False

    @classmethod
    def from_config(cls, columns: dict[str, Any], prompt_template: str = "{source}",
                    system_prompt: str | None = None) -> "QAFormat":
        return cls(columns.get("question") or "q", columns.get("answer") or "a")

    def role_columns(self) -> dict[str, str]:
        return {"question": self.question, "answer": self.answer}

    def fields(self) -> dict[str, str]:
        return {self.question: TEXT, self.answer: TEXT}

    def samples(self, batch: dict[str, list]) -> tuple[list[Conversation], list[str]]:
        conversations = [one_turn(q, a, system=SYSTEM) for q, a in zip(batch[self.question], batch[self.answer])]
        return conversations, [""] * len(conversations)

    def request(self, text: str) -> Conversation:
        return one_turn(text, system=SYSTEM)


register_format("toy_qa", QAFormat)
