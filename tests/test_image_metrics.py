"""Image metrics: FID/KID on a shared extractor with real features computed once, CLIP score on a
tiny offline CLIP, and clear errors for the offline InceptionV3 setup. CPU, offline, seconds."""

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import AutoTokenizer, CLIPModel, CLIPProcessor

from src.errors import UserError
from src.metrics import inception
from src.metrics.image import ImageGenerationMetrics, TinyFeatureExtractor, build_feature_extractor, clip_scores
from src.metrics.inception import inception_status
from src.pretrained.tiny_clip import tiny_clip

PROMPTS = ["a red running shoe", "a black leather boot", "a blue sneaker with white laces", "a golden sun card"]


def noise(n: int, seed: int, size: int = 32) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def black(n: int, size: int = 32) -> torch.Tensor:
    return torch.zeros(n, 3, size, size, dtype=torch.uint8)


class CountingExtractor(nn.Module):
    """The tiny extractor, counting the images it sees."""

    def __init__(self):
        super().__init__()
        self.inner = TinyFeatureExtractor(num_features=32)
        self.num_features = self.inner.num_features
        self.calls = 0
        self.images = 0

    def forward(self, images):
        self.calls += 1
        self.images += len(images)
        return self.inner(images)


@pytest.fixture(scope="module")
def shoes_metadata(tmp_path_factory) -> str:
    """An imagefolder-style metadata.jsonl whose captions are the tokenizer's corpus."""
    metadata = tmp_path_factory.mktemp("shoes") / "metadata.jsonl"
    metadata.write_text("".join(json.dumps({"file_name": f"{i}.png", "text": p}) + "\n" for i, p in enumerate(PROMPTS)))
    return str(metadata)


@pytest.fixture(scope="module")
def clip_dir(cache_dir, shoes_metadata) -> str:
    return tiny_clip(str(cache_dir), corpus_files=[shoes_metadata], prompts=["a photo of a shoe"])


def test_tiny_clip_builds_once_and_loads_with_from_pretrained(clip_dir, cache_dir, shoes_metadata, tmp_path):
    path = Path(clip_dir)
    assert path.name.startswith("tiny_clip-")
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    # same spec and corpus → the cached directory, not a rebuild
    assert tiny_clip(str(cache_dir), corpus_files=[shoes_metadata], prompts=["a photo of a shoe"]) == clip_dir
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp
    # other prompts → another model
    assert tiny_clip(str(cache_dir), corpus_files=[shoes_metadata], prompts=["another prompt"]) != clip_dir

    model = CLIPModel.from_pretrained(clip_dir)
    tokenizer = AutoTokenizer.from_pretrained(clip_dir)
    processor = CLIPProcessor.from_pretrained(clip_dir)
    assert model.config.vision_config.image_size == 32
    assert tokenizer.model_max_length == 77 and len(tokenizer) == model.config.text_config.vocab_size
    ids = tokenizer("a red running shoe")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert len(ids) < len("a red running shoe")  # learned merges, not one token per character
    pixels = processor(images=[noise(1, 0, size=50)[0].permute(1, 2, 0).numpy()], return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 32, 32)


def test_tiny_clip_reuses_the_cache(cache_dir, tmp_path):
    corpus = tmp_path / "captions.txt"
    corpus.write_text("a red shoe\na blue boot\n")
    first = tiny_clip(str(cache_dir), corpus_files=[str(corpus)])
    stamp = (Path(first) / "model.safetensors").stat().st_mtime_ns
    assert tiny_clip(str(cache_dir), corpus_files=[str(corpus)]) == first
    assert (Path(first) / "model.safetensors").stat().st_mtime_ns == stamp
    corpus.write_text("a red shoe\na blue boot\na green hat\n")
    assert tiny_clip(str(cache_dir), corpus_files=[str(corpus)]) != first  # the corpus is part of the key


def metrics(**kwargs) -> ImageGenerationMetrics:
    kwargs.setdefault("feature_extractor", "tiny")
    kwargs.setdefault("clip_model", None)
    kwargs.setdefault("kid_subsets", 20)
    return ImageGenerationMetrics(**kwargs)


