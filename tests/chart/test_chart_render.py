"""Render tests for chart/ and the stand-in charts under tests/fixtures/charts.

Each test runs the pinned helm binary (`helm template` or `helm lint`) on the
local chart files. No test contacts a cluster or a chart repository.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from activities.deploy import deep_merge, temporal_chart_values
from tests.conftest import helm_set_values

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "chart"
FIXTURE_CHARTS_DIR = REPO_ROOT / "tests" / "fixtures" / "charts"
VERSIONS_FILE = REPO_ROOT / "tools" / "versions.env"

RELEASE = "ventros-crm"
NAMESPACE = "ventros-crm"
PHASES = {"base", "data", "messaging", "cache", "temporal", "migration", "app"}
PHASE_LABEL = "deploy.ventros.io/phase"
STANDARD_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/component",
    "helm.sh/chart",
)
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
POSTGRES_CREDENTIALS = "ventros.ventros-crm-db.credentials.postgresql.acid.zalan.do"

# Every object of a default render: kind, name, phase.
DEFAULT_OBJECTS = [
    ("ServiceAccount", "ventros-crm", "base"),
    ("ConfigMap", "ventros-crm-config", "base"),
    ("Secret", "ventros-crm-secrets", "base"),
    ("postgresql", "ventros-crm-db", "data"),
    ("RabbitmqCluster", "ventros-crm-rabbitmq", "messaging"),
    ("StatefulSet", "ventros-crm-redis", "cache"),
    ("Service", "ventros-crm-redis", "cache"),
    ("Service", "ventros-crm-redis-headless", "cache"),
    ("Job", "ventros-crm-migrate-1-0-0", "migration"),
    ("Deployment", "ventros-crm", "app"),
    ("Service", "ventros-crm", "app"),
]

# Objects that deployer.legacyHooks=true turns into hooks: kind, name, weight.
LEGACY_HOOKS = [
    ("postgresql", "ventros-crm-db", "-10"),
    ("RabbitmqCluster", "ventros-crm-rabbitmq", "-5"),
    ("Job", "ventros-crm-migrate-1-0-0", "5"),
    ("Deployment", "ventros-crm", "10"),
    ("Service", "ventros-crm", "10"),
]

# The values the deployer gives the Temporal chart for the chart's PostgreSQL.
TEMPORAL_CREDENTIALS = "temporal.ventros-crm-db.credentials.postgresql.acid.zalan.do"
TEMPORAL_POSTGRES_VALUES = helm_set_values(
    temporal_chart_values("ventros-crm-db", "ventros-crm", "3d")
)


def helm_binary() -> Path:
    """Return the helm binary: $VENTROS_HELM, else the one tools/build.sh builds."""
    override = os.environ.get("VENTROS_HELM")
    if override:
        path = Path(override)
    else:
        version = read_helm_version()
        cache_root = os.environ.get("VENTROS_TOOLS_CACHE")
        if cache_root is None:
            cache_home = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
            cache_root = str(Path(cache_home) / "ventros-deploy" / "bin")
        path = Path(cache_root) / f"helm-{version}" / "helm"
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"helm not found at {path}: run `make tools` to build it")
    return path


def read_helm_version() -> str:
    for line in VERSIONS_FILE.read_text().splitlines():
        if line.startswith("HELM_VERSION="):
            return line.split("=", 1)[1].strip()
    pytest.fail(f"HELM_VERSION is missing from {VERSIONS_FILE}")


@pytest.fixture(scope="session")
def helm_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment that keeps helm away from the user's config and any cluster."""
    home = tmp_path_factory.mktemp("helm-home")
    env = dict(os.environ)
    env.update(
        HELM_CONFIG_HOME=str(home / "config"),
        HELM_CACHE_HOME=str(home / "cache"),
        HELM_DATA_HOME=str(home / "data"),
        KUBECONFIG=str(home / "missing-kubeconfig"),
    )
    return env


