"""Messages said once per process: an assumption (what a file's values are taken as) is stated the first time it
comes up, not once per file."""

from __future__ import annotations

import logging

_said: set[str] = set()


def say_once(key: str, message: str, level: int = logging.INFO, log: logging.Logger | None = None) -> None:
    """Log ``message`` (to ``log``, default the ``ratlit`` logger) the first time ``key`` comes up in this process."""
    if key not in _said:
        _said.add(key)
        (log or logging.getLogger("ratlit")).log(level, message)
