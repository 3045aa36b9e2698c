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
import inspect
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import CatMetric
from torchmetrics.utilities import dim_zero_cat

from src.distributed import concatenate_list_states
from src.errors import UserError

INCEPTION_FEATURES = (64, 192, 768, 2048)
INCEPTION_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_WEIGHTS}"
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
    (:func:`inception_cache_file`). Needs the ``torch-fidelity`` package, which itself needs a torchvision
    that imports beside the installed torch. :func:`inception_status` says beforehand whether this can work.
    ``kind="tiny"``: :class:`TinyFeatureExtractor` (default 64 features), for tests and smoke runs.

    >>> build_feature_extractor("tiny").num_features
    64
    >>> build_feature_extractor("inception", weights_path="/nowhere/weights.pth")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    src.errors.UserError: FID/KID with InceptionV3 need its weights file ... ('/nowhere/weights.pth' is not a file) ...
    """
    return _build_feature_extractor(kind, weights_path, num_features, "model.metrics.feature_extractor.")


def inception_cache_file() -> Path:
    """Where torch-fidelity's download lands: ``torch.hub.load_state_dict_from_url`` keeps the URL's file name
    under ``<torch hub dir>/checkpoints`` ($TORCH_HOME/hub, by default ~/.cache/torch/hub)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS


def inception_status(weights_path: str | None = None, timeout: float = 3.0,
                     key: str = "model.metrics.feature_extractor.") -> str | None:
    """None when FID/KID with InceptionV3 can run on this machine, else the one-line problem (for a preflight).

    Needs torch-fidelity importable, and the weights as the local file ``weights_path``, or (``weights_path``
    None) already in the torch hub cache or downloadable: a HEAD request to the weights URL within ``timeout``
    seconds. Loads nothing.

    >>> inception_status("/nowhere/weights.pth")  # doctest: +ELLIPSIS
    "FID/KID with InceptionV3 need its weights file ... ('/nowhere/weights.pth' is not a file) ..."
    """
    if weights_path is not None and not Path(weights_path).expanduser().is_file():
        return _missing_weights(weights_path, key, "weights_path", "kind")
    problem = _torch_fidelity_problem(f"or {key}kind=tiny for a smoke run")
    if problem or weights_path is not None or inception_cache_file().is_file():
        return problem
    reason = url_problem(INCEPTION_URL, timeout)
    return None if reason is None else _download_failed(reason, key, "weights_path", "kind")


