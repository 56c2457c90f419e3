"""Destroy removes a release in reverse deploy order. RabbitMQ goes only once
the app is gone and its queues are empty, or with --force. PostgreSQL goes
only with --delete-data. A namespace that stays Terminating is reported with
its conditions."""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from temporalio.client import WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from activities.deploy import CONFIG_MAP, history_name, migrations_name
from activities.helm import Helm
from activities.kubeapi import KubeClient, ResourceType, well_known
from client.cli import live_statuses
from deployer import contracts
from deployer.lifecycle import DestroyStatus
from deployer.phases import TEARDOWN_ORDER, PhaseState
from deployer.settings import WorkerSettings
from testbed.leftovers import delete_release_leftovers, remove_namespace
from tests.conftest import (
    REPO_ROOT,
    keep_history,
    leaving_clusters_gone,
    running_worker,
)
from tests.lifecycle.conftest import (
    DEPLOYMENT,
    JOB,
    MESSAGES,
    NAMESPACE,
    POSTGRESQL,
    RABBITMQ,
    RELEASE,
    annotate,
    cli_env,
    deploy,
    record,
    run_cli,
    start_deploy,
    start_destroy,
    wait_for_step,
)

POD = well_known("v1", "Pod")
STATEFULSET = well_known("apps/v1", "StatefulSet")
CONFIGMAP = ResourceType("v1", "ConfigMap", "configmaps", True)
HOLD_FINALIZER = "example.test/hold"
RABBITMQ_FINALIZER = "deletion.finalizers.rabbitmqclusters.rabbitmq.com"
FINALIZER_STEER = "sim.ventros.io/rabbitmq-finalizer"


@dataclass
class Deletion:
    kind: str
    name: str
    labels: dict[str, str]
    revision: int


@dataclass
class DeletionRecorder:
    """Keep each DELETED event of some kinds in one namespace.

    With a single etcd, the resourceVersion of a DELETED event is the etcd
    revision of the deletion, so it orders deletions of different kinds on
    one clock. Kubernetes calls resourceVersion opaque; this test relies on
    the test bed's one etcd.
    """

    kube: KubeClient
    namespace: str
    deletions: list[Deletion] = field(default_factory=list)

    @asynccontextmanager
    async def recording(self, kinds: list[ResourceType]) -> AsyncIterator[None]:
        tasks = []
        for rtype in kinds:
            listing = await self.kube.list(rtype, self.namespace)
            version = listing["metadata"]["resourceVersion"]
            tasks.append(asyncio.create_task(self._watch(rtype, version)))
        try:
            yield
            await asyncio.sleep(1.0)  # Let the last events arrive.
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _watch(self, rtype: ResourceType, version: str) -> None:
        async for event in self.kube.watch(
            rtype, self.namespace, resource_version=version, timeout_s=600
        ):
            if event["type"] != "DELETED":
                continue
            metadata = event["object"]["metadata"]
            self.deletions.append(
                Deletion(
                    kind=rtype.kind,
                    name=metadata["name"],
                    labels=metadata.get("labels") or {},
                    revision=int(metadata["resourceVersion"]),
                )
            )

    def revisions(self, kind: str, name: str, exact: bool = False) -> list[int]:
        """Return the revisions of deletions of kind whose name starts with name."""
        found = [
            d.revision
            for d in self.deletions
            if d.kind == kind and (d.name == name if exact else d.name.startswith(name))
        ]
        assert found, f"no {kind} named {name} was deleted: {self.deletions}"
        return found

    def app_pods(self) -> list[int]:
        found = [
            d.revision
            for d in self.deletions
            if d.kind == "Pod" and d.labels.get("deploy.ventros.io/phase") == "app"
        ]
        assert found, f"no app pod was deleted: {self.deletions}"
        return found


async def destroy_status(handle: WorkflowHandle[Any, Any]) -> DestroyStatus:
    return DestroyStatus.model_validate(await handle.result())


async def helm_releases(settings: WorkerSettings, namespace: str) -> list[str]:
    helm = Helm(settings.helm, str(settings.kubeconfig), None, REPO_ROOT)
    out = await helm.run(["list", f"--namespace={namespace}", "--output=json"])
    return sorted(entry["name"] for entry in json.loads(out))


