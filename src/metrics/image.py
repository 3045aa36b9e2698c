"""FID, KID and CLIP score for generated images, as torchmetrics states (synced across processes).

One feature extractor serves both FID and KID: every batch of images goes through it once and the
features feed both metrics. The real images' features are computed once per run and kept across
``reset()`` (``reset_real_features=False``); each validation round only adds generated images.

>>> import torch
>>> g = torch.Generator().manual_seed(0)
>>> real = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=g)
>>> metrics = ImageGenerationMetrics(feature_extractor="tiny", clip_model=None, kid_subsets=10)
>>> metrics.set_real_images(real)
>>> metrics.update(real[:4], prompts=["a red shoe"] * 4)          # generated images resembling the real ones
>>> close = metrics.compute()
>>> sorted(close)
['fid', 'kid', 'kid_std']
>>> metrics.reset()                                                # forgets generated images, keeps real ones
>>> metrics.update(torch.zeros(4, 3, 32, 32, dtype=torch.uint8), prompts=["a red shoe"] * 4)
>>> far = metrics.compute()
>>> bool(far["fid"] > close["fid"]), bool(far["kid"] > close["kid"])
(True, True)

Small image sets (a quickstart's 4 generated against 8 real images) work: KID's subset size is
clamped to the images available, and FID, whose covariances are rank-deficient when there are fewer
images than feature dimensions, is computed all the same (torchmetrics 1.9 takes the trace of the
matrix square root from the eigenvalues of ``sigma_real @ sigma_fake``; rounding can make it a hair
negative, so it is clamped at 0). Such numbers are noisy and biased upwards: compare runs at equal
image counts, and use thousands of images with the InceptionV3 extractor for numbers comparable with
published FID.
"""

import contextlib
import warnings
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat
from transformers import CLIPModel, CLIPProcessor

from src.errors import UserError
from src.metrics.inception import build_inception
from src.pretrained.loading import load_pretrained

DEFAULT_CLIP = "openai/clip-vit-large-patch14-336"
METRICS = ("fid", "kid", "clip")  # what ``include`` may name
LOGGED = {"fid": ("fid",), "kid": ("kid", "kid_std"), "clip": ("clip_mean", "clip_min", "clip_max")}


def _check_images(images: Tensor, what: str) -> Tensor:
    if not isinstance(images, Tensor) or images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        dtype = images.dtype if isinstance(images, Tensor) else ""
        raise ValueError(f"{what}: expected uint8 images [N, 3, H, W], got {dtype} {shape}; convert floats in [0, 1] "
                         "with (x.clamp(0, 1) * 255).round().to(torch.uint8)")
    return images


class TinyFeatureExtractor(nn.Module):
    """A small, fixed, randomly initialised conv net: uint8 images [N, 3, H, W] → float features [N, num_features].

    Deterministic for a given ``seed`` (weights are drawn at construction under a forked RNG, so the
    global random state is untouched). Images of any size are resized to ``resize`` × ``resize``.
    For tests and CPU quickstarts only: its FID is not comparable with published (InceptionV3) FID.

    >>> extractor = TinyFeatureExtractor(num_features=16)
    >>> extractor(torch.zeros(2, 3, 40, 24, dtype=torch.uint8)).shape
    torch.Size([2, 16])
    >>> bool((extractor(torch.full((1, 3, 8, 8), 255, dtype=torch.uint8))
    ...       == TinyFeatureExtractor(num_features=16)(torch.full((1, 3, 8, 8), 255, dtype=torch.uint8))).all())
    True
    """

    def __init__(self, num_features: int = 64, resize: int = 64, seed: int = 0):
        super().__init__()
        self.num_features = num_features
        self.resize = resize
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.convs = nn.ModuleList([nn.Conv2d(3, 16, 3, stride=2, padding=1),
                                        nn.Conv2d(16, 32, 3, stride=2, padding=1),
                                        nn.Conv2d(32, 64, 3, stride=2, padding=1)])
            self.proj = nn.Linear(2 * 64, num_features)
        self.requires_grad_(False)
        self.eval()

    def forward(self, images: Tensor) -> Tensor:
        x = _check_images(images, "TinyFeatureExtractor").float() / 127.5 - 1.0
        x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear", align_corners=False)
        for conv in self.convs:
            x = F.relu(conv(x))
        pooled = torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)
        return self.proj(pooled)