def run_helm(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(helm_binary()), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def set_args(values: list[str]) -> list[str]:
    args: list[str] = []
    for value in values:
        args += ["--set", value]
    return args


def render(
    env: dict[str, str],
    values: list[str] | None = None,
    chart: Path = CHART_DIR,
    release: str = RELEASE,
    extra: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Run helm template and return the rendered objects."""
    args = ["template", release, str(chart), "--namespace", NAMESPACE]
    args += set_args(values or []) + (extra or [])
    result = run_helm(env, *args)
    assert result.returncode == 0, f"helm template failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def render_error(
    env: dict[str, str], values: list[str], chart: Path = CHART_DIR
) -> str:
    """Run helm template, expect it to fail and return its error output."""
    args = [
        "template",
        RELEASE,
        str(chart),
        "--namespace",
        NAMESPACE,
        *set_args(values),
    ]
    result = run_helm(env, *args)
    assert result.returncode != 0, "helm template succeeded but was expected to fail"
    return result.stderr


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    for obj in objects:
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            return obj
    pytest.fail(f"{kind} {name} is not in the render")


def kinds_and_names(objects: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return sorted((obj["kind"], obj["metadata"]["name"]) for obj in objects)


def labels_of(obj: dict[str, Any]) -> dict[str, str]:
    return obj["metadata"].get("labels") or {}


def annotations_of(obj: dict[str, Any]) -> dict[str, str]:
    return obj["metadata"].get("annotations") or {}


def container(
    pod_spec: dict[str, Any], name: str, init: bool = False
) -> dict[str, Any]:
    key = "initContainers" if init else "containers"
    items: list[dict[str, Any]] = pod_spec.get(key, [])
    for item in items:
        if item["name"] == name:
            return item
    pytest.fail(f"container {name} is not in {key}")


def env_value(item: dict[str, Any], name: str) -> Any:
    for entry in item.get("env", []):
        if entry["name"] == name:
            return entry.get("value", entry.get("valueFrom"))
    pytest.fail(f"env var {name} is not set on container {item['name']}")


def migration_job(objects: list[dict[str, Any]]) -> dict[str, Any]:
    jobs = [obj for obj in objects if obj["kind"] == "Job"]
    assert len(jobs) == 1, f"expected one migration Job, got {kinds_and_names(jobs)}"
    return jobs[0]


def decoded_secret(objects: list[dict[str, Any]], key: str) -> str:
    data = find(objects, "Secret", "ventros-crm-secrets")["data"]
    return base64.b64decode(data[key]).decode()


@pytest.fixture(scope="module")
def default_render(helm_env: dict[str, str]) -> list[dict[str, Any]]:
    return render(helm_env)


def test_helm_missing_fails(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A missing helm binary fails the test with the command that builds it."""
    monkeypatch.setenv("VENTROS_HELM", str(tmp_path / "helm"))
    with pytest.raises(pytest.fail.Exception, match="run `make tools`"):
        helm_binary()


# Lint


def test_lint_passes(helm_env: dict[str, str]) -> None:
    """helm lint accepts the chart with its default values."""
    result = run_helm(helm_env, "lint", str(CHART_DIR))
    assert result.returncode == 0, result.stdout + result.stderr


def test_lint_strict_passes(helm_env: dict[str, str]) -> None:
    """helm lint --strict accepts the chart, so it has no lint warnings."""
    result = run_helm(helm_env, "lint", "--strict", str(CHART_DIR))
    assert result.returncode == 0, result.stdout + result.stderr


# Default render


@pytest.mark.parametrize(("kind", "name", "phase"), DEFAULT_OBJECTS)
def test_render_contains_object(
    default_render: list[dict[str, Any]], kind: str, name: str, phase: str
) -> None:
    """The default render contains the object with its phase label."""
    obj = find(default_render, kind, name)
    assert labels_of(obj).get(PHASE_LABEL) == phase


def test_render_has_no_extra_objects(default_render: list[dict[str, Any]]) -> None:
    """The default render contains exactly the objects of the table."""
    expected = sorted((kind, name) for kind, name, _ in DEFAULT_OBJECTS)
    assert kinds_and_names(default_render) == expected


def test_labels_have_allowed_phase(default_render: list[dict[str, Any]]) -> None:
    """Every object carries a phase label from the allowed set."""
    for obj in default_render:
        phase = labels_of(obj).get(PHASE_LABEL)
        assert phase in PHASES, f"{obj['kind']} {obj['metadata']['name']}: {phase!r}"


def test_labels_standard_present(default_render: list[dict[str, Any]]) -> None:
    """Every object carries the standard Kubernetes and Helm labels."""
    for obj in default_render:
        for label in STANDARD_LABELS:
            assert label in labels_of(obj), (
                f"{obj['kind']} {obj['metadata']['name']}: {label}"
            )


def test_labels_instance_and_version(default_render: list[dict[str, Any]]) -> None:
    """The instance label is the release and the version label the appVersion."""
    for obj in default_render:
        assert labels_of(obj)["app.kubernetes.io/instance"] == RELEASE
        assert labels_of(obj)["app.kubernetes.io/version"] == "1.0.0"


def test_pod_labels_carry_phase(default_render: list[dict[str, Any]]) -> None:
    """Pod templates carry the phase label of their workload."""
    workloads = [
        obj
        for obj in default_render
        if obj["kind"] in ("Deployment", "StatefulSet", "Job")
    ]
    assert len(workloads) == 3
    for obj in workloads:
        pod_labels = obj["spec"]["template"]["metadata"]["labels"]
        assert pod_labels[PHASE_LABEL] == labels_of(obj)[PHASE_LABEL]


def test_names_are_dns_labels(default_render: list[dict[str, Any]]) -> None:
    """Every object name is a DNS-1123 label of at most 63 characters."""
    for obj in default_render:
        name = obj["metadata"]["name"]
        assert len(name) <= 63, name
        assert DNS_LABEL.match(name), name


# Hooks


def test_hooks_absent_by_default(default_render: list[dict[str, Any]]) -> None:
    """No object has a helm.sh/hook annotation unless legacyHooks is set."""
    for obj in default_render:
        hooks = [key for key in annotations_of(obj) if key.startswith("helm.sh/hook")]
        assert hooks == [], f"{obj['kind']} {obj['metadata']['name']}: {hooks}"


@pytest.fixture(scope="module")
def legacy_render(helm_env: dict[str, str]) -> list[dict[str, Any]]:
    return render(helm_env, ["deployer.legacyHooks=true"])


@pytest.mark.parametrize(("kind", "name", "weight"), LEGACY_HOOKS)
def test_legacy_hooks_weight(
    legacy_render: list[dict[str, Any]], kind: str, name: str, weight: str
) -> None:
    """legacyHooks=true gives each ordered object the old hook and weight."""
    annotations = annotations_of(find(legacy_render, kind, name))
    assert annotations.get("helm.sh/hook") == "post-install,post-upgrade"
    assert annotations.get("helm.sh/hook-weight") == weight
    assert annotations.get("helm.sh/hook-delete-policy") == "before-hook-creation"


def test_legacy_hooks_only_ordered(legacy_render: list[dict[str, Any]]) -> None:
    """legacyHooks=true leaves the base and Redis objects without hooks."""
    hooked = {(kind, name) for kind, name, _ in LEGACY_HOOKS}
    for obj in legacy_render:
        if (obj["kind"], obj["metadata"]["name"]) in hooked:
            continue
        assert "helm.sh/hook" not in annotations_of(obj), obj["metadata"]["name"]


# Phase filter


@pytest.mark.parametrize("phase", sorted(PHASES))
def test_phases_filter_single(helm_env: dict[str, str], phase: str) -> None:
    """deployer.phases={phase} renders exactly that phase's objects."""
    objects = render(helm_env, [f"deployer.phases={{{phase}}}"])
    expected = sorted((kind, name) for kind, name, p in DEFAULT_OBJECTS if p == phase)
    assert kinds_and_names(objects) == expected


def test_phases_filter_base(helm_env: dict[str, str]) -> None:
    """deployer.phases={base} renders only objects labelled base."""
    objects = render(helm_env, ["deployer.phases={base}"])
    assert len(objects) == 3
    for obj in objects:
        assert labels_of(obj)[PHASE_LABEL] == "base"


def test_phases_filter_several(helm_env: dict[str, str]) -> None:
    """deployer.phases={data,app} renders the objects of both phases."""
    objects = render(helm_env, ["deployer.phases={data,app}"])
    phases = {labels_of(obj)[PHASE_LABEL] for obj in objects}
    assert phases == {"data", "app"}


# Migration Job


def test_migration_name_follows_tag(helm_env: dict[str, str]) -> None:
    """The migration Job name contains image.tag turned into a DNS label."""
    job = migration_job(render(helm_env, ["image.tag=V2.3.1_rc.1"]))
    assert job["metadata"]["name"] == "ventros-crm-migrate-v2-3-1-rc-1"


def test_migration_image_follows_tag(helm_env: dict[str, str]) -> None:
    """The migration container runs the app image of image.tag."""
    job = migration_job(render(helm_env, ["image.tag=2.3.1"]))
    migrate = container(job["spec"]["template"]["spec"], "migrate")
    assert migrate["image"] == "ghcr.io/ventros/crm:2.3.1"


def test_migration_name_long_tag(helm_env: dict[str, str]) -> None:
    """A long tag gives a DNS label of at most 63 characters, distinct per tag."""
    tag_a = "release-" + "a" * 100 + "-build1"
    tag_b = "release-" + "a" * 100 + "-build2"
    name_a = migration_job(render(helm_env, [f"image.tag={tag_a}"]))["metadata"]["name"]
    name_b = migration_job(render(helm_env, [f"image.tag={tag_b}"]))["metadata"]["name"]
    assert len(name_a) <= 63
    assert DNS_LABEL.match(name_a)
    assert name_a.startswith("ventros-crm-migrate-release-aaa")
    assert name_a != name_b


def test_migration_version_label_long_tag(helm_env: dict[str, str]) -> None:
    """A long tag gives a valid, cut version label and the full tag as annotation."""
    # Cut at 63 characters, this tag would end in "." without the trim.
    tag = "v" + "b" * 61 + ".-x"
    job = migration_job(render(helm_env, [f"image.tag={tag}"]))
    label = labels_of(job)["app.kubernetes.io/version"]
    assert label == "v" + "b" * 61
    assert re.match(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$", label)
    assert annotations_of(job)["deploy.ventros.io/app-version"] == tag


def test_migration_job_spec(default_render: list[dict[str, Any]]) -> None:
    """The migration Job retries 3 times in new pods and reads Zalando's Secret."""
    job = migration_job(default_render)
    pod = job["spec"]["template"]["spec"]
    migrate = container(pod, "migrate")
    assert job["spec"]["backoffLimit"] == 3
    assert pod["restartPolicy"] == "Never"
    assert migrate["command"] == ["./migrate-auth"]
    assert env_value(migrate, "POSTGRES_HOST") == "ventros-crm-db"
    assert env_value(migrate, "POSTGRES_DB") == "ventros"
    user = env_value(migrate, "POSTGRES_USER")["secretKeyRef"]
    password = env_value(migrate, "POSTGRES_PASSWORD")["secretKeyRef"]
    assert user == {"name": POSTGRES_CREDENTIALS, "key": "username"}
    assert password == {"name": POSTGRES_CREDENTIALS, "key": "password"}


def test_migration_waits_for_postgres(default_render: list[dict[str, Any]]) -> None:
    """The wait-for-postgres init container polls R-db:5432 with nc under timeout."""
    pod = migration_job(default_render)["spec"]["template"]["spec"]
    wait = container(pod, "wait-for-postgres", init=True)
    script = wait["command"][-1]
    assert wait["image"] == "busybox:1.37"
    assert env_value(wait, "WAIT_HOST") == "ventros-crm-db"
    assert env_value(wait, "WAIT_PORT") == "5432"
    assert env_value(wait, "WAIT_SECONDS") == "300"
    assert 'timeout "$WAIT_SECONDS"' in script
    assert "nc -z" in script


def test_migration_settings_applied(helm_env: dict[str, str]) -> None:
    """Backoff limit, wait time and pod annotations come from migration.*."""
    values = [
        "migration.backoffLimit=1",
        "migration.waitForPostgresSeconds=42",
        "migration.podAnnotations.example\\.com/trace=on",
    ]
    job = migration_job(render(helm_env, values))
    pod_annotations = job["spec"]["template"]["metadata"]["annotations"]
    wait = container(job["spec"]["template"]["spec"], "wait-for-postgres", init=True)
    assert job["spec"]["backoffLimit"] == 1
    assert env_value(wait, "WAIT_SECONDS") == "42"
    assert pod_annotations["example.com/trace"] == "on"


# Secrets


def test_secret_values_given(helm_env: dict[str, str]) -> None:
    """Secrets given in values land in R-secrets unchanged."""
    values = [
        "secrets.appSecretKey=app-key-from-values",
        "secrets.redisPassword=redis-pw",
    ]
    objects = render(helm_env, values)
    assert decoded_secret(objects, "app-secret-key") == "app-key-from-values"
    assert decoded_secret(objects, "redis-password") == "redis-pw"


def test_secret_values_generated(default_render: list[dict[str, Any]]) -> None:
    """Without values or a stored Secret, both keys get 32 alphanumeric characters."""
    for key in ("app-secret-key", "redis-password"):
        value = decoded_secret(default_render, key)
        assert len(value) == 32, key
        assert value.isalnum(), key


def test_secret_existing_not_rendered(helm_env: dict[str, str]) -> None:
    """secrets.existingSecret skips R-secrets and the pods read the named Secret."""
    objects = render(helm_env, ["secrets.existingSecret=crm-managed"])
    deployment = find(objects, "Deployment", "ventros-crm")
    app = container(deployment["spec"]["template"]["spec"], "app")
    assert [obj for obj in objects if obj["kind"] == "Secret"] == []
    assert env_value(app, "APP_SECRET_KEY")["secretKeyRef"]["name"] == "crm-managed"


def secrets_digests(objects: list[dict[str, Any]]) -> set[str]:
    """Return the secrets digest of the app's and Redis's pod templates."""
    return {
        find(objects, kind, name)["spec"]["template"]["metadata"]["annotations"][
            "deploy.ventros.io/secrets-digest"
        ]
        for kind, name in (
            ("Deployment", "ventros-crm"),
            ("StatefulSet", "ventros-crm-redis"),
        )
    }


def test_secrets_digest_follows_values(helm_env: dict[str, str]) -> None:
    """Changing a secret value changes the pods' digest, so they roll; the same
    values give the same digest, which does not contain the values."""
    first = ["secrets.redisPassword=redis-pw-1", "app.podAnnotations.team=crm"]
    again = render(helm_env, first)
    (digest,) = secrets_digests(render(helm_env, first))
    assert secrets_digests(again) == {digest}
    assert len(digest) == 16
    assert "redis-pw-1" not in digest
    (changed,) = secrets_digests(render(helm_env, ["secrets.redisPassword=redis-pw-2"]))
    assert changed != digest
    (other_key,) = secrets_digests(render(helm_env, ["secrets.appSecretKey=k"]))
    (existing,) = secrets_digests(render(helm_env, ["secrets.existingSecret=crm"]))
    assert len({digest, changed, other_key, existing}) == 4
    deployment = find(again, "Deployment", "ventros-crm")
    assert deployment["spec"]["template"]["metadata"]["annotations"]["team"] == "crm"


def test_secrets_digest_given_by_deployer(helm_env: dict[str, str]) -> None:
    """A digest in deployer.secretsDigest goes on both pod templates as it is,
    in place of the chart's plain one."""
    expected = "0123456789abcdef"
    plain = secrets_digests(render(helm_env, ["secrets.redisPassword=pw"]))
    keyed = render(
        helm_env, ["secrets.redisPassword=pw", f"deployer.secretsDigest={expected}"]
    )
    assert secrets_digests(keyed) == {expected}
    assert expected not in plain


# Schema and input checks


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ("app.replicas=-1", "/app/replicas"),
        ("image.repository=", "/image/repository"),
        ("nameOverride=Bad_Name", "/nameOverride"),
        ("unknownKey=1", "unknownKey"),
        ("deployer.phases={later}", "/deployer/phases/0"),
        ("deployer.secretsDigest=not-hex", "/deployer/secretsDigest"),
        ("migration.waitForPostgresSeconds=0", "/migration/waitForPostgresSeconds"),
        ("secrets.existingSecret=Not_A_Name", "/secrets/existingSecret"),
        ("redis.persistence.size=lots", "/redis/persistence/size"),
        ("postgresql.numberOfInstances=0", "/postgresql/numberOfInstances"),
        ("rabbitmq.replicas=0", "/rabbitmq/replicas"),
        ("redis.image=redis#7", "/redis/image"),
        ("waitImage=-busybox", "/waitImage"),
        ("postgresql.volume.storageClass=Bad_Class", "/postgresql/volume/storageClass"),
        (
            "rabbitmq.persistence.storageClassName=a b",
            "/rabbitmq/persistence/storageClassName",
        ),
        ("redis.persistence.storageClass=Fast", "/redis/persistence/storageClass"),
    ],
)
def test_schema_rejects_value(helm_env: dict[str, str], value: str, field: str) -> None:
    """The values schema rejects the value and the error names the field."""
    error = render_error(helm_env, [value])
    assert "values don't meet the specifications of the schema" in error
    assert field in error


def test_team_id_prefix_rejected(helm_env: dict[str, str]) -> None:
    """A teamId that is not the cluster name's prefix fails the render."""
    error = render_error(helm_env, ["postgresql.teamId=acme"])
    assert "postgresql.teamId" in error
    assert "ventros-crm-db" in error


def test_fullname_too_long_rejected(helm_env: dict[str, str]) -> None:
    """A full name over 35 characters fails with the name and the limit."""
    result = run_helm(helm_env, "template", "a" * 40, str(CHART_DIR))
    assert result.returncode != 0
    assert f'"{"a" * 40}-ventros-crm"' in result.stderr
    assert "at most 35" in result.stderr


# Temporal


def test_temporal_address_default(default_render: list[dict[str, Any]]) -> None:
    """The app's Temporal address defaults to the release's own frontend."""
    config = find(default_render, "ConfigMap", "ventros-crm-config")["data"]
    assert (
        config["TEMPORAL_ADDRESS"] == "ventros-crm-temporal-frontend.ventros-crm:7233"
    )
    assert config["TEMPORAL_NAMESPACE"] == "ventros-crm"


def test_temporal_address_override(helm_env: dict[str, str]) -> None:
    """temporal.address sets the ConfigMap entry and the wait-for-temporal target."""
    objects = render(helm_env, ["temporal.address=temporal.example.internal:7000"])
    config = find(objects, "ConfigMap", "ventros-crm-config")["data"]
    deployment = find(objects, "Deployment", "ventros-crm")
    wait = container(
        deployment["spec"]["template"]["spec"], "wait-for-temporal", init=True
    )
    assert config["TEMPORAL_ADDRESS"] == "temporal.example.internal:7000"
    assert env_value(wait, "WAIT_HOST") == "temporal.example.internal"
    assert env_value(wait, "WAIT_PORT") == "7000"


def test_temporal_address_other_release(helm_env: dict[str, str]) -> None:
    """For release shop, the address is the frontend Service that the Temporal
    chart renders for release shop-temporal, which the deployer installs."""
    config = find(
        render(helm_env, ["postgresql.teamId=shop"], release="shop"),
        "ConfigMap",
        "shop-ventros-crm-config",
    )["data"]
    temporal = render(
        helm_env,
        TEMPORAL_POSTGRES_VALUES,
        chart=FIXTURE_CHARTS_DIR / "temporal",
        release="shop-temporal",
    )
    host = config["TEMPORAL_ADDRESS"].split(".")[0]
    assert host == "shop-temporal-frontend"
    assert find(temporal, "Service", host)["kind"] == "Service"


def test_temporal_only_own_release(default_render: list[dict[str, Any]]) -> None:
    """Every Temporal host in the render is the release's own frontend."""
    text = yaml.safe_dump_all(default_render)
    hosts = set(re.findall(r"[a-z0-9.-]*temporal-frontend[a-z0-9.-]*", text))
    assert hosts == {"ventros-crm-temporal-frontend.ventros-crm"}


# App


def test_app_deployment_spec(default_render: list[dict[str, Any]]) -> None:
    """The app Deployment has its replicas, image, service account and probes."""
    deployment = find(default_render, "Deployment", "ventros-crm")
    pod = deployment["spec"]["template"]["spec"]
    app = container(pod, "app")
    assert deployment["spec"]["replicas"] == 2
    assert pod["serviceAccountName"] == "ventros-crm"
    assert app["image"] == "ghcr.io/ventros/crm:1.0.0"
    assert app["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert app["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert app["envFrom"] == [{"configMapRef": {"name": "ventros-crm-config"}}]


def test_app_init_containers(default_render: list[dict[str, Any]]) -> None:
    """The app waits for PostgreSQL, Redis, RabbitMQ and Temporal in that order."""
    pod = find(default_render, "Deployment", "ventros-crm")["spec"]["template"]["spec"]
    names = [item["name"] for item in pod["initContainers"]]
    targets = [
        (env_value(item, "WAIT_HOST"), env_value(item, "WAIT_PORT"))
        for item in pod["initContainers"]
    ]
    assert names == [
        "wait-for-postgres",
        "wait-for-redis",
        "wait-for-rabbitmq",
        "wait-for-temporal",
    ]
    assert targets == [
        ("ventros-crm-db", "5432"),
        ("ventros-crm-redis", "6379"),
        ("ventros-crm-rabbitmq", "5672"),
        ("ventros-crm-temporal-frontend.ventros-crm", "7233"),
    ]
    for item in pod["initContainers"]:
        assert env_value(item, "WAIT_SECONDS") == "120", item["name"]


def test_app_settings_applied(helm_env: dict[str, str]) -> None:
    """Replicas, wait timeout and pod annotations come from app.*."""
    values = [
        "app.replicas=0",
        "app.waitTimeoutSeconds=9",
        "app.podAnnotations.example\\.com/restarted-at=now",
    ]
    deployment = find(render(helm_env, values), "Deployment", "ventros-crm")
    template = deployment["spec"]["template"]
    wait = container(template["spec"], "wait-for-redis", init=True)
    assert deployment["spec"]["replicas"] == 0
    assert env_value(wait, "WAIT_SECONDS") == "9"
    assert template["metadata"]["annotations"]["example.com/restarted-at"] == "now"


def test_app_service_ports(default_render: list[dict[str, Any]]) -> None:
    """The app Service maps port 80 to the container's http port 8080."""
    service = find(default_render, "Service", "ventros-crm")
    deployment = find(default_render, "Deployment", "ventros-crm")
    app = container(deployment["spec"]["template"]["spec"], "app")
    port = service["spec"]["ports"][0]
    assert port["port"] == 80
    assert port["targetPort"] == "http"
    assert app["ports"] == [{"name": "http", "containerPort": 8080}]


def test_app_reads_operator_secrets(default_render: list[dict[str, Any]]) -> None:
    """The app reads database and RabbitMQ credentials from the operators' Secrets."""
    deployment = find(default_render, "Deployment", "ventros-crm")
    app = container(deployment["spec"]["template"]["spec"], "app")
    postgres = env_value(app, "POSTGRES_PASSWORD")["secretKeyRef"]
    rabbitmq = env_value(app, "RABBITMQ_PASSWORD")["secretKeyRef"]
    assert postgres == {"name": POSTGRES_CREDENTIALS, "key": "password"}
    assert rabbitmq == {"name": "ventros-crm-rabbitmq-default-user", "key": "password"}


# Data, messaging and cache


def test_postgresql_spec(default_render: list[dict[str, Any]]) -> None:
    """The postgresql resource declares the team, size, users and databases."""
    spec = find(default_render, "postgresql", "ventros-crm-db")["spec"]
    assert spec["teamId"] == "ventros"
    assert spec["numberOfInstances"] == 2
    assert spec["volume"] == {"size": "5Gi"}
    assert spec["postgresql"] == {"version": "16"}
    assert spec["users"] == {"ventros": ["createdb"], "temporal": []}
    assert spec["databases"] == {
        "ventros": "ventros",
        "temporal": "temporal",
        "temporal_visibility": "temporal",
    }


def test_rabbitmq_spec(helm_env: dict[str, str]) -> None:
    """The RabbitmqCluster takes replicas, image and storage from values."""
    values = ["rabbitmq.replicas=1", "rabbitmq.image=rabbitmq:4.1-management"]
    spec = find(render(helm_env, values), "RabbitmqCluster", "ventros-crm-rabbitmq")[
        "spec"
    ]
    assert spec["replicas"] == 1
    assert spec["image"] == "rabbitmq:4.1-management"
    assert spec["persistence"] == {"storage": "10Gi"}


def test_redis_password_from_env(helm_env: dict[str, str]) -> None:
    """Redis gets --requirepass from an env var and the pod spec lacks the password."""
    objects = render(helm_env, ["secrets.redisPassword=do-not-print-me"])
    statefulset = find(objects, "StatefulSet", "ventros-crm-redis")
    redis = container(statefulset["spec"]["template"]["spec"], "redis")
    password = env_value(redis, "REDIS_PASSWORD")["secretKeyRef"]
    assert '--requirepass "$REDIS_PASSWORD"' in redis["command"][-1]
    assert "do-not-print-me" not in yaml.safe_dump(statefulset)
    assert password == {"name": "ventros-crm-secrets", "key": "redis-password"}
    assert "redis-cli" in " ".join(redis["readinessProbe"]["exec"]["command"])


def test_redis_persistence_default(default_render: list[dict[str, Any]]) -> None:
    """Redis keeps its data in a 1Gi volume claim by default."""
    spec = find(default_render, "StatefulSet", "ventros-crm-redis")["spec"]
    claim = spec["volumeClaimTemplates"][0]
    assert spec["serviceName"] == "ventros-crm-redis-headless"
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert "volumes" not in spec["template"]["spec"]


def test_redis_persistence_disabled(helm_env: dict[str, str]) -> None:
    """redis.persistence.enabled=false uses an emptyDir and no volume claim."""
    objects = render(helm_env, ["redis.persistence.enabled=false"])
    spec = find(objects, "StatefulSet", "ventros-crm-redis")["spec"]
    assert "volumeClaimTemplates" not in spec
    assert spec["template"]["spec"]["volumes"] == [{"name": "data", "emptyDir": {}}]


# Stand-in charts


@pytest.mark.parametrize("chart", ["postgres-operator", "rabbitmq-cluster-operator"])
def test_fixture_operator_lints(helm_env: dict[str, str], chart: str) -> None:
    """The operator stand-in chart passes helm lint --strict."""
    result = run_helm(helm_env, "lint", "--strict", str(FIXTURE_CHARTS_DIR / chart))
    assert result.returncode == 0, result.stdout + result.stderr


def test_fixture_temporal_lints(helm_env: dict[str, str]) -> None:
    """The temporal stand-in passes helm lint --strict given PostgreSQL settings."""
    chart = str(FIXTURE_CHARTS_DIR / "temporal")
    result = run_helm(
        helm_env, "lint", "--strict", chart, *set_args(TEMPORAL_POSTGRES_VALUES)
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("chart", "crd", "group", "version", "kind", "short_name"),
    [
        (
            "postgres-operator",
            "postgresqls.acid.zalan.do",
            "acid.zalan.do",
            "v1",
            "postgresql",
            "pg",
        ),
        (
            "rabbitmq-cluster-operator",
            "rabbitmqclusters.rabbitmq.com",
            "rabbitmq.com",
            "v1beta1",
            "RabbitmqCluster",
            "rmq",
        ),
    ],
)
def test_fixture_operator_renders(
    helm_env: dict[str, str],
    chart: str,
    crd: str,
    group: str,
    version: str,
    kind: str,
    short_name: str,
) -> None:
    """The operator stand-in renders its CRD, Deployment and ServiceAccount."""
    objects = render(
        helm_env,
        chart=FIXTURE_CHARTS_DIR / chart,
        release="operator",
        extra=["--include-crds"],
    )
    spec = find(objects, "CustomResourceDefinition", crd)["spec"]
    served = spec["versions"][0]
    assert spec["group"] == group
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == kind
    assert short_name in spec["names"]["shortNames"]
    assert served["name"] == version
    assert served["served"] is True
    assert served["storage"] is True
    assert served["subresources"] == {"status": {}}
    assert find(objects, "Deployment", "operator")["kind"] == "Deployment"
    assert find(objects, "ServiceAccount", "operator")["kind"] == "ServiceAccount"


def test_fixture_postgres_crd_schema(helm_env: dict[str, str]) -> None:
    """The postgresql CRD requires teamId, numberOfInstances and volume.size."""
    objects = render(
        helm_env,
        chart=FIXTURE_CHARTS_DIR / "postgres-operator",
        release="operator",
        extra=["--include-crds"],
    )
    version = find(objects, "CustomResourceDefinition", "postgresqls.acid.zalan.do")[
        "spec"
    ]["versions"][0]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    columns = [column["name"] for column in version["additionalPrinterColumns"]]
    assert sorted(spec["required"]) == ["numberOfInstances", "teamId", "volume"]
    assert spec["properties"]["volume"]["required"] == ["size"]
    assert spec["properties"]["numberOfInstances"]["minimum"] == 0
    assert spec["x-kubernetes-preserve-unknown-fields"] is True
    assert columns == ["Team", "Status"]


@pytest.fixture(scope="module")
def temporal_render(helm_env: dict[str, str]) -> list[dict[str, Any]]:
    return render(
        helm_env,
        TEMPORAL_POSTGRES_VALUES,
        chart=FIXTURE_CHARTS_DIR / "temporal",
        release="ventros-crm-temporal",
    )


@pytest.mark.parametrize(
    ("service", "port"),
    [("frontend", 7233), ("history", 7234), ("matching", 7235), ("worker", 7239)],
)
def test_fixture_temporal_services(
    temporal_render: list[dict[str, Any]], service: str, port: int
) -> None:
    """The temporal stand-in renders a Deployment and Service per server role."""
    name = f"ventros-crm-temporal-{service}"
    service_spec = find(temporal_render, "Service", name)["spec"]
    assert find(temporal_render, "Deployment", name)["kind"] == "Deployment"
    assert service_spec["ports"][0]["port"] == port


def test_fixture_temporal_schema_job(temporal_render: list[dict[str, Any]]) -> None:
    """The temporal stand-in names its schema Job after the chart version."""
    job = find(temporal_render, "Job", "ventros-crm-temporal-schema-0-65-0")
    schema = container(job["spec"]["template"]["spec"], "schema")
    assert env_value(schema, "DEFAULT_SQL_HOST") == "ventros-crm-db"
    assert env_value(schema, "VISIBILITY_SQL_DATABASE") == "temporal_visibility"


def test_fixture_temporal_password_secret(
    temporal_render: list[dict[str, Any]],
) -> None:
    """Temporal pods read the SQL password from the existing Secret."""
    workloads = [obj for obj in temporal_render if obj["kind"] in ("Deployment", "Job")]
    assert len(workloads) == 5
    for obj in workloads:
        pod = obj["spec"]["template"]["spec"]
        for prefix in ("DEFAULT", "VISIBILITY"):
            password = env_value(pod["containers"][0], f"{prefix}_SQL_PASSWORD")
            expected = {"name": TEMPORAL_CREDENTIALS, "key": "password"}
            assert password == {"secretKeyRef": expected}, obj["metadata"]["name"]


def test_fixture_temporal_creates_namespace(helm_env: dict[str, str]) -> None:
    """The schema Job creates the app's namespace through the frontend."""
    job = next(
        obj
        for obj in render(
            helm_env, TEMPORAL_POSTGRES_VALUES, chart=FIXTURE_CHARTS_DIR / "temporal"
        )
        if obj["kind"] == "Job"
    )
    [init] = job["spec"]["template"]["spec"]["initContainers"]
    assert init["name"] == "create-ventros-crm-namespace"
    assert "retention 3d" in init["command"][-1]
    assert env_value(init, "TEMPORAL_ADDRESS") == "ventros-crm-temporal-frontend:7233"


def test_fixture_temporal_fullname(helm_env: dict[str, str]) -> None:
    """A release name without "temporal" gets the -temporal suffix."""
    objects = render(
        helm_env,
        TEMPORAL_POSTGRES_VALUES,
        chart=FIXTURE_CHARTS_DIR / "temporal",
        release="crm",
    )
    assert find(objects, "Service", "crm-temporal-frontend")["kind"] == "Service"


def test_fixture_temporal_requires_host(helm_env: dict[str, str]) -> None:
    """Without a PostgreSQL host the temporal stand-in fails naming the key."""
    values = [
        v for v in TEMPORAL_POSTGRES_VALUES if not v.startswith(DEFAULT_STORE + "host=")
    ]
    error = render_error(helm_env, values, chart=FIXTURE_CHARTS_DIR / "temporal")
    assert "server.config.persistence.default.sql.host is required" in error


DEFAULT_STORE = "server.config.persistence.default.sql."


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("elasticsearch.enabled=true", "elasticsearch.enabled is true"),
        ("cassandra.enabled=true", "cassandra.enabled is true"),
        ("grafana.enabled=true", "grafana.enabled is true"),
        (
            "server.config.persistence.visibility.driver=cassandra",
            'server.config.persistence.visibility.driver is "cassandra"',
        ),
        (DEFAULT_STORE + "driver=mysql8", 'default.sql.driver is "mysql8"'),
        (DEFAULT_STORE + "tls.enabled=false", "default.sql.tls.enabled is not true"),
        ("schema.createDatabase.enabled=true", "schema.createDatabase.enabled is true"),
        (
            "server.config.namespaces.create=false",
            "server.config.namespaces.create is false",
        ),
    ],
)
def test_fixture_temporal_rejects_upstream_defaults(
    helm_env: dict[str, str], override: str, message: str
) -> None:
    """The stand-in fails where the real chart, left at a default, would not run.

    The upstream chart enables Cassandra, Elasticsearch, Prometheus and Grafana,
    defaults its SQL driver to MySQL, and creates the databases. Each of those
    on its own fails the render with a message naming the key and the fix.
    """
    values = [*TEMPORAL_POSTGRES_VALUES, override]
    error = render_error(helm_env, values, chart=FIXTURE_CHARTS_DIR / "temporal")
    assert message in error
    assert "set " in error.split(message, 1)[1]


