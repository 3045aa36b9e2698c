"""ROUGE-L F-measure (0–1) and corpus BLEU on sacreBLEU's 0–100 scale, as torchmetrics metrics, plus
what bootstrap intervals need: sentence ROUGE-L per prediction and corpus BLEU over resampled sentences.

>>> m = TextGenerationMetrics()
>>> m.update(["a red running shoe"], ["a red running shoe with laces"])
>>> {k: round(float(v), 3) for k, v in m.compute().items()}
{'bleu': 60.653, 'rougeL': 0.8}
"""

import re

import numpy as np
import torch
from sacrebleu.metrics import BLEU
from torchmetrics import MetricCollection
from torchmetrics.functional.text import rouge_score
from torchmetrics.text import ROUGEScore, SacreBLEUScore

from src.distributed import concatenate_list_states

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
        concatenate_list_states(self)  # uneven evaluation shards must not deadlock the sync

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


def sentence_rouge_l(preds: list[str], targets: list[str]) -> list[float]:
    """ROUGE-L F-measure of each (prediction, reference) pair; their mean is ``RougeL``'s corpus value.

    >>> sentence_rouge_l(["a red running shoe", "boots"], ["a red running shoe with laces", "a blue sandal"])
    [0.8, 0.0]
    """
    return [round(float(rouge_score(p, t, rouge_keys="rougeL", normalizer=unicode_normalizer)["rougeL_fmeasure"]), 6)
            for p, t in zip(preds, targets, strict=True)]


def corpus_bleu_statistic(preds: list[str], targets: list[str]):
    """A bootstrap statistic: corpus BLEU (0–100) of the sentences at the given indices, recomputed by
    sacreBLEU from per-sentence n-gram counts (the same 13a tokenization and no smoothing as ``CorpusBLEU``).

    >>> preds = ["a red running shoe", "a blue leather boot"]
    >>> refs = ["a red running shoe with laces", "a blue leather boot"]
    >>> bleu = corpus_bleu_statistic(preds, refs)
    >>> corpus = CorpusBLEU()
    >>> corpus.update(preds, refs)
    >>> round(bleu(np.arange(2)), 3) == round(float(corpus.compute()), 3), round(bleu(np.array([1, 1])), 3)
    (True, 100.0)
    """
    scorer = BLEU(smooth_method="none", tokenize="13a")
    stats = np.asarray(scorer._extract_corpus_statistics(list(preds), [list(targets)]), dtype=np.int64)
    return lambda idx: float(scorer._compute_score_from_stats(stats[idx].sum(axis=0).tolist()).score)
