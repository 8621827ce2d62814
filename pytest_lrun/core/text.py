"""Plain text shared by the pytest summary, error messages and the ``lrun`` command line."""

from __future__ import annotations


def printable(text: str) -> str:
    """``text`` with what a terminal cannot print escaped: lone surrogates (from file names
    that are not valid UTF-8, made by a container or a user) become ``\\udcXX``."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def format_table(table: list[list[str]]) -> list[str]:
    """Left-aligned columns two spaces apart; the first row is the header."""
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in table]


def one_line(text: str) -> str:
    """``text``'s non-blank lines joined by single spaces (a multi-line error in one line)."""
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def shown_value(value: object) -> str:
    """``value`` for an error message, cut short: a hostile record's value can be megabytes."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
