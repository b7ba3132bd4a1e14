"""One way to start a command: Hydra config from the package's ``conf/``, overrides made palatable to Hydra's
lexer, the process's allocator set, Lightning's unactionable messages hidden, bad input (the project's
:class:`~ratlit.utils.errors.InputError`, and Hydra's config errors) reported as one line (exit status 2) instead
of a traceback, and a stop by SIGTERM or Ctrl-C reported as one line (exit 128 + the signal) once every worker
process has ended and every temporary folder is removed (:mod:`ratlit.utils.stopping`). Any other error is a bug
and keeps its traceback."""

from __future__ import annotations

import errno
import functools
import logging
import os
import re
import signal
import sys
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any, TypeVar

from omegaconf import DictConfig

from ratlit.utils.allocator import keep_freed_memory
from ratlit.utils.config import CONF_DIR, USER_ERRORS
from ratlit.utils.stopping import Stopped, stop_on_signals

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
            log.error("%s", err)
            sys.exit(2)

    return wrapped


def config_error_line(err: Exception) -> str:
    """Hydra's multi-line config error as one line; an unknown option lists the valid ones."""
    from hydra.errors import MissingConfigException, OverrideParseException

    if isinstance(err, MissingConfigException) and getattr(err, "options", None):
        group, _, option = str(err.missing_cfg_file).rpartition("/")
        return f"{group}={option}: no such option; {group} is one of {', '.join(err.options)}"
    if isinstance(err, OverrideParseException):
        return f"cannot read the override {err.override!r}: {str(err.message).splitlines()[0]}"
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    return text.split(" Config search path:")[0]


def _unwritable_line(err: OSError) -> str | None:
    """A folder Hydra could not create or write (the run or log folder), as one line; None for other errors."""
    if err.errno not in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC) or not err.filename:
        return None
    return (f"cannot write the output folder {err.filename}: {os.strerror(err.errno)} (choose another with "
            "RATLIT_OUTPUTS=... or hydra.run.dir=...)")


def check_overrides_used(config_name: str, cfg: DictConfig, open_nodes: tuple[str, ...] = ()) -> None:
    """Refuse an override that adds a top-level key or config group the command does not read (``+partition=slic``
    on predict): it would be ignored without a word. The command reads what its own config holds without the
    user's additions (its ``open_nodes`` take any key)."""
    from hydra import compose
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from ratlit.utils.config import overrides
    from ratlit.utils.errors import InputError

    added = []
    for override in OverridesParser.create().parse_overrides(overrides()):
        top = override.key_or_group.split("@", 1)[0].replace("/", ".").split(".", 1)[0]
        if (override.is_add() or override.is_force_add()) and top not in open_nodes and top != "hydra":
            added.append((top, override.input_line))
    if not added:
        return
    reads = set(compose(config_name))  # the command's own config, without the user's additions
    unused = [line for top, line in added if top not in reads]
    if unused:
        raise InputError(f"{config_name} does not use {', '.join(unused)}: it reads {', '.join(sorted(reads))}")


def hydra_command(config_name: str, task: Callable[[DictConfig], Any], open_nodes: tuple[str, ...] = (),
                  keep_memory: bool = True, stop_anywhere: bool = True) -> Callable[[], Any]:
    """The ``main()`` of a command: ``task(cfg)`` under Hydra with ``conf/<config_name>.yaml``.

    ``open_nodes``: see :func:`prepare_argv`. ``keep_memory``: set the allocator first
    (:func:`ratlit.utils.allocator.keep_freed_memory`). ``stop_anywhere``: SIGTERM / SIGINT stop the task
    wherever it is (:func:`ratlit.utils.stopping.stop_on_signals`); false where the task enters that itself
    around its own phases (training leaves the trainer's steps to Lightning's signal handling).
    """
    import hydra
    from hydra.errors import HydraException

    started = []

    @functools.wraps(task)  # Hydra names the job (and its log file) after the task's module
    def start(cfg: DictConfig) -> Any:
        started.append(True)
        if keep_memory:
            keep_freed_memory()
        quiet_unactionable_messages()
        try:
            with stop_on_signals() if stop_anywhere else nullcontext():
                exit_on_user_error(lambda cfg: check_overrides_used(config_name, cfg, open_nodes))(cfg)
                return task(cfg)
        except Stopped as stop:
            print(f"[ratlit] {config_name} stopped by {signal.Signals(stop.signum).name}: worker processes ended, "
                  "temporary files removed", file=sys.stderr, flush=True)
            sys.exit(stop.exit_status)

    hydra_main = hydra.main(config_path=str(CONF_DIR), config_name=config_name, version_base="1.3")(start)

    def main() -> Any:
        sys.argv = prepare_argv(sys.argv, open_nodes)  # data.root=~/scans: Hydra's lexer rejects an unquoted ~
        # Hydra then raises its errors here instead of printing them over several lines and exiting 1.
        full_error = os.environ.get("HYDRA_FULL_ERROR")
        os.environ["HYDRA_FULL_ERROR"] = "1"
        try:
            return hydra_main()
        except (HydraException, OSError) as err:
            if started:  # from inside the task: not the command line's fault, keep the traceback
                raise
            line = config_error_line(err) if isinstance(err, HydraException) else _unwritable_line(err)
            if line is None:
                raise
            print(f"error: {line}", file=sys.stderr, flush=True)
            sys.exit(2)
        finally:
            if full_error is None:
                os.environ.pop("HYDRA_FULL_ERROR", None)
            else:
                os.environ["HYDRA_FULL_ERROR"] = full_error

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
