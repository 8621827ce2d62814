"""Plain text shared by the pytest summary, error messages and the ``lrun`` command line."""

from __future__ import annotations

import json


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


def shown_value(value: object, limit: int = 80) -> str:
    """``value``'s ``repr`` for an error message, cut to ``limit`` characters: a hostile record's or a
    config file's value can be megabytes."""
    return _cut(repr(value), limit)


def shown_toml(value: object, limit: int = 80) -> str:
    """``value`` of a TOML document as an error message quotes it, in TOML's spelling: ``true``, a
    string in double quotes, ``[1, 2]``, and "a table" for a table; cut to ``limit`` characters."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except ValueError:  # nan or inf inside a list
        text = repr(value)
    return _cut(text, limit)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
