"""ROUGE-L F-measure (0–1) and corpus BLEU on sacreBLEU's 0–100 scale, as torchmetrics metrics.

>>> m = TextGenerationMetrics()
>>> m.update(["a red running shoe"], ["a red running shoe with laces"])
>>> {k: round(float(v), 3) for k, v in m.compute().items()}
{'bleu': 60.653, 'rougeL': 0.8}
"""

import re

import torch
from torchmetrics import MetricCollection
from torchmetrics.text import ROUGEScore, SacreBLEUScore

_NON_WORD = re.compile(r"[\W_]+")


def unicode_normalizer(text: str) -> str:
    """Lower-case and keep word characters of any script (the default keeps only a-z0-9,
    which would make "coração" and "ação" share tokens).

    >>> unicode_normalizer("Coração, ação!")
    'coração ação'
    """
    return _NON_WORD.sub(" ", text.lower()).strip()


class RougeL(ROUGEScore):
    """ROUGE-L F-measure only (ROUGE-Lsum would need an NLTK download; ROUGE-L does not)."""

    def __init__(self, **kwargs):
        super().__init__(rouge_keys="rougeL", normalizer=unicode_normalizer, **kwargs)

    def update(self, preds: list[str], target: list[str]) -> None:
        super().update(preds, target)

    def compute(self) -> torch.Tensor:
        return super().compute()["rougeL_fmeasure"]


class CorpusBLEU(SacreBLEUScore):
    """Corpus BLEU (13a tokenization, one reference per sample) reported on the 0–100 scale."""

    def update(self, preds: list[str], target: list[str]) -> None:
        super().update(preds, [[t] for t in target])

    def compute(self) -> torch.Tensor:
        return super().compute() * 100


class TextGenerationMetrics(MetricCollection):
    """``rougeL`` and ``bleu`` over (prediction, reference) pairs, synced across processes."""

    def __init__(self, prefix: str | None = None):
        super().__init__({"rougeL": RougeL(), "bleu": CorpusBLEU()}, prefix=prefix, compute_groups=False)
