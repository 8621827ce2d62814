"""Reading the inner run's JUnit XML into one record per ``<testcase>``.

The container runs pytest with ``--junitxml``; this module turns that file back into
:class:`CaseResult` records, which the controller replays as ordinary pytest reports.
It owns nothing else: no I/O, no report building.

What pytest writes, and how it is read (checked against ``_pytest/junitxml.py``,
pytest 7.x to 9.x; both ``<testsuites><testsuite>`` and bare ``<testsuite>`` roots,
``xunit1`` and ``xunit2`` families):

* ``passed``: a ``<testcase>`` with no ``<failure>``, ``<error>`` or ``<skipped>``.
  A non-strict XPASS looks exactly like this: pytest writes nothing that marks it,
  so it is read as ``passed``.
* ``failed``: ``<failure>``. A strict XPASS is a failure whose message starts with
  ``[XPASS(strict)]``; it stays ``failed`` (pytest counts it as failed and it must
  fail the outer run too) with that message.
* ``skipped``: ``<skipped type="pytest.skip">`` (and ``message="collection skipped"``
  for a skipped module).
* ``xfailed``: ``<skipped type="pytest.xfail">``.
* ``xpassed``: ``<skipped message="xfail-marked test passes unexpectedly">``, which
  pytest writes only for a failed call report that carries ``wasxfail`` (older pytest
  and some plugins); today's pytest never produces it (see above).
* ``error``: ``<error>``. pytest puts a setup error (``failed on setup with ...``), a
  teardown error (``failed on teardown with ...``), a collection error (``collection
  failure``) and an internal error in it; :attr:`CaseResult.when` says which.

One test can yield more than one element: pytest writes a call failure followed by a
teardown error as *two* ``<testcase>`` elements with the same name (``<failure>``,
then ``<error>``), and both are kept, in order, as two records with the same
``nodeid_hint`` (pytest's own summary also counts "1 failed, 1 error"). A teardown
error after a passed, skipped or xfailed call lands in the *same* element as the
``<skipped>`` (or nothing); within one element ``error`` takes precedence over
``failed``, which takes precedence over the skip kinds, so such a test reads as one
``error`` (with the error's message and text).

The XML comes from a container that ran arbitrary code, so the input is capped
(``max_bytes``) and any document type declaration is refused before it is
processed: pytest never writes one, and with no DTD there are no entities to expand
(billion laughs, quadratic blowup) or to fetch (external entities, which
``xml.etree`` does not resolve anyway; expat >= 2.4 also limits entity
amplification). Malformed input raises :class:`~pytest_lrun.errors.JunitError`.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Literal, NoReturn

from .errors import JunitError

__all__ = ["MAX_JUNIT_BYTES", "CaseOutcome", "CaseResult", "When", "nodeid_hint", "parse_junit"]

MAX_JUNIT_BYTES = 64 * 1024 * 1024

CaseOutcome = Literal["passed", "failed", "skipped", "error", "xfailed", "xpassed"]
When = Literal["collect", "setup", "call", "teardown"]

_XPASS_LEGACY_MESSAGE = "xfail-marked test passes unexpectedly"


@dataclass(frozen=True)
class CaseResult:
    """One ``<testcase>`` element of pytest's JUnit XML.

    ``file`` and ``line`` are present only with the ``xunit1`` family; ``line`` is
    pytest's 0-based location line, as written. ``message`` and ``text`` are the
    ``message`` attribute and the body of the element that decided the outcome (empty
    for a pass). ``system_out``/``system_err`` join every ``<system-out>``/
    ``<system-err>`` of the element (None when there is none). ``properties`` are
    ``record_property`` pairs. ``nodeid_hint`` is the pytest node id rebuilt from
    ``classname`` and ``name`` (see :func:`nodeid_hint`).
    """

    classname: str
    name: str
    file: str | None
    line: int | None
    duration: float
    outcome: CaseOutcome
    when: When
    message: str
    text: str
    system_out: str | None
    system_err: str | None
    properties: tuple[tuple[str, str], ...]
    nodeid_hint: str


class _NoDoctypeBuilder(ET.TreeBuilder):
    """A tree builder that stops the parse at a document type declaration."""

    def doctype(self, name: str, pubid: str | None, system: str | None) -> NoReturn:
        raise JunitError(f"document type declaration <!DOCTYPE {name}> is not allowed")


def _parse_xml(data: bytes) -> ET.Element:
    parser = ET.XMLParser(target=_NoDoctypeBuilder())
    try:
        parser.feed(data)
        root: ET.Element = parser.close()
    except ET.ParseError as exc:
        raise JunitError(f"malformed XML: {exc}") from None
    return root


def _module_path(dotted: list[str]) -> str:
    return "/".join(dotted) + ".py"


def nodeid_hint(classname: str, name: str, file: str | None = None) -> str:
    """The pytest node id that ``classname``/``name`` were made from, as well as it can be told.

    pytest writes ``classname`` as the module path with ``/`` turned into ``.`` and
    ``.py`` dropped, followed by the class names, and ``name`` as the function name
    with its parameter id. With ``file`` (the ``xunit1`` family) the module part is
    known exactly. Without it, the trailing components that start with ``Test``
    (pytest's default ``python_classes``) are taken as classes and the rest as the
    module path: a directory or module with a dot in its name, a class not named
    ``Test*``, a non-Python item (doctest text file, plugin items) or
    ``--junitprefix`` can make the hint wrong. An empty ``classname`` is a
    module-level report (a collection error): the hint is the module's path.
    """
    if file:
        module = file[:-3] if file.endswith(".py") else file
        dotted = module.replace("/", ".")
        if classname == dotted:
            return f"{file}::{name}"
        if classname.startswith(dotted + "."):
            return "::".join([file, *classname[len(dotted) + 1 :].split("."), name])
        if not classname and name == dotted:
            return file
    if not classname:
        return _module_path(name.split("."))
    parts = classname.split(".")
    split = len(parts)
    while split > 1 and parts[split - 1].startswith("Test"):
        split -= 1
    return "::".join([_module_path(parts[:split]), *parts[split:], name])


def _float(value: str | None) -> float:
    try:
        number = float(value) if value is not None else 0.0
    except ValueError:
        return 0.0
    return number if math.isfinite(number) and number >= 0 else 0.0


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _joined_text(case: ET.Element, tag: str) -> str | None:
    texts = [child.text or "" for child in case if child.tag == tag]
    return "".join(texts) if texts else None


def _outcome(case: ET.Element) -> tuple[CaseOutcome, When, ET.Element | None]:
    """The outcome of a ``<testcase>``, the phase it comes from, and the element that decided it."""
    first: dict[str, ET.Element] = {}
    for child in case:
        first.setdefault(child.tag, child)
    if (error := first.get("error")) is not None:
        message = error.get("message", "")
        if message.startswith("failed on setup with"):
            return "error", "setup", error
        if message.startswith("failed on teardown with"):
            return "error", "teardown", error
        if message == "collection failure":
            return "error", "collect", error
        return "error", "call", error
    if (failure := first.get("failure")) is not None:
        return "failed", "call", failure
    if (skipped := first.get("skipped")) is not None:
        if skipped.get("type") == "pytest.xfail":
            return "xfailed", "call", skipped
        message = skipped.get("message", "")
        if message == _XPASS_LEGACY_MESSAGE:
            return "xpassed", "call", skipped
        if message == "collection skipped":
            return "skipped", "collect", skipped
        return "skipped", "call", skipped
    return "passed", "call", None


def _case(case: ET.Element) -> CaseResult:
    classname = case.get("classname", "")
    name = case.get("name", "")
    file = case.get("file") or None
    outcome, when, decider = _outcome(case)
    properties = tuple(
        (prop.get("name", ""), prop.get("value", ""))
        for props in case.iterfind("properties")
        for prop in props.iterfind("property")
    )
    return CaseResult(
        classname=classname,
        name=name,
        file=file,
        line=_int(case.get("line")),
        duration=_float(case.get("time")),
        outcome=outcome,
        when=when,
        message=decider.get("message", "") if decider is not None else "",
        text=(decider.text or "") if decider is not None else "",
        system_out=_joined_text(case, "system-out"),
        system_err=_joined_text(case, "system-err"),
        properties=properties,
        nodeid_hint=nodeid_hint(classname, name, file),
    )


def parse_junit(data: bytes, *, max_bytes: int = MAX_JUNIT_BYTES) -> list[CaseResult]:
    """Every ``<testcase>`` of a pytest JUnit XML document, in document order.

    Raises :class:`~pytest_lrun.errors.JunitError` when ``data`` is over ``max_bytes``,
    is not well-formed XML, has a DTD, or its root is neither ``<testsuites>`` nor
    ``<testsuite>``. A document with no test cases gives an empty list.
    """
    if len(data) > max_bytes:
        raise JunitError(f"{len(data)} bytes, over the cap of {max_bytes}")
    if not data.strip():
        raise JunitError("empty document")
    root = _parse_xml(data)
    if root.tag not in ("testsuites", "testsuite"):
        raise JunitError(f"root element is <{root.tag}>, not <testsuites> or <testsuite>")
    return [_case(case) for case in root.iter("testcase")]
