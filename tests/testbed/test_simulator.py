"""The local test cluster at work: the real control plane with simulated
kubelets and operators, steered by ``sim.ventros.io/*`` annotations.

Every test runs in a fresh namespace on the shared cluster from the ``cluster``
fixture. Waits poll the API every 0.2 s for at most 60 s and fail with the
last object they saw.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from activities.kubeapi import (
    JsonObject,
    KubeClient,
    NoKindMatchError,
    NotFoundError,
    ResourceType,
    well_known,
)
from testbed.cluster import LocalCluster, tool_path
from testbed.simulator import _cluster_service

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURE_CHARTS = REPO_ROOT / "tests" / "fixtures" / "charts"
OPERATOR_CRDS = ("postgresqls.acid.zalan.do", "rabbitmqclusters.rabbitmq.com")
TIMEOUT_S = 60.0
POLL_S = 0.2
STEER = "sim.ventros.io/"

NAMESPACE = well_known("v1", "Namespace")
POD = well_known("v1", "Pod")
SECRET = well_known("v1", "Secret")
EVENT = well_known("v1", "Event")
SERVICE = well_known("v1", "Service")
SERVICE_ACCOUNT = ResourceType("v1", "ServiceAccount", "serviceaccounts", True)
DEPLOYMENT = well_known("apps/v1", "Deployment")
REPLICASET = well_known("apps/v1", "ReplicaSet")
STATEFULSET = well_known("apps/v1", "StatefulSet")
JOB = well_known("batch/v1", "Job")
CRD = well_known("apiextensions.k8s.io/v1", "CustomResourceDefinition")
POSTGRESQL = well_known("acid.zalan.do/v1", "postgresql")
RABBITMQ = well_known("rabbitmq.com/v1beta1", "RabbitmqCluster")
IMAGE = "registry.example.test/app:1.0"


# -- helpers ---------------------------------------------------------------


async def wait_for(
    read: Callable[[], Awaitable[JsonObject | None]],
    done: Callable[[JsonObject], bool],
    description: str,
) -> JsonObject:
    """Poll read() until done() holds for its result; fail after TIMEOUT_S."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT_S
    last: JsonObject | None = None
    while loop.time() < deadline:
        last = await read()
        if last is not None and done(last):
            return last
        await asyncio.sleep(POLL_S)
    excerpt = json.dumps(last, indent=1)[:4000]
    pytest.fail(
        f"timed out after {TIMEOUT_S:.0f} s waiting for {description}. "
        f"Last seen:\n{excerpt}"
    )


async def wait_object(
    kube: KubeClient,
    rtype: ResourceType,
    name: str,
    namespace: str | None,
    done: Callable[[JsonObject], bool],
    expectation: str,
) -> JsonObject:
    """Poll one object until done() holds for it."""
    return await wait_for(
        lambda: kube.get(rtype, name, namespace),
        done,
        f"{rtype.describe(name, namespace)} {expectation}",
    )


def condition(obj: JsonObject, kind: str) -> JsonObject:
    """Return the status condition of that type, or {} when there is none."""
    for item in (obj.get("status") or {}).get("conditions") or []:
        if item.get("type") == kind:
            return dict(item)
    return {}


def container_status(pod: JsonObject, field: str, name: str) -> JsonObject:
    """Return the entry for container name in status[field], or {}."""
    for item in (pod.get("status") or {}).get(field) or []:
        if item.get("name") == name:
            return dict(item)
    return {}


async def annotate_namespace(
    kube: KubeClient, namespace: str, key: str, value: str | None
) -> None:
    """Set (or, with None, remove) a steering annotation on the namespace."""
    patch = {"metadata": {"annotations": {STEER + key: value}}}
    await kube.merge_patch(NAMESPACE, namespace, patch)


async def wait_default_service_account(kube: KubeClient, namespace: str) -> None:
    # Pod admission rejects a pod until the controller manager has created
    # the namespace's default ServiceAccount.
    await wait_object(
        kube, SERVICE_ACCOUNT, "default", namespace, lambda _: True, "to exist"
    )


def pod_manifest(
    name: str, annotations: dict[str, str], init: list[str], main: list[str]
) -> JsonObject:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations},
        "spec": {
            "initContainers": [{"name": n, "image": IMAGE} for n in init],
            "containers": [{"name": n, "image": IMAGE} for n in main],
        },
    }


