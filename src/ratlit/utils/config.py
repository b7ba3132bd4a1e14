"""Hydra helpers shared by the commands and training: where the configs are, instantiate with the user's own
error, this run's
command-line overrides, and paths the user typed made absolute against the folder the command started in."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from omegaconf import DictConfig, ListConfig, OmegaConf

from ratlit.utils.errors import InputError

# The configs (conf/ at the repository's top) travel as the package ratlit.conf: an editable install maps it onto
# conf/, a plain install carries it, so every command runs from any folder. Users add their own config folders with
# Hydra's search path (docs/configs.md, "Your own configs").
CONF_DIR = Path(str(resources.files("ratlit.conf")))
# Resolvers the configs use. conf/train.yaml: a resumed run's Hydra job (its train.log, and its .hydra/ record
# under resume-<date>/) lives in the folder given to resume=, not in a new dated folder.
if not OmegaConf.has_resolver("ratlit.if"):
    OmegaConf.register_new_resolver("ratlit.if", lambda condition, then, otherwise: then if condition else otherwise)
if not OmegaConf.has_resolver("ratlit.stamp"):  # conf/train.yaml: default run and sweep folder names
    OmegaConf.register_new_resolver("ratlit.stamp", lambda: start_stamp(), use_cache=True)
if not OmegaConf.has_resolver("ratlit.cache_dir"):  # conf/paths/default.yaml: one default cache folder
    OmegaConf.register_new_resolver("ratlit.cache_dir", lambda: str(default_cache_dir()))
# Errors that mean bad input: the commands print them as one line and exit 2. Only the project's own class (and its
# subclasses, DiskFullError among them): any other error is a bug and keeps its traceback.
USER_ERRORS = (InputError,)


def instantiate(cfg: DictConfig | dict, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` that re-raises the user's error itself, not Hydra's wrapper around it."""
    from hydra.utils import instantiate as hydra_instantiate

    check_arguments(cfg, given=kwargs)
    try:
        return hydra_instantiate(cfg, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        while isinstance(cause, InstantiationException) and cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, USER_ERRORS):
            raise cause from None
        raise


_HYDRA_KEYS = {"_target_", "_partial_", "_args_", "_recursive_", "_convert_"}


def check_arguments(cfg: Any, path: str = "", given: dict[str, Any] | None = None) -> None:
    """Every key of every node with a ``_target_`` is an argument its callable takes: a mistyped key
    (``+model.net.widht=32``) is one line naming the key and the arguments there are, not a TypeError from deep
    inside the constructor. Nodes whose callable takes ``**kwargs`` or has no readable signature pass."""
    import inspect

    from hydra.utils import get_object

    if not path and isinstance(cfg, DictConfig):
        path = cfg._get_full_key(None) or ""  # the node's place in the whole config, e.g. model.net
    if isinstance(cfg, DictConfig | dict):
        items = cfg.items_ex(resolve=False) if isinstance(cfg, DictConfig) else cfg.items()
        node = dict(items)
        target = node.get("_target_")
        if isinstance(target, str):
            try:
                params = inspect.signature(get_object(target)).parameters.values()
            except (ImportError, AttributeError, ValueError, TypeError):
                params = None  # an unknown target is reported by instantiate (and the allowlist) itself
            if params is not None and not any(p.kind is p.VAR_KEYWORD for p in params):
                names = {p.name for p in params if p.kind is not p.VAR_POSITIONAL}
                unknown = [k for k in node if k not in _HYDRA_KEYS and k not in names and k not in (given or {})]
                if unknown:
                    key = f"{path}.{unknown[0]}" if path else str(unknown[0])
                    raise InputError(f"{key}: {target} takes no argument {unknown[0]!r}; it takes "
                                     f"{', '.join(sorted(names)) or 'none'}")
        for key, value in node.items():
            check_arguments(value, f"{path}.{key}" if path else str(key))
    elif isinstance(cfg, ListConfig | list | tuple):
        for i, value in enumerate(cfg):
            check_arguments(value, f"{path}[{i}]")


def overrides() -> list[str]:
    """This Hydra job's command-line overrides (none outside a Hydra job)."""
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def start_dir() -> Path:
    """The folder the command was started in (Hydra may have changed into the run folder since)."""
    if HydraConfig.initialized():
        from hydra.utils import get_original_cwd

        return Path(get_original_cwd())
    return Path.cwd()


def user_path(value: str | os.PathLike, base: Path | None = None) -> Path:
    """A path the user typed: ``~`` expanded, made absolute against ``base`` (default :func:`start_dir`)."""
    path = Path(os.path.expanduser(str(value)))
    return path if path.is_absolute() else ((base or start_dir()) / path).absolute()


def default_cache_dir() -> Path:
    """Where embedded data sets and partition label maps go: ``$RATLIT_CACHE``, else ``~/.cache/ratlit`` (the one
    statement of it: conf/paths/default.yaml reads it through the ``ratlit.cache_dir`` resolver)."""
    return Path(os.environ.get("RATLIT_CACHE") or "~/.cache/ratlit").expanduser()


def start_stamp() -> str:
    """A default run or sweep folder name, unique for runs started at the same moment: the start time to the
    millisecond and the SLURM job (and array task) id where SLURM started the process, else 4 random hex digits
    (``2026-12-07_10-11-12.345_a3f9``, ``2026-12-07_10-11-12.345_job81_3``)."""
    import secrets
    from datetime import datetime

    now = datetime.now()
    job, task = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID"), os.environ.get(
        "SLURM_ARRAY_TASK_ID")
    suffix = f"job{job}" + (f"_{task}" if task else "") if job else secrets.token_hex(2)
    return f"{now:%Y-%m-%d_%H-%M-%S}.{now.microsecond // 1000:03d}_{suffix}"