def build_feature_extractor(kind: str = "inception", weights_path: str | None = None,
                            num_features: int | None = None) -> nn.Module:
    """The image feature extractor shared by FID and KID, with an int ``num_features`` attribute.

    ``kind="inception"``: torchmetrics' InceptionV3 (``NoTrainInceptionV3``, the FID reference network,
    resizing like TensorFlow 1.x, i.e. ``antialias=False``) with ``num_features`` in 64/192/768/2048
    (default 2048). Its weights (``pt_inception-2015-12-05``, file ``weights-inception-2015-12-05-6726825d.pth``)
    come from ``weights_path`` if given, else torch-fidelity downloads them once into the torch hub cache
    (``src.metrics.inception.inception_cache_file``). Needs the ``torch-fidelity`` package, which itself needs a torchvision
    that imports beside the installed torch. ``inception_status`` says beforehand whether this can work.
    ``kind="tiny"``: :class:`TinyFeatureExtractor` (default 64 features), for tests and smoke runs.

    >>> build_feature_extractor("tiny").num_features
    64
    >>> build_feature_extractor("inception", weights_path="/nowhere/weights.pth")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    src.errors.UserError: FID/KID with InceptionV3 need its weights file ... ('/nowhere/weights.pth' is not a file) ...
    """
    return _build_feature_extractor(kind, weights_path, num_features, "model.metrics.feature_extractor.")


def _build_feature_extractor(kind: str, weights_path: str | None, num_features: int | None, key: str,
                             weights_key: str = "weights_path", kind_key: str = "kind") -> nn.Module:
    """``key`` + ``weights_key``/``kind_key``: the config overrides named in error messages."""
    if kind == "tiny":
        return TinyFeatureExtractor(num_features=num_features or 64)
    if kind != "inception":
        raise UserError(f"unknown feature extractor kind '{kind}' — set {key}{kind_key} to inception "
                        "(FID/KID as published) or tiny (smoke runs)")
    return build_inception(weights_path, num_features, key, weights_key, kind_key)


def _embeds(output) -> Tensor:
    """Projected CLIP embeddings from ``get_image_features``/``get_text_features``: a tensor in
    transformers 4, an output object whose ``pooler_output`` holds them in transformers 5."""
    if isinstance(output, Tensor):
        return output
    for name in ("image_embeds", "text_embeds", "pooler_output"):
        value = getattr(output, name, None)
        if isinstance(value, Tensor):
            return value
    raise TypeError(f"unexpected CLIP features output: {type(output).__name__}")


@torch.no_grad()
def clip_scores(model, processor, images: Tensor, prompts: list[str], batch_size: int = 32) -> Tensor:
    """CLIP score of each (image, prompt) pair: ``100 * max(cos(image_emb, text_emb), 0)``, in [0, 100].

    ``model`` is a transformers ``CLIPModel``, ``processor`` a ``CLIPProcessor`` (tokenizer + image
    processor); ``images`` are uint8 [N, 3, H, W]. Same definition as torchmetrics' ``CLIPScore``,
    per image instead of averaged.

    >>> import tempfile
    >>> from transformers import CLIPModel, CLIPProcessor
    >>> from src.pretrained.tiny_clip import tiny_clip
    >>> with tempfile.TemporaryDirectory() as cache:
    ...     path = tiny_clip(cache, prompts=["a red shoe"])
    ...     model, processor = CLIPModel.from_pretrained(path), CLIPProcessor.from_pretrained(path)
    >>> images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    >>> scores = clip_scores(model, processor, images, ["a red shoe", "a blue boot"])
    >>> scores.shape, bool(((scores >= 0) & (scores <= 100)).all())
    (torch.Size([2]), True)
    """
    images = _check_images(images, "clip_scores")
    if len(prompts) != len(images):
        raise ValueError(f"clip_scores: {len(images)} images but {len(prompts)} prompts")
    device = next(model.parameters()).device
    scores = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size].permute(0, 2, 3, 1).cpu().numpy()
        pixels = processor.image_processor(images=list(chunk), return_tensors="pt")["pixel_values"]
        text = processor.tokenizer(list(prompts[start:start + batch_size]), padding=True, truncation=True,
                                   return_tensors="pt")
        image_emb = _embeds(model.get_image_features(pixel_values=pixels.to(device, model.dtype)))
        text_emb = _embeds(model.get_text_features(input_ids=text["input_ids"].to(device),
                                                   attention_mask=text["attention_mask"].to(device)))
        cosine = F.cosine_similarity(image_emb.float(), text_emb.float(), dim=-1)
        scores.append(100 * cosine.clamp(min=0))
    return torch.cat(scores) if scores else torch.zeros(0, device=device)