def url_problem(url: str, timeout: float = 3.0) -> str | None:
    """None when a HEAD request to ``url`` (following redirects, still as HEAD) succeeds within ``timeout``
    seconds; else why not, in a few words."""
    import urllib.error
    import urllib.request

    class KeepHead(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, req, fp, code, msg, headers, newurl):
            new = super().redirect_request(req, fp, code, msg, headers, newurl)
            if new is not None:  # urllib turns a redirected HEAD into a GET (a download)
                new.method = req.get_method()
            return new

    opener = urllib.request.build_opener(KeepHead())
    try:
        with opener.open(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return None
    except urllib.error.HTTPError as err:
        return None if err.code == 405 else f"HTTP {err.code} {err.reason}"  # 405: up, but no HEAD
    except urllib.error.URLError as err:
        return str(err.reason)
    except OSError as err:  # a timeout while reading the response, a reset connection
        return str(err) or type(err).__name__


def _missing_weights(weights_path: str, key: str, weights_key: str, kind_key: str) -> str:
    return (f"FID/KID with InceptionV3 need its weights file {INCEPTION_WEIGHTS} (pt_inception-2015-12-05, "
            f"{INCEPTION_URL}) on this machine ('{weights_path}' is not a file) — set {key}{weights_key}=/path/to/it "
            f"(or null to download it into the torch hub cache), or {key}{kind_key}=tiny for a smoke run")


def _download_failed(reason: str, key: str, weights_key: str, kind_key: str) -> str:
    return (f"the InceptionV3 weights for FID/KID could not be downloaded ({reason}) — set {key}{weights_key} to a "
            f"local copy of {INCEPTION_WEIGHTS} (from {INCEPTION_URL}) or use {key}{kind_key}=tiny")


def _torch_fidelity_problem(smoke: str) -> str | None:
    """Why torchmetrics' InceptionV3 cannot be imported here, or None."""
    from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE

    if not _TORCH_FIDELITY_AVAILABLE:
        return ("the InceptionV3 feature extractor needs the torch-fidelity package — pip install "
                f"torch-fidelity (it needs a torchvision matching torch), {smoke}")
    try:
        from torchmetrics.image.fid import NoTrainInceptionV3  # noqa: F401
    except (ImportError, RuntimeError) as err:  # a torchvision built for another torch fails with either
        return (f"torch-fidelity is installed but does not import ({str(err).splitlines()[0]}) — install a "
                "torchvision matching torch (torchmetrics' FID and KID do not import without it, even with kind=tiny)")
    return None


def _build_feature_extractor(kind: str, weights_path: str | None, num_features: int | None, key: str,
                             weights_key: str = "weights_path", kind_key: str = "kind") -> nn.Module:
    """``key`` + ``weights_key``/``kind_key``: the config overrides named in error messages."""
    if kind == "tiny":
        return TinyFeatureExtractor(num_features=num_features or 64)
    if kind != "inception":
        raise UserError(f"unknown feature extractor kind '{kind}' — set {key}{kind_key} to inception "
                        "(FID/KID as published) or tiny (smoke runs)")
    num_features = num_features or 2048
    if num_features not in INCEPTION_FEATURES:
        raise UserError(f"InceptionV3 gives {INCEPTION_FEATURES} features, not {num_features} — "
                        f"set {key}num_features to one of them (2048 for published FID)")
    if weights_path is not None and not Path(weights_path).expanduser().is_file():
        raise UserError(_missing_weights(weights_path, key, weights_key, kind_key))
    problem = _torch_fidelity_problem(f"or {key}{kind_key}=tiny for a smoke run")
    if problem:
        raise UserError(problem)
    from torchmetrics.image.fid import NoTrainInceptionV3

    if weights_path is None:
        extractor = _downloaded_inception(NoTrainInceptionV3, num_features, key, weights_key, kind_key)
    else:
        try:
            extractor = NoTrainInceptionV3(name="inception-v3-compat", features_list=[str(num_features)],
                                           feature_extractor_weights_path=str(Path(weights_path).expanduser()),
                                           antialias=False)
        except (RuntimeError, OSError, ValueError, KeyError) as err:
            raise UserError(f"cannot load InceptionV3 weights from '{weights_path}' ({str(err).splitlines()[0]}) — "
                            f"{key}{weights_key} must be the file {INCEPTION_WEIGHTS}") from err
    extractor.num_features = num_features
    extractor.requires_grad_(False)
    return extractor


def _downloaded_inception(inception_class, num_features: int, key: str, weights_key: str, kind_key: str) -> nn.Module:
    """torch-fidelity's own mechanism: without a weights path it loads its release URL through torch.hub,
    which downloads once into :func:`inception_cache_file` and reads that file afterwards."""
    import pickle

    try:
        return inception_class(name="inception-v3-compat", features_list=[str(num_features)], antialias=False)
    except OSError as err:  # URLError, HTTPError, timeouts, SSL errors: no weights could be fetched
        reason = getattr(err, "reason", None) or str(err).splitlines()[0] or type(err).__name__
        raise UserError(_download_failed(str(reason), key, weights_key, kind_key)) from err
    except (RuntimeError, ValueError, KeyError, EOFError, pickle.UnpicklingError) as err:  # a truncated cache file
        raise UserError(f"cannot load the cached InceptionV3 weights {inception_cache_file()} "
                        f"({str(err).splitlines()[0]}) — delete that file to download it again, or set "
                        f"{key}{weights_key} to a local copy of {INCEPTION_WEIGHTS}") from err


class _Features(nn.Module):
    """What FID/KID see as their "network": the features computed once by the shared extractor."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features


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


class ImageGenerationMetrics(nn.Module):
    """FID, KID and CLIP score of generated images against a fixed set of real images.

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

    Under DDP each process passes its own shard of real and generated images; the torchmetrics
    states are gathered in ``compute()``, which every process must call.
    """

    def __init__(self, feature_extractor: str | nn.Module = "inception", feature_weights_path: str | None = None,
                 num_features: int | None = None, clip_model: str | None = DEFAULT_CLIP, kid_subsets: int = 100,
                 kid_subset_size: int = 1000, kid_seed: int = 0, batch_size: int = 32,
                 include: Sequence[str] = METRICS):
        super().__init__()
        self.include = _check_include(include, clip_model)
        self.clip = CatMetric(nan_strategy="error")
        self.clip_model = clip_model if "clip" in self.include else None
        self.extractor = self.fid = self.kid = None
        if {"fid", "kid"} & set(self.include):
            self._build_fid_kid(feature_extractor, feature_weights_path, num_features, kid_subsets, kid_subset_size)
        self.kid_subset_size = kid_subset_size
        self.kid_seed = kid_seed
        self.batch_size = batch_size
        self.real_images_set = False
        self.clip_scores = torch.zeros(0)
        self.generated_features = torch.zeros(0)
        self._clip_loaded: dict = {}  # a plain dict: the frozen CLIP stays out of state_dict() and parameters()
        self.register_buffer("_device_probe", torch.zeros(0), persistent=False)

    def _build_fid_kid(self, feature_extractor, feature_weights_path, num_features, kid_subsets, kid_subset_size):
        """One feature extractor for both: FID and KID always run together on the same features."""
        FID, KID = _torchmetrics_image()
        if isinstance(feature_extractor, str):
            feature_extractor = _build_feature_extractor(feature_extractor, feature_weights_path, num_features,
                                                         "model.metrics.", "feature_weights_path", "feature_extractor")
        elif not isinstance(feature_extractor, nn.Module) and callable(feature_extractor):
            feature_extractor = feature_extractor()  # a partial build_feature_extractor from the config
        self.extractor = feature_extractor.requires_grad_(False).eval()
        dim = getattr(feature_extractor, "num_features", None)
        if dim is None:
            with torch.no_grad():
                dim = feature_extractor(torch.zeros(1, 3, 64, 64, dtype=torch.uint8)).shape[-1]
        features = _Features(int(dim))
        fid_kwargs = {"antialias": False} if "antialias" in inspect.signature(FID.__init__).parameters else {}
        self.fid = FID(feature=features, reset_real_features=False, normalize=False, **fid_kwargs)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
            self.kid = KID(feature=features, subsets=kid_subsets, subset_size=kid_subset_size,
                           reset_real_features=False, normalize=False)
        concatenate_list_states(self.kid)  # uneven evaluation shards must not deadlock the sync

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
        self._clear_real()
        batches = [images] if isinstance(images, Tensor) else images
        with _full_precision(self.device):
            for batch in batches:
                for features in self._features(_check_images(batch, "set_real_images")):
                    self.fid.update(features, real=True)
                    self.kid.update(features, real=True)
        self.real_images_set = True

    def _clear_real(self) -> None:
        for name in ("real_features_sum", "real_features_cov_sum", "real_features_num_samples"):
            getattr(self.fid, name).zero_()
        self.kid.real_features = []

    def _clip(self):
        if not self._clip_loaded:
            from transformers import CLIPModel, CLIPProcessor

            from src.pretrained.loading import load_pretrained

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

    def _synced(self, metric):
        """Gather a metric's states across processes for the duration of the block (no-op on one process)."""

        @contextlib.contextmanager
        def context():
            metric.sync()
            try:
                yield
            finally:
                metric.unsync(should_unsync=metric._is_synced)

        return context()

    def compute(self) -> dict[str, Tensor]:
        nan = torch.tensor(float("nan"), device=self.device)
        out = self._compute_fid_kid() if self.uses_features else {}
        if self.clip_model is not None:
            scores = self.clip.compute()
            self.clip_scores = scores if isinstance(scores, Tensor) else torch.zeros(0, device=self.device)
            if self.clip_scores.numel():
                out.update(clip_mean=self.clip_scores.mean(), clip_min=self.clip_scores.min(),
                           clip_max=self.clip_scores.max())
            else:
                out.update(clip_mean=nan, clip_min=nan, clip_max=nan)
        return {k: v for k, v in out.items() if k in self.logged()}

    def _compute_fid_kid(self) -> dict[str, Tensor]:
        FID, KID = _torchmetrics_image()
        nan = torch.tensor(float("nan"), device=self.device)
        out = {}
        with _full_precision(self.device), self._synced(self.fid), self._synced(self.kid):
            n_real, n_fake = int(self.fid.real_features_num_samples), int(self.fid.fake_features_num_samples)
            self.generated_features = dim_zero_cat(self.kid.fake_features) if n_fake else torch.zeros(0)
            if min(n_real, n_fake) < 2:
                warnings.warn(f"FID/KID need at least 2 real and 2 generated images, got {n_real} and {n_fake}: "
                              "reporting NaN", stacklevel=2)
                out.update(fid=nan, kid=nan, kid_std=nan)
            else:
                # the unwrapped computations: states are already gathered above
                out["fid"] = FID.compute(self.fid).float().clamp(min=0)
                self.kid.subset_size = min(self.kid_subset_size, n_real, n_fake)
                try:
                    with torch.random.fork_rng(devices=[]):
                        torch.manual_seed(self.kid_seed)
                        kid, kid_std = KID.compute(self.kid)
                finally:
                    self.kid.subset_size = self.kid_subset_size
                out.update(kid=kid.float(), kid_std=kid_std.float())
        return out

    def reset(self) -> None:
        """Forget the generated images and CLIP scores; the real images' statistics stay."""
        if self.uses_features:
            self.fid.reset()
            self.kid.reset()
        self.clip.reset()
        self.clip_scores = torch.zeros(0, device=self.device)
        self.generated_features = torch.zeros(0)

    def real_statistics(self) -> tuple[Tensor, Tensor]:
        """Mean and covariance (float64) of the real images' features, as FID computes them."""
        if not self.uses_features:
            raise RuntimeError("no FID here: model.metrics.include has neither fid nor kid")
        with self._synced(self.fid):
            n = self.fid.real_features_num_samples
            mean = (self.fid.real_features_sum / n).unsqueeze(0)
            cov = (self.fid.real_features_cov_sum - n * mean.t().mm(mean)) / (n - 1)
        return mean.squeeze(0).cpu(), cov.cpu()


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
    from torchmetrics.image.fid import _compute_fid  # the same formula as FrechetInceptionDistance.compute

    features = features.double()
    if len(features) < 2:
        return float("nan")
    return max(float(_compute_fid(real_mean.double(), real_cov.double(), features.mean(0), features.T.cov())), 0.0)


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
