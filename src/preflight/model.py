"""The model as training would build it, on the meta device: real architecture, LoRA applied, counted.

No weights are read: the architecture comes from the model's config.json (a local directory, the Hugging Face
cache, the hub, or the bundled copy of a published config) and lives on the meta device. Each family builds its
own plan (``ModelFamily.plan``).
"""

from omegaconf import DictConfig

from src.families.protocol import ModelPlan
from src.families.registry import FAMILIES


def plan_model(model_cfg: DictConfig) -> ModelPlan:
    return FAMILIES.of_config(model_cfg).plan(model_cfg)
