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

The XML comes from a container that ran arbitrary code, so it is read under bounds,
and every breach raises :class:`~pytest_lrun.core.errors.JunitError` (as malformed input does):

* the input is capped (``max_bytes``);
* any document type declaration is refused before it is processed: pytest never
  writes one, and with no DTD there are no entities to expand (billion laughs,
  quadratic blowup) or to fetch (external entities, which ``xml.etree`` does not
  resolve anyway; expat >= 2.4 also limits entity amplification);
* no tree is built: the parser's target keeps, one ``<testcase>`` at a time, only
  what a :class:`CaseResult` holds, and at most :data:`MAX_JUNIT_ELEMENTS` elements
  are accepted, so memory follows the cases kept, not the elements a document can
  pack into ``max_bytes`` (a tree of 64 MiB of ``<testcase/>`` took 1.5 GB; the
  cases of the element cap take about 270 MB);
* a tag longer than :data:`MAX_JUNIT_TAG_BYTES` is refused before parsing, because
  expat hands a tag's attributes over all at once (64 MiB of ``a0="" a1=""`` in one
  tag would also take 1.5 GB). pytest escapes ``<`` and ``>`` in text and
  attributes and writes no CDATA, so its tags are short whatever the messages say.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Literal, NoReturn

from pytest_lrun.core.errors import JunitError

__all__ = [
    "MAX_JUNIT_BYTES",
    "MAX_JUNIT_ELEMENTS",
    "MAX_JUNIT_TAG_BYTES",
    "CaseOutcome",
    "CaseResult",
    "When",
    "nodeid_hint",
    "parse_junit",
]

MAX_JUNIT_BYTES = 64 * 1024 * 1024

MAX_JUNIT_ELEMENTS = 500_000
"""Elements one document may have: a passing test is one, a failing one with output about four."""

MAX_JUNIT_TAG_BYTES = 4 * 1024 * 1024
"""Longest tag, from ``<`` to ``>``: a failure's ``message`` attribute with a long ``-vv`` diff fits."""

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


_Child = tuple[str, dict[str, str], str]
"""A direct child of a ``<testcase>``: its tag, its attributes, its text before any child of its own."""


def _outcome(children: list[_Child]) -> tuple[CaseOutcome, When, _Child | None]:
    """The outcome of a ``<testcase>``, the phase it comes from, and the child that decided it."""
    first: dict[str, _Child] = {}
    for child in children:
        first.setdefault(child[0], child)
    if (error := first.get("error")) is not None:
        message = error[1].get("message", "")
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
        if skipped[1].get("type") == "pytest.xfail":
            return "xfailed", "call", skipped
        message = skipped[1].get("message", "")
        if message == _XPASS_LEGACY_MESSAGE:
            return "xpassed", "call", skipped
        if message == "collection skipped":
            return "skipped", "collect", skipped
        return "skipped", "call", skipped
    return "passed", "call", None


def _joined_text(children: list[_Child], tag: str) -> str | None:
    texts = [text for child_tag, _, text in children if child_tag == tag]
    return "".join(texts) if texts else None


def _case(attrs: dict[str, str], children: list[_Child], properties: list[tuple[str, str]]) -> CaseResult:
    classname = attrs.get("classname", "")
    name = attrs.get("name", "")
    file = attrs.get("file") or None
    outcome, when, decider = _outcome(children)
    return CaseResult(
        classname=classname,
        name=name,
        file=file,
        line=_int(attrs.get("line")),
        duration=_float(attrs.get("time")),
        outcome=outcome,
        when=when,
        message=decider[1].get("message", "") if decider is not None else "",
        text=decider[2] if decider is not None else "",
        system_out=_joined_text(children, "system-out"),
        system_err=_joined_text(children, "system-err"),
        properties=tuple(properties),
        nodeid_hint=nodeid_hint(classname, name, file),
    )


# Attributes of a case's children that a CaseResult uses; the rest is dropped as it is read.
_CHILD_ATTRS = ("message", "type")


