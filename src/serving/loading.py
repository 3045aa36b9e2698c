"""Build a model for a target the way evaluate.py does (the run's own model and data config), and keep a
bounded number of them in memory."""

import gc
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig, open_dict

from src.errors import UserError
from src.modality import check_model_fits_data
from src.pretrained.quantization import check_quantization
from src.runtime import build_model_and_data, instantiate_config
from src.serving.registry import family_of, kind_of
from src.targets import EvalTarget, load_target_weights, resolve_target, with_run_config

log = logging.getLogger(__name__)

DEVICES = ("cpu", "cuda", "mps")


def check_device(device: str) -> torch.device:
    """The inference device, or one line saying why it cannot be used."""
    if device not in DEVICES:
        raise UserError(f"device={device} is not one of {', '.join(DEVICES)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda needs a CUDA GPU and none is visible "
                        "— use device=cpu (or device=mps on Apple silicon)")
    if device == "mps" and not torch.backends.mps.is_available():
        raise UserError("device=mps needs Apple silicon with PyTorch's MPS backend, which this machine lacks "
                        "— use device=cpu (or device=cuda on a GPU machine)")
    return torch.device(device)


@dataclass
class LoadedModel:
    """A module ready to generate. ``lock`` serialises generation: a pipeline's scheduler and the
    adapter on/off switch are per-model state that concurrent requests must not interleave."""

    module: Any
    datamodule: Any | None  # text models: formats inputs exactly as training did
    kind: str  # "text" or "image"
    is_base: bool  # generate with the adapters switched off
    device: torch.device
    lock: threading.Lock = field(default_factory=threading.Lock)

    def adapters(self):
        """The context to generate in: the base model for a base target, the fine-tuned one otherwise."""
        return self.module.adapters_disabled() if self.is_base else nullcontext()


def load_model(cfg: DictConfig, target: EvalTarget, device: str = "cpu") -> LoadedModel:
    """The target's module in eval mode on ``device``; text models come with their datamodule.

    ``cfg`` provides ``model`` and ``data`` unless the target belongs to a run, whose own config wins.
    """
    if target.run_dir is not None:
        cfg = with_run_config(cfg, target.run_dir)
    if "model" not in cfg:
        raise UserError("no model config: pass a run directory, a checkpoint inside one, or model=<config>")
    check_model_fits_data(cfg)  # the image branch below resolves model.resolution from cfg.data
    check_quantization(cfg.model.get("quantization"))
    torch_device = check_device(device)
    cfg = cfg.copy()
    with open_dict(cfg):
        if "metrics" in cfg.model:  # serving computes no FID/CLIP: do not build (or download) their models
            cfg.model.metrics = None
    kind = kind_of(family_of(cfg.model))
    if kind == "image":  # the image datamodule only feeds training and evaluation
        module, datamodule = instantiate_config(cfg.model), None
    else:
        module, datamodule = build_model_and_data(cfg)
    load_target_weights(module, target)
    module.eval()
    if not cfg.model.get("quantization"):  # k-bit weights are placed by bitsandbytes when loading
        module.to(torch_device)
    log.info("loaded %s (%s, %s) on %s", target.path or f"the base model {module.pretrained}", target.kind, kind,
             device)
    return LoadedModel(module, datamodule, kind, target.kind == "base", torch_device)


def load_from_command_line(cfg: DictConfig) -> tuple[EvalTarget, LoadedModel]:
    """``ckpt=`` (and ``config_from=``) of generate.py, playground.py and export.py, loaded on ``device=``."""
    target = resolve_target(str(cfg.ckpt), cfg.get("config_from"))
    check_device(cfg.device)  # before any weights are read
    return target, load_model(cfg, target, cfg.device)


class ModelCache:
    """At most ``max_loaded`` models in memory, least recently used evicted first; thread-safe.

    Loads run one at a time (two requests for a model that is loading get the same one); lookups of
    loaded models never wait for a load.
    """

    def __init__(self, load: Callable[[Any], LoadedModel], max_loaded: int):
        if max_loaded < 1:
            raise UserError(f"max_loaded_models={max_loaded} must be at least 1")
        self._load, self.max_loaded = load, max_loaded
        self._models: OrderedDict[Hashable, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()

    def _lookup(self, key: Hashable) -> LoadedModel | None:
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
        return None

    def get(self, key: Hashable, spec: Any) -> LoadedModel:
        loaded = self._lookup(key)
        if loaded is not None:
            return loaded
        with self._load_lock:
            loaded = self._lookup(key)
            if loaded is not None:
                return loaded
            loaded = self._load(spec)
            with self._lock:
                self._models[key] = loaded
                while len(self._models) > self.max_loaded:
                    evicted, _ = self._models.popitem(last=False)
                    log.info("evicted %s from memory (max_loaded_models=%d)", evicted, self.max_loaded)
            gc.collect()
            return loaded

    def keys(self) -> list[Hashable]:
        with self._lock:
            return list(self._models)
