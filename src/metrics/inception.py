"""InceptionV3 for FID and KID: whether it can run on this machine (torch-fidelity importable, its weights present or
downloadable), and building it, each failure as one line naming the config key that fixes it.

torch-fidelity (and the torchvision it imports) is an optional dependency: it is imported only inside the
functions that need it, and a machine without it runs FID/KID with the tiny extractor.
"""

import pickle
import urllib.error
import urllib.request
from pathlib import Path

import torch
from torch import nn
from torchmetrics.utilities import imports

from src.errors import UserError

INCEPTION_FEATURES = (64, 192, 768, 2048)
INCEPTION_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_WEIGHTS}"


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
    if not imports._TORCH_FIDELITY_AVAILABLE:
        return ("the InceptionV3 feature extractor needs the torch-fidelity package — pip install "
                f"torch-fidelity (it needs a torchvision matching torch), {smoke}")
    try:
        from torchmetrics.image.fid import NoTrainInceptionV3  # noqa: F401  (torch-fidelity, and its torchvision)
    except (ImportError, RuntimeError) as err:  # a torchvision built for another torch fails with either
        return (f"torch-fidelity is installed but does not import ({str(err).splitlines()[0]}) — install a "
                "torchvision matching torch (torchmetrics' FID and KID do not import without it, even with kind=tiny)")
    return None


def _downloaded_inception(inception_class, num_features: int, key: str, weights_key: str, kind_key: str) -> nn.Module:
    """torch-fidelity's own mechanism: without a weights path it loads its release URL through torch.hub,
    which downloads once into :func:`inception_cache_file` and reads that file afterwards."""
    try:
        return inception_class(name="inception-v3-compat", features_list=[str(num_features)], antialias=False)
    except OSError as err:  # URLError, HTTPError, timeouts, SSL errors: no weights could be fetched
        reason = getattr(err, "reason", None) or str(err).splitlines()[0] or type(err).__name__
        raise UserError(_download_failed(str(reason), key, weights_key, kind_key)) from err
    except (RuntimeError, ValueError, KeyError, EOFError, pickle.UnpicklingError) as err:  # a truncated cache file
        raise UserError(f"cannot load the cached InceptionV3 weights {inception_cache_file()} "
                        f"({str(err).splitlines()[0]}) — delete that file to download it again, or set "
                        f"{key}{weights_key} to a local copy of {INCEPTION_WEIGHTS}") from err


def build_inception(weights_path: str | None, num_features: int | None, key: str, weights_key: str = "weights_path",
                    kind_key: str = "kind") -> nn.Module:
    """torchmetrics' InceptionV3 (``NoTrainInceptionV3``), the FID reference network, resizing like TensorFlow 1.x
    (``antialias=False``), with an int ``num_features`` attribute; one line for each way it cannot be had.
    ``key`` + ``weights_key``/``kind_key``: the config overrides named in error messages."""
    num_features = num_features or 2048
    if num_features not in INCEPTION_FEATURES:
        raise UserError(f"InceptionV3 gives {INCEPTION_FEATURES} features, not {num_features} — "
                        f"set {key}num_features to one of them (2048 for published FID)")
    if weights_path is not None and not Path(weights_path).expanduser().is_file():
        raise UserError(_missing_weights(weights_path, key, weights_key, kind_key))
    problem = _torch_fidelity_problem(f"or {key}{kind_key}=tiny for a smoke run")
    if problem:
        raise UserError(problem)
    from torchmetrics.image.fid import NoTrainInceptionV3  # an optional dependency: torch-fidelity

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
