"""The deployer runs with exactly the rights in deploy/rbac.yaml.

The test applies deploy/rbac.yaml to the shared local cluster under unique
names, mints a token for its ServiceAccount with the TokenRequest API and
runs a whole deploy with a kubeconfig that holds only that token. Then it
checks that actions outside the rules fail as forbidden, with a message that
names the verb and the resource.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from activities.helm import Helm
from activities.kubeapi import ForbiddenError, JsonObject, KubeClient, well_known
from deployer import contracts
from deployer.inputs import ChartRef
from deployer.lifecycle import destroy_workflow_id_for, rollback_workflow_id_for
from deployer.phases import DeployStatus, PhaseRecord, PhaseState
from deployer.settings import WorkerSettings
from testbed.cluster import LocalCluster, tool_path
from testbed.leftovers import remove_namespace
from tests.conftest import REPO_ROOT, deploy_request, running_worker

RBAC_FILE = REPO_ROOT / "deploy" / "rbac.yaml"
SYSTEM_NAMESPACE = "ventros-deploy-system"
TARGET_NAMESPACE = "ventros-crm"
TOKEN_TTL_S = 3600
NAMESPACE_TYPE = well_known("v1", "Namespace")
# The user of the admin client certificate (testbed/certs.py).
ADMIN_USER = "kubernetes-admin"


@dataclass(frozen=True)
class DeployerIdentity:
    """The ServiceAccount from deploy/rbac.yaml, and a kubeconfig with its token."""

    user: str
    kubeconfig: Path


def renamed(obj: JsonObject, suffix: str, target_namespace: str) -> JsonObject | None:
    """Return obj with unique names for this run, bound to target_namespace.

    Returns None for the file's own target namespace, which the test replaces
    with its fresh one.
    """
    obj = copy.deepcopy(obj)
    metadata = obj["metadata"]
    system_namespace = f"{SYSTEM_NAMESPACE}-{suffix}"
    if obj["kind"] == "Namespace":
        if metadata["name"] == TARGET_NAMESPACE:
            return None
        metadata["name"] = system_namespace
    else:
        metadata["name"] = f"{metadata['name']}-{suffix}"
    if metadata.get("namespace") == SYSTEM_NAMESPACE:
        metadata["namespace"] = system_namespace
    elif metadata.get("namespace") == TARGET_NAMESPACE:
        metadata["namespace"] = target_namespace
    if "roleRef" in obj:
        obj["roleRef"]["name"] = f"{obj['roleRef']['name']}-{suffix}"
    for subject in obj.get("subjects", []):
        subject["name"] = f"{subject['name']}-{suffix}"
        subject["namespace"] = system_namespace
    return obj


def rbac_objects(suffix: str, target_namespace: str) -> list[JsonObject]:
    documents = yaml.safe_load_all(RBAC_FILE.read_text())
    objects = [renamed(doc, suffix, target_namespace) for doc in documents if doc]
    return [obj for obj in objects if obj is not None]


async def mint_token(kube: KubeClient, namespace: str, service_account: str) -> str:
    """Return a bound token for the ServiceAccount from the TokenRequest API."""
    response = await kube.request(
        "POST",
        f"/api/v1/namespaces/{namespace}/serviceaccounts/{service_account}/token",
        body={
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": TOKEN_TTL_S},
        },
    )
    return str(response["status"]["token"])


def write_kubeconfig(path: Path, server: str, ca_file: Path, token: str) -> None:
    """Write a kubeconfig with only the token and the cluster CA, mode 0600."""
    config: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "local",
                "cluster": {"server": server, "certificate-authority": str(ca_file)},
            }
        ],
        "users": [{"name": "deployer", "user": {"token": token}}],
        "contexts": [
            {"name": "deployer", "context": {"cluster": "local", "user": "deployer"}}
        ],
        "current-context": "deployer",
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(config, handle)


@pytest_asyncio.fixture
async def deployer_identity(
    kube: KubeClient, cluster: LocalCluster, namespace: str, tmp_path: Path
) -> AsyncIterator[DeployerIdentity]:
    """deploy/rbac.yaml applied under unique names, bound to the test namespace."""
    suffix = uuid.uuid4().hex[:8]
    objects = rbac_objects(suffix, namespace)
    for obj in objects:
        await kube.apply(obj)
    [account] = [o for o in objects if o["kind"] == "ServiceAccount"]
    account_namespace = account["metadata"]["namespace"]
    token = await mint_token(kube, account_namespace, account["metadata"]["name"])
    kubeconfig = tmp_path / "deployer.kubeconfig"
    write_kubeconfig(
        kubeconfig, cluster.config.server, cluster.config.pki_dir / "ca.crt", token
    )
    user = f"system:serviceaccount:{account_namespace}:{account['metadata']['name']}"
    try:
        yield DeployerIdentity(user=user, kubeconfig=kubeconfig)
    finally:
        for obj in reversed(objects):
            if obj["kind"] in ("ClusterRole", "ClusterRoleBinding", "Namespace"):
                rtype = await kube.resource_type(obj["apiVersion"], obj["kind"])
                await kube.delete(rtype, obj["metadata"]["name"])


@pytest_asyncio.fixture
async def deployer_kube(
    deployer_identity: DeployerIdentity,
) -> AsyncIterator[KubeClient]:
    """A Kubernetes client that authenticates as the deployer's ServiceAccount."""
    client = await KubeClient.connect(str(deployer_identity.kubeconfig))
    yield client
    await client.close()


