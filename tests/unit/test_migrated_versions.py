"""The note of pruned migrations in the history ConfigMap, and the status
note of a deploy of an earlier version about the migrations after it."""

from __future__ import annotations

import pytest

from activities.deploy import MIGRATED_KEY, later_migrations, migrated_versions


@pytest.mark.parametrize(
    "history",
    [
        None,
        {},
        {"data": {}},
        {"data": {MIGRATED_KEY: ""}},
        {"data": {MIGRATED_KEY: "not json"}},
        {"data": {MIGRATED_KEY: "[1, 2]"}},
    ],
)
def test_missing_or_bad_note_empty(history: dict[str, object] | None) -> None:
    """No ConfigMap, no key, or a note that is not a JSON object: nothing noted."""
    assert migrated_versions(history) == {}


def test_note_read() -> None:
    history = {"data": {MIGRATED_KEY: '{"1.0.0": "2026-12-06T06:00:00Z"}'}}
    assert migrated_versions(history) == {"1.0.0": "2026-12-06T06:00:00Z"}


def test_later_migrations_by_time() -> None:
    """Versions that completed after the given one are named oldest first,
    whatever their names sort like."""
    done = {
        "2.0.0": "2026-12-06T06:03:00Z",
        "1.0.0": "2026-12-06T06:01:00Z",
        "10.0.0": "2026-12-06T06:02:00Z",
        "0.9.0": "2026-12-06T06:00:00Z",
    }
    assert later_migrations(done, "1.0.0") == [
        "database migrations are not undone: the migrations of later app "
        "versions stay applied (10.0.0, 2.0.0)"
    ]


@pytest.mark.parametrize("version", ["2.0.0", "3.0.0", None])
def test_no_later_migrations(version: str | None) -> None:
    """The newest version, or one that never migrated, gets no note."""
    done = {"1.0.0": "2026-12-06T06:01:00Z", "2.0.0": "2026-12-06T06:03:00Z"}
    assert later_migrations(done, version) == []
