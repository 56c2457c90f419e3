"""The test bed's record of its background processes: stop stops exactly
the processes it started, and never one that later got the same pid."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest

from testbed.processes import ProcessGroup, alive, start_time

pytestmark = pytest.mark.skipif(
    sys.platform != "linux", reason="start times come from /proc"
)


def sleeper(tmp_path: Path) -> tuple[ProcessGroup, int]:
    group = ProcessGroup(tmp_path / "pids.json", tmp_path / "logs")
    pid = group.spawn("sleeper", ["sleep", "60"], cwd=tmp_path)
    return group, pid


def test_stop_all_stops_recorded_process(tmp_path: Path) -> None:
    group, pid = sleeper(tmp_path)
    recorded = json.loads((tmp_path / "pids.json").read_text())
    assert recorded["sleeper"] == {"pid": pid, "started": start_time(pid)}
    assert group.stop_all() == 1
    assert not alive(pid)


def test_reused_pid_left_alone(tmp_path: Path) -> None:
    """A pid whose start time differs from the recorded one belongs to another
    process now, so stop_all neither counts nor signals it."""
    group, pid = sleeper(tmp_path)
    try:
        (tmp_path / "pids.json").write_text(
            json.dumps({"sleeper": {"pid": pid, "started": "1"}})
        )
        assert group.pids() == {}
        assert group.stop_all() == 0
        assert alive(pid)
    finally:
        os.killpg(pid, signal.SIGKILL)


def test_old_pid_file_still_read(tmp_path: Path) -> None:
    """A pid file written before start times were kept still stops its
    processes."""
    group, pid = sleeper(tmp_path)
    (tmp_path / "pids.json").write_text(json.dumps({"sleeper": pid}))
    assert group.pids() == {"sleeper": pid}
    group.stop("sleeper")
    assert not alive(pid)
    assert json.loads((tmp_path / "pids.json").read_text()) == {}
