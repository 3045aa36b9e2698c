"""What lorafit accepts from files it reads back from a run directory, which anyone who can write under
a served logs directory controls: a file placed there must not run code.

- A run's ``.hydra/config.yaml`` is instantiated only when every ``_target_`` in it names a class or
  function lorafit trusts (``check_trusted_config``): its own ``src.`` code, peft configs, torch
  optimizers and LR schedulers, transformers' schedule functions, lightning callbacks, loggers,
  strategies and the Trainer — what conf/ uses.
- Checkpoints are read with ``torch.load(weights_only=True)`` (``read_checkpoint``): tensors and plain
  values only, never pickled objects. Lightning checkpoints written by train.py need nothing more.
"""

import inspect
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from src.errors import UserError

NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")
SCHEDULE_FUNCTION = re.compile(r"get_\w*schedule\w*")
# named exactly: conf/hparams_search's sweeper and sampler
EXACT = frozenset({"hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper", "optuna.samplers.TPESampler"})
TRUSTED = ("src.* classes and functions, peft configs, torch.optim optimizers and schedulers, transformers "
           "get_*schedule* functions, lightning callbacks, loggers, strategies and Trainer")


class Refused(UserError):
    """A run file that lorafit will not execute or unpickle."""


def _subclass_of(*bases: str):
    def check(obj: Any) -> bool:
        from hydra.utils import get_class

        return inspect.isclass(obj) and issubclass(obj, tuple(get_class(b) for b in bases))
    return check


def _schedule_function(obj: Any) -> bool:
    return inspect.isfunction(obj) and bool(SCHEDULE_FUNCTION.fullmatch(obj.__name__))


# (prefix a target starts with, package its object must be defined in, what it may be there)
RULES = (
    ("src.", "src.", lambda obj: inspect.isclass(obj) or inspect.isfunction(obj)),
    ("peft.", "peft.", _subclass_of("peft.PeftConfig")),
    ("torch.optim.", "torch.optim.", _subclass_of("torch.optim.Optimizer", "torch.optim.lr_scheduler.LRScheduler")),
    ("transformers.", "transformers.", _schedule_function),
    ("lightning.pytorch.", "lightning.", _subclass_of(
        "lightning.pytorch.Callback", "lightning.pytorch.loggers.Logger", "lightning.pytorch.strategies.Strategy",
        "lightning.pytorch.Trainer")),
)


def is_trusted_target(target: Any) -> bool:
    """Whether ``_target_: target`` may be instantiated from a run's config.

    The prefix is checked before anything is imported, and the object found must be defined inside
    that package, so ``src.runtime.os.system`` (os imported into a trusted module) is refused.

    >>> [is_trusted_target(t) for t in ("torch.optim.AdamW", "os.system", "src.runtime.os.system")]
    [True, False, False]
    """
    if not isinstance(target, str) or not NAME.fullmatch(target):  # an interpolation or a non-name
        return False
    if target in EXACT:
        return True
    from hydra._internal.utils import _locate

    for prefix, package, allowed in RULES:
        if target.startswith(prefix):
            try:
                obj = _locate(target)
            except Exception:  # noqa: BLE001 (not importable: not trusted)
                return False
            defined_in = f"{getattr(obj, '__module__', '') or ''}."
            return defined_in.startswith(package) and allowed(obj)
    return False


def untrusted_targets(cfg: Any, where: str = "") -> list[tuple[str, Any]]:
    """``(config key, target)`` for every ``_target_`` in ``cfg`` that is not trusted (interpolations unresolved)."""
    node = OmegaConf.to_container(cfg, resolve=False) if isinstance(cfg, (DictConfig, ListConfig)) else cfg
    found = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        path = f"{where}.{key}" if where else str(key)
        if key == "_target_":
            if not is_trusted_target(value):
                found.append((path, value))
        else:
            found += untrusted_targets(value, path)
    return found


def check_trusted_config(cfg: Any, source: str | Path) -> None:
    """Raise ``Refused`` naming the first ``_target_`` of ``cfg`` (read from ``source``) that is not trusted."""
    refused = untrusted_targets(cfg)
    if refused:
        key, target = refused[0]
        more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
        raise Refused(f"{source}: {key}={target!r}{more} is not a target lorafit instantiates from a run directory "
                      f"(trusted: {TRUSTED}) — only serve or evaluate runs written by train.py")


def read_run_config(run_dir: Path) -> DictConfig:
    """A run's ``.hydra/config.yaml``, refused unless every ``_target_`` in it is trusted."""
    path = Path(run_dir) / ".hydra" / "config.yaml"
    cfg = OmegaConf.load(path)
    check_trusted_config(cfg, path)
    return cfg


def read_checkpoint(path: str | Path) -> Any:
    """A checkpoint's contents on the CPU, unpickling only tensors and plain values (``weights_only=True``)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        lines = [line for line in str(err).splitlines() if "global" in line.lower()]
        if lines:  # a pickled object: the code it would run is exactly what weights_only refuses
            raise Refused(f"checkpoint {path} holds pickled objects, not only tensors ({lines[0].strip()}) — "
                          "lorafit reads checkpoints with weights_only=True; pass a .ckpt written by train.py") \
                from None
        raise UserError(f"cannot read checkpoint {path}: not a torch checkpoint — pass a .ckpt written by "
                        "train.py") from None
    except Exception as err:  # truncated, empty or not a torch file
        raise UserError(f"cannot read checkpoint {path}: {type(err).__name__} {err} — pass a .ckpt written by "
                        "train.py") from None
