"""The operator claim: one deploy at a time installs the operators.

The claim is a Lease on the local API server; the deploy tests start two
real deploys that both passed validate before either installed anything.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import gzip
import json
import os
import shlex
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import structlog
from temporalio.client import WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from activities import claim as claim_module
from activities.claim import (
    CLAIM_NAME,
    CLAIM_NAMESPACE,
    LEASE,
    OperatorClaim,
    holder_identity,
)
from activities.kubeapi import JsonObject, KubeClient, NotFoundError, well_known
from deployer import contracts
from deployer.phases import DeployStatus, PhaseState
from deployer.settings import WorkerSettings
from testbed.cluster import LocalCluster
from testbed.leftovers import remove_namespace
from tests.conftest import deploy_request, running_worker
from tests.e2e.test_deploy import start, status_of

NAMESPACE_TYPE = well_known("v1", "Namespace")
DEPLOYMENT = well_known("apps/v1", "Deployment")
SECRET = well_known("v1", "Secret")
OPERATORS = "app.kubernetes.io/name in (postgres-operator,rabbitmq-cluster-operator)"


async def read_claim(kube: KubeClient) -> JsonObject | None:
    return await kube.get(LEASE, CLAIM_NAME, CLAIM_NAMESPACE)


@pytest_asyncio.fixture
async def no_claim(kube: KubeClient) -> AsyncIterator[None]:
    """Start and end each test with no Lease, so no deploy waits for one."""
    await kube.delete(LEASE, CLAIM_NAME, CLAIM_NAMESPACE)
    yield
    await kube.delete(LEASE, CLAIM_NAME, CLAIM_NAMESPACE)


async def put_claim(kube: KubeClient, holder: str | None, renewed_ago_s: float) -> None:
    """Create the Lease as a holder (None: no holder, a free claim) left it."""
    renewed = datetime.datetime.now(datetime.UTC) - datetime.timedelta(
        seconds=renewed_ago_s
    )
    stamp = renewed.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    await kube.create(
        LEASE,
        {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": CLAIM_NAME, "namespace": CLAIM_NAMESPACE},
            "spec": {
                "leaseDurationSeconds": 60,
                "acquireTime": stamp,
                "renewTime": stamp,
                **({} if holder is None else {"holderIdentity": holder}),
            },
        },
        CLAIM_NAMESPACE,
    )


def holder_of(lease: JsonObject | None) -> str | None:
    """Return the claim's holder; None when the Lease is missing or free."""
    return None if lease is None else lease["spec"].get("holderIdentity")


async def nothing_to_check() -> None:
    return None


@pytest.mark.usefixtures("no_claim")
async def test_claim_waits_for_the_holder(kube: KubeClient) -> None:
    """A second claimant waits while the first holds the claim, takes it
    when the first gives it back, and deletes the Lease when it is done."""
    first = OperatorClaim(kube, "first", poll_every_s=0.1)
    second = OperatorClaim(kube, "second", poll_every_s=0.1)
    second_in = asyncio.Event()

    async def second_holds() -> str | None:
        async with second.held(nothing_to_check):
            second_in.set()
            return holder_of(await read_claim(kube))

    async with first.held(nothing_to_check):
        assert holder_of(await read_claim(kube)) == "first"
        waiting = asyncio.create_task(second_holds())
        await asyncio.sleep(1)
        assert not second_in.is_set()
        assert holder_of(await read_claim(kube)) == "first"
    assert await asyncio.wait_for(waiting, timeout=5) == "second"
    assert holder_of(await read_claim(kube)) is None


@pytest.mark.usefixtures("no_claim")
async def test_expired_claim_is_taken_over(kube: KubeClient) -> None:
    """A claim its holder stopped renewing (a dead worker) is taken at once."""
    await put_claim(kube, "a worker that died", renewed_ago_s=61)
    with structlog.testing.capture_logs() as logs:
        async with asyncio.timeout(2):
            async with OperatorClaim(kube, "next").held(nothing_to_check):
                claimed = await read_claim(kube)
    assert holder_of(claimed) == "next"
    assert any(
        e.get("previous_holder") == "a worker that died"
        and e["event"] == "took over an expired operator claim"
        for e in logs
    ), logs


