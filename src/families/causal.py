"""Decoder-only LMs prompted with plain text (DialoGPT, GPT-2, any ``AutoModelForCausalLM``)."""

from peft import TaskType
from transformers import AutoModelForCausalLM

from src.encoders.causal import CausalEncoder
from src.families import names
from src.families.text import TextFamily, decoder_only_probe
from src.modules.causal_lora import CausalLoRAModule
from src.pretrained.tiny import train_byte_bpe_tokenizer


def _special_token_ids(tokenizer) -> dict[str, int]:
    return dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)


CAUSAL = TextFamily(
    name=names.CAUSAL, description="a causal text model", module_class=CausalLoRAModule,
    auto_class=AutoModelForCausalLM, task_type=TaskType.CAUSAL_LM, encoder_class=CausalEncoder,
    train_tokenizer_fn=train_byte_bpe_tokenizer, tokenizer_description="a byte-level BPE tokenizer ({vocab_size} tokens)",
    special_token_ids=_special_token_ids, probe_inputs=decoder_only_probe, default_max_positions=1024)