def test_identical_sets_give_zero_fid_and_different_sets_a_larger_fid_and_kid():
    m = metrics()
    real = noise(8, seed=0)
    m.set_real_images(real)
    m.update(real, PROMPTS * 2)
    same = m.compute()
    assert set(same) == {"fid", "kid", "kid_std"}
    assert abs(float(same["fid"])) < 1e-3 and abs(float(same["kid"])) < 1e-3

    m.reset()
    m.update(black(8), PROMPTS * 2)
    far = m.compute()
    assert float(far["fid"]) > 10 * max(float(same["fid"]), 1e-4)
    assert float(far["kid"]) > float(same["kid"]) + 1e-4
    assert all(math.isfinite(float(v)) for v in far.values())


def test_few_images_work_and_too_few_give_nan():
    m = metrics(kid_subset_size=1000)  # clamped to the 4 generated images
    m.set_real_images(noise(8, seed=0))
    m.update(noise(4, seed=1), PROMPTS)
    out = m.compute()
    assert all(math.isfinite(float(v)) for v in out.values()) and float(out["fid"]) >= 0
    m.reset()
    m.update(noise(1, seed=2), PROMPTS[:1])
    with pytest.warns(UserWarning, match="at least 2"):
        out = m.compute()
    assert math.isnan(float(out["fid"])) and math.isnan(float(out["kid"]))


def test_real_features_are_computed_once_across_rounds():
    extractor = CountingExtractor()
    m = ImageGenerationMetrics(feature_extractor=extractor, clip_model=None, kid_subsets=5, batch_size=4)
    real = noise(8, seed=0)
    m.set_real_images(real)
    assert (extractor.calls, extractor.images) == (2, 8)  # 2 batches of 4, shared by FID and KID
    results = []
    for round_ in range(3):
        m.set_real_images(real)  # a validation step may call it every epoch: no-op
        m.update(noise(4, seed=10 + round_), PROMPTS)
        results.append(m.compute())
        m.reset()
    assert extractor.images == 8 + 3 * 4
    assert int(m.fid.real_features_num_samples) == 8 and int(m.fid.fake_features_num_samples) == 0
    assert sum(len(f) for f in m.kid.real_features) == 8 and len(m.kid.fake_features) == 0

    # the same generated images against the kept real statistics give the same numbers again
    m.update(noise(4, seed=10), PROMPTS)
    assert torch.allclose(m.compute()["fid"], results[0]["fid"]) and torch.allclose(m.compute()["kid"], results[0]["kid"])

    # force=True replaces (not adds to) the real images
    m.set_real_images(black(6), force=True)
    assert int(m.fid.real_features_num_samples) == 6 and extractor.images == 8 + 4 * 4 + 6


def test_bad_images_fail_clearly():
    m = metrics()
    with pytest.raises(ValueError, match="uint8"):
        m.set_real_images(torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match="prompts"):
        m.update(black(2), PROMPTS[:1])


def reference_clip_scores(model, processor, images, prompts) -> torch.Tensor:
    """100 * max(cos, 0) from CLIPModel's own forward (normalised image_embeds/text_embeds)."""
    inputs = processor(text=prompts, images=list(images.permute(0, 2, 3, 1).numpy()), return_tensors="pt",
                       padding=True)
    with torch.no_grad():
        out = model(**inputs)
    return 100 * (out.image_embeds * out.text_embeds).sum(-1).clamp(min=0)


# on the random tiny CLIP these prompts give 4 distinct positive scores for noise(4, seed=1), PROMPTS give
# negative cosines (scores clamped to 0): the tests check both premises before relying on them
UNRELATED = ["zzz qqq xxx"] * 4


def test_clip_scores_per_image_and_summary(clip_dir):
    images = noise(4, seed=1)
    m = metrics(clip_model=clip_dir)
    m.set_real_images(noise(8, seed=0))
    m.update(images[:2], UNRELATED[:2])
    m.update(images[2:], UNRELATED[2:])
    out = m.compute()
    assert set(out) == {"fid", "kid", "kid_std", "clip_mean", "clip_min", "clip_max"}
    scores = m.clip_scores
    assert scores.shape == (4,) and bool(((scores >= 0) & (scores <= 100)).all())
    assert scores.unique().numel() == 4 and bool((scores > 0).all()), f"test premise broken: {scores}"
    assert torch.isclose(out["clip_mean"], scores.mean())
    assert out["clip_min"] == scores.min() and out["clip_max"] == scores.max()

    m.reset()
    assert m.clip_scores.numel() == 0
    m.update(images, UNRELATED)
    m.compute()
    assert torch.allclose(m.clip_scores, scores)  # a new round scores afresh, not on top of the old scores


