"""What the text encoders share: the texts a batch carries beside its tensors, padding, and request batches."""

from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch.nn.utils.rnn import pad_sequence

from src.conversation import Conversation, prompt_text, reference


class SampleEncoder(Protocol):
    def fingerprint(self) -> str:
        """What decides the encoded columns (tokenizer, lengths, template): part of the datasets cache key."""

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        """Token columns for a batch of samples (``messages``), including ``length`` (what sorts evaluation)."""

    def lengths(self, batch: dict[str, list]) -> tuple[list[int], list[int]]:
        """Prompt and answer tokens of each sample before truncation."""

    def collate(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        """A padded batch, with the texts ``uid``, ``source`` and ``target`` alongside."""

    def longest_row(self, packing: bool) -> int | None:
        """Tokens of the longest training row (what preflight's memory probe runs), or None where inputs and
        labels are two sequences (an encoder-decoder's, probed at the source and target limits)."""


def batch_texts(features: Sequence[dict[str, Any]]) -> dict[str, list[str]]:
    """``uid``, ``source`` (the prompt as one text) and ``target`` (the reference) of each sample."""
    return {"uid": [f["uid"] for f in features], "source": [prompt_text(f["messages"]) for f in features],
            "target": [reference(f["messages"]) for f in features]}


def pad(seqs: Sequence[Sequence[int]], value: int, side: str = "right") -> torch.Tensor:
    return pad_sequence([torch.tensor(s, dtype=torch.long) for s in seqs], batch_first=True, padding_value=value,
                        padding_side=side)


def label_tokens(labels: list[int], shifted: bool) -> int:
    """Tokens a loss counts: those with a label; a decoder-only loss is shifted, so its first position never counts."""
    return sum(1 for label in labels[1 if shifted else 0:] if label != -100)


def decoder_collate(features: Sequence[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """Decoder-only batches: training sequences right-padded, the prompts alone left-padded (batched generation
    continues every prompt from the same column), label counts, and the texts."""
    ids = [f["input_ids"] for f in features]
    prompts = [f["prompt_ids"] for f in features]
    return {"input_ids": pad(ids, pad_id), "attention_mask": pad([[1] * len(s) for s in ids], 0),
            "labels": pad([f["labels"] for f in features], -100),
            "label_tokens": torch.tensor([f["label_tokens"] for f in features]),
            "prompt_input_ids": pad(prompts, pad_id, "left"),
            "prompt_attention_mask": pad([[1] * len(p) for p in prompts], 0, "left"),
            **batch_texts(features)}


def packed_collate(features: Sequence[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """Packed training rows (``src/datamodules/packing.py``): position ids restart at every conversation, and no
    attention mask is given, so the model's attention stays inside each conversation (transformers builds the
    block-diagonal causal mask from the position ids). The padding is a block of its own, with no labels."""
    width = max(len(f["input_ids"]) for f in features)
    ids, labels, positions = [], [], []
    for f in features:
        gap = width - len(f["input_ids"])
        ids.append(f["input_ids"] + [pad_id] * gap)
        labels.append(f["labels"] + [-100] * gap)
        positions.append(f["position_ids"] + list(range(gap)))
    return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "position_ids": torch.tensor(positions),
            "label_tokens": torch.tensor([f["label_tokens"] for f in features]),
            "real_tokens": torch.tensor(sum(len(f["input_ids"]) for f in features)), "uid": [f["uid"] for f in features]}


def request_batch(encoder: SampleEncoder, requests: Sequence[Conversation]) -> dict[str, Any]:
    """Requests (conversations without the answer) encoded and collated exactly like evaluation batches."""
    requests = [list(r) for r in requests]
    features = encoder({"messages": requests})
    rows = [{**dict(zip(features, values)), "uid": str(i), "messages": messages}
            for i, (messages, *values) in enumerate(zip(requests, *features.values()))]
    return encoder.collate(rows)


def texts_of(batch: dict[str, list]) -> tuple[list[str], list[str]]:
    """The prompts and references of a ``datasets.map`` batch of samples."""
    return [prompt_text(m) for m in batch["messages"]], [reference(m) for m in batch["messages"]]
