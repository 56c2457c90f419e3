"""One deploy at a time installs the operators: a claim held as a Lease.

Validate rejects a deploy whose operators another release installed, but two
deploys that validate at the same moment both find none and would both
install them. The base phase of a deploy that installs the operators reads
this claim, checks the cluster while the claim is free, and then takes it
with the resourceVersion of that read. The take fails if another deploy took
or gave back the claim since, and the deploy reads and checks again. Every
install runs between a take and a give-back, which are both writes to the
Lease, so a take that succeeds means that no install ran since the check
began. Giving the claim back clears its holder and keeps the Lease, so the
Lease changes on every give-back.

The check runs before the take because a list right after a write waits
until the API server's watch cache has caught up with that write. On the
test bed's API server that took about 75 ms (measured), on every deploy.

A holder renews the claim while it has it. A claim that was not renewed
within its duration (its worker died) is taken over. Expiry is judged by the
local clock against the holder's renewTime, so clocks more than the duration
apart would break the claim.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import structlog
from temporalio.exceptions import ApplicationError

from activities.kubeapi import (
    ConflictError,
    ForbiddenError,
    JsonObject,
    KubeApiError,
    KubeClient,
    NotFoundError,
    well_known,
)
from activities.waits import TRANSIENT_ERRORS
from deployer import contracts

log = structlog.get_logger()

LEASE = well_known("coordination.k8s.io/v1", "Lease")
# kube-system exists in every cluster, and only an identity that may create
# cluster roles installs the operators, so it may write a Lease there too.
CLAIM_NAMESPACE = "kube-system"
CLAIM_NAME = "ventros-deploy-operators"
CLAIM_DURATION_S = 60
# A holder that finds its claim lost (deleted, or taken by another deploy)
# stops its install, so renewals come often: an install takes seconds.
RENEW_EVERY_S = 3
POLL_EVERY_S = 0.5
# Below the apply activity's 6 min start-to-close timeout, so that a claim
# that is never given back fails the phase with its holder's name.
MAX_WAIT_S = 300


@dataclass(frozen=True)
class Holder:
    """The current holder of the claim, as read from the Lease."""

    identity: str
    renewed: datetime.datetime
    duration_s: int
    resource_version: str

    def expired(self, now: datetime.datetime) -> bool:
        """Tell whether the claim ran out, or was renewed at a future time.

        A renewTime later than a whole duration from now comes from a wrong
        clock or a hand edit, and would hold off every deploy until then.
        """
        duration = datetime.timedelta(seconds=self.duration_s)
        return now > self.renewed + duration or self.renewed > now + duration

    def describe(self) -> str:
        return (
            f"{self.identity or 'nobody'} (lease {CLAIM_NAMESPACE}/{CLAIM_NAME}, "
            f"renewed {_micro_time(self.renewed)} for {self.duration_s} s)"
        )

    @classmethod
    def of(cls, lease: JsonObject) -> Holder:
        spec = lease.get("spec") or {}
        renewed = spec.get("renewTime") or spec.get("acquireTime")
        return cls(
            identity=str(spec.get("holderIdentity") or ""),
            renewed=_parse_time(renewed) if renewed else _EPOCH,
            duration_s=int(spec.get("leaseDurationSeconds") or 0),
            resource_version=lease["metadata"]["resourceVersion"],
        )


_EPOCH = datetime.datetime.fromtimestamp(0, datetime.UTC)


def _parse_time(value: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))


def _micro_time(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def holder_identity(release: str, namespace: str) -> str:
    return f"release {release} in namespace {namespace}"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class OperatorClaim:
    """Take, renew and give back the operator claim for one deploy."""

    def __init__(
        self,
        kube: KubeClient,
        identity: str,
        *,
        attempt: str = "",
        duration_s: int = CLAIM_DURATION_S,
        renew_every_s: float = RENEW_EVERY_S,
        poll_every_s: float = POLL_EVERY_S,
        max_wait_s: float = MAX_WAIT_S,
        clock: Callable[[], datetime.datetime] = _now,
    ) -> None:
        self.kube = kube
        # The deploy's identity, and the holder written to the Lease: the same
        # with this attempt added, so that an attempt replaced by a newer one
        # of the same deploy finds the claim lost.
        self.deploy = identity
        self.identity = f"{identity} ({attempt})" if attempt else identity
        self.duration_s = duration_s
        self.renew_every_s = renew_every_s
        self.poll_every_s = poll_every_s
        self.max_wait_s = max_wait_s
        self.clock = clock
        self._lost_to: str | None = None

    @contextlib.asynccontextmanager
    async def held(self, check: Callable[[], Awaitable[None]]) -> AsyncIterator[None]:
        """Take the claim for the body once check passes while it is free.

        While another deploy has the claim, this waits until that deploy gives
        it back or its claim expires, for max_wait_s at the most. The caller's
        activity heartbeats meanwhile, and its cancellation ends the wait.
        check raises to reject the deploy, and then the claim is not taken.
        When a renewal finds the claim lost, the body is cancelled and a
        retryable OperatorClaimLost error is raised in its place.
        """
        started = time.monotonic()
        try:
            await self._take(check)
        except ForbiddenError as error:
            raise ApplicationError(
                f"forbidden: {error.message}. A deploy that installs the operators "
                f"first claims lease {CLAIM_NAMESPACE}/{CLAIM_NAME}, so that two "
                "deploys do not install them at once. The operator charts also "
                "create ClusterRoles: install the operators once with an "
                "administrator's rights and deploy with install_operators: false",
                type=contracts.FORBIDDEN,
                non_retryable=True,
            ) from error
        log.info(
            "operator claim taken",
            holder=self.identity,
            took_ms=round(1000 * (time.monotonic() - started)),
        )
        owner = asyncio.current_task()
        assert owner is not None  # An activity runs in a task.
        renewing = asyncio.create_task(self._renew_until_lost(owner))
        try:
            yield
        except asyncio.CancelledError:
            # Only a cancel of this claim's own (the claim was lost) turns into
            # an error; the activity's cancellation goes on as it is.
            if self._lost_to is None or owner.uncancel() > 0:
                raise
            raise ApplicationError(
                "lost the operator claim while installing the operators: lease "
                f"{CLAIM_NAMESPACE}/{CLAIM_NAME} was {self._lost_to}. The install "
                "was stopped so that two operators do not run at once; the retry "
                "checks for other operators again",
                type=contracts.OPERATOR_CLAIM_LOST,
            ) from None
        finally:
            renewing.cancel()
            closing = asyncio.ensure_future(self._close(renewing))
            try:
                await asyncio.shield(closing)
            except asyncio.CancelledError:
                # Give the claim back before the activity's cancel goes on, so
                # that other deploys need not wait for it to expire.
                await closing
                raise

    async def _close(self, renewing: asyncio.Task[None]) -> None:
        """Wait for the renew task to end, then give the claim back."""
        # wait() does not raise what ended the renew task, so a crash there
        # cannot replace the body's own result.
        await asyncio.wait([renewing])
        await self._give_back()

    def _lease(self, resource_version: str | None, acquired: bool) -> JsonObject:
        now = _micro_time(self.clock())
        spec: JsonObject = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self.duration_s,
            "renewTime": now,
        }
        if acquired:
            spec["acquireTime"] = now
        metadata: JsonObject = {
            "name": CLAIM_NAME,
            "namespace": CLAIM_NAMESPACE,
            "labels": {"app.kubernetes.io/managed-by": "ventros-deploy"},
        }
        if resource_version is not None:
            metadata["resourceVersion"] = resource_version
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": metadata,
            "spec": spec,
        }

    async def _take(self, check: Callable[[], Awaitable[None]]) -> None:
        waiting_for: str | None = None
        deadline = time.monotonic() + self.max_wait_s
        while True:
            current = await self.kube.get(LEASE, CLAIM_NAME, CLAIM_NAMESPACE)
            holder = None if current is None else Holder.of(current)
            if holder is None or self._may_take(holder):
                await check()
                if await self._take_unchanged(holder):
                    return
                # The claim changed since the read: read and check again, after
                # a pause, so that a take that keeps failing does not spin.
                self._check_deadline(deadline, holder)
                await asyncio.sleep(self.poll_every_s)
                continue
            if holder.identity != waiting_for:
                waiting_for = holder.identity
                log.info(
                    "waiting for another deploy's operator install",
                    holder=holder.identity,
                    lease=f"{CLAIM_NAMESPACE}/{CLAIM_NAME}",
                )
            self._check_deadline(deadline, holder)
            await asyncio.sleep(self.poll_every_s)

    def _check_deadline(self, deadline: float, holder: Holder | None) -> None:
        if time.monotonic() <= deadline:
            return
        held_by = holder.describe() if holder else "nobody"
        raise ApplicationError(
            f"waited {self.max_wait_s:.0f} s for the operator claim, held by "
            f"{held_by}. If that deploy no longer runs, delete the lease "
            f"(kubectl delete lease --namespace {CLAIM_NAMESPACE} {CLAIM_NAME}) "
            "and retry",
            type=contracts.PHASE_TIMEOUT,
            non_retryable=True,
        )

    def _may_take(self, holder: Holder) -> bool:
        """Tell whether the claim is free, this deploy's own, or expired.

        An earlier attempt of this deploy counts as its own: its worker died,
        or it is replaced and gives the claim up at its next renewal.
        """
        own = holder.identity == self.deploy or holder.identity.startswith(
            f"{self.deploy} ("
        )
        return holder.identity == "" or own or holder.expired(self.clock())

    async def _take_unchanged(self, holder: Holder | None) -> bool:
        """Take the claim as it was read; return False if it changed since."""
        try:
            if holder is None:
                await self.kube.create(
                    LEASE, self._lease(None, acquired=True), CLAIM_NAMESPACE
                )
                return True
            # The resourceVersion makes the patch fail if the Lease changed.
            lease = self._lease(holder.resource_version, acquired=True)
            await self.kube.merge_patch(LEASE, CLAIM_NAME, lease, CLAIM_NAMESPACE)
        except ConflictError:
            return False
        except NotFoundError:
            if holder is None:
                # The create itself found no such place: no kube-system
                # namespace, or no Lease kind served.
                raise
            return False
        if holder.identity not in ("", self.identity):
            log.warning(
                "took over an expired operator claim",
                previous_holder=holder.identity,
            )
        return True

    async def _renew_until_lost(self, owner: asyncio.Task[object]) -> None:
        """Renew the claim; cancel owner, the holding task, once it is lost.

        A claim not renewed for most of its duration counts as lost too:
        other deploys take it once the duration has passed.
        """
        renewed = time.monotonic()
        give_up_s = max(self.duration_s - 2 * self.renew_every_s, 0)
        while True:
            await asyncio.sleep(self.renew_every_s)
            try:
                lost_to = await self._renew()
                renewed = time.monotonic()
            except Exception as error:  # Any failure: retried until give_up_s.
                log.warning(
                    "renewing the operator claim failed",
                    holder=self.identity,
                    error=str(error),
                )
                if time.monotonic() - renewed < give_up_s:
                    continue
                lost_to = f"not renewed for {time.monotonic() - renewed:.0f} s"
            if lost_to is not None:
                log.warning(
                    "lost the operator claim; stopping the install",
                    holder=self.identity,
                    lease=lost_to,
                )
                self._lost_to = lost_to
                owner.cancel()
                return

    async def _renew(self) -> str | None:
        """Move the claim's renewTime to now; return how it was lost, or None."""
        current = await self.kube.get(LEASE, CLAIM_NAME, CLAIM_NAMESPACE)
        if current is None:
            return "deleted"
        holder = Holder.of(current)
        if holder.identity != self.identity:
            return f"taken by {holder.identity or 'nobody'}"
        # A conflict raises: the claim changed since the read, so the next
        # renewal reads it again.
        await self.kube.merge_patch(
            LEASE,
            CLAIM_NAME,
            {
                "metadata": {"resourceVersion": current["metadata"]["resourceVersion"]},
                "spec": {"renewTime": _micro_time(self.clock())},
            },
            CLAIM_NAMESPACE,
        )
        return None

    async def _give_back(self) -> None:
        """Clear the claim's holder if this deploy is still the holder.

        A failure here only leaves the claim to expire, so it is logged,
        not raised over the body's own result.
        """
        try:
            current = await self.kube.get(LEASE, CLAIM_NAME, CLAIM_NAMESPACE)
            if current is None or Holder.of(current).identity != self.identity:
                return
            await self.kube.merge_patch(
                LEASE,
                CLAIM_NAME,
                {
                    "metadata": {
                        "resourceVersion": current["metadata"]["resourceVersion"]
                    },
                    "spec": {
                        "holderIdentity": None,
                        "renewTime": _micro_time(self.clock()),
                    },
                },
                CLAIM_NAMESPACE,
            )
        except (KubeApiError, *TRANSIENT_ERRORS) as error:
            log.warning(
                "could not give back the operator claim; it expires on its own",
                error=str(error),
                expires_in_s=self.duration_s,
            )