def test_clip_scores_match_clip_definition_and_are_deterministic(clip_dir):
    images = noise(4, seed=1)
    model, processor = CLIPModel.from_pretrained(clip_dir), CLIPProcessor.from_pretrained(clip_dir)
    unrelated = clip_scores(model, processor, images, UNRELATED, batch_size=3)
    matching = clip_scores(model, processor, images, PROMPTS, batch_size=3)
    assert torch.allclose(unrelated, reference_clip_scores(model, processor, images, UNRELATED), atol=1e-4)
    assert torch.allclose(matching, reference_clip_scores(model, processor, images, PROMPTS), atol=1e-4)
    assert bool((matching == 0).any()), f"test premise broken (no negative cosine to clamp): {matching}"
    assert not torch.allclose(matching, unrelated)  # the prompt matters (random model: not which is higher)

    # deterministic: a fresh metrics instance (its own CLIP load) gives the same per-image scores
    again = metrics(clip_model=clip_dir)
    again.set_real_images(noise(8, seed=0))
    again.update(images, PROMPTS)
    again.compute()
    assert torch.allclose(again.clip_scores, matching, atol=1e-5)


def test_clip_model_that_cannot_load_is_one_line_user_error(tmp_path):
    m = metrics(clip_model=str(tmp_path / "no-such-clip"))
    m.set_real_images(noise(4, seed=0))
    with pytest.raises(UserError) as err:
        m.update(noise(2, seed=1), PROMPTS[:2])
    assert "no-such-clip" in str(err.value) and "\n" not in str(err.value)


def test_inception_without_weights_is_one_line_user_error(tmp_path):
    path = str(tmp_path / "missing.pth")  # weights_path=None downloads instead: see the tests at the end
    with pytest.raises(UserError) as err:
        build_feature_extractor("inception", weights_path=path)
    message = str(err.value)
    assert "\n" not in message
    assert "weights-inception-2015-12-05" in message and "tiny" in message
    assert "model.metrics.feature_extractor.weights_path=" in message  # the override in conf/model/*.yaml
    with pytest.raises(UserError, match="model.metrics.feature_weights_path="):
        ImageGenerationMetrics(feature_extractor="inception", feature_weights_path=path, clip_model=None)
    with pytest.raises(UserError, match="64, 192, 768, 2048"):
        build_feature_extractor("inception", weights_path=path, num_features=100)
    with pytest.raises(UserError, match="unknown feature extractor"):
        build_feature_extractor("resnet")


def test_inception_without_torch_fidelity_is_one_line_user_error(tmp_path):
    from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE

    if _TORCH_FIDELITY_AVAILABLE:
        pytest.skip("torch-fidelity is installed here")
    weights = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    torch.save({}, weights)
    with pytest.raises(UserError, match="torch-fidelity") as err:
        build_feature_extractor("inception", weights_path=str(weights))
    assert "\n" not in str(err.value)


# -- InceptionV3 weights: a given file, else torch-fidelity's download into the torch hub cache ----------------
# torch-fidelity cannot import beside this torch, so its class and the network are stood in for here.

FIDELITY_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"  # torch_fidelity's
                "weights-inception-2015-12-05-6726825d.pth")                          # URL_INCEPTION_V3


class FakeInception(nn.Module):
    """Stands in for torchmetrics' NoTrainInceptionV3 and does what torch-fidelity does with the weights:
    a given path is ``torch.load``-ed, no path goes through ``torch.hub.load_state_dict_from_url``."""

    calls: list[dict] = []

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__()
        FakeInception.calls.append({"name": name, "features_list": features_list,
                                    "feature_extractor_weights_path": feature_extractor_weights_path, **kwargs})
        if feature_extractor_weights_path is None:
            torch.hub.load_state_dict_from_url(FIDELITY_URL, progress=True)
        else:
            torch.load(feature_extractor_weights_path, weights_only=False)
        self.fc = nn.Linear(2, 2)


