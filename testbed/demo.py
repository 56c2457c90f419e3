"""``make demo``: a full deploy onto the local cluster with a bootstrap Temporal.

``up`` starts (or reuses) the local cluster, a bootstrap Temporal dev server
with its UI and a database file, the worker, then deploys the chart with the
client and follows it to the end. Everything stays running so that the UI and
the CLI can be used afterwards; ``down`` stops it all.

The demo's cluster is its own, with its state in .local/demo and ports of its
own, beside the cluster that the tests and the benchmark use. The operator
charts create cluster-wide objects named after their release, so a demo
release on the tests' cluster would make every test that installs the
operators fail.

Upstream operator and Temporal charts cannot be fetched here, so the demo
installs the stand-in charts from tests/fixtures/charts in their place.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from client.cli import EXIT_FAILED, EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE
from deployer import codec, contracts
from deployer.inputs import workflow_id_for
from deployer.lifecycle import destroy_workflow_id_for
from testbed.cluster import (
    REPO_ROOT,
    ClusterConfig,
    ClusterError,
    LocalCluster,
    port_env,
    port_free,
    tool_path,
)
from testbed.processes import ProcessGroup

STATE = REPO_ROOT / ".local" / "demo"
FIXTURE_CHARTS = "tests/fixtures/charts"
RELEASE = "ventros-crm"
NAMESPACE = "ventros-crm"
# The bootstrap Temporal's SQLite database. SQLite may add files next to it
# whose names start with this one (-wal, -shm).
TEMPORAL_DB = "bootstrap-temporal.db"
# Exit codes of `ventros-deploy status` that report how the earlier deploy
# ended (succeeded, failed or aborted, or rejected), not a demo that is broken.
EARLIER_OUTCOME_CODES = frozenset({EXIT_OK, EXIT_FAILED, EXIT_USAGE})
# How long make demo waits for its worker to connect to the bootstrap Temporal.
WORKER_START_TIMEOUT_S = 60.0
# Custom search attributes the workflow list can be filtered by.
SEARCH_ATTRIBUTES = (
    "VentrosRelease=Keyword",
    "VentrosNamespace=Keyword",
    "VentrosPhase=Keyword",
)


def _port(name: str, default: int) -> int:
    return int(os.environ.get(name, str(default)))


TEMPORAL_PORT = _port("VENTROS_DEMO_TEMPORAL_PORT", 7233)
UI_PORT = _port("VENTROS_DEMO_UI_PORT", 8233)
CODEC_PORT = _port("VENTROS_DEMO_CODEC_PORT", 8081)


def demo_cluster() -> LocalCluster:
    """Return the demo's cluster: state in .local/demo, ports apart from the tests'."""
    return LocalCluster(
        ClusterConfig(
            state_dir=STATE,
            etcd_port=port_env("VENTROS_DEMO_CLUSTER_ETCD_PORT", 24790),
            apiserver_port=port_env("VENTROS_DEMO_CLUSTER_APISERVER_PORT", 27443),
            rabbitmq_management_port=port_env(
                "VENTROS_DEMO_CLUSTER_RABBITMQ_MGMT_PORT", 27672
            ),
        )
    )


def processes() -> ProcessGroup:
    return ProcessGroup(STATE / "pids.json", STATE / "logs")


def temporal_cli() -> str:
    return str(Path(sys.executable).parent / "temporal")


def worker_env() -> dict[str, str]:
    env = dict(os.environ)
    config = demo_cluster().config
    env.update(
        {
            "VENTROS_DEPLOY_TEMPORAL_ADDRESS": f"127.0.0.1:{TEMPORAL_PORT}",
            "VENTROS_DEPLOY_KUBECONFIG": str(config.kubeconfig),
            # The simulator's stand-in for the management API, which a destroy
            # reads the queue depths from (the default, the in-cluster Service
            # name, does not resolve outside a cluster).
            "VENTROS_DEPLOY_RABBITMQ_MANAGEMENT_URL": (
                f"http://127.0.0.1:{config.rabbitmq_management_port}"
                "/api/namespaces/{namespace}/{name}"
            ),
            "VENTROS_DEPLOY_HELM": str(tool_path("helm")),
            "VENTROS_DEPLOY_CHART_ROOT": str(REPO_ROOT),
            "VENTROS_DEPLOY_CODEC_KEYS_FILE": str(STATE / "codec-keys.json"),
            "VENTROS_DEPLOY_LOG_FORMAT": "json",
            "VENTROS_DEPLOY_SEARCH_ATTRIBUTES": "true",
        }
    )
    return env


def _wait_http(url: str, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # Any HTTP response means the server is up.
        except (OSError, urllib.error.URLError):
            time.sleep(0.3)
    raise ClusterError(f"timed out after {timeout_s:.0f} s waiting for {what} at {url}")


def require_free_ports(ports: tuple[tuple[int, str], ...]) -> None:
    """Raise ClusterError for the first (port, setting) whose port is in use."""
    for port, variable in ports:
        if not port_free(port):
            raise ClusterError(
                f"port 127.0.0.1:{port} is already in use; stop what listens there "
                f"(`make demo-down` if it is an earlier demo) or set {variable}"
            )


def start_temporal(group: ProcessGroup) -> None:
    if group.running("temporal"):
        return
    require_free_ports(
        (
            (TEMPORAL_PORT, "VENTROS_DEMO_TEMPORAL_PORT"),
            (UI_PORT, "VENTROS_DEMO_UI_PORT"),
        )
    )
    argv = [
        temporal_cli(),
        "server",
        "start-dev",
        "--ip",
        "127.0.0.1",
        "--port",
        str(TEMPORAL_PORT),
        "--ui-port",
        str(UI_PORT),
        "--db-filename",
        str(STATE / TEMPORAL_DB),
        "--ui-codec-endpoint",
        f"http://127.0.0.1:{CODEC_PORT}",
        "--ui-disable-news-fetch",
        "--log-level",
        "warn",
    ]
    for attribute in SEARCH_ATTRIBUTES:
        argv += ["--search-attribute", attribute]
    group.spawn("temporal", argv, cwd=STATE)
    _wait_http(f"http://127.0.0.1:{UI_PORT}/", "the Temporal UI")
    _wait_frontend(group.log_dir / "temporal.log")


def _wait_frontend(log: Path, timeout_s: float = 60.0) -> None:
    """Wait until the dev server's frontend reports SERVING.

    The UI responds before the frontend is healthy, and a client that connects
    in between fails with "Frontend is not healthy yet".
    """
    address = f"127.0.0.1:{TEMPORAL_PORT}"
    argv = [
        temporal_cli(),
        "operator",
        "cluster",
        "health",
        "--address",
        address,
        "--disable-config-file",
        "--disable-config-env",
    ]
    # The user's own Temporal settings (an API key, TLS, a profile) would make
    # the check talk TLS to the plain dev server.
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEMPORAL_")}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            checked = subprocess.run(
                argv, capture_output=True, text=True, timeout=5, env=env
            )
        except subprocess.TimeoutExpired:
            continue
        if checked.returncode == 0 and "SERVING" in checked.stdout:
            return
        time.sleep(0.2)
    raise ClusterError(
        f"timed out after {timeout_s:.0f} s waiting for the Temporal frontend at "
        f"{address} to report SERVING; see {log}"
    )


def start_codec_server(group: ProcessGroup) -> None:
    """Start the codec server and check that it serves its port.

    The printed commands send the codec token to that port, so make demo
    fails when another process listens on it.
    """
    if group.running("codec-server"):
        return
    require_free_ports(((CODEC_PORT, "VENTROS_DEMO_CODEC_PORT"),))
    token_file = STATE / "codec-token"
    if not token_file.exists():
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(os.urandom(24).hex())
    group.spawn(
        "codec-server",
        [
            sys.executable,
            "-m",
            "deployer.codec_server",
            "--port",
            str(CODEC_PORT),
            "--ui-origin",
            f"http://127.0.0.1:{UI_PORT}",
            "--keys-file",
            str(STATE / "codec-keys.json"),
            "--token-file",
            str(token_file),
        ],
        cwd=REPO_ROOT,
    )
    _wait_http(f"http://127.0.0.1:{CODEC_PORT}/", "the codec server")
    # A process that took the port in the meantime responds too, and then
    # the codec server exits on its failed bind.
    time.sleep(0.3)
    if not group.running("codec-server"):
        raise ClusterError(
            "the codec server exited at start:\n" + group.log_tail("codec-server")
        )


def start_worker(group: ProcessGroup) -> None:
    """Start the worker and wait until it logs that it started, so that the
    status shown next finds it polling."""
    if group.running("worker"):
        return
    log = group.log_dir / "worker.log"
    # The log keeps earlier runs' lines, so only what this start adds counts.
    offset = log.stat().st_size if log.exists() else 0
    group.spawn(
        "worker", [sys.executable, "-m", "worker"], cwd=REPO_ROOT, env=worker_env()
    )
    deadline = time.monotonic() + WORKER_START_TIMEOUT_S
    while True:
        time.sleep(0.2)
        if not group.running("worker"):
            raise ClusterError(
                "the worker exited at start:\n" + group.log_tail("worker")
            )
        with open(log, "rb") as lines:
            lines.seek(offset)
            if b'"worker started"' in lines.read():
                return
        if time.monotonic() > deadline:
            raise ClusterError(
                f"the worker did not start within {WORKER_START_TIMEOUT_S:.0f} s; "
                f"its log ({log}) ends with:\n" + group.log_tail("worker")
            )


def release_gone(kubeconfig: Path) -> bool:
    """Tell whether the demo's namespace contains no helm release of the demo.

    A destroy uninstalls the release, and destroy --delete-namespace removes
    the namespace too. kubectl lists no Secret in a missing namespace. A
    kubectl that fails (an API server that is down) counts as not gone.
    """
    result = subprocess.run(
        [
            str(tool_path("kubectl")),
            "get",
            "secrets",
            "--namespace",
            NAMESPACE,
            "--selector",
            f"owner=helm,name={RELEASE}",
            "--output",
            "name",
        ],
        env={**os.environ, "KUBECONFIG": str(kubeconfig)},
        check=False,
        capture_output=True,
        text=True,
    )
    return result.returncode == 0 and not result.stdout.strip()


def destroyed() -> bool:
    """Tell whether the demo release's last destroy succeeded, or found
    nothing of the release to destroy."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "client",
            "status",
            destroy_workflow_id_for(NAMESPACE, RELEASE),
            "--json",
        ],
        env=worker_env(),
        cwd=REPO_ROOT,
        check=False,
        capture_output=True,
        text=True,
    )
    try:
        status = json.loads(result.stdout)
        return bool(
            status.get("state") == "succeeded"
            or status.get("error_type") == contracts.RELEASE_NOT_FOUND
        )
    except (ValueError, AttributeError):
        return False


