"""ROUGE-L F-measure (0–1) and corpus BLEU on sacreBLEU's 0–100 scale, as torchmetrics metrics, plus
what bootstrap intervals need: sentence ROUGE-L per prediction and corpus BLEU over resampled sentences.

Both equal their reference implementations (tests/test_metric_references.py): BLEU is sacreBLEU's default
``corpus_bleu`` (13a tokenization, exponential smoothing); ROUGE-L is Google's rouge-score ``rougeL`` averaged
F-measure, except that words in any script count whole (see :func:`unicode_normalizer`).

>>> m = TextGenerationMetrics()
>>> m.update(["a red running shoe"], ["a red running shoe with laces"])
>>> {k: round(float(v), 3) for k, v in m.compute().items()}
{'bleu': 60.653, 'rougeL': 0.8}
"""

import functools
import re
import unicodedata

import numpy as np
import torch
from sacrebleu.metrics import BLEU
from torchmetrics import Metric, MetricCollection
from torchmetrics.functional.text import rouge_score
from torchmetrics.text import ROUGEScore

from src.distributed import concatenate_list_states
from src.metrics.loss import EvalLoss

_NON_WORD = re.compile(r"[\W_]+")
# sacreBLEU's per-sentence sufficient statistics: hypothesis and reference lengths, then matched and total n-grams
# for n = 1..4. Summing them over sentences and scoring the sum is how sacreBLEU computes corpus BLEU.
_BLEU_ORDER = 4
_BLEU_STATS = 2 + 2 * _BLEU_ORDER


def unicode_normalizer(text: str) -> str:
    """NFKC, lower case, and keep word characters of any script. rouge-score's default keeps only a-z0-9,
    which splits "coração" into "cora" + "o" (fragments that then match across unrelated words); NFKC makes a
    decomposed "ç" (c + combining cedilla) one character, so it does not split words either.

    >>> unicode_normalizer("Coração, ação!")
    'coração ação'
    """
    return _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()


class RougeL(ROUGEScore):
    """ROUGE-L F-measure only (ROUGE-Lsum would need an NLTK download; ROUGE-L does not)."""

    def __init__(self, **kwargs):
        super().__init__(rouge_keys="rougeL", normalizer=unicode_normalizer, **kwargs)
        concatenate_list_states(self)  # uneven evaluation shards must not deadlock the sync

    def update(self, preds: list[str], target: list[str]) -> None:
        # torchmetrics reads a non-list target (tuple, datasets Column) as one sample's references: make lists
        super().update(list(preds), list(target))

    def compute(self) -> torch.Tensor:
        return super().compute()["rougeL_fmeasure"]


@functools.cache
def _bleu_scorer() -> BLEU:
    """Stateless when references are passed: one instance serves every call (and every bootstrap resample)."""
    return BLEU(tokenize="13a", smooth_method="exp")  # sacrebleu.corpus_bleu's defaults


def bleu_statistics(preds: list[str], targets: list[str]) -> np.ndarray:
    """sacreBLEU's sufficient statistics per (prediction, reference) pair: int64 ``[n, 10]``."""
    if len(preds) != len(targets):
        raise ValueError(f"BLEU: {len(preds)} predictions but {len(targets)} references")
    if not len(preds):
        return np.zeros((0, _BLEU_STATS), dtype=np.int64)
    stats = _bleu_scorer()._extract_corpus_statistics(list(preds), [list(targets)])
    return np.asarray(stats, dtype=np.int64).reshape(len(preds), _BLEU_STATS)


def bleu_from_statistics(stats) -> float:
    """Corpus BLEU (0–100) from summed :func:`bleu_statistics`, as ``sacrebleu.corpus_bleu`` scores them."""
    return float(_bleu_scorer()._compute_score_from_stats([int(s) for s in stats]).score)


class CorpusBLEU(Metric):
    """Corpus BLEU on the 0–100 scale, one reference per sample, equal to ``sacrebleu.corpus_bleu(preds,
    [targets])``: 13a tokenization and exponential smoothing (torchmetrics' ``SacreBLEUScore`` has no exponential
    smoothing, so a corpus without a matching 4-gram scored exactly 0 there). The state is sacreBLEU's summed
    n-gram statistics, which sum across processes."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("stats", torch.zeros(_BLEU_STATS, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: list[str], target: list[str]) -> None:
        counts = bleu_statistics(preds, target).sum(axis=0)
        self.stats += torch.as_tensor(counts, dtype=torch.long, device=self.stats.device)

    def compute(self) -> torch.Tensor:
        return torch.tensor(bleu_from_statistics(self.stats.tolist()), dtype=torch.float32, device=self.stats.device)


class TextGenerationMetrics(MetricCollection):
    """``rougeL`` and ``bleu`` over (prediction, reference) pairs, synced across processes."""

    def __init__(self, prefix: str | None = None):
        super().__init__({"rougeL": RougeL(), "bleu": CorpusBLEU()}, prefix=prefix, compute_groups=False)


# the Metric whose ``higher_is_better`` says which way each monitorable score is better
MONITORABLE = {"rougeL": RougeL, "bleu": CorpusBLEU, "loss": EvalLoss}


def sentence_rouge_l(preds: list[str], targets: list[str]) -> list[float]:
    """ROUGE-L F-measure of each (prediction, reference) pair; their mean is ``RougeL``'s corpus value.

    >>> sentence_rouge_l(["a red running shoe", "boots"], ["a red running shoe with laces", "a blue sandal"])
    [0.8, 0.0]
    """
    return [round(float(rouge_score(p, t, rouge_keys="rougeL", normalizer=unicode_normalizer)["rougeL_fmeasure"]), 6)
            for p, t in zip(preds, targets, strict=True)]


def corpus_bleu_statistic(preds: list[str], targets: list[str]):
    """A bootstrap statistic: corpus BLEU (0–100) of the sentences at the given indices, recomputed from
    per-sentence statistics (the same 13a tokenization and exponential smoothing as ``CorpusBLEU``).

    >>> preds = ["a red running shoe", "a blue leather boot"]
    >>> refs = ["a red running shoe with laces", "a blue leather boot"]
    >>> bleu = corpus_bleu_statistic(preds, refs)
    >>> corpus = CorpusBLEU()
    >>> corpus.update(preds, refs)
    >>> round(bleu(np.arange(2)), 3) == round(float(corpus.compute()), 3), round(bleu(np.array([1, 1])), 3)
    (True, 100.0)
    """
    stats = bleu_statistics(preds, targets)
    return lambda idx: bleu_from_statistics(stats[np.asarray(idx)].sum(axis=0))
