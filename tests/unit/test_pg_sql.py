"""SQL lives in one module, with parameters only, never formatted values (issue 8).

Read from the package's source with :mod:`ast`, no database needed:
:mod:`pytest_lrun.store.pg_sql` holds every statement the PostgreSQL store sends,
as fixed text, and no other module of ``pytest_lrun`` holds or builds one.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

import pytest_lrun
from pytest_lrun.store import pg_sql

PACKAGE = Path(pytest_lrun.__file__).parent
PG_SQL = PACKAGE / "store" / "pg_sql.py"

# How a statement starts or what it must contain; upper case, as the store writes SQL
# (prose in messages is lower case: "select the PostgreSQL store" is not a statement).
STATEMENT = re.compile(r"\b(?:SELECT|INSERT INTO|UPDATE|DELETE FROM|CREATE|ALTER|DROP|SET TRANSACTION)\s")
# The only placeholders a parameterized statement may use.
PLACEHOLDER = re.compile(r"%(?:\(\w+\))?s")


def _docstrings(tree: ast.AST) -> set[int]:
    """The ids of the docstring nodes of ``tree`` (prose, never sent)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def sql_literals(source: str) -> Iterator[tuple[int, str]]:
    """(line, text) of each string literal of ``source`` that holds an SQL statement.

    Parts of f-strings count (``ast.walk`` reaches them); docstrings do not.
    """
    tree = ast.parse(source)
    docs = _docstrings(tree)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Constant) or id(node) in docs:
            continue
        if isinstance(node.value, str) and STATEMENT.search(node.value):
            yield node.lineno, node.value


def _modules() -> list[Path]:
    return sorted(path for path in PACKAGE.rglob("*.py") if path != PG_SQL)


def _statements() -> dict[str, str]:
    """pg_sql's statements by name (its str constants)."""
    return {name: value for name, value in vars(pg_sql).items() if name.isupper() and isinstance(value, str)}


def test_no_module_but_pg_sql_holds_an_sql_statement() -> None:
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}:{line}: {text.split()[0]} ..."
        for path in _modules()
        for line, text in sql_literals(path.read_text())
    ]
    assert offenders == [], "SQL outside pytest_lrun/store/pg_sql.py:\n" + "\n".join(offenders)


def test_the_scan_sees_statements_and_ignores_prose() -> None:
    # What the test above relies on: it would see a statement moved back out of pg_sql.
    found = {text for _, text in sql_literals(PG_SQL.read_text())}
    unseen = {name for name, text in _statements().items() if text not in found}
    # The statements made of two literals, each part seen.
    assert unseen == {"INSERT_RUN_IF_NEW", "INSERT_LIVE_RUN_IF_FREE"}
    source = '''
"""The module's docstring may say SELECT ... FOR UPDATE."""
def f(cur, table):
    """So may a function's: UPDATE lrun_runs."""
    cur.execute(f"DELETE FROM {table} WHERE id = %s", (1,))
    cur.execute("DROP TABLE lrun_runs")
    raise ValueError("select the PostgreSQL store with --lrun-store")
'''
    assert sorted(line for line, _ in sql_literals(source)) == [5, 6]


def test_pg_sql_formats_nothing_into_its_statements() -> None:
    tree = ast.parse(PG_SQL.read_text())
    formatting = [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.JoinedStr)
        or (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod))
        or (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in {"format", "format_map"}
        )
    ]
    assert formatting == [], f"pg_sql.py formats strings on lines {formatting}"
    braces = [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and ("{" in node.value or "}" in node.value)
    ]
    assert braces == [], f"pg_sql.py has a format field on lines {braces}"


@pytest.mark.parametrize("name", sorted(_statements()))
def test_each_statement_uses_only_parameter_placeholders(name: str) -> None:
    text = _statements()[name]
    migrations = {statement for steps in pg_sql.MIGRATIONS.values() for statement in steps}
    if text in migrations:
        # Sent without parameters (the PL/pgSQL ``RAISE`` has ``%`` of its own): none may be expected.
        assert not PLACEHOLDER.search(text), f"{name} is a migration step but expects a parameter"
    else:
        assert "%" not in PLACEHOLDER.sub("", text), f"{name} has a placeholder other than %s or %(name)s"


def test_every_statement_is_named_in_all() -> None:
    assert set(_statements()) <= set(pg_sql.__all__)
    assert set(pg_sql.MOVE_ASIDE.values()) <= set(_statements().values())


def _rooted_in_pg_sql(node: ast.expr) -> bool:
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
    return isinstance(node, ast.Name) and node.id == "pg_sql"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_statements_are_executed_as_named_not_built(path: Path) -> None:
    """Every ``execute`` gets a pg_sql name (or a variable bound to one), never an expression."""
    built = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "execute"
        ):
            query = node.args[0] if node.args else None
            if not (isinstance(query, ast.Name) or (query is not None and _rooted_in_pg_sql(query))):
                built.append(node.lineno)
        if isinstance(node, (ast.BinOp, ast.JoinedStr)) and any(
            isinstance(part, ast.expr) and _rooted_in_pg_sql(part) for part in ast.walk(node)
        ):
            built.append(node.lineno)
    assert built == [], f"{path.name} builds or inlines a statement on lines {built}"


def test_the_migrations_lead_up_to_the_schema_version() -> None:
    pytest.importorskip("psycopg")
    from pytest_lrun.store.pg_db import SCHEMA_VERSION

    assert sorted(pg_sql.MIGRATIONS) == list(range(1, SCHEMA_VERSION + 1))