@contextlib.contextmanager
def _full_precision(device: torch.device) -> Iterator[None]:
    """No gradients and no autocast: features and embeddings in float32 whatever the trainer's precision."""
    try:
        autocast = torch.autocast(device_type=device.type, enabled=False)
    except RuntimeError:
        autocast = contextlib.nullcontext()
    with torch.no_grad(), autocast:
        yield


def _torchmetrics_image():
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance
    except ImportError as err:  # torch-fidelity present but its torchvision import fails
        raise UserError(f"torchmetrics' image metrics do not import ({str(err).splitlines()[0]}) — install a "
                        "torchvision matching torch, or uninstall torch-fidelity") from err
    return FrechetInceptionDistance, KernelInceptionDistance



def frechet_distance(mean_a: Tensor, cov_a: Tensor, mean_b: Tensor, cov_b: Tensor) -> Tensor:
    """``||μa - μb||² + tr(Σa + Σb - 2 (Σa Σb)^½)``, the trace of the square root taken from the eigenvalues of
    ``Σa Σb`` (as torchmetrics' ``FrechetInceptionDistance`` computes it)."""
    return ((mean_a - mean_b).square().sum(dim=-1) + cov_a.trace() + cov_b.trace()
            - 2 * torch.linalg.eigvals(cov_a @ cov_b).sqrt().real.sum(dim=-1))


def _mean_and_cov(total: Tensor, cov_sum: Tensor, n: Tensor) -> tuple[Tensor, Tensor]:
    mean = (total / n).unsqueeze(0)
    return mean.squeeze(0), (cov_sum - n * mean.t().mm(mean)) / (n - 1)


