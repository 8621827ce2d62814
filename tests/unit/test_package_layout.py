"""The package's tree shows its architecture, and plain pytest pays only for the wiring.

ARCHITECTURE.md names the layers; import-linter (the lint env) keeps imports pointing down
and free of circles. These tests keep the rest of that promise: every module says what it
owns, its package's docstring names it, none grows past 600 lines, and importing the
plugin (what ``pytest`` does for every project once pytest-lrun is installed) or the CLI's
output helpers loads neither the backends nor docker-py, psycopg or paramiko.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "pytest_lrun"
# Generated code (scripts/gen_reapi_protos.py) is not the package's own writing.
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "protos" not in p.relative_to(PACKAGE).parts)
MAX_LINES = 600
# Third-party packages only the engines, ssh transport and database store need.
HEAVY = ("docker", "psycopg", "paramiko", "requests", "grpc")


def _name(path: Path) -> str:
    return str(path.relative_to(PACKAGE))


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_every_module_says_what_it_owns(path: Path) -> None:
    assert ast.get_docstring(ast.parse(path.read_text())), f"{_name(path)} has no module docstring"


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_no_module_grows_past_600_lines(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{_name(path)} has {lines} lines: split it by job"


@pytest.mark.parametrize(
    "package", sorted(p.parent for p in PACKAGE.glob("*/__init__.py")), ids=lambda p: p.name
)
def test_each_package_docstring_names_its_modules(package: Path) -> None:
    docstring = ast.get_docstring(ast.parse((package / "__init__.py").read_text())) or ""
    missing = [p.stem for p in package.glob("*.py") if p.stem != "__init__" and p.stem not in docstring]
    assert not missing, f"pytest_lrun/{package.name}/__init__.py does not name {missing}"


def _modules_loaded_by(statement: str) -> list[str]:
    probe = (
        "import json, sys\nimport pytest\nbefore = set(sys.modules)\n"
        f"{statement}\nprint(json.dumps(sorted(set(sys.modules) - before)))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    loaded: list[str] = json.loads(out.stdout)
    return loaded


def test_importing_the_plugin_loads_only_the_wiring() -> None:
    loaded = _modules_loaded_by("import pytest_lrun.plugin")
    ours = {m.split(".")[1] for m in loaded if m.startswith("pytest_lrun.")}
    assert ours <= {"plugin", "hookspecs", "config", "core"}, sorted(ours)
    assert not [m for m in loaded if m.split(".")[0] in HEAVY]


@pytest.mark.parametrize("module", ["pytest_lrun.store", "pytest_lrun.cli.output"])
def test_the_store_package_and_cli_helpers_load_no_backend(module: str) -> None:
    loaded = _modules_loaded_by(f"import {module}")
    backends = [m for m in loaded if m in ("pytest_lrun.store.files", "pytest_lrun.store.postgres")]
    assert not backends, backends
    assert not [m for m in loaded if m.split(".")[0] in HEAVY]