def shown_earlier_deploy(workflow_id: str) -> int | None:
    """Show the demo's deploy if it ran before, and return make demo's exit
    code, or None when it never ran.

    The code is 0 when the status shows how that deploy ended, also when it
    failed or was aborted, because the demo itself was restarted. It is the
    status's code when the status could not be shown, such as exit 5 for a
    worker that does not respond.

    So a second `make demo` (after a reboot, or to bring back a stopped
    worker) restarts what stopped and leaves the release as the user left it,
    instead of deploying the demo's request over a later upgrade.
    """
    result = subprocess.run(
        [sys.executable, "-m", "client", "status", workflow_id],
        env=worker_env(),
        cwd=REPO_ROOT,
        check=False,
        capture_output=True,
        text=True,
    )
    if result.returncode == EXIT_NOT_FOUND:
        return None
    print(result.stdout, end="")
    print(result.stderr, end="", file=sys.stderr)
    print(
        f"{workflow_id} ran before, so make demo only restarted what had stopped. "
        "To deploy the demo's request again: source .local/demo/env.sh; "
        f"ventros-deploy start --request {STATE / 'request.json'} --follow"
    )
    if result.returncode in EARLIER_OUTCOME_CODES:
        return EXIT_OK
    return result.returncode


def deploy() -> int:
    request = {
        "release": RELEASE,
        "namespace": NAMESPACE,
        "chart": {"path": "chart"},
        "operator_charts": {
            "postgres_operator": {"path": f"{FIXTURE_CHARTS}/postgres-operator"},
            "rabbitmq_operator": {
                "path": f"{FIXTURE_CHARTS}/rabbitmq-cluster-operator"
            },
            "temporal": {"path": f"{FIXTURE_CHARTS}/temporal"},
        },
    }
    request_file = STATE / "request.json"
    request_file.write_text(json.dumps(request, indent=2))
    env = worker_env()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "client",
            "start",
            "--request",
            str(request_file),
            "--follow",
        ],
        env=env,
        cwd=REPO_ROOT,
        check=False,
    )
    return result.returncode


