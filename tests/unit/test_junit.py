from __future__ import annotations

import collections
import textwrap

import pytest

from pytest_lrun.core.errors import BadInput, JunitError
from pytest_lrun.wire.junit import CaseResult, nodeid_hint, parse_junit

# --- real XML from real pytest runs ----------------------------------------

MAIN_MODULE = """
import sys

import pytest


@pytest.fixture
def broken():
    raise RuntimeError("fixture boom")


def test_pass():
    print("to stdout")
    print("to stderr", file=sys.stderr)


def test_fail():
    assert 1 == 2


def test_skip():
    pytest.skip("not here")


@pytest.mark.skip(reason="marked away")
def test_skip_marked():
    pass


@pytest.mark.xfail(reason="known bug")
def test_xfail():
    assert 0


def test_xfail_imperative():
    pytest.xfail("imperative")


@pytest.mark.xfail(reason="fixed?", strict=True)
def test_xpass_strict():
    pass


@pytest.mark.xfail(reason="maybe")
def test_xpass_loose():
    pass


def test_error(broken):
    pass


@pytest.mark.parametrize("n", [1, 2, "a.b::c", "x y"])
def test_param(n):
    assert n != 2


class TestThing:
    def test_method(self):
        pass

    @pytest.mark.parametrize("flag", [True, False])
    def test_flag(self, flag):
        assert flag

    class TestInner:
        def test_nested(self):
            pass
"""

SUB_MODULE = """
import pytest


class TestX:
    @pytest.mark.parametrize("y", [1])
    def test_y(self, y):
        pass


def test_sub_fail():
    assert False, "sub failure"
"""

UPPER_MODULE = """
class TestA:
    def test_a(self):
        pass
"""

EXPECTED = {
    "test_main.py::test_pass": "passed",
    "test_main.py::test_fail": "failed",
    "test_main.py::test_skip": "skipped",
    "test_main.py::test_skip_marked": "skipped",
    "test_main.py::test_xfail": "xfailed",
    "test_main.py::test_xfail_imperative": "xfailed",
    "test_main.py::test_xpass_strict": "failed",
    "test_main.py::test_xpass_loose": "passed",
    "test_main.py::test_error": "error",
    "test_main.py::test_param[1]": "passed",
    "test_main.py::test_param[2]": "failed",
    "test_main.py::test_param[a.b::c]": "passed",
    "test_main.py::test_param[x y]": "passed",
    "test_main.py::TestThing::test_method": "passed",
    "test_main.py::TestThing::test_flag[True]": "passed",
    "test_main.py::TestThing::test_flag[False]": "failed",
    "test_main.py::TestThing::TestInner::test_nested": "passed",
    "sub/test_sub.py::TestX::test_y[1]": "passed",
    "sub/test_sub.py::test_sub_fail": "failed",
    "Tests/test_upper.py::TestA::test_a": "passed",
}


def make_project(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_main=MAIN_MODULE)
    pytester.mkpydir("sub")
    pytester.makepyfile(**{"sub/test_sub": SUB_MODULE})
    pytester.mkpydir("Tests")
    pytester.makepyfile(**{"Tests/test_upper": UPPER_MODULE})


def collected_nodeids(pytester: pytest.Pytester) -> list[str]:
    result = pytester.runpytest("--collect-only", "-q")
    return [line for line in result.outlines if "::" in line]


def run_and_parse(pytester: pytest.Pytester, *args: str) -> tuple[dict[str, int], list[CaseResult]]:
    result = pytester.runpytest("--junitxml=out.xml", *args)
    outcomes = result.parseoutcomes()
    return outcomes, parse_junit((pytester.path / "out.xml").read_bytes())


@pytest.mark.parametrize("family", ["xunit1", "xunit2"])
def test_real_pytest_xml(pytester: pytest.Pytester, family: str) -> None:
    make_project(pytester)
    nodeids = collected_nodeids(pytester)
    assert sorted(nodeids) == sorted(EXPECTED)

    outcomes, cases = run_and_parse(pytester, "-o", f"junit_family={family}", "-o", "junit_logging=all")

    # Every collected test gives exactly one case here, and its hint is pytest's node id.
    assert [case.nodeid_hint for case in cases] == nodeids
    assert {case.nodeid_hint: case.outcome for case in cases} == EXPECTED

    # The outcome counts agree with pytest's own summary; a non-strict XPASS has no
    # mark in the XML and reads as passed.
    counts = collections.Counter(case.outcome for case in cases)
    assert counts["passed"] == outcomes["passed"] + outcomes["xpassed"]
    assert counts["failed"] == outcomes["failed"]
    assert counts["skipped"] == outcomes["skipped"]
    assert counts["xfailed"] == outcomes["xfailed"]
    assert counts["error"] == outcomes["errors"]
    assert counts["xpassed"] == 0

    by_id = {case.nodeid_hint: case for case in cases}
    fail = by_id["test_main.py::test_fail"]
    assert fail.message == "assert 1 == 2"
    assert "def test_fail" in fail.text
    assert fail.classname == "test_main" and fail.name == "test_fail"
    assert fail.duration >= 0.0

    strict = by_id["test_main.py::test_xpass_strict"]
    assert strict.message.startswith("[XPASS(strict)]")

    xfail = by_id["test_main.py::test_xfail"]
    assert xfail.message == "known bug"
    assert by_id["test_main.py::test_xfail_imperative"].message == "imperative"

    skip = by_id["test_main.py::test_skip"]
    assert skip.message == "not here"
    assert "not here" in skip.text
    assert by_id["test_main.py::test_skip_marked"].message == "marked away"

    error = by_id["test_main.py::test_error"]
    assert error.when == "setup"
    assert "fixture boom" in error.message
    assert "RuntimeError" in error.text

    passed = by_id["test_main.py::test_pass"]
    assert passed.message == "" and passed.text == ""
    assert passed.system_out is not None and "to stdout" in passed.system_out
    assert passed.system_err is not None and "to stderr" in passed.system_err

    assert by_id["sub/test_sub.py::test_sub_fail"].message.startswith("AssertionError: sub failure")

    if family == "xunit1":
        assert fail.file == "test_main.py"
        source = (pytester.path / "test_main.py").read_text().splitlines()
        assert fail.line is not None and source[fail.line] == "def test_fail():"
    else:
        assert fail.file is None and fail.line is None


