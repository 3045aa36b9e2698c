"""What an evaluation pass leaves for bootstrap intervals: which samples were scored, and a statistic per
metric over resampled sample indices (sentence ROUGE-L and corpus BLEU for text; CLIP per image and FID
over the generated images' features for diffusion). For text, also the outputs side by side: each input
with the base model's, the recommended checkpoint's and the retrieval baseline's output and their sentence scores."""

import functools
from dataclasses import dataclass, field

from sacrebleu.metrics import BLEU

from src.metrics.bootstrap import Statistic, mean_statistic
from src.metrics.image import fid_statistic
from src.metrics.text import corpus_bleu_statistic, sentence_rouge_l

SIDE_BY_SIDE = "side_by_side.jsonl"
TEXT_FIELDS = ("uid", "input", "reference", "prediction", "rougeL")


@dataclass
class PerSample:
    sample_ids: list = field(default_factory=list)
    statistics: dict[str, Statistic] = field(default_factory=dict)
    fid_samples: tuple[int, int] | None = None  # (generated images, feature dimension)
    texts: list[dict] = field(default_factory=list)  # text rows, kept for the side-by-side file


def per_sample(module) -> PerSample:
    """From the module's prediction rows (and, for images, the features it kept) after a pass."""
    rows = module.predictions
    if not rows:
        return PerSample()
    if "reference" in rows[0]:  # text families
        return text_samples(rows)
    result = PerSample([f"{r['prompt']}#{r['seed']}" for r in rows])
    if all("clip" in r for r in rows):
        result.statistics["clip_mean"] = mean_statistic([r["clip"] for r in rows])
    features = getattr(module, "generated_features", None)
    if features is not None and features.dim() == 2 and len(features) == len(rows) >= 2:
        real_mean, real_cov = module.image_metrics.real_statistics()
        result.statistics["fid"] = fid_statistic(real_mean, real_cov, features)
        result.fid_samples = (len(features), features.shape[1])
    return result


def text_samples(rows: list[dict]) -> PerSample:
    """Text prediction rows (``uid``, ``input``, ``reference``, ``prediction``, ``rougeL``: a model's pass or the
    retrieval baseline's) as sentence ROUGE-L and corpus BLEU statistics."""
    preds, refs = [r["prediction"] for r in rows], [r["reference"] for r in rows]
    return PerSample([r["uid"] for r in rows], {"rougeL": mean_statistic([r["rougeL"] for r in rows]),
                                                "bleu": corpus_bleu_statistic(preds, refs)},
                     texts=[{k: r.get(k) for k in TEXT_FIELDS} for r in rows])


@functools.cache
def _sentence_bleu_scorer() -> BLEU:
    return BLEU(tokenize="13a", smooth_method="exp", effective_order=True)  # sacrebleu.sentence_bleu's defaults


def sentence_bleu(prediction: str, reference: str) -> float:
    """sacreBLEU's sentence BLEU (0–100): the corpus BLEU of one sentence with effective n-gram order, so a
    short output is not zeroed by missing 4-grams. A per-input guide only: corpus BLEU is not their mean.

    >>> sentence_bleu("a red running shoe", "a red running shoe"), sentence_bleu("a red shoe", "a blue boot")
    (100.0, 27.5161)
    """
    return round(float(_sentence_bleu_scorer().sentence_score(prediction, [reference]).score), 4)


def side_by_side(recommended: list[dict], base: list[dict] | None, name: str,
                 retrieval: list[dict] | None = None) -> list[dict]:
    """One row per input of the recommended checkpoint's pass: input, reference, the base model's, the recommended
    checkpoint's and the retrieval baseline's outputs and their sentence ROUGE-L (``src.metrics.text.sentence_rouge_l``,
    the per-sample scores the report's ROUGE-L averages) and sentence BLEU. ``base`` None (``baseline=false``) or
    ``retrieval`` None (``retrieval=false``) leaves those columns null."""
    by_uid = {"base": {r["uid"]: r for r in base or []}, "retrieval": {r["uid"]: r for r in retrieval or []}}
    rows = []
    for r in recommended:
        found = {"base": by_uid["base"].get(r["uid"]), "recommended": r, "retrieval": by_uid["retrieval"].get(r["uid"])}
        rows.append({"uid": r["uid"], "input": r["input"], "reference": r["reference"], "checkpoint": name,
                     **{who: row["prediction"] if row else None for who, row in found.items()},
                     **{f"rougeL_{who}": rouge_l(row) for who, row in found.items()},
                     **{f"bleu_{who}": sentence_bleu(row["prediction"], row["reference"]) if row else None
                        for who, row in found.items()}})
    return rows


def rouge_l(row: dict | None) -> float | None:
    """The row's sentence ROUGE-L: the pass already scored it with ``sentence_rouge_l``."""
    if row is None:
        return None
    return row["rougeL"] if row.get("rougeL") is not None else sentence_rouge_l([row["prediction"]],
                                                                                [row["reference"]])[0]
