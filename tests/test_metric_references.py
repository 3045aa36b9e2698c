"""Our metrics equal their reference implementations on realistic data: ROUGE-L against Google's rouge-score,
BLEU against sacreBLEU, FID (and its bootstrap statistic) against torchmetrics' FrechetInceptionDistance with
fewer images than features, KID against the unbiased MMD formula. CPU, offline, seconds."""

import json
import random
import re
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import sacrebleu
import torch
import torch.nn.functional as F
from rouge_score import rouge_scorer
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

from src.dataio.cleaning import clean_text
from src.metrics.image import ImageGenerationMetrics, fid_from_features, fid_statistic
from src.metrics.text import TextGenerationMetrics, corpus_bleu_statistic, sentence_rouge_l

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"


# -- text: the bundled Amazon sample (English) and tarot readings (Portuguese, accented) ---------------------

def read_jsonl(*paths: Path) -> list[dict]:
    return [json.loads(line) for path in paths for line in path.read_text(encoding="utf-8").splitlines() if line]


def perturbed(text: str, seed: int) -> str:
    """A plausible imperfect generation: about a fifth of the words dropped, some neighbours swapped."""
    rng = random.Random(seed)
    words = [w for w in text.split() if rng.random() > 0.2]
    for _ in range(len(words) // 6):
        i = rng.randrange(len(words) - 1)
        words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words)


def pair_sets() -> dict[str, tuple[list[str], list[str]]]:
    """(predictions, references): several hundred pairs each, with partial overlap."""
    amazon = read_jsonl(SAMPLES / "amazon" / "trn.json", SAMPLES / "amazon" / "tst.json")
    descriptions = [clean_text(r["content"]) for r in amazon]
    tarot = read_jsonl(SAMPLES / "tarot" / "readings.jsonl")
    readings = [r["reading"] for r in tarot]

    def other_card(i: int) -> str:  # the next reading of a different card
        return next(tarot[j % len(tarot)]["reading"] for j in range(i + 1, i + len(tarot))
                    if tarot[j % len(tarot)]["card"] != tarot[i]["card"])

    return {
        "amazon-title": ([clean_text(r["title"]) for r in amazon], descriptions),  # the copy-the-input baseline
        "amazon-perturbed": ([perturbed(d, i) for i, d in enumerate(descriptions)], descriptions),
        "tarot-other-card": ([other_card(i) for i in range(len(tarot))], readings),
        "tarot-perturbed": ([perturbed(r, i) for i, r in enumerate(readings)], readings),
    }


PAIRS = pair_sets()
ENGLISH, PORTUGUESE = ["amazon-title", "amazon-perturbed"], ["tarot-other-card", "tarot-perturbed"]


class UnicodeWords:
    """rouge-score tokenizer with our normalisation, written from its definition: NFKC, lower case, tokens are
    the runs of letters and digits of any script ("coração" is one token)."""

    def tokenize(self, text: str) -> list[str]:
        return re.findall(r"[^\W_]+", unicodedata.normalize("NFKC", text).lower())


def rouge_score_reference(preds, refs, tokenizer=None) -> list[float]:
    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=tokenizer)
    return [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(preds, refs, strict=True)]


@pytest.fixture(scope="module")
def ours() -> dict[str, dict]:
    """Our corpus ROUGE-L and BLEU (updated in validation-sized batches) and sentence ROUGE-L, per pair set."""
    results = {}
    for name, (preds, refs) in PAIRS.items():
        metrics = TextGenerationMetrics()
        for start in range(0, len(preds), 64):
            metrics.update(preds[start:start + 64], refs[start:start + 64])
        results[name] = {k: float(v) for k, v in metrics.compute().items()}
        results[name]["sentences"] = np.array(sentence_rouge_l(preds, refs))
    return results


def test_pair_sets_are_realistic():
    for name, (preds, refs) in PAIRS.items():
        assert len(preds) >= 400, name
    assert any(c in " ".join(PAIRS["tarot-perturbed"][1]) for c in "çãéêó")  # accented Portuguese


