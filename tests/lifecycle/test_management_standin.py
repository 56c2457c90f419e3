"""The test bed's RabbitMQ management stand-in, read with the drain's client:
queue depths follow the annotation, and only the default user gets them."""

from __future__ import annotations

import asyncio
import base64

import pytest
import yaml

from activities.drain import ManagementError, fetch_queues, queue_depth
from activities.kubeapi import KubeClient, NoKindMatchError, well_known
from tests.conftest import FIXTURE_CHARTS, REPO_ROOT
from tests.lifecycle.conftest import MESSAGES, NAMESPACE, RABBITMQ, annotate

SECRET = well_known("v1", "Secret")
CRD_FILE = (
    REPO_ROOT
    / FIXTURE_CHARTS
    / "rabbitmq-cluster-operator/crds/rabbitmqclusters.rabbitmq.com.yaml"
)


async def ensure_rabbitmq_crd(kube: KubeClient) -> None:
    """Install the stand-in CRD when no deploy has installed it yet."""
    try:
        await kube.resource_type("rabbitmq.com/v1beta1", "RabbitmqCluster")
        return
    except NoKindMatchError:
        pass
    await kube.apply(yaml.safe_load(CRD_FILE.read_text()))
    for _ in range(100):
        try:
            await kube.resource_type("rabbitmq.com/v1beta1", "RabbitmqCluster")
            return
        except NoKindMatchError:
            kube.forget_discovery("rabbitmq.com/v1beta1")
            await asyncio.sleep(0.2)
    raise AssertionError("the RabbitmqCluster CRD was not served within 20 s")


async def default_user(kube: KubeClient, namespace: str, name: str) -> tuple[str, str]:
    """Wait for the simulated operator's <name>-default-user Secret; decode it."""
    for _ in range(150):
        secret = await kube.get(SECRET, f"{name}-default-user", namespace)
        if secret is not None:
            data = secret["data"]
            return (
                base64.b64decode(data["username"]).decode(),
                base64.b64decode(data["password"]).decode(),
            )
        await asyncio.sleep(0.2)
    raise AssertionError(f"secret/{name}-default-user never appeared in {namespace}")


async def test_standin_queue_depths(
    kube: KubeClient, namespace: str, management_url: str
) -> None:
    """The stand-in reports the cluster's annotated count, else the namespace's,
    to the default user; wrong credentials get 401 and a missing cluster 404."""
    await ensure_rabbitmq_crd(kube)
    cluster = {
        "apiVersion": "rabbitmq.com/v1beta1",
        "kind": "RabbitmqCluster",
        "metadata": {"name": "mq", "annotations": {MESSAGES: "3"}},
        "spec": {"replicas": 1},
    }
    await kube.create(RABBITMQ, cluster, namespace)
    username, password = await default_user(kube, namespace, "mq")
    url = management_url.format(namespace=namespace, name="mq")

    own = queue_depth(await fetch_queues(url, username, password))
    await annotate(kube, RABBITMQ, "mq", namespace, {MESSAGES: None})
    await annotate(kube, NAMESPACE, namespace, None, {MESSAGES: "7"})
    inherited = queue_depth(await fetch_queues(url, username, password))
    assert own.total == 3
    assert inherited.total == 7
    with pytest.raises(ManagementError, match="rejected the credentials"):
        await fetch_queues(url, username, password + "x")
    missing = management_url.format(namespace=namespace, name="absent")
    with pytest.raises(ManagementError, match="HTTP 404"):
        await fetch_queues(missing, username, password)
