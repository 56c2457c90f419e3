"""The keyed secrets digest that the deployer puts on the app and Redis pods."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from activities.deploy import (
    DeployActivities,
    chart_values,
    digest_key_of,
    secrets_digest,
)
from deployer import codec
from deployer.inputs import ChartRef, parse_request
from deployer.settings import WorkerSettings
from testbed.cluster import tool_path

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


def digest(values: dict[str, Any], key: bytes = KEY) -> str:
    return secrets_digest(key, "crm", "ventros-crm", values)


def test_digest_is_stable_hex() -> None:
    values = {"secrets": {"redisPassword": "pw"}}
    assert digest(values) == digest(values)
    assert re.fullmatch(r"[0-9a-f]{16}", digest(values))


@pytest.mark.parametrize(
    "changed",
    [
        {"secrets": {"redisPassword": "pw2"}},
        {"secrets": {"redisPassword": "pw", "appSecretKey": "k"}},
        {"secrets": {"redisPassword": "pw", "existingSecret": "crm-managed"}},
    ],
)
def test_digest_follows_each_secret(changed: dict[str, Any]) -> None:
    assert digest(changed) != digest({"secrets": {"redisPassword": "pw"}})


def test_digest_of_secrets_not_an_object() -> None:
    """A secrets value that is not an object digests like no secrets; the
    chart's schema then rejects the render with the value's path."""
    assert digest({"secrets": "x"}) == digest({})


def test_digest_ignores_other_values() -> None:
    plain = {"secrets": {"redisPassword": "pw"}}
    assert digest({**plain, "app": {"replicas": 3}}) == digest(plain)


def test_digest_depends_on_key_and_release() -> None:
    """A reader without the key cannot test a guessed password against the
    digest, and one release's digest reveals nothing about another's."""
    values = {"secrets": {"redisPassword": "pw"}}
    assert digest(values, OTHER_KEY) != digest(values)
    assert secrets_digest(KEY, "crm", "other", values) != digest(values)
    assert secrets_digest(KEY, "other", "ventros-crm", values) != digest(values)


def test_chart_values_carry_digest() -> None:
    request = parse_request(
        {"namespace": "crm", "values": {"secrets": {"redisPassword": "pw"}}}
    )
    keyed = chart_values(request, None, KEY)
    assert keyed["deployer"]["secretsDigest"] == digest(
        {"secrets": {"redisPassword": "pw"}}
    )
    assert "secretsDigest" not in chart_values(request, None)["deployer"]


def test_key_is_oldest_of_key_ring(tmp_path: Path) -> None:
    """Adding a key to the ring keeps the digest, so pods do not roll."""
    path = tmp_path / "keys.json"
    ring = codec.generate_key_ring_file(str(path))
    settings = WorkerSettings(codec_keys_file=path)
    assert digest_key_of(settings) == ring.keys[0].key
    codec.rotate_key_ring_file(str(path))
    assert digest_key_of(settings) == ring.keys[0].key


def test_no_key_without_key_ring(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(codec.KEYS_ENV_VAR, raising=False)
    monkeypatch.delenv("VENTROS_DEPLOY_CODEC_KEYS_FILE", raising=False)
    assert digest_key_of(WorkerSettings()) is None


def chart_folder(root: Path, name: str, values: str) -> None:
    folder = root / name
    folder.mkdir()
    (folder / "Chart.yaml").write_text(
        f"apiVersion: v2\nname: {name}\nversion: 1.0.0\n"
    )
    (folder / "values.yaml").write_text(values)


async def test_key_only_for_charts_that_take_it(tmp_path: Path) -> None:
    """A chart from before deployer.secretsDigest rejects unknown keys under
    deployer, so it gets no digest and renders as it did."""
    path = tmp_path / "keys.json"
    ring = codec.generate_key_ring_file(str(path))
    chart_folder(tmp_path, "new", 'deployer:\n  phases: []\n  secretsDigest: ""\n')
    chart_folder(tmp_path, "old", "deployer:\n  phases: []\n")
    chart_folder(tmp_path, "bare", "")
    deploy = DeployActivities(
        WorkerSettings(
            helm=str(tool_path("helm")), chart_root=tmp_path, codec_keys_file=path
        )
    )
    assert await deploy.digest_key_for(ChartRef(path="new"), None) == ring.keys[0].key
    assert await deploy.digest_key_for(ChartRef(path="old"), None) is None
    assert await deploy.digest_key_for(ChartRef(path="bare"), None) is None
