"""Checks of docker-compose.yml that need no Docker engine.

The file is validated against the Compose Specification JSON schema that the
PyPI package check-jsonschema vendors (`--builtin-schema vendor.compose-spec`).
The other tests check its wiring against what the deployer expects. The worker
talks to the bootstrap Temporal of this file, ports stay on loopback, images are
pinned, and secrets come from files that git ignores.
"""

from __future__ import annotations

import copy
import importlib
import json
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
COMPOSE_CONFIG_DIR = REPO_ROOT / "deploy" / "compose"
CREDENTIALS_SCRIPT = COMPOSE_CONFIG_DIR / "worker" / "install-credentials.sh"
DOCKERFILE = REPO_ROOT / "Dockerfile"

SCHEMA_PACKAGE = "check_jsonschema.builtin_schemas.vendor"
SCHEMA_FILE = "compose-spec.json"
SCHEMA_INSTALL_HINT = "pip install check-jsonschema==0.39.0"

LOOPBACK = "127.0.0.1"
LONG_RUNNING_RESTART = "unless-stopped"
WORKER_SERVICE = "worker"
CREDENTIALS_JOB = "worker-credentials"
TEMPORAL_SERVICE = "temporal"
TEMPORAL_GRPC_PORT = "7233"
TEMPORAL_ADDRESS = f"{TEMPORAL_SERVICE}:{TEMPORAL_GRPC_PORT}"
# Variables that must never be set in clear in the Compose file, because they
# carry a database password.
PASSWORD_VARIABLES = ("POSTGRES_PASSWORD", "POSTGRES_PWD", "SQL_PASSWORD")

Services = dict[str, dict[str, Any]]

# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error},
# ${NAME:+alternative}, ${NAME+alternative}, $NAME, and $$ for a literal $.
_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)"
    r"(?:(?P<operator>:?[-?+])(?P<argument>[^}]*))?\}"
    r"|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(value: Any, environment: Mapping[str, str]) -> Any:
    """Return value with Compose variables resolved as Compose resolves them."""
    if isinstance(value, dict):
        return {key: interpolate(item, environment) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, environment) for item in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        name = match.group("braced") or match.group("plain")
        operator = match.group("operator") or ""
        argument = match.group("argument") or ""
        current = environment.get(name)
        if operator == ":-":
            return current or argument
        if operator == "-":
            return argument if current is None else current
        if operator == ":+":
            return argument if current else ""
        if operator == "+":
            return "" if current is None else argument
        if operator == ":?" and not current:
            raise ValueError(f"required variable {name} is empty or unset: {argument}")
        if operator == "?" and current is None:
            raise ValueError(f"required variable {name} is unset: {argument}")
        return current or ""

    return _VARIABLE.sub(replace, value)


def variables_without_default(value: Any) -> Iterator[str]:
    """Yield each variable that value refers to without a default."""
    if isinstance(value, dict):
        for item in value.values():
            yield from variables_without_default(item)
    elif isinstance(value, list):
        for item in value:
            yield from variables_without_default(item)
    elif isinstance(value, str):
        for match in _VARIABLE.finditer(value):
            if match.group("escaped"):
                continue
            if match.group("operator") not in (":-", "-"):
                yield match.group("braced") or match.group("plain")


def load_compose_schema() -> dict[str, Any]:
    try:
        schema_text = resources.files(SCHEMA_PACKAGE).joinpath(SCHEMA_FILE).read_text()
    except ModuleNotFoundError:
        pytest.fail(
            "the Compose Specification schema comes from the PyPI package "
            f"check-jsonschema, which is not installed; run `{SCHEMA_INSTALL_HINT}`"
        )
    except FileNotFoundError:
        pytest.fail(
            f"check-jsonschema no longer ships {SCHEMA_FILE} in {SCHEMA_PACKAGE}; "
            f"install the version that does: `{SCHEMA_INSTALL_HINT}`"
        )
    schema: dict[str, Any] = json.loads(schema_text)
    return schema


