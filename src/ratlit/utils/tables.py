"""Tables as text: markdown for people, CSV for pandas."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table with ``header`` and one line per row."""
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def csv_text(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """CSV text with ``header`` and one line per row."""
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows([list(header), *rows])
    return text.getvalue()