def as_deployer(settings: WorkerSettings, identity: DeployerIdentity) -> WorkerSettings:
    return settings.model_copy(update={"kubeconfig": identity.kubeconfig})


async def start(
    env: WorkflowEnvironment, settings: WorkerSettings, request: dict[str, Any]
) -> WorkflowHandle[Any, Any]:
    return await env.client.start_workflow(
        "VentrosDeploy",
        request,
        id=f"deploy-{request['namespace']}.{request['release']}",
        task_queue=settings.task_queue,
    )


async def wait_for_failed_phase(
    handle: WorkflowHandle[Any, Any], phase: str, timeout_s: float = 120
) -> PhaseRecord:
    """Poll the status query until phase waits for retry; return its record."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        status = await handle.query("status", result_type=DeployStatus)
        record = next(r for r in status.phases if r.phase.value == phase)
        if record.state is PhaseState.WAITING_FOR_RETRY:
            return record
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(
                f"phase {phase} never failed: {status.model_dump_json()}"
            )
        await asyncio.sleep(0.3)


async def fail_and_abort(
    env: WorkflowEnvironment,
    settings: WorkerSettings,
    request: dict[str, Any],
    phase: str,
) -> tuple[PhaseRecord, WorkflowHandle[Any, Any]]:
    """Run a deploy until phase fails, abort it, and return the phase's record."""
    async with running_worker(env.client, settings):
        handle = await start(env, settings, request)
        record = await wait_for_failed_phase(handle, phase)
        await handle.execute_update(
            "abort", "the test saw the failure", result_type=str
        )
    return record, handle


async def result_or_status(
    handle: WorkflowHandle[Any, Any], timeout_s: float = 180
) -> DeployStatus:
    """Return the deploy's result, or its status when a phase fails or it hangs.

    A phase that fails (a missing permission, for example) waits for retry
    forever, so the test stops waiting and shows the failed phase instead.
    """
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        try:
            result = await asyncio.wait_for(handle.result(), timeout=1.0)
            return DeployStatus.model_validate(result)
        except TimeoutError:
            pass
        status = await handle.query("status", result_type=DeployStatus)
        failed = any(r.state is PhaseState.WAITING_FOR_RETRY for r in status.phases)
        if failed or asyncio.get_running_loop().time() > deadline:
            await handle.terminate("the least-privilege test stopped waiting")
            return status


def test_kubeconfig_private(deployer_identity: DeployerIdentity) -> None:
    """The kubeconfig that contains the token is readable by its owner only."""
    assert deployer_identity.kubeconfig.stat().st_mode & 0o777 == 0o600


