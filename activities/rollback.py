"""The rollback activities: find the previous app version, then return to it.

Every deploy upgrades the base helm release with the request's values and the
app version as ``image.tag``, so each revision of that release records which
version was deployed with which values. The running version is the image tag
of the app Deployment's ``app`` container. A rollback rolls the base release
back to the newest revision of the previous version, renders the app phase
from that revision's values and applies it. Database migrations are never
undone: the migration Job of the newer version stays applied.

A deploy upgrades the base release in its first phase, so a deploy that
failed or was aborted later leaves a revision whose version never ran. Once
the app phase is ready, a deploy or rollback notes its base revision in the
ConfigMap ``<release>-deploy-history``, and a rollback returns only to a
noted revision. Without that ConfigMap (a release deployed before it
existed), every revision that helm marks deployed or superseded counts. The
note is not on the app Deployment, because any change to a Deployment's
annotations moves its generation.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import structlog
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities import readiness
from activities.deploy import (
    APP_VERSION_ANNOTATION,
    CONFIG_MAP,
    INSTANCE_LABEL,
    PHASE_LABEL,
    DeployActivities,
    check_own_id,
    check_release_idle,
    deep_merge,
    heartbeat_while_running,
    history_name,
    image_tag,
    migrated_versions,
    migrations_name,
    ref_of,
    secrets_digest,
    translate_errors,
    version_of_job,
)
from activities.helm import Helm, HelmError
from activities.kubeapi import JsonObject, KubeClient, well_known
from activities.teardown import listed_ref, phase_selector
from deployer import contracts
from deployer.contracts import ApplyResult, RollbackJob, RollbackPlan
from deployer.lifecycle import ReleaseTarget, RollbackRequest
from deployer.phases import Phase

log = structlog.get_logger("ventros.rollback")

# Revisions in these states ran; failed or pending ones never did.
RAN_STATES = ("deployed", "superseded")
# In the history ConfigMap: the base release revisions whose deploy or
# rollback ended with the app ready, oldest first, as "3,5,6".
RAN_KEY = "ran-revisions"
# helm keeps 10 revisions by default; a few more cover a raised limit.
RAN_KEPT = 30
SECRET = well_known("v1", "Secret")
DEPLOYMENT = well_known("apps/v1", "Deployment")
JOB = well_known("batch/v1", "Job")


def _nothing_to_roll_back(message: str) -> ApplicationError:
    return ApplicationError(
        message, type=contracts.NOTHING_TO_ROLL_BACK, non_retryable=True
    )


def ran_revisions(history: JsonObject | None) -> set[int] | None:
    """Return the revisions noted as ran in the history ConfigMap, or None."""
    if history is None:
        return None
    noted = str((history.get("data") or {}).get(RAN_KEY, ""))
    return {int(part) for part in noted.split(",") if part.strip().isdigit()}


class RollbackActivities:
    """The rollback's activities, sharing the deploy activities' clients."""

    def __init__(self, deploy: DeployActivities) -> None:
        self._deploy = deploy

    def activities(self) -> list[Callable[..., Any]]:
        return [self.plan_rollback, self.roll_back_app, self.record_deployed]

    @activity.defn(name=contracts.RECORD_DEPLOYED)
    @translate_errors
    async def record_deployed(self, target: ReleaseTarget) -> int:
        """Note the base release's deployed revision in the history ConfigMap.

        Return that revision, or 0 when the release has no deployed revision.
        """
        kube = await self._deploy.kube(target.kube_context)
        records = await kube.list(
            SECRET,
            target.namespace,
            label_selector=f"owner=helm,name={target.release},status=deployed",
        )
        revisions = [
            int(item["metadata"]["labels"].get("version", "0"))
            for item in records.get("items", [])
        ]
        if not revisions:
            log.warning(
                "no deployed revision of the base release to note",
                release=target.release,
                namespace=target.namespace,
            )
            return 0
        revision = max(revisions)
        name = history_name(target.release)
        ran = ran_revisions(await kube.get(CONFIG_MAP, name, target.namespace))
        if revision in (ran or set()):
            return revision
        noted = sorted((ran or set()) | {revision})[-RAN_KEPT:]
        await kube.apply(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": name,
                    "namespace": target.namespace,
                    # The destroy's base step deletes it with the base release,
                    # whose revisions it notes. A destroy that stopped before
                    # that step keeps both, so a later rollback still finds
                    # which revisions ran.
                    "labels": {
                        PHASE_LABEL: Phase.BASE.value,
                        INSTANCE_LABEL: target.release,
                        "app.kubernetes.io/managed-by": "ventros-deploy",
                    },
                },
                "data": {RAN_KEY: ",".join(map(str, noted))},
            }
        )
        return revision

    @activity.defn(name=contracts.PLAN_ROLLBACK)
    @translate_errors
    @heartbeat_while_running
    async def plan_rollback(self, request: RollbackRequest) -> RollbackPlan:
        """Find the running version, the one to return to and its helm revision."""
        self._deploy.check_chart_repository("chart", request.chart)
        check_own_id("rollback", request.workflow_id, "Start it again")
        await check_release_idle(
            "rollback", request.namespace, request.release, "run the rollback again"
        )
        kube = await self._deploy.kube(request.kube_context)
        helm = self._deploy.helm(request.kube_context)
        app = await self._app_deployment(kube, request)
        current = image_tag(app)
        revisions = await self._revisions(helm, request)
        history = await kube.get(
            CONFIG_MAP, history_name(request.release), request.namespace
        )
        target, revision = await self._target(
            helm, request, current, revisions, ran_revisions(history)
        )
        plan = RollbackPlan(
            current_version=current,
            target_version=target,
            helm_revision=revision,
            app=listed_ref(app, "apps/v1", "Deployment", request.namespace),
            migration_job=await self._migration_job(kube, request, current),
            kept_migrations=await self._kept_migrations(kube, request, target),
        )
        log.info(
            "rollback planned",
            release=request.release,
            namespace=request.namespace,
            current=current,
            target=target,
            helm_revision=revision,
        )
        return plan

    async def _app_deployment(
        self, kube: KubeClient, request: ReleaseTarget
    ) -> JsonObject:
        listing = await kube.list(
            DEPLOYMENT,
            request.namespace,
            label_selector=phase_selector(request.release, Phase.APP),
        )
        items: list[JsonObject] = sorted(
            listing.get("items", []), key=lambda d: d["metadata"]["name"]
        )
        if not items:
            raise _nothing_to_roll_back(
                f"no app Deployment of release {request.release} in namespace "
                f"{request.namespace}: nothing runs, so there is nothing to roll back"
            )
        return items[0]

    async def _revisions(
        self, helm: Helm, request: RollbackRequest
    ) -> list[dict[str, Any]]:
        """Return the base release's revisions that ran, newest first."""
        # NOTE: helm keeps 10 revisions by default and every deploy adds one,
        # even an unchanged one, so ten deploys after a version hide it here.
        try:
            history = await helm.history(request.release, request.namespace)
        except HelmError as error:
            if "not found" not in error.stderr:
                raise
            raise _nothing_to_roll_back(
                f"helm release {request.release} is not installed in namespace "
                f"{request.namespace}; deploy it first"
            ) from error
        ran = [entry for entry in history if entry.get("status") in RAN_STATES]
        return sorted(ran, key=lambda entry: int(entry["revision"]), reverse=True)

    async def _target(
        self,
        helm: Helm,
        request: RollbackRequest,
        current: str,
        revisions: list[dict[str, Any]],
        ran: set[int] | None,
    ) -> tuple[str, int]:
        """Return the version to return to and the newest revision that deployed it.

        Without to_version it is the newest version older than the running
        one's newest revision and different from it. With ran, only those
        revisions count: the others are deploys that did not finish.
        """
        if request.to_version == current:
            raise _nothing_to_roll_back(
                f"the app of {request.release} in namespace {request.namespace} "
                f"already runs version {current}"
            )
        seen: list[str] = []
        unfinished: set[str] = set()
        passed_current = request.to_version is not None
        for entry in revisions:
            revision = int(entry["revision"])
            version = await self._version_of(helm, request, entry)
            finished = ran is None or revision in ran
            seen.append(
                f"{revision}: {version}{'' if finished else ', did not finish'}"
            )
            if version == current:
                passed_current = True
                continue
            if not finished:
                unfinished.add(version)
                continue
            wanted = request.to_version in (None, version)
            if passed_current and wanted:
                return version, revision
        listed = (
            f"(revision: version, newest first: {'; '.join(seen) or 'none'}); "
            f"the running version is {current}"
        )
        if request.to_version in unfinished:
            raise _nothing_to_roll_back(
                f"no deploy of {request.to_version} finished in helm release "
                f"{request.release} in namespace {request.namespace} {listed}. "
                "A rollback returns only to a version whose app became ready; "
                "deploy that version instead, or name another with --to-version"
            )
        wanted_text = request.to_version or "an earlier app version"
        raise _nothing_to_roll_back(
            f"{wanted_text} is not in the history of helm release {request.release} "
            f"in namespace {request.namespace} {listed}. Helm keeps the last 10 "
            "revisions by default; deploy the version you need instead, or name "
            "another with --to-version"
        )

    async def _version_of(
        self, helm: Helm, request: RollbackRequest, entry: dict[str, Any]
    ) -> str:
        values = await self._values(helm, request, int(entry["revision"]))
        image = values.get("image")
        tag = image.get("tag") if isinstance(image, dict) else None
        return str(tag or entry.get("app_version") or "")

    @staticmethod
    async def _values(
        helm: Helm, request: RollbackRequest, revision: int
    ) -> dict[str, Any]:
        """Return one revision's values; they may hold secrets, so never log them."""
        out = await helm.run(
            [
                "get",
                "values",
                request.release,
                f"--revision={revision}",
                f"--namespace={request.namespace}",
                "--output=json",
            ]
        )
        values = json.loads(out or "null")
        return values if isinstance(values, dict) else {}

    @staticmethod
    async def _kept_migrations(
        kube: KubeClient, request: RollbackRequest, target: str
    ) -> list[tuple[str, str, str]]:
        """Return (name, version, outcome) of the migrations of other versions
        than target that ran after target's, oldest first.

        They come from the migration Jobs, and from the migrations ConfigMap
        for the versions whose completed Job was deleted. Those have outcome
        deleted and an empty name. Target's time is its Job's creation, or
        its noted completion when its Job is gone. A Job counts when it was
        created after that time, and a noted version when it completed after
        it. When target is in neither, all of them count. The outcome of a
        Job is complete, failed or running: a failed Job may have applied
        part of its migration.
        """
        listing = await kube.list(
            JOB,
            request.namespace,
            label_selector=phase_selector(request.release, Phase.MIGRATION),
        )
        jobs = listing.get("items", [])
        noted = migrated_versions(
            await kube.get(
                CONFIG_MAP, migrations_name(request.release), request.namespace
            )
        )
        since = noted.get(target, "")
        for job in jobs:
            if version_of_job(job) == target:
                since = str(job["metadata"].get("creationTimestamp") or "")

        # Entries are (time, name, version, outcome), so that they sort by time.
        kept: list[tuple[str, str, str, str]] = []
        for job in jobs:
            version = version_of_job(job)
            created = str(job["metadata"].get("creationTimestamp") or "")
            if version in (None, target) or created <= since:
                continue
            verdict = readiness.job(job)
            outcome = "complete" if verdict.ready else "running"
            if verdict.failure:
                outcome = "failed"
            kept.append((created, str(job["metadata"]["name"]), str(version), outcome))

        listed = {version for _, _, version, _ in kept}
        for version, completed in noted.items():
            if version == target or version in listed or completed <= since:
                continue
            kept.append((completed, "", version, "deleted"))

        return [entry[1:] for entry in sorted(kept)]

    @staticmethod
    async def _migration_job(
        kube: KubeClient, request: RollbackRequest, version: str
    ) -> str | None:
        listing = await kube.list(
            JOB,
            request.namespace,
            label_selector=phase_selector(request.release, Phase.MIGRATION),
        )
        for job in listing.get("items", []):
            annotations = job["metadata"].get("annotations") or {}
            if annotations.get(APP_VERSION_ANNOTATION) == version:
                return str(job["metadata"]["name"])
        return None

    @activity.defn(name=contracts.ROLL_BACK_APP)
    @translate_errors
    @heartbeat_while_running
    async def roll_back_app(self, job: RollbackJob) -> ApplyResult:
        """Roll the base release back, then apply the cache and app phases at
        the old version's values.

        helm rollback restores the base release's Secret, passwords included.
        So Redis (the cache phase) is applied from the same values as the app.
        Its pod template's secrets digest then changes with the Secret, and
        Redis restarts with the password that the app reads.
        """
        request, plan = job.request, job.plan
        helm = self._deploy.helm(request.kube_context)
        kube = await self._deploy.kube(request.kube_context)
        await helm.run(
            [
                "rollback",
                request.release,
                str(plan.helm_revision),
                f"--namespace={request.namespace}",
            ]
        )

        objects = await self._render_phases(helm, request, plan)
        for obj in objects:
            obj["metadata"]["namespace"] = request.namespace
            await kube.apply(obj)
        log.info(
            "cache and app phases applied at the previous version",
            release=request.release,
            namespace=request.namespace,
            version=plan.target_version,
            objects=len(objects),
        )
        return ApplyResult(
            phase=Phase.APP,
            applied=len(objects),
            waits=[
                ref_of(obj, request.namespace)
                for obj in objects
                if obj["kind"] in readiness.WAITED_KINDS
            ],
            notes=[
                f"rolled helm release {request.release} back to revision "
                f"{plan.helm_revision}, and applied Redis with that revision's "
                "values, so that it reads the same Secret as the app"
            ],
        )

    async def _render_phases(
        self, helm: Helm, request: RollbackRequest, plan: RollbackPlan
    ) -> list[JsonObject]:
        """Render the cache and app phases from the target revision's values
        and version, cache objects first."""
        values = await self._values(helm, request, plan.helm_revision)
        values.pop("deployer", None)
        phases = [Phase.CACHE.value, Phase.APP.value]
        deployer: dict[str, Any] = {"phases": phases}
        key = await self._deploy.digest_key_for(request.chart, request.kube_context)
        if key is not None:
            deployer["secretsDigest"] = secrets_digest(
                key, request.namespace, request.release, values
            )
        values = deep_merge(
            values, {"deployer": deployer, "image": {"tag": plan.target_version}}
        )
        rendered = await helm.template(
            request.release, request.namespace, request.chart, values
        )
        return sorted(
            (
                obj
                for obj in rendered
                if (obj["metadata"].get("labels") or {}).get(PHASE_LABEL) in phases
            ),
            key=lambda obj: phases.index(obj["metadata"]["labels"][PHASE_LABEL]),
        )
