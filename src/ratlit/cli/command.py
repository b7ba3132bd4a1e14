"""One way to start a command: Hydra config from the package's ``conf/``, overrides made palatable to Hydra's
lexer, the process's allocator set, Lightning's unactionable messages hidden, and bad input reported as one
line (exit status 2) instead of a traceback."""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

from omegaconf import DictConfig

from ratlit.utils.allocator import keep_freed_memory
from ratlit.utils.config import CONF_DIR, USER_ERRORS

T = TypeVar("T")
log = logging.getLogger("ratlit")



def _quoted(value: str) -> str:
    """``value`` as one quoted string of Hydra's override grammar (backslashes and quotes escaped)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _palatable(value: str) -> str:
    """One override value with each of its comma-separated sweep values (Hydra's ``a,b``; not at ``\\,``) that
    starts with ``~`` expanded and quoted, and each holding non-ASCII characters quoted. Quoted values, lists and
    dicts are left as the user wrote them."""
    if value.startswith(("'", '"', "[", "{")):
        return value
    elements = re.split(r"(?<!\\),", value)
    for i, element in enumerate(elements):
        if element.startswith("~") or not element.isascii():
            elements[i] = _quoted(os.path.expanduser(element))
    return ",".join(elements)


def prepare_argv(argv: list[str], open_nodes: tuple[str, ...] = ()) -> list[str]:
    """Command-line overrides made palatable to Hydra's override lexer, which rejects an unquoted ``~`` and
    letters outside ASCII: a value starting with ``~`` (``data.root=~/scans``) becomes the expanded, quoted
    absolute path, each value of a sweep alike (``-m data.root=~/a,~/b``); a value holding non-ASCII characters
    (``input=/tmp/données/scan.png``) is quoted. Keys under ``open_nodes`` (e.g. ``data`` of evaluate, merged
    into the run's own data config) are set whether or not the node lists them (``++data.root=...``), so
    ``data.X=...`` works as documented."""
    out = argv[:1]
    for arg in argv[1:]:
        match = re.fullmatch(r"([+~]*)([\w.@/-]+)=(.*)", arg, flags=re.DOTALL)
        if match is None or arg.startswith("-"):
            out.append(arg)
            continue
        prefix, key, value = match.groups()
        value = _palatable(value)
        if not prefix and key.split(".", 1)[0] in open_nodes and "." in key:
            prefix = "++"
        out.append(f"{prefix}{key}={value}")
    return out


def exit_on_user_error(task: Callable[[DictConfig], T]) -> Callable[[DictConfig], T]:
    """Turn bad input (a wrong path, a bad value) into one clear line on stderr and exit status 2."""

    @functools.wraps(task)
    def wrapped(cfg: DictConfig) -> T:
        try:
            return task(cfg)
        except USER_ERRORS as err:
            log.error("%s", err.args[0] if isinstance(err, KeyError) and err.args else err)
            sys.exit(2)

    return wrapped


def hydra_command(config_name: str, task: Callable[[DictConfig], Any], open_nodes: tuple[str, ...] = (),
                  keep_memory: bool = True) -> Callable[[], Any]:
    """The ``main()`` of a command: ``task(cfg)`` under Hydra with ``conf/<config_name>.yaml``.

    ``open_nodes``: see :func:`prepare_argv`. ``keep_memory``: set the allocator first
    (:func:`ratlit.utils.allocator.keep_freed_memory`).
    """
    import hydra

    @functools.wraps(task)  # Hydra names the job (and its log file) after the task's module
    def start(cfg: DictConfig) -> Any:
        if keep_memory:
            keep_freed_memory()
        quiet_unactionable_messages()
        return task(cfg)

    hydra_main = hydra.main(config_path=str(CONF_DIR), config_name=config_name, version_base="1.3")(start)

    def main() -> Any:
        sys.argv = prepare_argv(sys.argv, open_nodes)  # data.root=~/scans: Hydra's lexer rejects an unquoted ~
        return hydra_main()

    return main


# Messages a ratlit user cannot act on, matched exactly (everything else still shows).
UNACTIONABLE_WARNINGS = (
    # Lightning's own pytree helper on torch >= 2.10; fixed in Lightning, nothing to change in user code.
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
)
UNACTIONABLE_LOG_PREFIXES = (
    "💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger]",
    "💡 Tip: For seamless cloud uploads and versioning, try installing [litmodels]",
)


class _DropPrefixes(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(UNACTIONABLE_LOG_PREFIXES)


def quiet_unactionable_messages() -> None:
    """Hide Lightning's product tips and a deprecation inside Lightning itself, by their exact text."""
    for pattern in UNACTIONABLE_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    rank_zero_log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropPrefixes) for f in rank_zero_log.filters):
        rank_zero_log.addFilter(_DropPrefixes())