@pytest.mark.usefixtures("no_claim")
async def test_fresh_claim_not_taken(kube: KubeClient) -> None:
    """A claim renewed within its duration keeps another claimant waiting.
    Cancelling the waiting claimant leaves the Lease as it was."""
    await put_claim(kube, "someone", renewed_ago_s=50)
    before = await read_claim(kube)

    async def hold() -> None:
        async with OperatorClaim(kube, "waiter", poll_every_s=0.1).held(
            nothing_to_check
        ):
            raise AssertionError("took a claim that had not expired")

    waiting = asyncio.create_task(hold())
    await asyncio.sleep(1)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert await read_claim(kube) == before


@pytest.mark.usefixtures("no_claim")
async def test_claim_renewed_while_held(kube: KubeClient) -> None:
    """The holder renews the claim, so a long install does not lose it."""
    async with OperatorClaim(kube, "slow", renew_every_s=0.3).held(nothing_to_check):
        first = (await read_claim(kube) or {})["spec"]["renewTime"]
        await asyncio.sleep(1)
        later = await read_claim(kube) or {}
    assert holder_of(later) == "slow"
    assert later["spec"]["renewTime"] > first
    assert later["spec"]["acquireTime"] == first


@pytest.mark.usefixtures("no_claim")
async def test_claim_renewal_survives_api_error(cluster: LocalCluster) -> None:
    """A renewal that fails (API server unreachable for one request) is
    tried again later, and does not fail the install it runs beside."""
    kube = await KubeClient.connect(str(cluster.kubeconfig))
    real_get = kube.get
    calls = 0

    async def get_failing_once(*args: Any, **kwargs: Any) -> JsonObject | None:
        nonlocal calls
        calls += 1
        if calls == 2:  # The first get is the take, the second a renewal.
            raise aiohttp.ClientConnectionError("connection refused")
        return await real_get(*args, **kwargs)

    try:
        kube.get = get_failing_once  # type: ignore[method-assign]
        with structlog.testing.capture_logs() as logs:
            async with OperatorClaim(kube, "patient", renew_every_s=0.2).held(
                nothing_to_check
            ):
                first = (await real_get(LEASE, CLAIM_NAME, CLAIM_NAMESPACE) or {})[
                    "spec"
                ]["renewTime"]
                await asyncio.sleep(1)
                later = await real_get(LEASE, CLAIM_NAME, CLAIM_NAMESPACE) or {}
        after = await real_get(LEASE, CLAIM_NAME, CLAIM_NAMESPACE)
    finally:
        await kube.close()
    assert calls >= 3
    assert any(e["event"] == "renewing the operator claim failed" for e in logs)
    assert later["spec"]["renewTime"] > first
    assert holder_of(after) is None


@pytest.mark.usefixtures("no_claim")
async def test_future_renewal_is_expired(kube: KubeClient) -> None:
    """A claim renewed an hour from now (a wrong clock or a hand edit) is
    taken over at once instead of holding off every deploy for an hour."""
    await put_claim(kube, "a fast clock", renewed_ago_s=-3600)
    async with asyncio.timeout(2):
        async with OperatorClaim(kube, "next").held(nothing_to_check):
            holder = holder_of(await read_claim(kube))
    assert holder == "next"


@pytest.mark.usefixtures("no_claim")
async def test_claim_wait_is_bounded(kube: KubeClient) -> None:
    """A claim that is renewed but never given back fails the wait after
    max_wait_s, naming the holder and how to free the claim."""
    await put_claim(kube, "a stuck deploy", renewed_ago_s=0)
    claim = OperatorClaim(kube, "waiter", poll_every_s=0.1, max_wait_s=1)
    with pytest.raises(ApplicationError) as failure:
        async with asyncio.timeout(5):
            async with claim.held(nothing_to_check):
                raise AssertionError("took a claim that had not expired")
    assert failure.value.type == contracts.PHASE_TIMEOUT
    assert failure.value.non_retryable
    assert "held by a stuck deploy" in failure.value.message
    assert f"kubectl delete lease --namespace {CLAIM_NAMESPACE}" in (
        failure.value.message
    )


@pytest.mark.parametrize(
    ("change", "how"),
    [("delete", "was deleted"), ("take", "was taken by an intruder")],
)
@pytest.mark.usefixtures("no_claim")
async def test_lost_claim_stops_install(
    kube: KubeClient, change: str, how: str
) -> None:
    """A claim deleted or taken while its holder installs stops the install
    at the next renewal, with a retryable OperatorClaimLost error."""
    finished = False

    async def lose_claim() -> None:
        await asyncio.sleep(0.5)
        if change == "delete":
            await kube.delete(LEASE, CLAIM_NAME, CLAIM_NAMESPACE)
        else:
            await kube.merge_patch(
                LEASE,
                CLAIM_NAME,
                {"spec": {"holderIdentity": "an intruder"}},
                CLAIM_NAMESPACE,
            )

    losing = asyncio.create_task(lose_claim())
    with pytest.raises(ApplicationError) as failure:
        async with asyncio.timeout(5):
            async with OperatorClaim(kube, "installer", renew_every_s=0.2).held(
                nothing_to_check
            ):
                await asyncio.sleep(30)
                finished = True
    await losing
    assert failure.value.type == contracts.OPERATOR_CLAIM_LOST
    assert not failure.value.non_retryable
    assert how in failure.value.message
    assert not finished