class FeatureFID(Metric):
    """FID between real and generated images' features [N, D] (float64 sums, summed across processes).

    The real images' statistics survive ``reset()``: they are computed once per run, each evaluation round only
    adds generated images. Fewer than 2 images on either side give NaN.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, num_features: int, **kwargs):
        super().__init__(**kwargs)
        for side in ("real", "fake"):
            self.add_state(f"{side}_features_sum", torch.zeros(num_features, dtype=torch.double), dist_reduce_fx="sum")
            self.add_state(f"{side}_features_cov_sum", torch.zeros(num_features, num_features, dtype=torch.double),
                           dist_reduce_fx="sum")
            self.add_state(f"{side}_features_num_samples", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, features: Tensor, real: bool) -> None:
        side = "real" if real else "fake"
        features = features.double()
        setattr(self, f"{side}_features_sum", getattr(self, f"{side}_features_sum") + features.sum(dim=0))
        setattr(self, f"{side}_features_cov_sum", getattr(self, f"{side}_features_cov_sum") + features.t().mm(features))
        setattr(self, f"{side}_features_num_samples", getattr(self, f"{side}_features_num_samples") + len(features))

    def compute(self) -> dict[str, Tensor]:
        """``fid`` (float32, clamped at 0: rounding can make it a hair negative), the real statistics
        (``real_mean``, ``real_cov``, float64) and both image counts."""
        n_real, n_fake = self.real_features_num_samples, self.fake_features_num_samples
        real_mean, real_cov = _mean_and_cov(self.real_features_sum, self.real_features_cov_sum, n_real)
        fid = torch.tensor(float("nan"), device=self.real_features_sum.device)
        if min(int(n_real), int(n_fake)) >= 2:
            fake_mean, fake_cov = _mean_and_cov(self.fake_features_sum, self.fake_features_cov_sum, n_fake)
            fid = frechet_distance(real_mean, real_cov, fake_mean, fake_cov).float().clamp(min=0)
        return {"fid": fid, "real_mean": real_mean, "real_cov": real_cov, "real_count": n_real, "generated_count": n_fake}

    def reset(self) -> None:
        """Forget the generated images; the real ones stay (``reset_real`` forgets them too)."""
        real = {name: getattr(self, name) for name in self._defaults if name.startswith("real_")}
        super().reset()
        for name, value in real.items():
            setattr(self, name, value)

    def reset_real(self) -> None:
        super().reset()


class FeatureKID(Metric):
    """KID between real and generated images' features: the unbiased MMD² with the polynomial kernel
    ``(xᵀy / D + 1)³``, averaged over ``subsets`` random subsets of ``subset_size`` images (clamped to the images
    there are) drawn from their own RNG seeded by ``seed``. Features are gathered across processes; the real ones
    survive ``reset()``."""

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, subsets: int = 100, subset_size: int = 1000, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.subsets, self.subset_size, self.seed = subsets, subset_size, seed
        # "cat" gathers each list once: uneven evaluation shards cannot deadlock the sync
        self.add_state("real_features", [], dist_reduce_fx="cat")
        self.add_state("fake_features", [], dist_reduce_fx="cat")

    def update(self, features: Tensor, real: bool) -> None:
        (self.real_features if real else self.fake_features).append(features)

    def compute(self) -> dict[str, Tensor]:
        """``kid`` and ``kid_std`` over subsets (NaN with fewer than 2 images on a side), and the generated
        images' features (``generated_features``, what bootstrap intervals resample)."""
        real, fake = _cat(self.real_features), _cat(self.fake_features)
        nan = torch.tensor(float("nan"), device=real.device)
        if min(len(real), len(fake)) < 2:
            return {"kid": nan, "kid_std": nan, "generated_features": fake}
        size = min(self.subset_size, len(real), len(fake))
        with torch.random.fork_rng(devices=[]):  # the global RNG is left as it was
            torch.manual_seed(self.seed)
            scores = torch.stack([polynomial_mmd(real[torch.randperm(len(real))[:size]],
                                                 fake[torch.randperm(len(fake))[:size]]) for _ in range(self.subsets)])
        return {"kid": scores.mean().float(), "kid_std": scores.std(unbiased=False).float(), "generated_features": fake}

    def reset(self) -> None:
        real = list(self.real_features)  # Metric.reset empties list states in place
        super().reset()
        self.real_features = real

    def reset_real(self) -> None:
        super().reset()


def _cat(state: list[Tensor] | Tensor) -> Tensor:
    """A list state's tensors as one (a list of per-batch tensors, or one tensor once gathered across processes)."""
    if isinstance(state, Tensor):
        return state
    return dim_zero_cat(state) if state else torch.zeros(0)


def polynomial_mmd(real: Tensor, fake: Tensor, degree: int = 3, coef: float = 1.0) -> Tensor:
    """Unbiased MMD² of two equal-sized feature sets with the kernel ``(xᵀy / D + coef) ** degree``."""
    gamma = 1.0 / real.shape[1]

    def kernel(a: Tensor, b: Tensor) -> Tensor:
        return (a @ b.T * gamma + coef) ** degree

    k_rr, k_ff, k_rf = kernel(real, real), kernel(fake, fake), kernel(real, fake)
    m = k_rr.shape[0]
    within = (k_rr.sum(dim=-1) - torch.diag(k_rr)).sum() + (k_ff.sum(dim=-1) - torch.diag(k_ff)).sum()
    return within / (m * (m - 1)) - 2 * k_rf.sum(dim=0).sum() / m**2


