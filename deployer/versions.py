"""The order of app versions, for the check that a deploy does not go back to
an older version without a request for it.

An app version is an image tag. Tags such as 1.2.0, v1.2 or 2.0.0-rc.1 are
ordered by their numbers, as in Semantic Versioning. Other tags (a commit, a
name such as stable) have no order of their own. For them, the order in which
their migrations completed decides when both have one. Nothing here does I/O.
"""

from __future__ import annotations

import re

# Two or more numbers separated by dots, an optional leading "v", an optional
# pre-release after "-" and optional build metadata after "+". One number
# alone (a build number, a date, a commit hash of digits) is not a version.
DOTTED_VERSION = re.compile(
    r"v?(?P<numbers>[0-9]+(?:\.[0-9]+)+)"
    r"(?:-(?P<pre>[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?"
    r"(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?"
)

VersionKey = tuple[tuple[int, ...], int, tuple[tuple[int, int, str], ...]]


def version_key(version: str) -> VersionKey | None:
    """Return a sort key for a dotted numeric version, or None for a tag
    without numbers in that form.

    Trailing zeros do not count (1.2 and 1.2.0 are equal). A pre-release comes
    before its release, and its numeric parts compare as numbers, as in
    Semantic Versioning 2.0.0. Build metadata does not count.
    NOTE: a Docker variant suffix reads as a pre-release too, so 1.2.0-alpine
    sorts before 1.2.0.
    """
    match = DOTTED_VERSION.fullmatch(version)
    if match is None:
        return None
    numbers = [int(part) for part in match["numbers"].split(".")]
    while len(numbers) > 1 and numbers[-1] == 0:
        numbers.pop()
    pre = match["pre"]
    if pre is None:
        return tuple(numbers), 1, ()
    parts = tuple(
        (0, int(part), "") if part.isdigit() else (1, 0, part)
        for part in pre.split(".")
    )
    return tuple(numbers), 0, parts


def is_older(version: str, than: str, migrated: dict[str, str]) -> bool:
    """Return True when app version version is known to be older than than.

    Two dotted numeric versions compare by their numbers. Otherwise version is
    older when both versions' migrations completed and its own completed first.
    migrated maps versions to completion times in RFC 3339 UTC, which sort as
    text. Return False when the order is unknown.
    """
    if version == than:
        return False
    key, other = version_key(version), version_key(than)
    if key is not None and other is not None:
        return key < other
    if version in migrated and than in migrated:
        return migrated[version] < migrated[than]
    return False
