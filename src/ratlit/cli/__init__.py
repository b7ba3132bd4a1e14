"""The commands (``python -m ratlit.<command>`` or ``python -m ratlit <command>``), each started the same way by
:func:`ratlit.cli.command.hydra_command`."""
