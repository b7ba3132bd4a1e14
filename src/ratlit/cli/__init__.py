"""The commands (``python -m ratlit.<command>`` or ``python -m ratlit <command>``), each started the same way by
:func:`ratlit.cli.command.hydra_command` (``report`` aside: its docstring says why). A command starts and prints;
the work is done in the layers below (``inference``, ``analysis``, ``training``, ``data``)."""
