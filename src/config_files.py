"""The project's own config tree (``conf/``): where it is, and the ``_target_`` each selectable config names."""

from functools import lru_cache
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


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
