"""Model family x dataset: refuse a pair that cannot train together, before any model loads.

A model config's family comes from the registry (``src/families``): its ``kind`` is what it trains on (text or
image). A datamodule class names the kind of samples it makes in ``sample_kind``. Both are read from the
``_target_`` classes without instantiating them.
"""

from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class
from omegaconf import DictConfig
from transformers.utils import logging as hf_logging

from src.config_files import config_targets
from src.errors import UserError
from src.families.protocol import ModelFamily
from src.families.registry import FAMILIES

DATA_DESCRIPTION = {"text": "text pairs", "image": "images"}


def check_model_fits_data(cfg: DictConfig) -> None:
    """Raise the one-line UserError when ``cfg.model``'s family does not train on the kind ``cfg.data`` makes.

    Silent when either node is absent or its class declares nothing (nothing to compare).
    """
    model, data = cfg.get("model"), cfg.get("data")
    if not isinstance(model, DictConfig) or not isinstance(data, DictConfig):
        return
    family = _family_of(model.get("_target_"))
    kind = getattr(_class_of(data.get("_target_")), "sample_kind", None)
    if family is None or kind is None or family.kind == kind:
        return
    verb = "train on" if cfg.get("task_name") == "train" else "be used with"
    raise UserError(f"{_name('model', model)} ({family.description}) cannot {verb} {_name('data', data)} "
                    f"({DATA_DESCRIPTION.get(kind, f'{kind} data')}) — {_suggestions(family, kind)}")


def _class_of(target) -> type | None:
    """The ``_target_`` class, imported by name; None when there is no importable class (instantiation
    will report that itself)."""
    if not isinstance(target, str) or not target:
        return None
    # importing diffusers' pipelines makes transformers warn on stderr that torchvision is missing (it cannot be
    # installed beside this torch); the one-line error must stay one line
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return get_class(target)
    except Exception:  # a typo in _target_ or a function target: not this check's business
        return None
    finally:
        hf_logging.set_verbosity(verbosity)


def _family_of(target) -> ModelFamily | None:
    cls = _class_of(target)
    if cls is None or not getattr(cls, "family_name", None):
        return None
    return FAMILIES.of_module_class(cls)


def _name(group: str, node: DictConfig) -> str:
    """``model=tiny_sd`` when the command line's choice is the config in use; else the class (e.g. a run's
    own model config reused by evaluate.py, whose command line chose something else)."""
    target = node.get("_target_")
    if HydraConfig.initialized():
        choice = HydraConfig.get().runtime.choices.get(group)
        if choice and config_targets(group).get(choice) == target:
            return f"{group}={choice}"
    return f"the {group} {str(target).rsplit('.', 1)[-1]}"


def _suggestions(family: ModelFamily, kind: str) -> str:
    models = [name for name, target in config_targets("model").items()
              if getattr(_family_of(target), "kind", None) == kind]
    datasets = [name for name, target in config_targets("data").items()
                if getattr(_class_of(target), "sample_kind", None) == family.kind]
    options = []
    if models:
        article = "an" if kind[0] in "aeiou" else "a"
        options.append(f"{article} {kind} model (model={_listed(_offline_first(models))})")
    if datasets:
        options.append(f"{family.kind} data (data={', '.join(_offline_first(datasets))})")
    return "pick " + " or ".join(options) if options else "pick a model and data of the same kind"


def _listed(names: list[str], shown: int = 5) -> str:
    """The first ``shown`` names, and how many more there are (a line stays a line)."""
    more = f", ... ({len(names)} in conf/)" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _offline_first(names: list[str]) -> list[str]:
    """Tiny models and bundled samples (they run offline) before the full-size ones."""
    return sorted(names, key=lambda n: (not (n.startswith("tiny_") or n.endswith("_sample")), n))
