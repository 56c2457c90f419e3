"""Command line for the local cluster: ``python -m testbed up|down|status``."""

from __future__ import annotations

import argparse
import sys

from testbed.cluster import ClusterError, LocalCluster


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m testbed",
        description="Start or stop the local Kubernetes control plane on loopback.",
    )
    parser.add_argument("command", choices=("up", "down", "status"))
    args = parser.parse_args(argv)
    try:
        cluster = LocalCluster()
        if args.command == "up":
            kubeconfig = cluster.up()
            print(f"cluster is up: {cluster.config.server}")
            print(f"kubeconfig: {kubeconfig}")
            print(f"  export KUBECONFIG={kubeconfig}")
        elif args.command == "down":
            cluster.down()
        else:
            healthy = cluster.is_healthy()
            print("running" if healthy else "not running")
            return 0 if healthy else 1
    except ClusterError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