class CLIPScores(Metric):
    """Per-image CLIP scores (``clip_scores``), gathered across processes; ``compute()`` gives their mean, min and
    max (NaN without images) and the scores themselves."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("scores", [], dist_reduce_fx="cat")

    def update(self, scores: Tensor) -> None:
        self.scores.append(scores)

    def compute(self) -> dict[str, Tensor]:
        scores = _cat(self.scores)
        nan = torch.tensor(float("nan"), device=scores.device)
        if not scores.numel():
            return {"clip_mean": nan, "clip_min": nan, "clip_max": nan, "clip_scores": scores}
        return {"clip_mean": scores.mean(), "clip_min": scores.min(), "clip_max": scores.max(), "clip_scores": scores}


# the Metric whose ``higher_is_better`` says which way each monitorable score is better
MONITORABLE = {"fid": FeatureFID, "kid": FeatureKID, "clip_mean": CLIPScores}


class ImageGenerationMetrics(nn.Module):
    """FID, KID and CLIP score of generated images against a fixed set of real images: one feature extractor
    shared by ``FeatureFID`` and ``FeatureKID`` (each image goes through it once), and ``CLIPScores``. Each is a
    torchmetrics ``Metric``: its ``compute()`` gathers its own states across processes.

    Args:
        feature_extractor: ``"inception"``, ``"tiny"``, an ``nn.Module`` mapping uint8 [N, 3, H, W] to
            [N, D] features (with a ``num_features`` attribute, else it is probed once), or a callable that
            builds one (the configs pass ``build_feature_extractor`` partially applied): it is called only
            when ``include`` names FID or KID.
        feature_weights_path: InceptionV3 weights file for ``feature_extractor="inception"``; None downloads
            them once into the torch hub cache (see :func:`build_feature_extractor`).
        num_features: feature dimension for the built-in extractors (inception: 2048, tiny: 64).
        clip_model: hub id or local directory of a CLIP model (with its processor), loaded on first
            use; ``None`` disables CLIP score (no ``clip_*`` keys).
        kid_subsets, kid_subset_size: KID's subsets; the size is clamped to the images present.
        kid_seed: KID's subset sampling uses its own RNG, so results are reproducible and the
            global random state is untouched.
        batch_size: images per forward pass of the extractor and of CLIP.
        include: which of ``fid``, ``kid``, ``clip`` to compute. ``[clip]`` alone builds no feature extractor
            (no InceptionV3 weights, no torch-fidelity) and keeps no real images: monitor ``val/clip_mean``.

    ``set_real_images`` (once), then per evaluation round ``update`` → ``compute`` → ``reset``.
    ``compute()`` returns ``fid``, ``kid`` (mean over subsets), ``kid_std``, ``clip_mean``,
    ``clip_min``, ``clip_max`` (scalar tensors, already reduced over processes) and leaves the
    per-image CLIP scores in ``self.clip_scores`` and the generated images' features in
    ``self.generated_features`` (for bootstrap intervals; ``reset()`` clears both). Fewer than 2 real or 2
    generated images give NaN FID/KID (with a warning) instead of an error.

    Under DDP each process passes its own shard of real and generated images; ``compute()`` gathers them, so
    every process must call it.
    """

    def __init__(self, feature_extractor: str | nn.Module = "inception", feature_weights_path: str | None = None,
                 num_features: int | None = None, clip_model: str | None = DEFAULT_CLIP, kid_subsets: int = 100,
                 kid_subset_size: int = 1000, kid_seed: int = 0, batch_size: int = 32,
                 include: Sequence[str] = METRICS):
        super().__init__()
        self.include = _check_include(include, clip_model)
        self.clip = CLIPScores()
        self.clip_model = clip_model if "clip" in self.include else None
        self.extractor = self.fid = self.kid = None
        if {"fid", "kid"} & set(self.include):
            self.extractor = _extractor(feature_extractor, feature_weights_path, num_features)
            self.fid = FeatureFID(_num_features(self.extractor))
            self.kid = FeatureKID(kid_subsets, kid_subset_size, kid_seed)
        self.batch_size = batch_size
        self.real_images_set = False
        self.clip_scores = torch.zeros(0)
        self.generated_features = torch.zeros(0)
        self._real_statistics: tuple[Tensor, Tensor] | None = None
        self._clip_loaded: dict = {}  # a plain dict: the frozen CLIP stays out of state_dict() and parameters()
        self.register_buffer("_device_probe", torch.zeros(0), persistent=False)

    @property
    def device(self) -> torch.device:
        return self._device_probe.device

    @property
    def uses_features(self) -> bool:
        """FID/KID: an image feature extractor and the real images' features."""
        return self.fid is not None

    def logged(self) -> tuple[str, ...]:
        """The keys ``compute()`` returns."""
        computed = [m for m in self.include if m != "clip" or self.clip_model is not None]
        return tuple(k for m in computed for k in LOGGED[m])

    def check_monitor(self, monitor: str) -> None:
        """A one-line error when the model's monitor names a metric these settings do not compute."""
        name = monitor.partition("/")[2]
        if name and name not in self.logged():
            computed = ", ".join(f"val/{k}" for k in self.logged() if k in ("fid", "kid", "clip_mean"))
            needed = "clip" if name.startswith("clip") else name
            raise UserError(f"model.monitor={monitor} is not computed with model.metrics.include="
                            f"[{', '.join(self.include)}] — monitor {computed or 'a computed metric'} (val/clip_mean "
                            f"with model.mode=max), or add {needed} to model.metrics.include")

    def _features(self, images: Tensor) -> Iterator[Tensor]:
        for start in range(0, len(images), self.batch_size):
            yield self.extractor(images[start:start + self.batch_size].to(self.device)).float()

    def set_real_images(self, images: Tensor | Iterable[Tensor], force: bool = False) -> None:
        """Add the real images (a uint8 [N, 3, H, W] tensor or an iterable of such batches) to FID and KID.

        Only the first call computes features; later calls do nothing, so a validation step can call it
        every epoch. ``force=True`` replaces the real images.
        """
        if self.real_images_set and not force:
            return
        if not self.uses_features:  # CLIP score needs no real images
            self.real_images_set = True
            return
        self.fid.reset_real()
        self.kid.reset_real()
        batches = [images] if isinstance(images, Tensor) else images
        with _full_precision(self.device):
            for batch in batches:
                for features in self._features(_check_images(batch, "set_real_images")):
                    self.fid.update(features, real=True)
                    self.kid.update(features, real=True)
        self.real_images_set = True

    def _clip(self):
        if not self._clip_loaded:
            model = load_pretrained(CLIPModel, self.clip_model).eval().requires_grad_(False)
            self._clip_loaded.update(model=model, processor=load_pretrained(CLIPProcessor, self.clip_model))
        model = self._clip_loaded["model"].to(self.device)
        return model, self._clip_loaded["processor"]

    def update(self, images: Tensor, prompts: list[str]) -> None:
        """Add generated uint8 images [N, 3, H, W] and the prompts they were generated from."""
        images = _check_images(images, "ImageGenerationMetrics.update")
        if len(prompts) != len(images):
            raise ValueError(f"ImageGenerationMetrics.update: {len(images)} images but {len(prompts)} prompts")
        with _full_precision(self.device):
            for features in self._features(images) if self.uses_features else ():
                self.fid.update(features, real=False)
                self.kid.update(features, real=False)
            if self.clip_model is not None:
                model, processor = self._clip()
                self.clip.update(clip_scores(model, processor, images.to(self.device), list(prompts),
                                             self.batch_size).to(self.device))

    def compute(self) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        if self.uses_features:
            with _full_precision(self.device), warnings.catch_warnings():
                # the real images count as an update: a round without generated images is warned about below
                warnings.filterwarnings("ignore", message=".*was called before the ``update`` method.*")
                fid, kid = self.fid.compute(), self.kid.compute()
            n_real, n_fake = int(fid["real_count"]), int(fid["generated_count"])
            if min(n_real, n_fake) < 2:
                warnings.warn(f"FID/KID need at least 2 real and 2 generated images, got {n_real} and {n_fake}: "
                              "reporting NaN", stacklevel=2)
            self._real_statistics = (fid["real_mean"], fid["real_cov"])
            self.generated_features = kid["generated_features"] if n_fake else torch.zeros(0)
            out.update(fid=fid["fid"], kid=kid["kid"], kid_std=kid["kid_std"])
        if self.clip_model is not None:
            clip = self.clip.compute()
            self.clip_scores = clip.pop("clip_scores")
            out.update(clip)
        return {k: v for k, v in out.items() if k in self.logged()}

    def reset(self) -> None:
        """Forget the generated images and CLIP scores; the real images' statistics stay."""
        if self.uses_features:
            self.fid.reset()
            self.kid.reset()
        self.clip.reset()
        self.clip_scores = torch.zeros(0, device=self.device)
        self.generated_features = torch.zeros(0)

    def real_statistics(self) -> tuple[Tensor, Tensor]:
        """Mean and covariance (float64) of the real images' features, as FID computes them (after ``compute``)."""
        if not self.uses_features:
            raise RuntimeError("no FID here: model.metrics.include has neither fid nor kid")
        if self._real_statistics is None:
            self.compute()
        mean, cov = self._real_statistics
        return mean.cpu(), cov.cpu()