def job_manifest(
    name: str, backoff_limit: int, annotations: dict[str, str] | None = None
) -> JsonObject:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": backoff_limit,
            "template": {
                "metadata": {"annotations": annotations or {}},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "main", "image": IMAGE}],
                },
            },
        },
    }


def job_finished(job: JsonObject) -> bool:
    return any(
        condition(job, kind).get("status") == "True" for kind in ("Complete", "Failed")
    )


def crd_manifest(
    group: str, plural: str, kind: str, short_names: list[str]
) -> JsonObject:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": short_names,
            },
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": True,
                        }
                    },
                }
            ],
        },
    }


# -- fixtures --------------------------------------------------------------


def helm(cluster: LocalCluster, *args: str) -> None:
    """Run helm against the cluster, failing the test with helm's stderr."""
    argv = [str(tool_path("helm")), "--kubeconfig", str(cluster.kubeconfig), *args]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.fail(f"`helm {' '.join(args)}` failed: {result.stderr}")


@pytest.fixture(scope="module")
def operator_crds(cluster: LocalCluster) -> Iterator[None]:
    """The stand-in operator charts installed in their own namespace, CRDs Established.

    helm keeps CRDs from a chart's crds/ folder on uninstall, so the shared
    cluster keeps serving postgresql and RabbitmqCluster for other users.
    """
    namespace = f"t-operators-{uuid.uuid4().hex[:8]}"
    charts = ("postgres-operator", "rabbitmq-cluster-operator")
    for chart in charts:
        helm(
            cluster,
            "upgrade",
            "--install",
            chart,
            str(FIXTURE_CHARTS / chart),
            "--namespace",
            namespace,
            "--create-namespace",
        )
    crds = [f"crd/{name}" for name in OPERATOR_CRDS]
    established = cluster.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", *crds, check=False
    )
    if established.returncode != 0:
        pytest.fail(f"operator CRDs did not become Established: {established.stderr}")
    yield
    for chart in charts:
        helm(cluster, "uninstall", chart, "--namespace", namespace)
    cluster.kubectl("delete", "namespace", namespace, "--wait=false")


@pytest.fixture
async def scratch_crds(kube: KubeClient) -> AsyncIterator[list[str]]:
    """Names of the CRDs that a test created, deleted after the test."""
    names: list[str] = []
    yield names
    for name in reversed(names):
        await kube.delete(CRD, name)


# -- control plane -----------------------------------------------------------


def test_kubectl_server_version(cluster: LocalCluster) -> None:
    """kubectl version reports a Kubernetes v1.36 API server."""
    output = cluster.kubectl("version", "-o", "json").stdout
    server = json.loads(output)["serverVersion"]
    assert server["major"] == "1"
    assert server["minor"] == "36"
    assert server["gitVersion"].startswith("v1.36.")


def test_nodes_all_ready(cluster: LocalCluster) -> None:
    """kubectl get nodes lists three simulated nodes, each Ready."""
    nodes = json.loads(cluster.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    names = sorted(node["metadata"]["name"] for node in nodes)
    assert names == ["sim-node-0", "sim-node-1", "sim-node-2"]
    for node in nodes:
        assert condition(node, "Ready")["status"] == "True", node["metadata"]["name"]
        assert not node["spec"].get("taints"), node["metadata"]["name"]


# -- workloads through the real controllers ----------------------------------


async def test_deployment_becomes_available(kube: KubeClient, namespace: str) -> None:
    """The deployment controller makes a Deployment Available once pods are Ready."""
    labels = {"app": "web"}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "web", "image": IMAGE}]},
            },
        },
    }
    await kube.create(DEPLOYMENT, deployment, namespace)

    def available(obj: JsonObject) -> bool:
        return condition(obj, "Available").get("status") == "True" and (
            obj["status"].get("availableReplicas") == 2
        )

    done = await wait_object(
        kube, DEPLOYMENT, "web", namespace, available, "to be Available"
    )
    assert done["status"]["availableReplicas"] == 2
    assert done["status"]["readyReplicas"] == 2
    assert condition(done, "Available")["reason"] == "MinimumReplicasAvailable"
    replica_sets = (await kube.list(REPLICASET, namespace))["items"]
    assert len(replica_sets) == 1
    assert (
        replica_sets[0]["metadata"]["ownerReferences"][0]["uid"]
        == done["metadata"]["uid"]
    )
    pods = (await kube.list(POD, namespace, label_selector="app=web"))["items"]
    assert len(pods) == 2
    for pod in pods:
        assert pod["spec"]["nodeName"].startswith("sim-node-"), pod["metadata"]["name"]
        assert condition(pod, "Ready")["status"] == "True", pod["metadata"]["name"]