def test_real_pytest_xml_without_logging(pytester: pytest.Pytester) -> None:
    make_project(pytester)
    _, cases = run_and_parse(pytester)
    assert {case.nodeid_hint: case.outcome for case in cases} == EXPECTED
    assert all(case.system_out is None and case.system_err is None for case in cases)


def test_teardown_errors(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_td="""
        import pytest

        @pytest.fixture
        def bad_teardown():
            yield
            raise RuntimeError("teardown boom")

        def test_fail_then_error(bad_teardown):
            assert 0

        def test_pass_then_error(bad_teardown):
            pass

        def test_skip_then_error(bad_teardown):
            pytest.skip("skipped")

        @pytest.mark.xfail(reason="xf")
        def test_xfail_then_error(bad_teardown):
            assert 0
        """
    )
    outcomes, cases = run_and_parse(pytester)
    # pytest turns the xfail test's teardown error into a second xfail.
    assert outcomes == {"failed": 1, "passed": 1, "skipped": 1, "xfailed": 2, "errors": 3}
    # A call failure and a teardown error are two elements, hence two records; a
    # teardown error after a pass or skip shares the element and takes precedence.
    assert [(case.nodeid_hint, case.outcome, case.when) for case in cases] == [
        ("test_td.py::test_fail_then_error", "failed", "call"),
        ("test_td.py::test_fail_then_error", "error", "teardown"),
        ("test_td.py::test_pass_then_error", "error", "teardown"),
        ("test_td.py::test_skip_then_error", "error", "teardown"),
        ("test_td.py::test_xfail_then_error", "xfailed", "call"),
    ]
    assert all("teardown boom" in case.message for case in cases[1:4])


def test_properties(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_props="""
        def test_property(record_property):
            record_property("answer", 42)
            record_property("name", "<&>")
        """
    )
    _, cases = run_and_parse(pytester, "-o", "junit_family=xunit1")
    [case] = cases
    assert case.outcome == "passed"
    assert case.properties == (("answer", "42"), ("name", "<&>"))


def test_collection_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_ok="def test_ok():\n    pass\n")
    pytester.mkpydir("pkg")
    pytester.makepyfile(**{"pkg/test_broken": "def test_b(:\n    pass\n"})
    _, cases = run_and_parse(pytester, "--continue-on-collection-errors")
    by_id = {case.nodeid_hint: case for case in cases}
    broken = by_id["pkg/test_broken.py"]
    assert (broken.outcome, broken.when, broken.message) == ("error", "collect", "collection failure")
    assert "SyntaxError" in broken.text
    assert by_id["test_ok.py::test_ok"].outcome == "passed"


def test_module_skipped_at_collection(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_skipmod="import pytest\npytest.skip('whole module', allow_module_level=True)\n")
    _, cases = run_and_parse(pytester)
    [case] = cases
    assert (case.nodeid_hint, case.outcome, case.when) == ("test_skipmod.py", "skipped", "collect")


# --- hand-written documents ------------------------------------------------


def test_bare_testsuite_root_and_legacy_xpass() -> None:
    data = textwrap.dedent(
        """\
        <?xml version="1.0" encoding="utf-8"?>
        <testsuite name="pytest" tests="3">
          <testcase classname="a.b.test_m.TestC" name="test_x[p]" time="1.5"/>
          <testcase classname="test_m" name="test_y" time="bogus">
            <skipped message="xfail-marked test passes unexpectedly"/>
          </testcase>
          <testcase classname="pytest" name="internal" time="nan">
            <error message="internal error">Traceback</error>
          </testcase>
        </testsuite>
        """
    ).encode()
    cases = parse_junit(data)
    assert [(c.nodeid_hint, c.outcome, c.duration) for c in cases] == [
        ("a/b/test_m.py::TestC::test_x[p]", "passed", 1.5),
        ("test_m.py::test_y", "xpassed", 0.0),
        ("pytest.py::internal", "error", 0.0),
    ]
    assert cases[2].text == "Traceback"
    assert cases[2].when == "call"


