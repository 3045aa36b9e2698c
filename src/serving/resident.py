"""Many adapters on one resident base model: what the server's model cache holds.

Text targets whose runs share a base (the same model config but for the LoRA, generation, optimizer and training
settings) are served by one ``SharedBase``: the base model is loaded once, and each checkpoint or exported
adapter becomes a named peft adapter on it (``add_adapter`` + the checkpoint's LoRA weights, or ``load_adapter``
of an adapter directory). A request switches to its adapter under the base's lock (``set_adapter``), so moving
between checkpoints of a run, or between runs of one base, costs no base reload. At most ``max_adapters``
adapters stay on a base; the least recently used is deleted first. Image targets stay one whole model each.
"""

import hashlib
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf

from src.errors import UserError
from src.instantiation import instantiate_config
from src.serving.generation import holding
from src.serving.loading import GLOBAL_RNG, LoadedModel, load_model, serving_config, text_parts
from src.serving.registry import ModelEntry
from src.targets import EvalTarget, state_dict_of

log = logging.getLogger(__name__)

# model config keys that an adapter brings, not its base: runs differing only in these share one base
PER_ADAPTER_KEYS = ("lora", "generation", "optimizer", "scheduler", "monitor", "mode", "eval_loss",
                    "gradient_checkpointing", "train_on", "metrics")


def base_signature(model_cfg: DictConfig) -> str:
    """What decides a run's base weights and tokenizer: its model config without the per-adapter keys."""
    plain = OmegaConf.to_container(model_cfg, resolve=True)
    kept = {k: v for k, v in plain.items() if k not in PER_ADAPTER_KEYS}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


class WholeModel:
    """A model serving one target (image models): every view is the model itself."""

    adapter_count = 0

    def __init__(self, loaded: LoadedModel):
        self.loaded = loaded

    def view(self, entry: ModelEntry, wait: float | None) -> LoadedModel:
        return self.loaded


class SharedBase:
    """One base model in memory and the adapters put on it, each served through its own ``LoadedModel`` view
    (the shared module and lock; the target's adapter, data format, encoder and generation settings)."""

    def __init__(self, base: LoadedModel, config_of: Callable[[ModelEntry], DictConfig], max_adapters: int):
        self.base, self.config_of, self.max_adapters = base, config_of, max_adapters
        self.views: OrderedDict[tuple[str, int], LoadedModel] = OrderedDict()  # least recently used first
        self._views_lock = threading.Lock()
        self._names = 0

    @property
    def adapter_count(self) -> int:
        return sum(1 for v in self.views.values() if v.adapter)

    def view(self, entry: ModelEntry, wait: float | None) -> LoadedModel:
        """The entry's view, putting its adapter on the base first if it is not there (under the base's lock,
        which generation holds too: an adapter is never added or deleted mid-generation)."""
        key = (entry.name, entry.version)
        with self._views_lock:
            if key in self.views:
                self.views.move_to_end(key)
                return self.views[key]
        cfg = self.config_of(entry)
        parts = text_parts(cfg, self.base.module.tokenizer)
        with holding([self.base.lock], wait):
            with self._views_lock:
                if key in self.views:
                    return self.views[key]
            adapter = None if entry.target.kind == "base" else self._add(entry.target, cfg)
            view = LoadedModel(self.base.module, self.base.kind, entry.target.kind == "base", self.base.device,
                               lock=self.base.lock, adapter=adapter,
                               generation=OmegaConf.to_container(cfg.model.generation, resolve=True) or {},
                               **parts)
            with self._views_lock:
                self.views[key] = view
                self._evict()
        return view

    def _add(self, target: EvalTarget, cfg: DictConfig) -> str:
        self._names += 1
        name = f"served_{self._names}"
        module = self.base.module
        with GLOBAL_RNG:  # the new adapter's layers are initialised (drawing from the RNG) before its weights load
            if target.kind == "adapter":
                module.add_named_adapter(name, None, directory=target.path)
            else:
                module.add_named_adapter(name, instantiate_config(cfg.model.lora),
                                         checkpoint_state=state_dict_of(target.path))
        log.info("put %s on the resident base %s as adapter %s", target.path, module.pretrained, name)
        return name

    def _evict(self) -> None:
        """Delete the least recently used adapters beyond ``max_adapters`` (the caller holds the base's lock)."""
        while self.adapter_count > self.max_adapters:
            key = next(k for k, v in self.views.items() if v.adapter)
            view = self.views.pop(key)
            self.base.module.remove_named_adapter(view.adapter)
            log.info("removed adapter %s (%s) from its base (max_adapters_per_base=%d)", view.adapter, key[0],
                     self.max_adapters)


class Residents:
    """What the model cache loads and under which key: one ``SharedBase`` per text base, one ``WholeModel`` per
    image target."""

    def __init__(self, cfg: DictConfig, device: str, max_adapters: int):
        if max_adapters < 1:
            raise UserError(f"max_adapters_per_base={max_adapters} must be at least 1")
        self.cfg, self.device, self.max_adapters = cfg, device, max_adapters
        # (config, base signature) of each target version, read once: key() runs on every request
        self._configs: OrderedDict[tuple[str, int], tuple[DictConfig, str]] = OrderedDict()
        self._configs_lock = threading.Lock()

    def _config_and_signature(self, entry: ModelEntry) -> tuple[DictConfig, str]:
        key = (entry.name, entry.version)
        with self._configs_lock:
            if key in self._configs:
                return self._configs[key]
        cfg = serving_config(entry.config if entry.config is not None else self.cfg, entry.target)
        known = (cfg, base_signature(cfg.model))
        with self._configs_lock:
            self._configs[key] = known
            while len(self._configs) > 1024:
                self._configs.popitem(last=False)
        return known

    def config_of(self, entry: ModelEntry) -> DictConfig:
        return self._config_and_signature(entry)[0]

    def key(self, entry: ModelEntry) -> tuple[Any, ...]:
        if entry.kind == "text":
            return ("base", self._config_and_signature(entry)[1])
        return (entry.name, entry.version)

    def load(self, entry: ModelEntry):
        config = entry.config if entry.config is not None else self.cfg
        if entry.kind != "text":
            return WholeModel(load_model(config, entry.target, self.device))
        base_target = EvalTarget("base", None, entry.target.run_dir)
        return SharedBase(load_model(config, base_target, self.device), self.config_of, self.max_adapters)
