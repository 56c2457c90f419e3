"""The operator stand-ins installed once per cluster, as a shared cluster runs them.

The upstream operator charts create ClusterRoles and watch every namespace,
so a cluster with several releases runs one copy of each operator, installed
by an administrator, and deploys every release with install_operators false.
The tests and the benchmark's scale run set the stand-ins up the same way.
"""

from __future__ import annotations

from activities.helm import Helm
from deployer.inputs import ChartRef

FIXTURE_CHARTS = "tests/fixtures/charts"
OPERATOR_CHARTS = ("postgres-operator", "rabbitmq-cluster-operator")


def _release(chart: str) -> str:
    return f"shared-{chart}"


async def install_shared_operators(helm: Helm, namespace: str) -> None:
    """Install both operator stand-ins into namespace with helm.

    The pod ClusterRole of the postgres-operator gets a name of its own, so
    that a release which installs its operators itself can exist beside them.
    """
    values = {
        "postgres-operator": {
            "podServiceAccount": {"name": f"{namespace}-postgres-pod"}
        },
        "rabbitmq-cluster-operator": {},
    }
    for chart in OPERATOR_CHARTS:
        ref = ChartRef(path=f"{FIXTURE_CHARTS}/{chart}")
        await helm.upgrade_install(_release(chart), namespace, ref, values[chart])


async def uninstall_shared_operators(helm: Helm, namespace: str) -> None:
    """Uninstall what install_shared_operators installed, cluster objects included."""
    for chart in OPERATOR_CHARTS:
        await helm.run(
            [
                "uninstall",
                _release(chart),
                f"--namespace={namespace}",
                "--ignore-not-found",
            ]
        )