async def test_job_completes(kube: KubeClient, namespace: str) -> None:
    """A Job whose pod the simulator ends with exit code 0 gets Complete True."""
    await kube.create(JOB, job_manifest("migrate", backoff_limit=2), namespace)
    job = await wait_object(kube, JOB, "migrate", namespace, job_finished, "to finish")
    assert condition(job, "Complete")["status"] == "True"
    assert job["status"]["succeeded"] == 1
    assert not job["status"].get("failed")


@pytest.mark.parametrize("steering", ["namespace-regex", "template-annotation"])
async def test_job_fails_after_backoff_limit(
    kube: KubeClient, namespace: str, steering: str
) -> None:
    """A Job steered to fail ends BackoffLimitExceeded after backoffLimit + 1 pods."""
    backoff_limit = 2
    template_annotations: dict[str, str] = {}
    if steering == "namespace-regex":
        await annotate_namespace(kube, namespace, "fail-jobs", "^mig.*te$")
    else:
        template_annotations[STEER + "job-outcome"] = "fail"
    manifest = job_manifest("migrate", backoff_limit, template_annotations)
    await kube.create(JOB, manifest, namespace)

    job = await wait_object(kube, JOB, "migrate", namespace, job_finished, "to finish")
    failed = condition(job, "Failed")
    assert failed.get("status") == "True"
    assert failed["reason"] == "BackoffLimitExceeded"
    assert job["status"]["failed"] == backoff_limit + 1
    assert not job["status"].get("succeeded")
    pods = (await kube.list(POD, namespace, label_selector="job-name=migrate"))["items"]
    assert len(pods) == backoff_limit + 1
    for pod in pods:
        assert pod["status"]["phase"] == "Failed", pod["metadata"]["name"]


async def test_fail_jobs_regex_spares_others(kube: KubeClient, namespace: str) -> None:
    """The fail-jobs namespace regex fails only Jobs whose name matches it."""
    await annotate_namespace(kube, namespace, "fail-jobs", "^migrate$")
    await kube.create(JOB, job_manifest("seed", backoff_limit=0), namespace)
    job = await wait_object(kube, JOB, "seed", namespace, job_finished, "to finish")
    assert condition(job, "Complete")["status"] == "True"


# -- simulated operators -----------------------------------------------------


def postgresql_manifest(
    name: str, annotations: dict[str, str] | None = None
) -> JsonObject:
    return {
        "apiVersion": "acid.zalan.do/v1",
        "kind": "postgresql",
        "metadata": {"name": name, "annotations": annotations or {}},
        "spec": {
            "teamId": "ventros",
            "numberOfInstances": 2,
            "volume": {"size": "1Gi"},
            "users": {"ventros_app": ["superuser", "createdb"], "reader": []},
            "databases": {"ventros": "ventros_app"},
            "postgresql": {"version": "16"},
        },
    }


def postgres_status(obj: JsonObject) -> str:
    return str((obj.get("status") or {}).get("PostgresClusterStatus", ""))


@pytest.mark.usefixtures("operator_crds")
async def test_postgresql_reaches_running(kube: KubeClient, namespace: str) -> None:
    """The simulated postgres-operator creates its objects and reports Running."""
    created = await kube.create(
        POSTGRESQL, postgresql_manifest("ventros-db"), namespace
    )
    uid = created["metadata"]["uid"]
    await wait_object(
        kube,
        POSTGRESQL,
        "ventros-db",
        namespace,
        lambda obj: postgres_status(obj) == "Running",
        "to be Running",
    )

    statefulset = await kube.get(STATEFULSET, "ventros-db", namespace)
    assert statefulset is not None
    assert statefulset["spec"]["replicas"] == 2
    assert statefulset["metadata"]["ownerReferences"][0]["uid"] == uid
    service = await kube.get(SERVICE, "ventros-db", namespace)
    assert service is not None
    assert service["spec"]["ports"][0]["port"] == 5432
    for user in ("ventros_app", "reader", "postgres"):
        name = (
            f"{user.replace('_', '-')}.ventros-db.credentials.postgresql.acid.zalan.do"
        )
        secret = await kube.get(SECRET, name, namespace)
        assert secret is not None, name
        assert base64.b64decode(secret["data"]["username"]).decode() == user
        assert secret["data"]["password"], name