def schema_errors(document: Any) -> list[str]:
    """Return one line per violation of the Compose Specification schema."""
    schema = load_compose_schema()
    try:
        validators = importlib.import_module("jsonschema.validators")
    except ModuleNotFoundError:
        pytest.fail(f"jsonschema is not installed; run `{SCHEMA_INSTALL_HINT}`")
    validator_class = validators.validator_for(schema)
    validator = validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)
    errors = sorted(validator.iter_errors(document), key=lambda error: list(error.path))
    return [f"{error.json_path}: {error.message}" for error in errors]


@pytest.fixture(scope="module")
def raw_compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return document


@pytest.fixture(scope="module")
def compose(raw_compose: dict[str, Any]) -> dict[str, Any]:
    """The Compose file as `docker compose` reads it with no variables set."""
    document: dict[str, Any] = interpolate(raw_compose, environment={})
    return document


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    services: Services = compose["services"]
    return services


def one_shot_services(services: Mapping[str, Mapping[str, Any]]) -> set[str]:
    """Return the services that others wait on to exit with status 0."""
    names = set()
    for service in services.values():
        depends_on = service.get("depends_on", {})
        if isinstance(depends_on, dict):
            for name, condition in depends_on.items():
                if condition.get("condition") == "service_completed_successfully":
                    names.add(name)
    return names


def depends_on_condition(service: Mapping[str, Any], dependency: str) -> str | None:
    depends_on = service.get("depends_on", {})
    if isinstance(depends_on, list):
        return "service_started" if dependency in depends_on else None
    entry = depends_on.get(dependency)
    return None if entry is None else entry.get("condition", "service_started")


