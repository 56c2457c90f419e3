"""One line per fault case at the end of a run: `fault: <case> ... PASS (12.3 s)`.

tests/faults/conftest.py imports the two hooks, so `make test-faults` (and
`make test` for the quick cases) prints the table after pytest's own summary.
"""

from __future__ import annotations

import pytest

FAULTS_DIR = "tests/faults/"
LINE_FORMAT = "fault: {case} ... {outcome} ({seconds:.1f} s)"

_durations: dict[str, float] = {}
_outcomes: dict[str, str] = {}
# Figures a test measured, recorded with the record_property fixture.
_figures: dict[str, list[tuple[str, object]]] = {}


def _case_name(nodeid: str) -> str:
    """Return the case from a node id: the test name without its `test_` prefix."""
    name = nodeid.rsplit("::", 1)[-1]
    return name.removeprefix("test_")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Add up setup, call and teardown time, and keep the worst outcome."""
    if not report.nodeid.startswith(FAULTS_DIR) or "/test_" not in report.nodeid:
        return
    case = _case_name(report.nodeid)
    _durations[case] = _durations.get(case, 0.0) + report.duration
    _figures[case] = list(report.user_properties)
    if report.failed:
        _outcomes[case] = "ERROR" if report.when != "call" else "FAIL"
    elif report.skipped:
        _outcomes.setdefault(case, "SKIP")
    elif report.when == "call":
        _outcomes.setdefault(case, "PASS")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print one line per fault case that ran."""
    if not _outcomes:
        return
    terminalreporter.section("fault cases")
    for case, outcome in _outcomes.items():
        seconds = _durations.get(case, 0.0)
        terminalreporter.write_line(
            LINE_FORMAT.format(case=case, outcome=outcome, seconds=seconds)
        )
        for name, value in _figures.get(case, []):
            terminalreporter.write_line(f"    {name}: {value}")