def test_fixture_temporal_upstream_defaults_fail(helm_env: dict[str, str]) -> None:
    """With only host and Secret, the stand-in fails on the first default."""
    values = [
        f"server.config.persistence.{store}.sql.{key}={value}"
        for store in ("default", "visibility")
        for key, value in (
            ("host", "ventros-crm-db"),
            ("existingSecret", TEMPORAL_CREDENTIALS),
        )
    ]
    error = render_error(helm_env, values, chart=FIXTURE_CHARTS_DIR / "temporal")
    assert "cassandra.enabled is true" in error


def test_legacy_bench_temporal_values_match_deployer() -> None:
    """The Helm-hooks benchmark installs Temporal with the deployer's values."""
    fixture = yaml.safe_load(
        (FIXTURE_CHARTS_DIR / "temporal" / "values.yaml").read_text()
    )
    legacy = yaml.safe_load(
        (REPO_ROOT / "bench" / "legacy" / "values.yaml").read_text()
    )
    legacy_temporal = dict(legacy["temporal"])
    legacy_temporal.pop("legacyHookWeight")
    ours = deep_merge(
        fixture, temporal_chart_values("ventros-crm-db", "ventros-crm", "3d")
    )
    theirs = deep_merge(fixture, legacy_temporal)
    assert theirs == ours


