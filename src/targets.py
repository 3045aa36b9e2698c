"""What a command points at: a run directory, a Lightning checkpoint, an exported adapter, or the base model.

Shared by ``evaluate.py`` (one target or every checkpoint of a run), serving and export, so a name
means the same thing everywhere and a run's own model and data config come with its weights.
"""

import json
from dataclasses import dataclass
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from src.errors import UserError
from src.trust import read_checkpoint, read_run_config

RUN_KEYS = ("model", "data", "seed")  # what a run's own config decides about evaluation


@dataclass
class EvalTarget:
    kind: str  # "base", "checkpoint" or "adapter"
    path: str | None
    run_dir: Path | None


def run_dir_of(path: Path) -> Path | None:
    return path if (path / ".hydra" / "config.yaml").is_file() else None


def best_checkpoint_of(run_dir: Path) -> Path | None:
    """The run's best checkpoint: from its report, else from ModelCheckpoint's state in last.ckpt."""
    candidates = []
    report = run_dir / "metrics.json"
    if report.is_file():
        candidates.append((json.loads(report.read_text()).get("best_checkpoint") or {}).get("path"))
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.is_file():
        states = read_checkpoint(last).get("callbacks", {})
        candidates += [s.get("best_model_path") for k, s in states.items() if k.startswith("ModelCheckpoint")]
    for candidate in filter(None, candidates):
        for path in (Path(candidate), run_dir / "checkpoints" / Path(candidate).name):  # the run may have moved
            if path.is_file():
                return path
    return None


def is_adapter_dir(path: Path) -> bool:
    """A PEFT adapter (text) or a diffusers LoRA file (diffusion)."""
    return (path / "adapter_config.json").is_file() or (path / "pytorch_lora_weights.safetensors").is_file()


def resolve_target(ckpt: str, config_from: str | None = None) -> EvalTarget:
    if str(ckpt) == "base":
        run_dir = Path(config_from) if config_from else None
        if run_dir and not run_dir_of(run_dir):
            raise UserError(f"config_from={config_from} is not a run directory (no .hydra/config.yaml)")
        return EvalTarget("base", None, run_dir)
    path = Path(ckpt).expanduser()
    if not path.exists():
        raise UserError(f"ckpt={ckpt} does not exist — pass a run directory, a .ckpt file, "
                        "an exported adapter directory, or ckpt=base")
    if path.is_file():
        if path.suffix != ".ckpt":
            raise UserError(f"ckpt={ckpt} is not a Lightning checkpoint (.ckpt)")
        run_dir = run_dir_of(path.parent.parent) if path.parent.name == "checkpoints" else None
        return EvalTarget("checkpoint", str(path), run_dir)
    if is_adapter_dir(path):
        return EvalTarget("adapter", str(path), run_dir_of(path.parent))
    if run_dir_of(path):
        best = best_checkpoint_of(path)
        if best is not None:
            return EvalTarget("checkpoint", str(best), path)
        if is_adapter_dir(path / "adapter"):
            return EvalTarget("adapter", str(path / "adapter"), path)
        raise UserError(f"run directory {path} holds no checkpoint or adapter — was training interrupted "
                        "before the first validation?")
    raise UserError(f"ckpt={ckpt} is neither a run directory, a .ckpt file nor an adapter directory")


def with_run_config(cfg: DictConfig, run_dir: Path) -> DictConfig:
    """The run's model, data and seed, with this command line's explicit overrides on top.

    Refused (``src.trust.Refused``) when the run's config names a ``_target_`` lorafit does not trust."""
    run_cfg = read_run_config(run_dir)
    overrides = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
    keys = [o.split("=", 1)[0].lstrip("+~") for o in overrides]
    merged = cfg.copy()
    with open_dict(merged):
        for key in RUN_KEYS:
            if key not in keys:  # `data=...` on the command line picks another dataset on purpose
                merged[key] = run_cfg[key]
        for key in keys:
            if key.split(".", 1)[0] in RUN_KEYS and "." in key:
                OmegaConf.update(merged, key, OmegaConf.select(cfg, key), merge=False)
    return merged


def load_target_weights(module, target: EvalTarget) -> None:
    """Put the target's LoRA weights into a freshly built module (nothing to do for the base model)."""
    if target.kind == "checkpoint":
        module.load_state_dict(state_dict_of(target.path))
    elif target.kind == "adapter":
        module.load_adapter(target.path)


def state_dict_of(path: str) -> dict:
    """The ``state_dict`` of a Lightning checkpoint, read with ``weights_only=True`` (``src.trust``)."""
    checkpoint = read_checkpoint(path)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise UserError(f"{path} is not a Lightning checkpoint (no state_dict) — pass a .ckpt written by train.py")
    return checkpoint["state_dict"]
