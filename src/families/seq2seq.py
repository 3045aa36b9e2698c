"""Encoder-decoder LMs (FLAN-T5, PTT5, any ``AutoModelForSeq2SeqLM``)."""

from peft import TaskType
from transformers import AutoModelForSeq2SeqLM

from src.encoders.seq2seq import Seq2SeqEncoder
from src.families import names
from src.families.text import TextFamily, encoder_decoder_probe
from src.modules.seq2seq_lora import Seq2SeqLoRAModule
from src.pretrained.tiny import train_unigram_tokenizer


def _special_token_ids(tokenizer) -> dict[str, int]:
    return dict(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                decoder_start_token_id=tokenizer.pad_token_id)


SEQ2SEQ = TextFamily(
    name=names.SEQ2SEQ, description="a seq2seq text model", module_class=Seq2SeqLoRAModule,
    auto_class=AutoModelForSeq2SeqLM, task_type=TaskType.SEQ_2_SEQ_LM, encoder_class=Seq2SeqEncoder,
    train_tokenizer_fn=train_unigram_tokenizer, tokenizer_description="a SentencePiece-style unigram tokenizer ({vocab_size} pieces)",
    special_token_ids=_special_token_ids, probe_inputs=encoder_decoder_probe, default_max_positions=512,
    generating_prefixes=("decoder.", "lm_head."), random_init_version=2)
