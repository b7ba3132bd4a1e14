"""Hydra plumbing shared by the command-line entry points."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

from ratlit.files import default_cache_dir

# conf/ sits at the repository root; hydra.main finds it relative to this file (editable install).
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
USER_ERRORS = (ValueError, FileNotFoundError, KeyError, TypeError)
log = logging.getLogger("ratlit")

# conf/train.yaml: a resumed run's Hydra job (its train.log, and its .hydra/ record under resume-<date>/)
# lives in the folder given to resume=, not in a new dated folder.
if not OmegaConf.has_resolver("ratlit.if"):
    OmegaConf.register_new_resolver("ratlit.if", lambda condition, then, otherwise: then if condition else otherwise)
if not OmegaConf.has_resolver("ratlit.cache_dir"):  # conf/paths/default.yaml: one default cache folder
    OmegaConf.register_new_resolver("ratlit.cache_dir", lambda: str(default_cache_dir()))


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


def prepare_argv(argv: list[str], open_nodes: tuple[str, ...] = ()) -> list[str]:
    """Command-line overrides made palatable to Hydra's override lexer, which rejects an unquoted ``~``:
    a value starting with ``~`` (``data.root=~/scans``) becomes the expanded, quoted absolute path.
    Keys under ``open_nodes`` (e.g. ``data`` of evaluate, merged into the run's own data config) are set
    whether or not the node lists them (``++data.root=...``), so ``data.X=...`` works as documented."""
    import os
    import re

    out = argv[:1]
    for arg in argv[1:]:
        match = re.fullmatch(r"([+~]*)([\w.@/-]+)=(.*)", arg, flags=re.DOTALL)
        if match is None or arg.startswith("-"):
            out.append(arg)
            continue
        prefix, key, value = match.groups()
        if value.startswith("~"):
            value = "'" + os.path.expanduser(value).replace("\\", "\\\\").replace("'", "\\'") + "'"
        if not prefix and key.split(".", 1)[0] in open_nodes and "." in key:
            prefix = "++"
        out.append(f"{prefix}{key}={value}")
    return out


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