@pytest.fixture
def fidelity(monkeypatch, tmp_path):
    """torch-fidelity "installed", downloads recorded (and refused unless a test allows them), the torch hub
    cache in tmp_path."""
    import torchmetrics.image.fid
    import torchmetrics.utilities.imports

    monkeypatch.setattr(torchmetrics.utilities.imports, "_TORCH_FIDELITY_AVAILABLE", True)
    monkeypatch.setattr(torchmetrics.image.fid, "NoTrainInceptionV3", FakeInception)
    monkeypatch.setattr(FakeInception, "calls", [])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    downloads = []

    def refuse(url, **kwargs):
        downloads.append(url)
        raise AssertionError("no download expected")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    return downloads


def test_inception_without_weights_path_uses_torch_fidelity_download(fidelity, monkeypatch):
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda url, **kwargs: fidelity.append(url) or {})
    extractor = build_feature_extractor("inception", weights_path=None, num_features=768)
    assert FakeInception.calls == [{"name": "inception-v3-compat", "features_list": ["768"],
                                    "feature_extractor_weights_path": None, "antialias": False}]
    assert fidelity == [FIDELITY_URL]
    assert extractor.num_features == 768 and not any(p.requires_grad for p in extractor.parameters())


def test_inception_with_weights_path_loads_that_file_and_downloads_nothing(fidelity, tmp_path):
    weights = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    torch.save({}, weights)
    assert build_feature_extractor("inception", weights_path=str(weights)).num_features == 2048
    assert FakeInception.calls[0]["feature_extractor_weights_path"] == str(weights)
    assert fidelity == []


def test_inception_download_failure_is_one_line_user_error(fidelity, monkeypatch):
    import socket
    import urllib.error

    def offline(url, **kwargs):
        raise urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(UserError) as err:
        build_feature_extractor("inception")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("the InceptionV3 weights for FID/KID could not be downloaded ("
                              "[Errno -3] Temporary failure in name resolution) — ")
    assert (f"set model.metrics.feature_extractor.weights_path to a local copy of "
            f"weights-inception-2015-12-05-6726825d.pth (from {FIDELITY_URL})") in message
    assert message.endswith("or use model.metrics.feature_extractor.kind=tiny")
    with pytest.raises(UserError, match=r"set model.metrics.feature_weights_path .* "
                                        r"model.metrics.feature_extractor=tiny"):
        ImageGenerationMetrics(feature_extractor="inception", clip_model=None)


@pytest.fixture
def local_server(monkeypatch):
    """An HTTP server on 127.0.0.1: /release redirects to /objects (as GitHub's release URLs do), which
    answers; every request's method is recorded."""
    import http.server
    import threading

    requests = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def answer(self):
            requests.append((self.command, self.path))
            if self.path == "/release/weights.pth":
                self.send_response(302)
                self.send_header("Location", "/objects/weights.pth")
            else:
                self.send_response(200 if self.path == "/objects/weights.pth" else 404)
                self.send_header("Content-Length", "0")
            self.end_headers()

        do_HEAD = do_GET = answer

        def log_message(self, *args):
            pass

    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", requests
    server.shutdown()
    server.server_close()


def closed_port_url() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/weights.pth"  # nothing listens: refused at once


def test_inception_status_asks_the_url_with_head_only(fidelity, local_server, monkeypatch):
    base, requests = local_server
    monkeypatch.setattr(inception, "INCEPTION_URL", f"{base}/release/weights.pth")
    assert inception_status(None) is None
    assert requests == [("HEAD", "/release/weights.pth"), ("HEAD", "/objects/weights.pth")]  # no download
    monkeypatch.setattr(inception, "INCEPTION_URL", f"{base}/gone.pth")
    assert inception_status(None) == ("the InceptionV3 weights for FID/KID could not be downloaded (HTTP 404 Not "
                                      f"Found) — set model.metrics.feature_extractor.weights_path to a local copy of "
                                      f"weights-inception-2015-12-05-6726825d.pth (from {base}/gone.pth) or use "
                                      "model.metrics.feature_extractor.kind=tiny")


