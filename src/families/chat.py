"""Instruct decoder LLMs trained on conversations through their chat template (Llama 3, Qwen 2.5, Gemma,
SmolLM2, Mistral: any ``AutoModelForCausalLM`` whose tokenizer has a chat template, or given one)."""

from typing import Any

from omegaconf import DictConfig
from peft import TaskType
from transformers import AutoModelForCausalLM

from src.pretrained.chat_templates import resolve_template
from src.encoders.chat import ChatEncoder
from src.families import names
from src.families.text import TextFamily, decoder_only_probe
from src.modules.chat_lora import ChatLoRAModule
from src.pretrained.tiny import train_chat_tokenizer


def _special_token_ids(tokenizer) -> dict[str, int]:
    return dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)


def _encoder_options(model_cfg: DictConfig) -> dict[str, Any]:
    """What the model config decides about encoding: the template (a config may override the tokenizer's) and
    which turns carry the loss."""
    return {"train_on": model_cfg.get("train_on", "assistant"),
            "chat_template": resolve_template(model_cfg.get("chat_template"))}


CHAT = TextFamily(
    name=names.CHAT, description="a chat model", answers_conversations=True, module_class=ChatLoRAModule,
    auto_class=AutoModelForCausalLM,
    task_type=TaskType.CAUSAL_LM, encoder_class=ChatEncoder, train_tokenizer_fn=train_chat_tokenizer,
    tokenizer_description="a byte-level BPE tokenizer ({vocab_size} tokens) with the ChatML template",
    special_token_ids=_special_token_ids, probe_inputs=decoder_only_probe, default_max_positions=4096,
    encoder_options=_encoder_options)
