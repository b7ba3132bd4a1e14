"""Tables as text: markdown for people, CSV for pandas."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table with ``header`` and one line per row."""
    lines = ["| " + " | ".join(map(markdown_cell, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(markdown_cell, row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def markdown_cell(value: object) -> str:
    """A table cell's text with its ``|`` escaped (an override value such as ``data.group_by='(a|b)'`` holds one),
    so it stays one cell."""
    return str(value).replace("|", "\\|")


def csv_text(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """CSV text with ``header`` and one line per row."""
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows([list(header), *rows])
    return text.getvalue()
