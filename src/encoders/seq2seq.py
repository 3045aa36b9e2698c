"""Encoder-decoder models: the prompt is the encoder input, the reference the labels."""

from typing import Any

import torch
from transformers import DataCollatorForSeq2Seq

from src.encoders.common import batch_texts, label_tokens, request_batch, texts_of


class Seq2SeqEncoder:
    packable = False  # an encoder-decoder's inputs and labels are two sequences: nothing to pack

    def __init__(self, tokenizer, max_source_length: int, max_target_length: int, max_length: int | None = None):
        self.tokenizer = tokenizer
        self.max_source_length = max_source_length
        self.max_target_length = max_target_length
        self._pad = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)

    def longest_row(self, packing: bool) -> None:
        return None

    def fingerprint(self) -> str:
        return f"seq2seq|{self.tokenizer.name_or_path}|{len(self.tokenizer)}|{self.max_source_length}|{self.max_target_length}"

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        sources, targets = texts_of(batch)
        enc = self.tokenizer(sources, truncation=True, max_length=self.max_source_length)
        labels = self.tokenizer(text_target=targets, truncation=True, max_length=self.max_target_length)
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                "labels": labels["input_ids"], "length": [len(ids) for ids in enc["input_ids"]],
                "label_tokens": [label_tokens(ids, shifted=False) for ids in labels["input_ids"]]}

    def lengths(self, batch: dict[str, list]) -> tuple[list[int], list[int]]:
        sources, targets = texts_of(batch)
        return ([len(ids) for ids in self.tokenizer(sources)["input_ids"]],
                [len(ids) for ids in self.tokenizer(text_target=targets)["input_ids"]])

    def collate(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        """Pad to the longest sequence of this batch (labels with -100); keep the texts alongside."""
        batch = dict(self._pad([{k: f[k] for k in ("input_ids", "attention_mask", "labels")} for f in features]))
        return {**batch, "label_tokens": torch.tensor([f["label_tokens"] for f in features]), **batch_texts(features)}

    def prompt_batch(self, requests) -> dict[str, Any]:
        return request_batch(self, requests)
