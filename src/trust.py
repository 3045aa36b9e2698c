"""What lorafit accepts from files it reads back from a run directory, which anyone who can write under
a served logs directory controls: a file placed there must not run code.

- A run's ``.hydra/config.yaml`` is instantiated only when every ``_target_`` in it names a class or
  function lorafit trusts (``check_trusted_config``): the ``src.`` targets conf/ names (not any ``src.``
  function: ``src.atomic.atomic_write_text`` would write any file), peft configs, torch optimizers and LR
  schedulers, transformers' schedule functions, lightning callbacks, loggers, strategies and the Trainer.
- Its interpolations may call only the resolvers conf/ itself needs (``RESOLVERS``): Hydra's instantiate
  resolves them after the check, so ``${oc.create:{_target_: ...}}`` would build an unchecked target and
  ``${oc.env:LORAFIT_API_KEY}`` would copy a server secret into a field. ``${a.b}`` node interpolations
  are fine; the tree is checked again once resolved, for a target that appears only then.
- Checkpoints are read with ``torch.load(weights_only=True)`` (``read_checkpoint``): tensors and plain
  values only, never pickled objects. Lightning checkpoints written by train.py need nothing more.
"""

import copy
import inspect
import pickle
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from hydra._internal.utils import _locate
from hydra.utils import get_class
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.grammar.gen.OmegaConfGrammarParser import OmegaConfGrammarParser
from omegaconf.grammar_parser import parse

from src.config_files import CONF_DIR
from src.errors import UserError
from src.families.registry import FAMILIES

NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")
SCHEDULE_FUNCTION = re.compile(r"get_\w*schedule\w*")
# named exactly: conf/hparams_search's sweeper and sampler
EXACT = frozenset({"hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper", "optuna.samplers.TPESampler"})
TRUSTED = ("the src targets conf/ names, peft configs, torch.optim optimizers and schedulers, transformers "
           "get_*schedule* functions, lightning callbacks, loggers, strategies and Trainer")
# resolver -> the first arguments it may take (None: any). conf/ uses exactly these; each returns a string.
# oc.env only for conf/paths' two path variables (a run config must not read LORAFIT_API_KEY or any other
# secret), hydra only for runtime.output_dir (hydra.overrides holds the server's command line).
RESOLVERS = {"oc.env": {"PROJECT_ROOT", "LORAFIT_CACHE"}, "hydra": {"runtime.output_dir"}, "now": None,
             "optuna_direction": None, "cuda_mixed_precision": None}  # the last two: src/resolvers.py
ALLOWED = ", ".join(name + (":" + "|".join(sorted(args)) if args else "") for name, args in RESOLVERS.items())


class Refused(UserError):
    """A run file that lorafit will not execute or unpickle."""


def _subclass_of(*bases: str):
    def check(obj: Any) -> bool:
        return inspect.isclass(obj) and issubclass(obj, tuple(get_class(b) for b in bases))
    return check


def _schedule_function(obj: Any) -> bool:
    return inspect.isfunction(obj) and bool(SCHEDULE_FUNCTION.fullmatch(obj.__name__))


@lru_cache(maxsize=1)
def conf_src_targets(conf_dir: Path = CONF_DIR) -> frozenset[str]:
    """Every ``_target_: src....`` written in ``conf/**/*.yaml``: the only lorafit code a run config may call.
    Run configs written by train.py are conf/ composed, so their ``src.`` targets are all here."""
    def targets(node: Any):
        for key, value in _items(node):
            if key == "_target_" and isinstance(value, str) and value.startswith("src."):
                yield value
            yield from targets(value)

    return frozenset(target for path in sorted(Path(conf_dir).rglob("*.yaml"))
                     for target in targets(OmegaConf.to_container(OmegaConf.load(path), resolve=False)))


def _items(node: Any):
    return node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()


# (prefix a target starts with, package its object must be defined in, what it may be there)
RULES = (
    ("src.", "src.", lambda obj: inspect.isclass(obj) or inspect.isfunction(obj)),  # and named in conf/
    ("peft.", "peft.", _subclass_of("peft.PeftConfig")),
    ("torch.optim.", "torch.optim.", _subclass_of("torch.optim.Optimizer", "torch.optim.lr_scheduler.LRScheduler")),
    ("transformers.", "transformers.", _schedule_function),
    ("lightning.pytorch.", "lightning.", _subclass_of(
        "lightning.pytorch.Callback", "lightning.pytorch.loggers.Logger", "lightning.pytorch.strategies.Strategy",
        "lightning.pytorch.Trainer")),
)


def family_module_targets() -> set[str]:
    """The LightningModule classes of the registered model families (a family added by a plugin included)."""
    return {f"{f.module_class.__module__}.{f.module_class.__qualname__}" for f in FAMILIES}


