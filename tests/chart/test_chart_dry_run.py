"""The chart's default render, validated by a real API server.

With the operators' CRDs installed, `kubectl apply --dry-run=server` sends
every rendered object through the API server's validation (schemas, CRD
OpenAPI schemas, admission) without storing anything.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from activities.kubeapi import KubeClient
from testbed.cluster import LocalCluster, tool_path

REPO_ROOT = Path(__file__).resolve().parents[2]
CRD_FILES = sorted((REPO_ROOT / "tests" / "fixtures" / "charts").glob("*/crds/*.yaml"))


def render(namespace: str, *sets: str) -> str:
    args = [str(tool_path("helm")), "template", "ventros-crm", str(REPO_ROOT / "chart")]
    args += [f"--namespace={namespace}", *(f"--set={item}" for item in sets)]
    return subprocess.run(args, capture_output=True, text=True, check=True).stdout


def install_crds(cluster: LocalCluster) -> None:
    for crd in CRD_FILES:
        cluster.kubectl("apply", "--server-side", "-f", str(crd))
    for crd in CRD_FILES:
        name = yaml.safe_load(crd.read_text())["metadata"]["name"]
        cluster.kubectl(
            "wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s"
        )


def dry_run(
    cluster: LocalCluster, namespace: str, manifest: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(tool_path("kubectl")),
            "--kubeconfig",
            str(cluster.kubeconfig),
            "apply",
            "--dry-run=server",
            f"--namespace={namespace}",
            "-f",
            "-",
        ],
        input=manifest,
        capture_output=True,
        text=True,
        check=False,
    )


async def test_default_render_passes_server_dry_run(
    cluster: LocalCluster, kube: KubeClient, namespace: str
) -> None:
    """Every object of the default render is accepted by the API server."""
    install_crds(cluster)
    manifest = render(namespace)
    result = dry_run(cluster, namespace, manifest)
    assert result.returncode == 0, result.stderr
    objects = [doc for doc in yaml.safe_load_all(manifest) if doc]
    accepted = [
        line for line in result.stdout.splitlines() if "(server dry run)" in line
    ]
    assert len(accepted) == len(objects)
    # Nothing was stored: a dry run leaves the namespace without these objects.
    deployments = await kube.list(
        await kube.resource_type("apps/v1", "Deployment"), namespace
    )
    assert deployments["items"] == []


async def test_legacy_hooks_render_passes_server_dry_run(
    cluster: LocalCluster, namespace: str
) -> None:
    """The old hook-ordered render is valid for the API server too."""
    install_crds(cluster)
    result = dry_run(cluster, namespace, render(namespace, "deployer.legacyHooks=true"))
    assert result.returncode == 0, result.stderr


async def test_invalid_object_fails_server_dry_run(
    cluster: LocalCluster, namespace: str
) -> None:
    """The dry run can fail: a postgresql without its required teamId is rejected."""
    install_crds(cluster)
    manifest = "\n".join(
        [
            "apiVersion: acid.zalan.do/v1",
            "kind: postgresql",
            "metadata: {name: ventros-crm-db}",
            "spec: {numberOfInstances: 1, volume: {size: 1Gi}}",
        ]
    )
    result = dry_run(cluster, namespace, manifest)
    assert result.returncode != 0
    assert "teamId" in result.stderr