@pytest.mark.usefixtures("no_claim")
async def test_newer_attempt_replaces_older(kube: KubeClient) -> None:
    """A newer attempt of the same deploy takes the claim at once. The older
    attempt, still running, then stops its install and leaves the newer
    one's claim alone."""
    identity = holder_identity("crm", "shop")
    older = OperatorClaim(kube, identity, attempt="attempt 1", renew_every_s=0.2)
    newer = OperatorClaim(kube, identity, attempt="attempt 2")
    started = asyncio.Event()

    async def older_install() -> None:
        async with older.held(nothing_to_check):
            started.set()
            await asyncio.sleep(30)

    running = asyncio.create_task(older_install())
    await started.wait()
    with pytest.raises(ApplicationError) as failure:
        async with asyncio.timeout(5):
            async with newer.held(nothing_to_check):
                await running
    holder = holder_of(await read_claim(kube))
    assert failure.value.type == contracts.OPERATOR_CLAIM_LOST
    assert f"taken by {identity} (attempt 2)" in failure.value.message
    assert holder is None


@pytest.mark.usefixtures("no_claim")
async def test_unrenewed_claim_counts_as_lost(cluster: LocalCluster) -> None:
    """A holder whose renewals keep failing stops its install before others
    may take the claim as expired."""
    kube = await KubeClient.connect(str(cluster.kubeconfig))
    real_get = kube.get
    claim_taken = asyncio.Event()

    async def get_failing_after_take(*args: Any, **kwargs: Any) -> JsonObject | None:
        if claim_taken.is_set():
            raise aiohttp.ClientConnectionError("connection refused")
        return await real_get(*args, **kwargs)

    claim = OperatorClaim(kube, "cut off", duration_s=2, renew_every_s=0.2)
    try:
        kube.get = get_failing_after_take  # type: ignore[method-assign]
        with pytest.raises(ApplicationError) as failure:
            async with asyncio.timeout(5):
                async with claim.held(nothing_to_check):
                    claim_taken.set()
                    await asyncio.sleep(30)
    finally:
        await kube.close()
    assert failure.value.type == contracts.OPERATOR_CLAIM_LOST
    assert "not renewed for" in failure.value.message