async def drain_status(env: WorkflowEnvironment, handle: Any, text: str) -> str:
    """Poll the drain wait's heartbeat until its status contains text."""
    status = ""
    for _ in range(100):
        statuses = await live_statuses(env.client, handle)
        status = statuses.get(contracts.DRAIN_KEY, "")
        if text in status:
            return status
        await asyncio.sleep(0.3)
    raise AssertionError(f"the drain status never contained {text!r}: {status!r}")


async def test_destroy_reverse_order(
    temporal_env: WorkflowEnvironment,
    lifecycle_settings: WorkerSettings,
    kube: KubeClient,
    namespace: str,
) -> None:
    """destroy --delete-data removes app, migration, Temporal, Redis, RabbitMQ,
    PostgreSQL and base in that order, deleting RabbitMQ only after the last
    app pod is gone, and leaves no release behind."""
    recorder = DeletionRecorder(kube, namespace)
    kinds = [DEPLOYMENT, POD, JOB, STATEFULSET, RABBITMQ, POSTGRESQL, CONFIGMAP]
    async with running_worker(temporal_env.client, lifecycle_settings):
        await deploy(temporal_env, lifecycle_settings, namespace, "1.0.0")
        async with recorder.recording(kinds):
            handle = await start_destroy(
                temporal_env, lifecycle_settings, namespace, delete_data=True
            )
            status = await destroy_status(handle)
    assert status.state == "succeeded"
    assert [r.phase for r in status.phases] == list(TEARDOWN_ORDER)
    for step in status.phases:
        assert step.state is PhaseState.SUCCEEDED, step.phase

    app = max(recorder.revisions("Deployment", RELEASE, exact=True))
    app = max([app, *recorder.app_pods()])
    migration = recorder.revisions("Job", f"{RELEASE}-migrate-")
    temporal = recorder.revisions("Deployment", f"{RELEASE}-temporal")
    redis = recorder.revisions("StatefulSet", f"{RELEASE}-redis")
    rabbitmq = recorder.revisions("RabbitmqCluster", f"{RELEASE}-rabbitmq")
    postgresql = recorder.revisions("postgresql", f"{RELEASE}-db")
    base = recorder.revisions("ConfigMap", f"{RELEASE}-config")
    assert max(recorder.app_pods()) < min(rabbitmq)
    assert app < min(migration)
    assert max(migration) < min(temporal)
    assert max(temporal) < min(redis)
    assert max(redis) < min(rabbitmq)
    assert max(rabbitmq) < min(postgresql)
    assert max(postgresql) < min(base)

    assert await helm_releases(lifecycle_settings, namespace) == []
    for rtype in (DEPLOYMENT, STATEFULSET, JOB, RABBITMQ, POSTGRESQL):
        listing = await kube.list(rtype, namespace)
        assert listing["items"] == [], rtype.kind


async def test_destroy_waits_for_queues(
    temporal_env: WorkflowEnvironment,
    lifecycle_settings: WorkerSettings,
    kube: KubeClient,
    namespace: str,
) -> None:
    """With 5 messages queued the messaging step keeps running and reports the
    count; once the queues are empty it deletes the RabbitMQ cluster. The
    rollback's note of revisions that ran stays until the base step."""
    rabbit = f"{RELEASE}-rabbitmq"
    async with running_worker(temporal_env.client, lifecycle_settings):
        await deploy(temporal_env, lifecycle_settings, namespace, "1.0.0")
        await annotate(kube, RABBITMQ, rabbit, namespace, {MESSAGES: "5"})
        handle = await start_destroy(
            temporal_env,
            lifecycle_settings,
            namespace,
            delete_data=True,
            drain_timeout_s=120,
        )
        await wait_for_step(handle, "messaging", PhaseState.RUNNING)
        waiting = await drain_status(temporal_env, handle, "5 messages")
        table = await run_cli(
            ["status", handle.id], cli_env(temporal_env, lifecycle_settings)
        )
        as_json = await run_cli(
            ["status", handle.id, "--json"], cli_env(temporal_env, lifecycle_settings)
        )
        held = await kube.get(RABBITMQ, rabbit, namespace)
        # The note of the base release's revisions stays while the release does.
        history_held = await kube.get(CONFIG_MAP, history_name(RELEASE), namespace)
        still_running = await handle.query("status", result_type=DestroyStatus)
        # A deploy of the same release is refused while the destroy runs.
        refused = await run_cli(
            ["start", "--release", RELEASE, "--namespace", namespace],
            cli_env(temporal_env, lifecycle_settings),
        )

        await annotate(kube, RABBITMQ, rabbit, namespace, {MESSAGES: "0"})
        status = await destroy_status(handle)
    print(f"drain status while waiting: {waiting}")
    assert f"rabbitmqcluster/{rabbit}: 5 messages in 1 queue (" in waiting
    # The table and the JSON both show the count, not only that it waits.
    assert "5 messages in 1 queue" in " ".join(table.stdout.replace("│", " ").split())
    live = json.loads(as_json.stdout)["live"]
    assert "5 messages in 1 queue" in live[contracts.DRAIN_KEY]
    assert held is not None
    assert refused.returncode == 3
    assert f"a destroy of {RELEASE} in {namespace} is running" in refused.stderr
    assert record(still_running, "messaging").state is PhaseState.RUNNING
    assert record(still_running, "messaging").waiting_on == [contracts.DRAIN_KEY]
    assert status.state == "succeeded"
    messaging = record(status, "messaging")
    assert messaging.last_status is not None
    assert "0 messages" in messaging.last_status
    assert await kube.get(RABBITMQ, rabbit, namespace) is None
    assert history_held is not None
    assert await kube.get(CONFIG_MAP, history_name(RELEASE), namespace) is None
    await keep_history(handle, "destroy_with_drain")