@pytest.mark.usefixtures("operator_crds")
@pytest.mark.parametrize(
    ("outcome", "status"),
    [("create-failed", "CreateFailed"), ("sync-failed", "SyncFailed")],
)
async def test_postgresql_steered_failure(
    kube: KubeClient, namespace: str, outcome: str, status: str
) -> None:
    """postgres-outcome on the resource makes the operator report that failure."""
    annotations = {STEER + "postgres-outcome": outcome}
    await kube.create(
        POSTGRESQL, postgresql_manifest("ventros-db", annotations), namespace
    )
    await wait_object(
        kube,
        POSTGRESQL,
        "ventros-db",
        namespace,
        lambda obj: postgres_status(obj) == status,
        f"to be {status}",
    )


@pytest.mark.usefixtures("operator_crds")
async def test_postgresql_namespace_steering(kube: KubeClient, namespace: str) -> None:
    """postgres-outcome on the namespace steers every postgresql in it."""
    await annotate_namespace(kube, namespace, "postgres-outcome", "create-failed")
    await kube.create(POSTGRESQL, postgresql_manifest("ventros-db"), namespace)
    await wait_object(
        kube,
        POSTGRESQL,
        "ventros-db",
        namespace,
        lambda obj: postgres_status(obj) == "CreateFailed",
        "to be CreateFailed",
    )


def rabbitmq_manifest(
    name: str, annotations: dict[str, str] | None = None
) -> JsonObject:
    return {
        "apiVersion": "rabbitmq.com/v1beta1",
        "kind": "RabbitmqCluster",
        "metadata": {"name": name, "annotations": annotations or {}},
        "spec": {"replicas": 1},
    }


def rabbitmq_settled(obj: JsonObject) -> bool:
    """Tell whether the operator finished reconciling the current generation."""
    observed = (obj.get("status") or {}).get("observedGeneration")
    settled = condition(obj, "ReconcileSuccess").get("status") in ("True", "False")
    return observed == obj["metadata"]["generation"] and settled


@pytest.mark.usefixtures("operator_crds")
async def test_rabbitmq_becomes_ready(kube: KubeClient, namespace: str) -> None:
    """The simulated RabbitMQ operator sets its conditions True for each generation."""
    await kube.create(RABBITMQ, rabbitmq_manifest("broker"), namespace)
    cluster = await wait_object(
        kube, RABBITMQ, "broker", namespace, rabbitmq_settled, "to settle"
    )
    for kind in ("AllReplicasReady", "ClusterAvailable", "ReconcileSuccess"):
        assert condition(cluster, kind)["status"] == "True", kind
    assert cluster["status"]["observedGeneration"] == cluster["metadata"]["generation"]
    assert await kube.get(STATEFULSET, "broker-server", namespace) is not None
    assert await kube.get(SERVICE, "broker", namespace) is not None
    assert await kube.get(SECRET, "broker-default-user", namespace) is not None

    # A spec change is a new generation, which the operator reconciles again.
    await kube.merge_patch(RABBITMQ, "broker", {"spec": {"replicas": 3}}, namespace)
    cluster = await wait_object(
        kube, RABBITMQ, "broker", namespace, rabbitmq_settled, "to settle"
    )
    assert cluster["metadata"]["generation"] == 2
    assert cluster["status"]["observedGeneration"] == 2
    assert condition(cluster, "ReconcileSuccess")["status"] == "True"


@pytest.mark.usefixtures("operator_crds")
async def test_rabbitmq_reconcile_failed(kube: KubeClient, namespace: str) -> None:
    """rabbitmq-outcome: reconcile-failed gives ReconcileSuccess False with a reason."""
    annotations = {STEER + "rabbitmq-outcome": "reconcile-failed"}
    await kube.create(RABBITMQ, rabbitmq_manifest("broker", annotations), namespace)
    cluster = await wait_object(
        kube, RABBITMQ, "broker", namespace, rabbitmq_settled, "to settle"
    )
    reconciled = condition(cluster, "ReconcileSuccess")
    assert reconciled["status"] == "False"
    assert reconciled["reason"] == "FailedReconcile"
    assert reconciled["message"]
    assert condition(cluster, "AllReplicasReady")["status"] == "False"


# -- custom resources without a served kind ----------------------------------


