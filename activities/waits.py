"""Wait for one object to become ready by watching it, not polling.

A wait gets the object, judges it, then watches it from that
resourceVersion. It reconnects when the server ends the stream, lists again
after 410 Gone, reloads credentials once after 401, and keeps trying through
connection errors (an API server restart) until its deadline. Every verdict
goes to ``on_status`` so the activity can heartbeat it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import aiohttp
import structlog

from activities import readiness
from activities.kubeapi import (
    ApiUnreachableError,
    GoneError,
    JsonObject,
    KubeApiError,
    KubeClient,
    NoKindMatchError,
    UnauthorizedError,
    WatchStalledError,
    well_known,
)
from deployer.phases import ObjectRef

log = structlog.get_logger("ventros.wait")

WATCH_TIMEOUT_S = 50
# The client-side watchdog: a stream silent this long is dropped. Bookmarks
# arrive about once a minute, and the server ends the stream after 50 s.
WATCH_IDLE_S = 65.0
SYNC_FAILED_GRACE_S = 60.0
RETRY_DELAYS_S = (0.2, 0.5, 1.0, 2.0, 4.0)
TRANSIENT_ERRORS = (OSError, aiohttp.ClientError, asyncio.TimeoutError)
JOB = well_known("batch/v1", "Job")
POD = well_known("v1", "Pod")
JOB_FAILED_CONDITIONS = ("Failed", "FailureTarget")


class TerminalFailure(Exception):
    """The object reached a state that waiting cannot fix."""

    def __init__(self, ref: ObjectRef, status: str, reason: str) -> None:
        self.ref = ref
        self.status = status
        self.reason = reason
        super().__init__(f"{ref.describe()} failed: {reason} (observed: {status})")


class WaitTimeout(Exception):
    """The deadline passed before the object was ready."""

    def __init__(self, ref: ObjectRef, status: str, waited_s: float) -> None:
        self.ref = ref
        self.status = status
        super().__init__(
            f"timed out after {waited_s:.0f} s waiting for {ref.describe()} "
            f"to be ready; last observed status: {status}"
        )


StatusCallback = Callable[[ObjectRef, str], None]


async def wait_ready(
    kube: KubeClient, ref: ObjectRef, deadline: float, on_status: StatusCallback
) -> str:
    """Return the ready object's status line; raise TerminalFailure or WaitTimeout.

    deadline is a time.monotonic() value.
    """
    started = time.monotonic()
    last = "not observed yet"
    soft_failure_since: float | None = None
    reloaded = False
    attempt = 0
    seen = False

    def judge(obj: JsonObject | None) -> bool:
        nonlocal last, soft_failure_since, seen
        if obj is None:
            # Something else deleted an object that the wait saw, for example
            # a destroy of the release: the wait goes on until the deadline.
            last = "deleted after it was seen" if seen else "not found yet"
            on_status(ref, last)
            return False
        seen = True
        verdict = readiness.evaluate(obj)
        last = verdict.status
        on_status(ref, last)
        if verdict.failure and not verdict.soft_failure:
            raise TerminalFailure(ref, verdict.status, verdict.failure)
        if verdict.soft_failure:
            soft_failure_since = soft_failure_since or time.monotonic()
            if time.monotonic() - soft_failure_since > SYNC_FAILED_GRACE_S:
                raise TerminalFailure(
                    ref,
                    verdict.status,
                    f"{verdict.failure} for more than {SYNC_FAILED_GRACE_S:.0f} s",
                )
        else:
            soft_failure_since = None
        return verdict.ready

    async def pause() -> None:
        nonlocal attempt
        delay = RETRY_DELAYS_S[min(attempt, len(RETRY_DELAYS_S) - 1)]
        attempt += 1
        await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))

    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise WaitTimeout(ref, last, time.monotonic() - started)
        try:
            async with asyncio.timeout(remaining):
                rtype = await kube.resource_type(ref.api_version, ref.kind)
                obj = await kube.get(rtype, ref.name, ref.namespace)
                if judge(obj):
                    return last
                version = (
                    obj["metadata"]["resourceVersion"]
                    if obj
                    else (
                        await kube.list(
                            rtype,
                            ref.namespace,
                            field_selector=f"metadata.name={ref.name}",
                        )
                    )["metadata"]["resourceVersion"]
                )
                attempt = 0
                while True:
                    async for event in kube.watch(
                        rtype,
                        ref.namespace,
                        resource_version=version,
                        name=ref.name,
                        timeout_s=WATCH_TIMEOUT_S,
                        idle_timeout_s=WATCH_IDLE_S,
                    ):
                        version = event["object"]["metadata"]["resourceVersion"]
                        if event["type"] == "BOOKMARK":
                            continue
                        if judge(
                            None if event["type"] == "DELETED" else event["object"]
                        ):
                            return last
        except TimeoutError:
            continue  # The deadline check at the top raises WaitTimeout.
        except (GoneError, WatchStalledError) as error:
            log.debug("watch restarting", object=ref.describe(), reason=str(error))
        except NoKindMatchError:
            kube.forget_discovery(ref.api_version)
            last = f"kind {ref.kind} ({ref.api_version}) is not served yet"
            on_status(ref, last)
            await pause()
        except UnauthorizedError:
            if reloaded:
                raise
            reloaded = True
            log.warning(
                "credentials rejected; reloading the kubeconfig once",
                object=ref.describe(),
            )
            await kube.reload_credentials()
        except KubeApiError as error:
            if error.status < 500 and error.status != 429:
                raise
            last = f"API server error {error.status} ({error.reason}); retrying"
            on_status(ref, last)
            await pause()
        except ApiUnreachableError as error:
            last = f"{error}; retrying"
            on_status(ref, last)
            await pause()
        except TRANSIENT_ERRORS as error:
            last = f"API server unreachable ({error.__class__.__name__}); retrying"
            on_status(ref, last)
            await pause()


async def wait_object_ready(
    kube: KubeClient, ref: ObjectRef, deadline: float, on_status: StatusCallback
) -> str:
    """Wait for ref like wait_ready, and end a Job's wait once its pods succeeded.

    The Job controller of Kubernetes v1.36.3 syncs a Job at most once a second
    after its pods change (SyncJobBatchPeriod), so the Complete condition comes
    up to 1 s after the last pod succeeded. A Job whose pods have all
    succeeded, with no failure condition and no deadline that could still
    pass, turns Complete at the next sync, so the wait ends there. Failures
    and timeouts still come from the Job itself.
    """
    if (ref.api_version, ref.kind) != ("batch/v1", "Job"):
        return await wait_ready(kube, ref, deadline, on_status)
    by_condition = asyncio.create_task(wait_ready(kube, ref, deadline, on_status))
    by_pods = asyncio.create_task(job_pods_succeeded(kube, ref))
    try:
        await asyncio.wait({by_condition, by_pods}, return_when=asyncio.FIRST_COMPLETED)
        if not by_condition.done():
            error = by_pods.exception()
            if error is not None:
                log.warning(
                    "watching the Job's pods failed; waiting for its condition",
                    object=ref.describe(),
                    error=repr(error),
                )
            elif line := by_pods.result():
                on_status(ref, line)
                return line
        return await by_condition
    finally:
        for task in (by_condition, by_pods):
            task.cancel()
        await asyncio.gather(by_condition, by_pods, return_exceptions=True)


async def job_pods_succeeded(kube: KubeClient, ref: ObjectRef) -> str | None:
    """Return a status line once the Job's pods show it has succeeded.

    That is: spec.completions pods Succeeded, every other pod ended (none
    pending or running), and no more failed pods than backoffLimit allows.
    Return None for a Job the pods cannot judge (Indexed, suspended, with
    activeDeadlineSeconds, a podFailurePolicy or no completions) or one that
    failed: the wait on the Job itself then decides. API errors restart the
    watch after a pause, because that wait reports them.
    """
    while True:
        try:
            job = await kube.get(JOB, ref.name, ref.namespace)
            if job is None:
                await asyncio.sleep(RETRY_DELAYS_S[1])
                continue
            if not _pods_can_judge(job):
                return None
            uid = job["metadata"]["uid"]
            selector = f"batch.kubernetes.io/controller-uid={uid}"
            listing = await kube.list(POD, ref.namespace, label_selector=selector)
            pods = {p["metadata"]["name"]: p for p in listing.get("items", [])}
            version = listing["metadata"]["resourceVersion"]
            while not _pods_done(job, pods):
                async for event in kube.watch(
                    POD,
                    ref.namespace,
                    resource_version=version,
                    label_selector=selector,
                    timeout_s=WATCH_TIMEOUT_S,
                    idle_timeout_s=WATCH_IDLE_S,
                ):
                    pod = event["object"]
                    version = pod["metadata"]["resourceVersion"]
                    if event["type"] == "BOOKMARK":
                        continue
                    if event["type"] == "DELETED":
                        pods.pop(pod["metadata"]["name"], None)
                    else:
                        pods[pod["metadata"]["name"]] = pod
                    if _pods_done(job, pods):
                        break
            return await _confirm_job(kube, ref, uid, job)
        except (GoneError, WatchStalledError):
            continue
        except (KubeApiError, *TRANSIENT_ERRORS):
            await asyncio.sleep(RETRY_DELAYS_S[-1])


def _pods_can_judge(job: JsonObject) -> bool:
    spec = job.get("spec") or {}
    return (
        spec.get("completionMode", "NonIndexed") == "NonIndexed"
        and not spec.get("suspend")
        and not spec.get("activeDeadlineSeconds")
        and not spec.get("podFailurePolicy")
        and spec.get("completions") is not None
    )


def _pods_done(job: JsonObject, pods: dict[str, JsonObject]) -> bool:
    spec = job.get("spec") or {}
    phases = [(p.get("status") or {}).get("phase") for p in pods.values()]
    return (
        all(phase in ("Succeeded", "Failed") for phase in phases)
        and phases.count("Succeeded") >= int(spec["completions"])
        and phases.count("Failed") <= int(spec.get("backoffLimit", 6))
    )


async def _confirm_job(
    kube: KubeClient, ref: ObjectRef, uid: str, seen: JsonObject
) -> str | None:
    """Return the status line if the Job is still the one judged and not failed."""
    job = await kube.get(JOB, ref.name, ref.namespace)
    if job is None or job["metadata"]["uid"] != uid or not _pods_can_judge(job):
        return None
    conditions = (job.get("status") or {}).get("conditions") or []
    if any(
        c.get("type") in JOB_FAILED_CONDITIONS and c.get("status") == "True"
        for c in conditions
    ):
        return None
    completions = int((seen.get("spec") or {})["completions"])
    return (
        f"Complete: {completions} of {completions} pods succeeded "
        "(the Job's Complete condition follows within 1 s)"
    )