def _extractor(feature_extractor, weights_path: str | None, num_features: int | None) -> nn.Module:
    if isinstance(feature_extractor, str):
        feature_extractor = _build_feature_extractor(feature_extractor, weights_path, num_features, "model.metrics.",
                                                     "feature_weights_path", "feature_extractor")
    elif not isinstance(feature_extractor, nn.Module) and callable(feature_extractor):
        feature_extractor = feature_extractor()  # a partial build_feature_extractor from the config
    return feature_extractor.requires_grad_(False).eval()


def _num_features(extractor: nn.Module) -> int:
    dim = getattr(extractor, "num_features", None)
    if dim is None:
        with torch.no_grad():
            dim = extractor(torch.zeros(1, 3, 64, 64, dtype=torch.uint8)).shape[-1]
    return int(dim)


def _check_include(include: Sequence[str], clip_model) -> tuple[str, ...]:
    """The metrics to compute, in a fixed order; a one-line error for unknown names or nothing to compute."""
    include = tuple(str(m).lower() for m in (include or ()))
    unknown = sorted(set(include) - set(METRICS))
    if unknown or not include:
        raise UserError(f"model.metrics.include={list(include)} — use a non-empty list of {', '.join(METRICS)} "
                        "(e.g. [clip] for CLIP score alone)")
    if set(include) == {"clip"} and clip_model is None:
        raise UserError("model.metrics.include=[clip] but model.metrics.clip_model is null: nothing to compute — set "
                        "model.metrics.clip_model to a CLIP model, or add fid to model.metrics.include")
    return tuple(m for m in METRICS if m in include)