@pytest.mark.parametrize("name", list(PAIRS))
def test_rouge_l_equals_rouge_score_with_the_same_tokens(ours, name):
    preds, refs = PAIRS[name]
    reference = np.array(rouge_score_reference(preds, refs, UnicodeWords()))
    assert 0.1 < reference.mean() < 0.9, f"test premise broken: {name} has no partial overlap"
    assert abs(ours[name]["rougeL"] - reference.mean()) < 1e-4  # they agree to float32 rounding (asked: 0.005)
    assert np.abs(ours[name]["sentences"] - reference).max() < 1e-5  # what bootstrap intervals resample
    assert abs(ours[name]["sentences"].mean() - ours[name]["rougeL"]) < 1e-5


@pytest.mark.parametrize("name", ENGLISH)
def test_rouge_l_on_english_equals_rouge_score_defaults(ours, name):
    preds, refs = PAIRS[name]
    assert abs(ours[name]["rougeL"] - np.mean(rouge_score_reference(preds, refs))) < 1e-4


@pytest.mark.parametrize("name", PORTUGUESE)
def test_rouge_score_default_tokenizer_splits_accented_words(ours, name):
    """rouge-score keeps only [a-z0-9]: "coração" becomes "cora" + "o", and such fragments match across
    unrelated words, which inflates ROUGE-L on Portuguese (measured: +0.017 on other cards' readings, +0.011
    on perturbed readings). Ours keeps accented words whole; the README states the gap."""
    assert rouge_scorer.RougeScorer(["rougeL"])._tokenizer.tokenize("Coração, ação!") == ["cora", "o", "a", "o"]
    preds, refs = PAIRS[name]
    gap = np.mean(rouge_score_reference(preds, refs)) - ours[name]["rougeL"]
    assert 0.005 < gap < 0.03


def test_rouge_l_ignores_unicode_composition():
    composed = "O coração pede ação"
    decomposed = unicodedata.normalize("NFD", composed)  # "c" + U+0327 COMBINING CEDILLA, as some tools write
    assert decomposed != composed
    assert sentence_rouge_l([decomposed], [composed]) == [1.0]
    metrics = TextGenerationMetrics()
    metrics.update([decomposed], [composed])
    assert float(metrics.compute()["rougeL"]) == pytest.approx(1.0)


@pytest.mark.parametrize("name", list(PAIRS))
def test_corpus_bleu_equals_sacrebleu(ours, name):
    preds, refs = PAIRS[name]
    reference = sacrebleu.corpus_bleu(preds, [refs]).score  # 13a tokenization, exp smoothing
    assert ours[name]["bleu"] == pytest.approx(reference, abs=1e-4)
    statistic = corpus_bleu_statistic(preds, refs)  # what bootstrap intervals resample
    assert statistic(np.arange(len(preds))) == pytest.approx(reference, abs=1e-4)
    for idx in np.random.default_rng(0).integers(0, len(preds), size=(2, len(preds))):
        resampled = sacrebleu.corpus_bleu([preds[i] for i in idx], [[refs[i] for i in idx]]).score
        assert statistic(idx) == pytest.approx(resampled, abs=1e-4)


def test_bleu_is_smoothed_as_sacrebleu_when_no_4gram_matches(ours):
    """Titles share words with their descriptions but no 4-gram: unsmoothed BLEU would be exactly 0."""
    preds, refs = PAIRS["amazon-title"]
    assert sacrebleu.corpus_bleu(preds, [refs]).counts[3] == 0, "test premise broken: a 4-gram matches"
    assert ours["amazon-title"]["bleu"] > 0
    small = ["o sol brilha forte hoje", "a lua"]
    targets = ["o sol brilha hoje", "a lua cheia aparece"]
    metrics = TextGenerationMetrics()
    metrics.update(small, targets)
    assert float(metrics.compute()["bleu"]) == pytest.approx(sacrebleu.corpus_bleu(small, [targets]).score, abs=1e-4)


# -- images: fewer images than feature dimensions (n ≤ D), a fixed projection as the feature extractor ---------

class RandomProjection(nn.Module):
    """A fixed random projection of 16x16 downsampled images to D non-negative features with a common offset
    (like pooled activations). InceptionV3 cannot run here; torchmetrics' FID accepts any such module."""

    def __init__(self, num_features: int = 64, seed: int = 0, size: int = 16):
        super().__init__()
        self.num_features, self.size = num_features, size
        weight = torch.randn(3 * size * size, num_features, generator=torch.Generator().manual_seed(seed))
        self.register_buffer("weight", weight / (3 * size * size) ** 0.5)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(images.float() / 255, size=(self.size, self.size), mode="area").flatten(1)
        return torch.relu(4 * x @ self.weight) + 1.0


