"""Start and stop a local Kubernetes control plane on loopback.

The control plane is real: etcd, kube-apiserver (TLS, RBAC, service
accounts), kube-controller-manager and kube-scheduler, built from source by
``tools/build.sh``. Nodes, kubelets and operators are simulated by
``testbed.simulator``, which runs as one more process of the cluster.

Every process is started in its own session, so it outlives the command that
started it. Their pids are kept in ``.local/cluster/pids.json``, so ``down``
can stop exactly what ``up`` started.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from testbed import certs
from testbed.processes import ProcessGroup, alive

REPO_ROOT = Path(__file__).resolve().parent.parent
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
# Controllers that need a kubelet or a cloud to be useful. Without kubelets the
# node lifecycle controller would taint every simulated node after 50 s (the
# default --node-monitor-grace-period of kube-controller-manager v1.36.3).
DISABLED_CONTROLLERS = (
    "node-lifecycle-controller",
    "node-ipam-controller",
    "service-lb-controller",
    "node-route-controller",
    "cloud-node-lifecycle-controller",
)
STARTUP_TIMEOUT_S = 60.0


class ClusterError(RuntimeError):
    """The local cluster cannot start or stop; the message names the fix."""


def _versions() -> dict[str, str]:
    versions: dict[str, str] = {}
    for line in (REPO_ROOT / "tools" / "versions.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            versions[key] = value
    return versions


def tools_cache() -> Path:
    """Return the folder that tools/build.sh builds into."""
    configured = os.environ.get("VENTROS_TOOLS_CACHE")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ventros-deploy" / "bin"


def tool_path(name: str) -> Path:
    """Return the path of a built binary: etcd, kube-*, kubectl or helm.

    Raises ClusterError naming the missing path and ``make tools`` as the fix.
    """
    versions = _versions()
    if name in ("etcd", "etcdctl"):
        folder = f"etcd-{versions['ETCD_VERSION']}"
        binary = "server" if name == "etcd" else "etcdctl"
    elif name == "helm":
        folder, binary = f"helm-{versions['HELM_VERSION']}", "helm"
    else:
        folder, binary = f"kubernetes-{versions['KUBE_VERSION']}", name
    path = tools_cache() / folder / binary
    if not path.is_file():
        raise ClusterError(
            f"{name} is missing: expected a binary at {path}. "
            "Run `make tools` to build it (the first build takes tens of minutes)."
        )
    return path


# etcd listens for its peers on its client port + 10.
ETCD_PEER_OFFSET = 10


def port_free(port: int) -> bool:
    """Tell whether a listener could bind 127.0.0.1:port now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def port_env(name: str, default: int) -> int:
    """Return the port in environment variable name, or default; raise when invalid."""
    raw = os.environ.get(name, str(default))
    try:
        port = int(raw)
    except ValueError:
        raise ClusterError(
            f"{name}={raw!r} is not a port number; set 1-65535"
        ) from None
    if not 0 < port < 65536:
        raise ClusterError(f"{name}={port} is out of range; set 1-65535")
    return port


def _count_env(name: str, default: int) -> int:
    raw = os.environ.get(name, str(default))
    if not raw.isdigit() or not 1 <= int(raw) <= 100:
        raise ClusterError(
            f"{name}={raw!r} is not a node count; set a number from 1 to 100"
        )
    return int(raw)


@dataclass
class ClusterConfig:
    """The cluster's state folder and its loopback ports."""

    state_dir: Path = field(default_factory=lambda: REPO_ROOT / ".local")
    etcd_port: int = field(
        default_factory=lambda: port_env("VENTROS_CLUSTER_ETCD_PORT", 23790)
    )
    apiserver_port: int = field(
        default_factory=lambda: port_env("VENTROS_CLUSTER_APISERVER_PORT", 26443)
    )
    nodes: int = field(default_factory=lambda: _count_env("VENTROS_CLUSTER_NODES", 3))
    # The simulator's stand-in for the RabbitMQ management API (queue depths).
    rabbitmq_management_port: int = field(
        default_factory=lambda: port_env("VENTROS_CLUSTER_RABBITMQ_MGMT_PORT", 25672)
    )

    @property
    def etcd_peer_port(self) -> int:
        return self.etcd_port + ETCD_PEER_OFFSET

    @property
    def cluster_dir(self) -> Path:
        return self.state_dir / "cluster"

    @property
    def pki_dir(self) -> Path:
        return self.cluster_dir / "pki"

    @property
    def log_dir(self) -> Path:
        return self.cluster_dir / "logs"

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def deployer_kubeconfig(self) -> Path:
        """The kubeconfig of user ventros-deployer, whose every request is audited."""
        return self.cluster_dir / "deployer.kubeconfig"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"