async def test_deploy_with_rbac_succeeds(
    temporal_env: WorkflowEnvironment,
    worker_settings: WorkerSettings,
    deployer_identity: DeployerIdentity,
    cluster: LocalCluster,
    namespace: str,
    shared_operators: str,
) -> None:
    """A deploy, an upgrade, a rollback and a destroy all succeed with only the
    rights in rbac.yaml, with the operators installed beforehand by an admin."""
    audit_log = cluster.config.log_dir / "audit.log"
    audit_start = audit_log.stat().st_size
    settings = as_deployer(worker_settings, deployer_identity)
    async with running_worker(temporal_env.client, settings):
        request = deploy_request(namespace, install_operators=False)
        first = await start(temporal_env, settings, request)
        installed = await result_or_status(first)
        upgrade = deploy_request(
            namespace, app_version="1.0.1", install_operators=False
        )
        second = await start(temporal_env, settings, upgrade)
        upgraded = await result_or_status(second)
        target = {"release": "ventros-crm", "namespace": namespace}
        rolled_back = await temporal_env.client.execute_workflow(
            "VentrosRollback",
            target,
            id=rollback_workflow_id_for(namespace, "ventros-crm"),
            task_queue=settings.task_queue,
        )
        destroyed = await temporal_env.client.execute_workflow(
            "VentrosDestroy",
            {**target, "force": True, "delete_data": True},
            id=destroy_workflow_id_for(namespace, "ventros-crm"),
            task_queue=settings.task_queue,
        )
    assert installed.state == "succeeded", installed.model_dump_json()
    assert upgraded.state == "succeeded", upgraded.model_dump_json()
    assert rolled_back["state"] == "succeeded"
    assert rolled_back["to_version"] == "1.0.0"
    assert destroyed["state"] == "succeeded"

    # The API server's audit log (writes only) shows who wrote the objects,
    # and that no write was denied: helm can recover from some denied writes
    # (a release record it cannot update), so success alone proves too little.
    writes = audit_writes(audit_log, audit_start, namespace)
    deployer = {w for w in writes if w.user == deployer_identity.user}
    assert ("patch", "deployments", "ventros-crm") in {w.action for w in deployer}
    assert ("create", "jobs", "ventros-crm-migrate-1-0-1") in {
        w.action for w in deployer
    }
    assert [w for w in deployer if w.code == 403] == []
    assert [w for w in writes if w.user == ADMIN_USER] == []


@dataclass(frozen=True)
class AuditedWrite:
    """One write request in the API server's audit log."""

    user: str
    verb: str
    resource: str
    name: str
    code: int

    @property
    def action(self) -> tuple[str, str, str]:
        return (self.verb, self.resource, self.name)


def audit_writes(audit_log: Path, offset: int, namespace: str) -> list[AuditedWrite]:
    """Return the writes to objects in namespace logged after offset."""
    writes = []
    with audit_log.open("rb") as handle:
        handle.seek(offset)
        for line in handle:
            if namespace.encode() not in line:
                continue
            event = json.loads(line)
            target = event.get("objectRef") or {}
            if target.get("namespace") != namespace or target.get("subresource"):
                continue
            writes.append(
                AuditedWrite(
                    user=event["user"]["username"],
                    verb=event["verb"],
                    resource=target["resource"],
                    name=target.get("name", ""),
                    code=int(event.get("responseStatus", {}).get("code", 0)),
                )
            )
    return writes


async def test_deployer_cannot_delete_nodes(
    deployer_kube: KubeClient, deployer_identity: DeployerIdentity, kube: KubeClient
) -> None:
    """Deleting a node is forbidden, and the error names the verb and resource."""
    nodes = await kube.list(well_known("v1", "Node"))
    node = nodes["items"][0]["metadata"]["name"]
    with pytest.raises(ForbiddenError) as denied:
        await deployer_kube.delete(well_known("v1", "Node"), node)
    message = str(denied.value)
    assert "forbidden" in message
    assert 'cannot delete resource "nodes"' in message
    assert deployer_identity.user in message


async def test_deployer_cannot_read_kube_system(
    deployer_kube: KubeClient, deployer_identity: DeployerIdentity
) -> None:
    """Listing Secrets outside the bound namespaces is forbidden."""
    with pytest.raises(ForbiddenError) as denied:
        await deployer_kube.list(well_known("v1", "Secret"), "kube-system")
    message = str(denied.value)
    assert 'cannot list resource "secrets"' in message
    assert 'in the namespace "kube-system"' in message


