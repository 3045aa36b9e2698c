"""The contract of a model family, and what its preflight plan returns.

A family is one object that owns everything that differs between kinds of models: its LightningModule class
(which trains, evaluates, exports and loads its adapters and generates), how a sample becomes model inputs and
how the data is connected to the model, its preflight plan (the real architecture on the meta device, LoRA
applied, counted) and memory probe, its real, random-init and stand-in builders, and what serving does with it
(``kind``: text models complete text, image models draw images). Every other part of lorafit asks the family;
``registry.FAMILIES`` finds it by name, by module class or by model config.
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

KINDS = ("text", "image")  # what a family trains on and produces: conversations and text, or captioned images


@runtime_checkable
class ModelFamily(Protocol):
    name: str  # stored in checkpoints and reports: never renamed
    kind: str  # one of KINDS: which datamodules feed it and which serving endpoints speak to it
    description: str  # "a seq2seq text model", in one-line errors
    module_class: type  # the LightningModule its model configs name (``_target_``)
    hub_marker: str  # the file whose presence in the Hugging Face cache means a model of this family is there
    tokenizer_subfolder: str | None  # where its tokenizer lives in a model directory (None: at the top)

    def connect(self, datamodule: Any, tokenizer: Any, model_cfg: Any) -> None:
        """Give a datamodule built from config what it needs from the model (tokenizer and sample encoder, or
        the image resolution): the one step that joins model and data, in training, evaluation, preflight,
        retrieval and serving alike."""

    def plan(self, model_cfg: Any) -> "ModelPlan":
        """The model as training would build it, on the meta device (no weights read), LoRA applied and counted."""

    def meta_model(self, pretrained: str) -> Any:
        """The real architecture of ``pretrained`` (hub id or directory) on the meta device."""

    def memory_probe(self, plan: "ModelPlan", batch: int, data: dict[str, Any],
                     gradient_checkpointing: bool) -> tuple[Callable[[], torch.Tensor], dict[str, int]]:
        """A training loss on meta tensors at the run's batch size and maximum lengths (or resolution), and that
        shape, for preflight's memory measurement."""

    def base_weight_bytes(self, plan: "ModelPlan", quantization: str | None) -> int:
        """Bytes of the frozen base weights as training holds them (float32, or k-bit where quantized)."""

    def plan_data(self, cfg: Any, pretrained: str) -> dict[str, Any]:
        """Preflight's data section: records read, kept and skipped, split sizes, token lengths."""

    def validation_cost(self, plan: "ModelPlan", cfg: Any, data: dict[str, Any], schedule: dict[str, Any],
                        memory: dict[str, Any]) -> dict[str, Any]:
        """What a validation round costs (its size, and its share of the run's FLOPs)."""

    def train_tokenizer(self, texts: Iterable[str]) -> tuple[Any, str]:
        """A tokenizer of this family's kind trained here on ``texts`` (a stand-in when the real one is not on
        this machine), and a note naming it."""

    def generation_arguments(self) -> tuple[set[str], str]:
        """The keys ``model.generation`` may hold, and what takes them (for preflight's check)."""

    def preflight_warnings(self, model_cfg: Any) -> list[str]:
        """What this machine lacks for the run's metrics (e.g. InceptionV3 weights), as warnings."""


def missing_members(family: Any) -> list[str]:
    """The members of ``ModelFamily`` that ``family`` lacks (a registration check with a readable answer)."""
    members = {*ModelFamily.__annotations__, *(n for n in vars(ModelFamily) if not n.startswith("_"))}
    return sorted(name for name in members if not hasattr(family, name))


@dataclass
class ModelPlan:
    """A family's preflight plan of the model: what trains, counted as training will count it."""

    family: ModelFamily
    pretrained: str
    config_source: str
    trainable: int
    total: int
    lora_modules: dict[str, int]
    network: torch.nn.Module  # what trains: the peft-wrapped text model, or the UNet with its adapter

    def report(self) -> dict[str, Any]:
        return {"family": self.family.name, "pretrained": self.pretrained, "config_source": self.config_source,
                "trainable_parameters": self.trainable, "total_parameters": self.total,
                "trainable_percent": round(100 * self.trainable / max(self.total, 1), 4),
                "lora_modules": self.lora_modules}
