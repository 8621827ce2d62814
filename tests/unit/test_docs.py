"""The docs cannot drift from the code: every option, variable and error code is documented where a
reader looks for it (docs/options.md, docs/errors.md), the README shows the commands the demo and CI
run, and every relative link of README.md, ARCHITECTURE.md and docs/*.md resolves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pytest_lrun.config.settings import OPTIONS
from pytest_lrun.core import errors

ROOT = Path(__file__).parents[2]
DOCS = ROOT / "docs"
README = (ROOT / "README.md").read_text()
OPTIONS_PAGE = (DOCS / "options.md").read_text()
ERRORS_PAGE = (DOCS / "errors.md").read_text()
PAGES = [ROOT / "README.md", ROOT / "ARCHITECTURE.md", *sorted(DOCS.glob("*.md"))]


def _cells(row: str) -> list[str]:
    """The cells of a markdown table row (no cell of these tables holds an escaped pipe)."""
    return [cell.strip() for cell in row.strip().strip("|").split(" | ")]


@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: o.name)
def test_every_option_is_documented(option: object) -> None:
    flag, ini, env = option.flag, option.ini, option.env  # type: ignore[attr-defined]
    rows = [line for line in OPTIONS_PAGE.splitlines() if re.match(rf"\| `{re.escape(flag)}[=`]", line)]
    assert len(rows) == 1, f"{flag} needs exactly one row in the table of docs/options.md, found {len(rows)}"
    cells = _cells(rows[0])
    where = f"the row of {flag} in docs/options.md"
    assert len(cells) == 5, f"{where} has {len(cells)} cells, not 5"
    assert cells[1] == f"`{ini}`", f"{where} names the ini key {cells[1]}, not {ini}"
    assert cells[2] == f"`{env}`", f"{where} names the variable {cells[2]}, not {env}"
    assert cells[3] and cells[4], f"{where} lacks its default or its meaning"


def _codes() -> list[str]:
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.LrunError)]
    return sorted({c.code for c in classes})


def _error_table_codes() -> str:
    """The first column of docs/errors.md's table of codes, where each code is explained."""
    rows = [line for line in ERRORS_PAGE.splitlines() if line.startswith("| `")]
    return " ".join(_cells(row)[0] for row in rows)


@pytest.mark.parametrize("code", _codes())
def test_every_error_code_is_documented(code: str) -> None:
    assert f"`{code}`" in _error_table_codes(), f"error code {code} is missing from docs/errors.md's table"


def test_every_run_error_code_is_documented() -> None:
    documented = _error_table_codes()
    for code in errors.RUN_CODES:
        assert f"`{code}`" in documented, f"error code {code} is missing from docs/errors.md's table"


def test_the_readme_quick_start_is_what_the_demo_runs() -> None:
    demo = (ROOT / "scripts" / "demo.sh").read_text().replace("\\\n", " ")
    (line,) = [line for line in demo.splitlines() if "-m pytest" in line]
    command = "pytest " + " ".join(line.split("-m pytest", 1)[1].replace('"$@"', "").split())
    assert f"`{command}`" in README, f"README.md does not show the demo's command: {command}"


def test_the_readme_shows_the_test_command_ci_runs() -> None:
    (line,) = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.startswith("exec ")]
    command = line.removeprefix("exec ").strip()
    assert f"\n{command} " in README, f"README.md's first commands do not show CI's test command: {command}"


# --- links -------------------------------------------------------------------------------------

_FENCE = re.compile(r"^ {0,3}(```|~~~)")
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)\)")
_SCHEME = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*:")


def _prose(text: str) -> list[str]:
    """The lines of ``text`` outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def anchors(text: str) -> set[str]:
    """The anchors GitHub gives the headings of a markdown text (a repeated one gets ``-1``, ``-2``...)."""
    seen: dict[str, int] = {}
    for line in _prose(text):
        heading = re.match(r"#{1,6} +(.*?) *#* *$", line)
        if heading is None:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading.group(1).replace("`", "").lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        if count:
            seen[f"{slug}-{count}"] = 1
    return set(seen)


def broken_links(page: Path, root: Path) -> list[str]:
    """Each relative link of ``page`` whose file (inside ``root``) or heading anchor does not exist."""
    broken = []
    for line in _prose(page.read_text()):
        text = _CODE_SPAN.sub(lambda span: span.group(0).replace("[", "").replace("]", ""), line)
        for target in _LINK.findall(text):
            if _SCHEME.match(target):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.is_relative_to(root.resolve()) or not dest.exists():
                broken.append(f"{target}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text()):
                broken.append(f"{target}: no such heading in {dest.name}")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    assert broken_links(page, ROOT) == [], f"{page.relative_to(ROOT)} has broken links"


def test_a_broken_link_or_anchor_is_found(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    other = "# Other\n\n## The `lrun` command line\n\n## Same\n\n## Same\n"
    (tmp_path / "sub" / "other.md").write_text(other)
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n[ok](sub/other.md) [ok](sub/other.md#the-lrun-command-line) [ok](sub/other.md#same-1)"
        " [ok](#page) [ok](https://example.com/x) [ok](sub/)\n"
        "[gone](sub/gone.md) [bad anchor](sub/other.md#nothing) [own](#nowhere) [out](../outside.md)\n"
        "`[in code](nothing.md)`\n\n```toml\n# [in a fence](nothing.md)\n```\n"
    )
    assert broken_links(page, tmp_path) == [
        "sub/gone.md: no such file",
        "sub/other.md#nothing: no such heading in other.md",
        "#nowhere: no such heading in page.md",
        "../outside.md: no such file",
    ]


def test_the_readme_links_every_docs_page() -> None:
    linked = {(ROOT / target.partition("#")[0]).resolve() for target in _LINK.findall(README)}
    unlinked = [page.name for page in sorted(DOCS.glob("*.md")) if page.resolve() not in linked]
    assert len(PAGES) > 10 and unlinked == [], f"README.md links no docs page of {unlinked}"
