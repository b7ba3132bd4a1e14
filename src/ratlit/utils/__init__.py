"""Helpers every layer may use: whole-file writes, input checks, Hydra helpers, display, tables, malloc."""
