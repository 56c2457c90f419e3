"""How the client's phase table shows a phase: an error whole, other details
cut to fit."""

from __future__ import annotations

from rich.console import Console

from client.cli import phase_table
from deployer.phases import PHASE_ORDER, DeployStatus, Phase, PhaseRecord, PhaseState

NEXT_STEP = "read the Job's pod logs and events, fix the cause, then run retry"


def rendered(status: DeployStatus, width: int = 100) -> str:
    console = Console(width=width, record=True)
    console.print(phase_table(status))
    return " ".join(console.export_text().replace("│", " ").split())


def status_with(record: PhaseRecord) -> DeployStatus:
    phases = [
        record if p is record.phase else PhaseRecord(phase=p, state=PhaseState.PENDING)
        for p in PHASE_ORDER
    ]
    return DeployStatus(
        workflow_id="deploy-shop.crm",
        release="crm",
        namespace="shop",
        app_version="1.1.0",
        state="running",
        phases=phases,
    )


def test_error_is_shown_whole() -> None:
    """A long error keeps its end, which names the next step."""
    error = (
        "job/crm-migrate-1-1-0 in namespace shop failed: BackoffLimitExceeded "
        + "(pod crm-migrate-1-1-0-abcde exited 1) " * 8
        + NEXT_STEP
    )
    record = PhaseRecord(
        phase=Phase.MIGRATION,
        state=PhaseState.WAITING_FOR_RETRY,
        attempts=1,
        error=error,
        error_type="TerminalFailure",
    )
    text = rendered(status_with(record))
    assert "TerminalFailure: job/crm-migrate-1-1-0 failed" in text
    assert NEXT_STEP in text
    assert "…" not in text


def test_long_status_of_a_succeeded_phase_is_cut() -> None:
    """A succeeded phase's status line is cut to 60 characters."""
    record = PhaseRecord(
        phase=Phase.APP,
        state=PhaseState.SUCCEEDED,
        attempts=1,
        last_status="deployment/crm: " + "ready " * 30,
    )
    text = rendered(status_with(record))
    assert "…" in text
    assert "ready " * 20 not in text


def test_title_without_namespace() -> None:
    """A run whose input could not be parsed has no namespace, and the title
    shows no empty parentheses."""
    status = DeployStatus(
        workflow_id="deploy-bad.r2",
        release="",
        namespace="",
        app_version="",
        state="invalid",
        phases=[PhaseRecord(phase=p, state=PhaseState.PENDING) for p in PHASE_ORDER],
    )
    text = rendered(status)
    assert text.startswith("deploy-bad.r2: invalid")
    assert "()" not in text


def test_succeeded_phase_shows_its_notes_whole() -> None:
    """A succeeded phase shows what its apply noted, uncut, in place of its
    objects: a migration that was not run again, and why."""
    note = (
        "job/crm-migrate-1-0-0 already completed for this app version; not run "
        "again; database migrations are not undone: the migrations of later app "
        "versions stay applied (1.1.0)"
    )
    record = PhaseRecord(
        phase=Phase.MIGRATION,
        state=PhaseState.SUCCEEDED,
        attempts=1,
        waiting_on=["job/crm-migrate-1-0-0"],
        notes=[note],
    )
    text = rendered(status_with(record), width=200)
    assert note in text
    assert "…" not in text