async def test_missing_claim_namespace_fails_at_once(
    kube: KubeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A namespace for the claim that does not exist fails the take at once
    instead of trying again without a pause."""
    monkeypatch.setattr(claim_module, "CLAIM_NAMESPACE", "no-such-namespace")
    checks = 0

    async def count_check() -> None:
        nonlocal checks
        checks += 1

    with pytest.raises(NotFoundError):
        async with asyncio.timeout(5):
            async with OperatorClaim(kube, "lost").held(count_check):
                raise AssertionError("took a claim in a missing namespace")
    assert checks == 1


@pytest.mark.usefixtures("no_claim")
async def test_cancel_while_held_stays_cancel(kube: KubeClient) -> None:
    """Cancelling the holding activity (an abort) stays a cancellation and
    gives the claim back."""

    async def hold() -> None:
        async with OperatorClaim(kube, "aborted", renew_every_s=0.2).held(
            nothing_to_check
        ):
            await asyncio.sleep(30)

    holding = asyncio.create_task(hold())
    await asyncio.sleep(0.5)
    holding.cancel()
    with pytest.raises(asyncio.CancelledError):
        await holding
    assert holder_of(await read_claim(kube)) is None


@pytest.mark.usefixtures("no_claim")
async def test_cancel_during_give_back(cluster: LocalCluster) -> None:
    """An abort that arrives while the claim is being given back still lets
    the give-back finish, then ends the activity as cancelled."""
    kube = await KubeClient.connect(str(cluster.kubeconfig))
    real_patch = kube.merge_patch
    giving_back = asyncio.Event()

    async def slow_give_back(*args: Any, **kwargs: Any) -> JsonObject:
        patch = args[2]
        if "holderIdentity" in patch.get("spec", {}) and (
            patch["spec"]["holderIdentity"] is None
        ):
            giving_back.set()
            await asyncio.sleep(0.5)
        return await real_patch(*args, **kwargs)

    async def hold() -> None:
        async with OperatorClaim(kube, "aborted late").held(nothing_to_check):
            pass

    try:
        kube.merge_patch = slow_give_back  # type: ignore[method-assign]
        holding = asyncio.create_task(hold())
        await asyncio.wait_for(giving_back.wait(), timeout=5)
        holding.cancel()
        with pytest.raises(asyncio.CancelledError):
            await holding
        holder = holder_of(await kube.get(LEASE, CLAIM_NAME, CLAIM_NAMESPACE))
    finally:
        await kube.close()
    assert holder is None


@pytest.mark.usefixtures("no_claim")
async def test_failed_check_takes_nothing(kube: KubeClient) -> None:
    """A check that rejects the deploy leaves the claim untaken."""
    await put_claim(kube, None, renewed_ago_s=5)
    before = await read_claim(kube)

    async def reject() -> None:
        raise RuntimeError("operators found")

    with pytest.raises(RuntimeError, match="operators found"):
        async with OperatorClaim(kube, "rejected").held(reject):
            raise AssertionError("ran the body after a failed check")
    assert await read_claim(kube) == before


@pytest.mark.usefixtures("no_claim")
async def test_claim_changed_during_check(kube: KubeClient) -> None:
    """Another deploy takes and gives back the claim while this one checks:
    the take fails on the resourceVersion, and the check runs again, so it
    finds what that deploy installed."""
    await put_claim(kube, None, renewed_ago_s=5)
    checks = 0

    async def other_deploy_meanwhile() -> None:
        nonlocal checks
        checks += 1
        if checks == 1:
            async with OperatorClaim(kube, "other").held(nothing_to_check):
                pass

    async with asyncio.timeout(5):
        async with OperatorClaim(kube, "this").held(other_deploy_meanwhile):
            holder = holder_of(await read_claim(kube))
    assert checks == 2
    assert holder == "this"


@pytest.mark.usefixtures("no_claim")
async def test_claim_given_back_on_failure(kube: KubeClient) -> None:
    """A failed install gives the claim back at once, so other deploys need
    not wait for it to expire. A retry by the same deploy takes it again."""
    claim = OperatorClaim(kube, "failing")
    with pytest.raises(RuntimeError, match="helm failed"):
        async with claim.held(nothing_to_check):
            raise RuntimeError("helm failed")
    assert holder_of(await read_claim(kube)) is None
    # The state a retry finds after a worker died inside the body.
    await kube.delete(LEASE, CLAIM_NAME, CLAIM_NAMESPACE)
    await put_claim(kube, "failing", renewed_ago_s=0)
    async with asyncio.timeout(2):
        async with claim.held(nothing_to_check):
            assert holder_of(await read_claim(kube)) == "failing"


async def base_attempted(handle: WorkflowHandle[Any, Any]) -> bool:
    status = await status_of(handle)
    base = next(r for r in status.phases if r.phase.value == "base")
    return base.state is PhaseState.RUNNING and base.attempts >= 1


async def until_base_attempted(*handles: WorkflowHandle[Any, Any]) -> None:
    """Return once each deploy's base phase has started; fail after 60 s."""
    for _ in range(200):
        if all([await base_attempted(h) for h in handles]):
            return
        await asyncio.sleep(0.3)
    raise AssertionError("the base phase of a deploy did not start within 60 s")


@contextlib.asynccontextmanager
async def extra_namespace(kube: KubeClient, name: str) -> AsyncIterator[str]:
    body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    await kube.create(NAMESPACE_TYPE, body)
    try:
        yield name
    finally:
        await remove_namespace(kube, name)


async def settled(handle: WorkflowHandle[Any, Any]) -> DeployStatus:
    """Return the deploy's status once it succeeded or a phase waits for retry.

    A phase that fails as non-retryable waits for retry or abort, so the run
    does not end by itself.
    """
    for _ in range(600):
        status = await status_of(handle)
        if status.state == "succeeded" or any(
            r.state is PhaseState.WAITING_FOR_RETRY for r in status.phases
        ):
            return status
        await asyncio.sleep(0.3)
    raise AssertionError(f"deploy {handle.id} neither succeeded nor failed")


@pytest.mark.usefixtures("no_claim")
async def test_concurrent_operator_installs(
    temporal_env: WorkflowEnvironment,
    worker_settings: WorkerSettings,
    kube: KubeClient,
    namespace: str,
) -> None:
    """Two deploys that both passed validate before either installed the
    operators: one installs them, the other's base phase fails once, as
    OperatorsInstalled naming the first's operators, before it applied
    anything.

    The test keeps the claim until both deploys wait for it, so both have
    passed validate, whose check found no operators.
    """
    await put_claim(kube, "the test", renewed_ago_s=0)
    async with (
        extra_namespace(kube, f"{namespace}-b") as second,
        running_worker(temporal_env.client, worker_settings),
    ):
        namespaces = (namespace, second)
        handles = [
            await start(temporal_env, worker_settings, deploy_request(where))
            for where in namespaces
        ]
        await until_base_attempted(*handles)
        assert holder_of(await read_claim(kube)) == "the test"
        await kube.delete(LEASE, CLAIM_NAME, CLAIM_NAMESPACE)

        statuses = await asyncio.gather(*(settled(h) for h in handles))
        operators = await kube.list(DEPLOYMENT, label_selector=OPERATORS)
        claim_after = await read_claim(kube)
        won = [i for i, s in enumerate(statuses) if s.state == "succeeded"]
        assert len(won) == 1, [s.model_dump_json() for s in statuses]
        winner, loser = namespaces[won[0]], namespaces[1 - won[0]]
        loser_handle = handles[1 - won[0]]
        releases = await kube.list(SECRET, loser, label_selector="owner=helm")
        await loser_handle.execute_update("abort", "the test saw it", result_type=str)
        with pytest.raises(WorkflowFailureError):
            await asyncio.wait_for(loser_handle.result(), timeout=60)

    base = next(r for r in statuses[1 - won[0]].phases if r.phase.value == "base")
    assert base.error_type == contracts.OPERATORS_INSTALLED, base.error
    assert base.attempts == 1
    assert base.error is not None
    assert f"in namespace {winner}, helm release" in base.error
    assert "install_operators: false" in base.error
    # The losing deploy applied nothing: no release, no operator of its own.
    assert releases["items"] == []
    where = sorted(
        (o["metadata"]["namespace"], o["metadata"]["name"]) for o in operators["items"]
    )
    assert where == [
        (winner, "ventros-crm-postgres-operator"),
        (winner, "ventros-crm-rabbitmq-operator"),
    ]
    assert holder_of(claim_after) is None


@pytest.mark.usefixtures("no_claim")
async def test_deploy_waits_for_a_held_claim(
    temporal_env: WorkflowEnvironment,
    worker_settings: WorkerSettings,
    kube: KubeClient,
    namespace: str,
) -> None:
    """A deploy whose base phase finds the claim held waits for it, without
    creating its namespace's objects, and goes on once it is given back."""
    holder = holder_identity("other", "elsewhere")
    await put_claim(kube, holder, renewed_ago_s=0)
    async with running_worker(temporal_env.client, worker_settings):
        handle = await start(temporal_env, worker_settings, deploy_request(namespace))
        await until_base_attempted(handle)
        await asyncio.sleep(2)
        deployments = await kube.list(DEPLOYMENT, namespace)
        releases = await kube.list(SECRET, namespace, label_selector="owner=helm")
        assert deployments["items"] == []
        assert releases["items"] == []
        await kube.delete(LEASE, CLAIM_NAME, CLAIM_NAMESPACE)
        result = DeployStatus.model_validate(
            await asyncio.wait_for(handle.result(), timeout=180)
        )
    assert result.state == "succeeded"
    base = next(r for r in result.phases if r.phase.value == "base")
    assert base.attempts == 1
    assert holder_of(await read_claim(kube)) is None


@pytest.mark.parametrize("remote_chart", [False, True])
async def test_pending_operator_install_rejected(
    temporal_env: WorkflowEnvironment,
    worker_settings: WorkerSettings,
    kube: KubeClient,
    namespace: str,
    remote_chart: bool,
) -> None:
    """Another release's postgres-operator that helm is installing (its
    record pending-install, no Deployment yet) rejects installing ours.

    With a repository chart in the request, the rejection comes before the
    chart is fetched (from a loopback port where nothing listens), so the
    worker contacts no repository for a request that the cluster rejects.
    """
    request = deploy_request(namespace)
    if remote_chart:
        repository = "oci://127.0.0.1:9/charts"
        worker_settings = worker_settings.model_copy(
            update={"chart_repositories": repository}
        )
        request["operator_charts"]["temporal"] = {
            "repository": repository,
            "name": "temporal",
            "version": "1.0.0",
        }
    release = {"chart": {"metadata": {"name": "postgres-operator"}}}
    inner = base64.b64encode(gzip.compress(json.dumps(release).encode()))
    record = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "helm.sh/release.v1",
        "metadata": {
            "name": "sh.helm.release.v1.other-postgres-operator.v1",
            "labels": {
                "name": "other-postgres-operator",
                "owner": "helm",
                "status": "pending-install",
                "version": "1",
            },
        },
        "data": {"release": base64.b64encode(inner).decode()},
    }
    async with extra_namespace(kube, f"{namespace}-p") as other:
        await kube.create(SECRET, record, other)
        async with running_worker(temporal_env.client, worker_settings):
            handle = await start(temporal_env, worker_settings, request)
            with pytest.raises(WorkflowFailureError) as failure:
                await asyncio.wait_for(handle.result(), timeout=60)
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == contracts.OPERATORS_INSTALLED, cause.message
    assert (
        f"postgres-operator (helm release other-postgres-operator in namespace "
        f"{other}, being installed: pending-install; if no helm runs there any "
        f"more, `helm uninstall other-postgres-operator --namespace {other}` "
        "removes what it left)" in cause.message
    )