def write_manifest(folder: Path, obj: JsonObject) -> Path:
    path = folder / f"{obj['metadata']['name']}.json"
    path.write_text(json.dumps(obj))
    return path


async def test_cr_rejected_crd_not_established(
    cluster: LocalCluster,
    kube: KubeClient,
    namespace: str,
    scratch_crds: list[str],
    tmp_path: Path,
) -> None:
    """A custom resource whose CRD exists but is not Established has no kind match.

    A fresh CRD is Established 20-60 ms after it is created, so reaching it
    before that is a matter of chance (test_cr_rejected_fresh_crd). A CRD whose
    short name clashes with another CRD of its group never gets NamesAccepted,
    so it stays not Established for as long as this test needs.
    """
    group = f"t{uuid.uuid4().hex[:10]}.example.test"
    first = crd_manifest(group, "widgets", "Widget", ["wd"])
    await kube.create(CRD, first)
    scratch_crds.append(first["metadata"]["name"])
    await wait_object(
        kube,
        CRD,
        first["metadata"]["name"],
        None,
        lambda obj: condition(obj, "Established").get("status") == "True",
        "to be Established",
    )
    blocked = crd_manifest(group, "gadgets", "Gadget", ["wd"])
    await kube.create(CRD, blocked)
    scratch_crds.append(blocked["metadata"]["name"])
    crd = await wait_object(
        kube,
        CRD,
        blocked["metadata"]["name"],
        None,
        lambda obj: condition(obj, "NamesAccepted").get("status") == "False",
        "to have NamesAccepted False",
    )
    assert condition(crd, "NamesAccepted")["reason"] == "ShortNamesConflict"

    gadget = {
        "apiVersion": f"{group}/v1",
        "kind": "Gadget",
        "metadata": {"name": "one", "namespace": namespace},
        "spec": {"size": 1},
    }
    with pytest.raises(NoKindMatchError):
        await kube.apply(gadget)
    gadgets = ResourceType(f"{group}/v1", "Gadget", "gadgets", True)
    with pytest.raises(NotFoundError) as direct:
        await kube.create(gadgets, gadget, namespace)
    assert direct.value.status == 404
    result = cluster.kubectl(
        "apply", "-f", str(write_manifest(tmp_path, gadget)), check=False
    )
    assert result.returncode != 0
    assert "no matches for kind" in result.stderr
    crd_after = await kube.get(CRD, blocked["metadata"]["name"])
    assert crd_after is not None
    assert condition(crd_after, "Established").get("status") != "True"


async def test_cr_rejected_fresh_crd(kube: KubeClient, namespace: str) -> None:
    """A custom resource sent before its new CRD is Established has no kind match.

    The API server establishes a new CRD 20-60 ms after creating it. An apply
    sent at once landed in that window in a third to a half of the tries on a
    2-core machine, so 20 tries almost never all miss. A try counts only when
    the CRD is still not Established after the rejection.
    """
    attempts = 20
    for _ in range(attempts):
        group = f"t{uuid.uuid4().hex[:10]}.example.test"
        crd = crd_manifest(group, "widgets", "Widget", [])
        await kube.create(CRD, crd)
        widget = {
            "apiVersion": f"{group}/v1",
            "kind": "Widget",
            "metadata": {"name": "one", "namespace": namespace},
        }
        try:
            await kube.apply(widget)
            rejected = False
        except NoKindMatchError:
            rejected = True
        after = await kube.get(CRD, crd["metadata"]["name"])
        await kube.delete(CRD, crd["metadata"]["name"])
        assert after is not None
        if rejected and condition(after, "Established").get("status") != "True":
            return
    pytest.fail(
        f"no apply in {attempts} tries reached the API before its CRD was Established"
    )


async def test_cr_rejected_without_crd(
    cluster: LocalCluster, kube: KubeClient, namespace: str, tmp_path: Path
) -> None:
    """A custom resource of a group no CRD defines has no kind match."""
    group = f"t{uuid.uuid4().hex[:10]}.example.test"
    widget = {
        "apiVersion": f"{group}/v1",
        "kind": "Widget",
        "metadata": {"name": "one", "namespace": namespace},
    }
    with pytest.raises(NoKindMatchError):
        await kube.apply(widget)
    result = cluster.kubectl(
        "apply", "-f", str(write_manifest(tmp_path, widget)), check=False
    )
    assert result.returncode != 0
    assert "no matches for kind" in result.stderr


