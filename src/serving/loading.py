"""Build a model for a target the way evaluate.py does (the run's own model and data config), and keep a
bounded number of them in memory."""

import gc
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig, open_dict

from src.building import build_data
from src.conversation import Conversation
from src.errors import UserError
from src.families.registry import FAMILIES
from src.instantiation import instantiate_config
from src.modality import check_model_fits_data
from src.pretrained.quantization import check_quantization
from src.targets import EvalTarget, load_target_weights, resolve_target, with_run_config

log = logging.getLogger(__name__)

DEVICES = ("cpu", "cuda", "mps")
# held by whatever draws from torch's global RNG in a server: seeded sampling (generation.py) and building a
# model (weight initialisation), so a load in one thread cannot change another request's seeded sample
GLOBAL_RNG = threading.Lock()


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
    adapter on/off switch are per-model state that concurrent requests must not interleave.

    Text models come with their data's ``format`` (what a user types → the request, as the training prompts were
    formatted) and their family's ``encoder`` (a request → model inputs, as evaluation batches are encoded)."""

    module: Any
    kind: str  # "text" or "image"
    is_base: bool  # generate with the adapters switched off
    device: torch.device
    format: Any | None = None
    encoder: Any | None = None
    prompt_template: str | None = None  # the data's, for the export record
    lock: threading.Lock = field(default_factory=threading.Lock)
    # on a base shared by many adapters (resident.py): this target's adapter and its run's generation settings
    adapter: str | None = None
    generation: dict | None = None

    @contextmanager
    def adapters(self):
        """The context to generate in (the caller holds ``lock``): the base model for a base target, the target's
        adapter otherwise, with the target's own generation settings."""
        with ExitStack() as stack:
            if self.is_base:
                stack.enter_context(self.module.adapters_disabled())
            elif self.adapter:
                stack.enter_context(self.module.named_adapter(self.adapter))
            if self.generation is not None:
                stack.enter_context(_generation_of(self.module, self.generation))
            yield

    def generation_settings(self) -> dict:
        return dict(self.module.generation if self.generation is None else self.generation)

    def request(self, text: str) -> Conversation:
        """What a user types (a title, a card), formatted as the run's training prompts were."""
        return self.format.request(text)


def serving_config(cfg: DictConfig, target: EvalTarget) -> DictConfig:
    """The config a target is served with: its run's own model and data (else ``cfg``'s), no metric models."""
    if target.run_dir is not None:
        cfg = with_run_config(cfg, target.run_dir)
    if "model" not in cfg:
        raise UserError("no model config: pass a run directory, a checkpoint inside one, or model=<config>")
    check_model_fits_data(cfg)
    check_quantization(cfg.model.get("quantization"))
    cfg = cfg.copy()
    with open_dict(cfg):
        if "metrics" in cfg.model:  # serving computes no FID/CLIP: do not build (or download) their models
            cfg.model.metrics = None
    return cfg


def text_parts(cfg: DictConfig, tokenizer) -> dict[str, Any]:
    """A text target's data format and its family's encoder (the datamodule is built from config, reads
    nothing and is not kept)."""
    data = build_data(cfg)
    return dict(format=data.format, prompt_template=cfg.data.get("prompt_template"),
                encoder=FAMILIES.of_config(cfg.model).encoder(tokenizer, data.lengths, cfg.model))


def load_model(cfg: DictConfig, target: EvalTarget, device: str = "cpu") -> LoadedModel:
    """The target's module in eval mode on ``device``; text models come with their data's format and their
    family's encoder.

    ``cfg`` provides ``model`` and ``data`` unless the target belongs to a run, whose own config wins.
    """
    cfg = serving_config(cfg, target)
    torch_device = check_device(device)
    family = FAMILIES.of_config(cfg.model)
    with GLOBAL_RNG:
        module = instantiate_config(cfg.model)
        load_target_weights(module, target)  # an adapter's layers are initialised before its weights load
    text = text_parts(cfg, module.tokenizer) if family.kind == "text" else {}
    module.eval()
    if not cfg.model.get("quantization"):  # k-bit weights are placed by bitsandbytes when loading
        module.to(torch_device)
    log.info("loaded %s (%s, %s) on %s", target.path or f"the base model {module.pretrained}", target.kind,
             family.kind, device)
    return LoadedModel(module, family.kind, target.kind == "base", torch_device, **text)


