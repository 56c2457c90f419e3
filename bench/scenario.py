"""The inputs both deploys share: simulated delays, chart values, the request.

The delays come from one dict (``DELAYS_S`` in bench.run). This module turns
it into the simulator's steering annotations, on the namespace and on pod
templates, and computes the critical-path lower bound of the phase DAG.
"""

from __future__ import annotations

from typing import Any

from deployer.phases import DEPENDENCIES, PHASE_ORDER, Phase

SIM = "sim.ventros.io/"
RELEASE = "ventros-crm"
APP_VERSION = "1.0.0"
FIXTURE_CHARTS = "tests/fixtures/charts"
# Every delay key the scenario reads, with the object it slows down.
DELAY_KEYS = {
    "postgres": "postgresql: Creating until Running",
    "rabbitmq": "RabbitmqCluster: conditions turn True",
    "redis": "Redis pods: Ready",
    "temporal": "Temporal schema Job (every Job pod without its own annotation)",
    "migration": "migration Job pod runs",
    "app": "app pods: Ready",
    "pods": "every other pod: operators, database StatefulSet, Temporal servers",
}


def check_delays(delays: dict[str, float]) -> None:
    """Raise ValueError unless delays has exactly the keys of DELAY_KEYS."""
    missing = sorted(set(DELAY_KEYS) - set(delays))
    unknown = sorted(set(delays) - set(DELAY_KEYS))
    if missing or unknown:
        raise ValueError(
            f"DELAYS_S must have the keys {sorted(DELAY_KEYS)}: "
            f"missing {missing}, unknown {unknown}"
        )


def _seconds(value: float) -> str:
    return f"{value:g}"


def namespace_annotations(delays: dict[str, float]) -> dict[str, str]:
    """Return the steering annotations set on each benchmark namespace.

    A pod-template annotation wins over the namespace's, so job-duration here
    only reaches Job pods without their own: the Temporal schema Job.
    """
    return {
        SIM + "postgres-delay": _seconds(delays["postgres"]),
        SIM + "rabbitmq-delay": _seconds(delays["rabbitmq"]),
        SIM + "job-duration": _seconds(delays["temporal"]),
        SIM + "ready-delay": _seconds(delays["pods"]),
    }


def chart_values(delays: dict[str, float]) -> dict[str, Any]:
    """Return the values of our chart that both deploys pass."""
    return {
        "app": {
            "replicas": 2,
            "podAnnotations": {SIM + "ready-delay": _seconds(delays["app"])},
        },
        "rabbitmq": {"replicas": 1},
        "redis": {"podAnnotations": {SIM + "ready-delay": _seconds(delays["redis"])}},
        "migration": {
            "podAnnotations": {SIM + "job-duration": _seconds(delays["migration"])}
        },
    }


def deploy_request(
    namespace: str, delays: dict[str, float], install_operators: bool = True
) -> dict[str, Any]:
    """Return the VentrosDeploy request, with the stand-in charts."""
    return {
        "release": RELEASE,
        "namespace": namespace,
        "install_operators": install_operators,
        "chart": {"path": "chart"},
        "app_version": APP_VERSION,
        "operator_charts": {
            "postgres_operator": {"path": f"{FIXTURE_CHARTS}/postgres-operator"},
            "rabbitmq_operator": {
                "path": f"{FIXTURE_CHARTS}/rabbitmq-cluster-operator"
            },
            "temporal": {"path": f"{FIXTURE_CHARTS}/temporal"},
        },
        "values": chart_values(delays),
        "timeouts": {phase.value: 120 for phase in PHASE_ORDER},
    }


def legacy_values(delays: dict[str, float]) -> dict[str, Any]:
    """Return the same values for the umbrella chart, where ours is a subchart."""
    ours = chart_values(delays)
    ours["image"] = {"tag": APP_VERSION}
    return {RELEASE: ours}


# The Job controller of Kubernetes v1.36.3 syncs a Job at most once a second
# after its pods change (SyncJobBatchPeriod in pkg/controller/job), so a Job's
# Complete condition comes up to 1 s after its pod has succeeded.
JOB_SYNC_S = 1.0


def phase_costs(
    delays: dict[str, float], job_sync_s: float = 0.0
) -> dict[Phase, float]:
    """Return the simulated seconds each phase must wait, at least.

    The data phase also waits for the database StatefulSet, whose pods the
    simulated operator creates only once the postgresql is past its delay.
    job_sync_s is added to the phases that wait for a Job.
    """
    return {
        Phase.BASE: delays["pods"],
        Phase.DATA: delays["postgres"] + delays["pods"],
        Phase.MESSAGING: delays["rabbitmq"],
        Phase.CACHE: delays["redis"],
        Phase.TEMPORAL: max(delays["temporal"] + job_sync_s, delays["pods"]),
        Phase.MIGRATION: delays["migration"] + job_sync_s,
        Phase.APP: delays["app"],
    }


def critical_path(
    delays: dict[str, float], job_sync_s: float = 0.0
) -> tuple[float, list[Phase]]:
    """Return the longest path of phase costs through DEPENDENCIES, and its phases.

    With job_sync_s = 0 it is the bound the delays alone set; with JOB_SYNC_S
    it is the bound on a cluster whose Job controller batches its syncs.
    """
    costs = phase_costs(delays, job_sync_s)
    finish: dict[Phase, float] = {}
    previous: dict[Phase, Phase | None] = {}
    # PHASE_ORDER lists every phase after the phases it depends on.
    for phase in PHASE_ORDER:
        needed = DEPENDENCIES[phase]
        before = max(needed, key=lambda p: finish[p]) if needed else None
        start = finish[before] if before else 0.0
        finish[phase] = start + costs[phase]
        previous[phase] = before
    end = max(finish, key=lambda p: finish[p])
    total = finish[end]
    path: list[Phase] = []
    last: Phase | None = end
    while last is not None:
        path.append(last)
        last = previous[last]
    return total, path[::-1]