# -- pod steering --------------------------------------------------------------


async def test_pod_held_in_init(kube: KubeClient, namespace: str) -> None:
    """hold-init keeps the pod in Init with the named init container running."""
    await wait_default_service_account(kube, namespace)
    annotations = {STEER + "hold-init": "wait-for-x"}
    manifest = pod_manifest("held", annotations, ["setup", "wait-for-x"], ["main"])
    await kube.create(POD, manifest, namespace)

    def init_reported(pod: JsonObject) -> bool:
        return bool(container_status(pod, "initContainerStatuses", "wait-for-x"))

    pod = await wait_object(
        kube, POD, "held", namespace, init_reported, "to report init containers"
    )
    assert pod["status"]["phase"] == "Pending"
    assert condition(pod, "Initialized")["status"] == "False"
    assert condition(pod, "Ready")["status"] == "False"
    held_init = container_status(pod, "initContainerStatuses", "wait-for-x")
    assert "running" in held_init["state"]
    setup = container_status(pod, "initContainerStatuses", "setup")
    assert setup["state"]["terminated"]["exitCode"] == 0
    main = container_status(pod, "containerStatuses", "main")
    assert main["state"]["waiting"]["reason"] == "PodInitializing"


async def test_pod_crashloop(kube: KubeClient, namespace: str) -> None:
    """crashloop puts the named container in CrashLoopBackOff and the pod not Ready."""
    await wait_default_service_account(kube, namespace)
    annotations = {STEER + "crashloop": "main"}
    manifest = pod_manifest("crashing", annotations, [], ["main", "sidecar"])
    await kube.create(POD, manifest, namespace)

    def main_reported(pod: JsonObject) -> bool:
        return bool(container_status(pod, "containerStatuses", "main"))

    pod = await wait_object(
        kube, POD, "crashing", namespace, main_reported, "to report containers"
    )
    main = container_status(pod, "containerStatuses", "main")
    assert main["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    assert main["restartCount"] > 0
    assert main["lastState"]["terminated"]["exitCode"] == 1
    sidecar = container_status(pod, "containerStatuses", "sidecar")
    assert "running" in sidecar["state"]
    assert condition(pod, "Ready")["status"] == "False"


async def test_held_pod_released(kube: KubeClient, namespace: str) -> None:
    """Removing a namespace's hold-init annotation lets its held pod become Ready."""
    await wait_default_service_account(kube, namespace)
    await annotate_namespace(kube, namespace, "hold-init", "wait-for-x")
    await kube.create(
        POD, pod_manifest("held", {}, ["wait-for-x"], ["main"]), namespace
    )

    def held_in_init(pod: JsonObject) -> bool:
        init = container_status(pod, "initContainerStatuses", "wait-for-x")
        return "running" in init.get("state", {})

    pod = await wait_object(
        kube, POD, "held", namespace, held_in_init, "to be held in Init"
    )
    assert condition(pod, "Ready")["status"] == "False"

    await annotate_namespace(kube, namespace, "hold-init", None)
    pod = await wait_object(
        kube,
        POD,
        "held",
        namespace,
        lambda obj: condition(obj, "Ready").get("status") == "True",
        "to be Ready",
    )
    assert pod["status"]["phase"] == "Running"
    init = container_status(pod, "initContainerStatuses", "wait-for-x")
    assert init["state"]["terminated"]["exitCode"] == 0


def wait_container(name: str, host: str, port: int, seconds: int = 300) -> JsonObject:
    """An init container shaped like the chart's wait-for-<service> containers."""
    env = {"WAIT_HOST": host, "WAIT_PORT": str(port), "WAIT_SECONDS": str(seconds)}
    return {
        "name": name,
        "image": IMAGE,
        "env": [{"name": key, "value": value} for key, value in env.items()],
    }


def is_ready(pod: JsonObject) -> bool:
    return condition(pod, "Ready").get("status") == "True"


def secret_object(name: str, **values: str) -> JsonObject:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "data": secret_data(**values),
    }


def secret_data(**values: str) -> JsonObject:
    return {
        key: base64.b64encode(value.encode()).decode() for key, value in values.items()
    }