def test_inception_status_offline(fidelity, tmp_path, monkeypatch):
    monkeypatch.setattr(inception, "INCEPTION_URL", closed_port_url())
    status = inception_status(None)
    assert status.startswith("the InceptionV3 weights for FID/KID could not be downloaded (") and "\n" not in status
    assert "refused" in status and status.endswith("kind=tiny")
    # a local file, or weights already in the torch hub cache, need no network
    weights = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    torch.save({}, weights)
    assert inception_status(str(weights)) is None
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth"
    cached.parent.mkdir(parents=True)
    torch.save({}, cached)
    assert inception_status(None) is None
    assert fidelity == [] and FakeInception.calls == []  # nothing loaded or downloaded


def test_inception_status_names_the_other_problems(fidelity, tmp_path, monkeypatch):
    import sys

    import torchmetrics.utilities.imports

    missing = inception_status(str(tmp_path / "missing.pth"))
    assert "'" + str(tmp_path / "missing.pth") + "' is not a file" in missing and "\n" not in missing
    monkeypatch.setitem(sys.modules, "torchmetrics.image.fid", None)  # installed, but does not import
    assert inception_status(None).startswith("torch-fidelity is installed but does not import (")
    monkeypatch.setattr(torchmetrics.utilities.imports, "_TORCH_FIDELITY_AVAILABLE", False)
    assert inception_status(None).startswith("the InceptionV3 feature extractor needs the torch-fidelity package")


# -- CLIP score alone ---------------------------------------------------------------------------------------
def test_clip_only_builds_no_feature_extractor_and_computes_clip_alone(clip_dir, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("FID/KID machinery built for a CLIP-only metric")

    monkeypatch.setattr(inception, "build_inception", never)
    m = ImageGenerationMetrics(feature_extractor=never, clip_model=clip_dir, include=["clip"])
    assert m.extractor is None and m.fid is None and m.kid is None
    m.set_real_images(noise(8, seed=0))  # nothing to keep: no FID
    m.update(noise(4, seed=1), UNRELATED)
    out = m.compute()
    assert set(out) == {"clip_mean", "clip_min", "clip_max"} and m.clip_scores.shape == (4,)
    assert m.generated_features.numel() == 0  # no features: compare=all builds no FID interval
    m.reset()
    m.check_monitor("val/clip_mean")
    with pytest.raises(UserError, match=r"^model.monitor=val/fid is not computed with model.metrics.include=\[clip\] "
                                        r"— monitor val/clip_mean .* or add fid to model.metrics.include$"):
        m.check_monitor("val/fid")


def test_metric_selection_builds_the_extractor_only_for_fid_or_kid_and_refuses_nothing():
    built = []

    def build():
        built.append(True)
        return TinyFeatureExtractor(num_features=16)

    m = ImageGenerationMetrics(feature_extractor=build, clip_model=None, include=["fid"], kid_subsets=5)
    assert built == [True] and m.extractor is not None
    m.set_real_images(noise(8, seed=0))
    m.update(noise(4, seed=1), ["a shoe"] * 4)
    assert set(m.compute()) == {"fid"} and m.generated_features.shape == (4, 16)
    with pytest.raises(UserError, match=r"^model.metrics.include=\['fid', 'lpips'\] — use a non-empty list of fid, "
                                        r"kid, clip"):
        ImageGenerationMetrics(feature_extractor="tiny", clip_model=None, include=["fid", "lpips"])
    with pytest.raises(UserError, match="nothing to compute"):
        ImageGenerationMetrics(feature_extractor="tiny", clip_model=None, include=["clip"])


def test_the_model_config_selects_clip_alone_without_building_inception(cache_dir, tmp_path):
    from hydra.utils import instantiate

    from tests.conftest import compose_config

    missing = str(tmp_path / "no-inception.pth")  # building InceptionV3 from it would be a UserError
    overrides = ["experiment=quickstart_shoes", "model.metrics.feature_extractor.kind=inception",
                 f"model.metrics.feature_extractor.weights_path={missing}"]
    cfg = compose_config("train", [*overrides, "model.metrics.include=[clip]"], tmp_path)
    clip_only = instantiate(cfg.model.metrics)
    assert clip_only.include == ("clip",) and clip_only.extractor is None and clip_only.logged() == (
        "clip_mean", "clip_min", "clip_max")
    with pytest.raises(Exception, match="is not a file"):  # the default include builds it (Hydra wraps the error)
        instantiate(compose_config("train", overrides, tmp_path).model.metrics)
