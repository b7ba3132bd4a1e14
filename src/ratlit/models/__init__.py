"""Restoration networks."""

from ratlit.models.rat import RAT

__all__ = ["RAT"]