async def start_password_reader(
    kube: KubeClient, namespace: str, name: str, secret: str
) -> JsonObject:
    """Create a pod that reads PASSWORD from secret; return its first waiting state."""
    await wait_default_service_account(kube, namespace)
    manifest = pod_manifest(name, {}, [], ["main"])
    manifest["spec"]["containers"][0]["env"] = [
        {
            "name": "PASSWORD",
            "valueFrom": {"secretKeyRef": {"name": secret, "key": "password"}},
        }
    ]
    await kube.create(POD, manifest, namespace)

    def waiting(pod: JsonObject) -> bool:
        state = container_status(pod, "containerStatuses", "main").get("state", {})
        return "waiting" in state

    pod = await wait_object(
        kube, POD, name, namespace, waiting, "to report its container"
    )
    state: JsonObject = container_status(pod, "containerStatuses", "main")["state"]
    return state["waiting"]


async def test_pod_waits_for_secret(kube: KubeClient, namespace: str) -> None:
    """A pod reading a missing Secret stays Pending until the Secret exists."""
    waiting = await start_password_reader(kube, namespace, "reader", "later")
    assert waiting["reason"] == "CreateContainerConfigError"
    assert waiting["message"] == 'secret "later" not found'
    await asyncio.sleep(1.5)
    later = await kube.get(POD, "reader", namespace)
    assert later is not None
    assert later["status"]["phase"] == "Pending"

    await kube.create(SECRET, secret_object("later", password="x"), namespace)
    pod = await wait_object(kube, POD, "reader", namespace, is_ready, "to be Ready")
    assert pod["status"]["phase"] == "Running"


async def test_pod_waits_for_secret_key(kube: KubeClient, namespace: str) -> None:
    """A pod reading a key its Secret lacks stays Pending until the key exists."""
    await kube.create(SECRET, secret_object("partial", username="u"), namespace)
    waiting = await start_password_reader(kube, namespace, "key-reader", "partial")
    assert waiting["reason"] == "CreateContainerConfigError"
    assert waiting["message"] == (
        f"couldn't find key password in Secret {namespace}/partial"
    )

    patch = {"data": secret_data(password="p")}
    await kube.merge_patch(SECRET, "partial", patch, namespace)
    pod = await wait_object(kube, POD, "key-reader", namespace, is_ready, "Ready")
    assert pod["status"]["phase"] == "Running"


@pytest.mark.parametrize("kind", ["secret", "projected"])
async def test_pod_waits_for_secret_volume(
    kube: KubeClient, namespace: str, kind: str
) -> None:
    """A pod mounting a missing Secret shows ContainerCreating until it exists,
    and a mounted key it lacks keeps it Pending the same way."""
    await wait_default_service_account(kube, namespace)
    reference: JsonObject = {"items": [{"key": "tls.crt", "path": "tls.crt"}]}
    if kind == "secret":
        volume = {"name": "certs", "secret": {"secretName": "certs", **reference}}
    else:
        sources = [{"secret": {"name": "certs", **reference}}]
        volume = {"name": "certs", "projected": {"sources": sources}}
    manifest = pod_manifest("mounter", {}, [], ["main"])
    manifest["spec"]["volumes"] = [volume]
    await kube.create(POD, manifest, namespace)

    def creating(pod: JsonObject) -> bool:
        state = container_status(pod, "containerStatuses", "main").get("state", {})
        return state.get("waiting", {}).get("reason") == "ContainerCreating"

    await wait_object(kube, POD, "mounter", namespace, creating, "ContainerCreating")
    mount_failed = 'MountVolume.SetUp failed for volume "certs" : '
    assert await failed_mounts(kube, namespace, "mounter", 1) == [
        mount_failed + 'secret "certs" not found'
    ]
    await kube.create(SECRET, secret_object("certs", **{"tls.key": "k"}), namespace)
    assert (await failed_mounts(kube, namespace, "mounter", 2))[1] == (
        mount_failed + "references non-existent secret key: tls.crt"
    )
    pod = await kube.get(POD, "mounter", namespace)
    assert pod is not None
    assert creating(pod), "the pod started without the mounted key tls.crt"
    assert pod["status"]["phase"] == "Pending"

    patch = {"data": secret_data(**{"tls.crt": "c"})}
    await kube.merge_patch(SECRET, "certs", patch, namespace)
    pod = await wait_object(kube, POD, "mounter", namespace, is_ready, "Ready")
    assert pod["status"]["phase"] == "Running"


