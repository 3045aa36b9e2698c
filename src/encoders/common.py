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


def batch_texts(features: Sequence[dict[str, Any]]) -> dict[str, list[str]]:
    """``uid``, ``source`` (the prompt as one text) and ``target`` (the reference) of each sample."""
    return {"uid": [f["uid"] for f in features], "source": [prompt_text(f["messages"]) for f in features],
            "target": [reference(f["messages"]) for f in features]}


def pad(seqs: Sequence[Sequence[int]], value: int, side: str = "right") -> torch.Tensor:
    return pad_sequence([torch.tensor(s, dtype=torch.long) for s in seqs], batch_first=True, padding_value=value,
                        padding_side=side)


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