async def test_destroy_force_skips_drain(
    temporal_env: WorkflowEnvironment,
    lifecycle_settings: WorkerSettings,
    kube: KubeClient,
    namespace: str,
) -> None:
    """`ventros-deploy destroy ID --force` deletes RabbitMQ with 5 messages
    still queued, without a drain wait."""
    rabbit = f"{RELEASE}-rabbitmq"
    async with running_worker(temporal_env.client, lifecycle_settings):
        await deploy(temporal_env, lifecycle_settings, namespace, "1.0.0")
        await annotate(kube, RABBITMQ, rabbit, namespace, {MESSAGES: "5"})
        result = await run_cli(
            [
                "destroy",
                f"deploy-{namespace}.{RELEASE}",
                "--force",
                "--delete-data",
                "--follow",
                "--json",
            ],
            cli_env(temporal_env, lifecycle_settings),
        )
    print(result.stdout, result.stderr)
    assert result.returncode == 0
    status = DestroyStatus.model_validate(json.loads(result.stdout.splitlines()[-1]))
    assert status.workflow_id == f"destroy-{namespace}.{RELEASE}"
    assert status.state == "succeeded"
    messaging = record(status, "messaging")
    assert messaging.last_status is not None
    assert "drain check skipped: force is set" in messaging.last_status
    assert await kube.get(RABBITMQ, rabbit, namespace) is None


async def test_destroy_keeps_data_unless_asked(
    temporal_env: WorkflowEnvironment,
    lifecycle_settings: WorkerSettings,
    kube: KubeClient,
    namespace: str,
) -> None:
    """Without --delete-data the postgresql and its operator stay, and the
    result names the command that deletes them. The versions the database
    migrated to stay noted, so a deploy of one of them again does not run
    its migration. A second destroy with the option deletes them all."""
    database = f"{RELEASE}-db"
    async with running_worker(temporal_env.client, lifecycle_settings):
        await deploy(temporal_env, lifecycle_settings, namespace, "1.0.0")
        kept = await destroy_status(
            await start_destroy(temporal_env, lifecycle_settings, namespace)
        )
        pg_kept = await kube.get(POSTGRESQL, database, namespace)
        releases_kept = await helm_releases(lifecycle_settings, namespace)
        again = await deploy(temporal_env, lifecycle_settings, namespace, "1.0.0")
        migrated_again = await kube.get(JOB, f"{RELEASE}-migrate-1-0-0", namespace)
        deleted = await destroy_status(
            await start_destroy(
                temporal_env, lifecycle_settings, namespace, delete_data=True
            )
        )
    print(kept.message)
    assert kept.state == "succeeded"
    assert pg_kept is not None
    assert releases_kept == [f"{RELEASE}-postgres-operator"]
    assert kept.message is not None
    assert f"postgresql/{database}" in kept.message
    assert "--delete-data" in kept.message
    assert any(line.startswith(f"postgresql/{database}") for line in kept.kept)
    assert any(line.startswith("persistentvolumeclaim/data-") for line in kept.kept)
    assert await kube.get(DEPLOYMENT, RELEASE, namespace) is None
    assert await kube.get(RABBITMQ, f"{RELEASE}-rabbitmq", namespace) is None

    assert f"configmap/{migrations_name(RELEASE)} with the app versions" in (
        " ".join(kept.kept)
    )
    assert again.state == "succeeded"
    assert migrated_again is None
    migration = record(again, "migration")
    assert migration.last_status is not None
    assert "app version 1.0.0 migrated at" in migration.last_status

    assert deleted.state == "succeeded"
    assert deleted.kept == []
    assert await kube.get(POSTGRESQL, database, namespace) is None
    assert await kube.get(CONFIG_MAP, migrations_name(RELEASE), namespace) is None
    assert await helm_releases(lifecycle_settings, namespace) == []


