"""``python -m ratlit <command> [overrides]``: one entry for every command (``python -m ratlit.<command>`` too)."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "train": "train (and test) a model",
    "evaluate": "score a checkpoint on a split",
    "predict": "restore DICOM / NIfTI / image files with a checkpoint",
    "report": "gather runs into a table and chart",
    "precompute": "fill a task's partition cache",
    "visualize": "draw the regions of a partitioner",
    "summary": "count a model's parameters",
    "convert": "the authors' RAT weights as a ratlit checkpoint",
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        usage = "\n".join(f"  {name:<11} {what}" for name, what in COMMANDS.items())
        print(f"usage: python -m ratlit <command> [arguments]\n\ncommands:\n{usage}", file=sys.stderr)
        sys.exit(0 if argv and argv[0] in ("-h", "--help") else 2)
    command = argv[0]
    sys.argv = [f"ratlit {command}", *argv[1:]]
    importlib.import_module(f"ratlit.cli.{command}").main()


if __name__ == "__main__":
    main()
