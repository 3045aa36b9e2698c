"""Base models offered as ``base/<model config>``: every conf/model config whose weights are here.

A tiny model config is always available (it is built locally on first use); a hub id only when
it is a local directory or already in the Hugging Face cache, since the server never downloads.
"""

import logging
from pathlib import Path

from hydra import compose
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from src.families.registry import FAMILIES
from src.pretrained.hub import available_offline
from src.serving.registry import ModelEntry, describe_base, family_of, kind_of
from src.targets import EvalTarget

log = logging.getLogger(__name__)


def model_config_names(config_dir: Path) -> list[str]:
    return sorted(p.stem for p in (config_dir / "model").glob("*.yaml") if not p.stem.startswith("_"))


def base_model_entries(config_name: str, config_dir: Path, data_for: DictConfig) -> list[ModelEntry]:
    """``base/<name>`` for each available model config, paired with ``data_for[kind]`` for its prompt format.

    Needs Hydra's compose API (initialized by ``@hydra.main``); without it there are no config bases.
    """
    if not GlobalHydra.instance().is_initialized():
        return []
    entries = []
    command_line = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    for name in model_config_names(config_dir):
        try:
            family = family_of(compose(config_name, overrides=[*command_line, f"+model={name}"]).model)
            data = data_for[kind_of(family)]
            composed = compose(config_name, overrides=[*command_line, f"+model={name}", f"+data={data}"])
        except Exception as err:  # a config that does not compose is not offered
            log.warning("base/%s is not offered: %s", name, str(err).splitlines()[0])
            continue
        pretrained = composed.model.pretrained
        if not available_offline(pretrained, FAMILIES.get(family).hub_marker):
            continue
        entries.append(ModelEntry(
            name=f"base/{name}", kind=kind_of(family), family=family, source="base",
            base=describe_base(pretrained), target=EvalTarget("base", None, None),
            config=composed))
    return entries
