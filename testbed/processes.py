"""Background processes that outlive the command that started them.

Each process runs in its own session and logs to a file; their pids are kept
in a JSON file so that a later command can stop exactly those processes. With
each pid the file keeps the process's start time, so a pid that the system
has since given to another process (after a reboot, say) is left alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

STOP_GRACE_S = 10.0


class ProcessGroup:
    """The processes recorded in one pid file, with their logs in one folder."""

    def __init__(self, pid_file: Path, log_dir: Path) -> None:
        self.pid_file = pid_file
        self.log_dir = log_dir

    def pids(self) -> dict[str, int]:
        """Return the recorded pids that still belong to the recorded processes."""
        pids = {}
        for name, entry in self._entries().items():
            if isinstance(entry, int):
                pids[name] = entry  # Written before start times were kept.
                continue
            pid, started = int(entry["pid"]), entry.get("started")
            now = start_time(pid)
            if started is not None and now is not None and now != started:
                continue  # The pid now belongs to another process.
            pids[name] = pid
        return pids

    def _entries(self) -> dict[str, Any]:
        try:
            data = json.loads(self.pid_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}
        return {str(k): v for k, v in data.items()}

    def _write(self, entries: dict[str, Any]) -> None:
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.write_text(json.dumps(entries, indent=2))

    def spawn(
        self,
        name: str,
        argv: list[str],
        cwd: Path,
        env: dict[str, str] | None = None,
    ) -> int:
        """Start argv in its own session, logging to <log_dir>/<name>.log."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"{name}.log", "ab") as log:
            process = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=cwd,
                env=env,
            )
        entries = self._entries()
        entries[name] = {"pid": process.pid, "started": start_time(process.pid)}
        self._write(entries)
        return process.pid

    def running(self, name: str) -> bool:
        pid = self.pids().get(name)
        return pid is not None and alive(pid)

    def stop(self, name: str) -> None:
        """Stop one process: SIGTERM to its session, SIGKILL after a grace period."""
        pid = self.pids().get(name)
        if pid is not None:
            stop_session(pid)
        entries = self._entries()
        entries.pop(name, None)
        self._write(entries)

    def stop_all(self) -> int:
        """Stop every recorded process, newest first; return how many there were."""
        pids = self.pids()
        for name in reversed(list(pids)):
            stop_session(pids[name])
        self._write({})
        return len(pids)

    def log_tail(self, name: str, lines: int = 15) -> str:
        log = self.log_dir / f"{name}.log"
        if not log.exists():
            return ""
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def stop_session(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + STOP_GRACE_S
    while time.monotonic() < deadline:
        if not alive(pid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def start_time(pid: int) -> str | None:
    """Return when pid started, in clock ticks since boot, or None.

    None when the process is gone or /proc is missing (not Linux).
    """
    try:
        with open(f"/proc/{pid}/stat") as stat:
            # Field 22 of the line; the fields after the command start at 3.
            return stat.read().rsplit(")", 1)[-1].split()[19]
    except (OSError, IndexError):
        return None


def alive(pid: int) -> bool:
    """Tell whether pid runs (a zombie counts as stopped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
