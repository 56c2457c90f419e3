#!/bin/sh
# One-shot job of docker-compose.yml (service `temporal-namespace`, image
# temporalio/admin-tools). Waits until the bootstrap Temporal reports SERVING to
# `temporal operator cluster health`, then registers the namespace the worker
# uses unless it already exists.
set -eu

address=${TEMPORAL_ADDRESS:?TEMPORAL_ADDRESS must be set to host:port}
namespace=${NAMESPACE:?NAMESPACE must be set}
retention=${NAMESPACE_RETENTION:-168h}
max_checks=30
check_interval_seconds=2

check=1
until temporal operator cluster health --address "$address" | grep -q SERVING; do
  if [ "$check" -ge "$max_checks" ]; then
    echo "error: Temporal at $address is not SERVING after $max_checks checks ${check_interval_seconds} s apart; see \`docker compose logs temporal\`" >&2
    exit 1
  fi
  check=$((check + 1))
  sleep "$check_interval_seconds"
done

if temporal operator namespace describe --address "$address" --namespace "$namespace" >/dev/null 2>&1; then
  echo "namespace $namespace already exists"
else
  temporal operator namespace create --address "$address" --namespace "$namespace" \
    --retention "$retention"
  echo "namespace $namespace created with retention $retention"
fi
