"""The models a server offers: base models from conf/model and every run's checkpoints and adapter.

A run is a directory under the logs directory with ``.hydra/config.yaml``; its name is that
directory's path relative to the logs directory (``train/runs/2026-11-22_03-00-00``). Requests
name models only by the names listed here: a name is looked up in the scanned listing, never
joined onto a path, and the scan drops anything that resolves outside the logs directory. A run whose
config names a ``_target_`` lorafit does not trust (``src.trust``) is not offered: nothing of it is
imported, and requests for its models are refused with the reason.
"""

import json
import logging
import os
import re
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from src.families.registry import FAMILIES
from src.targets import EvalTarget, is_adapter_dir, run_dir_of
from src.trust import Refused, read_run_config

log = logging.getLogger(__name__)

STEP = re.compile(r"checkpoint-(\d+)$")
# run sub-directories that never hold another run: not worth walking
SKIP_DIRS = {"checkpoints", "adapter", "tensorboard", "csv", "wandb", "mlruns", "images", ".hydra"}


@dataclass
class ModelEntry:
    name: str
    kind: str  # "text" or "image"
    family: str  # the model family's name (src/families)
    source: str  # "base", "checkpoint", "last" or "adapter"
    base: str  # the base model (hub id, local directory or tiny-model builder)
    target: EvalTarget = field(repr=False)
    run: str | None = None
    step: int | None = None
    recommended: bool = False
    config: DictConfig | None = field(default=None, repr=False)  # model/data of a base/<name> entry
    version: int = 0  # weights file mtime: a rewritten adapter is reloaded, not served stale

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "family": self.family, "source": self.source,
                "base": self.base, "run": self.run, "step": self.step, "recommended": self.recommended}


def family_of(model_cfg: DictConfig) -> str:
    """The name of the model config's family (from its ``_target_`` class, not instantiated)."""
    return FAMILIES.of_config(model_cfg).name


def kind_of(family: str) -> str:
    """What the family generates: "text" or "image" (which endpoints serve it)."""
    return FAMILIES.get(family).kind


def describe_base(pretrained: Any) -> str:
    """A hub id or directory as is; a tiny-model builder as its function name."""
    if isinstance(pretrained, DictConfig) and "_target_" in pretrained:
        return f"{pretrained._target_.rsplit('.', 1)[-1]} (built locally)"
    return str(pretrained)


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


def _inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root)


def find_run_dirs(logs_dir: Path) -> list[Path]:
    """Every run directory under ``logs_dir`` (not following symlinks, not descending into runs)."""
    runs = []
    for dirpath, dirnames, _ in os.walk(logs_dir):
        path = Path(dirpath)
        if run_dir_of(path):
            runs.append(path)
            dirnames.clear()
            continue
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
    return runs


@lru_cache(maxsize=1024)
def run_info(run_dir: Path, config_mtime: int, report_mtime: int) -> tuple[str, str, str] | str | None:
    """(family, base, best checkpoint file name) of a run, or why its config is refused; cached until its
    config or report changes."""
    try:
        cfg = read_run_config(run_dir)  # before get_class imports anything the config names
        family = family_of(cfg.model)
    except Refused as err:
        return str(err)
    except Exception as err:  # a broken or foreign config: the run is skipped, the server keeps going
        log.warning("skipping %s: cannot read its model config (%s)", run_dir, err)
        return None
    report = _read_report(run_dir / "metrics.json")
    best = Path((report.get("best_checkpoint") or {}).get("path") or "").name
    return family, (report.get("model") or {}).get("base") or describe_base(cfg.model.get("pretrained")), best


def run_entries(run_dir: Path, logs_dir: Path) -> list[ModelEntry]:
    """The run's checkpoints (the best one recommended), ``last``, exported adapter and base model;
    nothing for a run without weights. ``Refused`` for a run whose config is not trusted."""
    checkpoints, adapter = run_dir / "checkpoints", run_dir / "adapter"
    files = sorted(checkpoints.glob("*.ckpt"), key=_checkpoint_order) if checkpoints.is_dir() else []
    files = [f for f in files if not f.name.startswith(".") and _inside(f, logs_dir)]
    has_adapter = is_adapter_dir(adapter) and _inside(adapter, logs_dir)
    if not files and not has_adapter:  # an evaluation, or a training run stopped before its first checkpoint
        return []
    info = run_info(run_dir, _mtime(run_dir / ".hydra" / "config.yaml"), _mtime(run_dir / "metrics.json"))
    if info is None:
        return []
    if isinstance(info, str):
        raise Refused(info)
    family, base, best = info
    run = run_dir.relative_to(logs_dir).as_posix()
    common = dict(kind=kind_of(family), family=family, run=run, base=base)
    entries = [ModelEntry(name=f"{run}/base", source="base", target=EvalTarget("base", None, run_dir), **common)]
    for ckpt in files:
        step = STEP.match(ckpt.stem)
        entries.append(ModelEntry(
            name=f"{run}/{ckpt.stem}", source="last" if ckpt.stem == "last" else "checkpoint",
            target=EvalTarget("checkpoint", str(ckpt), run_dir), step=int(step[1]) if step else None,
            recommended=ckpt.name == best, version=_mtime(ckpt), **common))
    if has_adapter:
        step = STEP.match(Path(best).stem)
        weights = max((_mtime(f) for f in adapter.glob("*.safetensors")), default=0)
        entries.append(ModelEntry(name=f"{run}/adapter", source="adapter",
                                  target=EvalTarget("adapter", str(adapter), run_dir),
                                  step=int(step[1]) if step else None, version=weights, **common))
    return entries


def _checkpoint_order(path: Path) -> tuple[int, int]:
    step = STEP.match(path.stem)
    return (0, int(step[1])) if step else (1, 0)


def _read_report(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


class ModelRegistry:
    """Names → entries: fixed base models plus the runs found by (re)scanning the logs directory."""

    def __init__(self, logs_dir: str | Path, base_models: list[ModelEntry] | None = None):
        self.logs_dir = Path(logs_dir).expanduser().resolve()
        self.base_models = list(base_models or [])
        self._entries: dict[str, ModelEntry] = {}
        self._refused: dict[str, str] = {}  # run name → why its config is not trusted
        self._lock = threading.Lock()
        self.scan()

    def scan(self) -> list[ModelEntry]:
        entries, refused = list(self.base_models), {}
        for run_dir in find_run_dirs(self.logs_dir):
            try:
                entries += run_entries(run_dir, self.logs_dir)
            except Refused as err:
                refused[run_dir.relative_to(self.logs_dir).as_posix()] = str(err)
        with self._lock:
            for run in refused.keys() - self._refused.keys():
                log.warning("not serving %s: %s", run, refused[run])
            self._entries, self._refused = {e.name: e for e in entries}, refused
        return entries

    def refusal(self, name: str) -> str | None:
        """Why ``name`` (a model of a refused run) is not served, else None."""
        with self._lock:
            return next((why for run, why in self._refused.items() if name.startswith(f"{run}/")), None)

    def list(self) -> list[ModelEntry]:
        return self.scan()  # checkpoints written since the last request show up

    def get(self, name: str) -> ModelEntry | None:
        """The entry named exactly ``name`` (rescanning once on a miss), else None."""
        with self._lock:
            entry = self._entries.get(name)
        # ModelCheckpoint deletes checkpoints that fall out of the top k while a run trains
        if entry is None or (entry.target.path and not Path(entry.target.path).exists()):
            entry = next((e for e in self.scan() if e.name == name), None)
        return entry