def is_trusted_target(target: Any) -> bool:
    """Whether ``_target_: target`` may be instantiated from a run's config.

    The prefix is checked before anything is imported, and the object found must be defined inside
    that package, so ``src.runtime.os.system`` (os imported into a trusted module) is refused.

    >>> [is_trusted_target(t) for t in ("torch.optim.AdamW", "os.system", "src.runtime.os.system")]
    [True, False, False]
    >>> [is_trusted_target(t) for t in ("src.modules.seq2seq_lora.Seq2SeqLoRAModule", "src.atomic.atomic_write_text")]
    [True, False]
    """
    if not isinstance(target, str) or not NAME.fullmatch(target):  # an interpolation or a non-name
        return False
    if target in EXACT or target in family_module_targets():
        return True
    if target.startswith("src.") and target not in conf_src_targets():
        return False
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
    for key, value in _items(node):
        path = f"{where}.{key}" if where else str(key)
        if key == "_target_":
            if not is_trusted_target(value):
                found.append((path, value))
        else:
            found += untrusted_targets(value, path)
    return found


def refused_resolver(value: Any) -> str | None:
    """The first resolver call in ``value`` that a run config may not make (its name, and its first argument
    for a resolver allowed only some), if any.

    >>> [refused_resolver(v) for v in ("${oc.env:PROJECT_ROOT,.}/x", "${model.mode}", "${oc.env:LORAFIT_API_KEY}")]
    [None, None, "the resolver 'oc.env:LORAFIT_API_KEY'"]
    >>> refused_resolver("${oc.env:LORAFIT_CACHE,${oc.create:{_target_: os.getcwd}}}")
    "the resolver 'oc.create'"
    """
    if not isinstance(value, str) or "${" not in value:
        return None
    try:
        tree = parse(value)
    except Exception:  # noqa: BLE001 (OmegaConf could not resolve it either: refuse rather than guess)
        return "an interpolation OmegaConf cannot parse"
    stack = [tree]
    while stack:
        ctx = stack.pop()
        if isinstance(ctx, OmegaConfGrammarParser.InterpolationResolverContext):
            name = ctx.resolverName().getText()
            args = ctx.sequence()
            first = args.element(0).getText().strip() if args is not None and args.element(0) else ""
            if name not in RESOLVERS:
                return f"the resolver {name!r}"
            if RESOLVERS[name] is not None and first not in RESOLVERS[name]:
                return f"the resolver {name + ':' + first!r}"
        stack.extend(reversed(list(ctx.getChildren() if hasattr(ctx, "getChildren") else ())))
    return None


def refused_interpolations(cfg: Any, where: str = "") -> list[tuple[str, Any, str]]:
    """``(config key, value, what it calls)`` for every value of ``cfg`` calling a resolver not in ``RESOLVERS``."""
    node = OmegaConf.to_container(cfg, resolve=False) if isinstance(cfg, (DictConfig, ListConfig)) else cfg
    found = []
    for key, value in _items(node):
        path = f"{where}.{key}" if where else str(key)
        call = refused_resolver(value)
        if call is not None:
            found.append((path, value, call))
        else:
            found += refused_interpolations(value, path)
    return found


def untrusted_resolved_targets(cfg: Any, where: str = "", seen: set[int] | None = None) -> list[tuple[str, Any]]:
    """``(config key, target)`` for every untrusted ``_target_`` of ``cfg`` with its interpolations resolved.

    Value by value, not ``to_container(resolve=True)``: a value that cannot resolve here (``${hydra:...}``
    outside a Hydra app, as in serve.py) is skipped, not a reason to skip the rest; instantiating it fails
    the same way. ``seen`` stops at a node reached twice (``a: {x: ${b}}, b: {y: ${a}}``)."""
    seen = set() if seen is None else seen
    if id(cfg) in seen:
        return []
    seen.add(id(cfg))
    keys = list(cfg.keys()) if isinstance(cfg, (DictConfig, dict)) else range(len(cfg))
    found = []
    for key in keys:
        path = f"{where}.{key}" if where else str(key)
        try:
            value = cfg[key]
        except Exception:  # noqa: BLE001 (unresolvable here: see above)
            continue
        if key == "_target_":
            if not is_trusted_target(value):
                found.append((path, value))
        elif isinstance(value, (DictConfig, ListConfig, dict, list)):
            found += untrusted_resolved_targets(value, path, seen)
    return found


def check_trusted_config(cfg: Any, source: str | Path) -> None:
    """Raise ``Refused`` naming the first ``_target_`` of ``cfg`` (read from ``source``) that is not trusted, or
    the first value calling a resolver a run config may not call; nothing is resolved before both pass."""
    targets = untrusted_targets(cfg)
    calls = [] if targets else refused_interpolations(cfg)
    if not targets and not calls and isinstance(cfg, (DictConfig, ListConfig, dict, list)):
        resolvable = copy.deepcopy(cfg) if isinstance(cfg, (DictConfig, ListConfig)) else OmegaConf.create(cfg)
        targets = untrusted_resolved_targets(resolvable)  # on a copy: resolvers may cache into the config
    refused = targets or calls
    if not refused:
        return
    key, value = refused[0][:2]
    more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
    if targets:
        why = f"is not a target lorafit instantiates from a run directory (trusted: {TRUSTED})"
    else:
        why = (f"calls {refused[0][2]}, which a run directory's config may not call "
               f"(allowed resolvers: {ALLOWED}; ${{a.b}} interpolations are fine)")
    raise Refused(f"{source}: {key}={value!r}{more} {why} — only serve or evaluate runs written by train.py")


def read_run_config(run_dir: Path) -> DictConfig:
    """A run's ``.hydra/config.yaml``, refused unless every ``_target_`` and resolver call in it is trusted."""
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