async def failed_mounts(
    kube: KubeClient, namespace: str, pod: str, count: int
) -> list[str]:
    """Return the messages of the pod's FailedMount events once there are count."""
    selector = f"involvedObject.name={pod},reason=FailedMount"
    messages: list[str] = []
    for _ in range(50):
        events = await kube.list(EVENT, namespace, field_selector=selector)
        items = sorted(
            events["items"], key=lambda e: int(e["metadata"]["resourceVersion"])
        )
        messages = [e["message"] for e in items]
        if len(messages) >= count:
            assert all(e["type"] == "Warning" for e in items)
            assert all(e["source"]["component"] == "kubelet" for e in items)
            return messages
        await asyncio.sleep(0.1)
    pytest.fail(f"pod {pod}: {count} FailedMount events expected, got {messages}")


async def test_optional_secret_not_waited(kube: KubeClient, namespace: str) -> None:
    """An optional Secret reference does not keep the pod from starting."""
    await wait_default_service_account(kube, namespace)
    manifest = pod_manifest("optional", {}, [], ["main"])
    manifest["spec"]["containers"][0]["envFrom"] = [
        {"secretRef": {"name": "never", "optional": True}}
    ]
    await kube.create(POD, manifest, namespace)
    await wait_object(kube, POD, "optional", namespace, is_ready, "to be Ready")


async def test_wait_for_init_container_waits_for_endpoints(
    kube: KubeClient, namespace: str
) -> None:
    """A wait-for init container runs until its Service has a ready endpoint."""
    await wait_default_service_account(kube, namespace)
    manifest = pod_manifest("client", {}, [], ["main"])
    manifest["spec"]["initContainers"] = [
        wait_container("wait-for-outside", "db.example.org", 5432),
        wait_container("wait-for-db", "db", 5432),
    ]
    await kube.create(POD, manifest, namespace)

    def waiting_for_db(pod: JsonObject) -> bool:
        init = container_status(pod, "initContainerStatuses", "wait-for-db")
        return "running" in init.get("state", {})

    pod = await wait_object(
        kube, POD, "client", namespace, waiting_for_db, "to wait for db"
    )
    outside = container_status(pod, "initContainerStatuses", "wait-for-outside")
    assert outside["state"]["terminated"]["exitCode"] == 0
    assert condition(pod, "Initialized")["status"] == "False"

    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "db"},
        "spec": {"selector": {"app": "db"}, "ports": [{"port": 5432}]},
    }
    await kube.create(SERVICE, service, namespace)
    await asyncio.sleep(2.5)  # The Service without endpoints: still waiting.
    later = await kube.get(POD, "client", namespace)
    assert later is not None
    assert waiting_for_db(later)

    server = pod_manifest("db-0", {}, [], ["postgres"])
    server["metadata"]["labels"] = {"app": "db"}
    await kube.create(POD, server, namespace)
    pod = await wait_object(kube, POD, "client", namespace, is_ready, "to be Ready")
    init = container_status(pod, "initContainerStatuses", "wait-for-db")
    assert init["state"]["terminated"]["exitCode"] == 0


async def test_wait_for_init_container_gives_up(
    kube: KubeClient, namespace: str
) -> None:
    """A Job pod fails when its wait-for init container times out (exit 1)."""
    await wait_default_service_account(kube, namespace)
    job = job_manifest("migrate", backoff_limit=0)
    job["spec"]["template"]["spec"]["initContainers"] = [
        wait_container("wait-for-postgres", "missing-db", 5432, seconds=1)
    ]
    await kube.create(JOB, job, namespace)
    finished = await wait_object(kube, JOB, "migrate", namespace, job_finished, "end")
    assert condition(finished, "Failed")["status"] == "True"
    pods = await kube.list(POD, namespace, label_selector="job-name=migrate")
    [pod] = pods["items"]
    init = container_status(pod, "initContainerStatuses", "wait-for-postgres")
    assert init["state"]["terminated"]["exitCode"] == 1


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("db", ("db", "app")),
        ("db.app", ("db", "app")),
        ("db.app.svc.cluster.local.", ("db", "app")),
        ("db-0.db.other.svc.cluster.local", ("db", "other")),
        ("db.missing.svc", None),
        ("db.example.org", None),
        ("10.0.0.5", None),
        ("[fd00::1]", None),
    ],
)
def test_wait_host_names(host: str, expected: tuple[str, str] | None) -> None:
    """Hosts of wait-for containers map to a cluster Service, or to outside."""
    assert _cluster_service(host, "app", {"app", "other"}) == expected
