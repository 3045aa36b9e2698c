"""``export.py``: merge a LoRA into its base model and save a standalone model for deployment.

Text: peft's ``merge_and_unload`` → a plain transformers model + tokenizer, with the run's
generation settings as its ``generation_config``. Images: diffusers' ``fuse_lora`` + ``unload_lora`` on
the UNet → a full ``StableDiffusionPipeline`` directory with the scheduler the run generates with.
Either loads with plain ``from_pretrained``, without peft. ``lorafit_export.json`` records where it came
from and the prompt format the model was trained on.
"""

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from src.errors import UserError
from src.serving.loading import LoadedModel, load_from_command_line
from src.targets import EvalTarget

log = logging.getLogger(__name__)


def merge_text(loaded: LoadedModel, out: Path) -> dict[str, Any]:
    module = loaded.module
    merged = module.model.merge_and_unload(safe_merge=True)  # fails loudly on non-finite merged weights
    settings = {k: v for k, v in module.generation.items() if k in merged.generation_config.to_dict()}
    merged.generation_config.update(**settings, pad_token_id=module.tokenizer.pad_token_id)
    merged.save_pretrained(out)
    module.tokenizer.save_pretrained(out)
    return {"auto_class": module.auto_class.__name__, "generation": settings,
            "prompt_template": loaded.prompt_template}


def merge_diffusion(loaded: LoadedModel, out: Path) -> dict[str, Any]:
    module = loaded.module
    module.unet.fuse_lora(safe_fusing=True)  # W += scale * B @ A, in every LoRA layer
    module.unet.unload_lora()  # back to plain Linear layers holding the merged weights
    pipeline = module.pipeline  # the module's own components and inference scheduler
    pipeline.save_pretrained(out, safe_serialization=True)
    return {"pipeline": type(pipeline).__name__, "generation": dict(module.generation),
            "resolution": module.resolution}


def export(cfg: DictConfig) -> Path:
    if str(cfg.ckpt) == "base":
        raise UserError("ckpt=base has no LoRA to merge — pass a run directory, a .ckpt file or an adapter directory")
    out = Path(cfg.output_dir).expanduser()
    if out.exists() and any(out.iterdir()) and not cfg.overwrite:
        raise UserError(f"output_dir={out} is not empty — pick another directory or pass overwrite=true")
    target, loaded = load_from_command_line(cfg)
    out.mkdir(parents=True, exist_ok=True)
    details = (merge_diffusion if loaded.kind == "image" else merge_text)(loaded, out)
    record = {"source": source_of(target), "base": loaded.module.pretrained, "kind": loaded.kind,
              "family": loaded.module.family_name, "lora": loaded.module.report()["lora"], **details}
    (out / "lorafit_export.json").write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    how = ("StableDiffusionPipeline.from_pretrained" if loaded.kind == "image"
           else f"{details['auto_class']}.from_pretrained")
    log.info("merged %s into %s\nstandalone %s model written to %s (load it with %s)", source_of(target)["path"],
             loaded.module.pretrained, loaded.kind, out, how)
    return out


def source_of(target: EvalTarget) -> dict[str, Any]:
    absolute = (lambda p: str(Path(p).resolve()) if p else None)
    return {"kind": target.kind, "path": absolute(target.path), "run_dir": absolute(target.run_dir)}
