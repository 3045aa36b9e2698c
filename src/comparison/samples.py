"""What an evaluation pass leaves for bootstrap intervals: which samples were scored, and a statistic per
metric over resampled sample indices (sentence ROUGE-L and corpus BLEU for text; CLIP per image and FID
over the generated images' features for diffusion)."""

from dataclasses import dataclass, field

from src.metrics.bootstrap import Statistic, mean_statistic
from src.metrics.image import fid_statistic
from src.metrics.text import corpus_bleu_statistic


@dataclass
class PerSample:
    sample_ids: list = field(default_factory=list)
    statistics: dict[str, Statistic] = field(default_factory=dict)
    fid_samples: tuple[int, int] | None = None  # (generated images, feature dimension)


def per_sample(module) -> PerSample:
    """From the module's prediction rows (and, for images, the features it kept) after a pass."""
    rows = module.predictions
    if not rows:
        return PerSample()
    if "reference" in rows[0]:  # text families
        preds, refs = [r["prediction"] for r in rows], [r["reference"] for r in rows]
        return PerSample([r["uid"] for r in rows], {"rougeL": mean_statistic([r["rougeL"] for r in rows]),
                                                    "bleu": corpus_bleu_statistic(preds, refs)})
    result = PerSample([f"{r['prompt']}#{r['seed']}" for r in rows])
    if all("clip" in r for r in rows):
        result.statistics["clip_mean"] = mean_statistic([r["clip"] for r in rows])
    features = getattr(module, "generated_features", None)
    if features is not None and features.dim() == 2 and len(features) == len(rows) >= 2:
        real_mean, real_cov = module.image_metrics.real_statistics()
        result.statistics["fid"] = fid_statistic(real_mean, real_cov, features)
        result.fid_samples = (len(features), features.shape[1])
    return result
