"""Helpers the tests share: reference networks, tiny scans and checkpoints, command runs, W&B offline records."""