def volume_entries(service: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Return the service's volumes in long syntax."""
    entries = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            entries.append(volume)
            continue
        parts = volume.split(":")
        if len(parts) == 1:
            entries.append({"type": "volume", "target": parts[0]})
            continue
        source, target = parts[0], parts[1]
        options = parts[2].split(",") if len(parts) > 2 else []
        is_path = source.startswith((".", "/", "~"))
        entries.append(
            {
                "type": "bind" if is_path else "volume",
                "source": source,
                "target": target,
                "read_only": "ro" in options,
            }
        )
    return entries


def service_secret_targets(service: Mapping[str, Any]) -> dict[str, str]:
    """Map each secret of the service to the path it is mounted at."""
    targets = {}
    for secret in service.get("secrets", []):
        if isinstance(secret, str):
            targets[secret] = f"/run/secrets/{secret}"
        else:
            target = secret.get("target", secret["source"])
            if not target.startswith("/"):
                target = f"/run/secrets/{target}"
            targets[secret["source"]] = target
    return targets


def installed_credentials() -> dict[str, str]:
    """Map each source file that the credentials job installs to its copy's path."""
    calls = re.findall(
        r"^install_private (\S+) (\S+) (\S+)$",
        CREDENTIALS_SCRIPT.read_text(),
        re.MULTILINE,
    )
    return {source: f"{folder}/{name}" for source, folder, name in calls}


def container_path_in(
    reader: Mapping[str, Any], writer: Mapping[str, Any], path: str
) -> str | None:
    """Return where reader sees the file that writer wrote to path.

    Both must mount the same named volume. Return None when path is on no
    volume that both mount.
    """
    writer_mounts = {
        volume["source"]: volume["target"]
        for volume in volume_entries(writer)
        if volume["type"] == "volume"
    }
    for volume in volume_entries(reader):
        if volume["type"] != "volume" or volume["source"] not in writer_mounts:
            continue
        writer_target = writer_mounts[volume["source"]]
        if path.startswith(writer_target + "/"):
            reader_target: str = volume["target"]
            return reader_target + path[len(writer_target) :]
    return None


def environment_of(service: Mapping[str, Any]) -> dict[str, str]:
    environment = service.get("environment", {})
    if isinstance(environment, list):
        pairs = (entry.partition("=") for entry in environment)
        return {name: value for name, _, value in pairs}
    return {
        name: "" if value is None else str(value) for name, value in environment.items()
    }


# ---- schema -------------------------------------------------------------------


def test_compose_matches_compose_spec(compose: dict[str, Any]) -> None:
    errors = schema_errors(compose)
    assert errors == [], (
        "docker-compose.yml violates the Compose Specification:\n" + "\n".join(errors)
    )


def test_compose_spec_check_rejects_unknown_key(compose: dict[str, Any]) -> None:
    broken = copy.deepcopy(compose)
    broken["services"][WORKER_SERVICE]["restart_policy"] = "always"
    errors = schema_errors(broken)
    assert errors, (
        "the schema check accepted an unknown service key, so it checks nothing"
    )


def test_compose_has_no_version_key(raw_compose: dict[str, Any]) -> None:
    assert "version" not in raw_compose, (
        "the Compose Specification deprecates `version:`"
    )


def test_every_variable_has_default(raw_compose: dict[str, Any]) -> None:
    missing = sorted(set(variables_without_default(raw_compose)))
    assert missing == [], (
        f"variables without a default, so `up` needs them set: {missing}"
    )


# ---- wiring -------------------------------------------------------------------


def test_worker_address_is_compose_temporal(
    services: Services,
) -> None:
    worker_environment = environment_of(services[WORKER_SERVICE])
    address = worker_environment["VENTROS_DEPLOY_TEMPORAL_ADDRESS"]
    host, _, port = address.rpartition(":")
    assert host == TEMPORAL_SERVICE
    assert port == TEMPORAL_GRPC_PORT
    assert host in services


def test_worker_shares_network_with_temporal(services: Services) -> None:
    worker_networks = set(services[WORKER_SERVICE].get("networks", ["default"]))
    temporal_networks = set(services[TEMPORAL_SERVICE].get("networks", ["default"]))
    assert worker_networks & temporal_networks
    assert "network_mode" not in services[WORKER_SERVICE]


def test_worker_waits_for_healthy_temporal(services: Services) -> None:
    condition = depends_on_condition(services[WORKER_SERVICE], TEMPORAL_SERVICE)
    assert condition == "service_healthy"


def test_temporal_starts_after_postgresql_healthy(services: Services) -> None:
    schema_job = "temporal-schema"
    assert depends_on_condition(services[schema_job], "postgresql") == "service_healthy"
    condition = depends_on_condition(services[TEMPORAL_SERVICE], schema_job)
    assert condition == "service_completed_successfully"


def test_temporal_ui_points_at_compose_temporal(services: Services) -> None:
    ui = services["temporal-ui"]
    assert environment_of(ui)["TEMPORAL_ADDRESS"] == TEMPORAL_ADDRESS
    assert depends_on_condition(ui, TEMPORAL_SERVICE) == "service_healthy"


def test_namespace_job_matches_worker_namespace(services: Services) -> None:
    job_environment = environment_of(services["temporal-namespace"])
    worker_environment = environment_of(services[WORKER_SERVICE])
    worker_namespace = worker_environment["VENTROS_DEPLOY_TEMPORAL_NAMESPACE"]
    assert job_environment["TEMPORAL_ADDRESS"] == TEMPORAL_ADDRESS
    assert job_environment["NAMESPACE"] == worker_namespace
    assert (
        depends_on_condition(services[WORKER_SERVICE], "temporal-namespace")
        == "service_completed_successfully"
    )


def test_published_ports_bind_loopback(services: Services) -> None:
    for name, service in services.items():
        assert service.get("network_mode") != "host", f"{name} uses the host network"
        for port in service.get("ports", []):
            if isinstance(port, dict):
                host_ip = port.get("host_ip")
            else:
                parts = str(port).split(":")
                host_ip = parts[0] if len(parts) == 3 else None
            assert host_ip == LOOPBACK, f"{name} publishes {port!r} beyond {LOOPBACK}"


def test_images_pinned(services: Services) -> None:
    for name, service in services.items():
        image = service.get("image")
        if image is None:
            assert "build" in service, f"{name} has neither image nor build"
            continue
        reference, _, digest = image.partition("@")
        last_part = reference.rsplit("/", 1)[-1]
        repository, _, tag = last_part.partition(":")
        assert tag or digest, f"{name}: image {image!r} has no tag"
        assert tag != "latest", f"{name}: image {image!r} uses the moving tag latest"
        assert repository, f"{name}: image {image!r} has no repository"


def test_worker_builds_repository_dockerfile(services: Services) -> None:
    build = services[WORKER_SERVICE]["build"]
    assert build["context"] == "."
    assert build["dockerfile"] == "Dockerfile"
    assert (REPO_ROOT / build["dockerfile"]).is_file()


def test_volumes_named(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        for volume in volume_entries(service):
            if volume["type"] == "volume":
                source = volume.get("source")
                assert source, (
                    f"{name} mounts an anonymous volume at {volume['target']}"
                )
                assert source in declared, f"{name} mounts undeclared volume {source}"


def test_bind_mounts_read_only(services: Services) -> None:
    for name, service in services.items():
        for volume in volume_entries(service):
            if volume["type"] == "bind":
                assert volume.get("read_only") is True, (
                    f"{name} bind-mounts {volume['source']} writable"
                )


def test_bind_mount_sources_exist(services: Services) -> None:
    for name, service in services.items():
        for volume in volume_entries(service):
            source = volume.get("source", "")
            if volume["type"] == "bind" and source.startswith("./"):
                assert (REPO_ROOT / source).is_file(), (
                    f"{name} mounts missing file {source}"
                )


def test_long_running_services_healthy_and_restart(
    services: Services,
) -> None:
    jobs = one_shot_services(services)
    long_running = sorted(set(services) - jobs)
    expected = {"postgresql", TEMPORAL_SERVICE, "temporal-ui", WORKER_SERVICE}
    assert expected <= set(long_running)
    for name in long_running:
        service = services[name]
        assert service.get("restart") == LONG_RUNNING_RESTART, f"{name} restart policy"
        healthcheck = service.get("healthcheck", {})
        assert healthcheck.get("test"), f"{name} has no healthcheck"
        assert healthcheck.get("disable") is not True, (
            f"{name} disables its healthcheck"
        )


def test_one_shot_jobs_do_not_restart(services: Services) -> None:
    jobs = one_shot_services(services)
    assert jobs == {"temporal-schema", "temporal-namespace", CREDENTIALS_JOB}
    for name in jobs:
        # A restarted job can no longer satisfy service_completed_successfully.
        assert services[name].get("restart") == "no", f"{name} restart policy"


def test_no_reference_to_application_temporal() -> None:
    # The application's in-cluster Temporal has the address
    # <release>-temporal-frontend.<namespace>, and the deployer must not use it.
    config_files = sorted(p for p in COMPOSE_CONFIG_DIR.rglob("*") if p.is_file())
    checked_files = [COMPOSE_FILE, *config_files]
    for path in checked_files:
        if "secrets" in path.relative_to(REPO_ROOT).parts:
            continue
        text = path.read_text().lower()
        assert "temporal-frontend" not in text, f"{path} refers to temporal-frontend"
        assert ".svc" not in text, f"{path} refers to a Kubernetes service name"


# ---- secrets ------------------------------------------------------------------


def test_no_password_in_environment(services: Services) -> None:
    for name, service in services.items():
        environment = environment_of(service)
        for variable in PASSWORD_VARIABLES:
            assert variable not in environment, f"{name} sets {variable} in clear"


def test_postgresql_password_from_secret(services: Services) -> None:
    postgresql = services["postgresql"]
    password_file = environment_of(postgresql)["POSTGRES_PASSWORD_FILE"]
    assert password_file in service_secret_targets(postgresql).values()


def test_temporal_services_mount_password_secret(services: Services) -> None:
    for name in (TEMPORAL_SERVICE, "temporal-schema"):
        targets = service_secret_targets(services[name])
        password_target = targets.get("postgres_password")
        assert password_target == "/run/secrets/postgres_password", name


def test_secret_files_are_gitignored(compose: dict[str, Any]) -> None:
    git = shutil.which("git")
    if git is None:
        pytest.fail("git is not on PATH; install git to check which files it ignores")
    for name, secret in compose["secrets"].items():
        path = secret["file"]
        result = subprocess.run(
            [git, "check-ignore", "--quiet", "--no-index", path],
            cwd=REPO_ROOT,
            check=False,
        )
        assert result.returncode == 0, (
            f"secret {name} file {path} is not ignored by git"
        )


def test_credentials_job_reads_kubeconfig_path(raw_compose: dict[str, Any]) -> None:
    raw_mounts = volume_entries(raw_compose["services"][CREDENTIALS_JOB])
    mounts = {volume["target"]: volume for volume in raw_mounts}
    kubeconfig = mounts["/input/kubeconfig"]
    assert kubeconfig["type"] == "bind"
    assert kubeconfig["source"] == "${KUBECONFIG_PATH:-~/.kube/config}"
    assert kubeconfig["read_only"] is True
    assert kubeconfig["bind"]["create_host_path"] is False


def test_credentials_job_user_and_uid(services: Services) -> None:
    job = services[CREDENTIALS_JOB]
    environment = environment_of(job)
    match = re.search(r"^USER (\d+):(\d+)$", DOCKERFILE.read_text(), re.MULTILINE)
    assert match, "the Dockerfile sets no numeric USER uid:gid"
    assert job.get("user") == "0:0"
    assert environment["WORKER_UID"] == match.group(1)
    assert environment["WORKER_GID"] == match.group(2)


@pytest.mark.parametrize(
    ("variable", "source"),
    [
        ("VENTROS_DEPLOY_KUBECONFIG", "/input/kubeconfig"),
        ("VENTROS_DEPLOY_CODEC_KEYS_FILE", "/run/secrets/codec_keys"),
    ],
)
def test_worker_file_installed_by_job(
    services: Services, variable: str, source: str
) -> None:
    worker = services[WORKER_SERVICE]
    job = services[CREDENTIALS_JOB]
    installed = installed_credentials()
    assert source in installed, f"{CREDENTIALS_SCRIPT.name} does not install {source}"
    job_path = installed[source]
    worker_path = environment_of(worker)[variable]
    seen_by_worker = container_path_in(worker, job, job_path)
    assert seen_by_worker == worker_path, (
        f"{variable}={worker_path}, but the worker sees the job's {job_path} "
        f"at {seen_by_worker}"
    )


def test_worker_credential_volumes_read_only(services: Services) -> None:
    worker = services[WORKER_SERVICE]
    for volume in volume_entries(worker):
        assert volume["type"] == "volume", f"worker mounts {volume} from the host"
        assert volume.get("read_only") is True, f"worker mounts {volume} writable"


def test_codec_keys_secret_mounted_in_job(services: Services) -> None:
    targets = service_secret_targets(services[CREDENTIALS_JOB])
    assert targets.get("codec_keys") == "/run/secrets/codec_keys"
    assert "secrets" not in services[WORKER_SERVICE]


def test_compose_scripts_parse() -> None:
    scripts = sorted(COMPOSE_CONFIG_DIR.rglob("*.sh"))
    assert scripts, f"no scripts found in {COMPOSE_CONFIG_DIR}"
    for script in scripts:
        result = subprocess.run(
            ["sh", "-n", str(script)], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, f"{script}: {result.stderr}"


# ---- the helpers above --------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "environment", "expected"),
    [
        ("${A:-x}", {}, "x"),
        ("${A:-x}", {"A": ""}, "x"),
        ("${A-x}", {"A": ""}, ""),
        ("${A:-x}", {"A": "set"}, "set"),
        ("${A:+y}", {"A": "set"}, "y"),
        ("$A/b", {"A": "a"}, "a/b"),
        ("$${A}", {"A": "a"}, "${A}"),
        ("127.0.0.1:${P:-7233}:7233", {}, "127.0.0.1:7233:7233"),
    ],
)
def test_interpolate_cases(
    text: str, environment: dict[str, str], expected: str
) -> None:
    assert interpolate(text, environment) == expected


def test_interpolate_rejects_missing_required() -> None:
    with pytest.raises(ValueError, match="A"):
        interpolate("${A:?set A}", {})