def without_random_values(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Objects with the values helm generates at random on every render blanked."""
    for obj in objects:
        if obj["kind"] == "Secret":
            obj["data"] = dict.fromkeys(obj.get("data") or {}, "")
    return sorted(objects, key=lambda o: (o["kind"], o["metadata"]["name"]))


# The temporal phase installs Temporal's own chart; ours renders nothing for it.
@pytest.mark.parametrize("phase", sorted(PHASES - {"temporal"}))
def test_phase_objects_equal_in_full_render(
    helm_env: dict[str, str], phase: str
) -> None:
    """A phase's objects do not depend on which other phases render.

    The deployer renders the chart once per deploy and takes each phase's
    objects from that render, so they must equal a render of that phase alone.
    """
    full = [o for o in render(helm_env) if labels_of(o).get(PHASE_LABEL) == phase]
    alone = render(helm_env, [f"deployer.phases={{{phase}}}"])
    assert alone, f"phase {phase} renders nothing on its own"
    assert {labels_of(o).get(PHASE_LABEL) for o in alone} == {phase}
    assert without_random_values(full) == without_random_values(alone)


def test_fixture_temporal_legacy_hooks(helm_env: dict[str, str]) -> None:
    """legacyHookWeight turns every stand-in Temporal object into a weighted hook."""
    hooked = render(
        helm_env,
        [*TEMPORAL_POSTGRES_VALUES, "legacyHookWeight=0"],
        chart=FIXTURE_CHARTS_DIR / "temporal",
        release="ventros-crm-temporal",
    )
    assert len(hooked) == 9
    for obj in hooked:
        annotations = obj["metadata"].get("annotations") or {}
        assert annotations.get("helm.sh/hook") == "post-install,post-upgrade", obj
        assert annotations.get("helm.sh/hook-weight") == "0", obj


def test_fixture_temporal_no_hooks_by_default(
    temporal_render: list[dict[str, Any]],
) -> None:
    """Without legacyHookWeight the stand-in renders plain release objects."""
    assert all("annotations" not in obj["metadata"] for obj in temporal_render), [
        obj["metadata"] for obj in temporal_render
    ]