def test_several_suites() -> None:
    data = (
        b"<testsuites>"
        b'<testsuite name="one"><testcase classname="test_a" name="test_1"/></testsuite>'
        b'<testsuite name="two"><testcase classname="test_b" name="test_2"><failure message="m">t'
        b"</failure></testcase></testsuite>"
        b"</testsuites>"
    )
    cases = parse_junit(data)
    assert [(c.nodeid_hint, c.outcome, c.message, c.text) for c in cases] == [
        ("test_a.py::test_1", "passed", "", ""),
        ("test_b.py::test_2", "failed", "m", "t"),
    ]


def test_empty_suite() -> None:
    assert parse_junit(b'<testsuites><testsuite name="pytest" tests="0"/></testsuites>') == []


@pytest.mark.parametrize(
    ("classname", "name", "file", "expected"),
    [
        ("test_mod.TestX", "test_y[1]", None, "test_mod.py::TestX::test_y[1]"),
        ("sub.test_mod", "test_y", None, "sub/test_mod.py::test_y"),
        ("sub.test_mod.TestA.TestB", "test_y[a.b]", None, "sub/test_mod.py::TestA::TestB::test_y[a.b]"),
        ("Tests.test_mod.TestA", "test_y", None, "Tests/test_mod.py::TestA::test_y"),
        ("TestMod", "test_y", None, "TestMod.py::test_y"),
        ("", "sub.test_mod", None, "sub/test_mod.py"),
        # The file attribute (xunit1) settles what the heuristic cannot:
        ("checks.v1.test_m.Case", "test_z", "checks/v1/test_m.py", "checks/v1/test_m.py::Case::test_z"),
        ("TestLike_mod", "test_z", "TestLike_mod.py", "TestLike_mod.py::test_z"),
        ("doc.README.txt", "README.txt", "doc/README.txt", "doc/README.txt::README.txt"),
        ("", "sub.test_mod", "sub/test_mod.py", "sub/test_mod.py"),
        # A file that does not match the classname (e.g. --junitprefix) falls back to the heuristic.
        ("prefix.test_m.TestC", "test_z", "test_m.py", "prefix/test_m.py::TestC::test_z"),
    ],
)
def test_nodeid_hint(classname: str, name: str, file: str | None, expected: str) -> None:
    assert nodeid_hint(classname, name, file) == expected


# --- hostile and broken input ----------------------------------------------


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty document"),
        (b"   \n", "empty document"),
        (b"<testsuites><testsuite>", "malformed XML"),
        (b"not xml at all", "malformed XML"),
        (b"<testsuites></testsuite>", "malformed XML"),
        (b"\xff\xfe<", "malformed XML"),
        (b"<html><body/></html>", "root element is <html>"),
    ],
)
def test_malformed(data: bytes, reason: str) -> None:
    with pytest.raises(JunitError, match=reason) as excinfo:
        parse_junit(data)
    assert isinstance(excinfo.value, BadInput)
    assert excinfo.value.code == "junit_invalid"
    assert reason in excinfo.value.reason


def test_oversized() -> None:
    data = b"<testsuites>" + b" " * 100 + b"</testsuites>"
    assert parse_junit(data, max_bytes=len(data)) == []
    with pytest.raises(JunitError, match="over the cap"):
        parse_junit(data, max_bytes=len(data) - 1)


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE testsuites [
  <!ENTITY lol "lol">
  <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
  <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
  <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
  <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
  <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
  <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
  <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
  <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
  <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<testsuites><testsuite><testcase classname="t" name="x"><failure message="&lol9;"/></testcase>
</testsuite></testsuites>
"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE testsuites [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<testsuites><testsuite><testcase classname="t" name="x"><failure message="m">&xxe;</failure></testcase>
</testsuite></testsuites>
"""

EXTERNAL_DTD = b"""<?xml version="1.0"?>
<!DOCTYPE testsuites SYSTEM "http://example.invalid/junit.dtd">
<testsuites/>
"""


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "data", [BILLION_LAUGHS, EXTERNAL_ENTITY, EXTERNAL_DTD], ids=["laughs", "xxe", "dtd"]
)
def test_entity_attacks_rejected(data: bytes) -> None:
    with pytest.raises(JunitError, match="document type declaration"):
        parse_junit(data)


def test_undeclared_entity_is_malformed() -> None:
    with pytest.raises(JunitError, match="malformed XML"):
        parse_junit(b'<testsuites><testsuite><testcase classname="t" name="&xxe;"/></testsuite></testsuites>')


def test_error_pickles() -> None:
    import pickle

    err = JunitError("malformed XML: boom")
    clone = pickle.loads(pickle.dumps(err))
    assert type(clone) is JunitError
    assert clone.to_dict() == {"code": "junit_invalid", "message": str(err), "reason": "malformed XML: boom"}