def fid_from_features(real_mean: Tensor, real_cov: Tensor, features: Tensor) -> float:
    """FID of generated ``features`` [N, D] against fixed real statistics (torchmetrics' formula, float64).

    >>> g = torch.Generator().manual_seed(0)
    >>> real = torch.randn(500, 4, generator=g, dtype=torch.float64)
    >>> mean, cov = real.mean(0), real.T.cov()
    >>> round(fid_from_features(mean, cov, real), 6), fid_from_features(mean, cov, real + 3) > 30
    (0.0, True)
    """
    features = features.double()
    if len(features) < 2:
        return float("nan")
    return max(float(frechet_distance(real_mean.double(), real_cov.double(), features.mean(0), features.T.cov())), 0.0)


def fid_statistic(real_mean: Tensor, real_cov: Tensor, features: Tensor):
    """A bootstrap statistic: FID of the generated images at the given indices, the real statistics fixed.

    ``tr sqrt(Σr Σg)`` is computed as the sum of square roots of the eigenvalues of the symmetric
    ``A Aᵀ``, ``A = (X - x̄) Σr^½ / sqrt(n - 1)`` (the same eigenvalues as ``Σr Σg``): with ``Σr^½`` computed
    once, each resample costs a symmetric eigen-decomposition of size ``min(n, D)`` instead of a general
    one of size ``D``, which makes 200 resamples of a few hundred 2048-dimensional features cheap.

    >>> g = torch.Generator().manual_seed(0)
    >>> real, fake = torch.randn(300, 16, generator=g), torch.randn(40, 16, generator=g) + 0.5
    >>> mean, cov = real.double().mean(0), real.double().T.cov()
    >>> fid = fid_statistic(mean, cov, fake)
    >>> abs(fid(np.arange(40)) - fid_from_features(mean, cov, fake)) < 1e-6
    True
    """
    features = features.double().cpu()
    real_mean, real_cov = real_mean.double().cpu(), real_cov.double().cpu()
    values, vectors = torch.linalg.eigh(real_cov)
    real_sqrt = vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T
    real_trace = float(real_cov.trace())

    def statistic(idx) -> float:
        x = features[torch.as_tensor(np.asarray(idx))]
        n = len(x)
        if n < 2:
            return float("nan")
        mean = x.mean(0)
        a = (x - mean) @ real_sqrt / (n - 1) ** 0.5
        gram = a @ a.T if n <= a.shape[1] else a.T @ a
        trace_sqrt = float(torch.linalg.eigvalsh(gram).clamp(min=0).sqrt().sum())
        generated_trace = float((x - mean).square().sum()) / (n - 1)
        return max(float((mean - real_mean).square().sum()) + real_trace + generated_trace - 2 * trace_sqrt, 0.0)

    return statistic
