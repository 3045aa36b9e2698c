"""Adapter-only checkpoints: a LightningModule mixin shared by every model family."""

from typing import Any

from src.errors import UserError

# the checkpoint key naming what the adapter was trained as: family, base model, LoRA settings (plain values,
# so the file loads with torch.load(weights_only=True)); resume_check.py compares it with a resumed run's config
ADAPTER_KEY = "lorafit_adapter"


def lora_settings(lora: Any) -> dict[str, Any]:
    """A peft ``LoraConfig``'s settings that decide the adapter's shape, scale and placement, as plain values."""
    targets = lora.target_modules
    return {"r": lora.r, "lora_alpha": lora.lora_alpha, "lora_dropout": lora.lora_dropout,
            "target_modules": sorted(targets) if isinstance(targets, (set, list, tuple)) else targets,
            "use_rslora": bool(getattr(lora, "use_rslora", False)), "use_dora": bool(getattr(lora, "use_dora", False)),
            "rank_pattern": dict(getattr(lora, "rank_pattern", None) or {}),
            "alpha_pattern": dict(getattr(lora, "alpha_pattern", None) or {})}


class TrainableStateDictMixin:
    """``state_dict()`` keeps only trainable weights, so checkpoints never hold the frozen base model.

    With ``strict_loading = False`` Lightning restores such a checkpoint (resume, ``ckpt_path="best"``)
    into a module whose base weights came from ``from_pretrained``.
    """

    strict_loading = False

    def adapter_record(self) -> dict[str, Any]:
        """What a resumed run must share with this one (the module sets ``family_name``, ``pretrained``,
        ``lora_config``)."""
        return {"family": self.family_name, "base": str(self.pretrained), **lora_settings(self.lora_config)}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[ADAPTER_KEY] = self.adapter_record()
        super().on_save_checkpoint(checkpoint)

    def trainable_parameter_names(self) -> set[str]:
        return {name for name, p in self.named_parameters() if p.requires_grad}

    def state_dict(self, *args, destination=None, prefix: str = "", keep_vars: bool = False):
        full = super().state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)
        keep = {prefix + name for name in self.trainable_parameter_names()}
        for key in [k for k in full if k not in keep]:
            del full[key]
        return full

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        missing_trainable = self.trainable_parameter_names() - set(state_dict)
        if missing_trainable:
            # the base weights are expected to be absent; missing adapter weights mean a wrong checkpoint
            raise UserError(f"checkpoint lacks {len(missing_trainable)} adapter weights, e.g. "
                           f"{sorted(missing_trainable)[0]} — it was saved by a different model or LoRA config; "
                            "evaluate it with the config of the run that wrote it")
        own = dict(self.named_parameters())
        wrong = [k for k, v in state_dict.items() if k in own and own[k].shape != v.shape]
        if wrong:
            raise UserError(f"checkpoint weight {wrong[0]} has shape {tuple(state_dict[wrong[0]].shape)}, the model "
                            f"expects {tuple(own[wrong[0]].shape)} — the LoRA settings differ (model.lora.r?)")
        return super().load_state_dict(state_dict, strict=False, assign=assign)

    def count_parameters(self) -> dict[str, int]:
        params = list(self.parameters())
        return {"trainable": sum(p.numel() for p in params if p.requires_grad),
                "total": sum(p.numel() for p in params)}
