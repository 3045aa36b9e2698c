"""Decoder-only models without a chat template: ``prompt + " " + reference + eos`` is one sequence and only the
reference's tokens carry a loss.

Training batches are right-padded; each batch also carries the prompts alone, left-padded, so batched generation
continues every prompt from the same position.
"""

from typing import Any

from src.encoders.common import decoder_collate, label_tokens, request_batch, texts_of
from src.errors import UserError


class CausalEncoder:
    packable = True

    def __init__(self, tokenizer, max_source_length: int, max_target_length: int, max_length: int | None = None):
        if tokenizer.eos_token_id is None:
            raise UserError(f"tokenizer {tokenizer.name_or_path} has no eos token; a causal LM needs one to end targets")
        self.tokenizer = tokenizer
        self.max_source_length = max_source_length
        self.max_target_length = max_target_length
        self.max_length = max_length or max_source_length + max_target_length  # a packed row's
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def fingerprint(self) -> str:
        return f"causal|{self.tokenizer.name_or_path}|{len(self.tokenizer)}|{self.max_source_length}|{self.max_target_length}"

    def _prompts(self, sources: list[str]) -> list[list[int]]:
        return self.tokenizer(sources, add_special_tokens=False)["input_ids"]

    def _answers(self, targets: list[str], **truncation) -> list[list[int]]:
        # a leading space so the answer's first word is tokenized as it is inside running text
        return self.tokenizer([" " + t for t in targets], add_special_tokens=False, **truncation)["input_ids"]

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        sources, targets = texts_of(batch)
        eos = self.tokenizer.eos_token_id
        # long prompts lose their beginning, not the cue at their end ("\nDescription:")
        prompts = [ids[-self.max_source_length:] for ids in self._prompts(sources)]
        answers = self._answers(targets, truncation=True, max_length=self.max_target_length - 1)
        labels = [[-100] * len(p) + a + [eos] for p, a in zip(prompts, answers)]
        return {"input_ids": [p + a + [eos] for p, a in zip(prompts, answers)], "labels": labels,
                "prompt_ids": prompts, "length": [len(p) for p in prompts],
                "label_tokens": [label_tokens(ids, shifted=True) for ids in labels]}

    def longest_row(self, packing: bool) -> int:
        return self.max_length if packing else self.max_source_length + self.max_target_length

    def lengths(self, batch: dict[str, list]) -> tuple[list[int], list[int]]:
        sources, targets = texts_of(batch)
        return [len(p) for p in self._prompts(sources)], [len(a) + 1 for a in self._answers(targets)]  # + eos

    def collate(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        return decoder_collate(features, self.pad_id)

    def prompt_batch(self, requests) -> dict[str, Any]:
        return request_batch(self, requests)
