"""Which callables a config may name: every ``_target_`` of a config is checked against an allowlist before
anything in it is instantiated.

A checkpoint or run folder carries its run config, and Hydra calls whatever a ``_target_`` names, with the
arguments beside it: a config from someone else could name a file writer or a process runner. So a config
builds only ratlit's own classes, the exact torch / lightning names that ratlit's configs use
(:data:`SHIPPED_TARGETS`, :data:`EARLIER_TARGETS`), and what the user trusts on their own command line, in their
own config folder (``trusted_targets: [mypkg, otherpkg.nets.MyNet]``) or in ``$RATLIT_TRUSTED_TARGETS``
(``mypkg:otherpkg.nets.MyNet``). A file's own ``trusted_targets`` never counts: a file cannot vouch for itself.
docs/security.md explains the rules.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import re
import sys
from collections.abc import Iterable, Iterator
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from ratlit.utils.errors import InputError

ENV_VAR = "RATLIT_TRUSTED_TARGETS"
CONFIG_KEY = "trusted_targets"
PACKAGE = "ratlit"
# Exact names, not prefixes: ``torch.optim.Adam`` is trusted, ``torch.save`` is not. These are the names outside
# ratlit that the shipped configs (conf/) name; a test composes every shipped config and compares.
SHIPPED_TARGETS = frozenset({
    "torch.optim.Adam",                                  # conf/optimizer/adam.yaml
    "lightning.Trainer",                                 # conf/trainer/default.yaml
    "lightning.pytorch.strategies.DDPStrategy",          # conf/trainer/ddp.yaml
    "datetime.timedelta",                                # conf/trainer/ddp.yaml: the DDP timeout
    "lightning.pytorch.callbacks.LearningRateMonitor",   # conf/callbacks/default.yaml
    "lightning.pytorch.loggers.TensorBoardLogger",       # conf/logger/tensorboard.yaml
    "lightning.pytorch.loggers.WandbLogger",             # conf/logger/wandb.yaml
})
# Names that configs of earlier ratlit versions hold (their checkpoints still load; evaluate builds only the
# model and data of them, resume maps the scheduler to ratlit.training.schedule.CosineToEnd).
EARLIER_TARGETS = frozenset({
    "torch.optim.lr_scheduler.CosineAnnealingLR",
    "lightning.pytorch.callbacks.RichProgressBar",
    "lightning.pytorch.loggers.CSVLogger",
})
# Functions of ratlit that configs name; any other ratlit name must be a class of the package (a function such as
# ratlit.utils.files.write_text_atomic writes where its arguments say).
PACKAGE_FUNCTIONS = frozenset({
    "ratlit.partition.build_sam_partitioner",            # conf/partition/sam.yaml
    "ratlit.partition.build_litemedsam_partitioner",     # conf/partition/litemedsam.yaml
})
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


class _Refused(Exception):
    """Why one target is not trusted (a phrase that completes ``<key>=<target> ...``)."""


def listed(own: Iterable[Any] | str | None) -> list[str]:
    """A ``trusted_targets`` value as a list of names (one name may be given alone)."""
    return [own] if isinstance(own, str) else [str(e).strip() for e in own or []]


def trusted_entries(own: Iterable[Any] | str | None = None) -> tuple[str, ...]:
    """The user's trusted modules and classes: ``$RATLIT_TRUSTED_TARGETS`` (separated by ``:`` or ``,``) and
    ``own`` (the command's own ``trusted_targets``); InputError for an entry that is not a dotted name."""
    env = os.environ.get(ENV_VAR, "")
    entries = [(f"${ENV_VAR}", e) for e in re.split(r"[:,\s]+", env) if e]
    entries += [(CONFIG_KEY, e) for e in listed(own)]
    for where, entry in entries:
        if not _NAME.fullmatch(entry):
            raise InputError(f"{where}: {entry!r} is not a module or class name (e.g. mypkg or mypkg.nets.MyNet)")
    return tuple(dict.fromkeys(e for _, e in entries))


def check_targets(cfg: Any, source: str, trusted: Iterable[str] = ()) -> None:
    """Refuse ``cfg`` (a config read from ``source``, a file or "the run config") when a ``_target_`` anywhere in
    it (nested nodes, lists, ``_args_``, ``_partial_`` nodes, nodes an interpolation makes) names a callable that
    is not trusted: one InputError line naming ``source``, the key, the target and where it would come from.

    ``trusted``: the user's entries (:func:`trusted_entries`); ``mypkg`` trusts ``mypkg.x.Y``, not ``mypkgx.Y``."""
    trusted = tuple(trusted)
    refused = []
    for key, target in _targets(cfg, ""):
        try:
            _check_one(target, trusted)
        except _Refused as why:
            refused.append((key, target, str(why)))
    if not refused:
        return
    key, target, why = refused[0]
    more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
    claimed = _own_claim(cfg, target, trusted)
    hint = (f"; its own {CONFIG_KEY} lists {claimed} but a file cannot vouch for itself" if claimed else "")
    if isinstance(target, str) and _NAME.fullmatch(target) and not _under(target, PACKAGE) and not _stdlib(target):
        hint += f"; to trust it: {CONFIG_KEY}=[{target}] or {ENV_VAR}={target} (docs/security.md)"
    raise InputError(f"{source}: {key}={target!r} {why}{more}{hint}")


def _targets(node: Any, path: str) -> Iterator[tuple[str, Any]]:
    """``(dotted key, value)`` of every ``_target_`` below ``node``, interpolations resolved where they resolve."""
    for key, value in _children(node):
        here = f"{path}[{key}]" if isinstance(key, int) else (f"{path}.{key}" if path else str(key))
        if key == "_target_":
            yield here, value
        elif isinstance(value, (DictConfig, ListConfig, dict, list, tuple)):
            yield from _targets(value, here)


def _children(node: Any) -> Iterator[tuple[Any, Any]]:
    if isinstance(node, (DictConfig, ListConfig)):
        keys = range(len(node)) if isinstance(node, ListConfig) else list(node.keys())
        for key in keys:
            try:  # as Hydra will see it: an interpolation (oc.create, oc.decode) may make a node with a _target_
                value = node[key]
            except Exception:  # a missing value, an interpolation that does not resolve here: its raw text
                value = OmegaConf.to_container(node, resolve=False)[key]
            yield key, value
    elif isinstance(node, dict):
        yield from node.items()
    elif isinstance(node, (list, tuple)):
        yield from enumerate(node)


def _check_one(target: Any, trusted: tuple[str, ...]) -> None:
    if not isinstance(target, str) or not _NAME.fullmatch(target):
        raise _Refused("is not the dotted name of a class")
    if any(part.startswith("__") for part in target.split(".")):
        raise _Refused("is not trusted: a dunder attribute or module")
    if target in SHIPPED_TARGETS or target in EARLIER_TARGETS or target in PACKAGE_FUNCTIONS:
        return
    if _under(target, PACKAGE):
        obj = _locate_within(target, PACKAGE)
        if not inspect.isclass(obj):
            raise _Refused(f"is not a class of {PACKAGE} (configs build its classes, and the functions "
                           f"{', '.join(sorted(PACKAGE_FUNCTIONS))})")
        return
    if target in trusted:  # named exactly by the user
        return
    entry = next((e for e in trusted if _under(target, e)), None)
    if entry is None:
        raise _Refused(f"is not trusted: it would come from {_origin(target)}")
    obj = _locate_within(target, entry.split(".", 1)[0])
    if not (inspect.isclass(obj) or inspect.isfunction(obj)):
        raise _Refused(f"is not a class or function (trusted through {entry!r})")


def _under(name: str, entry: str) -> bool:
    return name == entry or name.startswith(entry + ".")


def _locate_within(name: str, package: str) -> Any:
    """The object ``name`` names, reached only through modules named by ``name`` itself and ending in a class or
    function defined in ``package``: ``ratlit.training.loggers.os.system`` (``os`` imported there) is refused."""
    parts = name.split(".")
    try:
        obj: Any = importlib.import_module(parts[0])
    except ImportError as err:
        raise _Refused(f"cannot be imported: {err}") from None
    path = parts[0]
    for part in parts[1:]:
        if inspect.ismodule(obj) and obj.__name__ != path:
            raise _Refused(f"leads out of {package}: {path} is the module {obj.__name__}")
        child = getattr(obj, part, _MISSING)
        if child is _MISSING and inspect.ismodule(obj):
            try:  # a submodule not imported yet
                child = importlib.import_module(f"{path}.{part}")
            except ModuleNotFoundError as err:
                if err.name != f"{path}.{part}":
                    raise _Refused(f"cannot be imported: {err}") from None
        if child is _MISSING:
            raise _Refused(f"does not exist: {path} has no {part!r}")
        obj, path = child, f"{path}.{part}"
    if inspect.ismodule(obj):
        raise _Refused("is a module, not a class")
    home = getattr(obj, "__module__", None) or ""
    if not _under(home, package):
        raise _Refused(f"leads out of {package}: it is {home}.{getattr(obj, '__qualname__', '?')}")
    return obj


_MISSING = object()


def _stdlib(name: str) -> bool:
    top = name.split(".", 1)[0]
    return top in sys.stdlib_module_names or top in sys.builtin_module_names


def _origin(name: str) -> str:
    """Where ``name``'s top-level module would be imported from, found without running any of its code."""
    top = name.split(".", 1)[0]
    if _stdlib(name):
        return f"{top}, of the Python standard library"
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return f"{top}, which is not installed"
    where = spec.origin if spec.origin not in (None, "namespace") else next(iter(spec.submodule_search_locations or []),
                                                                            "?")
    return f"{top}, installed at {where}"


def _own_claim(cfg: Any, target: Any, trusted: tuple[str, ...]) -> str | None:
    """The entry of a file's own ``trusted_targets`` that would trust ``target``: reported, never honoured."""
    try:
        own = cfg.get(CONFIG_KEY) if isinstance(cfg, (DictConfig, dict)) else None
        entries = listed(OmegaConf.to_container(own) if isinstance(own, ListConfig) else own)
    except Exception:  # a config that is refused anyway: say nothing more
        return None
    return next((e for e in entries if isinstance(target, str) and _under(target, e) and e not in trusted), None)