def up() -> int:
    STATE.mkdir(parents=True, exist_ok=True)
    cluster = demo_cluster()
    cluster.up()
    keys = STATE / "codec-keys.json"
    if not keys.exists():
        codec.generate_key_ring_file(str(keys))
    group = processes()
    start_codec_server(group)
    start_temporal(group)
    start_worker(group)
    workflow_id = workflow_id_for(NAMESPACE, RELEASE)
    if destroyed() and release_gone(cluster.kubeconfig):
        # A destroy removed what the earlier deploy made.
        code = None
    else:
        code = shown_earlier_deploy(workflow_id)
    if code is None:
        code = deploy()
    print()
    print(
        f"Temporal UI:  http://127.0.0.1:{UI_PORT}/namespaces/default/workflows/{workflow_id}"
    )
    print(
        "  payloads are encrypted. To decode them in the UI, log in to the codec"
        " server once:"
    )
    token_path = STATE / "codec-token"
    print(f"  http://127.0.0.1:{CODEC_PORT}/login (token in {token_path}),")
    print(
        "  then in the UI's codec settings enable 'Include cross-origin credentials'."
    )
    print("  Or decode them with the CLI (docs/codec.md):")
    print(
        f"  temporal workflow show -w {workflow_id} "
        f"--address 127.0.0.1:{TEMPORAL_PORT} \\"
    )
    print(f"    --codec-endpoint http://127.0.0.1:{CODEC_PORT} \\")
    print(f'    --codec-auth "Bearer $(cat {STATE / "codec-token"})"')
    print(f"kubeconfig:   export KUBECONFIG={cluster.kubeconfig}")
    print(
        "CLI:          source .local/demo/env.sh; ventros-deploy status " + workflow_id
    )
    print("Stop it all:  make demo-down")
    _write_env_file()
    return code