def load_from_command_line(cfg: DictConfig) -> tuple[EvalTarget, LoadedModel]:
    """``ckpt=`` (and ``config_from=``) of generate.py, playground.py and export.py, loaded on ``device=``."""
    target = resolve_target(str(cfg.ckpt), cfg.get("config_from"))
    check_device(cfg.device)  # before any weights are read
    return target, load_model(cfg, target, cfg.device)


@contextmanager
def _generation_of(module, settings: dict):
    saved, module.generation = module.generation, dict(settings)
    try:
        yield
    finally:
        module.generation = saved


class ModelBusy(Exception):
    """No slot or lock for a model within the request's wait: the server answers 503 with Retry-After."""


@dataclass
class CacheStats:
    resident: int  # models in memory now, counting one being loaded
    max_resident: int  # the most there ever were: never above max_loaded
    loads: int
    evictions: int


class ModelCache:
    """At most ``max_loaded`` models in memory, least recently used evicted first; thread-safe.

    A model is used through ``lease``: while leased it is never evicted, so a generation in flight
    keeps its model and the count of resident models is exact. A load first evicts an idle model
    (never loads then evicts), so ``max_loaded`` holds at every instant. When every resident model is
    in use, or the model is being loaded by another request, a request waits up to ``wait`` seconds,
    then gets ``ModelBusy``. Two requests for a model that is loading share one load.
    """

    def __init__(self, load: Callable[[Any], LoadedModel], max_loaded: int):
        if max_loaded < 1:
            raise UserError(f"max_loaded_models={max_loaded} must be at least 1")
        self._load, self.max_loaded = load, max_loaded
        self._models: OrderedDict[Hashable, LoadedModel] = OrderedDict()  # least recently used first
        self._users: dict[Hashable, int] = {}
        self._loading: set[Hashable] = set()
        self._changed = threading.Condition()
        self._stats = CacheStats(0, 0, 0, 0)

    @contextmanager
    def lease(self, key: Hashable, spec: Any, wait: float | None = None):
        """The model for ``key`` (loading ``spec`` if needed), kept resident until the block ends."""
        loaded = self._acquire(key, spec, None if wait is None else time.monotonic() + wait)
        try:
            yield loaded
        finally:
            with self._changed:
                self._users[key] -= 1
                if not self._users[key]:
                    del self._users[key]
                self._changed.notify_all()

    def get(self, key: Hashable, spec: Any) -> LoadedModel:
        """The model for ``key`` without holding it (it may be evicted as soon as another model is needed)."""
        with self.lease(key, spec) as loaded:
            return loaded

    def _acquire(self, key: Hashable, spec: Any, deadline: float | None) -> LoadedModel:
        evicted = False
        with self._changed:
            while True:
                if key in self._models:
                    self._models.move_to_end(key)
                    self._users[key] = self._users.get(key, 0) + 1
                    return self._models[key]
                if key not in self._loading:
                    if len(self._models) + len(self._loading) < self.max_loaded:
                        self._loading.add(key)
                        self._note_resident()
                        break
                    if self._evict_one_idle():
                        evicted = True
                        continue
                if deadline is None:
                    self._changed.wait()
                elif not self._changed.wait(max(0.0, deadline - time.monotonic())):
                    raise ModelBusy(f"{key[0] if isinstance(key, tuple) else key} is loading" if key in self._loading
                                    else f"all {self.max_loaded} loaded models are in use")
        if evicted:
            gc.collect()  # free the evicted model before this load allocates
        try:
            loaded = self._load(spec)
        except BaseException:
            with self._changed:
                self._loading.discard(key)
                self._note_resident()
                self._changed.notify_all()
            raise
        with self._changed:
            self._loading.discard(key)
            self._models[key] = loaded
            self._users[key] = self._users.get(key, 0) + 1
            self._stats.loads += 1
            self._changed.notify_all()
        return loaded

    def _evict_one_idle(self) -> bool:
        """Drop the least recently used model no request holds; False when all are in use."""
        victim = next((k for k in self._models if not self._users.get(k)), None)
        if victim is None:
            return False
        del self._models[victim]
        self._stats.evictions += 1
        self._note_resident()
        log.info("evicted %s from memory (max_loaded_models=%d)", victim, self.max_loaded)
        return True

    def _note_resident(self) -> None:
        self._stats.resident = len(self._models) + len(self._loading)
        self._stats.max_resident = max(self._stats.max_resident, self._stats.resident)

    def keys(self) -> list[Hashable]:
        """Resident models, least recently used first."""
        with self._changed:
            return list(self._models)

    def resident(self) -> list[Any]:
        with self._changed:
            return list(self._models.values())

    def stats(self) -> CacheStats:
        with self._changed:
            return CacheStats(**vars(self._stats))
