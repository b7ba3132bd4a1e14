"""Hydra plumbing shared by the command-line entry points."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.errors import InstantiationException
from omegaconf import DictConfig

# conf/ sits at the repository root; hydra.main finds it relative to this file (editable install).
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
USER_ERRORS = (ValueError, FileNotFoundError, KeyError, TypeError)
log = logging.getLogger("ratlit")


def instantiate(cfg: DictConfig | dict, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` that re-raises the user's error itself, not Hydra's wrapper around it."""
    from hydra.utils import instantiate as hydra_instantiate

    try:
        return hydra_instantiate(cfg, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        while isinstance(cause, InstantiationException) and cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, USER_ERRORS):
            raise cause from None
        raise


def exit_on_user_error(task: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Turn bad input (a wrong path, a bad value) into one clear line on stderr and exit status 2."""

    def wrapped(cfg: DictConfig) -> Any:
        try:
            return task(cfg)
        except USER_ERRORS as err:
            log.error("%s", err.args[0] if isinstance(err, KeyError) and err.args else err)
            sys.exit(2)

    wrapped.__name__ = task.__name__
    wrapped.__doc__ = task.__doc__
    return wrapped
