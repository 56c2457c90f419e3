"""The destroy activities: remove a phase, wait until it is gone, delete the namespace.

A phase's own objects are found by their labels, ``deploy.ventros.io/phase``
and ``app.kubernetes.io/instance``, so a destroy needs neither the chart nor
the values of the deploy. The phases that helm installs (temporal, base) are
uninstalled with helm. Every step is idempotent: an object or release that
is already gone counts as removed, so a retried step picks up where the last
attempt stopped. The RabbitMQ drain check lives in activities.drain.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import structlog
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities import preflight
from activities.deploy import (
    CONFIG_MAP,
    INSTANCE_LABEL,
    PHASE_LABEL,
    DeployActivities,
    bind_log_context,
    check_own_id,
    check_release_idle,
    heartbeat_while_running,
    history_name,
    migrations_name,
    note_completed_migrations,
    ref_of,
    terminating_namespaces,
    translate_errors,
)
from activities.kubeapi import (
    ForbiddenError,
    JsonObject,
    KubeClient,
    NoKindMatchError,
    well_known,
)
from deployer import contracts
from deployer.contracts import (
    GoneRequest,
    NamespaceRequest,
    SelectorRef,
    StatusResult,
    TeardownRequest,
    TeardownResult,
)
from deployer.lifecycle import DestroyRequest, destroy_workflow_id_for
from deployer.phases import TEARDOWN_ORDER, ObjectRef, Phase

log = structlog.get_logger("ventros.teardown")

KEEP_POLICY = "helm.sh/resource-policy"
# The helm releases a deploy installs beside the base release, by name suffix.
RELEASE_SUFFIXES = ("temporal", "postgres-operator", "rabbitmq-operator")
GONE_POLL_S = 0.5
# The kinds that the deploy applies itself, per phase. tests/lifecycle renders
# the chart and checks that these cover every kind it labels with the phase.
PHASE_KINDS: dict[Phase, tuple[tuple[str, str], ...]] = {
    # The ConfigMap is the deploy history that rollback reads (rollback.py).
    Phase.APP: (("apps/v1", "Deployment"), ("v1", "Service"), ("v1", "ConfigMap")),
    Phase.MIGRATION: (("batch/v1", "Job"),),
    Phase.CACHE: (("apps/v1", "StatefulSet"), ("v1", "Service")),
    Phase.MESSAGING: (("rabbitmq.com/v1beta1", "RabbitmqCluster"),),
    Phase.DATA: (("acid.zalan.do/v1", "postgresql"),),
}
# Phases whose pods carry the phase label; they must be gone too, because a
# terminating app pod can still publish to RabbitMQ.
POD_PHASES = (Phase.APP, Phase.MIGRATION, Phase.CACHE)
# The Zalando operator's default cluster labels, on the database pods and
# their volume claims (cluster_labels and cluster_name_label in its config).
SPILO_SELECTOR = "application=spilo,cluster-name={name}"

NAMESPACE = well_known("v1", "Namespace")
POD = well_known("v1", "Pod")
PVC = well_known("v1", "PersistentVolumeClaim")
JOB = well_known("batch/v1", "Job")


def phase_selector(release: str, phase: Phase) -> str:
    return f"{PHASE_LABEL}={phase.value},{INSTANCE_LABEL}={release}"


def operator_releases(release: str) -> dict[str, str]:
    """Return the operator releases a deploy installs, keyed by what they run."""
    return {
        "postgresql": f"{release}-postgres-operator",
        "rabbitmq": f"{release}-rabbitmq-operator",
    }


# The kind each operator manages. Both upstream charts make their operator
# watch every namespace, so its objects anywhere in the cluster depend on it.
OPERATOR_KINDS = {
    "postgresql": PHASE_KINDS[Phase.DATA][0],
    "rabbitmq": PHASE_KINDS[Phase.MESSAGING][0],
}
# How many objects of other releases a kept operator's line names.
USERS_LISTED = 3


def needs_operator(item: JsonObject, terminating: set[str]) -> bool:
    """Tell whether an operator's object still depends on the operator.

    An object being deleted, or in a namespace being deleted, goes without its
    operator unless it carries a finalizer, which only its operator removes.
    The RabbitMQ operator adds deletion.finalizers.rabbitmqclusters.rabbitmq.com
    to every RabbitmqCluster it reconciles.
    """
    metadata = item["metadata"]
    leaving = bool(metadata.get("deletionTimestamp")) or (
        metadata.get("namespace") in terminating
    )
    return not leaving or bool(metadata.get("finalizers"))


def listed_ref(
    item: JsonObject, api_version: str, kind: str, namespace: str
) -> ObjectRef:
    """Return the reference of an item of a list, which carries no kind of its own."""
    return ObjectRef(
        api_version=api_version,
        kind=kind,
        name=item["metadata"]["name"],
        namespace=namespace,
    )


def _non_retryable(kind: str, message: str) -> ApplicationError:
    return ApplicationError(message, type=kind, non_retryable=True)


class TeardownActivities:
    """The destroy's activities, sharing the deploy activities' clients."""

    def __init__(self, deploy: DeployActivities) -> None:
        self._deploy = deploy

    def activities(self) -> list[Callable[..., Any]]:
        return [self.teardown_phase, self.wait_deleted, self.delete_namespace]

    # -- remove -------------------------------------------------------------

    @activity.defn(name=contracts.TEARDOWN_PHASE)
    @translate_errors
    @heartbeat_while_running
    async def teardown_phase(self, job: TeardownRequest) -> TeardownResult:
        """Delete one phase's objects and return what must be gone afterwards."""
        request, phase = job.request, job.phase
        bind_log_context(request.release, request.namespace, phase.value)
        try:
            if phase is TEARDOWN_ORDER[0]:
                destroy_id = destroy_workflow_id_for(request.namespace, request.release)
                check_own_id(
                    "destroy",
                    destroy_id,
                    # A run started before destroys ended on this error waits
                    # for a retry instead, and needs the abort.
                    "Abort this run if it waits for a retry, and start the destroy "
                    "again",
                )
                await check_release_idle(
                    "destroy",
                    request.namespace,
                    request.release,
                    f"retry this step (`ventros-deploy retry {destroy_id}`)",
                )
            if phase is TEARDOWN_ORDER[0]:
                await self._check_release_present(request)
                if request.delete_namespace:
                    # Before the first step deletes anything: the base step
                    # checks again, since another release may start to use
                    # them meanwhile.
                    await self._check_operators_free(
                        request, list(operator_releases(request.release))
                    )
            if phase is Phase.TEMPORAL:
                result = TeardownResult(phase=phase)
                await self._uninstall(request, [f"{request.release}-temporal"], result)
            elif phase is Phase.BASE:
                result = await self._remove_base(request)
            elif phase is Phase.DATA:
                result = await self._remove_data(request)
            else:
                result = await self._delete_labelled(request, phase)
            log.info(
                "phase removed", deleted=len(result.deleted), kept=len(result.kept)
            )
            return result
        finally:
            structlog.contextvars.clear_contextvars()  # Bound above, per attempt.

    async def _check_release_present(self, request: DestroyRequest) -> None:
        """Raise ReleaseNotFound when nothing of the release is in its namespace.

        With a mistyped release name, a destroy would remove nothing and report
        the release removed, and with --delete-namespace it would then delete a
        namespace full of other things. Evidence is a helm release of it, of its
        Temporal or of its operators, or any object labelled with its instance.
        """
        kube = await self._deploy.kube(request.kube_context)
        secret = well_known("v1", "Secret")
        for release in (
            request.release,
            *(f"{request.release}-{suffix}" for suffix in RELEASE_SUFFIXES),
        ):
            found = await kube.list(
                secret, request.namespace, label_selector=f"owner=helm,name={release}"
            )
            if found.get("items"):
                return
        instance = f"{INSTANCE_LABEL}={request.release}"
        for api_version, kind in (
            ("v1", "ConfigMap"),
            ("apps/v1", "Deployment"),
            ("apps/v1", "StatefulSet"),
            ("batch/v1", "Job"),
        ):
            found = await kube.list(
                well_known(api_version, kind),
                request.namespace,
                label_selector=instance,
            )
            if found.get("items"):
                return
        consequence = "there is nothing to destroy"
        anyway = ""
        if request.delete_namespace:
            consequence = (
                "deleting the namespace would delete only what others put there"
            )
            anyway = (
                " To delete the namespace anyway, run `kubectl delete namespace "
                f"{request.namespace}`"
            )
        raise ApplicationError(
            f"no release {request.release} in namespace {request.namespace}: no "
            f"helm release of that name and no object labelled {instance}, so "
            f"{consequence}. Check the release name (`helm list --namespace "
            f"{request.namespace}`).{anyway}",
            type=contracts.RELEASE_NOT_FOUND,
            non_retryable=True,
        )

    async def _delete_labelled(
        self, request: DestroyRequest, phase: Phase
    ) -> TeardownResult:
        kube = await self._deploy.kube(request.kube_context)
        selector = phase_selector(request.release, phase)
        result = TeardownResult(phase=phase)
        if phase is Phase.MIGRATION and not request.delete_data:
            # The database stays with its migrations, so a later deploy must
            # not run them again.
            jobs = await kube.list(JOB, request.namespace, label_selector=selector)
            await note_completed_migrations(
                kube, request.release, request.namespace, jobs.get("items", [])
            )
        for api_version, kind in PHASE_KINDS[phase]:
            await self._delete_selected(
                kube, api_version, kind, request.namespace, selector, result
            )
        if phase in POD_PHASES:
            result.groups.append(
                SelectorRef(
                    api_version="v1",
                    kind="Pod",
                    namespace=request.namespace,
                    label_selector=selector,
                )
            )
        if phase is Phase.CACHE:
            await self._redis_volumes(kube, request, selector, result)
        return result

    async def _delete_selected(
        self,
        kube: KubeClient,
        api_version: str,
        kind: str,
        namespace: str,
        selector: str,
        result: TeardownResult,
    ) -> list[ObjectRef]:
        """Delete every object of kind matching selector; record and return them."""
        try:
            rtype = await kube.resource_type(api_version, kind)
        except NoKindMatchError:
            result.notes.append(f"kind {kind} is not served, so none is left")
            return []
        listing = await kube.list(rtype, namespace, label_selector=selector)
        deleted = []
        for item in listing.get("items", []):
            ref = listed_ref(item, api_version, kind, namespace)
            await kube.delete(rtype, ref.name, namespace)
            result.deleted.append(ref.describe())
            result.gone.append(ref)
            deleted.append(ref)
        return deleted

    async def _redis_volumes(
        self,
        kube: KubeClient,
        request: DestroyRequest,
        selector: str,
        result: TeardownResult,
    ) -> None:
        """Delete Redis's volume claims with --delete-data, else keep them."""
        if request.delete_data:
            await self._delete_selected(
                kube, "v1", "PersistentVolumeClaim", request.namespace, selector, result
            )
            return
        claims = await kube.list(PVC, request.namespace, label_selector=selector)
        for claim in claims.get("items", []):
            ref = listed_ref(claim, "v1", "PersistentVolumeClaim", request.namespace)
            result.kept.append(f"{ref.describe()} with the Redis data")

    async def _remove_data(self, request: DestroyRequest) -> TeardownResult:
        """Delete the postgresql with --delete-data, else list it as kept."""
        kube = await self._deploy.kube(request.kube_context)
        selector = phase_selector(request.release, Phase.DATA)
        result = TeardownResult(phase=Phase.DATA)
        if not request.delete_data:
            for ref in await self._postgresqls(kube, request, selector):
                result.kept.append(f"{ref.describe()} with its data")
            name = migrations_name(request.release)
            if await kube.get(CONFIG_MAP, name, request.namespace) is not None:
                result.kept.append(
                    f"configmap/{name} with the app versions the database migrated to"
                )
            return result
        # The note of migrated versions goes with the database.
        await self._delete_selected(
            kube, "v1", "ConfigMap", request.namespace, selector, result
        )
        api_version, kind = PHASE_KINDS[Phase.DATA][0]
        clusters = await self._delete_selected(
            kube, api_version, kind, request.namespace, selector, result
        )
        for cluster in clusters:
            spilo = SPILO_SELECTOR.format(name=cluster.name)
            # The operator deletes the StatefulSet, but its volume claims stay.
            await self._delete_selected(
                kube, "v1", "PersistentVolumeClaim", request.namespace, spilo, result
            )
            result.groups.append(
                SelectorRef(
                    api_version="v1",
                    kind="Pod",
                    namespace=request.namespace,
                    label_selector=spilo,
                )
            )
        return result

    async def _postgresqls(
        self, kube: KubeClient, request: DestroyRequest, selector: str
    ) -> list[ObjectRef]:
        api_version, kind = PHASE_KINDS[Phase.DATA][0]
        try:
            rtype = await kube.resource_type(api_version, kind)
        except NoKindMatchError:
            return []
        listing = await kube.list(rtype, request.namespace, label_selector=selector)
        return [
            listed_ref(item, api_version, kind, request.namespace)
            for item in listing.get("items", [])
        ]

    async def _remove_base(self, request: DestroyRequest) -> TeardownResult:
        """Uninstall the base release and the operators; keep what manages kept data
        or the objects of other releases."""
        kube = await self._deploy.kube(request.kube_context)
        result = TeardownResult(phase=Phase.BASE)
        operators = operator_releases(request.release)
        releases = [request.release, *operators.values()]
        selector = phase_selector(request.release, Phase.DATA)
        kept = await self._postgresqls(kube, request, selector)
        if kept:
            # Without its operator a kept cluster gets no failover or cleanup,
            # and a later destroy with --delete-data would leave its volumes.
            releases.remove(operators["postgresql"])
            installed = await preflight.release_charts(
                kube, request.namespace, {operators["postgresql"]}
            )
            # A release deployed with install_operators false has no operator
            # release here to keep.
            if operators["postgresql"] in installed:
                names = ", ".join(ref.describe() for ref in kept)
                result.kept.append(
                    f"helm release {operators['postgresql']}: it manages the kept "
                    f"{names}"
                )
        in_use = await self._check_operators_free(
            request,
            [operator for operator in operators if operators[operator] in releases],
        )
        for operator, users in in_use.items():
            releases.remove(operators[operator])
            release = operators[operator]
            later = (
                "Destroy this release again once no other release uses it"
                if users.startswith("manages")
                else f"Once no other release uses it, run `helm uninstall {release} "
                f"--namespace {request.namespace}`, or destroy this release again "
                "with an identity that may list them"
            )
            result.kept.append(f"helm release {release}: it {users}. {later}")
        await self._uninstall(request, releases, result)
        # The note of the base release's revisions that ran goes with it.
        history = history_name(request.release)
        if await kube.delete(CONFIG_MAP, history, request.namespace):
            result.deleted.append(f"configmap/{history}")
        return result

    async def _check_operators_free(
        self, request: DestroyRequest, candidates: list[str]
    ) -> dict[str, str]:
        """Return the operators among candidates that other releases use, as
        _operators_in_use does.

        Raise OperatorsInUse when there is any and the destroy deletes the
        namespace, because that would delete those operators too.
        """
        kube = await self._deploy.kube(request.kube_context)
        in_use = await self._operators_in_use(kube, request, candidates)
        if in_use and request.delete_namespace:
            operators = operator_releases(request.release)
            lines = "; ".join(
                f"helm release {operators[operator]} {users}"
                for operator, users in in_use.items()
            )
            raise _non_retryable(
                contracts.OPERATORS_IN_USE,
                f"namespace {request.namespace} contains operators that other "
                f"releases use or may use: {lines}. Deleting the namespace would "
                "leave those objects without their operator. Destroy those "
                "releases first (where the identity may not list them, run the "
                "destroy with one that may), then run `ventros-deploy retry`. Or "
                "abort this destroy and start it again without --delete-namespace: "
                "it keeps the operators and removes the rest",
            )
        return in_use

    async def _operators_in_use(
        self, kube: KubeClient, request: DestroyRequest, candidates: list[str]
    ) -> dict[str, str]:
        """Return, for each installed operator among candidates that objects of
        other releases depend on, a line that names those objects."""
        in_use: dict[str, str] = {}
        helm = self._deploy.helm(request.kube_context)
        for operator in candidates:
            users = await self._operator_users(kube, request, operator)
            if users is None:
                continue
            installed = await helm.status(
                operator_releases(request.release)[operator], request.namespace
            )
            if installed is not None:
                in_use[operator] = users
        return in_use

    async def _operator_users(
        self, kube: KubeClient, request: DestroyRequest, operator: str
    ) -> str | None:
        """Return a line naming the objects of other releases that the operator
        manages, in every namespace; None when there are none. The line starts
        with "manages", or with "may manage" when they cannot be listed."""
        api_version, kind = OPERATOR_KINDS[operator]
        try:
            rtype = await kube.resource_type(api_version, kind)
        except NoKindMatchError:
            return None  # Without the kind there is nothing for it to manage.

        try:
            listing = await kube.list(rtype)
        except ForbiddenError:
            # Keeping an unused operator is safe, removing a used one is not.
            return (
                f"may manage {rtype.plural} of other releases (this identity may "
                f"not list {rtype.plural} in all namespaces to check)"
            )

        terminating = await terminating_namespaces(kube)
        users = []
        for item in listing.get("items", []):
            metadata = item["metadata"]
            labels = metadata.get("labels") or {}
            own = (
                metadata.get("namespace") == request.namespace
                and labels.get(INSTANCE_LABEL) == request.release
            )
            if not own and needs_operator(item, terminating):
                ref = listed_ref(item, api_version, kind, metadata.get("namespace"))
                users.append(ref.describe())
        if not users:
            return None
        named = ", ".join(users[:USERS_LISTED])
        more = len(users) - USERS_LISTED
        if more > 0:
            named += f" and {more} more"
        return f"manages objects of other releases ({named})"

    async def _uninstall(
        self, request: DestroyRequest, releases: list[str], result: TeardownResult
    ) -> None:
        helm = self._deploy.helm(request.kube_context)
        namespace = request.namespace

        async def uninstall(release: str) -> None:
            if await helm.status(release, namespace) is None:
                result.notes.append(f"helm release {release} is not installed")
                return
            objects = await helm.manifest(release, namespace)
            await helm.run(["uninstall", release, f"--namespace={namespace}"])
            result.deleted.append(f"helm release {release}")
            for obj in objects:
                annotations = obj.get("metadata", {}).get("annotations") or {}
                ref = ref_of(obj, namespace)
                if annotations.get(KEEP_POLICY) == "keep":
                    result.kept.append(f"{ref.describe()}: {KEEP_POLICY} is keep")
                else:
                    result.gone.append(ref)

        # The releases do not depend on each other.
        await asyncio.gather(*(uninstall(release) for release in releases))

    # -- wait until gone ----------------------------------------------------

    @activity.defn(name=contracts.WAIT_DELETED)
    @translate_errors
    async def wait_deleted(self, job: GoneRequest) -> StatusResult:
        """Poll until every object and group is gone; heartbeat what remains."""
        kube = await self._deploy.kube(job.kube_context)
        deadline = time.monotonic() + max(0.0, job.deadline_epoch_s - time.time())
        statuses: dict[str, str] = {}
        while True:
            remaining = await self._remaining(kube, job, statuses)
            activity.heartbeat(statuses)
            if not remaining:
                return StatusResult(statuses=statuses)
            if time.monotonic() >= deadline:
                details = "; ".join(f"{key}: {statuses[key]}" for key in remaining)
                raise _non_retryable(
                    contracts.DELETION_TIMEOUT,
                    f"timed out after {job.timeout_s} s waiting for the "
                    f"{job.phase.value} objects to be deleted: {details}. Check "
                    "what holds them (finalizers, or a controller that recreates "
                    "them), then run `ventros-deploy retry`",
                )
            await asyncio.sleep(GONE_POLL_S)

    async def _remaining(
        self, kube: KubeClient, job: GoneRequest, statuses: dict[str, str]
    ) -> list[str]:
        """Update statuses; return the descriptions of what still exists."""
        remaining = []
        for ref in job.refs:
            status = await self._object_status(kube, ref)
            statuses[ref.describe()] = status
            if status != "deleted":
                remaining.append(ref.describe())
        for group in job.groups:
            listing = await kube.list(
                await kube.resource_type(group.api_version, group.kind),
                group.namespace,
                label_selector=group.label_selector,
            )
            names = [item["metadata"]["name"] for item in listing.get("items", [])]
            statuses[group.describe()] = (
                f"{len(names)} left: {', '.join(names[:3])}" if names else "deleted"
            )
            if names:
                remaining.append(group.describe())
        return remaining

    @staticmethod
    async def _object_status(kube: KubeClient, ref: ObjectRef) -> str:
        try:
            rtype = await kube.resource_type(ref.api_version, ref.kind)
        except NoKindMatchError:
            return "deleted"  # Its kind is gone, so the object is too.
        obj = await kube.get(rtype, ref.name, ref.namespace)
        return "deleted" if obj is None else deleting_status(obj)

    # -- namespace ----------------------------------------------------------

    @activity.defn(name=contracts.DELETE_NAMESPACE)
    @translate_errors
    async def delete_namespace(self, job: NamespaceRequest) -> StatusResult:
        """Delete the namespace and wait until it is gone; report why it is stuck."""
        kube = await self._deploy.kube(job.kube_context)
        deadline = time.monotonic() + max(0.0, job.deadline_epoch_s - time.time())
        key = f"namespace/{job.namespace}"
        await kube.delete(NAMESPACE, job.namespace)
        while True:
            namespace = await kube.get(NAMESPACE, job.namespace)
            if namespace is None:
                return StatusResult(statuses={key: "deleted"})
            activity.heartbeat({key: namespace_status(namespace)})
            if time.monotonic() >= deadline:
                raise _non_retryable(
                    contracts.NAMESPACE_STUCK,
                    f"namespace {job.namespace} still exists after "
                    f"{job.timeout_s} s: {namespace_status(namespace)}. "
                    "Remove what blocks it (an object's finalizers whose "
                    "controller is gone, or an API service that does not "
                    "answer), then run `ventros-deploy retry`",
                )
            await asyncio.sleep(GONE_POLL_S)


def deleting_status(obj: JsonObject) -> str:
    """Return one line on an object that still exists: deleting, and its finalizers."""
    metadata = obj.get("metadata") or {}
    if not metadata.get("deletionTimestamp"):
        return "still exists"
    finalizers = metadata.get("finalizers") or []
    held = f", held by finalizers {', '.join(finalizers)}" if finalizers else ""
    return f"deleting since {metadata['deletionTimestamp']}{held}"


def namespace_status(namespace: JsonObject) -> str:
    """Return the namespace's phase and the conditions that explain a stuck deletion.

    The namespace controller reports each problem as a condition with status
    True (NamespaceContentRemaining, NamespaceFinalizersRemaining,
    NamespaceDeletionContentFailure, NamespaceDeletionDiscoveryFailure, ...).
    """
    status = namespace.get("status") or {}
    phase = status.get("phase", "Active")
    problems = [
        f"{c.get('type')}: {c.get('message') or c.get('reason', '')}"
        for c in status.get("conditions") or []
        if c.get("status") == "True"
    ]
    if not problems:
        return f"{phase} (no deletion conditions reported yet)"
    return f"{phase}: " + "; ".join(problems)
