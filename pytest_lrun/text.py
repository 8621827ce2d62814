"""Plain-text tables, shared by the pytest summary and the ``lrun`` command line."""

from __future__ import annotations


def format_table(table: list[list[str]]) -> list[str]:
    """Left-aligned columns two spaces apart; the first row is the header."""
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in table]
