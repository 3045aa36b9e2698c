"""Instantiating config nodes, with a ``UserError`` raised as itself rather than wrapped by Hydra."""

from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from src.errors import UserError, find_user_error


def instantiate_group(group: DictConfig | None) -> list[Any]:
    """Instantiate every ``_target_`` entry of a config group (callbacks, loggers)."""
    if not group:
        return []
    return [instantiate(node) for node in group.values() if isinstance(node, DictConfig) and "_target_" in node]


def instantiate_config(node: DictConfig, **kwargs) -> Any:
    """``hydra.utils.instantiate``; a UserError inside comes out as itself, an unknown key as one line."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        user_error = find_user_error(err)
        if user_error is not None:
            raise user_error from None
        cause = err.__cause__
        if isinstance(cause, TypeError) and "unexpected keyword argument" in str(cause):
            raise UserError(f"{node.get('_target_')} {str(cause).split(' got ', 1)[-1]} — remove that key from the "
                            "config (an experiment's settings do not fit another model or data group)") from None
        raise