def profiling_flag() -> str:
    """Return kube-apiserver's --profiling value: "true" only when
    VENTROS_CLUSTER_PROFILING is 1."""
    return "true" if os.environ.get("VENTROS_CLUSTER_PROFILING") == "1" else "false"


class LocalCluster:
    """A running (or startable) local control plane with simulated nodes."""

    def __init__(self, config: ClusterConfig | None = None) -> None:
        self.config = config or ClusterConfig()

    # -- public API -------------------------------------------------------

    @property
    def kubeconfig(self) -> Path:
        return self.config.kubeconfig

    def up(self) -> Path:
        """Start every component unless the cluster runs; return the kubeconfig."""
        if self.is_healthy():
            self._ensure_missing_started()
            return self.kubeconfig
        self._refuse_other_ports()
        if self._wait_for_starting_cluster():
            self._ensure_missing_started()
            return self.kubeconfig
        self.down(quiet=True)
        binaries = {name: tool_path(name) for name in ("etcd", *COMPONENTS[1:])}
        tool_path("kubectl")
        self._check_ports_free()
        self.config.cluster_dir.mkdir(parents=True, exist_ok=True)
        self.config.log_dir.mkdir(parents=True, exist_ok=True)
        certs.generate(self.config.pki_dir)
        (self.config.cluster_dir / "ports.json").write_text(
            json.dumps(
                {"etcd": self.config.etcd_port, "apiserver": self.config.apiserver_port}
            )
        )
        self._write_kubeconfigs()
        self._start_etcd(binaries["etcd"])
        self.start_apiserver()
        self._start_controller_manager(binaries["kube-controller-manager"])
        self._start_scheduler(binaries["kube-scheduler"])
        self._start_simulator()
        self._wait_for_nodes()
        return self.kubeconfig

    def _wait_for_starting_cluster(self) -> bool:
        """Wait for a cluster whose etcd or API server process is alive.

        Another command may be starting it, or the machine may be slow; tearing
        it down would wipe the work of everyone using it. Returns True once it
        is healthy, False when none of those processes runs.
        """
        if not any(self.processes.running(n) for n in ("etcd", "kube-apiserver")):
            return False
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.is_healthy():
                return True
            time.sleep(0.5)
        raise ClusterError(
            f"the cluster's processes in {self.config.cluster_dir} run, but the API "
            f"server was not ready within {STARTUP_TIMEOUT_S:.0f} s; see the logs in "
            f"{self.config.log_dir}, or run `make cluster-down` and start again"
        )

    def _refuse_other_ports(self) -> None:
        """Raise when processes of this state folder still run on other ports.

        Without this check, ``up`` with new port variables would find nothing
        healthy on the new port and stop the running cluster to start afresh.
        """
        recorded = self.config.cluster_dir / "ports.json"
        running = [
            name for name in self.processes.pids() if self.processes.running(name)
        ]
        if not running or not recorded.exists():
            return
        ports = json.loads(recorded.read_text())
        wanted = {
            "etcd": self.config.etcd_port,
            "apiserver": self.config.apiserver_port,
        }
        if ports != wanted:
            raise ClusterError(
                f"a cluster from {self.config.cluster_dir} still runs on ports "
                f"{ports}, not {wanted}: run `make cluster-down` first, or use "
                "another state folder"
            )

    def down(self, quiet: bool = False) -> int:
        """Stop every process this cluster started and remove its data; return
        how many processes it had recorded."""
        stopped = self.processes.stop_all()
        if self.config.cluster_dir.exists():
            shutil.rmtree(self.config.cluster_dir)
        if self.config.kubeconfig.exists():
            self.config.kubeconfig.unlink()
        if not quiet:
            print(f"stopped {stopped} processes and removed {self.config.cluster_dir}")
        return stopped

    def is_healthy(self) -> bool:
        """Return whether /readyz returns ok for the admin identity."""
        if not (self.config.pki_dir / "admin.crt").exists():
            return False
        try:
            return self._get("/readyz", timeout=2.0) == "ok"
        except (OSError, urllib.error.URLError, ssl.SSLError):
            return False

    def stop_apiserver(self) -> None:
        """Stop only kube-apiserver; used to simulate an API outage."""
        self.processes.stop("kube-apiserver")

    def start_apiserver(self) -> None:
        """Start kube-apiserver and wait until it reports ready."""
        self._spawn(
            "kube-apiserver",
            [str(tool_path("kube-apiserver")), *self._apiserver_args()],
        )
        self._wait("kube-apiserver /readyz", lambda: self._get("/readyz") == "ok")

    def kubectl(
        self, *args: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this cluster with an argument list."""
        return subprocess.run(
            [str(tool_path("kubectl")), "--kubeconfig", str(self.kubeconfig), *args],
            capture_output=True,
            text=True,
            check=check,
        )

    # -- processes --------------------------------------------------------

    @property
    def processes(self) -> ProcessGroup:
        return ProcessGroup(self.config.cluster_dir / "pids.json", self.config.log_dir)

    def _spawn(self, name: str, argv: list[str], cwd: Path | None = None) -> None:
        self.processes.spawn(name, argv, cwd or self.config.cluster_dir)

    def _ensure_missing_started(self) -> None:
        """Restart the simulator or a controller that died while the API server runs."""
        starters = {
            "kube-controller-manager": lambda: self._start_controller_manager(
                tool_path("kube-controller-manager")
            ),
            "kube-scheduler": lambda: self._start_scheduler(
                tool_path("kube-scheduler")
            ),
            "simulator": self._start_simulator,
        }
        for name, start in starters.items():
            if not self.processes.running(name):
                start()

    def _check_ports_free(self) -> None:
        for variable, port in (
            ("VENTROS_CLUSTER_ETCD_PORT", self.config.etcd_port),
            (
                "VENTROS_CLUSTER_ETCD_PORT (peer port = etcd port + 10)",
                self.config.etcd_peer_port,
            ),
            ("VENTROS_CLUSTER_APISERVER_PORT", self.config.apiserver_port),
        ):
            if not port_free(port):
                raise ClusterError(
                    f"port 127.0.0.1:{port} is already in use. Stop what listens "
                    f"there (`ss -ltnp 'sport = :{port}'` shows it), run "
                    f"`make cluster-down`, or choose another port with {variable}."
                )

    # -- components -------------------------------------------------------

    def _start_etcd(self, binary: Path) -> None:
        port, peer = self.config.etcd_port, self.config.etcd_peer_port
        self._spawn(
            "etcd",
            [
                str(binary),
                "--name=ventros-local",
                f"--data-dir={self.config.cluster_dir / 'etcd-data'}",
                f"--listen-client-urls=http://127.0.0.1:{port}",
                f"--advertise-client-urls=http://127.0.0.1:{port}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=ventros-local=http://127.0.0.1:{peer}",
                "--listen-metrics-urls=",
                "--log-level=warn",
                # The test bed's data is disposable; skipping fsync makes it fast.
                "--unsafe-no-fsync",
            ],
        )

        def etcd_healthy() -> bool:
            url = f"http://127.0.0.1:{port}/health"
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(json.load(response).get("health") == "true")

        self._wait("etcd /health", etcd_healthy)

    def _apiserver_args(self) -> list[str]:
        pki = self.config.pki_dir
        return [
            f"--etcd-servers=http://127.0.0.1:{self.config.etcd_port}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            # Dial simulated nodes by their loopback InternalIP, never by a
            # host name that the machine's DNS resolver would be asked for.
            "--kubelet-preferred-address-types=InternalIP",
            f"--secure-port={self.config.apiserver_port}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            "--service-cluster-ip-range=10.0.0.0/16",
            "--authorization-mode=RBAC",
            "--allow-privileged=true",
            # pprof at /debug/pprof for the admin, to see where the API
            # server's CPU goes (docs/benchmarks.md, "Scale").
            "--profiling=" + profiling_flag(),
            "--enable-priority-and-fairness=false",
            f"--audit-log-path={self.config.log_dir / 'audit.log'}",
            f"--audit-policy-file={self._audit_policy()}",
            "--audit-log-maxsize=200",
        ]

    def _audit_policy(self) -> Path:
        # Metadata level, so no request body (which may hold secrets) is logged.
        # It logs every request of ventros-deployer, which the benchmark counts
        # per deploy, and the writes of everyone else.
        policy = self.config.cluster_dir / "audit-policy.yaml"
        policy.write_text(
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\n"
            "rules:\n- level: Metadata\n  users: [ventros-deployer]\n"
            "- level: Metadata\n  verbs: [create, update, patch, delete]\n"
            "- level: None\n"
        )
        return policy

    def _start_controller_manager(self, binary: Path) -> None:
        pki = self.config.pki_dir
        kubeconfig = self.config.cluster_dir / "controller-manager.kubeconfig"
        controllers = ",".join(["*", *(f"-{name}" for name in DISABLED_CONTROLLERS)])
        self._spawn(
            "kube-controller-manager",
            [
                str(binary),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                "--secure-port=0",
                "--leader-elect=false",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                f"--cluster-signing-cert-file={pki / 'ca.crt'}",
                f"--cluster-signing-key-file={pki / 'ca.key'}",
                f"--controllers={controllers}",
                # Faster reaction for tests and demos than the production
                # defaults, and client rate limits high enough that 50 deploys
                # at once wait on the CPU, not on the controllers (see
                # docs/testbed.md).
                "--concurrent-deployment-syncs=10",
                "--concurrent-job-syncs=10",
                "--concurrent-statefulset-syncs=10",
                "--concurrent-replicaset-syncs=10",
                "--kube-api-qps=100",
                "--kube-api-burst=200",
            ],
        )

    def _start_scheduler(self, binary: Path) -> None:
        kubeconfig = self.config.cluster_dir / "scheduler.kubeconfig"
        self._spawn(
            "kube-scheduler",
            [
                str(binary),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                "--secure-port=0",
                "--leader-elect=false",
            ],
        )

    def _start_simulator(self) -> None:
        self._spawn(
            "simulator",
            [
                sys.executable,
                "-m",
                "testbed.simulator",
                "--kubeconfig",
                str(self.config.cluster_dir / "simulator.kubeconfig"),
                "--nodes",
                str(self.config.nodes),
                "--management-port",
                str(self.config.rabbitmq_management_port),
            ],
            cwd=REPO_ROOT,
        )

    def _wait_for_nodes(self) -> None:
        def nodes_ready() -> bool:
            data = json.loads(self._get("/api/v1/nodes"))
            ready = [
                item
                for item in data.get("items", [])
                if any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in item.get("status", {}).get("conditions", [])
                )
            ]
            return len(ready) >= self.config.nodes

        self._wait(f"{self.config.nodes} Ready nodes", nodes_ready)

        def default_service_account() -> bool:
            self._get("/api/v1/namespaces/default/serviceaccounts/default")
            return True

        self._wait("the default ServiceAccount", default_service_account)

    # -- kubeconfigs and HTTP ---------------------------------------------

    def _write_kubeconfigs(self) -> None:
        pki = self.config.pki_dir
        ca = str(pki / "ca.crt")
        targets = {
            "admin": self.config.kubeconfig,
            "controller-manager": self.config.cluster_dir
            / "controller-manager.kubeconfig",
            "scheduler": self.config.cluster_dir / "scheduler.kubeconfig",
            "simulator": self.config.cluster_dir / "simulator.kubeconfig",
            "deployer": self.config.deployer_kubeconfig,
        }
        for stem, path in targets.items():
            user = f"{stem}@ventros-local"
            config = {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "ventros-local",
                        "cluster": {
                            "server": self.config.server,
                            "certificate-authority": ca,
                        },
                    }
                ],
                "users": [
                    {
                        "name": user,
                        "user": {
                            "client-certificate": str(pki / f"{stem}.crt"),
                            "client-key": str(pki / f"{stem}.key"),
                        },
                    }
                ],
                "contexts": [
                    {
                        "name": "ventros-local",
                        "context": {"cluster": "ventros-local", "user": user},
                    }
                ],
                "current-context": "ventros-local",
            }
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                json.dump(config, handle, indent=2)

    def _ssl_context(self) -> ssl.SSLContext:
        pki = self.config.pki_dir
        context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        context.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        return context

    def _get(self, path: str, timeout: float = 5.0) -> str:
        with urllib.request.urlopen(
            self.config.server + path, timeout=timeout, context=self._ssl_context()
        ) as response:
            return str(response.read().decode())

    def _wait(self, what: str, check: object) -> None:
        assert callable(check)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        last_error: BaseException | None = None
        while time.monotonic() < deadline:
            try:
                if check():
                    return
            except (
                OSError,
                urllib.error.URLError,
                ssl.SSLError,
                ValueError,
                KeyError,
            ) as error:
                last_error = error
            self._raise_if_exited()
            time.sleep(0.2)
        raise ClusterError(
            f"timed out after {STARTUP_TIMEOUT_S:.0f} s waiting for {what} "
            f"(last error: {last_error}); see the logs in {self.config.log_dir}"
        )

    def _raise_if_exited(self) -> None:
        for name, pid in self.processes.pids().items():
            if not alive(pid):
                log = self.config.log_dir / f"{name}.log"
                raise ClusterError(
                    f"{name} (pid {pid}) exited during start-up; last lines of {log}:\n"
                    + self.processes.log_tail(name)
                )
