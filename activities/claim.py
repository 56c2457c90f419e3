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
RENEW_EVERY_S = 15
POLL_EVERY_S = 0.5


@dataclass(frozen=True)
class Holder:
    """The current holder of the claim, as read from the Lease."""

    identity: str
    renewed: datetime.datetime
    duration_s: int
    resource_version: str

    def expired(self, now: datetime.datetime) -> bool:
        return now > self.renewed + datetime.timedelta(seconds=self.duration_s)

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
        duration_s: int = CLAIM_DURATION_S,
        renew_every_s: float = RENEW_EVERY_S,
        poll_every_s: float = POLL_EVERY_S,
        clock: Callable[[], datetime.datetime] = _now,
    ) -> None:
        self.kube = kube
        self.identity = identity
        self.duration_s = duration_s
        self.renew_every_s = renew_every_s
        self.poll_every_s = poll_every_s
        self.clock = clock

    @contextlib.asynccontextmanager
    async def held(self, check: Callable[[], Awaitable[None]]) -> AsyncIterator[None]:
        """Take the claim for the body once check passes while it is free.

        While another deploy has the claim, this waits until that deploy gives
        it back or its claim expires. The caller's activity heartbeats
        meanwhile, and its cancellation ends the wait. check raises to reject
        the deploy, and then the claim is not taken.
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
        renewing = asyncio.create_task(self._renew_until_cancelled())
        try:
            yield
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing
            await self._give_back()

    def _lease(self, resource_version: str | None, taken: bool) -> JsonObject:
        now = _micro_time(self.clock())
        spec: JsonObject = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self.duration_s,
            "renewTime": now,
        }
        if taken:
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
        while True:
            current = await self.kube.get(LEASE, CLAIM_NAME, CLAIM_NAMESPACE)
            holder = None if current is None else Holder.of(current)
            if holder is None or self._may_take(holder):
                await check()
                if await self._take_unchanged(holder):
                    return
                continue  # The claim changed since the read: read and check again.
            if holder.identity != waiting_for:
                waiting_for = holder.identity
                log.info(
                    "waiting for another deploy's operator install",
                    holder=holder.identity,
                    lease=f"{CLAIM_NAMESPACE}/{CLAIM_NAME}",
                )
            await asyncio.sleep(self.poll_every_s)

    def _may_take(self, holder: Holder) -> bool:
        """Tell whether the claim is free, this deploy's own, or expired."""
        return holder.identity in ("", self.identity) or holder.expired(self.clock())

    async def _take_unchanged(self, holder: Holder | None) -> bool:
        """Take the claim as it was read; return False if it changed since."""
        try:
            if holder is None:
                await self.kube.create(
                    LEASE, self._lease(None, taken=True), CLAIM_NAMESPACE
                )
                return True
            # The resourceVersion makes the patch fail if the Lease changed.
            lease = self._lease(holder.resource_version, taken=True)
            await self.kube.merge_patch(LEASE, CLAIM_NAME, lease, CLAIM_NAMESPACE)
        except (ConflictError, NotFoundError):
            return False
        if holder.identity not in ("", self.identity):
            log.warning(
                "took over an expired operator claim",
                previous_holder=holder.identity,
            )
        return True

    async def _renew_until_cancelled(self) -> None:
        while True:
            await asyncio.sleep(self.renew_every_s)
            try:
                if not await self._renew():
                    log.warning("lost the operator claim", holder=self.identity)
                    return
            except (KubeApiError, *TRANSIENT_ERRORS) as error:
                # The next renewal may get through before the claim expires.
                log.warning(
                    "renewing the operator claim failed",
                    holder=self.identity,
                    error=str(error),
                )

    async def _renew(self) -> bool:
        """Move the claim's renewTime to now; return False if it was lost."""
        current = await self.kube.get(LEASE, CLAIM_NAME, CLAIM_NAMESPACE)
        if current is None or Holder.of(current).identity != self.identity:
            return False
        with contextlib.suppress(ConflictError):
            await self.kube.merge_patch(
                LEASE,
                CLAIM_NAME,
                {
                    "metadata": {
                        "resourceVersion": current["metadata"]["resourceVersion"]
                    },
                    "spec": {"renewTime": _micro_time(self.clock())},
                },
                CLAIM_NAMESPACE,
            )
        return True

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
