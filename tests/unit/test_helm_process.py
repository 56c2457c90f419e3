"""A helm that the worker started dies with the worker, even on SIGKILL.

The parent is a real Python process running Helm.run. The helm binary is a
script that records its pid and sleeps, so no cluster is needed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import psutil
import pytest

from activities.helm import DEATH_SIGNAL_PREFIX, _death_signal_prefix
from tests.conftest import REPO_ROOT

needs_setpriv = pytest.mark.skipif(
    not DEATH_SIGNAL_PREFIX, reason="needs Linux and util-linux's setpriv"
)


def running(pid: int) -> bool:
    """Tell whether pid runs; a zombie waiting to be reaped has ended."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def started_helm(tmp_path: Path) -> tuple[asyncio.subprocess.Process, int]:
    """Start a worker-like process whose Helm.run waits on a sleeping helm."""
    pid_file = tmp_path / "helm.pid"
    helm = tmp_path / "helm"
    helm.write_text(f"#!/bin/sh\necho $$ > {pid_file}\nexec sleep 60\n")
    helm.chmod(0o755)
    script = (
        "import asyncio\n"
        "from pathlib import Path\n"
        "from activities.helm import Helm\n"
        f"helm = Helm({str(helm)!r}, None, None, Path('.'))\n"
        "asyncio.run(helm.run(['upgrade', 'ventros-crm']))\n"
    )
    parent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, cwd=REPO_ROOT
    )
    for _ in range(100):
        if pid_file.exists() and pid_file.read_text().strip():
            return parent, int(pid_file.read_text())
        await asyncio.sleep(0.1)
    parent.kill()
    raise AssertionError("the stand-in helm never started")


@needs_setpriv
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
async def test_helm_dies_with_its_worker(tmp_path: Path, signum: int) -> None:
    """Killing the worker process kills its helm within a second; before,
    helm went on applying as an orphan while the retried attempt ran its own."""
    parent, helm_pid = await started_helm(tmp_path)
    try:
        assert running(helm_pid)
        parent.send_signal(signum)
        await parent.wait()
        for _ in range(20):
            if not running(helm_pid):
                break
            await asyncio.sleep(0.05)
        assert not running(helm_pid), "helm outlived the worker"
    finally:
        if running(helm_pid):
            psutil.Process(helm_pid).kill()


@pytest.mark.skipif(sys.platform != "linux", reason="setpriv is Linux only")
def test_setpriv_without_pdeathsig_unused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A setpriv whose help lacks --pdeathsig is not used: helm runs as is
    instead of failing on an unknown option."""
    old = tmp_path / "setpriv"
    old.write_text("#!/bin/sh\necho 'Usage: setpriv [options] <program>'\n")
    old.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    assert _death_signal_prefix() == ()
