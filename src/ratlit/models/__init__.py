"""Restoration networks."""

from ratlit.models.official import from_official
from ratlit.models.rat import RAT

__all__ = ["RAT", "from_official"]
