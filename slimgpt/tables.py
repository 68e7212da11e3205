"""The one markdown-table writer of the package (run summaries, study tables, reports).

It lives in a module of its own, below every layer that prints a table, so that the pruning layer can use
it as well as the runner and the studies without importing upwards.

    markdown_table(["method", "ppl"], [["slimgpt", 31.2345], ["dense", None]])
"""

from collections.abc import Sequence

__all__ = ["format_cell", "markdown_table"]


def format_cell(value: object) -> str:
    """A table cell: ``None`` empty, floats to 4 significant digits (``inf``/``nan`` as such), ``|`` escaped."""
    if value is None:
        return ""
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return text.replace("|", "\\|")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured markdown table: ``header`` names, one line per row (cells via :func:`format_cell`)."""
    for index, row in enumerate(rows):
        if len(row) != len(header):
            raise ValueError(f"markdown_table: row {index} has {len(row)} cells for {len(header)} columns")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(format_cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)