class _Cases:
    """An ``XMLParser`` target that turns each ``<testcase>`` into a :class:`CaseResult` as it ends.

    It keeps the open case's attributes, its direct children (tag, ``message`` and
    ``type``, text before their first child) and its ``properties/property`` pairs,
    as ``ElementTree`` would have shown them, and nothing of the rest of the document.
    A ``<testcase>`` inside a ``<testcase>`` is an unknown child, as pytest writes none.
    """

    def __init__(self, max_elements: int) -> None:
        self.cases: list[CaseResult] = []
        self.root: str | None = None
        self._max_elements = max_elements
        self._elements = 0
        self._depth = 0
        self._case_depth = 0  # depth of the open <testcase>; 0: none is open
        self._attrs: dict[str, str] = {}
        self._children: list[_Child] = []
        self._properties: list[tuple[str, str]] = []
        self._in_properties = False
        self._text: list[str] | None = None  # the open child's text, until its first child starts

    def doctype(self, name: str, pubid: str | None, system: str | None) -> NoReturn:
        raise JunitError(f"document type declaration <!DOCTYPE {name}> is not allowed")

    def start(self, tag: str, attrs: dict[str, str]) -> None:
        self._elements += 1
        if self._elements > self._max_elements:
            raise JunitError(f"more than {self._max_elements} elements")
        self._depth += 1
        self._close_child_text()
        if self.root is None:
            self.root = tag
            if tag not in ("testsuites", "testsuite"):
                raise JunitError(f"root element is <{tag}>, not <testsuites> or <testsuite>")
        if not self._case_depth:
            if tag == "testcase":
                self._case_depth = self._depth
                self._attrs = dict(attrs)
            return
        level = self._depth - self._case_depth
        if level == 1:
            self._children.append((tag, {k: attrs[k] for k in _CHILD_ATTRS if k in attrs}, ""))
            self._text = []
            self._in_properties = tag == "properties"
        elif level == 2 and self._in_properties and tag == "property":
            self._properties.append((attrs.get("name", ""), attrs.get("value", "")))

    def data(self, text: str) -> None:
        if self._text is not None:
            self._text.append(text)

    def end(self, tag: str) -> None:
        self._close_child_text()
        if self._case_depth:
            level = self._depth - self._case_depth
            if level == 1:
                self._in_properties = False
            elif level == 0:
                self.cases.append(_case(self._attrs, self._children, self._properties))
                self._case_depth = 0
                self._attrs, self._children, self._properties = {}, [], []
        self._depth -= 1

    def close(self) -> None:
        pass

    def _close_child_text(self) -> None:
        """The open child's text ends where its first child (or its end) starts."""
        if self._text is not None:
            tag, attrs, _ = self._children[-1]
            self._children[-1] = (tag, attrs, "".join(self._text))
            self._text = None


def _check_tags(data: bytes, limit: int) -> None:
    """Refuse a tag (from ``<`` to the next ``>``) longer than ``limit`` bytes, before expat builds it."""
    start = data.find(b"<")
    while start != -1:
        end = data.find(b">", start)
        if end == -1:
            return  # unterminated: the parser calls it malformed
        if end - start > limit:
            raise JunitError(f"a tag of over {limit} bytes at byte {start}")
        start = data.find(b"<", end)


def parse_junit(
    data: bytes,
    *,
    max_bytes: int = MAX_JUNIT_BYTES,
    max_elements: int = MAX_JUNIT_ELEMENTS,
    max_tag_bytes: int = MAX_JUNIT_TAG_BYTES,
) -> list[CaseResult]:
    """Every ``<testcase>`` of a pytest JUnit XML document, in document order.

    Raises :class:`~pytest_lrun.core.errors.JunitError` when ``data`` is over ``max_bytes``,
    has more than ``max_elements`` elements or a tag over ``max_tag_bytes``, is not
    well-formed XML, has a DTD, or its root is neither ``<testsuites>`` nor
    ``<testsuite>``. A document with no test cases gives an empty list.
    """
    if len(data) > max_bytes:
        raise JunitError(f"{len(data)} bytes, over the cap of {max_bytes}")
    if not data.strip():
        raise JunitError("empty document")
    _check_tags(data, max_tag_bytes)
    target = _Cases(max_elements)
    parser = ET.XMLParser(target=target)
    try:
        parser.feed(data)
        parser.close()
    except ET.ParseError as exc:
        raise JunitError(f"malformed XML: {exc}") from None
    return target.cases