# Stands in for the helm binary of the worker's settings: the first upgrade of the
# RabbitMQ operator hangs, and the first of the postgres-operator fails once
# that one hangs. Every other call, and both on a retry, run the real helm.
STALLING_HELM = """#!/bin/bash
if [ "$1" = upgrade ]; then
  for arg in "$@"; do
    if [ "$arg" = {rabbitmq} ] && [ ! -e {state}/hung ]; then
      echo $$ > {state}/hung.tmp && mv {state}/hung.tmp {state}/hung
      exec sleep 300
    fi
    if [ "$arg" = {postgres} ] && [ ! -e {state}/failed ]; then
      while [ ! -e {state}/hung ]; do sleep 0.05; done
      touch {state}/failed
      echo "Error: the test failed this install" >&2
      exit 1
    fi
  done
fi
exec {helm} "$@"
"""


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.usefixtures("no_claim")
async def test_failed_install_stops_the_others(
    temporal_env: WorkflowEnvironment,
    worker_settings: WorkerSettings,
    kube: KubeClient,
    namespace: str,
    tmp_path: Path,
) -> None:
    """When one base install fails while another still runs, the running one
    is stopped before the claim is given back, and the retry installs all.

    Without that, the claim would be free while a helm of this deploy still
    created operator objects, and another deploy could install its own.
    """
    request = deploy_request(namespace)
    wrapper = tmp_path / "helm"
    wrapper.write_text(
        STALLING_HELM.replace("{state}", shlex.quote(str(tmp_path)))
        .replace("{helm}", shlex.quote(worker_settings.helm))
        .replace("{rabbitmq}", f"{request['release']}-rabbitmq-operator")
        .replace("{postgres}", f"{request['release']}-postgres-operator")
    )
    wrapper.chmod(0o755)
    settings = worker_settings.model_copy(update={"helm": str(wrapper)})
    hung = tmp_path / "hung"
    pid = 0
    try:
        async with running_worker(temporal_env.client, settings):
            handle = await start(temporal_env, settings, request)
            for _ in range(1200):
                if hung.exists():
                    break
                await asyncio.sleep(0.05)
            pid = int(hung.read_text())
            for _ in range(6000):
                if holder_of(await read_claim(kube)) is None:
                    break  # The first attempt gave the claim back.
                await asyncio.sleep(0.01)
            alive_at_give_back = process_exists(pid)
            result = DeployStatus.model_validate(
                await asyncio.wait_for(handle.result(), timeout=180)
            )
    finally:
        if pid and process_exists(pid):
            os.kill(pid, signal.SIGKILL)
    assert not alive_at_give_back, "the hung helm ran on after the claim was free"
    assert (tmp_path / "failed").exists()
    # The activity's own retry installed all three: one phase attempt.
    assert result.state == "succeeded"
    operators = await kube.list(DEPLOYMENT, namespace, label_selector=OPERATORS)
    assert sorted(o["metadata"]["name"] for o in operators["items"]) == [
        "ventros-crm-postgres-operator",
        "ventros-crm-rabbitmq-operator",
    ]
    assert holder_of(await read_claim(kube)) is None