def _write_env_file() -> None:
    env = worker_env()
    lines = [
        f"export {k}={shlex.quote(env[k])}"
        for k in sorted(env)
        if k.startswith("VENTROS_DEPLOY_")
    ]
    # kubectl, as the README's troubleshooting runs it, reaches the demo cluster.
    lines.append(f"export KUBECONFIG={shlex.quote(env['VENTROS_DEPLOY_KUBECONFIG'])}")
    # The temporal CLI reads these, so its commands reach the demo's Temporal,
    # encrypt their input (a request can hold secrets) and decode results.
    # The token is read when the file is sourced, so it stays out of env.sh.
    lines.append(f"export TEMPORAL_ADDRESS=127.0.0.1:{TEMPORAL_PORT}")
    lines.append(f"export TEMPORAL_CODEC_ENDPOINT=http://127.0.0.1:{CODEC_PORT}")
    token = shlex.quote(str(STATE / "codec-token"))
    lines.append(f'export TEMPORAL_CODEC_AUTH="Bearer $(cat {token})"')
    folders = [Path(sys.executable).parent, tool_path("kubectl").parent]
    folders.append(tool_path("helm").parent)
    lines.append(f"export PATH={':'.join(map(str, folders))}:$PATH")
    (STATE / "env.sh").write_text("\n".join(lines) + "\n")


def _processes(count: int) -> str:
    return f"{count} process" if count == 1 else f"{count} processes"


def down() -> int:
    """Stop the demo and remove its cluster's data and its Temporal's history.

    Both go together: a history that outlived the cluster would make the
    next make demo show the earlier deploy as done on an empty cluster.
    The key ring and the codec token stay.
    """
    services = processes().stop_all()
    cluster = demo_cluster().down(quiet=True)
    for path in STATE.glob(f"{TEMPORAL_DB}*"):
        path.unlink()
    print(
        f"stopped the demo's services ({_processes(services)}) and its cluster "
        f"({_processes(cluster)}), and removed the cluster's data and the "
        "bootstrap Temporal's history"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m testbed.demo", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("command", choices=("up", "down"))
    args = parser.parse_args(argv)
    try:
        return up() if args.command == "up" else down()
    except ClusterError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
