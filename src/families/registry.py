"""The family registry: every part of lorafit that needs to know a model's family asks ``FAMILIES``.

Built in: seq2seq, causal, chat, diffusion. More come from a package's entry points (group ``lorafit.families``, each
naming a ``ModelFamily`` object: ``toy = "mypkg.toy:TOY"``), loaded on first use; from a ``FAMILY`` object defined
in the same module as its LightningModule (found when a config names that module's class); or from
``FAMILIES.register``. A LightningModule names its family by ``family_name``; a model config's family is that of
its ``_target_`` class, read without instantiating anything.
"""

import sys
from collections.abc import Iterator
from importlib.metadata import entry_points

from hydra.utils import get_class
from omegaconf import DictConfig

from src.errors import UserError
from src.families.causal import CAUSAL
from src.families.chat import CHAT
from src.families.diffusion import DIFFUSION
from src.families.protocol import KINDS, ModelFamily, missing_members
from src.families.seq2seq import SEQ2SEQ

ENTRY_POINT_GROUP = "lorafit.families"


class FamilyRegistry:
    def __init__(self, families: list[ModelFamily]):
        self._families: dict[str, ModelFamily] = {}
        self._plugins_loaded = False
        for family in families:
            self.register(family)

    def register(self, family: ModelFamily) -> ModelFamily:
        """Add a family (a second registration of the same object is a no-op); its contract is checked here."""
        missing = missing_members(family)
        if missing:
            raise TypeError(f"{family!r} is not a model family: it lacks {', '.join(missing)} (src/families/protocol.py)")
        if family.kind not in KINDS:
            raise TypeError(f"family {family.name}: kind {family.kind!r} is not one of {KINDS}")
        if getattr(family.module_class, "family_name", None) != family.name:
            raise TypeError(f"family {family.name}: its module class {family.module_class.__name__} names family "
                            f"{getattr(family.module_class, 'family_name', None)!r}")
        known = self._families.get(family.name)
        if known is not None and known is not family:
            raise ValueError(f"a model family named {family.name!r} is registered already")
        self._families[family.name] = family
        return family

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for entry in entry_points(group=ENTRY_POINT_GROUP):
            self.register(entry.load())

    def __iter__(self) -> Iterator[ModelFamily]:
        self._load_plugins()
        return iter(list(self._families.values()))

    def names(self) -> list[str]:
        return [f.name for f in self]

    def get(self, name: str) -> ModelFamily:
        self._load_plugins()
        if name not in self._families:
            raise UserError(f"unknown model family {name!r} — use one of {', '.join(self.names())}")
        return self._families[name]

    def of_module_class(self, cls: type) -> ModelFamily:
        """The family a LightningModule class belongs to (its ``family_name``)."""
        name = getattr(cls, "family_name", None)
        if not name:
            raise UserError(f"{cls.__module__}.{cls.__qualname__} is not a lorafit model: it names no family_name — "
                            "point model._target_ at a family's LightningModule (src/modules/)")
        self._load_plugins()
        beside = getattr(sys.modules.get(cls.__module__), "FAMILY", None)  # defined next to its module class
        if name not in self._families and beside is not None and getattr(beside, "name", None) == name:
            self.register(beside)
        return self.get(name)

    def of_target(self, target: str) -> ModelFamily:
        return self.of_module_class(get_class(target))

    def of_config(self, model_cfg: DictConfig) -> ModelFamily:
        """The family of a model config, from its ``_target_`` class (nothing is instantiated)."""
        return self.of_target(str(model_cfg._target_))


FAMILIES = FamilyRegistry([SEQ2SEQ, CAUSAL, CHAT, DIFFUSION])
