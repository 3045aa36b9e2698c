"""Building what a run uses from its config: the datamodule (without the model), the model, and the one step that
connects them (the model family's ``connect``). Training, evaluation, comparison, preflight, retrieval and
serving all build data this way."""

from typing import Any

from omegaconf import DictConfig

from src.families.registry import FAMILIES
from src.instantiation import instantiate_config
from src.modality import check_model_fits_data
from src.pretrained.loading import load_tokenizer, resolve_pretrained


def build_data(cfg: DictConfig) -> Any:
    """The datamodule of ``cfg.data``, not yet connected to a model (nothing is read)."""
    return instantiate_config(cfg.data)


def build_model_and_data(cfg: DictConfig) -> tuple[Any, Any]:
    """The LightningModule from ``cfg.model`` and the datamodule connected to it."""
    check_model_fits_data(cfg)
    family = FAMILIES.of_config(cfg.model)
    datamodule = build_data(cfg)  # data config errors show before a model loads
    module = instantiate_config(cfg.model)
    family.connect(datamodule, module.tokenizer, cfg.model)
    return module, datamodule


def model_tokenizer(cfg: DictConfig, **kwargs) -> Any:
    """The model's tokenizer alone (no weights): a hub id, a local directory, or a tiny model built once."""
    subfolder = FAMILIES.of_config(cfg.model).tokenizer_subfolder
    return load_tokenizer(resolve_pretrained(cfg.model.pretrained), **kwargs,
                          **({"subfolder": subfolder} if subfolder else {}))


def data_with_tokenizer(cfg: DictConfig) -> Any:
    """The run's datamodule connected to the model's tokenizer, without loading the model's weights (retrieval:
    the tokenizer decides the evaluation order, length-sorted, so the samples come in the checkpoints' order)."""
    check_model_fits_data(cfg)
    datamodule = build_data(cfg)
    FAMILIES.of_config(cfg.model).connect(datamodule, model_tokenizer(cfg), cfg.model)
    return datamodule
