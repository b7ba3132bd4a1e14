"""Comparing runs: per-image paired statistics between variants of a study."""