def images(n: int, seed: int, shift: int = 0) -> torch.Tensor:
    """Colour gradients with noise; ``shift`` brightens them (a different distribution)."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 1, 32).view(1, 1, 1, 32) * torch.rand(n, 3, 1, 1, generator=g) * 200
    return (ramp + 40 * torch.rand(n, 3, 32, 32, generator=g) + shift).clamp(0, 255).to(torch.uint8)


def torchmetrics_fid(extractor: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> float:
    fid = FrechetInceptionDistance(feature=extractor, normalize=False)
    fid.update(real, real=True)
    fid.update(fake, real=False)
    return float(fid.compute())


@pytest.mark.parametrize("n_real, n_fake, shift", [(48, 16, 30), (32, 48, 10), (40, 24, 0)])
def test_fid_and_its_bootstrap_statistic_equal_torchmetrics_with_fewer_images_than_features(n_real, n_fake, shift):
    extractor = RandomProjection(num_features=64)
    real, fake = images(n_real, seed=1), images(n_fake, seed=2, shift=shift)
    metrics = ImageGenerationMetrics(feature_extractor=extractor, clip_model=None, kid_subsets=2)
    metrics.set_real_images(real)
    metrics.update(fake, ["a prompt"] * n_fake)
    ours = float(metrics.compute()["fid"])
    real_mean, real_cov = metrics.real_statistics()
    features = metrics.generated_features
    assert torch.linalg.matrix_rank(real_cov) < 64 and torch.linalg.matrix_rank(features.double().T.cov()) < 64

    reference = torchmetrics_fid(extractor, real, fake)
    assert reference > 0.1, "test premise broken: the two image sets are alike"
    assert ours == pytest.approx(reference, rel=1e-4)
    assert fid_from_features(real_mean, real_cov, features) == pytest.approx(reference, rel=1e-4)
    statistic = fid_statistic(real_mean, real_cov, features)
    assert statistic(np.arange(n_fake)) == pytest.approx(reference, rel=1e-4)
    for idx in np.random.default_rng(0).integers(0, n_fake, size=(2, n_fake)):  # resamples repeat images
        assert statistic(idx) == pytest.approx(torchmetrics_fid(extractor, real, fake[idx]), rel=1e-4)


def unbiased_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """KID's definition: unbiased MMD² with the polynomial kernel (xᵀy / D + 1)³."""
    kernel = lambda a, b: (a @ b.T / a.shape[1] + 1) ** 3  # noqa: E731
    kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
    m, n = len(x), len(y)
    return ((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
            - 2 * kxy.mean())


def test_kid_equals_the_unbiased_mmd_when_subsets_hold_every_image():
    """With as many real as generated images, the clamped subset size takes every image in each subset, so
    KID is the MMD of the whole sets (and its std over subsets is 0)."""
    extractor = RandomProjection(num_features=64)
    real, fake = images(24, seed=1), images(24, seed=2, shift=20)
    metrics = ImageGenerationMetrics(feature_extractor=extractor, clip_model=None, kid_subsets=3)
    metrics.set_real_images(real)
    metrics.update(fake, ["a prompt"] * 24)
    out = metrics.compute()
    with torch.no_grad():
        reference = unbiased_mmd2(extractor(real).double().numpy(), extractor(fake).double().numpy())
    assert reference > 1e-3, "test premise broken: the two image sets are alike"
    assert float(out["kid"]) == pytest.approx(reference, rel=1e-4)
    assert float(out["kid_std"]) == pytest.approx(0, abs=1e-4 * reference)


def test_rouge_l_takes_any_sequence_of_texts_as_a_list():
    # torchmetrics reads a target that is not a list (a tuple, a datasets Column) as one sample's references, each
    # string a list of one-character references: 0.25 instead of 0.679 here
    from src.metrics.text import RougeL

    preds, targets = ["a red shoe", "tang"], ["a red running shoe", "full tang blade"]
    scores = []
    for convert in (list, tuple, iter):
        metric = RougeL()
        metric.update(convert(preds), convert(targets))
        scores.append(float(metric.compute()))
    assert scores == [pytest.approx(sum(sentence_rouge_l(preds, targets)) / 2, abs=1e-6)] * 3