async def test_deploy_unbound_namespace_forbidden(
    temporal_env: WorkflowEnvironment,
    worker_settings: WorkerSettings,
    deployer_identity: DeployerIdentity,
    kube: KubeClient,
) -> None:
    """A deploy into a namespace without the RoleBinding fails as Forbidden at once."""
    unbound = f"t-unbound-{uuid.uuid4().hex[:8]}"
    await kube.create(
        NAMESPACE_TYPE,
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": unbound}},
    )
    settings = as_deployer(worker_settings, deployer_identity)
    try:
        # Without the operators, which the identity may not install, the
        # first request that fails is the base release's, in that namespace.
        request = deploy_request(unbound, install_operators=False)
        record, handle = await fail_and_abort(temporal_env, settings, request, "base")
        history = await handle.fetch_history()
    finally:
        await remove_namespace(kube, unbound)
    assert record.error_type == contracts.FORBIDDEN, record.error
    assert record.error is not None
    assert "forbidden" in record.error
    assert "deploy/rbac.yaml" in record.error
    # Forbidden is not retried: the apply activity ran once.
    attempts = [
        event.activity_task_started_event_attributes.attempt
        for event in history.events
        if event.HasField("activity_task_started_event_attributes")
    ]
    assert max(attempts) == 1


async def test_timeout_diagnosis_with_rbac(
    temporal_env: WorkflowEnvironment,
    worker_settings: WorkerSettings,
    deployer_identity: DeployerIdentity,
    kube: KubeClient,
    namespace: str,
    shared_operators: str,
) -> None:
    """A timed-out phase still names its blocked pods: the role may list pods."""
    await kube.merge_patch(
        NAMESPACE_TYPE,
        namespace,
        {
            "metadata": {
                "annotations": {"sim.ventros.io/hold-init": "wait-for-temporal"}
            }
        },
    )
    request = deploy_request(namespace, install_operators=False)
    request["timeouts"]["app"] = 10
    settings = as_deployer(worker_settings, deployer_identity)
    record, _ = await fail_and_abort(temporal_env, settings, request, "app")
    assert record.error_type == contracts.PHASE_TIMEOUT, record.error
    assert record.error is not None
    assert "Pods not ready" in record.error
    assert "init container wait-for-temporal" in record.error


async def test_install_operators_forbidden(
    temporal_env: WorkflowEnvironment,
    worker_settings: WorkerSettings,
    deployer_identity: DeployerIdentity,
    namespace: str,
) -> None:
    """Installing the operators needs an administrator's rights, which the
    identity lacks: the base phase fails once, at the operator claim (a Lease
    in kube-system) before any object is applied, and the error names the
    way out."""
    settings = as_deployer(worker_settings, deployer_identity)
    request = deploy_request(namespace)
    record, _ = await fail_and_abort(temporal_env, settings, request, "base")
    assert record.error_type == contracts.FORBIDDEN, record.error
    assert record.error is not None
    assert 'resource "leases"' in record.error
    assert "ClusterRoles" in record.error
    assert "install_operators: false" in record.error
    assert record.attempts == 1


async def test_destroy_keeps_operators_unchecked(
    temporal_env: WorkflowEnvironment,
    worker_settings: WorkerSettings,
    deployer_identity: DeployerIdentity,
    cluster: LocalCluster,
    namespace: str,
) -> None:
    """The identity may not list postgresqls or RabbitmqClusters in all
    namespaces, so a destroy cannot tell whether other releases use the
    operators an admin installed for this release. It keeps them, explains why,
    and names the command that removes them."""
    helm = Helm(str(tool_path("helm")), str(cluster.kubeconfig), None, REPO_ROOT)
    operators = {
        "ventros-crm-postgres-operator": "postgres-operator",
        "ventros-crm-rabbitmq-operator": "rabbitmq-cluster-operator",
    }
    for release, chart in operators.items():
        ref = ChartRef(path=f"tests/fixtures/charts/{chart}")
        await helm.upgrade_install(release, namespace, ref, {})
    settings = as_deployer(worker_settings, deployer_identity)
    try:
        async with running_worker(temporal_env.client, settings):
            destroyed = await temporal_env.client.execute_workflow(
                "VentrosDestroy",
                {"release": "ventros-crm", "namespace": namespace, "delete_data": True},
                id=destroy_workflow_id_for(namespace, "ventros-crm"),
                task_queue=settings.task_queue,
            )
        out = await helm.run(["list", f"--namespace={namespace}", "--output=json"])
    finally:
        for release in operators:
            await helm.run(
                ["uninstall", release, f"--namespace={namespace}", "--ignore-not-found"]
            )

    assert destroyed["state"] == "succeeded"
    assert sorted(entry["name"] for entry in json.loads(out)) == sorted(operators)
    for release in operators:
        [line] = [
            k for k in destroyed["kept"] if k.startswith(f"helm release {release}")
        ]
        assert "may not list" in line
        assert f"helm uninstall {release} --namespace {namespace}" in line
