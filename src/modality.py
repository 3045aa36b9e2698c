"""Model family x dataset: refuse a pair that cannot train together, before any model loads.

A model class names its family in ``encoding`` (seq2seq, causal, diffusion); a datamodule class names
the families it can feed in ``encodings``. Both are read from the ``_target_`` classes without
instantiating them, and before anything resolves the model config (a diffusion model reads
``${data.resolution}``, which text data does not have: that would end in an interpolation traceback).
"""

from functools import lru_cache
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from src.errors import UserError

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
KIND = {"seq2seq": "text", "causal": "text", "diffusion": "image"}
MODEL_DESCRIPTION = {"seq2seq": "a seq2seq text model", "causal": "a causal text model",
                     "diffusion": "a diffusion model"}
DATA_DESCRIPTION = {"text": "text pairs", "image": "images"}


def check_model_fits_data(cfg: DictConfig) -> None:
    """Raise the one-line UserError when ``cfg.model``'s family is not one ``cfg.data`` accepts.

    Silent when either node is absent or its class does not declare a family (nothing to compare).
    """
    model, data = cfg.get("model"), cfg.get("data")
    if not isinstance(model, DictConfig) or not isinstance(data, DictConfig):
        return
    family = getattr(_class_of(model.get("_target_")), "encoding", None)
    accepted = getattr(_class_of(data.get("_target_")), "encodings", None)
    if not family or accepted is None or family in accepted:
        return
    verb = "train on" if cfg.get("task_name") == "train" else "be used with"
    raise UserError(f"{_name('model', model)} ({MODEL_DESCRIPTION.get(family, f'a {family} model')}) cannot {verb} "
                    f"{_name('data', data)} ({_describe_data(accepted)}) — {_suggestions(family, accepted)}")


def _class_of(target) -> type | None:
    """The ``_target_`` class, imported by name; None when there is no importable class (instantiation
    will report that itself)."""
    if not isinstance(target, str) or not target:
        return None
    from transformers.utils import logging as hf_logging

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


def _describe_data(accepted) -> str:
    kinds = sorted({KIND.get(f, f) for f in accepted})
    return " or ".join(DATA_DESCRIPTION.get(k, f"{k} data") for k in kinds) or "no model family"


def _name(group: str, node: DictConfig) -> str:
    """``model=tiny_sd`` when the command line's choice is the config in use; else the class (e.g. a run's
    own model config reused by evaluate.py, whose command line chose something else)."""
    target = node.get("_target_")
    if HydraConfig.initialized():
        choice = HydraConfig.get().runtime.choices.get(group)
        if choice and config_targets(group).get(choice) == target:
            return f"{group}={choice}"
    return f"the {group} {str(target).rsplit('.', 1)[-1]}"


def _suggestions(family: str, accepted) -> str:
    model_kinds = sorted({KIND.get(f, f) for f in accepted})
    models = [name for name, target in config_targets("model").items()
              if getattr(_class_of(target), "encoding", None) in accepted]
    datasets = [name for name, target in config_targets("data").items()
                if family in (getattr(_class_of(target), "encodings", None) or ())]
    options = []
    if models:
        kind = " or ".join(model_kinds)
        article = "an" if kind[0] in "aeiou" else "a"
        options.append(f"{article} {kind} model (model={', '.join(_offline_first(models))})")
    if datasets:
        options.append(f"{KIND.get(family, family)} data (data={', '.join(_offline_first(datasets))})")
    return "pick " + " or ".join(options) if options else "pick a model and data of the same kind"


def _offline_first(names: list[str]) -> list[str]:
    """Tiny models and bundled samples (they run offline) before the full-size ones."""
    return sorted(names, key=lambda n: (not (n.startswith("tiny_") or n.endswith("_sample")), n))


@lru_cache(maxsize=None)
def config_targets(group: str, conf_dir: Path = CONF_DIR) -> dict[str, str]:
    """``{config name: _target_}`` for the selectable configs of ``conf/<group>/`` (not ``_*.yaml``), following
    each file's defaults list inside the group (``sd15`` takes its target from ``_diffusion_lora``)."""
    folder = conf_dir / group
    targets = {}
    for path in sorted(folder.glob("*.yaml")):
        if not path.stem.startswith("_"):
            target = _target_in(folder, path.stem, set())
            if target:
                targets[path.stem] = target
    return targets


def _target_in(folder: Path, name: str, seen: set[str]) -> str | None:
    path = folder / f"{name}.yaml"
    if name in seen or not path.is_file():
        return None
    seen.add(name)
    node = OmegaConf.load(path)
    target = node.get("_target_") if isinstance(node, DictConfig) else None
    if isinstance(target, str):
        return target
    for entry in (node.get("defaults") or []) if isinstance(node, DictConfig) else []:
        if isinstance(entry, str) and entry != "_self_":
            target = _target_in(folder, entry, seen)
            if target:
                return target
    return None