async def test_destroy_without_operators_keeps_no_operator(
    temporal_env: WorkflowEnvironment,
    lifecycle_settings: WorkerSettings,
    kube: KubeClient,
    namespace: str,
) -> None:
    """A release deployed with install_operators false, on the operators of
    another namespace, keeps its postgresql on destroy. The kept list names
    no operator release, since none was installed in its namespace."""
    second = f"{namespace}-b"
    await kube.create(
        NAMESPACE,
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": second}},
    )
    try:
        async with running_worker(temporal_env.client, lifecycle_settings):
            await deploy(temporal_env, lifecycle_settings, namespace, "1.0.0")
            await deploy(
                temporal_env,
                lifecycle_settings,
                second,
                "1.0.0",
                install_operators=False,
            )
            kept = await destroy_status(
                await start_destroy(temporal_env, lifecycle_settings, second)
            )
    finally:
        await remove_namespace(kube, second)

    print(kept.kept)
    assert kept.state == "succeeded"
    assert any(line.startswith(f"postgresql/{RELEASE}-db") for line in kept.kept)
    assert not any(line.startswith("helm release") for line in kept.kept)


async def test_destroy_unreachable_management_api(
    temporal_env: WorkflowEnvironment,
    lifecycle_settings: WorkerSettings,
    kube: KubeClient,
    namespace: str,
) -> None:
    """When the management API cannot be reached, the drain wait reports it
    until its timeout. Then the step fails with an error that suggests --force."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    settings = lifecycle_settings.model_copy(
        update={
            "rabbitmq_management_url": f"http://127.0.0.1:{closed_port}"
            "/api/namespaces/{namespace}/{name}"
        }
    )
    async with running_worker(temporal_env.client, settings):
        await deploy(temporal_env, settings, namespace, "1.0.0")
        handle = await start_destroy(
            temporal_env, settings, namespace, drain_timeout_s=10
        )
        waiting = await drain_status(temporal_env, handle, "management API unreachable")
        status = await wait_for_step(
            handle, "messaging", PhaseState.WAITING_FOR_RETRY, timeout_s=60
        )
        await handle.execute_update("abort", "test ends", result_type=str)
        with pytest.raises(WorkflowFailureError):
            await handle.result()
    print(waiting)
    messaging = record(status, "messaging")
    assert messaging.error_type == contracts.QUEUES_NOT_DRAINED
    assert messaging.error is not None
    assert "management API unreachable" in messaging.error
    assert "--force" in messaging.error
    assert await kube.get(RABBITMQ, f"{RELEASE}-rabbitmq", namespace) is not None


async def test_destroy_reports_kept_operator_finalizer(
    temporal_env: WorkflowEnvironment,
    lifecycle_settings: WorkerSettings,
    kube: KubeClient,
    namespace: str,
) -> None:
    """A RabbitmqCluster whose operator finalizer stays (as when the operator
    is gone) fails the messaging step at its timeout, naming the finalizer.
    Once the operator removes it, a retry finishes the destroy."""
    rabbit = f"{RELEASE}-rabbitmq"
    async with running_worker(temporal_env.client, lifecycle_settings):
        await deploy(temporal_env, lifecycle_settings, namespace, "1.0.0")
        deployed = await kube.get(RABBITMQ, rabbit, namespace)
        await annotate(kube, RABBITMQ, rabbit, namespace, {FINALIZER_STEER: "keep"})
        try:
            handle = await start_destroy(
                temporal_env,
                lifecycle_settings,
                namespace,
                force=True,
                delete_data=True,
                timeouts={"messaging": 10},
            )
            timed_out = await wait_for_step(
                handle, "messaging", PhaseState.WAITING_FOR_RETRY, timeout_s=90
            )
        finally:
            # Let the cluster go even when the test fails, or its namespace
            # would never finish terminating.
            await annotate(
                kube, RABBITMQ, rabbit, namespace, {FINALIZER_STEER: "remove"}
            )
        await handle.execute_update("retry", "messaging", result_type=list[str])
        status = await destroy_status(handle)

    assert deployed is not None
    assert RABBITMQ_FINALIZER in deployed["metadata"]["finalizers"]
    messaging = record(timed_out, "messaging")
    assert messaging.error_type == contracts.DELETION_TIMEOUT
    assert messaging.error is not None
    assert f"rabbitmqcluster/{rabbit}" in messaging.error
    assert f"held by finalizers {RABBITMQ_FINALIZER}" in messaging.error
    assert record(timed_out, "data").state is PhaseState.PENDING
    assert status.state == "succeeded"
    assert record(status, "messaging").attempts == 2
    assert await kube.get(RABBITMQ, rabbit, namespace) is None


async def test_destroy_stuck_namespace(
    temporal_env: WorkflowEnvironment,
    lifecycle_settings: WorkerSettings,
    kube: KubeClient,
) -> None:
    """A namespace held by an object's finalizer stays Terminating; the base
    step fails naming its conditions, and retry finishes once it is released.
    The held object carries the release's instance label, so the destroy finds
    the release there and may delete the namespace."""
    namespace = f"t-{uuid.uuid4().hex[:10]}"
    await kube.create(
        NAMESPACE,
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
    )
    held = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "held",
            "finalizers": [HOLD_FINALIZER],
            "labels": {"app.kubernetes.io/instance": RELEASE},
        },
    }
    await kube.create(CONFIGMAP, held, namespace)
    try:
        async with running_worker(temporal_env.client, lifecycle_settings):
            handle = await start_destroy(
                temporal_env,
                lifecycle_settings,
                namespace,
                delete_data=True,
                delete_namespace=True,
                namespace_timeout_s=45,
            )
            stuck = await wait_for_step(
                handle, "base", PhaseState.WAITING_FOR_RETRY, timeout_s=120
            )
            await kube.merge_patch(
                CONFIGMAP, "held", {"metadata": {"finalizers": None}}, namespace
            )
            await handle.execute_update("retry", "base", result_type=list[str])
            status = await destroy_status(handle)
    finally:
        # Never leave a namespace stuck in the shared cluster.
        if await kube.get(CONFIGMAP, "held", namespace) is not None:
            await kube.merge_patch(
                CONFIGMAP, "held", {"metadata": {"finalizers": None}}, namespace
            )
        await kube.delete(NAMESPACE, namespace)
        await delete_release_leftovers(kube, namespace)
    base = record(stuck, "base")
    print(base.error)
    assert base.error_type == contracts.NAMESPACE_STUCK
    assert base.error is not None
    assert f"namespace {namespace} still exists after 45 s: Terminating" in base.error
    assert "NamespaceFinalizersRemaining" in base.error
    assert HOLD_FINALIZER in base.error
    assert status.state == "succeeded"
    assert await kube.get(NAMESPACE, namespace) is None


def foreign_object(kind: str, name: str, release: str) -> dict[str, Any]:
    """Return a postgresql or RabbitmqCluster of another release."""
    api_version = {
        "postgresql": "acid.zalan.do/v1",
        "RabbitmqCluster": "rabbitmq.com/v1beta1",
    }[kind]
    spec: dict[str, Any] = {"replicas": 1}
    if kind == "postgresql":
        spec = {
            "teamId": "other",
            "numberOfInstances": 1,
            "volume": {"size": "1Gi"},
            "postgresql": {"version": "16"},
        }
    return {
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {
            "name": name,
            "labels": {"app.kubernetes.io/instance": release},
        },
        "spec": spec,
    }


async def test_destroy_keeps_operators_in_use(
    temporal_env: WorkflowEnvironment,
    lifecycle_settings: WorkerSettings,
    kube: KubeClient,
    namespace: str,
) -> None:
    """The operators this release installed manage a postgresql of a release in
    another namespace and a RabbitmqCluster of another release in this one.
    Destroy with --delete-namespace then fails in its first step, before it
    deletes anything.
    Without it, the operators stay and the result names their users. Once those
    objects are gone, a new destroy removes the operators and the namespace."""
    other_namespace = f"t-{uuid.uuid4().hex[:10]}"
    await kube.create(
        NAMESPACE,
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": other_namespace},
        },
    )
    operators = [f"{RELEASE}-postgres-operator", f"{RELEASE}-rabbitmq-operator"]
    try:
        async with running_worker(temporal_env.client, lifecycle_settings):
            await deploy(temporal_env, lifecycle_settings, namespace, "1.0.0")
            await kube.create(
                POSTGRESQL,
                foreign_object("postgresql", "other-db", "other"),
                other_namespace,
            )
            await kube.create(
                RABBITMQ,
                foreign_object("RabbitmqCluster", "other-rabbitmq", "other"),
                namespace,
            )

            handle = await start_destroy(
                temporal_env,
                lifecycle_settings,
                namespace,
                delete_data=True,
                delete_namespace=True,
            )
            failed = await wait_for_step(
                handle, "app", PhaseState.WAITING_FOR_RETRY, timeout_s=120
            )
            releases_after_failure = await helm_releases(lifecycle_settings, namespace)
            app_after_failure = await kube.get(DEPLOYMENT, RELEASE, namespace)
            await handle.execute_update("abort", "test ends", result_type=str)
            with pytest.raises(WorkflowFailureError):
                await handle.result()

            kept = await destroy_status(
                await start_destroy(
                    temporal_env, lifecycle_settings, namespace, delete_data=True
                )
            )
            releases_kept = await helm_releases(lifecycle_settings, namespace)

            await kube.delete(POSTGRESQL, "other-db", other_namespace)
            await kube.delete(RABBITMQ, "other-rabbitmq", namespace)
            await leaving_clusters_gone(kube)
            removed = await destroy_status(
                await start_destroy(
                    temporal_env,
                    lifecycle_settings,
                    namespace,
                    delete_data=True,
                    delete_namespace=True,
                )
            )
    finally:
        await remove_namespace(kube, other_namespace)

    first = record(failed, "app")
    print(first.error)
    assert first.error_type == contracts.OPERATORS_IN_USE
    assert first.error is not None
    assert (
        f"objects of other releases (postgresql/other-db in namespace "
        f"{other_namespace})" in first.error
    )
    assert f"rabbitmqcluster/other-rabbitmq in namespace {namespace}" in first.error
    assert "without --delete-namespace" in first.error
    # The first step checked before it deleted anything: the Temporal release
    # and the app are still there.
    assert releases_after_failure == sorted(
        [RELEASE, f"{RELEASE}-temporal", *operators]
    )
    assert app_after_failure is not None
    assert all(r.attempts == 0 for r in failed.phases if r.phase.value != "app")

    print(kept.message)
    assert kept.state == "succeeded"
    assert releases_kept == operators
    for operator in operators:
        assert any(
            line.startswith(f"helm release {operator}: it manages")
            for line in kept.kept
        ), operator
    assert kept.message is not None
    assert f"postgresql/other-db in namespace {other_namespace}" in kept.message

    assert removed.state == "succeeded"
    assert removed.kept == []
    assert await kube.get(NAMESPACE, namespace) is None


async def test_destroy_unknown_context_fails_once(
    temporal_env: WorkflowEnvironment,
    lifecycle_settings: WorkerSettings,
    namespace: str,
) -> None:
    """A kube_context missing from the worker's kubeconfig fails the first step
    once, naming the context, and ends the destroy as invalid before anything
    is deleted."""
    async with running_worker(temporal_env.client, lifecycle_settings):
        handle = await start_destroy(
            temporal_env, lifecycle_settings, namespace, kube_context="nope"
        )
        with pytest.raises(WorkflowFailureError):
            await asyncio.wait_for(handle.result(), timeout=30)
        status = await handle.query("status", result_type=DestroyStatus)
    assert status.state == "invalid"
    app = record(status, "app")
    assert app.state is PhaseState.FAILED
    assert app.error_type == contracts.KUBE_CONTEXT_NOT_FOUND
    assert app.error is not None
    assert "kube_context 'nope'" in app.error
    assert app.attempts == 1


@pytest.mark.parametrize("delete_namespace", [True, False])
async def test_destroy_unknown_release_keeps_namespace(
    temporal_env: WorkflowEnvironment,
    lifecycle_settings: WorkerSettings,
    kube: KubeClient,
    namespace: str,
    delete_namespace: bool,
) -> None:
    """A release that never lived in the namespace fails the first step as
    ReleaseNotFound and ends the destroy as invalid, also without
    --delete-namespace, and the namespace and what others put there stay."""
    body = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "important"},
        "data": {"k": "v"},
    }
    await kube.create(CONFIGMAP, body, namespace)

    async with running_worker(temporal_env.client, lifecycle_settings):
        handle = await start_destroy(
            temporal_env,
            lifecycle_settings,
            namespace,
            delete_data=True,
            delete_namespace=delete_namespace,
        )
        with pytest.raises(WorkflowFailureError):
            await asyncio.wait_for(handle.result(), timeout=60)
        status = await handle.query("status", result_type=DestroyStatus)

    assert status.state == "invalid"
    app = record(status, "app")
    assert app.state is PhaseState.FAILED
    assert app.error_type == contracts.RELEASE_NOT_FOUND
    assert app.error is not None
    assert f"no release {RELEASE} in namespace {namespace}" in app.error
    consequence = (
        "deleting the namespace would delete only what others put there"
        if delete_namespace
        else "there is nothing to destroy"
    )
    assert consequence in app.error
    assert app.attempts == 1
    assert await kube.get(NAMESPACE, namespace) is not None
    assert await kube.get(CONFIGMAP, "important", namespace) is not None


async def test_deploy_and_destroy_exclude_each_other(
    temporal_env: WorkflowEnvironment,
    lifecycle_settings: WorkerSettings,
    kube: KubeClient,
    namespace: str,
) -> None:
    """Started as the `temporal` CLI would, without the client's checks: a
    destroy during a running deploy fails its first step as OtherRunActive and
    deletes nothing, and a deploy during that destroy fails validate the same
    way."""
    hold = {"sim.ventros.io/hold-init": "wait-for-redis"}
    await annotate(kube, NAMESPACE, namespace, None, hold)
    async with running_worker(temporal_env.client, lifecycle_settings):
        first = await start_deploy(
            temporal_env, lifecycle_settings, namespace, "1.0.0", timeouts={"app": 600}
        )
        await wait_for_step(first, "app", PhaseState.RUNNING, timeout_s=150)
        destroy = await start_destroy(
            temporal_env, lifecycle_settings, namespace, force=True
        )
        blocked = await wait_for_step(
            destroy, "app", PhaseState.WAITING_FOR_RETRY, timeout_s=60
        )
        app_after_block = await kube.get(DEPLOYMENT, RELEASE, namespace)
        await first.execute_update("abort", "test ends", result_type=str)
        with pytest.raises(WorkflowFailureError):
            await first.result()

        second = await start_deploy(
            temporal_env, lifecycle_settings, namespace, "1.0.0"
        )
        with pytest.raises(WorkflowFailureError) as rejected:
            await asyncio.wait_for(second.result(), timeout=60)
        await destroy.execute_update("abort", "test ends", result_type=str)
        with pytest.raises(WorkflowFailureError):
            await destroy.result()
    step = record(blocked, "app")
    assert step.error_type == contracts.OTHER_RUN_ACTIVE
    assert step.error is not None
    assert f"deploy-{namespace}.{RELEASE} is running" in step.error
    assert app_after_block is not None
    cause = rejected.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == contracts.OTHER_RUN_ACTIVE
    assert f"destroy-{namespace}.{RELEASE} is running" in cause.message


async def test_destroy_follow_prints_kept(
    temporal_env: WorkflowEnvironment,
    lifecycle_settings: WorkerSettings,
    namespace: str,
) -> None:
    """`ventros-deploy destroy --follow` without --delete-data ends with the
    message that lists what it kept and the option that deletes it."""
    async with running_worker(temporal_env.client, lifecycle_settings):
        await deploy(temporal_env, lifecycle_settings, namespace, "1.0.0")
        result = await run_cli(
            ["destroy", f"deploy-{namespace}.{RELEASE}", "--follow"],
            cli_env(temporal_env, lifecycle_settings),
        )
    assert result.returncode == 0, result.stderr
    assert "succeeded after" in result.stdout
    assert f"postgresql/{RELEASE}-db" in result.stdout
    assert "--delete-data" in result.stdout
