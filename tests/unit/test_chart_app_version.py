"""Chart.yaml's appVersion, as the staged copy of a chart sets it."""

from __future__ import annotations

import pytest

from activities.helm import chart_app_version, with_app_version


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('name: c\nappVersion: "1.0.0"\nversion: 0.1.0\n', 'appVersion: "2.0"'),
        ("name: c\nappVersion: 1.0.0 # default\n", 'appVersion: "2.0"'),
        ("name: c\n'appVersion': x\n", 'appVersion: "2.0"'),
        ("name: c\nversion: 0.1.0", 'appVersion: "2.0"'),
    ],
)
def test_app_version_replaced(text: str, expected: str) -> None:
    """The appVersion line is replaced, or added when there is none; every
    other line stays, and YAML reads the new version back as a string."""
    changed = with_app_version(text, "2.0")
    assert expected in changed.splitlines()
    assert chart_app_version(changed) == "2.0"
    kept = [line for line in text.splitlines() if "appVersion" not in line]
    assert kept == [line for line in changed.splitlines() if "appVersion" not in line]


def test_app_version_comment_untouched() -> None:
    """A comment that mentions appVersion is not the field."""
    text = "# appVersion: set by CI\nname: c\nappVersion: 1.0.0\n"
    changed = with_app_version(text, "1.2.3-rc.1")
    assert changed.splitlines() == [
        "# appVersion: set by CI",
        "name: c",
        'appVersion: "1.2.3-rc.1"',
    ]


@pytest.mark.parametrize(
    ("text", "version"),
    [
        ("appVersion: 1.10\n", "1.1"),
        ('appVersion: "1.10"\n', "1.10"),
        ("name: c\n", None),
        ("appVersion: [\n", None),
        ("- a\n", None),
    ],
)
def test_chart_app_version(text: str, version: str | None) -> None:
    """The chart's app version as YAML reads it; None without one or when the
    file is not a mapping."""
    assert chart_app_version(text) == version
