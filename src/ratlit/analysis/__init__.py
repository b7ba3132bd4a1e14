"""Comparing runs: the report's runs, tables, chart and per-image paired statistics between variants."""
